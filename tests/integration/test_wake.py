"""The idle loop's wake-up (issue 12): where the binary log is on (ROW format) the daemon follows
it and an idle daemon sends no query until a change row commits (syncd.wake); elsewhere it probes
with one autocommit round trip per idle_wait (syncd.probe).

The binary-log tests run their own private server started with ``--log-bin`` (the session
server runs without one, as most tests want).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from syncd import wake
from syncd.daemon import EXIT_OK
from syncd.testnet.harness import NetworkFactory
from syncd.testnet.server import PrivateServer
from tests.integration.daemon_process import members, quantities
from tests.integration.sync_helpers import make_daemon, woo_decrease


class BinlogServer(PrivateServer):
    """A private server that writes a binary log in ROW format, as a primary with replicas does."""

    def _command(self) -> list[str]:
        return [*super()._command(), "--log-bin=binlog", "--binlog-format=ROW", "--server-id=1"]


@contextmanager
def binlog_server(mysql_server: Any) -> Iterator[NetworkFactory]:
    """A private server writing a ROW binary log, and a factory of networks on it (skipped where
    the session's server is not a private binary)."""
    if not getattr(mysql_server, "private", False):
        pytest.skip("needs a private server binary to start one with a binary log")
    server = BinlogServer().start()
    factory = NetworkFactory(server)
    try:
        yield factory
    finally:
        factory.close()
        server.stop()


@pytest.fixture
def binlog_factory(mysql_server: Any) -> Iterator[NetworkFactory]:
    with binlog_server(mysql_server) as factory:
        yield factory


def until(check: Any, timeout: float, alive: Any = lambda: True) -> bool:
    """Poll ``check`` (a condition, not a race: the test waits for a state, however long it takes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if check():
            return True
        time.sleep(0.01)
    return bool(check())


class Running:
    """The daemon's real loop in a thread, counting its idle probes."""

    def __init__(self, d: Any) -> None:
        self.d, self.probes, self.exit = d, 0, []
        probe = d._work_waiting

        def counted(settle_time: bool) -> bool:
            self.probes += 1
            return probe(settle_time)

        d._work_waiting = counted
        self.thread = threading.Thread(target=lambda: self.exit.append(d.run()), name="daemon")

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.d.ready.wait(60), "daemon not ready"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.d.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the daemon did not stop"
        assert self.exit == [EXIT_OK]


def test_the_binary_log_wakes_an_idle_daemon(binlog_factory, monkeypatch):
    # Only the binary log can wake the loop now: its fallback probe would come after 10 minutes.
    monkeypatch.setattr(wake, "FALLBACK_S", 600.0)
    net = binlog_factory.recorded_network()
    d = make_daemon(net)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    with Running(d) as run:
        assert until(lambda: d._wake is not None and d._wake.following.is_set(), 30), "not following"
        assert until(lambda: not d._wake.event.is_set(), 10)  # waiting for the log
        probes = run.probes
        time.sleep(0.3)  # a window in which an idle_wait poll would have probed ~60 times
        assert run.probes - probes <= 1
        for n in (1, 2):
            woo_decrease(net, 1, mug[1], 1)
            want = {b: start[b] - n for b in start}
            assert until(lambda want=want: quantities(net, "MUG") == want, 30, run.thread.is_alive)
    assert d.stats.errors == 0, d.stats.last_error


def test_the_follower_starts_at_the_end_of_the_log(binlog_factory):
    """Change-table writes from before the follower started are not read again (the library would
    start MariaDB's dump at the beginning of the oldest log): only the marker's two commits wake it."""
    net = binlog_factory.recorded_network()
    d = make_daemon(net)
    try:
        woo_decrease(net, 1, members(net, "MUG")[1], 1)
        assert d.apply_pending() == 1  # the trigger's insert and the apply's delete are in the log
    finally:
        d.close()
    follower = wake.BinlogWake(net.url, net.prefix, mariadb=binlog_factory.server.flavor == "mariadb")
    follower.start()
    try:
        assert until(follower.following.is_set, 30), "not following"
        change = f"{net.prefix}syncd_change"
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"INSERT INTO {change} (blog_id, post_id, meta_key, op, captured_at) "
                "VALUES (1, 1, '_marker', 'U', UTC_TIMESTAMP(6))"
            )
            c.commit()
            c.exec_driver_sql(f"DELETE FROM {change} WHERE meta_key = '_marker'")
            c.commit()
        assert until(lambda: follower.wakes >= 2, 30)
        assert follower.wakes == 2
    finally:
        follower.close()


def test_without_a_binary_log_the_idle_loop_probes(wp_network):
    """The session server has no binary log: the loop probes every idle_wait, one round trip,
    and a change is applied as before."""
    net = wp_network
    d = make_daemon(net)
    mug = members(net, "MUG")
    start = quantities(net, "MUG")
    with Running(d) as run:
        assert until(lambda: run.probes >= 5, 30, run.thread.is_alive)
        assert d._wake is None
        woo_decrease(net, 2, mug[2], 1)
        want = {b: start[b] - 1 for b in start}
        assert until(lambda: quantities(net, "MUG") == want, 30, run.thread.is_alive)
    assert d.stats.errors == 0, d.stats.last_error
