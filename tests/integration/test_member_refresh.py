"""Issue 9 path 13: the periodic full member refresh never makes an apply batch wait for it.

It used to be one statement per blog in one transaction, holding every member row of the blog
until the commit (94 s at 100,000 SKUs x 10 blogs); an apply batch that refreshes a member of
that blog (a SKU change, a product the table does not know) waited behind it. It now runs in
short transactions of a chunk of posts each.

The lock test stalls the refresh on purpose, deterministically: another session holds one member
row far into the blog, so the refresh waits there (seen in information_schema, not timed). While
it waits, a sale + SKU change on a product near the start of the blog is applied: it must not wait
for any lock the refresh holds. The duration figures are in bench/member_refresh.py.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from syncd import catalog
from tests.integration.daemon_process import members, quantities, refresh_fn, wait_until
from tests.integration.sync_helpers import make_daemon

DIGITS = (
    "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 "
    "UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
)
MEMBER_COLUMNS = "blog_id, post_id, link_key, sku_key, sku, lang, post_type, product_type, parent_id, group_id, link_kind, state"


def add_bulk_products(net: Any, blog: int, n: int) -> list[int]:
    """``n`` simple products with unique SKUs (BULK-000001...) on ``blog``, loaded set-based and
    not captured (syncd's own session marker); returns their post ids, ascending."""
    posts, pm = net.table(blog, "posts"), net.table(blog, "postmeta")
    numbers = (
        f"SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 1 AS n "
        f"FROM {DIGITS} a, {DIGITS} b, {DIGITS} c, {DIGITS} e, {DIGITS} f"
    )
    with net.engine.connect() as c:
        c.exec_driver_sql("SET @syncd_apply = 1")
        c.exec_driver_sql(
            f"INSERT INTO {posts} (post_author, post_date, post_date_gmt, post_content, post_title, post_excerpt, "
            "post_status, comment_status, ping_status, post_password, post_name, to_ping, pinged, post_modified, "
            "post_modified_gmt, post_content_filtered, post_parent, guid, menu_order, post_type, post_mime_type, "
            "comment_count) "
            "SELECT 1, '2026-01-01', '2026-01-01', '', CONCAT('Bulk ', n), '', 'publish', 'open', 'closed', '', "
            "CONCAT('bulk-', LPAD(n, 6, '0')), '', '', '2026-01-01', '2026-01-01', '', 0, '', 0, 'product', '', 0 "
            f"FROM ({numbers}) nums WHERE n <= {int(n)} ORDER BY n"
        )
        c.execute(
            sa.text(
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) SELECT ID, '_sku', UPPER(post_name) "
                f"FROM {posts} WHERE post_type = 'product' AND post_name LIKE 'bulk-%' ORDER BY ID"
            )
        )
        ids = list(
            c.execute(sa.text(f"SELECT ID FROM {posts} WHERE post_name LIKE 'bulk-%' ORDER BY ID")).scalars()
        )
        c.commit()
        c.exec_driver_sql("SET @syncd_apply = NULL")  # a pooled connection: later writes are the shop's
    assert len(ids) == n
    return ids


def member_rows(net: Any) -> list[tuple]:
    with net.engine.connect() as c:
        return [
            tuple(r)
            for r in c.exec_driver_sql(
                f"SELECT {MEMBER_COLUMNS} FROM {net.prefix}syncd_member ORDER BY blog_id, post_id"
            )
        ]


def refresh_one_shot(net: Any, d: Any) -> None:
    with net.engine.connect() as c:
        for blog in d.blogs().values():
            catalog.refresh_members(c, net.prefix, blog)
            c.commit()


def sku_meta(net: Any, blog: int, post: int, value: str) -> None:
    with net.engine.connect() as c:
        c.execute(
            sa.text(
                f"UPDATE {net.table(blog, 'postmeta')} SET meta_value = :v WHERE post_id = :p AND meta_key = '_sku'"
            ),
            {"v": value, "p": post},
        )
        c.commit()


