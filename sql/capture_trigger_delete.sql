-- syncd capture trigger {version}: postmeta DELETE on blog {blog_id}.
-- The key tests are ordered by cost as in capture_trigger_update.sql (which says why).
CREATE TRIGGER `{trigger}` AFTER DELETE ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  capture: BEGIN
    IF @syncd_apply IS NOT NULL THEN LEAVE capture; END IF;
    IF FIND_IN_SET(OLD.meta_key, '{watched_set}') IS NOT TRUE THEN
      IF (RIGHT(OLD.meta_key, 1) = ' ') IS NOT TRUE THEN LEAVE capture; END IF;
      IF (OLD.meta_key IN ({watched})) IS NOT TRUE THEN LEAVE capture; END IF;
    END IF;
    BEGIN
      DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
      INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
      VALUES ({blog_id}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID());
    END;
  END capture;
END
