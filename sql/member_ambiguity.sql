-- Two SKU-matched products of one link group on one blog are ambiguous: neither is linked (a
-- manual link, `syncd link`, says which one is meant). The derived table is grouped, so it is
-- materialised and may read the table being updated.
UPDATE `{base}syncd_member` m
JOIN (
  SELECT group_id FROM `{base}syncd_member`
  WHERE blog_id = :blog_id AND state IN ('linked', 'ambiguous') AND link_kind = 'sku' AND group_id IS NOT NULL
  GROUP BY group_id HAVING COUNT(*) > 1
) dup ON dup.group_id = m.group_id
SET m.state = 'ambiguous'
WHERE m.blog_id = :blog_id AND m.state IN ('linked', 'ambiguous') AND m.link_kind = 'sku'
