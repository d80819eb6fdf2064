"""Sales ahead of bulk (issue 12, syncd.queue.fetch_lanes) on a real server.

* A sale committed after a 5,000-row import statement is applied in a batch of its own before the
  import's batch: it is not queued behind the import.
* Per-product capture order is kept: when the sale's product (or a member it writes) has an older
  row in the import, the sale is applied with the import, after it (absolute `_stock` sets, plain
  deltas and registers alike), and the result is the capture-order result.
* A queued `_sku` change in the import (membership) is never passed.

The import and the sale come from two connections held open (a pooled connection reused for both
would make them one connection, whose order is always kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd import queue
from tests.integration.daemon_process import members, pending, quantities
from tests.integration.sync_helpers import make_daemon, meta, woo_decrease
from tests.integration.test_member_refresh import add_bulk_products


def add_stocked(net: Any, blog: int, n: int) -> list[int]:
    """``n`` products with SKUs and managed stock 10 on ``blog`` (not captured); their post ids."""
    ids = add_bulk_products(net, blog, n)
    pm = net.table(blog, "postmeta")
    with net.engine.connect() as c:
        c.exec_driver_sql("SET @syncd_apply = 1")
        for key, value in (("_manage_stock", "yes"), ("_stock", "10"), ("_backorders", "no")):
            c.exec_driver_sql(
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) SELECT post_id, %s, %s FROM {pm} "
                "WHERE meta_key = '_sku' AND meta_value LIKE 'BULK-%%'",
                (key, value),
            )
        c.commit()
        c.exec_driver_sql("SET @syncd_apply = NULL")
    return ids


@contextmanager
def connection(net: Any) -> Iterator[sa.Connection]:
    """A connection of its own (not returned to the pool while the test runs)."""
    c = net.engine.connect()
    try:
        yield c
    finally:
        c.invalidate()
        c.close()


def batches_of(d: Any, net: Any) -> list[tuple[set[int], set[int]]]:
    """For every batch the daemon commits from now on: (change ids in its history, change ids
    still queued right after its commit)."""
    out: list[tuple[set[int], set[int]]] = []
    d.on_batch = lambda result: out.append(({h.change.id for h in result.history}, set(change_ids(net))))
    return out


def queued_when_applied(batches: list[tuple[set[int], set[int]]], change: int) -> set[int]:
    """The change ids still queued when the batch that applied ``change`` committed."""
    (left,) = [left for ids, left in batches if change in ids]
    return left


def change_ids(net: Any) -> list[int]:
    with net.engine.connect() as c:
        return [int(i) for (i,) in c.exec_driver_sql(f"SELECT id FROM {net.prefix}syncd_change ORDER BY id")]


def _in(ids: list[int]) -> str:
    return ", ".join(str(int(i)) for i in ids)


def test_a_sale_after_a_5000_row_import_statement_is_applied_first(wp_network):
    net = wp_network
    bulk = add_stocked(net, 1, 5000)
    d = make_daemon(net)
    try:
        d.apply_pending()
        mug = members(net, "MUG")
        start = quantities(net, "MUG")
        with connection(net) as importer, connection(net) as shop:
            importer.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = '7' "
                f"WHERE meta_key = '_stock' AND post_id IN ({_in(bulk)})"
            )
            importer.commit()
            imported = change_ids(net)
            woo_decrease(net, 2, mug[2], 1, conn=shop)
        (sale,) = set(change_ids(net)) - set(imported)
        assert len(imported) == 5000 and sale > max(imported)
        seen = batches_of(d, net)
        assert d.apply_pending() == 5001
        assert seen[0][0] == {sale}, "the sale is applied first, in a batch of its own"
        assert queued_when_applied(seen, sale) == set(imported), "the import is still queued then"
        assert quantities(net, "MUG") == {b: start[b] - 1 for b in start}
        assert {meta(net, 1, p, "_stock") for p in bulk[::997]} == {"7"}
        assert pending(net) == 0
    finally:
        d.close()


def _import_then_sale(net: Any, statements: list[str], sale: str) -> tuple[list[int], int]:
    """Run the importer's statements on one connection, then ``sale`` on another; the ids queued."""
    with connection(net) as importer, connection(net) as shop:
        for sql in statements:
            importer.exec_driver_sql(sql)
            importer.commit()
        imported = change_ids(net)
        shop.exec_driver_sql(sale)
        shop.commit()
    (sold,) = set(change_ids(net)) - set(imported)
    return imported, sold


