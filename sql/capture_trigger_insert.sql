-- syncd capture trigger {version}: postmeta INSERT on blog {blog_id}.
-- Only watched keys; never syncd's own writes (@syncd_apply is set only on syncd's apply session).
-- A missing change table (syncd half-uninstalled) must not break the shop's own write: 1146 is ignored.
-- The key tests are ordered by cost as in capture_trigger_update.sql (which says why).
CREATE TRIGGER `{trigger}` AFTER INSERT ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  capture: BEGIN
    IF @syncd_apply IS NOT NULL THEN LEAVE capture; END IF;
    IF FIND_IN_SET(NEW.meta_key, '{watched_set}') IS NOT TRUE THEN
      IF (RIGHT(NEW.meta_key, 1) = ' ') IS NOT TRUE THEN LEAVE capture; END IF;
      IF (NEW.meta_key IN ({watched})) IS NOT TRUE THEN LEAVE capture; END IF;
    END IF;
    BEGIN
      DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
      INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
      VALUES ({blog_id}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
    END;
  END capture;
END
