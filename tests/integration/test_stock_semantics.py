"""Issue 9 path 11: one "manages stock" predicate and one quantity parser, on a real server.

* ``_manage_stock`` is read as WooCommerce reads it. ``WC_Product::set_manage_stock()`` stores
  ``wc_string_to_bool($value)``, and WooCommerce 11's ``wc_string_to_bool()``
  (plugins/woocommerce/includes/wc-formatting-functions.php, read in the woocommerce/woocommerce
  source) is ``is_bool ? value : 'yes' === strtolower(v) || 1 === v || 'true' === strtolower(v)
  || '1' === v``: 'Yes', 'TRUE' and '1' (what importers write) manage stock, checkouts decrement
  such a product's ``_stock``, and syncd must carry those sales. ('on' is NOT true there.)
* A stored quantity is a number for syncd exactly when the shops' own SQL arithmetic
  (``meta_value - N`` on the text column, WordPress's non-strict sql_mode) reads the whole text,
  without a truncation warning (trailing whitespace: a warning, the same number), and exactly
  (|q| <= 10^15); everything else is skipped with a reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from syncd import woo
from syncd.config import config_for
from syncd.plan import StockValueError, parse_quantity
from tests.integration.sync_helpers import ids, make_daemon, meta, qty, woo_decrease
from tests.integration.test_audit_reconcile import audit, drift_sql, installed, run_reconcile

#: What WordPress leaves of sql_mode (wpdb::$incompatible_modes removed): no strict mode.
WORDPRESS_SQL_MODE = "NO_ENGINE_SUBSTITUTION"


def _set_without_capture(net: Any, blog: int, post: int, key: str, value: str) -> None:
    drift_sql(net, blog, post, key, value, captured=False)


@pytest.mark.parametrize("manage", ["Yes", "1", "TRUE"])
def test_manage_stock_truthy_spellings_from_an_import_still_carry_sales(wp_network, manage):
    """An importer wrote _manage_stock = 'Yes' / '1' / 'TRUE' on every blog (WooCommerce: manages
    stock). A checkout on blog 1 must reach blogs 2 and 3; before the fix the planner's
    `== 'yes'` called the targets unmanaged and silently dropped the delta."""
    net = wp_network
    mug = ids(net, "MUG")
    for b in (1, 2, 3):
        _set_without_capture(net, b, mug[b], "_manage_stock", manage)
    d = make_daemon(net)
    try:
        before = [qty(net, b, mug[b]) for b in (1, 2, 3)]
        assert len(set(before)) == 1
        woo_decrease(net, 1, mug[1], 2)
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [before[0] - 2] * 3
        assert [meta(net, b, mug[b], "_manage_stock") for b in (1, 2, 3)] == [manage] * 3  # left as is
    finally:
        d.close()


def test_manage_stock_truthy_spellings_in_audit_reconcile_and_set_stock(wp_network):
    """Audit reports quantity drift between 'Yes' and '1' members, reconcile fixes it, set-stock
    writes every one of them (the spellings differ: that is register drift, reported as such)."""
    from syncd.reconcile import set_stock

    net = wp_network
    installed(net)
    mug = ids(net, "MUG")
    for b, spelling in ((1, "Yes"), (2, "1"), (3, "Yes")):
        _set_without_capture(net, b, mug[b], "_manage_stock", spelling)
    _set_without_capture(net, 3, mug[3], "_stock", "1")
    drifted = {g["sku"]: set(g["fields"]) for g in audit(net).document()["drift"]}
    assert "quantity" in drifted.get("MUG", set()), drifted
    run_reconcile(net)
    assert len({qty(net, b, mug[b]) for b in (1, 2, 3)}) == 1
    outcome, errors = set_stock(config_for(net.url, net.prefix), "MUG", "9")
    assert errors == [] and [qty(net, b, mug[b]) for b in (1, 2, 3)] == [9, 9, 9], outcome


def test_wc_string_to_bool_is_woocommerces():
    for v in ("yes", "Yes", "YES", "true", "True", "1", 1, True):
        assert woo.manages_stock(v) is True, v
    for v in ("no", "", None, "0", "on", " yes", "yes ", "2", 0, False, "y"):
        assert woo.manages_stock(v) is False, v


# Texts a shop, an importer or a hand-edit may leave in _stock.
TEXTS = [
    "5", "5.000000", "-2", "+3", "0", "-0", "42.5", ".5", "5.", " 7", "7 ", "\t7\n", "1e3", "2E2",
    "1e15", "-1e15", "1000000000000000", "1000000000000001", "1e16", "9007199254740993", "1e400",
    "", " ", "abc", "5abc", "5 5", "0x1A", "1_000", "١٢", "NaN", "nan", "inf", "Infinity", "--1",
    "1,5", "1.2.3", "e5", "5e",
]  # fmt: skip


def _server_reads(conn: sa.Connection, text: str) -> tuple[float, bool]:
    """What `meta_value - 0` gives on a LONGTEXT row holding ``text``, and whether the server
    had to truncate or refuse part of it (a warning) to get there."""
    conn.exec_driver_sql("DELETE FROM q")
    conn.execute(sa.text("INSERT INTO q (v) VALUES (:t)"), {"t": text})
    value = conn.exec_driver_sql("SELECT v - 0 FROM q").scalar_one()
    warnings = conn.exec_driver_sql("SHOW WARNINGS").all()
    return float(value), bool(warnings)


def test_quantity_parser_agrees_with_the_servers_arithmetic(wp_network):
    """plan.parse_quantity is the one parser: it accepts a text exactly when the server reads it
    whole (no warning) and exactly, and then gives the server's number. Before the fix the
    planner's Decimal() accepted '1_000' (server: 1) and Arabic-Indic digits (server: 0)."""
    net = wp_network
    with net.engine.connect() as conn:
        conn.exec_driver_sql(f"SET SESSION sql_mode = '{WORDPRESS_SQL_MODE}'")
        conn.exec_driver_sql("CREATE TEMPORARY TABLE q (v LONGTEXT) DEFAULT CHARSET = utf8mb4")
        for text in TEXTS:
            server, warned = _server_reads(conn, text)
            try:
                mine = parse_quantity(text)
            except StockValueError:
                mine = None
            if mine is not None:
                # Trailing whitespace: the server warns but reads the same number (PHP 8 calls
                # it numeric too); anything else it warns about is refused by syncd.
                assert not warned or text != text.rstrip(), f"{text!r}: syncd {mine}, the server warns"
                assert float(mine) == server, f"{text!r}: syncd {mine}, server {server}"
                assert abs(mine) <= Decimal(10) ** 15
            else:
                # Refused: the server would have made something up, or lost exactness.
                assert warned or abs(server) > 1e15 or text.strip() == "", (
                    f"{text!r} refused, server reads {server}"
                )
        # The derived step, audit and reconcile use the very same function.
        assert woo.parse_stock is parse_quantity
