-- syncd capture trigger {version}: postmeta UPDATE on blog {blog_id}.
-- Only real changes: a value compared byte for byte (the column collation would call 'abc' and 'ABC'
-- equal), so WooCommerce re-saving an unchanged value costs one comparison and writes nothing.
-- Cost (issue 10): the server fixes every item of an IF's expression at each firing, evaluated or not,
-- so an unwatched key (most of a product save) meets only the cheap tests: syncd's own session,
-- then one FIND_IN_SET per key (a 22-key IN list costs ~4 us a firing; see bench/trigger_floor.py).
-- FIND_IN_SET compares without padding; IN pads with spaces ('_stock ' IN ('_stock') in a PAD SPACE
-- collation), so a key ending in a space-like or ignorable character gets the IN test as well:
-- exactly the keys the IN list of version 1 captured. The 1146 handler (a missing change table,
-- syncd half-uninstalled, must not break the shop's write) is pushed only for a watched key.
CREATE TRIGGER `{trigger}` AFTER UPDATE ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  capture: BEGIN
    IF @syncd_apply IS NOT NULL THEN LEAVE capture; END IF;
    IF (FIND_IN_SET(NEW.meta_key, '{watched_set}') OR FIND_IN_SET(OLD.meta_key, '{watched_set}')) IS NOT TRUE THEN
      IF (RIGHT(NEW.meta_key, 1) = ' ' OR RIGHT(OLD.meta_key, 1) = ' ') IS NOT TRUE THEN LEAVE capture; END IF;
      IF (NEW.meta_key IN ({watched}) OR OLD.meta_key IN ({watched})) IS NOT TRUE THEN LEAVE capture; END IF;
    END IF;
    BEGIN
      DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
      IF OLD.post_id <> NEW.post_id OR NOT (OLD.meta_key <=> NEW.meta_key) THEN
        -- A row moved to another post or key: seen as a delete of the old and an insert of the new.
        INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
        VALUES ({blog_id}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID()),
               ({blog_id}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
      ELSEIF NOT (BINARY OLD.meta_value <=> BINARY NEW.meta_value) THEN
        INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
        VALUES ({blog_id}, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
      END IF;
    END;
  END capture;
END
