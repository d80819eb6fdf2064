"""Golden tests of the SQL syncd builds (whitespace-normalised)."""

from __future__ import annotations

import re

import pytest

from syncd.capture import render_blog_triggers, render_trigger, trigger_name
from syncd.catalog import refresh_sql
from syncd.db import PrefixError, table, validate_prefix
from syncd.schema import schema_statements


def norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_trigger_update_golden():
    d = render_trigger("wp_", (3, "wp_3_"), "update")
    assert d.name == "wp_syncd_b3_au"
    assert d.table == "wp_3_postmeta"
    s = norm(d.create_sql)
    assert s.startswith(
        "CREATE TRIGGER `wp_syncd_b3_au` AFTER UPDATE ON `wp_3_postmeta` FOR EACH ROW BEGIN capture: BEGIN "
        "IF @syncd_apply IS NOT NULL THEN LEAVE capture; END IF; "
    )
    # Version 2 (issue 10's trigger cost): FIND_IN_SET first; the IN list (PAD SPACE equality, what
    # version 1 captured) only for a key whose last character compares equal to a space.
    keys = "_stock,_manage_stock,_backorders,_low_stock_amount,_stock_status,_sku,_wp_trash_meta_status"
    in_list = "('_stock', '_manage_stock', '_backorders', '_low_stock_amount', '_stock_status', '_sku', '_wp_trash_meta_status')"
    assert (
        f"IF (FIND_IN_SET(NEW.meta_key, '{keys}') OR FIND_IN_SET(OLD.meta_key, '{keys}')) IS NOT TRUE THEN "
        "IF (RIGHT(NEW.meta_key, 1) = ' ' OR RIGHT(OLD.meta_key, 1) = ' ') IS NOT TRUE THEN LEAVE capture; END IF; "
        f"IF (NEW.meta_key IN {in_list} OR OLD.meta_key IN {in_list}) IS NOT TRUE THEN LEAVE capture; END IF; "
        "END IF; BEGIN DECLARE CONTINUE HANDLER FOR 1146 BEGIN END; "
    ) in s
    assert "ELSEIF NOT (BINARY OLD.meta_value <=> BINARY NEW.meta_value) THEN" in s
    assert (
        "INSERT INTO `wp_syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) VALUES (3, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID());"
        in s
    )
    assert s.endswith("END IF; END; END capture; END")
    assert d.body.startswith("BEGIN")


def test_trigger_names_per_blog_and_event():
    assert [d.name for d in render_blog_triggers("shop_", (1, "shop_"))] == [
        "shop_syncd_b1_ai",
        "shop_syncd_b1_au",
        "shop_syncd_b1_ad",
    ]
    assert trigger_name("wp_", 12, "delete") == "wp_syncd_b12_ad"


@pytest.mark.parametrize("bad", ["wp-", "wp_; DROP TABLE x", "", "wp_`", "a" * 33])
def test_prefixes_are_validated_everywhere(bad):
    with pytest.raises(PrefixError):
        validate_prefix(bad)
    with pytest.raises(PrefixError):
        render_trigger(bad, (1, "wp_"), "insert")
    with pytest.raises(PrefixError):
        table(bad, "posts")


def test_member_refresh_golden():
    s = norm(refresh_sql("wp_", "wp_2_", "utf8mb4_unicode_520_ci", 2))
    assert s.startswith(
        "INSERT INTO `wp_syncd_member` (blog_id, post_id, link_key, sku_key, sku, lang, post_type, product_type, "
        "parent_id, group_id, link_kind, state, refreshed_at) SELECT :blog_id, x.ID, "
        "IF(x.s_sku_key = '', '', CONCAT(CAST(x.s_lang AS BINARY), 0x00, x.s_sku_key))"
    )
    assert (
        "COALESCE(WEIGHT_STRING(CONVERT(TRIM(TRAILING ' ' FROM pm.meta_value) USING utf8mb4) COLLATE utf8mb4_unicode_520_ci), '') AS s_sku_key"
        in s
    )
    assert (
        "FROM `wp_2_posts` p LEFT JOIN `wp_2_postmeta` pm ON pm.post_id = p.ID AND pm.meta_key = '_sku'" in s
    )
    assert "LEFT JOIN `wp_syncd_link` l ON l.blog_id = :blog_id AND l.post_id = p.ID" in s
    assert "AND (pm.meta_id IS NOT NULL OR l.post_id IS NOT NULL) AND p.ID IN (:id0, :id1)" in s
    assert "IF(NOT x.s_manual AND x.s_product_type IN ('grouped', 'external'), 'skipped', 'linked')" in s
    # Without Polylang the language is the bound :lang; with it, the post's term, its parent's, then :lang.
    assert "LEFT(LOWER(:lang), 32) AS s_lang" in s
    poly = norm(refresh_sql("wp_", "wp_2_", "utf8mb4_unicode_520_ci", None, polylang=True))
    assert "ltt.taxonomy = 'language'" in poly and "WHERE ltr.object_id = p.ID)" in poly
    assert "WHERE ltr.object_id = p.post_parent), :lang)" in poly
    # The group is decided from the old row before anything else is overwritten (stable ids).
    assert "ON DUPLICATE KEY UPDATE group_id = IF( link_kind = VALUES(link_kind)" in s
    assert "AND p.ID IN" not in norm(refresh_sql("wp_", "wp_", "utf8mb4_general_ci", None))
    with pytest.raises(ValueError):
        refresh_sql("wp_", "wp_", "utf8mb4; DROP", None)


