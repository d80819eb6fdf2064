"""Issue 13, the operator's first hour: what a careful new user runs, through the installed console
script in a subprocess (the exit status, stdout and stderr a person gets), against a real server.

No traceback for an expected condition (closed pipe, interrupt), no write from a preview, nothing
created by a look before install, the demo leaving nothing behind whatever the moment it is
interrupted, and the metrics endpoint scraped during a sale.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.daemon_process import write_config
from tests.integration.ops_helpers import OpsDaemon, Users, user_url
from tests.integration.sync_helpers import ids, woo_decrease

SYNCD = str(Path(sys.executable).with_name("syncd"))
USAGE_WITHOUT_COMMAND = 64


def syncd(
    *args: str, config: Path | None = None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    argv = [SYNCD, *(["--config", str(config)] if config else []), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, **kw
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr.replace("error:", ""), proc.stderr


def footprint(net: Any) -> tuple[list[str], list[str]]:
    """syncd's tables and triggers in the network's database (what a look must never create)."""
    with net.engine.connect() as c:
        tables = c.execute(
            sa.text(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME LIKE '%syncd%' ORDER BY 1"
            )
        ).scalars()
        triggers = c.execute(
            sa.text("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")
        ).scalars()
        return list(tables), list(triggers)


def stock_of(net: Any, sku: str) -> dict[int, str]:
    out = {}
    with net.engine.connect() as c:
        for b, post in ids(net, sku).items():
            out[b] = c.execute(
                sa.text(
                    f"SELECT meta_value FROM {net.table(b, 'postmeta')} WHERE post_id = :p AND meta_key = '_stock'"
                ),
                {"p": post},
            ).scalar_one()
    return out


def set_stock_uncaptured(net: Any, blog: int, sku: str, value: str) -> None:
    """Drift: a stock value written past the triggers (as a restore or a bad import would)."""
    with net.engine.connect() as c:
        c.exec_driver_sql("SET @syncd_apply = 1")
        c.execute(
            sa.text(
                f"UPDATE {net.table(blog, 'postmeta')} SET meta_value = :v WHERE post_id = :p AND meta_key = '_stock'"
            ),
            {"v": value, "p": ids(net, sku)[blog]},
        )
        c.commit()


@pytest.fixture
def cfg(wp_network: Any, tmp_path: Path) -> Path:
    path = write_config(tmp_path, wp_network)
    path.chmod(0o600)
    return path


def installed(cfg: Path) -> Path:
    proc = syncd("install", config=cfg)
    assert proc.returncode == 0, proc.stderr
    return cfg


# --------------------------------------------------------------------------- must not happen (1)
@pytest.mark.parametrize(
    "argv", [["--dry-run"], ["--json"], ["run", "--dry-run"], ["run", "--json"], ["--dry-run", "install"]]
)
def test_an_option_without_its_command_is_refused_and_starts_nothing(
    wp_network: Any, cfg: Path, argv: list[str]
) -> None:
    proc = syncd(*argv, config=cfg, timeout=30)
    assert proc.returncode == USAGE_WITHOUT_COMMAND, proc
    assert proc.stderr.startswith("usage: syncd"), proc.stderr
    assert "is not an option" in proc.stderr and proc.stdout == ""
    no_traceback(proc)
    assert footprint(wp_network) == ([], []), "a refused option must never reach the daemon"


def test_version_demo_help_and_a_negative_limit() -> None:
    assert syncd("--version").stdout.strip() == "syncd 0.1.0"
    helptext = syncd("demo", "--help").stdout
    for option in ("--keep", "--config-out", "--base-dir"):
        assert option in helptext
    run_help = syncd("run", "--help").stdout
    assert "--dry-run" in run_help and "with --reconcile" in run_help
    proc = syncd("history", "X", "--limit", "-1")
    assert proc.returncode == 2 and "expected a whole number >= 0" in proc.stderr


# --------------------------------------------------------------------------- must not happen (2)
@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["audit"],
        ["audit", "--json"],
        ["history", "TSHIRT-RED"],
        ["history", "TSHIRT-RED", "--json"],
        ["--reconcile", "--dry-run"],
        ["--reconcile", "--dry-run", "--json"],
    ],
)
def test_a_closed_pipe_ends_quietly(cfg: Path, argv: list[str]) -> None:
    """`syncd status | head -1`: the reader is gone before syncd writes (a real pipe, its read end
    closed at once: the first write fails, whatever the output's size)."""
    installed(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    proc = subprocess.Popen(
        [SYNCD, "--config", str(cfg), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


# --------------------------------------------------------------------------- must not happen (5)
def test_audit_and_reconcile_dry_run_before_install_create_nothing(wp_network: Any, cfg: Path) -> None:
    net = wp_network
    set_stock_uncaptured(net, 2, "TSHIRT-RED", "20")
    before = stock_of(net, "TSHIRT-RED")
    assert footprint(net) == ([], [])

    audit = syncd("audit", "--json", config=cfg)
    no_traceback(audit)
    report = json.loads(audit.stdout)
    assert audit.returncode == 4 and report["exit_status"] == 4 and report["not_installed"] is True
    assert any(g["sku"] == "TSHIRT-RED" for g in report["drift"]), report["drift"]

    for argv in (["--reconcile", "--dry-run", "--json"], ["run", "--reconcile", "--dry-run", "--json"]):
        proc = syncd(*argv, config=cfg)
        no_traceback(proc)
        doc = json.loads(proc.stdout)
        assert proc.returncode == 4 and doc["exit_status"] == 4, proc.stderr
        writes = [
            (w["blog"], w["key"], w["old"], w["new"])
            for w in doc["reconcile"]["writes"]
            if w["sku"] == "TSHIRT-RED"
        ]
        assert (2, "_stock", "20", before[1]) in writes, writes

    text = syncd("audit", config=cfg)
    assert "syncd is not installed: link groups built for this audit only, nothing created" in text.stdout
    assert footprint(net) == ([], []), "a look before install must create nothing"
    assert stock_of(net, "TSHIRT-RED") == before


# --------------------------------------------------------------------------- a faithful preview
def test_reconcile_dry_run_lists_exactly_what_the_real_run_writes(wp_network: Any, cfg: Path) -> None:
    net = wp_network
    installed(cfg)
    set_stock_uncaptured(net, 2, "TSHIRT-RED", "20")  # the shop's derived data still says the old value
    before = stock_of(net, "TSHIRT-RED")

    dry = syncd("--reconcile", "--dry-run", "--json", config=cfg)
    assert stock_of(net, "TSHIRT-RED") == before, "the dry run wrote"
    real = syncd("--reconcile", "--json", config=cfg)
    assert dry.returncode == real.returncode == 4, (dry.stderr, real.stderr)

    def planned(doc: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        r = doc["reconcile"]
        return (
            sorted((w["blog"], w["post"], w["key"], w["old"], w["new"]) for w in r["writes"]),
            sorted((h["blog"], h["post"], h["what"]) for h in r["healed"]),
        )

    dry_doc, real_doc = json.loads(dry.stdout), json.loads(real.stdout)
    assert dry_doc["reconcile"]["dry_run"] is True and real_doc["reconcile"]["dry_run"] is False
    assert planned(dry_doc) == planned(real_doc)
    assert not any("stock_quantity" in h[2] for h in planned(dry_doc)[1]), (
        "no derived fix the write makes moot"
    )
    assert set(stock_of(net, "TSHIRT-RED").values()) == {before[1]}


def test_audit_does_not_count_changes_in_flight_as_drift(wp_network: Any, cfg: Path) -> None:
    net = wp_network
    installed(cfg)
    base = syncd("audit", "--json", config=cfg)  # the recorded network has drift of its own
    before = json.loads(base.stdout)["counts"]
    woo_decrease(net, 1, ids(net, "TSHIRT-RED")[1], 2)  # captured; no daemon runs to apply it
    proc = syncd("audit", "--json", config=cfg)
    report = json.loads(proc.stdout)
    counts = report["counts"]
    # The sale makes TSHIRT-RED differ across blogs and its lookup row lag on blog 1: in flight only.
    assert counts["in_flight"] == before["in_flight"] + 1, report["in_flight"]
    assert (counts["drifted_groups"], counts["derived"]) == (before["drifted_groups"], before["derived"]), (
        report
    )
    assert not [d for d in report["derived"] if d["sku"] == "TSHIRT-RED"]
    assert proc.returncode == base.returncode


# --------------------------------------------------------------------------- the writing tools
def test_set_stock_and_sync_dry_run_and_what_set_stock_refuses(wp_network: Any, cfg: Path) -> None:
    net = wp_network
    installed(cfg)
    before = stock_of(net, "TSHIRT-RED")
    proc = syncd("set-stock", "TSHIRT-RED", "5", "--dry-run", "--json", config=cfg)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["dry_run"] is True, proc.stderr
    assert {w["new"] for w in doc["writes"] if w["key"] == "_stock"} == {"5"}
    text = syncd("sync", "TSHIRT-RED", "--dry-run", config=cfg)
    assert text.returncode == 0 and "Would write" in text.stdout, text.stderr
    assert stock_of(net, "TSHIRT-RED") == before, "a dry run wrote"
    assert "reconcile_planned" not in text.stderr, "per-member lines stay off stderr without --verbose"

    fraction = syncd("set-stock", "TSHIRT-RED", "2.5", config=cfg)
    assert fraction.returncode == 16 and "whole number" in fraction.stderr
    huge = syncd("set-stock", "TSHIRT-RED", str(2**60), config=cfg)
    assert huge.returncode == 16 and "exact range" in huge.stderr
    assert stock_of(net, "TSHIRT-RED") == before


def test_uninstall_asks_first_and_history_survives_keep_history(wp_network: Any, cfg: Path) -> None:
    net = wp_network
    installed(cfg)
    assert syncd("set-stock", "TSHIRT-RED", "9", config=cfg).returncode == 0
    refused = syncd("uninstall", "--keep-history", config=cfg)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert len(footprint(net)[0]) > 1, "nothing may be dropped without confirmation"
    assert syncd("uninstall", "--keep-history", "--yes", config=cfg).returncode == 0
    assert footprint(net) == ([f"{net.prefix}syncd_history"], [])
    proc = syncd("history", "tshirt-red", "--json", config=cfg)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)["entries"]
    assert {e["role"] for e in entries} == {"set"} and {e["new"] for e in entries} == {"9"}


def test_status_with_a_wrong_prefix_gives_check_s_reason(cfg: Path) -> None:
    wrong = cfg.with_name("wrong.toml")
    wrong.write_text(cfg.read_text().replace('table_prefix = "wp_"', 'table_prefix = "nope_"'))
    status, check = syncd("status", config=wrong), syncd("check", config=wrong)
    assert status.returncode == check.returncode == 1
    reason = status.stderr.removeprefix("syncd: ").strip()
    assert "table prefix 'nope_' is not the base prefix" in reason and "not installed" not in reason
    assert reason in check.stdout.replace("\n    ", " "), check.stdout


# --------------------------------------------------------------------------- least privilege
@pytest.fixture
def users(mysql_server: Any):
    u = Users(mysql_server.root_url())
    try:
        yield u
    finally:
        u.close()


def test_runtime_user_with_dml_only_runs_the_daemon(
    wp_network: Any, cfg: Path, users: Users, tmp_path: Path
) -> None:
    """The installer (root here) runs `syncd install` once; the daemon then runs as a user with
    SELECT, INSERT, UPDATE, DELETE only and sync.install_triggers = false, and syncs a sale."""
    net = wp_network
    installed(cfg)
    user, password = users.create(net.database, "SELECT, INSERT, UPDATE, DELETE")
    runtime = write_config(
        tmp_path,
        net,
        name="runtime.toml",
        database={"url": user_url(net, user, password)},
        sync={"install_triggers": False},
    )
    runtime.chmod(0o644)
    check = syncd("check", "--json", config=runtime)
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["exit_status"] == 0, report["errors"]
    assert report["roles"] == {"installer": False, "runtime": True, "read_only": True}
    assert any("holds the database password and every user may read it" in w for w in report["warnings"])
    assert "Roles:      this user can be runtime" in syncd("check", config=runtime).stdout
    runtime.chmod(0o600)
    assert not any(
        "password" in w for w in json.loads(syncd("check", "--json", config=runtime).stdout)["warnings"]
    )
    root_check = json.loads(syncd("check", "--json", config=cfg).stdout)
    assert root_check["roles"]["installer"] is True

    triggers = footprint(net)[1]
    tshirt = ids(net, "TSHIRT-RED")
    d = OpsDaemon(runtime, name="runtime")
    try:
        d.start()
        assert d.wait_for("daemon_ready", timeout=30)["capture"] == "trigger"
        woo_decrease(net, 1, tshirt[1], 1)
        d.wait_for("change_synced", timeout=20, where=lambda e: e["sku"] == "TSHIRT-RED")
    finally:
        d.stop()
    assert not d.errors(), d.errors()
    assert len(set(stock_of(net, "TSHIRT-RED").values())) == 1
    assert footprint(net)[1] == triggers


# --------------------------------------------------------------------------- metrics
def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_endpoint_scraped_during_a_sale(wp_network: Any, tmp_path: Path) -> None:
    from syncd.testnet.server import free_port

    net = wp_network
    port = free_port()
    path = write_config(tmp_path, net, metrics={"listen": f"127.0.0.1:{port}"})
    tshirt = ids(net, "TSHIRT-RED")
    d = OpsDaemon(path, name="metrics")
    try:
        d.start()
        d.wait_for("daemon_ready", timeout=30)
        idle = scrape(port)
        assert idle["syncd_leader"] == 1 and idle["syncd_changes_applied_total"] == 0
        assert {k for k in idle if k.startswith("syncd_capture_mode")} == {
            f"syncd_capture_mode{{blog={b},mode=trigger}}" for b in net.blog_ids
        }
        woo_decrease(net, 1, tshirt[1], 1)
        woo_decrease(net, 2, tshirt[2], 2)
        d.wait_for("change_synced", timeout=20, where=lambda e: e["blog"] == 2)
        m = scrape(port)
    finally:
        d.stop()
    assert m["syncd_changes_applied_total"] >= 2 and m["syncd_member_writes_total"] >= 2
    assert m["syncd_propagation_lag_seconds_count"] >= 2
    assert m["syncd_propagation_lag_seconds_sum"] < 60
    assert m["syncd_last_batch_timestamp_seconds"] > time.time() - 60
    assert "syncd_backlog_changes" in m and "syncd_batch_retries_total" not in m  # no retry yet: no series


# --------------------------------------------------------------------------- the demo
def leftovers(base: Path) -> tuple[list[str], list[str]]:
    """Files under the demo's base dir, and processes whose command line names it."""
    files = [str(p) for p in base.iterdir()]
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmd:
            procs.append(f"{pid}: {cmd}")
    return files, procs


@pytest.mark.parametrize(
    ("moment", "sig"),
    [
        ("datadir", signal.SIGINT),
        ("initialising", signal.SIGTERM),
        ("spawned", signal.SIGINT),
        ("network", signal.SIGTERM),
        ("daemon", signal.SIGINT),
    ],
)
def test_demo_interrupted_at_start_up_leaves_nothing(tmp_path: Path, moment: str, sig: int) -> None:
    base = tmp_path / "demo"
    base.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}, "SYNCD_DEMO_PAUSE": moment}
    proc = subprocess.Popen(
        [SYNCD, "demo", "--base-dir", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the demo says where it waits, then waits for the signal
        seen.append(line)
        if line.startswith(f"demo_paused {moment}"):
            break
    else:
        proc.wait(30)
        pytest.fail(f"the demo never reached {moment}: {''.join(seen)}")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; the demo server is stopped and its data removed" in err
    assert leftovers(base) == ([], [])


def test_demo_keep_leaves_no_password_less_root(tmp_path: Path) -> None:
    import pymysql

    base = tmp_path / "demo"
    base.mkdir()
    proc = syncd("demo", "--keep", "--check-only", "--base-dir", str(base), timeout=120)
    m = re.search(r"stop it: kill (\d+) .*&& rm -rf (\S+)", proc.stdout)
    assert proc.returncode == 0 and m, proc.stdout + proc.stderr
    pid, folder = int(m.group(1)), m.group(2)
    port = int(re.search(r"on 127\.0\.0\.1:(\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    password = re.search(r"-u root -p'([^']+)'", proc.stdout).group(1)  # type: ignore[union-attr]
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=5)
        assert refused.value.args[0] == 1045
        pymysql.connect(
            host="127.0.0.1", port=port, user="root", password=password, connect_timeout=5
        ).close()
        assert oct(Path(folder, "syncd-demo.toml").stat().st_mode & 0o777) == "0o600"
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
    assert leftovers(base) == ([], [])


# --------------------------------------------------------------------------- must not happen (4)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"), reason="needs root and apt-get")
def test_a_held_dpkg_lock_is_waited_for_then_reported_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another apt holds the lock (a private dpkg admin directory, locked as dpkg locks it):
    apt-get waits DPkg::Lock::Timeout seconds, then one sentence names the command run."""
    from syncd.testnet import server

    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").touch()
    held = []
    for name in ("lock-frontend", "lock"):
        fd = os.open(admin / name, os.O_RDWR | os.O_CREAT, 0o640)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    monkeypatch.setattr(server, "find_server_binary", lambda: None)
    options = ("-o", f"Dir::State::status={admin / 'status'}")
    try:
        started = time.monotonic()
        with pytest.raises(server.ServerNotInstalled) as exc:
            server.ensure_server_installed(lock_timeout=2, apt_options=options)
        waited = time.monotonic() - started
    finally:
        for fd in held:
            os.close(fd)
    message = str(exc.value)
    assert 1.5 < waited < 30, waited
    assert "\n" not in message and "gave up waiting for the dpkg lock" in message
    assert f"apt-get -o DPkg::Lock::Timeout=2 -o Dir::State::status={admin / 'status'} install" in message
