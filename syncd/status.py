"""``syncd status``: is a daemon leading, are the triggers in place, is anything waiting or failing.

Reads only; safe to run at any time, from any host that can reach the database.

Exit status (a bitmask, like pt-table-checksum's): 0 healthy; 1 fatal (cannot read syncd's
tables: not installed, or no connection); 2 no daemon holds the leader lock; 4 a usable blog's
triggers are missing or outdated (trigger and binlog capture); 8 backlog older than 60 s (changes of
blogs syncd serves; changes held for a blog that is not usable are listed, not counted);
16 dead-lettered changes waiting for the operator (``syncd dead-letters``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa

from syncd import capture, queue, schema, settle
from syncd.daemon import lock_name
from syncd.db import table
from syncd.fields import pending, realtime

EXIT_FATAL = 1
EXIT_NO_LEADER = 2
EXIT_TRIGGERS = 4
EXIT_BACKLOG = 8
EXIT_DEAD = 16
BACKLOG_AGE_LIMIT = 60.0
#: The leader writes its heartbeat every 5 s; three missed ones mean it is stuck or cut off.
HEARTBEAT_STALE_AFTER = 15.0


def collect(
    conn: sa.Connection,
    base_prefix: str,
    selects: Callable[[int], bool] | None = None,
    watch_for: Callable[[int], capture.Watch] | None = None,
) -> dict[str, Any]:
    """Everything `syncd status` shows, as plain data. ``selects``: [blogs] include/exclude
    (a blog it rejects is reported as excluded, and its missing triggers are expected).
    ``watch_for``: what each blog's triggers must watch (realtime field groups); stock only if None."""
    from syncd.network import discover

    out: dict[str, Any] = {"installed": schema.schema_present(conn, base_prefix)}
    if not out["installed"]:
        discover(conn, base_prefix)  # a wrong table_prefix says so, as `syncd check` does
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
            # A daemon that stopped cleanly has no uptime running on.
            daemon["uptime_s"] = round((daemon.get("stopped_at") or now) - daemon["started_at"], 1)
    out["daemon"] = daemon
    starts_raw = schema.get_meta(conn, base_prefix, "daemon_starts")
    starts = json.loads(starts_raw) if starts_raw else {}
    out["restarts"] = {
        "starts": int(starts.get("starts", 0)),
        "restarts": max(0, int(starts.get("starts", 0)) - 1),
        "unclean": int(starts.get("unclean", 0)),
        "last_start_at": _iso(starts.get("last_start_at")),
        "last_unclean_at": _iso(starts.get("last_unclean_at")),
    }
    out["connection"] = _connection(conn, daemon, holder)
    network = discover(conn, base_prefix)
    _queue_state(conn, base_prefix, network, selects, out)
    settling = settle.counts(conn, base_prefix)
    # Products joining their group once WooCommerce has finished writing them, and members whose
    # copy is finished once they settle (syncd.settle): normally a few, for a few seconds.
    out["settling"] = {"joining": settling.get(settle.JOIN, 0), "healing": settling.get(settle.HEAL, 0)}
    # What a field pass left for the leading daemon (syncd.fields.pending): finished only while one leads.
    work = pending.field_work(conn, base_prefix)
    out["field_work"] = (
        None if work is None else {**work, "warning": pending.warning(work, holder is not None)}
    )
    last = conn.execute(
        sa.text(f"SELECT MAX(applied_at) FROM {table(base_prefix, 'syncd_history')}")
    ).scalar_one()
    out["last_applied_at"] = last.replace(tzinfo=UTC).isoformat() if last else None
    installed = capture.installed_triggers(conn, base_prefix)
    blogs = []
    for blog in network.blogs:
        entry = {
            "blog_id": blog.blog_id,
            "prefix": blog.prefix,
            "usable": blog.usable,
            "problems": list(blog.problems),
        }
        if selects is not None and not selects(blog.blog_id):
            entry["excluded"] = True
            entry["triggers"] = "excluded by configuration"
        elif blog.usable:
            watch = capture.STOCK_ONLY if watch_for is None else watch_for(blog.blog_id)
            entry["triggers"] = capture.blog_trigger_state(installed, base_prefix, blog, watch).state
        blogs.append(entry)
    out["blogs"] = blogs
    out["capture"] = (daemon or {}).get("capture") or ("trigger" if installed else "poll-or-none")
    return out


