-- Refresh the link-group membership of one blog's products from their _sku meta, their language
-- and the manual links. Placeholders: {base} network base prefix; {prefix} the blog's prefix;
-- {collation} the collation of the blog's wc_product_meta_lookup.sku column (validated
-- identifier: WooCommerce's own SKU uniqueness check compares through it); {lang_expr} the
-- product's language (built in catalog.py: Polylang term of the post, else of its parent, else
-- :lang; on a blog without Polylang just :lang); {only_ids} empty, or "AND p.ID IN (...)".
-- A product takes part when it has a non-empty SKU or a manual link. Grouped and external products
-- hold no stock of their own: kept as 'skipped'. Sub-selects are correlated (primary-key lookups)
-- so that refreshing a few products never materialises a whole-blog derived table.
-- group_id is assigned first, from the OLD row: kept when the key is unchanged, and kept across a
-- SKU rename of a linked product in the same language (stable group ids); reset otherwise (an
-- ambiguous product renamed, a language change, a manual link added or removed) so that
-- catalog.assign_groups gives it the group of its new key.
INSERT INTO `{base}syncd_member`
  (blog_id, post_id, link_key, sku_key, sku, lang, post_type, product_type, parent_id, group_id,
   link_kind, state, refreshed_at)
SELECT :blog_id, x.ID,
       IF(x.s_sku_key = '', '', CONCAT(CAST(x.s_lang AS BINARY), 0x00, x.s_sku_key)),
       x.s_sku_key, x.s_sku, x.s_lang, x.s_post_type, x.s_product_type, x.s_parent, NULL,
       IF(x.s_manual, 'manual', 'sku'),
       IF(NOT x.s_manual AND x.s_product_type IN ('grouped', 'external'), 'skipped', 'linked'),
       :now
FROM (
  SELECT p.ID, p.post_type AS s_post_type, p.post_parent AS s_parent,
         COALESCE(WEIGHT_STRING(CONVERT(TRIM(TRAILING ' ' FROM pm.meta_value) USING utf8mb4) COLLATE {collation}), '') AS s_sku_key,
         LEFT(COALESCE(pm.meta_value, ''), 255) AS s_sku,
         LEFT(LOWER({lang_expr}), 32) AS s_lang,
         COALESCE((
           SELECT MIN(t.slug) FROM `{prefix}term_relationships` tr
           JOIN `{prefix}term_taxonomy` tt ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.taxonomy = 'product_type'
           JOIN `{prefix}terms` t ON t.term_id = tt.term_id
           WHERE tr.object_id = p.ID
         ), '') AS s_product_type,
         l.post_id IS NOT NULL AS s_manual
  FROM `{prefix}posts` p
  LEFT JOIN `{prefix}postmeta` pm ON pm.post_id = p.ID AND pm.meta_key = '_sku'
    AND pm.meta_value IS NOT NULL AND TRIM(pm.meta_value) <> ''
  LEFT JOIN `{base}syncd_link` l ON l.blog_id = :blog_id AND l.post_id = p.ID
  WHERE p.post_type IN ('product', 'product_variation')
    AND p.post_status NOT IN ('trash', 'auto-draft', 'inherit')
    AND (pm.meta_id IS NOT NULL OR l.post_id IS NOT NULL)
    {only_ids}
) x
ON DUPLICATE KEY UPDATE
  group_id = IF(
    link_kind = VALUES(link_kind)
    AND (link_key = VALUES(link_key)
         OR (link_kind = 'sku' AND state = 'linked' AND lang = VALUES(lang) AND VALUES(sku_key) <> '')),
    group_id, NULL),
  link_key = VALUES(link_key), sku_key = VALUES(sku_key), sku = VALUES(sku), lang = VALUES(lang),
  post_type = VALUES(post_type), product_type = VALUES(product_type), parent_id = VALUES(parent_id),
  link_kind = VALUES(link_kind), state = VALUES(state), refreshed_at = VALUES(refreshed_at)
