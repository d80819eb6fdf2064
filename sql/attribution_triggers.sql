-- syncd attribution triggers {version} for blog {blog_id}: where a stock change came from.
-- Best effort by design: every error is swallowed (CONTINUE HANDLER FOR SQLEXCEPTION), so a
-- missing table or a surprise never fails the shop's own statement. Nothing here writes postmeta.
-- The statements are separated by lines holding only "-- ;".
--
-- An order's line item gets _reduced_stock (payment, checkout) or _restock_refunded_items (refund)
-- on the same connection that changed the product's _stock; a cancellation deletes _reduced_stock.
CREATE TRIGGER `{name}_oi_ai` AFTER INSERT ON `{prefix}woocommerce_order_itemmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF NEW.meta_key IN ('_reduced_stock', '_restock_refunded_items') THEN
    INSERT INTO `{base}syncd_source` (blog_id, conn_id, kind, product_id, order_id, user_id, recorded_at)
    SELECT {blog_id}, CONNECTION_ID(), IF(NEW.meta_key = '_reduced_stock', 'order', 'refund'),
      COALESCE(NULLIF((SELECT MAX(v.meta_value) FROM `{prefix}woocommerce_order_itemmeta` v
        WHERE v.order_item_id = NEW.order_item_id AND v.meta_key = '_variation_id'), '0'),
        (SELECT MAX(p.meta_value) FROM `{prefix}woocommerce_order_itemmeta` p
        WHERE p.order_item_id = NEW.order_item_id AND p.meta_key = '_product_id'), 0),
      (SELECT MAX(i.order_id) FROM `{prefix}woocommerce_order_items` i WHERE i.order_item_id = NEW.order_item_id),
      0, UTC_TIMESTAMP(6);
  END IF;
END
-- ;
CREATE TRIGGER `{name}_oi_au` AFTER UPDATE ON `{prefix}woocommerce_order_itemmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF NEW.meta_key IN ('_reduced_stock', '_restock_refunded_items') THEN
    INSERT INTO `{base}syncd_source` (blog_id, conn_id, kind, product_id, order_id, user_id, recorded_at)
    SELECT {blog_id}, CONNECTION_ID(), IF(NEW.meta_key = '_reduced_stock', 'order', 'refund'),
      COALESCE(NULLIF((SELECT MAX(v.meta_value) FROM `{prefix}woocommerce_order_itemmeta` v
        WHERE v.order_item_id = NEW.order_item_id AND v.meta_key = '_variation_id'), '0'),
        (SELECT MAX(p.meta_value) FROM `{prefix}woocommerce_order_itemmeta` p
        WHERE p.order_item_id = NEW.order_item_id AND p.meta_key = '_product_id'), 0),
      (SELECT MAX(i.order_id) FROM `{prefix}woocommerce_order_items` i WHERE i.order_item_id = NEW.order_item_id),
      0, UTC_TIMESTAMP(6);
  END IF;
END
-- ;
CREATE TRIGGER `{name}_oi_ad` AFTER DELETE ON `{prefix}woocommerce_order_itemmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF OLD.meta_key = '_reduced_stock' THEN
    INSERT INTO `{base}syncd_source` (blog_id, conn_id, kind, product_id, order_id, user_id, recorded_at)
    SELECT {blog_id}, CONNECTION_ID(), 'restock',
      COALESCE(NULLIF((SELECT MAX(v.meta_value) FROM `{prefix}woocommerce_order_itemmeta` v
        WHERE v.order_item_id = OLD.order_item_id AND v.meta_key = '_variation_id'), '0'),
        (SELECT MAX(p.meta_value) FROM `{prefix}woocommerce_order_itemmeta` p
        WHERE p.order_item_id = OLD.order_item_id AND p.meta_key = '_product_id'), 0),
      (SELECT MAX(i.order_id) FROM `{prefix}woocommerce_order_items` i WHERE i.order_item_id = OLD.order_item_id),
      0, UTC_TIMESTAMP(6);
  END IF;
END
-- ;
-- wp-admin's product save writes _edit_last (the user id) on the connection that then saves _stock.
CREATE TRIGGER `{name}_pm_ai` AFTER INSERT ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF NEW.meta_key = '_edit_last' AND @syncd_apply IS NULL THEN
    INSERT INTO `{base}syncd_source` (blog_id, conn_id, kind, product_id, order_id, user_id, recorded_at)
    VALUES ({blog_id}, CONNECTION_ID(), 'admin', NEW.post_id, 0, CAST(NEW.meta_value AS UNSIGNED), UTC_TIMESTAMP(6));
  END IF;
END
-- ;
CREATE TRIGGER `{name}_pm_au` AFTER UPDATE ON `{prefix}postmeta` FOR EACH ROW
BEGIN
  DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
  IF NEW.meta_key = '_edit_last' AND @syncd_apply IS NULL THEN
    INSERT INTO `{base}syncd_source` (blog_id, conn_id, kind, product_id, order_id, user_id, recorded_at)
    VALUES ({blog_id}, CONNECTION_ID(), 'admin', NEW.post_id, 0, CAST(NEW.meta_value AS UNSIGNED), UTC_TIMESTAMP(6));
  END IF;
END
