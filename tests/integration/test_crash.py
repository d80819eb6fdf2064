"""Crash: the real daemon process (`syncd run`) is killed with SIGKILL at random moments - during
start-up right after it took the leader lock, in the middle of a busy backlog (inside apply
transactions), anywhere - over and over while writers keep selling and restocking on every blog.
Usually a hot standby is waiting and takes over; every fifth time a new process starts cold.

Apply and acknowledge are one transaction, so at the end nothing is lost and nothing is applied
twice: every member holds exactly start + the sum of all deltas, the change table is empty, and
history has each origin change exactly once and one copy per other member.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.integration.daemon_process import (
    STOCK_SKUS,
    DaemonProcess,
    Storm,
    assert_converged,
    assert_history_once,
    pending,
    snapshot,
    write_config,
)
from tests.integration.poll_helpers import queued_work, wait_quiet
from tests.integration.sync_helpers import deadlocks

KILLS = 20
WRITES_PER_KILL = 15


def _leader(procs: list[DaemonProcess], timeout: float = 30.0) -> DaemonProcess:
    """The process that holds the leader lock (it logged leader_acquired), waiting for one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.alive() and p.named("leader_acquired"):
                return p
        time.sleep(0.01)
    tails = "\n\n".join(p.log_tail(15) for p in procs)
    raise AssertionError(f"no leader within {timeout}s\n{tails}")


@pytest.mark.slow
@pytest.mark.parametrize("capture", ["trigger", "poll"])
def test_kill_9_during_a_write_storm_loses_nothing_and_applies_nothing_twice(wp_network, tmp_path, capture):
    """``capture="poll"``: the same, captured by polling (issue 9 path 6: as exact as triggers;
    a kill also lands inside poll transactions, and a standby's first polls follow a dead one's)."""
    net = wp_network
    skus = STOCK_SKUS[:6]
    # Small batches: a backlog is many short transactions, so a kill lands inside one.
    polling = {"mode": capture, "poll_interval": 0.05}
    cfg = write_config(tmp_path, net, sync={"batch_size": 8, "idle_wait": 0.005}, capture=polling)
    rng = random.Random(20261123)
    spawned = 0
    procs: list[DaemonProcess] = []

    def spawn() -> DaemonProcess:
        nonlocal spawned
        spawned += 1
        p = DaemonProcess(cfg, name=f"syncd-{spawned}").start()
        procs.append(p)
        return p

    # The first start installs the triggers; only then are writes captured.
    spawn().wait_for("daemon_ready", timeout=30)
    start = snapshot(net, skus)
    deadlocks_before = deadlocks(net)
    # About 25 writes a second for the whole kill loop (what the daemon, often dead, keeps up with).
    storm = Storm(net, skus, writers=3, pause=0.1, seed=7).start()
    moments: list[str] = []
    try:
        for i in range(KILLS):
            leader = _leader(procs)
            if i % 5 == 4:
                # Cold restart: no standby is waiting; the next process starts from nothing.
                for p in [p for p in procs if p is not leader]:
                    p.kill()
                    procs.remove(p)
            else:
                while len(procs) < 3:
                    spawn()  # hot standbys wait on the lock (two, so one is always warm)
            # Every kill lands on shops that kept selling since the previous one (at least
            # WRITES_PER_KILL writes each time). Left to the storm's rate, a slow run could end
            # the loop with fewer writes than this test promises (seen once: 297 of 300).
            deadline = time.monotonic() + 60
            while storm.ledger.total_writes < WRITES_PER_KILL * (i + 1):
                assert not storm.errors, storm.errors
                assert time.monotonic() < deadline, f"the storm stalled at {storm.ledger.total_writes} writes"
                time.sleep(0.01)
            kind = ("startup", "batch", "any")[i % 3]
            if kind == "startup":
                # Right after taking the lock: schema check, discovery, trigger check, scheduler.
                time.sleep(rng.uniform(0.0, 0.3))
            elif kind == "batch":
                # Inside the steady state: right after some batch committed, the next one is open.
                leader.wait_for("daemon_ready", timeout=30)
                leader.wait_for("batch_applied", timeout=30, after=leader.mark())
                time.sleep(rng.uniform(0.0, 0.2))
            else:
                time.sleep(rng.uniform(0.0, 0.6))
            assert not storm.errors, storm.errors
            ready = bool(leader.named("daemon_ready"))
            moments.append(f"{kind}{'' if ready else '(starting)'}:{queued_work(net, capture)}")
            assert leader.kill() == -9
            assert leader.named("daemon_stopped") == [], "a SIGKILLed process cannot have shut down cleanly"
            procs.remove(leader)
            if not procs:
                spawn()
    finally:
        ledger = storm.stop()
        for p in procs:
            p.kill()
    assert len(moments) == KILLS
    # Enough kills landed while work was queued (inside or between apply transactions).
    assert sum(1 for m in moments if not m.endswith(":0")) >= KILLS // 2, moments
    assert ledger.total_writes >= KILLS * WRITES_PER_KILL >= 300, ledger.total_writes
    # No lock cycle between syncd and the shops at all: whichever side InnoDB rolls back, one
    # that picked the shop would be a lost sale.
    assert deadlocks(net) == deadlocks_before

    drain = write_config(tmp_path, net, name="drain.toml", sync={"batch_size": 500}, capture=polling)
    final = DaemonProcess(drain, name="final").start()
    try:
        wait_quiet(net, capture, timeout=90, alive=final.alive)
        final.terminate()
        assert final.wait(30) == 0
    finally:
        final.stop()
    assert pending(net) == 0
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start, per_write=capture == "trigger")
