"""Issue 10: binlog capture (``capture.mode = "binlog"``) loses and doubles nothing, on a real
server with a ROW binary log: the hand-over from triggers, a stream lost and found again, products
named twice or before their commit is visible, syncd's own writes, WooCommerce's recorded
statements with syncd acting between them, every field group realtime, and a storm.

One binlog server for the module, a fresh network per test (tests.integration.binlog_helpers).
Step-driven tests start the follower themselves and wait, before each capture step, until it has
read everything committed (a barrier row): no sleep decides a race.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import capture, poll, wake
from syncd.config import config_for
from syncd.testnet.harness import NetworkFactory
from tests.integration.binlog_helpers import Follower
from tests.integration.daemon_process import lock_waits, members, quantities, wait_until
from tests.integration.sync_helpers import archived, ids, make_daemon, pending, qty, settled_now, woo_decrease
from tests.integration.test_fields_exact import price_duplicates, price_values
from tests.integration.test_settle import CREATE_WINDOWS, duplicates, settling, simple_elsewhere
from tests.integration.test_storm_property import FOUND, HUNT, poll_ops, run_storm
from tests.integration.test_wake import Running, binlog_server, until
from tests.integration.trace_replay import Replay

BINLOG = {"mode": "binlog", "poll_interval": 600}  # the full comparison only when the stream (re)starts


@pytest.fixture(scope="module")
def binlog_networks(mysql_server: Any) -> Iterator[NetworkFactory]:
    """One binlog server for the module's tests (each test takes a fresh network from it)."""
    with binlog_server(mysql_server) as factory:
        yield factory


@pytest.fixture
def binlog_net(binlog_networks: NetworkFactory) -> Iterator[Any]:
    """A fresh copy of the recorded network on the module's binlog server."""
    n = binlog_networks.recorded_network()
    try:
        yield n
    finally:
        binlog_networks.release(n)


def meta_triggers(net: Any) -> list[str]:
    with net.engine.connect() as c:
        installed = capture.installed_triggers(c, net.prefix)
    return sorted(
        n for b in net.blog_ids for n in capture.meta_trigger_names(net.prefix, b) if n in installed
    )


def change_rows(net: Any) -> list[tuple[int, int, str, str | None, str | None]]:
    with net.engine.connect() as c:
        return [
            tuple(r)
            for r in c.exec_driver_sql(
                f"SELECT blog_id, post_id, meta_key, old_value, new_value FROM {net.prefix}syncd_change ORDER BY id"
            )
        ]


def quiet(net: Any, d: Any) -> None:
    """Nothing left: a full comparison queues nothing, nothing pending, the snapshot equals postmeta."""
    assert d.poll() == 0
    assert pending(net) == 0 and lag(net, d) == 0


def lag(net: Any, d: Any) -> int:
    """Watched rows (the daemon's keys, realtime groups' too) whose snapshot row is missing,
    different or left over (tests.integration.poll_helpers.snapshot_lag, for any key set)."""
    snap, n = f"{net.prefix}syncd_snapshot", 0
    with net.engine.connect() as c:
        for b in net.blog_ids:
            pm, keys = net.table(b, "postmeta"), ", ".join(f"'{k}'" for k in d.watch_for(b).meta_keys)
            n += c.exec_driver_sql(
                f"SELECT COUNT(*) FROM {pm} pm LEFT JOIN {snap} s ON s.blog_id = {b} AND s.meta_id = pm.meta_id "
                f"WHERE pm.meta_key IN ({keys}) AND (s.meta_id IS NULL OR s.post_id <> pm.post_id "
                "OR NOT (BINARY s.value <=> BINARY pm.meta_value))"
            ).scalar_one()
            n += c.exec_driver_sql(
                f"SELECT COUNT(*) FROM {snap} s LEFT JOIN {pm} pm ON pm.meta_id = s.meta_id "
                f"AND pm.meta_key IN ({keys}) WHERE s.blog_id = {b} AND pm.meta_id IS NULL"
            ).scalar_one()
    return int(n)


# -- 1. the hand-over from triggers ------------------------------------------------------------


