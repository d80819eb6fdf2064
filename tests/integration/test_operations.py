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

import argparse
import io
import json
import re
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from syncd import cli, journal
from syncd.check import run_check
from syncd.config import load_config
from syncd.daemon import EXIT_CONFIG
from syncd.status import main as status_main
from syncd.status import render
from tests.integration.daemon_process import REPO, members, quantities, wait_drained, write_config
from tests.integration.ops_helpers import (
    README_PRIVILEGES,
    DatagramListener,
    OpsDaemon,
    Users,
    credentials_dir,
    parse_journal,
    parse_notify,
    root_exec,
    user_url,
    wait_until,
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
        b.start()  # the hot standby starts up while the leader is exercised below

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
        time.sleep(0.7)
        pings = [m for m in leader_sock.snapshot()[mark:] if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, pings

        # A stuck main loop stops pinging (systemd would kill and restart it): hold a write lock
        # on the change table so the loop's next read blocks.
        blocker = net.engine.connect()
        try:
            blocker.exec_driver_sql(f"LOCK TABLES {net.prefix}syncd_change WRITE")
            time.sleep(0.3)  # the loop is now blocked in its read
            quiet_from = leader_sock.mark()
            time.sleep(0.9)  # more than two watchdog timeouts
            assert [m for m in leader_sock.snapshot()[quiet_from:] if m.get("WATCHDOG")] == []
        finally:
            blocker.exec_driver_sql("UNLOCK TABLES")
            blocker.close()
        resumed = leader_sock.mark()
        leader_sock.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=5, after=resumed)

        # A hot standby is READY (or Type=notify would time it out) and keeps the watchdog fed.
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


# --------------------------------------------------------------------------- least privilege
@pytest.fixture
def users(mysql_server: Any):
    u = Users(mysql_server.root_url())
    try:
        yield u
    finally:
        u.close()


def make_outdated(net: Any, blog: int) -> None:
    """Replace blog's update trigger with an older release's body (as root), so the next start upgrades it."""
    from syncd import capture

    name = capture.trigger_name(net.prefix, blog, "update")
    root_exec(
        net,
        f"DROP TRIGGER `{name}`",
        f"CREATE TRIGGER `{name}` AFTER UPDATE ON `{net.blog_prefix(blog)}postmeta` FOR EACH ROW BEGIN "
        f"IF NEW.meta_key = '_stock' AND NOT (OLD.meta_value <=> NEW.meta_value) THEN "
        f"INSERT INTO `{net.prefix}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at) "
        f"VALUES ({blog}, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6)); END IF; END",
    )


def test_readme_shows_the_grants_the_tests_use() -> None:
    readme = (REPO / "README.md").read_text()
    statement = f"GRANT {README_PRIVILEGES} ON `wordpress`.* TO 'syncd'@'localhost';"
    assert readme.count(statement) >= 2, "Requirements and Least privilege must show the tested GRANT"


def test_daemon_runs_as_a_user_with_exactly_the_readme_grants(wp_network, users, tmp_path: Path) -> None:
    """The README's GRANT, nothing more; the password comes as a systemd credential (not in the
    file, not on the command line). check passes, the daemon installs its tables and triggers,
    upgrades an outdated trigger after a crash, propagates sales, and `syncd status` shows the
    restart and sees its connections."""
    net = wp_network
    user, password = users.create(net.database)
    creds = credentials_dir(tmp_path, password)
    cfg = write_config(tmp_path, net, database={"url": user_url(net, user)})
    assert password not in cfg.read_text()

    out = io.StringIO()
    code = run_check(load_config(cfg, env=creds), json_output=True, out=out)
    report = json.loads(out.getvalue())
    assert code == 0, report
    assert report["database"]["user"].startswith(user + "@")
    assert all(report["privileges"][p] for p in README_PRIVILEGES.split(", ")), report["privileges"]
    assert report["privileges"]["SUPER"] is False and report["warnings"] == []

    tshirt, mug = members(net, "TSHIRT-RED"), members(net, "MUG")
    (mug_start,) = set(quantities(net, "MUG", mug).values())
    d = OpsDaemon(cfg, env=creds, name="limited")
    try:
        d.start()
        ready = d.wait_for("daemon_ready", timeout=30)
        assert ready["capture"] == "trigger"
        assert trigger_count(net) == 3 * len(net.blog_ids)  # created by this user
        assert d.named("daemon_started")[0]["previous"] is None
        woo_decrease(net, 1, tshirt[1], 2)
        d.wait_for("change_synced", timeout=20, where=lambda e: e["sku"] == "TSHIRT-RED")
        wait_drained(net, timeout=20)
        assert d.kill() == -9  # a crash: the next start counts it as unclean

        # A newer syncd finds an outdated trigger: as this user it replaces it (LOCK TABLES).
        make_outdated(net, 2)
        d.start()
        d.wait_for("daemon_ready", timeout=30)
        upgraded = d.named("triggers_installed")
        assert [(e["blog"], e["outcome"]) for e in upgraded] == [(2, "upgraded")], d.log_tail()
        assert d.named("daemon_started")[0]["previous"] == "unclean"
        woo_decrease(net, 2, mug[2], 1)
        d.wait_for("change_synced", timeout=20, where=lambda e: e["sku"] == "MUG")
        wait_drained(net, timeout=20)

        # `syncd status` as the same user (it needs nothing more, not even PROCESS).
        out = io.StringIO()
        code = status_main(load_config(cfg, env=creds), argparse.Namespace(json=True), out=out)
        st = json.loads(out.getvalue())
        assert code == 0, st
        assert st["restarts"]["starts"] == 2 and st["restarts"]["restarts"] == 1, st["restarts"]
        assert st["restarts"]["unclean"] == 1, st["restarts"]
        conn = st["connection"]
        assert conn["lock"]["visible"] and conn["apply"]["visible"], conn
        assert conn["lock"]["id"] == st["leader"]["connection_id"]
        assert conn["daemon_reports"] == "connected" and conn["server_read_only"] is False
        assert conn["heartbeat_stale"] is False
        assert st["daemon"]["uptime_s"] >= 0 and st["leader"]["held"]
        text = io.StringIO()
        render(st, text)
        text = text.getvalue()
        assert re.search(r"^restarts\s+1 seen \(2 starts.*1 after a crash", text, re.M), text
        assert re.search(r"^connection\s+lock #\d+ \w+ \d+ s.*apply #\d+", text, re.M), text
        d.terminate()
        assert d.wait(30) == 0
        with net.engine.connect() as c:
            last = json.loads(
                c.exec_driver_sql(
                    f"SELECT value FROM {net.prefix}syncd_meta WHERE name = 'daemon'"
                ).scalar_one()
            )
        assert last["stopped_at"] and last["connection"] == "closed", "a clean stop is recorded as such"
    finally:
        d.stop()
    assert not [e for e in d.errors() if e["event"] != "heartbeat_failed"], d.errors()
    assert set(quantities(net, "TSHIRT-RED", tshirt).values()) == {8}
    assert set(quantities(net, "MUG", mug).values()) == {mug_start - 1}
    assert password not in "\n".join(d.raw)


def test_user_without_trigger_gets_poll_mode_with_a_warning(wp_network, users, tmp_path: Path) -> None:
    net = wp_network
    no_trigger = README_PRIVILEGES.replace(", TRIGGER", "")
    user, password = users.create(net.database, no_trigger)
    cfg = write_config(
        tmp_path, net, database={"url": user_url(net, user, password)}, capture={"poll_interval": 0.2}
    )
    out = io.StringIO()
    code = run_check(load_config(cfg, env={}), json_output=True, out=out)
    report = json.loads(out.getvalue())
    assert code == 0 and report["capture"]["effective"] == "poll", report
    assert any("falls back to polling" in w for w in report["warnings"])
    tshirt = members(net, "TSHIRT-RED")
    d = OpsDaemon(cfg, name="poll")
    try:
        d.start()
        warning = d.wait_for("capture_falls_back_to_poll", timeout=30)
        assert warning["level"] == "warning" and warning["errno"] in (1142, 1044)
        assert d.wait_for("daemon_ready", timeout=30)["capture"] == "poll"
        assert trigger_count(net) == 0
        woo_decrease(net, 3, tshirt[3], 4)
        d.wait_for("change_synced", timeout=20, where=lambda e: e["sku"] == "TSHIRT-RED")
        wait_until(lambda: set(quantities(net, "TSHIRT-RED", tshirt).values()) == {6}, 20, "poll-mode sync")
        d.terminate()
        assert d.wait(30) == 0
    finally:
        d.stop()


# --------------------------------------------------------------------------- SIGHUP
def lock_holder(net: Any) -> int | None:
    with net.engine.connect() as c:
        name = c.exec_driver_sql("SELECT CONCAT('syncd:', DATABASE(), ':', %s)", (net.prefix,)).scalar_one()
        return c.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (name,)).scalar()


