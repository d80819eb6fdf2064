"""Issue 9 path 6: poll mode is as exact as trigger mode (real server, capture.mode = "poll").

The snapshot only advances with what was captured or written by syncd itself: a row the shop
inserts while an apply transaction runs is never copied into it (it would never be captured),
and two pollers (a leadership hand-over, reconcile next to the daemon) never queue one
difference twice. The storm and kill tests also run in poll mode (test_concurrency.py,
test_crash.py)."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from syncd import db, derived
from syncd.poll import poll_blog, poll_posts
from tests.integration.daemon_process import lock_waits, wait_until
from tests.integration.poll_helpers import snapshot_lag
from tests.integration.sync_helpers import archived, ids, make_daemon, meta, pending, qty, woo_decrease

POLL = {"mode": "poll"}


def test_a_shop_insert_during_an_apply_is_captured_not_swallowed(wp_network):
    """While the daemon applies a sale (hook: its derived step, after the lock step and the
    writes), an admin adds MUG's low-stock threshold on blog 2 (a new meta row, autocommit).
    It must be captured and reach blogs 1 and 3. Before the fix the end-of-batch snapshot
    resync copied the new row into the snapshot: never captured, the blogs stayed different."""
    net = wp_network
    mug = ids(net, "MUG")
    fired: list[int] = []

    def shop_inserts_meanwhile(conn: sa.Connection, blog: Any, product_ids: Any, **kw: Any) -> Any:
        if not fired:
            fired.append(1)
            with net.engine.connect() as shop:
                shop.execute(
                    sa.text(
                        f"INSERT INTO {net.table(2, 'postmeta')} (post_id, meta_key, meta_value) "
                        "VALUES (:p, '_low_stock_amount', '3')"
                    ),
                    {"p": mug[2]},
                )
                shop.commit()
        return derived.refresh_products(conn, blog, product_ids, **kw)

    d = make_daemon(net, refresh=shop_inserts_meanwhile, capture=POLL)
    try:
        assert d.capture_mode == "poll"
        d.poll()  # baselines
        start = qty(net, 1, mug[1])
        woo_decrease(net, 1, mug[1], 1)
        assert d.poll() == 1
        d.apply_pending()
        assert fired == [1]
        d.poll()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 1] * 3
        assert [meta(net, b, mug[b], "_low_stock_amount") for b in (1, 2, 3)] == ["3"] * 3
        d.poll()  # syncd's own writes are not echoed
        assert pending(net) == 0 and snapshot_lag(net) == 0
    finally:
        d.close()


def test_two_pollers_never_queue_one_difference_twice(wp_network):
    """Poller A has queued a sale (not committed yet); poller B reads the same difference and
    waits for A's snapshot row; A commits; B must queue nothing. Before the fix B's REPLACE went
    through after the wait and the sale was queued twice (counted twice on the other blogs)."""
    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, capture=POLL)
    try:
        d.poll()  # baselines
        blog = d.blogs()[1]
        woo_decrease(net, 1, mug[1], 2)
        with net.engine.connect() as a, net.engine.connect() as b:
            assert poll_blog(a, net.prefix, blog) == 1
            second: list[int] = []
            t = threading.Thread(target=lambda: second.append(poll_blog(b, net.prefix, blog)))
            t.start()
            wait_until(lambda: lock_waits(net) == 1, 10, "poller B to wait for A's snapshot row", poll=0.15)
            a.commit()
            t.join(10)
            assert not t.is_alive()
            b.commit()
        assert second == [0]
        assert pending(net) == 1
        start = qty(net, 2, mug[2])
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3
    finally:
        d.close()


def test_a_poller_racing_the_apply_lock_step_makes_the_batch_look_again(wp_network):
    """Another poller (a demoted leader, reconcile) has queued blog 2's sale but not committed;
    the daemon's apply transaction, at its lock step, finds the same unseen sale and waits on
    that poller's snapshot row. When it commits, the apply must roll back and look again (the
    sale queued once, blog 2 still written) - not count it twice, not skip blog 2."""
    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, capture=POLL)
    try:
        d.poll()  # baselines
        start = qty(net, 1, mug[1])
        woo_decrease(net, 1, mug[1], 1)
        assert d.poll() == 1  # blog 1's sale queued and committed
        woo_decrease(net, 2, mug[2], 2)  # not polled by the daemon yet
        with net.engine.connect() as other:
            assert poll_blog(other, net.prefix, d.blogs()[2]) == 1
            t = threading.Thread(target=d.apply_pending)
            t.start()
            wait_until(
                lambda: lock_waits(net) == 1, 10, "the apply step to wait for the other poller", poll=0.15
            )
            other.commit()
            t.join(30)
            assert not t.is_alive()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
        assert d.poll() == 0 and pending(net) == 0 and snapshot_lag(net) == 0
        with net.engine.connect() as c:
            skipped = c.exec_driver_sql(
                f"SELECT COUNT(*) FROM {net.prefix}syncd_history WHERE role = 'skipped'"
            )
            assert skipped.scalar_one() == 0
    finally:
        d.close()


def test_reconcile_in_poll_mode_applies_an_unseen_sale_first(wp_network):
    """Poll mode, a sale on blog 2 the poller has not seen yet, then `syncd --reconcile`: its lock
    step queues the sale (the snapshot moves with it), commits it, applies it as the daemon
    would, and finds nothing left to write. Before the fix the queued rows were rolled back with
    the chunk, applying them conflicted, and the chunk was skipped after every round."""
    from tests.integration.test_audit_reconcile import run_reconcile

    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, capture=POLL)
    try:
        d.poll()  # baselines; the daemon applies nothing below
        start = qty(net, 1, mug[1])
        woo_decrease(net, 2, mug[2], 2)
        found, done = run_reconcile(net, capture=POLL)
        assert done.counts["skipped_chunks"] == 0, done
        assert done.pending_applied == 1
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3  # the sale, not reverted
        assert pending(net) == 0 and snapshot_lag(net) == 0
    finally:
        d.close()


def test_writes_on_an_archived_blog_are_polled_in_the_order_they_happen(wp_network):
    """Poll mode: a blog archived after discovery is still polled (its changes are held, as its
    triggers would queue them in trigger mode). An import on archived blog 3 (delete + add of
    `_stock` = 20), then a sale of 2 on blog 2: when blog 3 is back, the import is applied with
    the sale made after it (18 everywhere). Before, blog 3 was not polled while archived, its
    import was captured after the sale, and every blog ended at 20 (found by the poll storm)."""
    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, capture=POLL)
    pm3 = net.table(3, "postmeta")
    try:
        d.poll()
        d.apply_pending()
        archived(net, 3, True)
        d.discover()  # blog 3 is not served now
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DELETE FROM {pm3} WHERE post_id = %s AND meta_key = '_stock'", (mug[3],))
            c.exec_driver_sql(
                f"INSERT INTO {pm3} (post_id, meta_key, meta_value) VALUES (%s, '_stock', '20')", (mug[3],)
            )
            c.commit()
        d.poll()
        woo_decrease(net, 2, mug[2], 2)
        d.poll()
        d.apply_pending()
        archived(net, 3, False)
        d.discover()
        d.poll()
        d.apply_pending()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [18, 18, 18]
        assert pending(net) == 0
    finally:
        d.close()


def test_poll_trigger_poll_counts_the_sales_made_under_triggers_once(wp_network):
    """Poll mode, then trigger mode (the snapshot stays behind, untouched), then poll mode again.
    The sales made under triggers are queued by the triggers; the second poll-mode start must not
    find them again as differences with the old snapshot: the snapshot is taken again as the
    triggers go (poll.take_over_from_triggers), and their later rows leave the queue."""
    net = wp_network
    mug = ids(net, "MUG")
    start = {b: qty(net, b, mug[b]) for b in mug}
    d = make_daemon(net, capture=POLL)
    d.poll()  # the baseline
    d.close()
    d = make_daemon(net)  # trigger capture
    woo_decrease(net, 1, mug[1], 2)
    d.apply_pending()
    woo_decrease(net, 2, mug[2], 1)  # queued by blog 2's trigger, not applied yet
    d.close()
    d = make_daemon(net, capture=POLL)
    try:
        d.poll()
        d.apply_pending()
        assert {b: qty(net, b, mug[b]) for b in mug} == {b: start[b] - 3 for b in mug}
    finally:
        d.close()


def test_moves_in_one_round_trip_skip_only_the_row_another_poller_moved(wp_network):
    """The snapshot's compare-and-sets of one comparison go to the server in one round trip (a
    multi-statement connection, as the daemon's): when another poller moved one of the rows first,
    exactly that difference is left to it and the others are queued, each once."""
    net = wp_network
    mug, cap = ids(net, "MUG"), ids(net, "CAP")
    d = make_daemon(net, capture=POLL)
    engine = d.config.database.make_engine(multi_statements=True)
    try:
        d.poll()  # baselines
        blog = d.blogs()[1]
        woo_decrease(net, 1, mug[1], 2)
        woo_decrease(net, 1, cap[1], 3)
        with net.engine.connect() as a, engine.connect() as b:
            assert db.multi_statements(b)
            assert poll_posts(a, net.prefix, blog, [mug[1]]) == 1  # A holds MUG's rows
            second: list[int] = []
            t = threading.Thread(
                target=lambda: second.append(poll_posts(b, net.prefix, blog, [mug[1], cap[1]]))
            )
            t.start()
            wait_until(lambda: lock_waits(net) == 1, 10, "poller B to wait for A's rows", poll=0.15)
            a.commit()
            t.join(10)
            assert not t.is_alive()
            b.commit()
        assert second == [1]  # CAP's sale only: MUG's was A's
        assert pending(net) == 2
        mug_before, cap_before = qty(net, 2, mug[2]), qty(net, 2, cap[2])
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [mug_before - 2] * 3
        assert [qty(net, b, cap[b]) for b in (1, 2, 3)] == [cap_before - 3] * 3
    finally:
        engine.dispose()
        d.close()
