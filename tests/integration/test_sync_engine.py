"""End-to-end: triggers capture WooCommerce-style writes, the daemon applies them to every linked
product on the other blogs (real server, recorded WooCommerce 11 network)."""

from __future__ import annotations

from decimal import Decimal

from syncd.testnet.factory import ProductFactory
from tests.integration.sync_helpers import (
    ids,
    make_daemon,
    meta,
    pending,
    qty,
    set_meta,
    stock,
    woo_decrease,
    woo_increase,
)


def test_sale_on_one_blog_reaches_the_others(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        tshirt = ids(net, "TSHIRT-RED")
        assert set(tshirt) == {1, 2, 3}
        woo_decrease(net, 1, tshirt[1], 3)
        assert pending(net) == 1
        assert d.apply_pending() == 1
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [7, 7, 7]
        # The relative update keeps WooCommerce's text form of arithmetic results.
        assert stock(net, 2, tshirt[2]) == "7"
        # Echo: syncd's own writes are never captured.
        assert pending(net) == 0
    finally:
        d.close()


def test_concurrent_sales_on_two_blogs_both_count(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        mug = ids(net, "MUG")
        woo_decrease(net, 1, mug[1], 1)
        woo_decrease(net, 2, mug[2], 1)
        woo_increase(net, 3, mug[3], 5)
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [6, 6, 6]
        assert pending(net) == 0
    finally:
        d.close()


def test_registers_last_change_wins(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        mug = ids(net, "MUG")
        set_meta(net, 1, mug[1], "_backorders", "notify")
        set_meta(net, 3, mug[3], "_backorders", "yes")
        d.apply_pending()
        assert [meta(net, b, mug[b], "_backorders") for b in (1, 2, 3)] == ["yes", "yes", "yes"]
    finally:
        d.close()


def test_ambiguous_sku_is_not_linked(wp_network):
    """Two products of one language with one SKU on one blog: neither is linked (the others still are).
    (BOOK en/fr on blogs 2 and 3 is no longer ambiguous: the key is SKU + language.)"""
    net = wp_network
    d = make_daemon(net)
    try:
        mug = ids(net, "MUG")
        # A second product whose SKU is 'mug' = 'MUG' under the lookup column's collation, as for
        # WooCommerce's uniqueness check (written directly: WooCommerce itself would refuse it).
        with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(1)) as f:
            dup = f.simple("mug", "Second mug", stock=4)
        d.apply_pending()
        with net.engine.connect() as c:
            states = dict(
                c.exec_driver_sql(
                    f"SELECT post_id, state FROM {net.prefix}syncd_member WHERE blog_id = 1 AND post_id IN (%s, %s)",
                    (mug[1], dup),
                ).all()
            )
        assert states == {mug[1]: "ambiguous", dup: "ambiguous"}
        woo_decrease(net, 2, mug[2], 2)
        d.apply_pending()
        assert qty(net, 3, mug[3]) == Decimal(1)  # the unambiguous members stay linked
        assert (qty(net, 1, mug[1]), qty(net, 1, dup)) == (Decimal(3), Decimal(4))
        woo_decrease(net, 1, mug[1], 1)  # an ambiguous origin is not propagated
        d.apply_pending()
        assert (qty(net, 2, mug[2]), qty(net, 3, mug[3])) == (Decimal(1), Decimal(1))
    finally:
        d.close()


def test_unsafe_member_is_skipped_and_the_others_still_sync(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        tshirt = ids(net, "TSHIRT-RED")
        set_meta(net, 3, tshirt[3], "_stock", "abc")
        d.apply_pending()  # the 'abc' write itself is captured; it is not a number: not propagated
        assert qty(net, 2, tshirt[2]) == 10
        woo_decrease(net, 1, tshirt[1], 2)
        d.apply_pending()
        assert qty(net, 2, tshirt[2]) == 8
        assert stock(net, 3, tshirt[3]) == "abc"
        with net.engine.connect() as c:
            notes = c.exec_driver_sql(
                f"SELECT blog_id, post_id, sku, note FROM {net.prefix}syncd_history WHERE role = 'skipped'"
            ).all()
        assert any(
            n[0] == 3 and n[1] == tshirt[3] and n[2] == "TSHIRT-RED" and "not a number" in n[3] for n in notes
        )
    finally:
        d.close()


def test_poll_mode_captures_and_applies_without_triggers_or_echo(wp_network):
    net = wp_network
    d = make_daemon(net, capture={"mode": "poll", "poll_interval": 0.05})
    try:
        assert d.capture_mode == "poll"
        with net.engine.connect() as c:
            assert (
                c.exec_driver_sql(
                    "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
                ).scalar_one()
                == 0
            )
        d.poll()  # first poll takes the snapshot
        mug = ids(net, "MUG")
        woo_decrease(net, 1, mug[1], 1)
        woo_decrease(net, 2, mug[2], 1)
        assert d.poll() == 2
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [1, 1, 1]
        # syncd's own writes are not seen as changes by the next poll
        assert d.poll() == 0
        # a shop write that lands between two polls on a row syncd then writes is captured once
        woo_increase(net, 1, mug[1], 5)
        assert d.poll() == 1
        woo_decrease(net, 3, mug[3], 1)  # not polled: the applier finds it on the row it locks
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [5, 5, 5]
        assert d.poll() == 0 and pending(net) == 0
    finally:
        d.close()


def test_status_reports_triggers_backlog_and_no_leader(wp_network):
    import json
    from types import SimpleNamespace

    from syncd import status

    net = wp_network
    d = make_daemon(net)
    try:
        woo_decrease(net, 1, ids(net, "MUG")[1], 1)
        out = __import__("io").StringIO()
        code = status.main(d.config, SimpleNamespace(json=True), out=out)
        report = json.loads(out.getvalue())
        assert report["backlog"]["pending"] == 1
        assert [b["triggers"] for b in report["blogs"]] == ["installed"] * 3
        assert code & status.EXIT_NO_LEADER  # prepare() does not take the leader lock
        assert not code & status.EXIT_TRIGGERS
    finally:
        d.close()