def test_trigger_rows_before_the_take_over_are_applied_and_those_after_it_polled_once(
    binlog_net, monkeypatch
):
    """A sale captured by a trigger before the snapshot stays queued and is applied once; a sale
    made after ``poll.take_over`` and before the triggers are dropped (its trigger row above the
    noted id) leaves the queue (``drop_captured_after``) and is found by the next poll, once."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    make_daemon(net).close()  # trigger capture installed
    woo_decrease(net, 1, mug[1], 2)  # captured by the trigger, not applied
    assert len(change_rows(net)) == 1
    take_over = poll.take_over

    def then_a_sale(conn: Any, base: str, blog: Any, keys: Any) -> int:
        last = take_over(conn, base, blog, keys)
        if blog.blog_id in (1, 2):
            woo_decrease(net, blog.blog_id, mug[blog.blog_id], 1)  # its trigger still captures it
        return last

    monkeypatch.setattr(poll, "take_over", then_a_sale)
    d = make_daemon(net, capture=BINLOG)
    try:
        assert d.capture_mode == "binlog" and meta_triggers(net) == []
        assert [r[:3] for r in change_rows(net)] == [(1, mug[1], "_stock")]  # the two later rows left
        assert d.poll() == 2  # ... and are found as differences
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 4] * 3
        quiet(net, d)
    finally:
        d.close()


@pytest.mark.parametrize("write", ["sale", "new_row"])
def test_a_shop_write_in_flight_during_the_take_over_counts_once(binlog_net, write):
    """A shop transaction has written a watched row (its trigger row too) and not committed when
    binlog capture takes over: the hand-over must count it exactly once, whether the snapshot or
    the queue ends up holding it. ``new_row``: a watched row inserted (an importer's re-add)."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    make_daemon(net).close()
    made: list[Any] = []
    with net.engine.connect() as shop:
        if write == "sale":
            shop.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = meta_value - 1 "
                f"WHERE post_id = {mug[1]} AND meta_key = '_stock'"
            )
        else:
            shop.exec_driver_sql(
                f"INSERT INTO {net.table(1, 'postmeta')} (post_id, meta_key, meta_value) "
                f"VALUES ({mug[1]}, '_low_stock_amount', '4')"
            )
        t = threading.Thread(target=lambda: made.append(make_daemon(net, capture=BINLOG)))
        t.start()
        wait_until(
            lambda: not t.is_alive() or lock_waits(net) >= 1, 30, "the take-over to pass or wait", poll=0.15
        )
        shop.commit()
        t.join(60)
        assert not t.is_alive() and made
    d = made[0]
    try:
        d.poll()
        captured = [r for r in change_rows(net) if r[1] == mug[1]]
        assert len(captured) == 1, captured
        d.apply_pending()
        if write == "sale":
            assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 1] * 3
        else:
            assert [meta_value(net, b, mug[b], "_low_stock_amount") for b in (1, 2, 3)] == ["4"] * 3
        quiet(net, d)
    finally:
        d.close()


def meta_value(net: Any, blog: int, post: int, key: str) -> list[str]:
    with net.engine.connect() as c:
        rows = c.execute(
            sa.text(
                f"SELECT meta_value FROM {net.table(blog, 'postmeta')} WHERE post_id = :p AND meta_key = :k"
            ),
            {"p": post, "k": key},
        ).scalars()
        values = list(rows)
    assert len(values) <= 1, values
    return values[0] if values else None


def test_a_stale_snapshot_of_an_earlier_poll_run_is_replaced_not_diffed(binlog_net):
    """Poll mode once (a snapshot), then trigger mode (sales captured and applied by triggers),
    then binlog capture: the snapshot is taken again, so the trigger era's sales are not queued
    a second time as differences from the old snapshot."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture={"mode": "poll"})
    d.poll()
    d.close()
    d = make_daemon(net)  # trigger capture
    woo_decrease(net, 1, mug[1], 1)
    woo_decrease(net, 2, mug[2], 2)
    d.apply_pending()
    d.close()
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
    d = make_daemon(net, capture=BINLOG)
    try:
        quiet(net, d)
        woo_decrease(net, 3, mug[3], 1)
        assert d.poll() == 1
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 4] * 3
        quiet(net, d)
    finally:
        d.close()


@pytest.mark.parametrize("sale_before_discovery", [False, True])
def test_a_blog_archived_at_the_switch_waits_for_a_restart_and_counts_once(binlog_net, sale_before_discovery):
    """Blog 3 is archived when binlog capture starts: its postmeta triggers stay and keep queueing
    (held). Back, it is not served while they are there (``capture_take_over_needs_restart``: a
    take-over beside a running batch could count a write twice), even by a batch applied before
    its discovery, and without an error at each discovery; the restart takes it over: its held
    sales count once, and its stale snapshot of an earlier poll run is not diffed (that would
    count the trigger era's sales again)."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture={"mode": "poll"})
    d.poll()
    d.close()
    d = make_daemon(net)
    woo_decrease(net, 3, mug[3], 1)
    d.apply_pending()
    d.close()
    archived(net, 3, True)
    d = make_daemon(net, capture=BINLOG)
    try:
        d.poll()
        woo_decrease(net, 3, mug[3], 2)  # captured by blog 3's trigger, held
        woo_decrease(net, 1, mug[1], 1)
        d.poll()
        d.apply_pending()
        archived(net, 3, False)
        if sale_before_discovery:  # blog 3 is live again, not discovered yet
            woo_decrease(net, 1, mug[1], 1)
            d.poll()
            d.apply_pending()
        d.discover()
        d.discover()
        assert 3 not in d.blogs() and len(meta_triggers(net)) == 3
        woo_decrease(net, 3, mug[3], 1)  # its trigger still captures: held
        d.poll()
        d.apply_pending()
        errors = (d.stats.errors, d.stats.last_error)
    finally:
        d.close()
    d = make_daemon(net, capture=BINLOG)  # the restart
    try:
        assert meta_triggers(net) == []
        d.poll()
        d.apply_pending()
        sold = 6 if sale_before_discovery else 5
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - sold] * 3
        quiet(net, d)
    finally:
        d.close()
    assert errors == (0, None)  # waiting is not an error at each discovery


