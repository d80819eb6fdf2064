-- syncd's own tables. {base} is the network's validated base prefix (e.g. wp_).
-- Every statement is idempotent (MySQL/MariaDB DDL commits implicitly, so each step must be safe
-- to re-run); schema.py applies them in order and records the version in {base}syncd_meta.
-- Statements are separated by lines holding only "-- ;".

-- Key/value state: schema version, trigger version per blog, daemon heartbeat and counters.
CREATE TABLE IF NOT EXISTS `{base}syncd_meta` (
  `name` VARCHAR(191) NOT NULL,
  `value` TEXT NULL,
  `updated_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- One row per captured stock change, written by the capture triggers inside the writer's own
-- transaction. The daemon deletes exactly the rows it applied, in the apply transaction.
-- `stmt`: the rows of one statement (same connection and capture time) are found together, so a
-- batch never splits them (syncd.queue).
CREATE TABLE IF NOT EXISTS `{base}syncd_change` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `meta_key` VARCHAR(255) NOT NULL,
  `op` CHAR(1) NOT NULL,
  `old_value` LONGTEXT NULL,
  `new_value` LONGTEXT NULL,
  `captured_at` DATETIME(6) NOT NULL,
  `conn_id` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (`id`),
  KEY `stmt` (`conn_id`, `captured_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Changes that could not be applied safely (kept, never dropped: an operator decides, with
-- `syncd dead-letters retry|discard`). error_class: permanent_error (errno), origin_blog_gone,
-- origin_blog_excluded (syncd.queue).
CREATE TABLE IF NOT EXISTS `{base}syncd_dead` (
  `id` BIGINT UNSIGNED NOT NULL,
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `meta_key` VARCHAR(255) NOT NULL,
  `op` CHAR(1) NOT NULL,
  `old_value` LONGTEXT NULL,
  `new_value` LONGTEXT NULL,
  `captured_at` DATETIME(6) NOT NULL,
  `conn_id` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  `failed_at` DATETIME(6) NOT NULL,
  `error_class` VARCHAR(32) NOT NULL DEFAULT 'permanent_error',
  `errno` INT NULL,
  `error` TEXT NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Link-group membership: which product on which blog is "the same thing" as which on another.
-- sku_key is the SKU's collation weight (WooCommerce compares SKUs by the column collation), lang
-- the product's language (Polylang term, else the blog's configured or locale language), link_key
-- lang + 0x00 + sku_key ('' without a SKU). group_id is the member's link group
-- ({base}syncd_group): kept across a SKU rename of a linked member, so groups have stable ids.
-- link_kind: 'sku' (grouped by link_key) or 'manual' (grouped by {base}syncd_link).
-- Schema 1 had no group_id: schema.py drops that table (a cache of postmeta) before this runs.
CREATE TABLE IF NOT EXISTS `{base}syncd_member` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `link_key` VARBINARY(1024) NOT NULL,
  `sku_key` VARBINARY(1024) NOT NULL DEFAULT '',
  `sku` VARCHAR(255) NOT NULL,
  `lang` VARCHAR(32) NOT NULL DEFAULT '',
  `post_type` VARCHAR(20) NOT NULL,
  `product_type` VARCHAR(32) NOT NULL DEFAULT '',
  `parent_id` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  `group_id` BIGINT UNSIGNED NULL,
  `link_kind` VARCHAR(8) NOT NULL DEFAULT 'sku',
  `state` VARCHAR(16) NOT NULL DEFAULT 'linked',
  `refreshed_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`blog_id`, `post_id`),
  KEY `link` (`link_key`(255), `blog_id`),
  KEY `grp` (`group_id`, `blog_id`),
  KEY `sku_key` (`blog_id`, `sku_key`(255))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Link groups, with ids that never change. A 'sku' group is known under link_key (key_hash =
-- SHA-256 of it, unique): a product without a group joins the group of its key. A propagated SKU
-- rename moves the group's key; with sync.propagate_sku_renames off it stays. 'manual' groups
-- have no key: their members are listed in {base}syncd_link. sku_lang: the dashboard's products page
-- (ordered by SKU, paged; older tables get it from schema.py).
CREATE TABLE IF NOT EXISTS `{base}syncd_group` (
  `group_id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `kind` VARCHAR(8) NOT NULL DEFAULT 'sku',
  `key_hash` BINARY(32) NULL,
  `link_key` VARBINARY(1024) NULL,
  `sku` VARCHAR(255) NOT NULL DEFAULT '',
  `lang` VARCHAR(32) NOT NULL DEFAULT '',
  `created_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`group_id`),
  UNIQUE KEY `key_hash` (`key_hash`),
  KEY `sku_lang` (`sku`, `lang`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Manual links (`syncd link`): these products form one group whatever their SKUs, overriding
-- SKU matching. Kept until `syncd unlink`; a product that is deleted stays listed (and unsynced)
-- until then.
CREATE TABLE IF NOT EXISTS `{base}syncd_link` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `group_id` BIGINT UNSIGNED NOT NULL,
  `created_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`blog_id`, `post_id`),
  KEY `grp` (`group_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- source: who asked for a write ('dashboard:NAME' for the dashboard's set stock, sync and reconcile);
-- NULL for the daemon and the command line. Older tables get the column from schema.py.
-- Every applied change: one 'origin' row for the captured change, one 'copy' row per member
-- written because of it, and one 'skipped' row (with the reason in note) per member left alone;
-- 'reconcile' rows for what reconcile and `syncd sync` wrote, 'set' rows for `syncd set-stock`.
CREATE TABLE IF NOT EXISTS `{base}syncd_history` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `applied_at` DATETIME(6) NOT NULL,
  `batch_id` BIGINT UNSIGNED NOT NULL,
  `change_id` BIGINT UNSIGNED NOT NULL,
  `captured_at` DATETIME(6) NOT NULL,
  `role` VARCHAR(16) NOT NULL,
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `sku` VARCHAR(255) NOT NULL DEFAULT '',
  `link_key` VARBINARY(1024) NULL,
  `meta_key` VARCHAR(255) NOT NULL,
  `old_value` VARCHAR(255) NULL,
  `new_value` VARCHAR(255) NULL,
  `delta` DECIMAL(30,6) NULL,
  `origin_blog_id` INT UNSIGNED NOT NULL,
  `origin_post_id` BIGINT UNSIGNED NOT NULL,
  `note` VARCHAR(255) NULL,
  `source` VARCHAR(191) NULL,
  `field_group` VARCHAR(16) NULL,
  `old_hash` CHAR(40) NULL,
  `new_hash` CHAR(40) NULL,
  PRIMARY KEY (`id`),
  KEY `sku` (`sku`(64), `applied_at`),
  KEY `applied_at` (`applied_at`),
  KEY `change_id` (`change_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Poll mode only: the last seen value of every watched meta row, per blog. The poller diffs
-- postmeta against it to synthesise change rows; the applier keeps it current for its own writes.
CREATE TABLE IF NOT EXISTS `{base}syncd_snapshot` (
  `blog_id` INT UNSIGNED NOT NULL,
  `meta_id` BIGINT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `meta_key` VARCHAR(255) NOT NULL,
  `value` LONGTEXT NULL,
  PRIMARY KEY (`blog_id`, `meta_id`),
  KEY `post` (`blog_id`, `post_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Products that are joining their link group, or whose copy must be finished, once WooCommerce
-- has finished writing them (syncd.settle). A WooCommerce save is many autocommit statements by a
-- PHP process that read the meta cache first: a row syncd inserted meanwhile would be inserted a
-- second time by WooCommerce. kind 'join': the product joins its group (takes the group's stock and
-- settings) once no change of it has been captured for sync.settle_seconds; until then syncd
-- writes nothing into it, and stock_delta sums its own sales, carried into the join. kind 'heal':
-- a linked member whose copy could not be written safely (a row it lacks while it was being saved,
-- or its derived step failed), or that missed changes while its blog was not live: with copy_values
-- = 1 it takes the group's values and its derived data is recomputed; with copy_values = 0 it missed
-- only stock deltas (sales), summed in stock_delta, and receives them as deltas (a copy would lose
-- its own sales that other members missed in turn).
CREATE TABLE IF NOT EXISTS `{base}syncd_settle` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `kind` VARCHAR(8) NOT NULL,
  `stock_delta` DECIMAL(30,6) NOT NULL DEFAULT 0,
  `copy_values` TINYINT(1) NOT NULL DEFAULT 1,
  `last_change_at` DATETIME(6) NOT NULL,
  `queued_at` DATETIME(6) NOT NULL,
  `attempts` INT UNSIGNED NOT NULL DEFAULT 0,
  `reason` VARCHAR(255) NOT NULL DEFAULT '',
  PRIMARY KEY (`blog_id`, `post_id`, `kind`),
  KEY `due` (`last_change_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Polylang for WooCommerce's per-translation stock copies still expected (syncd.fanout): written by
-- the batch that applied a stock change on a blog whose translations share stock, deleted by the
-- batch that captures the add-on's copy on the same connection, so that it is counted once.
CREATE TABLE IF NOT EXISTS `{base}syncd_fanout` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `conn_id` BIGINT UNSIGNED NOT NULL,
  `change_id` BIGINT UNSIGNED NOT NULL,
  `old_value` VARCHAR(191) NULL,
  `new_value` VARCHAR(191) NULL,
  `created_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`blog_id`, `post_id`, `conn_id`, `change_id`),
  KEY `created_at` (`created_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- The newest captured change applied per link group and register key (syncd.record): a register
-- change older than it (a held blog's, a retried dead letter's, one committed late) is superseded,
-- never written over the newer value: last captured wins across batches, not only within one.
CREATE TABLE IF NOT EXISTS `{base}syncd_register` (
  `group_id` BIGINT UNSIGNED NOT NULL,
  `meta_key` VARCHAR(64) NOT NULL,
  `change_id` BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (`group_id`, `meta_key`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Dashboard users (`syncd dashboard add-user`): password as a salted scrypt hash
-- ("scrypt$n$r$p$salt$hash", hex), role 'admin' or 'read-only'.
CREATE TABLE IF NOT EXISTS `{base}syncd_user` (
  `name` VARCHAR(64) NOT NULL,
  `password_hash` VARCHAR(255) NOT NULL,
  `role` VARCHAR(16) NOT NULL DEFAULT 'admin',
  `created_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Dashboard bearer tokens (`syncd dashboard token create NAME`) and login sessions: only the
-- SHA-256 of the secret is stored (the secret itself is 32 random bytes, shown once / in a cookie).
CREATE TABLE IF NOT EXISTS `{base}syncd_token` (
  `token_hash` BINARY(32) NOT NULL,
  `kind` VARCHAR(8) NOT NULL,
  `user_name` VARCHAR(64) NOT NULL,
  `csrf` VARCHAR(64) NOT NULL DEFAULT '',
  `created_at` DATETIME(6) NOT NULL,
  `expires_at` DATETIME(6) NULL,
  PRIMARY KEY (`token_hash`),
  KEY `user_name` (`user_name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Attribution (syncd/attribution.py): what a shop connection did next to a stock change - an
-- order's _reduced_stock / refund / cancellation item meta, an admin's _edit_last - written by
-- syncd's attribution triggers in the shop's own statements.
CREATE TABLE IF NOT EXISTS `{base}syncd_source` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `blog_id` INT UNSIGNED NOT NULL,
  `conn_id` BIGINT UNSIGNED NOT NULL,
  `kind` VARCHAR(16) NOT NULL,
  `product_id` BIGINT UNSIGNED NOT NULL,
  `order_id` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  `user_id` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  `recorded_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`id`),
  KEY `conn` (`blog_id`, `conn_id`, `product_id`),
  KEY `recorded_at` (`recorded_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- The connection that captured each _stock change (history keeps the change id, not the connection).
CREATE TABLE IF NOT EXISTS `{base}syncd_change_conn` (
  `change_id` BIGINT UNSIGNED NOT NULL,
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `conn_id` BIGINT UNSIGNED NOT NULL,
  `captured_at` DATETIME(6) NOT NULL,
  PRIMARY KEY (`change_id`),
  KEY `captured_at` (`captured_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Members a manual or scheduled field pass deferred (syncd.fields.deferred): the member (or its
-- parent) was saved less than sync.settle_seconds ago, so the pass wrote nothing into it. Once
-- it has settled the daemon writes the pass's values (`wanted`, JSON) of these fields, recorded in
-- the pass's history batch, unless the member's value changed after the pass (`held`: JSON,
-- field -> the value it held when the pass looked): a newer value is never overwritten.
CREATE TABLE IF NOT EXISTS `{base}syncd_field_defer` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `field_group` VARCHAR(16) NOT NULL,
  `link_group` BIGINT UNSIGNED NOT NULL,
  `sku` VARCHAR(255) NOT NULL,
  `origin_blog_id` INT UNSIGNED NOT NULL,
  `origin_post_id` BIGINT UNSIGNED NOT NULL,
  `batch_id` BIGINT UNSIGNED NOT NULL,
  `held` MEDIUMTEXT NOT NULL,
  `wanted` MEDIUMTEXT NOT NULL,
  `deferred_at` DATETIME(6) NOT NULL,
  `attempts` INT UNSIGNED NOT NULL DEFAULT 0,
  `reason` VARCHAR(255) NOT NULL DEFAULT '',
  `source` VARCHAR(191) NULL,
  PRIMARY KEY (`blog_id`, `post_id`, `field_group`),
  KEY `due` (`deferred_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
-- ;
-- Products syncd wrote a field group's values into whose derived rows a WooCommerce save may
-- overwrite (syncd.fields.recheck): a save that loaded the product before syncd's write and bumps
-- post_modified only afterwards writes the _price it computed from the values it loaded (trace 09,
-- 48 -> 54 -> 89). Once the product has settled the daemon derives them again from its own values.
CREATE TABLE IF NOT EXISTS `{base}syncd_field_check` (
  `blog_id` INT UNSIGNED NOT NULL,
  `post_id` BIGINT UNSIGNED NOT NULL,
  `field_group` VARCHAR(16) NOT NULL,
  `written_at` DATETIME(6) NOT NULL,
  `attempts` INT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (`blog_id`, `post_id`, `field_group`),
  KEY `due` (`written_at`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
