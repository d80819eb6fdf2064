"""Issue 10, trigger cost: capture trigger version 2 tests the key with FIND_IN_SET first and the
IN list only for a key ending in a character that compares equal to a space. What it captures must
be exactly what version 1's IN list captured, in the column's own collation (PAD SPACE: '_stock '
equals '_stock'; case- and accent-insensitive); and a missing change table (syncd half-uninstalled)
still never fails the shop's write, now that the 1146 handler is pushed only for a watched key."""

from __future__ import annotations

from typing import Any

import pytest

from syncd import capture, schema
from tests.integration.test_capture_fields import WATCH, _blog, _install, _post, _term

BLOG = 2

#: Keys around the watched '_stock' and '_sku': equal to one in the column collation or not.
KEYS = [
    "_stock",
    "_STOCK",  # case
    "_stock ",  # PAD SPACE
    "_stock   ",
    "_stock\u00a0",  # no-break space: weighs as a space
    "_stock\u3000",  # ideographic space
    "_stock \u0001",  # a space, then an ignorable character
    "_\u017ftock",  # long s: equal to 's' at the primary level
    "_st\u00f6ck",  # accent
    " _stock",  # a leading space is not padding
    "_stocks",
    "_stoc",
    "_sku,_stock",  # FIND_IN_SET's separator inside the key
    "_stock,",
    "",
    "price",
    None,
]


def _in_list(c: Any, pm: str, meta_id: int) -> bool:
    """Version 1's test, evaluated by the server on the row: the key in the watched IN list."""
    found = c.exec_driver_sql(
        f"SELECT meta_key IN ({capture.watched_list()}) FROM {pm} WHERE meta_id = %s", (meta_id,)
    ).scalar_one()
    return bool(found)


def _rows(c: Any, change: str) -> list[tuple]:
    rows = c.exec_driver_sql(f"SELECT op, meta_key FROM {change} WHERE blog_id = {BLOG} ORDER BY id").all()
    c.exec_driver_sql(f"DELETE FROM {change}")
    c.commit()
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: repr(k))
def test_the_key_test_captures_exactly_what_the_in_list_did(wp_network, key):
    net = wp_network
    _install(net, capture.STOCK_ONLY)
    pm, change, post = net.table(BLOG, "postmeta"), f"{net.prefix}syncd_change", _post(net)
    with net.engine.connect() as c:
        c.exec_driver_sql(f"DELETE FROM {change}")
        meta_id = c.exec_driver_sql(
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (%s, %s, 'a')", (post, key)
        ).lastrowid
        c.commit()
        watched = _in_list(c, pm, meta_id)
        inserted = _rows(c, change)
        c.exec_driver_sql(f"UPDATE {pm} SET meta_value = 'b' WHERE meta_id = %s", (meta_id,))
        c.commit()
        updated = _rows(c, change)
        # Moved to an unwatched key and back: the OLD key alone, then the NEW key alone, is watched.
        c.exec_driver_sql(f"UPDATE {pm} SET meta_key = 'syncd_test_other' WHERE meta_id = %s", (meta_id,))
        c.commit()
        moved_away = _rows(c, change)
        c.exec_driver_sql(f"UPDATE {pm} SET meta_key = %s WHERE meta_id = %s", (key, meta_id))
        c.commit()
        moved_back = _rows(c, change)
        c.exec_driver_sql(f"DELETE FROM {pm} WHERE meta_id = %s", (meta_id,))
        c.commit()
        deleted = _rows(c, change)
    stored = key  # as the server stored it (the same bytes: utf8mb4)
    if watched:
        assert inserted == [("I", stored)]
        assert updated == [("U", stored)]
        assert moved_away == [("D", stored), ("I", "syncd_test_other")]
        assert moved_back == [("D", "syncd_test_other"), ("I", stored)]
        assert deleted == [("D", stored)]
    else:
        assert inserted == updated == moved_away == moved_back == deleted == []
    # The cases that matter are really there: what version 1 watched beyond the exact keys.
    if key in ("_STOCK", "_stock ", "_stock\u00a0", "_\u017ftock"):
        assert watched, "the column collation calls this key equal to _stock"


