-- Refresh the link-group membership of one blog's products from their _sku meta.
-- {base}: network base prefix; {prefix}: the blog's prefix; {collation}: the collation of the
-- blog's wc_product_meta_lookup.sku column (validated identifier), which is how WooCommerce's own
-- SKU uniqueness check compares SKUs; {only_ids}: empty, or "AND p.ID IN (...)" of bound params.
-- Grouped and external products hold no stock of their own: they are kept as 'skipped'.
INSERT INTO `{base}syncd_member`
  (blog_id, post_id, link_key, sku, post_type, product_type, parent_id, state, refreshed_at)
SELECT :blog_id, p.ID,
       WEIGHT_STRING(CONVERT(TRIM(TRAILING ' ' FROM pm.meta_value) USING utf8mb4) COLLATE {collation}),
       LEFT(pm.meta_value, 255), p.post_type,
       COALESCE(pt.slug, ''), p.post_parent,
       IF(COALESCE(pt.slug, '') IN ('grouped', 'external'), 'skipped', 'linked'),
       :now
FROM `{prefix}posts` p
JOIN `{prefix}postmeta` pm ON pm.post_id = p.ID AND pm.meta_key = '_sku'
LEFT JOIN (
  SELECT tr.object_id, MIN(t.slug) AS slug
  FROM `{prefix}term_relationships` tr
  JOIN `{prefix}term_taxonomy` tt ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.taxonomy = 'product_type'
  JOIN `{prefix}terms` t ON t.term_id = tt.term_id
  GROUP BY tr.object_id
) pt ON pt.object_id = p.ID
WHERE p.post_type IN ('product', 'product_variation')
  AND p.post_status NOT IN ('trash', 'auto-draft', 'inherit')
  AND pm.meta_value IS NOT NULL AND TRIM(pm.meta_value) <> ''
  {only_ids}
ON DUPLICATE KEY UPDATE
  link_key = VALUES(link_key), sku = VALUES(sku), post_type = VALUES(post_type),
  product_type = VALUES(product_type), parent_id = VALUES(parent_id), state = VALUES(state),
  refreshed_at = VALUES(refreshed_at)