def test_hand_over_from_triggers_under_load_counts_every_sale_once(binlog_net, monkeypatch):
    """Sales on blogs 1 and 2 never stop while a trigger-mode daemon stops and a binlog-capture
    daemon starts (take-over, trigger drop, first poll) and runs: every blog ends at the start
    minus every sale, once."""
    net = binlog_net
    monkeypatch.setattr(wake, "FALLBACK_S", 600.0)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    sold = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def sell() -> None:
        try:
            with net.engine.connect() as c:
                while not stop.is_set():
                    b = 1 + sold[0] % 2
                    woo_decrease(net, b, mug[b], 1, conn=c)
                    sold[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    seller = threading.Thread(target=sell)
    d1 = make_daemon(net)
    try:
        with Running(d1):
            seller.start()
            at = sold[0]
            assert until(lambda: sold[0] >= at + 20, 30)
        d2 = make_daemon(net, capture=BINLOG)
        with Running(d2):
            assert d2.capture_mode == "binlog" and meta_triggers(net) == []
            at = sold[0]
            assert until(lambda: sold[0] >= at + 20, 30)
            stop.set()
            seller.join(30)
            assert errors == []
            want = {b: start[b] - sold[0] for b in start}
            assert until(lambda: quantities(net, "MUG") == want, 60), (quantities(net, "MUG"), want)
        assert d2.stats.errors == 0, d2.stats.last_error
        d3 = make_daemon(net, capture=BINLOG)
        try:
            quiet(net, d3)
            assert quantities(net, "MUG") == want
        finally:
            d3.close()
    finally:
        stop.set()
        if seller.is_alive():
            seller.join(30)
        d1.close()


# -- 2. a lost stream ---------------------------------------------------------------------------


def test_sales_while_the_log_is_not_followed_are_found_when_the_stream_starts_again(binlog_net, monkeypatch):
    """The follower is held off (its connection refused) while sales commit: at start-up, after the
    daemon's first look, and again after its stream broke mid-run. Nothing names those sales and
    the full comparison is ten minutes away: the comparison each (re)start of the stream makes
    finds them, each once."""
    net = binlog_net
    monkeypatch.setattr(wake, "FALLBACK_S", 600.0)
    gate, held = threading.Event(), threading.Event()
    position = wake.BinlogWake._gtid_position

    def gated(self: Any) -> str:
        held.set()
        assert gate.wait(60), "the test never let the follower in"
        held.clear()
        return position(self)

    monkeypatch.setattr(wake.BinlogWake, "_gtid_position", gated)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    d = make_daemon(net, capture=BINLOG)
    idle = [0]
    wait_idle = d._wait_idle

    def counted() -> None:
        idle[0] += 1
        wait_idle()

    d._wait_idle = counted
    with Running(d):
        assert until(lambda: held.is_set() and idle[0] >= 1, 30), "the loop is not idle"
        woo_decrease(net, 1, mug[1], 1)
        woo_decrease(net, 2, mug[2], 2)
        gate.set()
        want = {b: start[b] - 3 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30), quantities(net, "MUG")
        assert until(lambda: d._wake.following.is_set(), 30)

        gate.clear()  # the stream breaks; the server refuses the follower until the gate opens
        w = d._wake

        def refused(**_kw: Any) -> Any:
            raise pymysql.err.OperationalError(2003, "test: cannot connect")

        w._stream.pymysql_wrapper = refused
        w._stream._stream_connection._sock.shutdown(socket.SHUT_RDWR)
        assert until(lambda: held.is_set() and not w.following.is_set(), 30), "the stream did not break"
        woo_decrease(net, 3, mug[3], 4)
        woo_decrease(net, 1, mug[1], 1)
        gate.set()
        want = {b: start[b] - 8 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30), quantities(net, "MUG")
    d2 = make_daemon(net, capture=BINLOG)
    try:
        quiet(net, d2)
        assert quantities(net, "MUG") == want
    finally:
        d2.close()


# -- 3. named twice, named before visible -------------------------------------------------------


def test_a_product_named_twice_queues_its_difference_once(binlog_net):
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    try:
        d.poll()  # the baselines
        woo_decrease(net, 1, mug[1], 1)
        woo_decrease(net, 1, mug[1], 2)
        f.caught_up()
        assert mug[1] in f.named()[1]
        assert f.step() == 1  # the two sales, one difference of -3
        assert d._poll_products({1: {mug[1]}}) == 0  # named again: nothing
        assert f.step() == 0
        assert [r[3:] for r in change_rows(net)] == [(str(start), str(start - 3))]
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
        quiet(net, d)
    finally:
        f.close()
        d.close()


def test_a_product_compared_before_its_commit_is_visible_is_waited_for_and_queued_once(binlog_net):
    """The comparison reaches a product whose sale is not committed yet (what a log event read a
    moment before its commit is visible looks like): its locking read waits for the shop's
    transaction and, once it commits, queues the two sales once; the log naming it again after
    the commit queues nothing."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    try:
        d.poll()
        with net.engine.connect() as shop:
            woo_decrease(net, 1, mug[1], 1)  # one committed sale, named
            f.caught_up()
            shop.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = meta_value - 2 "
                f"WHERE post_id = {mug[1]} AND meta_key = '_stock'"
            )
            got: list[int] = []
            t = threading.Thread(target=lambda: got.append(d.poll_named()))
            t.start()
            wait_until(lambda: lock_waits(net) >= 1, 10, "the comparison to wait for the shop", poll=0.15)
            shop.commit()
            t.join(30)
            assert not t.is_alive() and got == [1]
        assert f.step() == 0  # the log names it again now: already captured
        assert d._poll_products({1: {mug[1]}}) == 0
        assert [r[3:] for r in change_rows(net)] == [(str(start), str(start - 3))]
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
        quiet(net, d)
    finally:
        f.close()
        d.close()


def test_a_named_comparison_and_a_full_one_racing_queue_a_difference_once(binlog_net):
    """Two comparisons of one sale at once (a resynced full comparison of one instance and a named
    one of another, e.g. around a leadership hand-over): the second waits for the first's snapshot
    row, finds it moved and queues nothing."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    try:
        d.poll()
        woo_decrease(net, 1, mug[1], 2)
        blog = d.blogs()[1]
        with net.engine.connect() as a:
            assert poll.poll_posts(a, net.prefix, blog, [mug[1]]) == 1
            second: list[int] = []
            t = threading.Thread(target=lambda: second.append(d.poll()))
            t.start()
            wait_until(lambda: lock_waits(net) == 1, 10, "the full comparison to wait", poll=0.15)
            a.commit()
            t.join(30)
            assert not t.is_alive()
        assert second == [0] and pending(net) == 1
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3
        quiet(net, d)
    finally:
        d.close()


# -- 4. syncd's own writes ----------------------------------------------------------------------


def test_the_members_syncd_wrote_are_not_named_and_compare_equal(binlog_net):
    """A sale that empties MUG on blog 1: syncd writes ``_stock`` and the derived ``_stock_status``
    into blogs 2 and 3. The follower names nothing for syncd's own transactions, and comparing
    those members anyway queues nothing (the snapshot moved with syncd's own writes): nothing
    comes back, and a restock elsewhere goes the other way once."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    try:
        d.poll()
        woo_decrease(net, 1, mug[1], start)
        assert f.step() == 1
        assert d.apply_pending() == 1
        f.caught_up()
        named = f.named()
        assert mug[2] not in named.get(2, set()) and mug[3] not in named.get(3, set()), named
        assert d._poll_products({1: {mug[1]}, 2: {mug[2]}, 3: {mug[3]}}) == 0
        assert f.step() == 0 and pending(net) == 0
        assert [meta_value(net, b, mug[b], "_stock_status") for b in (1, 2, 3)] == ["outofstock"] * 3
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [0] * 3
        woo_decrease(net, 3, mug[3], -5)  # a restock on blog 3 goes back the other way, once
        assert f.step() == 1
        d.apply_pending()
        assert f.step() == 0
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [5] * 3
        assert [meta_value(net, b, mug[b], "_stock_status") for b in (1, 2, 3)] == ["instock"] * 3
        quiet(net, d)
    finally:
        f.close()
        d.close()


# -- 5. WooCommerce's recorded statements, syncd acting between two of them ---------------------


def acting(f: Follower, d: Any) -> Any:
    """After a statement: the log has been read (barrier), the named products compared, and
    everything queued applied - the fastest binlog-capture daemon there could be."""

    def act(_st: Any) -> None:
        f.step()
        d.apply_pending()

    return act


def test_a_creation_replayed_with_syncd_after_every_statement_joins_once(binlog_net):
    """Trace 01 (wc.php 2 create NEWSKU 100: post 28 on blog 2), binlog capture comparing and
    applying after each of its 363 statements: no duplicate row, WooCommerce's own values, the
    product joins once settled, and every sale after counts once."""
    net = binlog_net
    others = simple_elsewhere(net, "NEWSKU", 40)
    d = make_daemon(net, capture=BINLOG, sync={"settle_seconds": 3600})
    f = Follower(net, d)
    try:
        d.poll()
        with Replay(net, "01-create-simple") as replay:
            replay.run(between=acting(f, d))
        assert duplicates(net, 2) == []
        assert (meta_value(net, 2, 28, "_stock"), meta_value(net, 2, 28, "_stock_status")) == (
            "100",
            "instock",
        )
        assert [qty(net, b, p) for b, p in others.items()] == [40, 40]
        assert settling(net) == {(2, 28): "join"}
        woo_decrease(net, 2, 28, 3)  # a sale before it joined: kept for the join
        acting(f, d)(None)
        settled_now(net)
        d.apply_pending()
        assert settling(net) == {} and pending(net) == 0
        assert [qty(net, 1, others[1]), qty(net, 2, 28), qty(net, 3, others[3])] == [37, 37, 37]
        woo_decrease(net, 2, 28, 1)
        woo_decrease(net, 1, others[1], 2)
        acting(f, d)(None)
        assert [qty(net, 1, others[1]), qty(net, 2, 28), qty(net, 3, others[3])] == [34, 34, 34]
        assert duplicates(net, 1) == duplicates(net, 2) == duplicates(net, 3) == []
        quiet(net, d)
    finally:
        f.close()
        d.close()


@pytest.mark.parametrize("window", CREATE_WINDOWS, ids=[f"{t}-{k}-{a}-{b}" for t, a, b, k in CREATE_WINDOWS])
def test_syncd_acting_inside_each_window_of_a_creation_leaves_no_duplicate(binlog_net, window):
    """settle_seconds = 0 (the product joins the moment syncd acts): a sale elsewhere compared and
    applied inside each dangerous window of trace 01 inserts no row WooCommerce inserts next, and
    the product joins with every sale counted once."""
    kind, after, _before, _key = window
    net = binlog_net
    others = simple_elsewhere(net, "NEWSKU", 40)
    d = make_daemon(net, capture=BINLOG, sync={"settle_seconds": 0})
    f = Follower(net, d)
    try:
        d.poll()
        with Replay(net, "01-create-simple") as replay:
            replay.run(until=after)
            woo_decrease(net, 1, others[1], 2)
            acting(f, d)(None)
            replay.run()
        acting(f, d)(None)
        assert duplicates(net, 2) == [], kind
        settled_now(net)
        acting(f, d)(None)
        assert [qty(net, 1, others[1]), qty(net, 2, 28), qty(net, 3, others[3])] == [38, 38, 38]
        assert settling(net) == {}
        quiet(net, d)
    finally:
        f.close()
        d.close()


@pytest.mark.parametrize("sale_after", [47, 50, 73, 74, 100])
def test_an_admin_stock_save_replayed_with_a_sale_elsewhere_at_each_point(binlog_net, sale_after):
    """Trace 03a (blog 1: MUG set to 7 by a CRUD save, absolute UPDATE at 74), syncd comparing and
    applying after every statement, a sale of 1 on blog 2 after statement ``sale_after``: every
    blog ends equal - 7 when the sale reached blog 1 before the save's UPDATE (the admin's edit
    counts as its difference, as with triggers), 6 after it - never a sale lost or counted twice."""
    net = binlog_net
    mug = ids(net, "MUG")
    assert mug[1] == 12
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    act = acting(f, d)

    def between(st: Any) -> None:
        if st.index == sale_after or (st.index > sale_after and not sold):
            woo_decrease(net, 2, mug[2], 1)
            sold.append(st.index)
        act(st)

    sold: list[int] = []
    try:
        d.poll()
        with Replay(net, "03a-admin-save-stock-crud") as replay:
            replay.run(between=between)
        act(None)
        assert sold
        expected = 7 if sold[0] < 74 else 6
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [expected] * 3
        assert duplicates(net, 1) == [] and pending(net) == 0
        quiet(net, d)
    finally:
        f.close()
        d.close()


def test_a_price_save_replayed_with_price_realtime_and_sales_between_statements(binlog_net):
    """Trace 09 (blog 1: MUG regular 11.00, sale 8.00) with ``price`` realtime in binlog capture,
    syncd acting after every statement, a sale on blog 3 inside the ``_sale_price`` duplicate
    window (62 -> 63) and one on blog 2 before the ``_price`` update: no duplicate price row, every
    blog takes WooCommerce's prices, the sales count once, and no postmeta trigger exists."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG, fields={"price": "realtime"}, sync={"settle_seconds": 3600})
    f = Follower(net, d)
    act = acting(f, d)

    def between(st: Any) -> None:
        if st.index == 62:
            woo_decrease(net, 3, mug[3], 1)
        if st.index == 80:
            woo_decrease(net, 2, mug[2], 2)
        act(st)

    try:
        assert meta_triggers(net) == []
        d.poll()
        with Replay(net, "09-price-save", now=True) as replay:
            replay.run(between=between)
        act(None)
        assert price_duplicates(net, mug) == []
        assert price_values(net, mug) == [("11.00", "8.00", None, None, "8.00")] * 3
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
        assert pending(net) == 0 and settling(net) == {}
        quiet(net, d)
    finally:
        f.close()
        d.close()


