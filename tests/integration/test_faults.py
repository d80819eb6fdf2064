"""Faults: bad data in the shop, lock contention, the server restarted, the apply connection killed,
the leader killed with a hot standby waiting, and stop signals. In every case the daemon stays up
(or hands over), the unsafe member is named and skipped, and the end state is exact.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from syncd.daemon import EXIT_ABORTED, EXIT_OK, Daemon
from syncd.testnet import wordpress
from tests.integration.daemon_process import (
    STOCK_SKUS,
    DaemonProcess,
    Ledger,
    RowLock,
    Storm,
    assert_converged,
    assert_derived_consistent,
    assert_history_once,
    lock_waits,
    members,
    pending,
    quantities,
    refresh_fn,
    running,
    snapshot,
    wait_drained,
    wait_until,
    write_config,
)
from tests.integration.sync_helpers import make_daemon, set_meta, stock, woo_decrease


def history(net: Any, where: str = "1=1") -> list[tuple]:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT role, blog_id, post_id, sku, meta_key, delta, note, change_id FROM {net.prefix}syncd_history "
            f"WHERE {where} ORDER BY id"
        ).all()


# =========================================================================== bad input
BAD = ["abc", "empty", "null", "missing", "trashed", "trashed_no_mark", "blog_deleted", "tables_dropped"]


def _break(net: Any, case: str, post: int) -> None:
    pm3, posts3 = net.table(3, "postmeta"), net.table(3, "posts")
    with net.engine.connect() as c:
        if case == "abc":
            set_meta(net, 3, post, "_stock", "abc")
        elif case == "empty":
            set_meta(net, 3, post, "_stock", "")
        elif case == "null":
            set_meta(net, 3, post, "_stock", None)  # _manage_stock stays 'yes'
        elif case == "missing":
            c.exec_driver_sql(f"DELETE FROM {pm3} WHERE post_id = {post} AND meta_key = '_stock'")
        elif case == "trashed":
            # wp_trash_post(): remember the status, then trash.
            c.exec_driver_sql(
                f"INSERT INTO {pm3} (post_id, meta_key, meta_value) VALUES "
                f"({post}, '_wp_trash_meta_status', 'publish'), ({post}, '_wp_trash_meta_time', '1790000000')"
            )
            c.exec_driver_sql(f"UPDATE {posts3} SET post_status = 'trash' WHERE ID = {post}")
        elif case == "trashed_no_mark":
            c.exec_driver_sql(f"UPDATE {posts3} SET post_status = 'trash' WHERE ID = {post}")
        elif case == "blog_deleted":
            wordpress.mark_blog_deleted(c, net.prefix, 3)
        elif case == "tables_dropped":
            wordpress.drop_blog_tables(c, net.prefix, 3, remove_row=False)
        c.commit()


@pytest.mark.parametrize("case", BAD)
def test_bad_member_is_named_and_skipped_while_the_others_sync(wp_network, case):
    net = wp_network
    sku = "TSHIRT-RED"
    ids = members(net, sku)
    healthy = {1: ids[1], 2: ids[2]}
    raw3 = stock(net, 3, ids[3])
    d = make_daemon(net, refresh=refresh_fn())
    with capture_logs() as logs, running(d) as thread:
        _break(net, case, ids[3])
        if case not in ("blog_deleted", "tables_dropped"):
            raw3 = stock(net, 3, ids[3])
        woo_decrease(net, 1, ids[1], 2)  # a sale on a healthy blog, mid-run
        wait_drained(net, timeout=30, alive=thread.is_alive)
        assert quantities(net, sku, healthy) == {1: 8, 2: 8}
        # Still up: later changes keep flowing, in both directions between the healthy members.
        woo_decrease(net, 2, ids[2], 1)
        wait_drained(net, timeout=30, alive=thread.is_alive)
        assert quantities(net, sku, healthy) == {1: 7, 2: 7}
        assert thread.is_alive()
        mug = members(net, "MUG", (1, 2) if case == "tables_dropped" else None)
        woo_decrease(net, 1, mug[1], 1)
        wait_drained(net, timeout=30, alive=thread.is_alive)
        expect_mug = {1: 2, 2: 2} if case in ("blog_deleted", "tables_dropped") else {1: 2, 2: 2, 3: 2}
        assert quantities(net, "MUG", {b: mug[b] for b in expect_mug}) == expect_mug
    # The unsafe member was left exactly as it was.
    if case != "tables_dropped":
        assert stock(net, 3, ids[3]) == raw3
    # ... and named, with blog, post and SKU, in the log or in history.
    named = [
        e
        for e in logs
        if e.get("log_level") in ("warning", "error")
        and e.get("blog") == 3
        and e.get("post") == ids[3]
        and e.get("sku") == sku
    ]
    skipped = [h for h in history(net, "role = 'skipped'") if h[1] == 3 and h[2] == ids[3] and h[3] == sku]
    assert named or skipped, [e for e in logs if e.get("log_level") != "info"]
    assert d.stats.dead == 0
    assert pending(net) == 0
    assert_derived_consistent(net, [sku, "MUG"], blogs=(1, 2))


def test_derived_step_failing_on_one_blog_is_healed_once_it_can_be(wp_network):
    """The derived step of all blogs runs under one savepoint; when one blog fails (its lookup
    table vanished after discovery), that work is rolled back and redone blog by blog, so the
    failing blog alone loses its derived writes: every quantity is synced, the other blogs'
    derived data is right, and the daemon keeps going. The failing blog's products are queued to
    be healed (issue 9 path 9: they used to stay wrong - stock 0 with 'instock' - until their next
    change) and are healed as soon as the blog's derived step works again."""
    net = wp_network
    sku = "MUG"
    ids = members(net, sku)
    d = make_daemon(net)
    with net.engine.connect() as c:
        d.apply_pending()  # discovery: blog 3 is usable, with its lookup table
        c.exec_driver_sql(
            f"RENAME TABLE {net.table(3, 'wc_product_meta_lookup')} TO {net.prefix}3_lookup_away"
        )
        c.commit()
    try:
        with capture_logs() as logs:
            woo_decrease(net, 1, ids[1], 3)
            assert d.apply_pending() == 1
        assert quantities(net, sku) == {1: 0, 2: 0, 3: 0}  # out of stock everywhere
        # The batch, then the heal the settle step tries at once (settle_seconds 0): both fail on blog 3.
        assert [e["event"] for e in logs if e.get("event") == "derived_retry_per_blog"] == [
            "derived_retry_per_blog"
        ] * 2
        failed = [e for e in logs if e.get("event") == "blog_step_failed"]
        assert [e["blog"] for e in failed] == [3, 3] and failed[0]["errno"] == 1146, failed
        assert_derived_consistent(net, [sku], blogs=(1, 2))
        assert d.stats.dead == 0 and pending(net) == 0
        assert heals(net) == {(3, ids[3])}  # queued, and still queued while the table is away
        d.apply_pending()
        assert heals(net) == {(3, ids[3])}
    finally:
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"RENAME TABLE {net.prefix}3_lookup_away TO {net.table(3, 'wc_product_meta_lookup')}"
            )
            c.commit()
    try:
        d.apply_pending()  # the settle step heals it: status, lookup row and term follow the stock
        assert heals(net) == set()
        assert_derived_consistent(net, [sku], blogs=(1, 2, 3))
        assert quantities(net, sku) == {1: 0, 2: 0, 3: 0}
    finally:
        d.close()