def test_sighup_reloads_the_configuration_without_dropping_the_leader_lock(
    wp_network, tmp_path: Path
) -> None:
    net = wp_network
    cfg = write_config(tmp_path, net, sync={"batch_size": 500})
    tshirt = members(net, "TSHIRT-RED")
    d = OpsDaemon(cfg)  # --log-format json on the command line: it must keep winning over the file
    try:
        d.start()
        d.wait_for("daemon_ready", timeout=30)
        holder = lock_holder(net)
        assert holder is not None

        write_config(
            tmp_path,
            net,
            sync={"batch_size": 50},
            log={"level": "debug", "format": "console"},
            database={"lock_wait_timeout": 3},
        )
        mark = d.mark()
        d.signal(signal.SIGHUP)
        reloaded = d.wait_for("config_reloaded", timeout=10, after=mark)
        # log.format is not among them: the command line's --log-format json stays in force.
        assert set(reloaded["changed"]) == {"sync.batch_size", "log.level"}
        assert reloaded["needs_restart"] == ["database.lock_wait_timeout"]
        assert d.wait_for("config_change_needs_restart", timeout=5, after=mark)["level"] == "warning"
        # Debug lines now (still JSON: --log-format on the command line wins), same leader, same lock.
        woo_decrease(net, 1, tshirt[1], 1)
        d.wait_for("change_synced", timeout=20, after=mark)
        wait_until(lambda: any(e["level"] == "debug" for e in d.events[mark:]), 10, "a debug line")
        assert lock_holder(net) == holder
        assert len(d.named("leader_acquired")) == 1 and len(d.named("daemon_started")) == 1

        # A file that no longer validates: reported, and the running configuration is kept.
        cfg.write_text(cfg.read_text().replace("batch_size = 50", 'batch_size = "many"'))
        mark = d.mark()
        d.signal(signal.SIGHUP)
        failed = d.wait_for("config_reload_failed", timeout=10, after=mark)
        assert failed["level"] == "error" and "sync.batch_size" in failed["error"]
        woo_decrease(net, 2, tshirt[2], 1)
        d.wait_for("change_synced", timeout=20, after=mark)
        wait_drained(net, timeout=20)
        assert d.alive() and lock_holder(net) == holder
        d.terminate()
        assert d.wait(30) == 0
    finally:
        d.stop()
    assert set(quantities(net, "TSHIRT-RED", tshirt).values()) == {8}