def test_per_product_order_kept_for_absolute_sets_deltas_and_registers(wp_network):
    """Three imports, each a bulk statement touching MUG on blog 1 among 300 other products, each
    followed by a change of MUG on blog 2 from another connection: the change waits for the import
    (it is in the import's batch, after it) and every member ends with the capture-order value."""
    net = wp_network
    bulk = add_stocked(net, 1, 300)
    d = make_daemon(net, sync={"batch_size": 200})  # the import's 301 rows fill a batch
    try:
        d.apply_pending()
        mug = members(net, "MUG")
        pm1, pm2 = net.table(1, "postmeta"), net.table(2, "postmeta")
        posts = _in([*bulk, mug[1]])
        sale = f"UPDATE {pm2} SET meta_value = meta_value -1.000000 WHERE post_id = {mug[2]} AND meta_key='_stock'"
        # 1. An importer's delete + re-add (absolute set to 50), then a sale of 1 on blog 2: 49 everywhere.
        values = ", ".join(f"({p}, '_stock', '50')" for p in [*bulk, mug[1]])
        imported, sold = _import_then_sale(
            net,
            [
                f"DELETE FROM {pm1} WHERE meta_key = '_stock' AND post_id IN ({posts})",
                f"INSERT INTO {pm1} (post_id, meta_key, meta_value) VALUES {values}",
            ],
            sale,
        )
        seen = batches_of(d, net)
        d.apply_pending()
        assert queued_when_applied(seen, sold) == set(), "the sale is applied with the import, after it"
        assert set(quantities(net, "MUG").values()) == {Decimal(49)}
        # 2. A relative import (+5 on every product), then a sale: 53 everywhere.
        imported, sold = _import_then_sale(
            net,
            [
                f"UPDATE {pm1} SET meta_value = meta_value + 5 WHERE meta_key = '_stock' AND post_id IN ({posts})"
            ],
            sale,
        )
        seen = batches_of(d, net)
        d.apply_pending()
        assert queued_when_applied(seen, sold) == set()
        assert set(quantities(net, "MUG").values()) == {Decimal(53)}
        # 3. Registers: the import sets _backorders 'notify', then an admin sets MUG's to 'yes' on
        # blog 2: the later one wins everywhere.
        imported, sold = _import_then_sale(
            net,
            [
                f"UPDATE {pm1} SET meta_value = 'notify' WHERE meta_key = '_backorders' AND post_id IN ({posts})"
            ],
            f"UPDATE {pm2} SET meta_value = 'yes' WHERE post_id = {mug[2]} AND meta_key = '_backorders'",
        )
        seen = batches_of(d, net)
        d.apply_pending()
        assert queued_when_applied(seen, sold) == set()
        assert {b: meta(net, b, p, "_backorders") for b, p in mug.items()} == {b: "yes" for b in mug}
        assert pending(net) == 0
    finally:
        d.close()


def test_never_ahead_of_a_queued_sku_change(wp_network):
    """An import that renames SKUs (membership) is applied before a later sale, even of another product."""
    net = wp_network
    bulk = add_stocked(net, 1, 300)
    d = make_daemon(net, sync={"batch_size": 200})  # the import's 301 rows fill a batch
    try:
        d.apply_pending()
        mug = members(net, "MUG")
        pm1 = net.table(1, "postmeta")
        imported, sold = _import_then_sale(
            net,
            [
                f"UPDATE {pm1} SET meta_value = CONCAT(meta_value, '-X') WHERE meta_key = '_sku' AND post_id IN ({_in(bulk)})"
            ],
            f"UPDATE {net.table(2, 'postmeta')} SET meta_value = meta_value -1.000000 "
            f"WHERE post_id = {mug[2]} AND meta_key='_stock'",
        )
        with net.engine.connect() as c:
            fetched = queue.fetch_lanes(c, net.prefix, 200)
            c.rollback()
        assert fetched.passed == () and sold not in {ch.id for ch in fetched.changes}
        seen = batches_of(d, net)
        d.apply_pending()
        assert queued_when_applied(seen, sold) == set()
        assert len(seen) == 2 and sold not in seen[0][0], "the renames first, then the sale"
    finally:
        d.close()


def test_writers_on_persistent_connections_keep_full_batches(wp_network):
    """Two connections that each queued more than BULK_ROWS rows (sales through persistent
    connections, or two imports) and nothing else: no sale waits, so the batch is the usual full
    one, in capture order (short batches only while sales go ahead)."""
    net = wp_network
    bulk = add_stocked(net, 1, 300)
    d = make_daemon(net)
    try:
        d.apply_pending()
        pm1 = net.table(1, "postmeta")
        with connection(net) as one, connection(net) as two:
            for c, posts in ((one, bulk[:150]), (two, bulk[150:])):
                for p in posts:
                    c.exec_driver_sql(
                        f"UPDATE {pm1} SET meta_value = meta_value - 1 WHERE post_id = {p} AND meta_key = '_stock'"
                    )
                    c.commit()
        queued = change_ids(net)
        with net.engine.connect() as c:
            fetched = queue.fetch_lanes(c, net.prefix, 200)
            short = queue.fetch_lanes(c, net.prefix, 200, short=True)
            c.rollback()
        assert fetched.passed == () and [ch.id for ch in fetched.changes] == queued[:200]
        assert [ch.id for ch in short.changes] == queued[: queue.BULK_BATCH]
    finally:
        d.close()
