"""Binlog capture (``capture.mode = "binlog"``, issue 10's trigger cost): no postmeta trigger; the
binary log names the products whose watched postmeta rows a transaction wrote, and the daemon
compares exactly those with the poll snapshot (syncd.poll.poll_posts, syncd.wake).

Each test runs its own private server with a ROW binary log (tests.integration.test_wake).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from syncd import capture, wake
from tests.integration import test_wake
from tests.integration.daemon_process import members, quantities
from tests.integration.sync_helpers import make_daemon, woo_decrease
from tests.integration.test_wake import Running, until


@pytest.fixture(scope="module")
def binlog_factory(mysql_server: Any) -> Iterator[Any]:
    """One private server with a ROW binary log for this module (each test takes a fresh network)."""
    with test_wake.binlog_server(mysql_server) as factory:
        yield factory


#: The full comparison would come after ten minutes: only the binary log can name a product.
NO_FULL_POLL = {"mode": "binlog", "poll_interval": 600}


def _meta_triggers(net) -> list[str]:
    with net.engine.connect() as c:
        installed = capture.installed_triggers(c, net.prefix)
    return sorted(n for b in (1, 2, 3) for n in capture.meta_trigger_names(net.prefix, b) if n in installed)


def test_a_sale_reaches_the_other_blogs_through_the_binary_log(binlog_factory, monkeypatch):
    monkeypatch.setattr(wake, "FALLBACK_S", 600.0)
    net = binlog_factory.recorded_network()
    d = make_daemon(net, capture=NO_FULL_POLL)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    with Running(d):
        assert d.capture_mode == "binlog"
        assert _meta_triggers(net) == []
        assert until(lambda: d._wake is not None and d._wake.following.is_set(), 30), "not following"
        for n in (1, 2, 3):
            t0 = time.monotonic()
            woo_decrease(net, 1 + n % 2, mug[1 + n % 2], 1)
            want = {b: start[b] - n for b in start}
            assert until(lambda want=want: quantities(net, "MUG") == want, 30)
            print("reached in", round((time.monotonic() - t0) * 1000, 1), "ms")
    assert d.stats.errors == 0, d.stats.last_error


def test_status_install_and_check_in_binlog_mode(binlog_factory):
    """What the operator sees: `syncd check` on a ROW log says binlog capture is possible; `syncd
    install` hands postmeta over to the snapshot (no postmeta trigger left, none needed), and a
    sale made after it is still captured once; `syncd status` reports the blogs as needing no
    trigger and exits healthy on that count."""
    import argparse
    import io
    import json

    from syncd.check import build_report, gather
    from syncd.config import config_for
    from syncd.status import EXIT_TRIGGERS
    from syncd.status import main as status_main

    net = binlog_factory.recorded_network()
    cfg = config_for(
        net.url, net.prefix, capture=NO_FULL_POLL, sync={"idle_wait": 0.005, "settle_seconds": 0}
    )
    with net.engine.connect() as c:
        report = build_report(gather(c, cfg), cfg)
    assert report["capture"]["effective"] == "binlog", report["errors"]

    d = make_daemon(net)  # trigger mode first: the postmeta triggers capture
    d.close()
    assert len(_meta_triggers(net)) == 9
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    woo_decrease(net, 2, mug[2], 1)  # captured by blog 2's trigger, still queued
    out = io.StringIO()
    assert capture.install_all(cfg, out=out) == 0
    assert "postmeta now compared by binlog capture" in out.getvalue()
    assert _meta_triggers(net) == []
    woo_decrease(net, 1, mug[1], 2)  # no trigger: the snapshot comparison finds it

    status = io.StringIO()
    code = status_main(cfg, argparse.Namespace(json=True), out=status)
    blogs = json.loads(status.getvalue())["blogs"]
    assert {b["triggers"] for b in blogs if b["usable"]} == {capture.NONE_NEEDED}
    assert not code & EXIT_TRIGGERS

    from syncd.daemon import Daemon

    d = Daemon(cfg, instance="test")
    d.prepare()
    with Running(d):
        want = {b: start[b] - 3 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30), quantities(net, "MUG")
        assert until(lambda: d._wake is not None and d._wake.following.is_set(), 30)
        d.heartbeat()
        text = io.StringIO()
        status_main(cfg, argparse.Namespace(json=False), out=text)
        assert "capture=binlog (following the binary log)" in text.getvalue()
        from syncd.metrics import _DaemonState

        gauges = {f.name: f.samples for f in _DaemonState(d).collect()}
        assert gauges["syncd_binlog_following"][0].value == 1.0
        assert {x.labels["mode"] for x in gauges["syncd_capture_mode"]} == {"binlog"}
    assert d.stats.errors == 0, d.stats.last_error


def test_binlog_mode_without_a_binary_log_is_refused_at_start(wp_network):
    """The session server runs without a binary log: the daemon says why and does not start."""
    from syncd.config import config_for
    from syncd.daemon import EXIT_CONFIG, Daemon

    net = wp_network
    make_daemon(net).close()  # trigger mode installs the postmeta triggers
    d = Daemon(config_for(net.url, net.prefix, capture={"mode": "binlog"}), instance="test")
    assert d.run() == EXIT_CONFIG
    assert d.capture_mode != "binlog"
    with net.engine.connect() as c:  # refused before touching a trigger
        assert len(capture.installed_triggers(c, net.prefix)) == 9


def test_the_dashboard_drops_its_attribution_triggers_under_binlog_capture(wp_network):
    """Attribution matches a change row's connection with the shop's; poll and binlog capture write
    change rows on syncd's own connection, so its triggers could match nothing and would only cost
    every product save (the issue's trigger cost): the dashboard removes them there."""
    from syncd.config import config_for
    from syncd.web.server import prepare

    net = wp_network
    make_daemon(net).close()
    prepare(config_for(net.url, net.prefix)).close()  # trigger capture: attribution installed

    def attribution_triggers() -> list[str]:
        with net.engine.connect() as c:
            names = c.exec_driver_sql(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
            )
            return [n for (n,) in names if n.startswith(f"{net.prefix}syncd_src_")]

    assert attribution_triggers()
    prepare(config_for(net.url, net.prefix, capture={"mode": "binlog"})).close()
    assert attribution_triggers() == []
    woo_decrease(net, 1, members(net, "MUG")[1], 1)  # the shop's writes go on


def test_a_blog_back_with_postmeta_triggers_waits_for_a_restart_and_loses_nothing(binlog_factory):
    """A blog archived across the switch from trigger capture keeps its postmeta triggers. When it
    is back, a discovery beside running batches cannot hand it over exactly, so it is not served:
    its triggers queue its sales (held, never dead-lettered) and no comparison reads it; the next
    start hands it over and its sales count once."""
    from tests.integration.sync_helpers import archived

    net = binlog_factory.recorded_network()
    make_daemon(net).close()  # trigger capture on every blog
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    archived(net, 3, True)
    d = make_daemon(net, capture=NO_FULL_POLL)
    try:
        assert d.capture_mode == "binlog" and _meta_triggers(net) == sorted(
            capture.meta_trigger_names(net.prefix, 3)
        )
        woo_decrease(net, 3, mug[3], 2)  # the trigger queues it; blog 3 is not served
        archived(net, 3, False)
        d.discover()
        assert 3 not in d.blogs() and 3 in d.stats.held
        d.poll()
        assert d.apply_pending() == 0  # held, not read twice by a comparison
        assert d.stats.dead == 0
    finally:
        d.close()
    d = make_daemon(net, capture=NO_FULL_POLL)  # the restart hands blog 3 over
    try:
        assert _meta_triggers(net) == [] and 3 in d.blogs()
        d.poll()
        d.apply_pending()
        assert quantities(net, "MUG") == {b: start[b] - 2 for b in start}
    finally:
        d.close()


def test_a_sale_committed_while_the_snapshot_takes_over_counts_once(wp_network, monkeypatch):
    """The hand-over's snapshot is a locking read: a sale arriving while it is taken waits for it,
    is then captured by the trigger above the returned id (dropped) and found by the next poll.
    Under READ COMMITTED the snapshot would lock nothing: the sale would commit meanwhile, stay
    queued below the id and be found again by the poll (counted twice). The sale gets a second to
    commit while the snapshot is open; with the locks it cannot, and the count is right either way."""
    import threading

    from syncd import poll
    from tests.integration.sync_helpers import ids, qty

    net = wp_network
    d = make_daemon(net)  # trigger capture everywhere
    mug = ids(net, "MUG")
    start = {b: qty(net, b, mug[b]) for b in mug}
    blog1 = d.blogs()[1]
    done = threading.Event()
    take = poll._take

    def take_then_sell(conn, base, blog, keys):
        take(conn, base, blog, keys)
        threading.Thread(target=lambda: (woo_decrease(net, 1, mug[1], 1), done.set()), daemon=True).start()
        done.wait(1.0)  # blocked by the snapshot's locks: it commits after the hand-over's commit

    monkeypatch.setattr(poll, "_take", take_then_sell)
    try:
        with net.engine.connect() as c:
            poll.take_over_from_triggers(c, net.prefix, blog1, d.watch_for(1).meta_keys)
        assert done.wait(30)
        monkeypatch.setattr(poll, "_take", take)
        d.capture_mode = "binlog"  # blog 1 is compared now; 2 and 3 still have their triggers
        with net.engine.connect() as c:
            poll.poll_blog(c, net.prefix, blog1, d.watch_for(1).meta_keys)
            c.commit()
        d.apply_pending()
        assert {b: qty(net, b, mug[b]) for b in mug} == {b: start[b] - 1 for b in mug}
    finally:
        d.close()


def test_a_comparison_that_loses_a_deadlock_to_the_shop_is_tried_again(binlog_factory, monkeypatch):
    """The comparison reads the named products with locks, so it can deadlock with a shop write;
    the shop wins, and the products are compared again at the next look (not left for the full
    comparison ten minutes later), without counting as an error."""
    import pymysql

    from syncd import poll

    net = binlog_factory.recorded_network()
    d = make_daemon(net, capture=NO_FULL_POLL)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    real, lost = poll.poll_posts, []

    def deadlock_once(*args, **kw):
        if not lost:
            lost.append(1)
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return real(*args, **kw)

    monkeypatch.setattr(poll, "poll_posts", deadlock_once)
    with Running(d):
        assert until(lambda: d._wake is not None and d._wake.following.is_set(), 30), "not following"
        woo_decrease(net, 2, mug[2], 1)
        want = {b: start[b] - 1 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30), quantities(net, "MUG")
    assert lost and d.stats.errors == 0, d.stats.last_error
