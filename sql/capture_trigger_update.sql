-- syncd capture trigger {version}: postmeta UPDATE on blog {blog_id}.
-- Only real changes: a value compared byte for byte (the column collation would call 'abc' and 'ABC'
-- equal), so WooCommerce re-saving an unchanged value costs one comparison and writes nothing.
CREATE TRIGGER `{trigger}` AFTER UPDATE ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
  IF @syncd_apply IS NULL AND (NEW.meta_key IN ({watched}) OR OLD.meta_key IN ({watched})) THEN
    IF OLD.post_id <> NEW.post_id OR NOT (OLD.meta_key <=> NEW.meta_key) THEN
      -- A row moved to another post or key: seen as a delete of the old and an insert of the new.
      INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
      VALUES ({blog_id}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID()),
             ({blog_id}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
    ELSEIF NOT (BINARY OLD.meta_value <=> BINARY NEW.meta_value) THEN
      INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
      VALUES ({blog_id}, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());
    END IF;
  END IF;
END