def heals(net) -> set[tuple[int, int]]:
    with net.engine.connect() as c:
        return {
            (b, p)
            for b, p in c.exec_driver_sql(f"SELECT blog_id, post_id FROM {net.prefix}syncd_settle WHERE kind = 'heal'")
        }


def test_a_member_whose_write_fails_is_skipped_and_the_others_are_written(wp_network):
    """A write that fails on one member (here a shop's own BEFORE UPDATE trigger refuses it,
    errno 1644) must not cost the other members theirs. The stock writes of every blog go in one
    round trip under a savepoint: it is undone as a whole, then redone statement by statement,
    so exactly the failing member is skipped (named, with a history row) and nothing is applied
    twice."""
    net = wp_network
    sku = "NOTEBOOK"
    ids = members(net, sku)
    start = quantities(net, sku)
    d = make_daemon(net)
    trigger = f"{net.prefix}3_refuse_stock"
    with net.engine.connect() as c:
        d.apply_pending()
        c.exec_driver_sql(
            f"CREATE TRIGGER `{trigger}` BEFORE UPDATE ON {net.table(3, 'postmeta')} FOR EACH ROW "
            f"BEGIN IF @syncd_apply IS NOT NULL AND NEW.post_id = {ids[3]} AND NEW.meta_key = '_stock' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a shop plugin'; END IF; END"
        )
        c.commit()
    try:
        with capture_logs() as logs:
            woo_decrease(net, 1, ids[1], 2)
            woo_decrease(net, 2, ids[2], 1)
            assert d.apply_pending() == 2
        after = quantities(net, sku)
        assert after[1] == after[2] == start[1] - 3  # each got the other's sale, once
        assert after[3] == start[3]  # refused: left exactly as it was
        assert [e["event"] for e in logs if e.get("event") == "bulk_stock_write_failed"], logs
        skipped = [e for e in logs if e.get("event") == "member_skipped"]
        assert {(e["blog"], e["post"]) for e in skipped} == {(3, ids[3])}, skipped
        assert {(h[1], h[2]) for h in history(net, "role = 'skipped'")} == {(3, ids[3])}
        assert d.stats.dead == 0 and pending(net) == 0
        assert_derived_consistent(net, [sku], blogs=(1, 2))
    finally:
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{trigger}`")
            c.commit()
        d.close()


# =========================================================================== contention
def test_lock_held_on_a_target_is_waited_out_and_nothing_is_skipped(wp_network):
    """WooCommerce holds SELECT ... FOR UPDATE on a target's _stock for ~3 s: syncd's apply times
    out (1 s), rolls back the whole batch, retries with backoff, and applies once the lock is gone."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net, refresh=refresh_fn())
    with capture_logs() as logs, running(d) as thread:
        with RowLock(net, 3, ids[3]) as held:
            woo_decrease(net, 1, ids[1], 2)
            wait_until(lambda: d.stats.retries >= 2, 15, "two lock-wait retries")
            # The batch is one transaction: nothing of it landed anywhere while blog 3 was locked.
            assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 10, 3: 10}
            assert pending(net) == 1
            time.sleep(max(0.0, 3.0 - (time.monotonic() - held.taken_at)))
        wait_drained(net, timeout=30, alive=thread.is_alive)
    assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 8, 3: 8}
    retries = [e for e in logs if e["event"] == "batch_retry"]
    assert len(retries) >= 2 and {e["errno"] for e in retries} == {1205}, retries
    rows = history(net)
    # One origin row and exactly one copy per other member, although the batch ran several times.
    assert sorted((r[0], r[1], r[2], r[5]) for r in rows if r[4] == "_stock") == [
        ("copy", 2, ids[2], Decimal(-2)),
        ("copy", 3, ids[3], Decimal(-2)),
        ("origin", 1, ids[1], Decimal(-2)),
    ], rows
    assert [r for r in rows if r[0] == "skipped"] == []
    assert_derived_consistent(net, ["TSHIRT-RED"])


# =========================================================================== server restart
def test_server_restart_while_running_and_writes_after(wp_network, private_server):
    net = wp_network
    skus = STOCK_SKUS[:5]
    d = make_daemon(net, refresh=refresh_fn(), sync={"batch_size": 10})
    start = snapshot(net, skus)
    with running(d) as thread:
        before = Storm(net, skus, writers=3, seed=1, ops=_script(3, 60, skus, seed=1)).start()
        ledger = before.join()
        # Restart with work still queued: the daemon's connections (apply and leader lock) die.
        private_server.restart(down_for=1.0)
        after = Storm(net, skus, writers=3, seed=2, ops=_script(3, 60, skus, seed=2)).start()
        ledger.merge(after.join())
        wait_drained(net, timeout=60, alive=thread.is_alive)
    assert d.stats.reconnects >= 1 or d.stats.errors >= 1, "the restart went unnoticed"
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


def _script(writers: int, n: int, skus: tuple[str, ...], seed: int) -> list[list[tuple[int, str, str, int]]]:
    rng = random.Random(seed)
    return [
        [
            (rng.choice((1, 2, 3)), rng.choice(skus), rng.choice(("dec", "dec", "inc")), rng.randint(1, 3))
            for _ in range(n)
        ]
        for _ in range(writers)
    ]


# =========================================================================== KILL <apply connection>
def _track_apply_connections(d: Daemon) -> list[int]:
    ids: list[int] = []

    @sa.event.listens_for(d._apply_engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SELECT CONNECTION_ID()")
        ids.append(int(cur.fetchone()[0]))
        cur.close()

    return ids


def _kill(net: Any, conn_id: int) -> None:
    with net.engine.connect() as c:
        c.exec_driver_sql(f"KILL {int(conn_id)}")


def test_apply_connection_killed_mid_transaction_and_during_a_storm(wp_network):
    net = wp_network
    skus = STOCK_SKUS[:5]
    d = make_daemon(net, refresh=refresh_fn(), sync={"batch_size": 10})
    apply_ids = _track_apply_connections(d)
    start = snapshot(net, skus)
    ledger = Ledger()
    ids = members(net, "TSHIRT-RED")
    with running(d) as thread:
        # 1. Inside the apply transaction, deterministically: it is blocked behind a shop lock.
        with RowLock(net, 3, ids[3]):
            woo_decrease(net, 1, ids[1], 2)
            ledger.add("TSHIRT-RED", -2)
            wait_until(
                lambda: lock_waits(net) == 1, 10, "the apply transaction to wait on the lock", poll=0.15
            )
            victim = apply_ids[-1]
            _kill(net, victim)
            # The killed transaction's work is gone; the change is still queued.
            assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 10, 3: 10}
        wait_drained(net, timeout=30, alive=thread.is_alive)
        assert len(apply_ids) >= 2 and apply_ids[-1] != victim, "the daemon did not reconnect"
        # 2. At random moments while shops keep writing.
        storm = Storm(net, skus, writers=3, pause=0.03, seed=5).start()
        rng = random.Random(5)
        kills = 0
        for _ in range(8):
            time.sleep(rng.uniform(0.05, 0.4))
            if apply_ids:
                try:
                    _kill(net, apply_ids[-1])
                    kills += 1
                except sa.exc.DBAPIError:
                    pass  # that connection was already replaced
        ledger.merge(storm.stop())
        wait_drained(net, timeout=60, alive=thread.is_alive)
    assert kills >= 4
    assert d.stats.reconnects >= 2
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


# =========================================================================== hot standby
def test_hot_standby_takes_over_within_5s_when_the_leader_is_killed(wp_network, tmp_path):
    net = wp_network
    skus = STOCK_SKUS[:5]
    cfg = write_config(tmp_path, net, sync={"batch_size": 20})
    a = DaemonProcess(cfg, name="A").start()
    b = DaemonProcess(cfg, name="B")
    try:
        a.wait_for("daemon_ready", timeout=30)
        b.start()
        b.wait_for("standby_waiting", timeout=30)
        start = snapshot(net, skus)
        storm = Storm(net, skus, writers=2, pause=0.02, seed=3).start()
        a.wait_for("batch_applied", timeout=30, after=a.mark())
        assert b.named("daemon_ready") == [] and b.named("batch_applied") == []  # B only waits
        killed_at = time.monotonic()
        assert a.kill() == -9
        b.wait_for("daemon_ready", timeout=5)
        took_over = time.monotonic() - killed_at
        b.wait_for("batch_applied", timeout=10)
        time.sleep(0.5)
        ledger = storm.stop()
        wait_drained(net, timeout=60, alive=b.alive)
        b.terminate()
        assert b.wait(30) == 0
    finally:
        a.stop()
        b.stop()
    assert took_over < 5.0
    assert b.named("leader_acquired")[0]["waited"] is True
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


def test_leader_losing_its_lock_connection_steps_down_and_nothing_is_applied_twice(wp_network, tmp_path):
    """KILL of the leader's lock connection frees the lock while its apply connection still works:
    the standby takes over at once, and until the old leader notices, both apply. Acknowledging by
    id in the apply transaction keeps that safe: every change lands exactly once."""
    net = wp_network
    skus = STOCK_SKUS[:5]
    cfg = write_config(tmp_path, net, sync={"batch_size": 5})
    a = DaemonProcess(cfg, name="A").start()
    b = DaemonProcess(cfg, name="B")
    try:
        a.wait_for("daemon_ready", timeout=30)
        b.start()
        b.wait_for("standby_waiting", timeout=30)
        lock = a.named("leader_acquired")[0]["lock"]
        start = snapshot(net, skus)
        storm = Storm(net, skus, writers=3, pause=0.03, seed=13).start()
        a.wait_for("batch_applied", timeout=30, after=a.mark())
        with net.engine.connect() as c:
            holder = c.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (lock,)).scalar_one()
        assert holder is not None
        _kill(net, holder)
        b.wait_for("daemon_ready", timeout=10)
        lost = a.wait_for("leadership_lost", timeout=10)
        a.wait_for("standby_waiting", timeout=10, after=a.events.index(lost))
        mark = a.mark()
        b.wait_for("batch_applied", timeout=10, after=b.mark())
        ledger = storm.stop()
        wait_drained(net, timeout=60, alive=b.alive)
        assert [e for e in a.events[mark:] if e["event"] == "batch_applied"] == [], (
            "the old leader kept applying"
        )
        b.terminate()
        a.terminate()
        assert b.wait(30) == EXIT_OK
        assert a.wait(30) == EXIT_OK
    finally:
        a.stop()
        b.stop()
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


# =========================================================================== signals
def test_sigterm_during_a_storm_exits_0_and_loses_nothing(wp_network, tmp_path):
    net = wp_network
    skus = STOCK_SKUS[:5]
    cfg = write_config(tmp_path, net, sync={"batch_size": 5})
    start = snapshot(net, skus)
    p = DaemonProcess(cfg).start()
    try:
        p.wait_for("daemon_ready", timeout=30)
        storm = Storm(net, skus, writers=3, pause=0.03, seed=11).start()
        p.wait_for("batch_applied", timeout=30, after=p.mark())
        time.sleep(random.Random(11).uniform(0.0, 0.3))
        p.terminate()
        assert p.wait(30) == EXIT_OK
        ledger = storm.stop()
    finally:
        p.stop()
    assert p.named("stop_requested") and p.named("daemon_stopped") and not p.named("daemon_aborted")
    # What was captured after the stop is applied by the next run.
    q = DaemonProcess(
        write_config(tmp_path, net, "drain.toml", sync={"batch_size": 500}), name="next"
    ).start()
    try:
        wait_drained(net, timeout=60, alive=q.alive)
        q.terminate()
        assert q.wait(30) == EXIT_OK
    finally:
        q.stop()
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


@contextmanager
def _sale_waiting_on_a_lock(net: Any, p: DaemonProcess) -> Iterator[None]:
    """Until the block ends: a row lock held on blog 3's TSHIRT-RED, and the daemon's apply
    transaction for a sale of 2 on blog 1 waiting on it (the config's lock wait is long, 10 s,
    so the batch is still in flight when the caller signals)."""
    ids = members(net, "TSHIRT-RED")
    p.wait_for("daemon_ready", timeout=30)
    with RowLock(net, 3, ids[3]):
        woo_decrease(net, 1, ids[1], 2)
        wait_until(lambda: lock_waits(net) == 1, 10, "the apply transaction to wait on the lock", poll=0.15)
        yield


def test_first_sigterm_finishes_the_batch_in_flight(wp_network, tmp_path):
    net = wp_network
    p = DaemonProcess(write_config(tmp_path, net, database={"lock_wait_timeout": 10})).start()
    try:
        with _sale_waiting_on_a_lock(net, p):
            mark = p.mark()
            p.terminate()
            p.wait_for("stop_requested", timeout=10, after=mark)
            assert p.alive()  # still finishing the batch
            assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 10, 3: 10}
        assert p.wait(30) == EXIT_OK
    finally:
        p.stop()
    assert p.named("stop_requested")[0]["in_batch"] is True
    applied = p.named("batch_applied")
    assert len(applied) == 1 and applied[0]["changes"] == 1
    assert not p.named("daemon_aborted")
    assert pending(net) == 0
    assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 8, 3: 8}
    assert_derived_consistent(net, ["TSHIRT-RED"])


def test_second_sigterm_aborts_the_batch_and_nothing_of_it_lands(wp_network, tmp_path):
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    cfg = write_config(tmp_path, net, database={"lock_wait_timeout": 10})
    p = DaemonProcess(cfg).start()
    try:
        with _sale_waiting_on_a_lock(net, p):
            p.terminate()
            p.wait_for("stop_requested", timeout=10)
            p.signal(signal.SIGTERM)
            # Aborted while the lock is still held: the batch never finished.
            assert p.wait(10) == EXIT_ABORTED
            assert p.named("stop_requested")[0]["in_batch"] is True
            assert p.named("daemon_aborted")[0]["in_batch"] is True
            assert p.named("batch_applied") == []
        # The server rolled the open transaction back: the change is still queued, nothing applied.
        wait_until(lambda: lock_waits(net) == 0, 10, "the aborted transaction to go", poll=0.15)
        assert pending(net) == 1
        assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 10, 3: 10}
    finally:
        p.stop()
    q = DaemonProcess(cfg, name="next").start()
    try:
        wait_drained(net, timeout=30, alive=q.alive)
        q.terminate()
        assert q.wait(30) == EXIT_OK
    finally:
        q.stop()
    assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 8, 3: 8}
    assert [r[:3] for r in history(net, "meta_key = '_stock' AND role = 'copy'")] == [
        ("copy", 2, ids[2]),
        ("copy", 3, ids[3]),
    ]
    assert_derived_consistent(net, ["TSHIRT-RED"])
