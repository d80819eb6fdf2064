"""Binlog capture in tests: a follower the test drives step by step.

:class:`Follower` is the daemon's own :class:`syncd.wake.BinlogWake` (it names the products the
daemon compares), plus a *barrier*: a row written into a test table after the writes of a step;
the log is read in order, so once the follower has named the barrier row it has read every write
committed before it. A step then calls ``d.poll_named()`` knowing what the log named: no
sleep, no race.
"""

from __future__ import annotations

import itertools
from typing import Any

from syncd import wake
from tests.integration.test_wake import until

#: The barrier table: postmeta's first three columns (the follower reads post id and key by position).
BARRIER_TABLE = "syncd_test_barrier"
BARRIER_BLOG = 0  # no blog has id 0: the daemon never compares what the barrier names
_KEY = "barrier"


class Follower:
    """The daemon's binary-log follower, started by the test and given to ``d`` (``d._wake``)."""

    def __init__(self, net: Any, d: Any) -> None:
        self.net, self.d = net, d
        self._n = itertools.count(1)
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {BARRIER_TABLE} (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, "
                "post_id BIGINT UNSIGNED NOT NULL, meta_key VARCHAR(255) NOT NULL)"
            )
            c.commit()
        self.wake = wake.BinlogWake(
            net.url,
            net.prefix,
            mariadb=net.server.flavor == "mariadb",
            meta_tables=lambda: {**d.meta_tables(), BARRIER_TABLE: (BARRIER_BLOG, frozenset({_KEY}))},
        )
        d._wake = self.wake
        self.wake.start()
        assert until(self.wake.resynced.is_set, 30), "the follower is not following"
        self.wake.resynced.clear()  # the test takes the full comparisons itself (d.poll())

    def caught_up(self) -> None:
        """Until the follower has read everything committed so far (it named the barrier row)."""
        token = next(self._n)
        with self.net.engine.connect() as c:
            c.exec_driver_sql(f"INSERT INTO {BARRIER_TABLE} (post_id, meta_key) VALUES ({token}, '{_KEY}')")
            c.commit()
        assert until(lambda: token in self.named().get(BARRIER_BLOG, set()), 30), "barrier not read"

    def named(self) -> dict[int, set[int]]:
        """What the follower has named and the daemon not taken yet (not consumed)."""
        with self.wake._touched_lock:
            return {b: set(p) for b, p in self.wake._touched.items()}

    def step(self) -> int:
        """The daemon's capture step after the writes so far: compare what the log named."""
        self.caught_up()
        return self.d.poll_named()

    def close(self) -> None:
        self.wake.close()
        self.d._wake = None
