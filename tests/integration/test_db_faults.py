"""Database faults the daemon must ride out (issue 6), on the real server, each ending with an
exact final state: every member at start + the sum of all captured deltas, the change table empty,
history recording each change once as origin and once per other member.

* a deadlock between syncd's apply transaction and a shop transaction: InnoDB rolls syncd's
  batch back, syncd retries it, and the shop's transaction commits;
* the server read-only for a while (``SET GLOBAL read_only = 1``): syncd, as a user with the
  README's grants (no SUPER / READ ONLY ADMIN, so read_only applies to it), keeps the batch,
  retries with capped backoff, reports the state, and applies once the server is writable.

Lock-wait timeouts, server restarts, KILL of the apply connection, standby takeover and SIGTERM
are in test_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd.config import config_for
from syncd.daemon import Daemon
from tests.integration.daemon_process import (
    Ledger,
    assert_converged,
    assert_history_once,
    members,
    pending,
    quantities,
    refresh_fn,
    relative_write,
    running,
    snapshot,
    wait_drained,
    wpdb_engine,
)
from tests.integration.ops_helpers import Users, lock_waits, root_exec, user_url, wait_until
from tests.integration.sync_helpers import woo_decrease


# --------------------------------------------------------------------------- deadlock
def test_deadlock_with_a_shop_transaction_is_retried_and_the_shop_commits(wp_network) -> None:
    """A multi-blog shop transaction (an order on blog 3 that also adjusts blog 1, like a network
    stock plugin) takes blog 3's row, then blog 1's; syncd's batch takes blog 1's (lock order:
    blog, post), then waits for blog 3's: a cycle. The shop transaction has written its order
    lines first, so InnoDB rolls back the smaller one, syncd's batch, which syncd retries."""
    net = wp_network
    sku = "TSHIRT-RED"
    ids = members(net, sku)
    start = snapshot(net, (sku,))
    ledger = Ledger()
    # A long lock wait for syncd, so that the cycle forms before syncd's own timeout would fire.
    cfg = config_for(net.url, net.prefix, sync={"idle_wait": 0.005}, database={"lock_wait_timeout": 20})
    d = Daemon(cfg, instance="deadlock", refresh=refresh_fn())
    shop = wpdb_engine(net.url, 1)
    itemmeta = net.table(3, "woocommerce_order_itemmeta")
    with capture_logs() as logs, running(d) as thread, shop.connect() as t:
        t.exec_driver_sql("START TRANSACTION")
        # The order's lines: this is what makes the shop's transaction the larger one.
        values = ", ".join(f"({9000 + i}, '_qty', '1')" for i in range(300))
        t.exec_driver_sql(f"INSERT INTO {itemmeta} (order_item_id, meta_key, meta_value) VALUES {values}")
        t.exec_driver_sql(
            f"UPDATE {net.table(3, 'postmeta')} SET meta_value = meta_value -1.000000 "
            f"WHERE post_id = {ids[3]} AND meta_key = '_stock'"
        )
        ledger.add(sku, -1)
        # Meanwhile a sale on blog 2: syncd locks blog 1's row, then waits for blog 3's.
        woo_decrease(net, 2, ids[2], 2)
        ledger.add(sku, -2)
        wait_until(lambda: lock_waits(net) == 1, 10, "syncd's batch to wait for blog 3's row", poll=0.15)
        # The shop now wants blog 1's row, which syncd holds: deadlock. InnoDB picks syncd.
        t.exec_driver_sql(
            f"UPDATE {net.table(1, 'postmeta')} SET meta_value = meta_value -1.000000 "
            f"WHERE post_id = {ids[1]} AND meta_key = '_stock'"
        )
        ledger.add(sku, -1)
        t.exec_driver_sql("COMMIT")  # the shop never notices
        wait_drained(net, timeout=30, alive=thread.is_alive)
    shop.dispose()
    retries = [e for e in logs if e["event"] == "batch_retry"]
    assert retries and retries[0]["errno"] == 1213 and retries[0]["reason"] == "deadlock", retries
    assert retries[0]["retry_in"] <= 5.0
    applied = [e for e in logs if e["event"] == "batch_applied"]
    assert any(e["attempts"] >= 2 for e in applied), applied
    assert d.stats.dead == 0 and d.stats.retries >= 1
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)


