-- syncd attribution trigger {version}: remembers which connection captured each _stock change, so
-- that history (which keeps the change id) can be matched to {base}syncd_source by connection and
-- product after the change row itself is gone. Not for rows syncd queues itself (poll mode, dead-letter
-- retries: @syncd_apply set). Errors are swallowed: capture must never fail here.
CREATE TRIGGER `{name}` AFTER INSERT ON `{base}syncd_change` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF NEW.meta_key = '_stock' AND @syncd_apply IS NULL THEN
    INSERT INTO `{base}syncd_change_conn` (change_id, blog_id, post_id, conn_id, captured_at)
    VALUES (NEW.id, NEW.blog_id, NEW.post_id, NEW.conn_id, NEW.captured_at);
  END IF;
END