def test_full_refresh_in_chunks_ends_exactly_as_the_one_shot_refresh(wp_network):
    """Chunks of 2 posts: ambiguity that starts and ends across chunks, a product deleted, one
    trashed, exclusions: after each step the table is the one a single-transaction refresh makes."""
    net = wp_network
    d = make_daemon(net, refresh=refresh_fn())
    try:
        with net.engine.connect() as c:
            products = c.exec_driver_sql(
                f"SELECT post_id, sku FROM {net.prefix}syncd_member WHERE blog_id = 2 AND state = 'linked' "
                "AND link_kind = 'sku' AND post_type = 'product' ORDER BY post_id"
            ).all()
        (low, low_sku), (high, high_sku) = products[0], products[-1]
        deleted, trashed = products[1][0], products[2][0]

        def same_sku_far_apart() -> None:
            # As if created with an existing SKU (a member renamed would keep its group).
            sku_meta(net, 2, high, low_sku)
            with net.engine.connect() as c:
                c.exec_driver_sql(
                    f"DELETE FROM {net.prefix}syncd_member WHERE blog_id = 2 AND post_id = {high}"
                )
                c.commit()

        def renamed_back() -> None:
            sku_meta(net, 2, high, high_sku)

        def deleted_and_trashed() -> None:
            with net.engine.connect() as c:
                c.exec_driver_sql(f"DELETE FROM {net.table(2, 'posts')} WHERE ID = {deleted}")
                c.exec_driver_sql(
                    f"UPDATE {net.table(2, 'posts')} SET post_status = 'trash' WHERE ID = {trashed}"
                )
                c.commit()

        def excluded() -> None:
            with net.engine.connect() as c:
                catalog.store_exclusions(c, net.prefix, ["MUG", "CAP*"])
                c.commit()

        steps = [same_sku_far_apart, renamed_back, deleted_and_trashed, excluded]
        states = []
        for step in steps:
            step()
            with net.engine.connect() as c:
                chunks = [
                    catalog.refresh_members_in_chunks(c, net.prefix, b, chunk=2) for b in d.blogs().values()
                ]
            assert min(chunks) > 2
            chunked = member_rows(net)
            refresh_one_shot(net, d)
            assert chunked == member_rows(net), step.__name__
            states.append({r[1]: r[11] for r in chunked if r[0] == 2})
        assert states[0][low] == states[0][high] == "ambiguous"
        assert states[1][low] == states[1][high] == "linked"
        assert deleted not in states[2] and trashed not in states[2]
        assert "excluded" in states[3].values()
    finally:
        d.close()


def lock_waits_on(net: Any, holder_thread: int) -> list[tuple[int, int]]:
    """(waiting thread, rows locked by the waiter) of every transaction waiting for ``holder_thread``."""
    with net.engine.connect() as c:
        return [
            (int(r[0]), int(r[1]))
            for r in c.exec_driver_sql(
                "SELECT r.trx_mysql_thread_id, r.trx_rows_locked FROM information_schema.INNODB_LOCK_WAITS w "
                "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
                "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id "
                f"WHERE b.trx_mysql_thread_id = {int(holder_thread)}"
            )
        ]


def test_periodic_full_refresh_never_makes_an_apply_batch_wait(wp_network):
    net = wp_network
    bulk = add_bulk_products(net, 1, 20_000)
    d = make_daemon(net, refresh=refresh_fn())  # start-up refresh: the bulk products are members
    engine = sa.create_engine(net.url, poolclass=sa.pool.NullPool)
    try:
        mug = members(net, "MUG")
        assert mug[1] < bulk[0]
        before = quantities(net, "MUG", mug)
        # A shop session holds one member row three quarters into blog 1: the refresh stops there.
        blocker = engine.connect()
        blocker_id = blocker.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        blocker.exec_driver_sql(
            f"SELECT * FROM {net.prefix}syncd_member WHERE blog_id = 1 AND post_id = {bulk[15_000]} FOR UPDATE"
        ).all()
        refresh = threading.Thread(target=d.refresh_all_members, name="full-refresh", daemon=True)
        refresh.start()
        ((refresh_thread, rows_locked),) = wait_until(
            lambda: lock_waits_on(net, blocker_id), 120, "the refresh to reach the held row", poll=0.15
        )

        # An admin save on MUG (blog 1, near the start of the blog): stock 1 down and a new SKU.
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = meta_value - 1 "
                f"WHERE post_id = {mug[1]} AND meta_key = '_stock'"
            )
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = 'MUG-BLUE' "
                f"WHERE post_id = {mug[1]} AND meta_key = '_sku'"
            )
            c.commit()
        applied: list[int] = []
        apply = threading.Thread(target=lambda: applied.append(d.apply_pending()), name="apply", daemon=True)
        apply.start()
        waited = wait_until(
            lambda: ("done" if not apply.is_alive() else None) or lock_waits_on(net, refresh_thread),
            60,
            "the apply to finish or to wait",
            poll=0.15,
        )
        assert waited == "done", f"the apply waited for the full refresh's locks: {waited}"
        # The stalled refresh held one chunk of rows, not the 15,000 before the held one.
        assert rows_locked <= 3 * catalog.REFRESH_CHUNK, rows_locked
        assert applied and applied[0] >= 2
        blocker.rollback()
        blocker.close()
        refresh.join(120)
        assert not refresh.is_alive()
        # The refresh ended as a single-transaction refresh would have; the sale reached every blog.
        chunked = member_rows(net)
        refresh_one_shot(net, d)
        assert chunked == member_rows(net)
        after = quantities(net, "MUG-BLUE", mug)
        assert set(after.values()) == {before[1] - 1}, after
    finally:
        d.stop.set()
        d.close()
        engine.dispose()
