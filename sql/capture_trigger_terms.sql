-- syncd capture trigger {version}: term_relationships {event} on blog {blog_id}, for the taxonomies
-- of the realtime field groups (issue 10). A term given to (I) or taken from (D) an object is one
-- change row keyed 'terms:<taxonomy>' holding the term's slug (new_value on I, old_value on D).
-- Filtered by taxonomy only (WooCommerce registers these taxonomies for products and variations;
-- the posts row is not read, so the trigger takes no lock on it). The two lookups below are by
-- primary key. Never syncd's own writes; a missing change table is ignored as on postmeta.
CREATE TRIGGER `{trigger}` AFTER {EVENT} ON `{prefix}term_relationships` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
  IF @syncd_apply IS NULL THEN
    INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id)
    SELECT {blog_id}, {ROW}.object_id, CONCAT('terms:', tt.taxonomy), '{op}', {old}, {new}, UTC_TIMESTAMP(6), CONNECTION_ID()
    FROM `{prefix}term_taxonomy` tt JOIN `{prefix}terms` t ON t.term_id = tt.term_id
    WHERE tt.term_taxonomy_id = {ROW}.term_taxonomy_id AND tt.taxonomy IN ({taxonomies});
  END IF;
END
