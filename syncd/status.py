"""``syncd status``: is a daemon leading, are the triggers in place, is anything waiting or failing.

Reads only; safe to run at any time, from any host that can reach the database.

Exit status (a bitmask, like pt-table-checksum's): 0 healthy; 1 fatal (cannot read syncd's
tables: not installed, or no connection); 2 no daemon holds the leader lock; 4 a usable blog's
triggers are missing or outdated (trigger capture only); 8 backlog older than 60 s;
16 dead-lettered changes waiting for the operator.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa

from syncd import capture, schema
from syncd.daemon import lock_name
from syncd.db import table

EXIT_FATAL = 1
EXIT_NO_LEADER = 2
EXIT_TRIGGERS = 4
EXIT_BACKLOG = 8
EXIT_DEAD = 16
BACKLOG_AGE_LIMIT = 60.0


def collect(conn: sa.Connection, base_prefix: str) -> dict[str, Any]:
    """Everything `syncd status` shows, as plain data."""
    from syncd.network import discover

    out: dict[str, Any] = {"installed": schema.schema_present(conn, base_prefix)}
    if not out["installed"]:
        return out
    database = conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
    name = lock_name(database or "", base_prefix)
    holder = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (name,)).scalar()
    out["leader"] = {"lock": name, "connection_id": holder, "held": holder is not None}
    raw = schema.get_meta(conn, base_prefix, "daemon")
    daemon = json.loads(raw) if raw else None
    now = time.time()
    if daemon:
        daemon["heartbeat_age_s"] = round(now - daemon.get("heartbeat", now), 1)
        if daemon.get("started_at"):
            daemon["uptime_s"] = round(now - daemon["started_at"], 1)
    out["daemon"] = daemon
    n, oldest = capture.backlog(conn, base_prefix)
    age = None
    if oldest is not None:
        utc_now = conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar_one()
        age = round((utc_now - oldest).total_seconds(), 3)
    out["backlog"] = {"pending": n, "oldest_age_s": age}
    out["dead_letters"] = conn.execute(
        sa.text(f"SELECT COUNT(*) FROM {table(base_prefix, 'syncd_dead')}")
    ).scalar_one()
    last = conn.execute(
        sa.text(f"SELECT MAX(applied_at) FROM {table(base_prefix, 'syncd_history')}")
    ).scalar_one()
    out["last_applied_at"] = last.replace(tzinfo=UTC).isoformat() if last else None
    network = discover(conn, base_prefix)
    installed = capture.installed_triggers(conn, base_prefix)
    blogs = []
    for blog in network.blogs:
        entry = {
            "blog_id": blog.blog_id,
            "prefix": blog.prefix,
            "usable": blog.usable,
            "problems": list(blog.problems),
        }
        if blog.usable:
            entry["triggers"] = capture.blog_trigger_state(installed, base_prefix, blog).state
        blogs.append(entry)
    out["blogs"] = blogs
    out["capture"] = (daemon or {}).get("capture") or ("trigger" if installed else "poll-or-none")
    return out


def exit_status(report: dict[str, Any]) -> int:
    if not report.get("installed"):
        return EXIT_FATAL
    code = 0
    if not report["leader"]["held"]:
        code |= EXIT_NO_LEADER
    if report.get("capture") == "trigger" and any(
        b.get("usable") and b.get("triggers") != "installed" for b in report["blogs"]
    ):
        code |= EXIT_TRIGGERS
    age = report["backlog"]["oldest_age_s"]
    if age is not None and age > BACKLOG_AGE_LIMIT:
        code |= EXIT_BACKLOG
    if report["dead_letters"]:
        code |= EXIT_DEAD
    return code


def render(report: dict[str, Any], out: TextIO) -> None:
    if not report.get("installed"):
        print("syncd is not installed in this database (run: syncd install)", file=out)
        return
    lead = report["leader"]
    d = report.get("daemon") or {}
    print(
        f"leader lock   {lead['lock']}: {'held by connection ' + str(lead['connection_id']) if lead['held'] else 'FREE (no daemon running)'}",
        file=out,
    )
    if d:
        print(
            f"daemon        {d.get('instance')} capture={d.get('capture')} uptime={_dur(d.get('uptime_s'))} "
            f"heartbeat {d.get('heartbeat_age_s')} s ago, connection {d.get('connection')}",
            file=out,
        )
        print(
            f"applied       {d.get('changes')} changes in {d.get('batches')} batches; last lag {d.get('last_lag_ms')} ms; "
            f"retries {d.get('retries')}, reconnects {d.get('reconnects')}, skipped members {d.get('skipped')}",
            file=out,
        )
        print(f"errors        {d.get('errors')}; last: {d.get('last_error') or '-'}", file=out)
    b = report["backlog"]
    print(
        f"backlog       {b['pending']} pending, oldest {b['oldest_age_s'] if b['oldest_age_s'] is not None else '-'} s",
        file=out,
    )
    print(f"dead letters  {report['dead_letters']}", file=out)
    print(f"last applied  {report['last_applied_at'] or '-'}", file=out)
    print("blogs", file=out)
    for blog in report["blogs"]:
        state = blog.get(
            "triggers", "left alone: " + "; ".join(blog["problems"]) if not blog["usable"] else ""
        )
        print(f"  {blog['blog_id']:>4}  {blog['prefix']:<16} {state}", file=out)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def main(config: Any, args: Any, out: TextIO | None = None) -> int:
    """Entry point of ``syncd status [--json]``."""
    out = out or sys.stdout
    engine = config.database.make_engine()
    try:
        with engine.connect() as conn:
            report = collect(conn, config.database.table_prefix)
    finally:
        engine.dispose()
    report["checked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    code = exit_status(report)
    report["exit_status"] = code
    if getattr(args, "json", False):
        json.dump(report, out, indent=2, default=str)
        print(file=out)
    else:
        render(report, out)
    return code
