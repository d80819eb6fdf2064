-- Two products with the same link key on one blog are ambiguous: neither is linked.
-- The derived table is grouped, so it is materialised and may read the table being updated.
UPDATE `{base}syncd_member` m
JOIN (
  SELECT link_key FROM `{base}syncd_member`
  WHERE blog_id = :blog_id AND state IN ('linked', 'ambiguous')
  GROUP BY link_key HAVING COUNT(*) > 1
) dup ON dup.link_key = m.link_key
SET m.state = 'ambiguous'
WHERE m.blog_id = :blog_id AND m.state IN ('linked', 'ambiguous')
