"""Binlog capture (``capture.mode = "binlog"``, issue 10's trigger cost): no postmeta trigger; the
binary log names the products whose watched postmeta rows a transaction wrote, and the daemon
compares exactly those with the poll snapshot (syncd.poll.poll_posts, syncd.wake).

Each test runs its own private server with a ROW binary log (tests.integration.test_wake).
"""

from __future__ import annotations

import time

import pytest

from syncd import capture, wake
from tests.integration.daemon_process import members, quantities
from tests.integration.sync_helpers import make_daemon, woo_decrease
from tests.integration.test_wake import BinlogServer, Running, binlog_factory, until  # noqa: F401

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