# --------------------------------------------------------------------------- exit status
def test_exit_78_when_the_database_refuses_the_configuration(wp_network, tmp_path: Path) -> None:
    """What a restart cannot fix ends the process with 78, which the unit's
    RestartPreventExitStatus=78 turns into "stay stopped" instead of a restart loop."""
    net = wp_network
    wrong = "Wrong-pw-" + secrets.token_hex(4)
    bad_password = write_config(tmp_path, net, name="pw.toml", database={"url": user_url(net, "root", wrong)})
    bad_prefix = write_config(tmp_path, net, name="prefix.toml", database={"table_prefix": "shop_"})
    for cfg, errno in ((bad_password, 1045), (bad_prefix, None)):
        d = OpsDaemon(cfg, name=cfg.name)
        try:
            d.start()
            assert d.wait(30) == EXIT_CONFIG == cli.EXIT_CONFIG, d.log_tail()
        finally:
            d.stop()
        refused = d.named("startup_refused")
        assert refused and refused[0]["level"] == "error" and refused[0]["errno"] == errno, d.log_tail()
        assert wrong not in "\n".join(d.raw)


def test_a_server_that_is_down_is_waited_for_not_exited_on(wp_network, tmp_path: Path) -> None:
    """At boot the database may come up after syncd: syncd retries with growing delays (no exit,
    so no restart loop and no systemd start-limit), and still stops cleanly on SIGTERM."""
    net = wp_network
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = make_url(net.url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    cfg = write_config(tmp_path, net, database={"url": url, "connect_timeout": 1})
    d = OpsDaemon(cfg)
    try:
        d.start()
        d.wait_for("leader_lock_failed", timeout=30)
        second = d.wait_for("leader_lock_failed", timeout=30, after=d.mark())
        first = d.named("leader_lock_failed")[0]
        assert first["errno"] == 2003 and second["retry_in"] > first["retry_in"]
        assert d.alive()
        d.terminate()
        assert d.wait(30) == 0
    finally:
        d.stop()
