"""Overview: the daemon (leader, heartbeat, backlog), propagation lag over the last hour, dead
letters, capture state per blog, recent errors, and changes per hour per blog over the last days."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from syncd import status
from syncd.db import table
from syncd.web import charts
from syncd.web.http import Ctx, View

DAYS = 3


def overview(ctx: Ctx) -> View:
    app = ctx.app
    _prune_attribution(app)
    with app.read_engine.connect() as conn:
        report = status.collect(conn, app.base, app.config.blogs.selects, status.watches(app.config))
        if not report.get("installed"):
            return View("overview.html", {"installed": False}, extra={"chart": ""})
        now = (
            conn.exec_driver_sql("SELECT UTC_TIMESTAMP()")
            .scalar_one()
            .replace(minute=0, second=0, microsecond=0)
        )
        data = {
            "installed": True,
            "status": report,
            "lag_last_hour": _lag(conn, app.base),
            "recent_errors": _errors(conn, app.base),
            "changes_per_hour": _per_hour(conn, app.base, now - timedelta(days=DAYS)),
        }
        conn.rollback()
    hours = [now - timedelta(hours=h) for h in range(DAYS * 24, -1, -1)]
    counts: dict[int, dict[Any, int]] = {}
    for row in data["changes_per_hour"]:
        counts.setdefault(row["blog"], {})[row["hour"]] = row["changes"]
    for row in data["changes_per_hour"]:
        row["hour"] = row["hour"].isoformat(sep=" ")
    chart = charts.hourly_chart(counts, hours, f"Changes per hour, last {DAYS} days, per blog (UTC)")
    return View("overview.html", data, extra={"chart": chart})


def _lag(conn: sa.Connection, base: str) -> dict[str, Any]:
    """Capture -> applied, for origin rows applied in the last hour (seconds)."""
    row = conn.execute(
        sa.text(
            f"SELECT COUNT(*), AVG(TIMESTAMPDIFF(MICROSECOND, captured_at, applied_at)) / 1e6, "
            f"MAX(TIMESTAMPDIFF(MICROSECOND, captured_at, applied_at)) / 1e6 FROM {table(base, 'syncd_history')} "
            "WHERE applied_at >= UTC_TIMESTAMP() - INTERVAL 1 HOUR AND role = 'origin'"
        )
    ).one()
    return {
        "changes": int(row[0]),
        "avg_s": None if row[1] is None else round(float(row[1]), 3),
        "max_s": None if row[2] is None else round(float(row[2]), 3),
    }


def _errors(conn: sa.Connection, base: str, n: int = 10) -> list[dict[str, Any]]:
    """The newest dead letters and skipped writes, newest first."""
    dead = conn.execute(
        sa.text(
            f"SELECT failed_at, blog_id, post_id, meta_key, error FROM {table(base, 'syncd_dead')} "
            "ORDER BY failed_at DESC LIMIT :n"
        ),
        {"n": n},
    ).all()
    skipped = conn.execute(
        sa.text(
            f"SELECT applied_at, blog_id, post_id, meta_key, note FROM {table(base, 'syncd_history')} "
            "WHERE role = 'skipped' AND applied_at >= UTC_TIMESTAMP() - INTERVAL 7 DAY ORDER BY applied_at DESC LIMIT :n"
        ),
        {"n": n},
    ).all()
    rows = [("dead letter", *r) for r in dead] + [("skipped", *r) for r in skipped]
    rows.sort(key=lambda r: r[1], reverse=True)
    return [
        {
            "kind": k,
            "at": at.isoformat(sep=" ", timespec="seconds"),
            "blog": b,
            "post": p,
            "key": key,
            "text": (t or "")[:300],
        }
        for k, at, b, p, key, t in rows[:n]
    ]


def _per_hour(conn: sa.Connection, base: str, since: Any) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            f"SELECT blog_id, DATE_FORMAT(applied_at, '%Y-%m-%d %H:00:00'), COUNT(*) FROM {table(base, 'syncd_history')} "
            "WHERE applied_at >= :since AND role IN ('origin', 'set', 'reconcile') GROUP BY 1, 2 ORDER BY 2, 1"
        ),
        {"since": since},
    )
    from datetime import datetime

    return [{"blog": int(b), "hour": datetime.fromisoformat(h), "changes": int(n)} for b, h, n in rows]


def _prune_attribution(app: Any) -> None:
    """Attribution rows live as long as history (history.retention_days); pruned at most hourly."""
    import time

    from syncd import attribution

    if time.monotonic() - getattr(app, "_pruned", -3600.0) < 3600:
        return
    app._pruned = time.monotonic()
    with app.write_engine.connect() as conn:
        attribution.prune(conn, app.base, app.config.history.retention_days)
        conn.commit()
