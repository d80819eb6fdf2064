"""Poll mode in tests: how far the snapshot is behind the shops, and waiting for quiescence."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from syncd.plan import WATCHED_KEYS
from tests.integration.daemon_process import pending

_KEYS = ", ".join(f"'{k}'" for k in WATCHED_KEYS)


def snapshot_lag(net: Any) -> int:
    """Watched meta rows whose snapshot row is missing, different or left over (not yet polled)."""
    snap = f"{net.prefix}syncd_snapshot"
    n = 0
    with net.engine.connect() as c:
        for b in net.blog_ids:
            pm = net.table(b, "postmeta")
            n += int(
                c.exec_driver_sql(
                    f"SELECT COUNT(*) FROM {pm} pm LEFT JOIN {snap} s ON s.blog_id = {int(b)} "
                    f"AND s.meta_id = pm.meta_id WHERE pm.meta_key IN ({_KEYS}) AND (s.meta_id IS NULL "
                    "OR s.post_id <> pm.post_id OR NOT (BINARY s.value <=> BINARY pm.meta_value))"
                ).scalar_one()
            )
            n += int(
                c.exec_driver_sql(
                    f"SELECT COUNT(*) FROM {snap} s LEFT JOIN {pm} pm ON pm.meta_id = s.meta_id "
                    f"AND pm.meta_key IN ({_KEYS}) WHERE s.blog_id = {int(b)} AND pm.meta_id IS NULL"
                ).scalar_one()
            )
    return n


def queued_work(net: Any, capture: str) -> int:
    """Change rows pending, plus (poll mode) shop writes not polled yet.

    The lag is read first: a poll that commits between the two reads moves differences from the
    lag into pending rows, so reading pending first could see neither (0 + 0, not quiet). Read in
    this order, a lag of 0 means every write was captured by a committed transaction before the
    pending read (an uncommitted poll or apply keeps the committed snapshot behind)."""
    lag = snapshot_lag(net) if capture == "poll" else 0
    return lag + pending(net)


def wait_quiet(
    net: Any, capture: str, timeout: float = 60.0, alive: Callable[[], bool] | None = None
) -> None:
    """Until nothing is queued; in poll mode also until the snapshot equals postmeta, which after
    quiescence it must (everything polled, syncd's own writes advanced, nothing echoed)."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = queued_work(net, capture)
        if n == 0:
            return
        if alive is not None and not alive():
            raise AssertionError(f"the daemon died with {n} changes queued or unpolled")
        time.sleep(0.05)
    raise AssertionError(f"{n} changes still queued or unpolled after {timeout}s")