# -- 6. every field group realtime --------------------------------------------------------------

ALL_REALTIME = {
    g: "realtime"
    for g in ("price", "tax", "shipping", "identity", "purchase", "content", "visibility", "taxonomy")
}
#: A shop's edit on blog 1 of one field of each meta group: key -> value.
META_EDITS = {
    "_regular_price": "12.50",  # price
    "_tax_status": "shipping",  # tax
    "_weight": "0.75",  # shipping
    "_global_unique_id": "4006381333931",  # identity
    "_purchase_note": "Handle with care",  # purchase
}


def shop_sets(net: Any, blog: int, post: int, key: str, value: str) -> None:
    """A save writes a meta key: UPDATE where the product has it, else INSERT."""
    pm = net.table(blog, "postmeta")
    with net.engine.connect() as c:
        p = {"p": post, "k": key, "v": value}
        if c.execute(
            sa.text(f"SELECT COUNT(*) FROM {pm} WHERE post_id = :p AND meta_key = :k"), p
        ).scalar_one():
            c.execute(sa.text(f"UPDATE {pm} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"), p)
        else:
            c.execute(sa.text(f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (:p, :k, :v)"), p)
        c.commit()


def term_id(net: Any, blog: int, taxonomy: str, slug: str) -> int:
    """The term_taxonomy id of ``slug`` in ``taxonomy`` on the blog, created if missing."""
    t, tt = net.table(blog, "terms"), net.table(blog, "term_taxonomy")
    with net.engine.connect() as c:
        p = {"s": slug, "x": taxonomy}
        found = c.execute(
            sa.text(
                f"SELECT tt.term_taxonomy_id FROM {tt} tt JOIN {t} t ON t.term_id = tt.term_id "
                "WHERE tt.taxonomy = :x AND t.slug = :s"
            ),
            p,
        ).scalar_one_or_none()
        if found is None:
            term = c.execute(sa.text(f"INSERT INTO {t} (name, slug) VALUES (:s, :s)"), p).lastrowid
            found = c.execute(
                sa.text(f"INSERT INTO {tt} (term_id, taxonomy, description) VALUES (:t, :x, '')"),
                {"t": term, "x": taxonomy},
            ).lastrowid
        c.commit()
    return int(found)


def terms_of(net: Any, blog: int, post: int, taxonomy: str) -> set[str]:
    t, tt, tr = (net.table(blog, x) for x in ("terms", "term_taxonomy", "term_relationships"))
    with net.engine.connect() as c:
        return set(
            c.execute(
                sa.text(
                    f"SELECT t.slug FROM {tr} tr JOIN {tt} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
                    f"JOIN {t} t ON t.term_id = tt.term_id WHERE tr.object_id = :p AND tt.taxonomy = :x"
                ),
                {"p": post, "x": taxonomy},
            ).scalars()
        )


def test_every_field_group_realtime_in_binlog_capture(binlog_net):
    """Every group realtime: the meta groups (price, tax, shipping, identity, purchase) are compared
    where the log points, the posts and terms groups (content, visibility, taxonomy) keep their
    triggers - and only those exist. A shop's edit of each reaches blogs 2 and 3 with a sale in the
    same moment, and nothing syncd wrote comes back."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    for b in (1, 2, 3):
        term_id(net, b, "product_cat", "kitchen")
        term_id(net, b, "product_visibility", "featured")
    d = make_daemon(net, capture=BINLOG, fields=ALL_REALTIME)
    f = Follower(net, d)
    try:
        assert set(d.realtime_groups()) == set(ALL_REALTIME)
        with net.engine.connect() as c:
            installed = capture.installed_triggers(c, net.prefix)
        for b in (1, 2, 3):
            mine = {n for n in capture.blog_trigger_names(net.prefix, b) if n in installed}
            assert mine and not mine & set(capture.meta_trigger_names(net.prefix, b)), mine
            assert {n[-3:] for n in mine} == {"_pu", "_ti", "_td"}, mine
        d.poll()
        for key, value in META_EDITS.items():
            shop_sets(net, 1, mug[1], key, value)
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'posts')} SET post_title = 'Mug, teal' WHERE ID = {mug[1]}"
            )
            for tax, slug in (("product_cat", "kitchen"), ("product_visibility", "featured")):
                c.exec_driver_sql(
                    f"INSERT INTO {net.table(1, 'term_relationships')} (object_id, term_taxonomy_id) "
                    f"VALUES ({mug[1]}, {term_id(net, 1, tax, slug)})"
                )
            c.commit()
        woo_decrease(net, 2, mug[2], 1)
        assert f.step() == len(META_EDITS) + 1
        d.apply_pending()
        for key, value in META_EDITS.items():
            assert [meta_value(net, b, mug[b], key) for b in (1, 2, 3)] == [value] * 3, key
        with net.engine.connect() as c:
            titles = [
                c.exec_driver_sql(
                    f"SELECT post_title FROM {net.table(b, 'posts')} WHERE ID = {mug[b]}"
                ).scalar_one()
                for b in (1, 2, 3)
            ]
        assert titles == ["Mug, teal"] * 3
        assert all("kitchen" in terms_of(net, b, mug[b], "product_cat") for b in (1, 2, 3))
        assert all("featured" in terms_of(net, b, mug[b], "product_visibility") for b in (1, 2, 3))
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 1] * 3
        assert f.step() == 0 and pending(net) == 0  # syncd's own writes: nothing captured back
        quiet(net, d)
    finally:
        f.close()
        d.close()


# -- 7. a storm ---------------------------------------------------------------------------------


def follow_in_storm(net: Any) -> Any:
    """The storm's capture step in binlog capture: the follower read every write, the daemon
    compares what it named (no full comparison after the first)."""
    return lambda d: Follower(net, d).step


# Binlog capture, like poll mode, sees no connection ids: the storm's Polylang for WooCommerce
# fan-out operations are left out (README, Capture modes), as in the poll storm.
@settings(
    max_examples=int(os.environ.get("SYNCD_STORM_EXAMPLES", "6")),
    derandomize=HUNT is None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(steps=st.lists(poll_ops, min_size=5, max_size=30), batch_size=st.sampled_from([1, 3, 500]))
def test_storm_in_binlog_capture_converges(binlog_networks, steps, batch_size):
    net = binlog_networks.recorded_network()
    try:
        run_storm(net, steps, batch_size, mode="binlog", capture_step=follow_in_storm(net))
    finally:
        binlog_networks.release(net)


@pytest.mark.parametrize("name", sorted(n for n, case in FOUND.items() if case[2] == "poll"))
def test_poll_storm_examples_found_before_in_binlog_capture(binlog_networks, name):
    steps, batch_size, _mode = FOUND[name]
    net = binlog_networks.recorded_network()
    try:
        run_storm(net, steps, batch_size, mode="binlog", capture_step=follow_in_storm(net))
    finally:
        binlog_networks.release(net)


# -- what an operator would also expect ---------------------------------------------------------


def test_products_named_when_the_comparison_loses_its_connection_are_compared_again(binlog_net, monkeypatch):
    """The comparison of what the log named dies with its connection (a server restart, a network
    blip): the daemon's loop reconnects and goes on, and those products are compared at its next
    step - not only at the full comparison, ten minutes away."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    real = poll.poll_posts
    killed: list[int] = []

    def connection_dies(conn: Any, *args: Any, **kw: Any) -> int:
        if not killed:
            killed.append(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
            with net.engine.connect() as admin:
                admin.exec_driver_sql(f"KILL {killed[0]}")
        return real(conn, *args, **kw)

    try:
        d.poll()
        monkeypatch.setattr(poll, "poll_posts", connection_dies)
        woo_decrease(net, 1, mug[1], 2)
        with pytest.raises(sa.exc.DBAPIError):
            f.step()
        assert killed and pending(net) == 0
        assert f.step() == 1  # the next step compares MUG again (the log names nothing new)
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3
        quiet(net, d)
    finally:
        f.close()
        d.close()


@pytest.mark.parametrize(
    "before,after,fields",
    [
        ("binlog", "auto", {}),
        ("poll", "trigger", {}),
        ("binlog", "trigger", {"price": "realtime"}),
        ("binlog", "install", {}),  # `syncd install` creates the triggers, then the daemon starts
    ],
)
def test_switching_back_to_triggers_loses_no_write_made_while_syncd_was_stopped(
    binlog_net, before, after, fields
):
    """Binlog (or poll) capture, stopped; sales and a setting while no daemon runs; then trigger
    capture again (with a realtime group turned on meanwhile: the snapshot's key set changes in
    the hand-over): those writes must reach the other blogs, once. Before, the triggers installed
    at start saw none of them (a restart in binlog or poll capture compares and finds them): the
    hand-over now queues the differences and creates the triggers under one table lock."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture={**BINLOG, "mode": before})
    d.poll()
    woo_decrease(net, 1, mug[1], 1)
    d.poll()
    d.apply_pending()
    d.close()
    woo_decrease(net, 1, mug[1], 1)  # nobody captures these yet (blog 1: the "auto" mode's probe)
    woo_decrease(net, 2, mug[2], 2)
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(3, 'postmeta')} SET meta_value = 'notify' WHERE post_id = {mug[3]} AND meta_key = '_backorders'"
        )
        c.commit()
    if after == "install":
        config = config_for(net.url, net.prefix, capture={"mode": "trigger"})
        assert capture.install_all(config, out=io.StringIO()) == 0
        after = "trigger"
    d = make_daemon(net, capture={"mode": after}, fields=fields)
    try:
        assert d.capture_mode == "trigger" and d.stats.errors == 0, d.stats.last_error
        assert len(meta_triggers(net)) == 9
        woo_decrease(net, 3, mug[3], 1)  # captured by the new triggers
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 5] * 3
        assert [meta_value(net, b, mug[b], "_backorders") for b in (1, 2, 3)] == ["notify"] * 3
        assert pending(net) == 0
        with net.engine.connect() as c:  # the snapshot went with the hand-over
            assert c.exec_driver_sql(f"SELECT COUNT(*) FROM {net.prefix}syncd_snapshot").scalar_one() == 0
    finally:
        d.close()


def test_reconcile_in_binlog_capture_applies_an_unseen_sale_first_and_nothing_comes_back(binlog_net):
    """`syncd --reconcile` next to binlog capture (a content group realtime: the blogs keep a posts
    trigger, no postmeta one): its lock step queues the sale the daemon has not compared yet and
    applies it; the members it wrote are named by the log and compared: nothing is queued again."""
    from tests.integration.test_audit_reconcile import run_reconcile

    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    sections = {"capture": BINLOG, "fields": {"content": "realtime"}}
    d = make_daemon(net, **sections)
    f = Follower(net, d)
    try:
        d.poll()
        woo_decrease(net, 2, mug[2], 2)  # not compared by the daemon yet
        _found, done = run_reconcile(net, **sections)
        assert done.counts["skipped_chunks"] == 0, done
        assert done.pending_applied == 1
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3
        assert f.step() == 0 and pending(net) == 0
        quiet(net, d)
    finally:
        f.close()
        d.close()


@pytest.mark.parametrize("image", ["MINIMAL", "NOBLOB"])
def test_a_shop_session_logging_partial_row_images_is_captured_without_losing_the_stream(binlog_net, image):
    """``binlog_row_image`` MINIMAL (a server's or a session's setting) logs an UPDATE's before image
    with the primary key only and its after image with the changed column only: the log cannot say
    which product was written. The follower must not lose its stream over it (it used to, at every
    such event: a reconnection, and the events meanwhile skipped), and the daemon compares that
    blog whole instead; NOBLOB keeps post id and key (only the value is left out)."""
    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture=BINLOG)
    f = Follower(net, d)
    try:
        d.poll()
        with net.engine.connect() as shop:
            shop.exec_driver_sql(f"SET SESSION binlog_row_image = '{image}'")
            woo_decrease(net, 2, mug[2], 2, conn=shop)
            shop.exec_driver_sql(
                f"DELETE FROM {net.table(3, 'postmeta')} WHERE post_id = {mug[3]} AND meta_key = '_low_stock_amount'"
            )
            shop.exec_driver_sql(
                f"INSERT INTO {net.table(3, 'postmeta')} (post_id, meta_key, meta_value) VALUES ({mug[3]}, '_low_stock_amount', '2')"
            )
            shop.commit()
        assert f.step() == 2
        assert f.wake.following.is_set() and not f.wake.resynced.is_set()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 2] * 3
        assert [meta_value(net, b, mug[b], "_low_stock_amount") for b in (1, 2, 3)] == ["2"] * 3
        assert f.step() == 0
        quiet(net, d)
    finally:
        f.close()
        d.close()


def test_an_idle_daemon_in_binlog_capture_compares_nothing_after_a_sale(binlog_net, monkeypatch):
    """After a sale is applied an idle daemon waits for the log: no comparison runs until the next
    write (the first version's recheck compared every product ever named at every step, and its
    idle wait never slept)."""
    net = binlog_net
    monkeypatch.setattr(wake, "FALLBACK_S", 600.0)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    d = make_daemon(net, capture=BINLOG)
    compared = [0]
    real = d._poll_products

    def counted(named: Any) -> int:
        compared[0] += 1
        return real(named)

    d._poll_products = counted
    with Running(d):
        assert until(lambda: d._wake is not None and d._wake.following.is_set(), 30), "not following"
        woo_decrease(net, 1, mug[1], 1)
        want = {b: start[b] - 1 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30)
        before = compared[0]
        time.sleep(0.3)  # a window in which a busy loop compares hundreds of times
        assert compared[0] - before <= 1
    assert d.stats.errors == 0, d.stats.last_error


def test_a_blog_whose_hand_back_to_triggers_fails_is_not_served_until_it_succeeds(binlog_net, monkeypatch):
    """The hand-back to triggers can lose its table lock (a long shop statement). That blog gets no
    trigger then; were it served, syncd's own writes into it would be found by the next attempt's
    comparison as if the shop had made them (counted twice). It is held instead: its members miss
    the sales of the others (healed when it is back), its own sales are found by the comparison."""
    import pymysql

    from syncd import poll

    net = binlog_net
    mug = ids(net, "MUG")
    start = qty(net, 1, mug[1])
    d = make_daemon(net, capture={**BINLOG, "mode": "poll"})
    d.poll()
    d.close()
    real = poll.hand_to_triggers

    def lock_lost_on_blog_2(conn, base, blog, *args, **kw):
        if blog.blog_id == 2:
            raise pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
        return real(conn, base, blog, *args, **kw)

    monkeypatch.setattr(poll, "hand_to_triggers", lock_lost_on_blog_2)
    d = make_daemon(net, capture={"mode": "trigger"})
    try:
        assert 2 not in d.blogs()
        woo_decrease(net, 1, mug[1], 1)  # reaches blog 3; blog 2's member misses it
        woo_decrease(net, 2, mug[2], 2)  # no trigger on blog 2 yet
        d.apply_pending()
        assert qty(net, 2, mug[2]) == start - 2
        monkeypatch.setattr(poll, "hand_to_triggers", real)
        d.discover()  # the hand-back succeeds: blog 2's sale is queued, blog 2 served again
        assert 2 in d.blogs()
        d.apply_pending()
        settled_now(net)
        d.apply_pending()  # blog 2's member is healed with the sale it missed
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
    finally:
        d.close()
