-- syncd capture trigger {version}: posts UPDATE on blog {blog_id}, for the post columns of the
-- realtime field groups (issue 10). Products and variations only; never syncd's own writes.
-- One change row per watched column whose value really changed (byte comparison), keyed
-- 'post:<column>', op 'U', old and new column values (the rows of one UPDATE are one statement
-- group: same connection, same statement time). Creating or deleting a post is not captured.
CREATE TRIGGER `{trigger}` AFTER UPDATE ON `{prefix}posts` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;
  IF @syncd_apply IS NULL AND NEW.post_type IN ('product', 'product_variation') THEN
{columns}
  END IF;
END