def test_schema_statements_use_the_base_prefix_only():
    stmts = schema_statements("shop_")
    names = [re.search(r"CREATE TABLE IF NOT EXISTS `([^`]+)`", s).group(1) for s in stmts]
    assert names == [
        "shop_syncd_meta",
        "shop_syncd_change",
        "shop_syncd_dead",
        "shop_syncd_member",
        "shop_syncd_group",
        "shop_syncd_link",
        "shop_syncd_history",
        "shop_syncd_snapshot",
        "shop_syncd_settle",
        "shop_syncd_fanout",
        "shop_syncd_register",
        "shop_syncd_user",
        "shop_syncd_token",
        "shop_syncd_source",
        "shop_syncd_change_conn",
        "shop_syncd_field_defer",
        "shop_syncd_field_check",
    ]
    assert all("{base}" not in s for s in stmts)


def test_settle_statements_bind_every_value():
    from datetime import datetime
    from decimal import Decimal

    from syncd import settle

    sql, params = settle.record_sql(
        "shop_", [settle.Record(2, 28, "join", Decimal(-2), datetime(2026, 1, 1))]
    )
    assert " ".join(sql.split()) == (
        "INSERT INTO `shop_syncd_settle` "
        "(blog_id, post_id, kind, stock_delta, copy_values, last_change_at, queued_at, reason) "
        "VALUES (%s, %s, %s, %s, %s, COALESCE(%s, UTC_TIMESTAMP(6)), UTC_TIMESTAMP(6), %s) "
        "ON DUPLICATE KEY UPDATE stock_delta = stock_delta + VALUES(stock_delta), "
        "copy_values = GREATEST(copy_values, VALUES(copy_values)), "
        "last_change_at = GREATEST(last_change_at, VALUES(last_change_at)), reason = VALUES(reason)"
    )
    assert params == (2, 28, "join", Decimal(-2), 1, datetime(2026, 1, 1), "")
    # A heal of a member that missed only sales adds them; one that must copy says so (1 wins on merge).
    _, params = settle.record_sql("shop_", [settle.Record(3, 7, "heal", Decimal(-1), copy_values=False)])
    assert params == (3, 7, "heal", Decimal(-1), 0, None, "")
    sql, params = settle.frozen_sql("shop_", [(2, 9), (1, 5), (2, 3)])
    assert sql.endswith(
        "WHERE kind = 'join' AND ((blog_id = %s AND post_id IN (%s)) OR (blog_id = %s AND post_id IN (%s, %s)))"
    )
    assert params == (1, 5, 2, 3, 9)
    sql, params = settle.due_sql("shop_", 2.5, 50)
    assert "INTERVAL %s MICROSECOND" in sql and "NOT EXISTS (SELECT 1 FROM `shop_syncd_change` c" in sql
    assert params == (2_500_000, 50)


def test_field_watch_order_and_poll_refusals():
    from dataclasses import dataclass

    from syncd.capture import STOCK_ONLY, Watch
    from syncd.fields.realtime import poll_refusals
    from syncd.plan import WATCHED_KEYS

    @dataclass
    class G:
        name: str
        meta_keys: tuple[str, ...] = ()
        post_columns: tuple[str, ...] = ()
        taxonomies: tuple[str, ...] = ()

    price = G("price", ("_sale_price", "_regular_price", "_stock"))
    content = G("content", (), ("post_title",))
    terms = G("taxonomy", (), (), ("product_tag", "product_cat"))
    w = Watch.of([price, content, terms])
    # Stock keys first and unchanged (their trigger bodies stay as before), the rest sorted, once.
    assert w.meta_keys == (*WATCHED_KEYS, "_regular_price", "_sale_price")
    assert w.taxonomies == ("product_cat", "product_tag") and w.post_columns == ("post_title",)
    assert Watch.of([]) == STOCK_ONLY
    assert (
        render_blog_triggers("wp_", (2, "wp_2_"), Watch.of([price]))
        and len(render_blog_triggers("wp_", (2, "wp_2_"), w)) == 6
    )
    refused = poll_refusals({"price": price, "content": content, "taxonomy": terms})
    assert len(refused) == 2
    assert refused[0].startswith('[fields] content = "realtime" needs triggers (post columns')
    assert "taxonomy terms" in refused[1]


def test_realtime_field_index_maps_change_keys_to_group_fields():
    from dataclasses import dataclass

    from syncd.fields.realtime import RealtimeFields

    @dataclass
    class G:
        name: str
        meta_keys: tuple[str, ...] = ()
        post_columns: tuple[str, ...] = ()
        taxonomies: tuple[str, ...] = ()

    rt = RealtimeFields(
        {
            "price": G("price", ("_regular_price", "_stock")),
            "content": G("content", (), ("post_title",)),
            "taxonomy": G("taxonomy", (), (), ("product_cat",)),
        },
        lambda g, b: True,
    )
    assert rt.index() == {
        "_regular_price": ("price", "_regular_price"),  # _stock is never a field's: stock has its own rules
        "post:post_title": ("content", "post_title"),
        "terms:product_cat": ("taxonomy", "terms:product_cat"),
    }