def _queue_state(
    conn: sa.Connection,
    base_prefix: str,
    network: Any,
    selects: Callable[[int], bool] | None,
    out: dict[str, Any],
) -> None:
    """Backlog of the blogs syncd serves; changes held for the others (per blog, with why); dead
    letters (count, and by error class)."""
    served = {b.blog_id for b in network.usable_blogs() if selects is None or selects(b.blog_id)}
    why = {b.blog_id: "not live: " + ", ".join(b.reasons) for b in network.skipped}
    why.update({b.blog_id: "not usable: " + "; ".join(b.problems) for b in network.blogs if not b.usable})
    n, oldest = queue.backlog(conn, base_prefix, served)
    age = None
    if oldest is not None:
        utc_now = conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar_one()
        age = round((utc_now - oldest).total_seconds(), 3)
    out["backlog"] = {"pending": n, "oldest_age_s": age}
    out["held"] = [
        {"blog_id": b, "changes": held, "reason": why.get(b, "excluded by configuration or gone")}
        for b, held in sorted(queue.held(conn, base_prefix, served).items())
    ]
    by_class = queue.dead_by_class(conn, base_prefix)
    out["dead_letters"] = sum(by_class.values())
    out["dead_letters_by_class"] = by_class


def _connection(conn: sa.Connection, daemon: dict[str, Any] | None, lock_holder: Any) -> dict[str, Any]:
    """The daemon's database connections as the server sees them now, plus what the daemon last said."""
    read_only = conn.exec_driver_sql("SHOW VARIABLES LIKE 'read_only'").first()
    out: dict[str, Any] = {
        "server_read_only": bool(read_only) and str(read_only[1]).upper() in ("ON", "1"),
        "daemon_reports": (daemon or {}).get("connection"),
        "heartbeat_stale": bool(daemon)
        and not daemon.get("stopped_at")
        and daemon.get("heartbeat_age_s", 0) > HEARTBEAT_STALE_AFTER,
    }
    ids = {"lock": lock_holder, "apply": (daemon or {}).get("apply_connection_id") if lock_holder else None}
    wanted = [int(v) for v in ids.values() if v is not None]
    seen: dict[int, tuple[Any, ...]] = {}
    if wanted:
        marks = ", ".join(f":i{n}" for n in range(len(wanted)))
        # A user sees its own sessions without the PROCESS privilege: syncd's status as syncd works.
        for row in conn.execute(
            sa.text(
                f"SELECT ID, COMMAND, TIME, STATE FROM information_schema.PROCESSLIST WHERE ID IN ({marks})"
            ),
            {f"i{n}": v for n, v in enumerate(wanted)},
        ):
            seen[int(row[0])] = tuple(row[1:])
    for role, cid in ids.items():
        if cid is None:
            out[role] = None
            continue
        row = seen.get(int(cid))
        out[role] = {
            "id": int(cid),
            "visible": row is not None,
            "command": None if row is None else row[0],
            "seconds": None if row is None else row[1],
            "state": None if row is None else (row[2] or None),
        }
    return out


def _iso(ts: Any) -> str | None:
    return None if ts is None else datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")