# --------------------------------------------------------------------------- read-only
@pytest.fixture
def users(mysql_server: Any) -> Iterator[Users]:
    u = Users(mysql_server.root_url())
    try:
        yield u
    finally:
        u.close()


def test_read_only_server_is_waited_out_then_applied(wp_network, users) -> None:
    """Changes are queued when the server turns read-only (a maintenance window, a failover in
    progress). syncd cannot write (the shop cannot either: its triggers run as syncd's user), so it
    keeps the batch, retries with capped backoff, says why, and applies it once writable."""
    net = wp_network
    skus = ("TSHIRT-RED", "MUG")
    user, password = users.create(net.database)
    cfg = config_for(user_url(net, user, password), net.prefix, sync={"idle_wait": 0.005})
    d = Daemon(cfg, instance="read-only", refresh=refresh_fn())
    tshirt, mug = members(net, "TSHIRT-RED"), members(net, "MUG")
    start = snapshot(net, skus)
    ledger = Ledger()
    shop = wpdb_engine(net.url, 1)
    with capture_logs() as logs, running(d) as thread:
        woo_decrease(net, 1, tshirt[1], 1)
        ledger.add("TSHIRT-RED", -1)
        wait_drained(net, timeout=20, alive=thread.is_alive)
        try:
            # Hold syncd off for a moment (a checkout's SELECT ... FOR UPDATE on blog 3's row), so
            # that the next changes are still queued when the server turns read-only.
            with shop.connect() as holder:
                holder.exec_driver_sql("START TRANSACTION")
                holder.exec_driver_sql(
                    f"SELECT meta_value FROM {net.table(3, 'postmeta')} WHERE post_id = {tshirt[3]} "
                    "AND meta_key = '_stock' FOR UPDATE"
                )
                # Written like the shop writes (wpdb: the server's 50 s lock wait, not syncd's 1 s
                # session): syncd's retried batch may hold blog 2's rows for a moment meanwhile.
                with shop.connect() as writer:
                    relative_write(writer, net, 2, tshirt[2], -2)
                    relative_write(writer, net, 2, mug[2], -1)
                ledger.add("TSHIRT-RED", -2)
                ledger.add("MUG", -1)
                wait_until(lambda: d.stats.retries >= 1, 15, "a lock-wait retry")
                root_exec(net, "SET GLOBAL read_only = 1")
                holder.exec_driver_sql("COMMIT")
            wait_until(lambda: "read-only" in d.stats.connection, 15, "syncd to see the read-only server")
            ro_retries = d.stats.retries
            wait_until(lambda: d.stats.retries >= ro_retries + 2, 15, "more read-only retries")
            assert thread.is_alive()
            assert pending(net) == 2, "the batch is kept: not dropped, not dead-lettered"
            assert quantities(net, "TSHIRT-RED", tshirt)[3] == start["TSHIRT-RED"][3] - 1
        finally:
            root_exec(net, "SET GLOBAL read_only = 0")
        wait_drained(net, timeout=30, alive=thread.is_alive)
    shop.dispose()
    retries = [e for e in logs if e["event"] == "batch_retry"]
    read_only_retries = [e for e in retries if e["reason"] == "server read-only"]
    assert len(read_only_retries) >= 2 and {e["errno"] for e in read_only_retries} <= {1290, 1792}, retries
    assert {e["reason"] for e in retries} <= {"server read-only", "lock wait timeout"}, retries
    delays = [e["retry_in"] for e in retries]
    assert delays == sorted(delays) and max(delays) <= 5.0, delays  # capped exponential backoff
    assert any(e["event"] == "batch_applied" and e["attempts"] > len(read_only_retries) for e in logs)
    assert d.stats.dead == 0 and d.stats.connection == "connected"
    assert_converged(net, start, ledger)
    assert_history_once(net, ledger, start)
