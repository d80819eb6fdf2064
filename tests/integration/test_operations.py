"""Operations (issue 6): the daemon as systemd runs it, on the real server.

* sd_notify: READY=1 only after the start-up checks, STATUS with backlog and lag, WATCHDOG=1 from
  the main loop (and not while it is stuck), READY for a hot standby, STOPPING=1 on SIGTERM;
* journald: the daemon's native journal entries, parsed from a socket the test binds;
* least privilege: the daemon runs as a user with exactly the README's grants (password from a
  systemd credential), and a user without TRIGGER gets poll mode with a warning;
* SIGHUP reloads the configuration without dropping the leader lock;
* exit status for Restart=on-failure: 78 for what a restart cannot fix;
* `syncd status`: uptime, restarts seen, the database connection.

Faults of the database (deadlock, lock wait timeout, read-only) are in test_db_faults.py; server
restarts, KILL of the apply connection, standby takeover and SIGTERM mid-batch in test_faults.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from syncd import journal
from tests.integration.daemon_process import members, quantities, wait_drained, write_config
from tests.integration.ops_helpers import (
    DatagramListener,
    OpsDaemon,
    parse_journal,
    parse_notify,
    root_exec,
)
from tests.integration.sync_helpers import woo_decrease


def trigger_count(net: Any) -> int:
    from syncd.capture import installed_triggers

    with net.engine.connect() as c:
        return len(installed_triggers(c, net.prefix))


# --------------------------------------------------------------------------- sd_notify
def test_sd_notify_ready_status_watchdog_stopping_and_standby(wp_network, tmp_path: Path) -> None:
    net = wp_network
    cfg = write_config(tmp_path, net)
    leader_sock = DatagramListener(tmp_path / "notify-a.sock", parse_notify)
    standby_sock = DatagramListener(tmp_path / "notify-b.sock", parse_notify)
    watchdog = {"WATCHDOG_USEC": "400000"}  # WatchdogSec=0.4s: a ping every 0.2 s
    a = OpsDaemon(cfg, name="leader", env={"NOTIFY_SOCKET": leader_sock.path, **watchdog})
    # The standby's loop waits up to 1 s in GET_LOCK between pings: WatchdogSec must be >= 2 s
    # there (the unit has 60 s).
    b = OpsDaemon(cfg, name="standby", env={"NOTIFY_SOCKET": standby_sock.path, "WATCHDOG_USEC": "2000000"})
    assert trigger_count(net) == 0
    try:
        a.start()
        ready = leader_sock.wait_for(lambda m: m.get("READY") == "1", timeout=30)
        # READY=1 comes after the start-up checks: leader, own tables, triggers on every blog.
        assert trigger_count(net) == 3 * len(net.blog_ids)
        assert a.named("leader_acquired"), a.log_tail()
        assert "leader" in ready.get("STATUS", "")

        # Watchdog pings from the main loop, each with the current STATUS (backlog and lag).
        mark = leader_sock.mark()
        tshirt = members(net, "TSHIRT-RED")
        woo_decrease(net, 1, tshirt[1], 2)
        wait_drained(net, timeout=20)
        status = leader_sock.wait_for(
            lambda m: m.get("WATCHDOG") == "1" and re.search(r"lag [0-9.]+ ms", m.get("STATUS", "")),
            timeout=10,
            after=mark,
        )["STATUS"]
        assert re.match(r"leader: backlog \d+.*, lag [0-9.]+ ms, 1 changes applied", status), status
        time.sleep(1.0)
        pings = [m for m in leader_sock.snapshot()[mark:] if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 4, pings

        # A stuck main loop stops pinging (systemd would kill and restart it): hold a write lock
        # on the change table so the loop's next read blocks.
        blocker = net.engine.connect()
        try:
            blocker.exec_driver_sql(f"LOCK TABLES {net.prefix}syncd_change WRITE")
            time.sleep(0.5)  # the loop is now blocked in its read
            quiet_from = leader_sock.mark()
            time.sleep(1.2)  # three watchdog periods
            assert [m for m in leader_sock.snapshot()[quiet_from:] if m.get("WATCHDOG")] == []
        finally:
            blocker.exec_driver_sql("UNLOCK TABLES")
            blocker.close()
        resumed = leader_sock.mark()
        leader_sock.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5, after=resumed)

        # A hot standby is READY (or Type=notify would time it out) and keeps the watchdog fed.
        b.start()
        standby_ready = standby_sock.wait_for(lambda m: m.get("READY") == "1", timeout=30)
        assert standby_ready["STATUS"].startswith("standby"), standby_ready
        before = standby_sock.mark()
        time.sleep(2.3)
        assert sum(1 for m in standby_sock.snapshot()[before:] if m.get("WATCHDOG")) >= 2

        # SIGTERM: STOPPING=1 at once, then a clean exit 0; the standby takes over and says so.
        a.terminate()
        leader_sock.wait_for(lambda m: m.get("STOPPING") == "1", timeout=10)
        assert a.wait(30) == 0
        standby_sock.wait_for(lambda m: m.get("STATUS", "").startswith("leader"), timeout=15)
        b.terminate()
        assert b.wait(30) == 0
        standby_sock.wait_for(lambda m: m.get("STOPPING") == "1", timeout=5)
    finally:
        a.stop()
        b.stop()
        leader_sock.close()
        standby_sock.close()
    assert set(quantities(net, "TSHIRT-RED", tshirt).values()) == {8}


# --------------------------------------------------------------------------- journald
def test_journal_fields_of_the_running_daemon_and_fallback_to_stderr(wp_network, tmp_path: Path) -> None:
    net = wp_network
    # log.format = "journal" from the file (no --log-format on the command line, as in the unit).
    cfg = write_config(tmp_path, net, log={"format": "journal"})
    sock = DatagramListener(tmp_path / "journal.sock", parse_journal)
    d = OpsDaemon(cfg, log_format=None, env={journal.ENV_SOCKET: sock.path})
    mug = members(net, "MUG")
    poster = members(net, "POSTER")
    (mug_start,) = set(quantities(net, "MUG", mug).values())
    try:
        d.start()
        sock.wait_for(lambda e: e["SYNCD_EVENT"] == ["daemon_ready"], timeout=30)
        woo_decrease(net, 3, mug[3], 1)
        synced = sock.wait_for(lambda e: e["SYNCD_EVENT"] == ["change_synced"], timeout=20)
        # What `journalctl -u syncd SYNCD_SKU=MUG SYNCD_BLOG=3` matches: the change made on blog 3.
        assert synced["SYNCD_SKU"] == ["MUG"] and synced["SYNCD_BLOG"] == ["3"]
        assert synced["SYNCD_TO_BLOGS"] == ["1", "2"] and synced["SYNCD_DELTA"] == ["-1"]
        assert synced["SYNCD_KEY"] == ["_stock"] and synced["SYNCD_POST"] == [str(mug[3])]
        assert synced["PRIORITY"] == ["6"] and synced["SYSLOG_IDENTIFIER"] == ["syncd"]
        assert synced["MESSAGE"][0].startswith("change_synced ") and "sku=MUG" in synced["MESSAGE"][0]
        applied = sock.wait_for(lambda e: e["SYNCD_EVENT"] == ["batch_applied"], timeout=10)
        assert applied["SYNCD_BATCH"] == synced["SYNCD_BATCH"], "SYNCD_BATCH=N finds all lines of a batch"
        assert applied["SYNCD_CHANGES"] == ["1"] and float(applied["SYNCD_LAG_MS"][0]) >= 0

        # A warning (`journalctl -p warning`): blog 2's POSTER holds a quantity WooCommerce would
        # never write, so a sale on blog 1 is applied to blog 3 and blog 2 is skipped, loudly.
        root_exec(
            net,
            f"UPDATE {net.table(2, 'postmeta')} SET meta_value = 'lots' "
            f"WHERE post_id = {poster[2]} AND meta_key = '_stock'",
        )
        woo_decrease(net, 1, poster[1], 1)
        warning = sock.wait_for(
            lambda e: int(e["PRIORITY"][0]) <= 4 and e.get("SYNCD_SKU") == ["POSTER"], timeout=20
        )
        assert warning["PRIORITY"] == ["4"] and warning["SYNCD_EVENT"][0].endswith("skipped")
        assert d.events == [], "native entries only: nothing duplicated on stderr"

        # journald goes away: the daemon keeps running and logs JSON lines on stderr instead.
        sock.close()
        Path(sock.path).unlink()
        woo_decrease(net, 1, mug[1], 1)
        d.wait_for("journal_unavailable", timeout=20)
        d.wait_for("change_synced", timeout=20, where=lambda e: e.get("sku") == "MUG")
        d.terminate()
        assert d.wait(30) == 0
        assert d.named("daemon_stopped")
    finally:
        d.stop()
        sock.close()
    assert set(quantities(net, "MUG", mug).values()) == {mug_start - 2}