def exit_status(report: dict[str, Any]) -> int:
    if not report.get("installed"):
        return EXIT_FATAL
    code = 0
    if not report["leader"]["held"]:
        code |= EXIT_NO_LEADER
    if report.get("capture") in ("trigger", "binlog") and any(
        b.get("usable")
        and not b.get("excluded")
        and b.get("triggers") not in ("installed", capture.NONE_NEEDED)
        for b in report["blogs"]
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
            f"daemon        {d.get('instance')} capture={d.get('capture')}{_following(d)} uptime={_dur(d.get('uptime_s'))} "
            f"heartbeat {d.get('heartbeat_age_s')} s ago, connection {d.get('connection')}",
            file=out,
        )
        print(
            f"applied       {d.get('changes')} changes in {d.get('batches')} batches; "
            f"last lag {'not measured yet' if d.get('last_lag_ms') is None else str(d.get('last_lag_ms')) + ' ms'}; "
            f"retries {d.get('retries')}, reconnects {d.get('reconnects')}, skipped members {d.get('skipped')}",
            file=out,
        )
        if d.get("retry_reasons"):
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["retry_reasons"].items()))
            print(
                f"retried       {reasons} (transient: retried until they pass, never dead-lettered)", file=out
            )
        print(f"errors        {d.get('errors')}; last: {d.get('last_error') or 'none'}", file=out)
    r = report.get("restarts") or {}
    if r.get("starts"):
        unclean = (
            f", {r['unclean']} after a crash or lost lock (last {r['last_unclean_at']})"
            if r["unclean"]
            else ""
        )
        print(
            f"restarts      {r['restarts']} seen ({r['starts']} starts, last {r['last_start_at']}){unclean}",
            file=out,
        )
    c = report.get("connection") or {}
    if c:
        print(f"connection    {_describe_connection(c)}", file=out)
    b = report["backlog"]
    oldest = f", oldest {b['oldest_age_s']} s" if b["oldest_age_s"] is not None else ""
    print(f"backlog       {b['pending']} pending{oldest}", file=out)
    for h in report.get("held") or []:
        print(
            f"held          blog {h['blog_id']}: {h['changes']} changes kept until it is usable ({h['reason']})",
            file=out,
        )
    by_class = ", ".join(f"{k} {v}" for k, v in sorted((report.get("dead_letters_by_class") or {}).items()))
    print(f"dead letters  {report['dead_letters']}{f' ({by_class})' if by_class else ''}", file=out)
    st = report.get("settling") or {}
    print(f"settling      {st.get('joining', 0)} joining, {st.get('healing', 0)} healing", file=out)
    fw = report.get("field_work")
    if fw:
        print(f"field work    {pending.describe(fw)}", file=out)
        if fw.get("warning"):
            print(f"WARNING       {fw['warning']}", file=out)
    print(f"last applied  {report['last_applied_at'] or 'never'}", file=out)
    print("blogs", file=out)
    for blog in report["blogs"]:
        state = blog.get(
            "triggers", "left alone: " + "; ".join(blog["problems"]) if not blog["usable"] else ""
        )
        print(f"  {blog['blog_id']:>4}  {blog['prefix']:<16} {state}", file=out)


def _describe_connection(c: dict[str, Any]) -> str:
    parts = []
    for role in ("lock", "apply"):
        info = c.get(role)
        if info is None:
            continue
        if not info["visible"]:
            parts.append(f"{role} #{info['id']} not visible")
            continue
        state = f", {info['state']}" if info["state"] else ""
        parts.append(f"{role} #{info['id']} {info['command']} {info['seconds']} s{state}")
    if c.get("daemon_reports"):
        parts.append(f"daemon says: {c['daemon_reports']}")
    if c.get("heartbeat_stale"):
        parts.append("HEARTBEAT STALE (daemon stuck or cut off from the database)")
    if c.get("server_read_only"):
        parts.append("SERVER READ-ONLY (writes wait until it is writable)")
    return "; ".join(parts) or "-"


def _following(daemon: dict[str, Any]) -> str:
    """Binlog capture: whether the daemon follows the log (else only its full comparison finds writes)."""
    if daemon.get("capture") != "binlog":
        return ""
    return (
        " (following the binary log)" if daemon.get("binlog_following") else " (NOT following the binary log)"
    )


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def watches(config: Any) -> Callable[[int], capture.Watch]:
    """What each blog's triggers must watch under this configuration (stock + realtime groups)."""
    groups = realtime.realtime_groups(config)
    return lambda blog_id: realtime.watch_for(config, blog_id, groups)


def main(config: Any, args: Any, out: TextIO | None = None) -> int:
    """Entry point of ``syncd status [--json]``."""
    out = out or sys.stdout
    engine = config.database.make_engine()
    try:
        with engine.connect() as conn:
            report = collect(conn, config.database.table_prefix, config.blogs.selects, watches(config))
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
