"""Issue 9: paths that lost or doubled changes in seams between batches (1), the derived step (9)
and lock waits against a checkout (14), each on the real server, written the way WooCommerce and
Polylang for WooCommerce write (SQL on one connection, statements in the order they send them)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from syncd.testnet.factory import ProductFactory
from tests.integration.sync_helpers import deadlocks, ids, make_daemon, pending, qty
from tests.integration.trace_replay import Replay

# Recorded post ids (schema/wordpress/catalogue.json): BOOK en/fr, translations of each other.
BOOK = {(2, "en"): 18, (2, "fr"): 19, (3, "en"): 16, (3, "fr"): 17}
SHARED = {"2": {"translations_share_stock": True}, "3": {"translations_share_stock": True}}


def books(net: Any) -> dict[tuple[int, str], Any]:
    return {k: qty(net, k[0], pid) for k, pid in BOOK.items()}


def admin_set_with_copy(net: Any, conn: Any, blog: int, value: int, between: Any = None) -> None:
    """An admin sets BOOK (en) to ``value``; Polylang for WooCommerce then copies it to BOOK (fr)
    in a statement of its own, on the same connection (``between`` runs in between)."""
    pm = net.table(blog, "postmeta")
    for lang in ("en", "fr"):
        conn.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '{int(value)}' WHERE post_id = {BOOK[(blog, lang)]} AND meta_key = '_stock'"
        )
        conn.commit()
        if lang == "en" and between is not None:
            between()


def test_translation_copy_in_a_later_batch_counts_once(wp_network):
    """Path 1: the daemon applies the admin's edit alone, then sees the add-on's copy: +5, not +10."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        assert books(net) == {(2, "en"): 7, (2, "fr"): 7, (3, "en"): 7, (3, "fr"): 7}
        with net.engine.connect() as shop:
            admin_set_with_copy(net, shop, 2, 12, between=d.apply_pending)
            d.apply_pending()
            assert pending(net) == 0
            assert books(net) == {(2, "en"): 12, (2, "fr"): 12, (3, "en"): 12, (3, "fr"): 12}
            # Again, with the copy in the same batch, and then a sale: still exact.
            admin_set_with_copy(net, shop, 2, 10)
            d.apply_pending()
            assert books(net) == {(2, "en"): 10, (2, "fr"): 10, (3, "en"): 10, (3, "fr"): 10}
        with net.engine.connect() as c:
            left = c.exec_driver_sql(f"SELECT COUNT(*) FROM {net.prefix}syncd_fanout").scalar_one()
        assert left == 0  # every expected copy was met
    finally:
        d.close()


def test_translation_copy_after_other_batches_and_a_sale_elsewhere_counts_once(wp_network):
    net = wp_network
    d = make_daemon(net, blogs=SHARED, sync={"batch_size": 1})
    try:
        with net.engine.connect() as shop:

            def sale_elsewhere_then_apply() -> None:
                with net.engine.connect() as other:
                    other.exec_driver_sql(
                        f"UPDATE {net.table(3, 'postmeta')} SET meta_value = meta_value - 1 "
                        f"WHERE post_id IN ({BOOK[(3, 'en')]}, {BOOK[(3, 'fr')]}) AND meta_key = '_stock'"
                    )
                    other.commit()
                d.apply_pending()

            admin_set_with_copy(net, shop, 2, 12, between=sale_elsewhere_then_apply)
        d.apply_pending()
        # 7 -> 12 on blog 2 (+5 once), a sale of 1 on blog 3 (once): 11 everywhere.
        assert books(net) == {(2, "en"): 11, (2, "fr"): 11, (3, "en"): 11, (3, "fr"): 11}
    finally:
        d.close()


# -- path 14: the checkout is never the deadlock victim ------------------------------------------

# The checkout's writes that touch the sold product's rows (postmeta, lookup row, posts row):
# trace 04 (order payment, blog 1, MUG = post 12) and trace 05 (Store API checkout, blog 2,
# TSHIRT-RED = post 24), from the traces' README.
CHECKOUT_POINTS = [("04-order-payment", i, 1, 12) for i in (230, 262, 264, 265)] + [
    ("05-store-api-checkout", i, 2, 24) for i in (457, 476, 478, 479)
]


def lock_waiting(net: Any, connection_id: int) -> bool:
    with net.engine.connect() as c:
        return bool(
            c.exec_driver_sql(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                f"WHERE trx_mysql_thread_id = {int(connection_id)} AND trx_state = 'LOCK WAIT'"
            ).scalar_one()
        )


@pytest.mark.parametrize("trace,index,blog,post", CHECKOUT_POINTS, ids=[f"{t[:2]}-{i}" for t, i, _b, _p in CHECKOUT_POINTS])
def test_checkout_statement_waiting_on_a_large_batch_is_never_the_deadlock_victim(wp_network, trace, index, blog, post):
    """A large syncd batch holds its stock rows while the checkout sends one of its writes on the
    sold product (the shop's real statement order, recorded): the shop waits (wpdb's 50 s) and
    continues once syncd commits; InnoDB detects no deadlock, and the sale counts once everywhere."""
    net = wp_network
    sku = "MUG" if blog == 1 else "TSHIRT-RED"
    sold = ids(net, sku)
    assert sold[blog] == post
    start = qty(net, blog, post)
    bulk = []  # 80 more linked products, on every blog: the batch locks them all
    for b in (1, 2, 3):
        with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(b)) as f:
            bulk = [f.simple(f"BULK-{n:03d}", f"Bulk {n}", stock=50, post_id=5000 + n) for n in range(80)]
    d = make_daemon(net, sync={"batch_size": 1000})
    errors: list[BaseException] = []
    try:
        d.apply_pending()
        before = deadlocks(net)
        with Replay(net, trace) as replay:
            replay.run(until=index - 1)
            shop_conn = next(s.conn for s in replay.todo if s.index == index)
            shop_id = replay.connection_id(shop_conn)
            with net.engine.connect() as c:  # the large batch: a sale of every product on blog 3
                for p in [sold[3], *bulk]:
                    c.exec_driver_sql(
                        f"UPDATE {net.table(3, 'postmeta')} SET meta_value = meta_value - 1 "
                        f"WHERE post_id = {int(p)} AND meta_key = '_stock'"
                    )
                c.commit()
            fired = []

            def shop_writes_while_syncd_holds_its_locks(step: str) -> None:
                if step != "locked" or fired:
                    return
                thread = threading.Thread(target=_guard(errors, lambda: replay.run(until=index)))
                thread.start()
                fired.append(thread)
                deadline = time.monotonic() + 20
                while thread.is_alive() and not lock_waiting(net, shop_id):
                    assert time.monotonic() < deadline, "the shop's statement neither ran nor waited"
                    time.sleep(0.01)

            d.step_hook = shop_writes_while_syncd_holds_its_locks
            d.apply_pending()
            d.step_hook = None
            assert fired
            fired[0].join(60)
            assert not fired[0].is_alive() and errors == []
            replay.run()
        d.apply_pending()
        assert deadlocks(net) == before
        assert [qty(net, b, sold[b]) for b in (1, 2, 3)] == [start - 2] * 3  # the checkout + the batch's sale
        assert {qty(net, 1, p) for p in ids_of_bulk(net, 1)} == {49}
    finally:
        d.close()


def _guard(errors: list[BaseException], fn: Any) -> Any:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    return run


def ids_of_bulk(net: Any, blog: int) -> list[int]:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT post_id FROM {net.table(blog, 'postmeta')} WHERE meta_key = '_sku' AND meta_value LIKE 'BULK-%%'"
        ).scalars().all()
