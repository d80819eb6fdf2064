-- syncd capture trigger {version}: postmeta DELETE on blog {blog_id}.
CREATE TRIGGER `{trigger}` AFTER DELETE ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
  IF @syncd_apply IS NULL AND OLD.meta_key IN ({watched}) THEN
    INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
    VALUES ({blog_id}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID());
  END IF;
END