def test_a_missing_change_table_never_fails_the_shops_write(wp_network):
    """syncd half-uninstalled (its change table gone, its triggers still there): every write of
    the shop on every captured table goes through, watched or not."""
    net = wp_network
    _install(net, WATCH)
    pm, posts, rel = (
        net.table(BLOG, "postmeta"),
        net.table(BLOG, "posts"),
        net.table(BLOG, "term_relationships"),
    )
    post, change = _post(net), f"{net.prefix}syncd_change"
    cat = _term(net, "product_cat", "syncd-test-missing")
    with net.engine.connect() as c:
        c.exec_driver_sql(f"RENAME TABLE {change} TO {net.prefix}syncd_change_away")
        c.commit()
        try:
            for sql in (
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_low_stock_amount', '2')",
                f"UPDATE {pm} SET meta_value = '3' WHERE post_id = {post} AND meta_key = '_low_stock_amount'",
                f"UPDATE {pm} SET meta_value = '9.99' WHERE post_id = {post} AND meta_key = '_regular_price'",
                f"UPDATE {pm} SET meta_value = meta_value - 1 WHERE post_id = {post} AND meta_key = '_stock'",
                f"UPDATE {pm} SET meta_value = 'x' WHERE post_id = {post} AND meta_key = '_edit_lock'",
                f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_low_stock_amount'",
                f"UPDATE {posts} SET post_title = 'Renamed while half-uninstalled' WHERE ID = {post}",
                f"INSERT INTO {rel} (object_id, term_taxonomy_id) VALUES ({post}, {cat})",
                f"DELETE FROM {rel} WHERE object_id = {post} AND term_taxonomy_id = {cat}",
            ):
                c.exec_driver_sql(sql)
                c.commit()
            title = c.exec_driver_sql(f"SELECT post_title FROM {posts} WHERE ID = {post}").scalar_one()
        finally:
            c.exec_driver_sql(f"RENAME TABLE {net.prefix}syncd_change_away TO {change}")
            c.commit()
        assert title == "Renamed while half-uninstalled"
        # And capture resumes once the table is back.
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '8.99' WHERE post_id = {post} AND meta_key = '_regular_price'"
        )
        c.commit()
        assert _rows(c, change) == [("U", "_regular_price")]


def test_every_capture_trigger_is_current_after_install(wp_network):
    """The installed bodies are the rendered version-2 bodies (the upgrade path compares them)."""
    net = wp_network
    _install(net, WATCH)
    with net.engine.connect() as c:
        schema.ensure_schema(c, net.prefix)
        state = capture.blog_trigger_state(
            capture.installed_triggers(c, net.prefix), net.prefix, _blog(net), WATCH
        )
    assert state.state == "installed"
    assert capture.TRIGGER_VERSION == 2


#: Version 1's postmeta trigger bodies (sql/capture_trigger_*.sql before issue 10's trigger-cost
#: work), as every shop installed before has them: {w} the IN list, {base}, {blog}.
_V1_VALUES = "INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) VALUES "
V1_BODIES = {
    "insert": "BEGIN DECLARE CONTINUE HANDLER FOR 1146 BEGIN END; IF @syncd_apply IS NULL AND NEW.meta_key IN ({w}) THEN "
    + _V1_VALUES
    + "({blog}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID()); END IF; END",
    "update": "BEGIN DECLARE CONTINUE HANDLER FOR 1146 BEGIN END; IF @syncd_apply IS NULL AND (NEW.meta_key IN ({w}) "
    "OR OLD.meta_key IN ({w})) THEN IF OLD.post_id <> NEW.post_id OR NOT (OLD.meta_key <=> NEW.meta_key) THEN "
    + _V1_VALUES
    + "({blog}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID()), "
    "({blog}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID()); "
    "ELSEIF NOT (BINARY OLD.meta_value <=> BINARY NEW.meta_value) THEN "
    + _V1_VALUES
    + "({blog}, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID()); "
    "END IF; END IF; END",
    "delete": "BEGIN DECLARE CONTINUE HANDLER FOR 1146 BEGIN END; IF @syncd_apply IS NULL AND OLD.meta_key IN ({w}) THEN "
    + _V1_VALUES
    + "({blog}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID()); END IF; END",
}


def test_version_1_triggers_are_upgraded_and_capture_stays_exact(wp_network):
    """A shop upgrading syncd has version 1's three postmeta triggers: the installer finds them
    outdated, replaces them in place, and the same writes give the same change rows after."""
    net = wp_network
    _install(net, capture.STOCK_ONLY)
    blog, pm, post = _blog(net), net.table(BLOG, "postmeta"), _post(net)
    change = f"{net.prefix}syncd_change"

    def writes() -> list[tuple]:
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DELETE FROM {change}")
            for sql in (
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_low_stock_amount', '2')",
                f"UPDATE {pm} SET meta_value = '3' WHERE post_id = {post} AND meta_key = '_low_stock_amount'",
                f"UPDATE {pm} SET meta_value = '3' WHERE post_id = {post} AND meta_key = '_low_stock_amount'",
                f"UPDATE {pm} SET meta_value = '1.5' WHERE post_id = {post} AND meta_key = '_price'",
                f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_low_stock_amount'",
            ):
                c.exec_driver_sql(sql)
                c.commit()
            return _rows(c, change)

    with net.engine.connect() as c:
        for event, body in V1_BODIES.items():
            d = capture.render_trigger(net.prefix, blog, event)
            v1 = body.replace("{w}", capture.watched_list()).replace("{base}", net.prefix)
            c.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER `{d.name}` AFTER {event.upper()} ON `{d.table}` FOR EACH ROW "
                + v1.replace("{blog}", str(BLOG))
            )
        c.commit()
        state = capture.blog_trigger_state(capture.installed_triggers(c, net.prefix), net.prefix, blog)
    assert state.state == "outdated"
    before = writes()
    assert before == [("I", "_low_stock_amount"), ("U", "_low_stock_amount"), ("D", "_low_stock_amount")]
    assert _install(net, capture.STOCK_ONLY) == "upgraded"
    with net.engine.connect() as c:
        state = capture.blog_trigger_state(capture.installed_triggers(c, net.prefix), net.prefix, blog)
    assert state.state == "installed"
    assert writes() == before
