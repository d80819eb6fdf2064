-- syncd capture trigger {version}: postmeta INSERT on blog {blog_id}.
-- Only watched keys; never syncd's own writes (@syncd_apply is set only on syncd's apply session).
-- A missing change table (syncd half-uninstalled) must not break the shop's own write: 1146 is ignored.
CREATE TRIGGER `{trigger}` AFTER INSERT ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
  IF @syncd_apply IS NULL AND NEW.meta_key IN ({watched}) THEN
    INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
    VALUES ({blog_id}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
  END IF;
END
