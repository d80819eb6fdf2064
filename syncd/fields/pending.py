"""Field work left for the leading daemon: what ``syncd status``, ``syncd check`` and the dashboard
count (issue 10).

A field pass (manual or scheduled) leaves two kinds of work behind, each in a table of its own:
members it deferred because they were being saved (``{base}syncd_field_defer``,
:mod:`syncd.fields.deferred`) and products whose derived price rows are checked once settled
(``{base}syncd_field_check``, :mod:`syncd.fields.recheck`). Only a daemon that leads finishes
them (its settle step). A manual sync with no daemon running leaves them queued: the values the
pass reported as deferred are then not written, and that is what the warning says.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from syncd.db import errno_of, table

#: (report key, table, the column its age is measured from)
_KINDS = (
    ("deferred", "syncd_field_defer", "deferred_at"),
    ("checks", "syncd_field_check", "written_at"),
)


def field_work(conn: sa.Connection, base: str) -> dict[str, dict[str, Any]] | None:
    """Per kind: how many rows wait, and the age in seconds of the oldest (None: none wait).
    One read-only statement (the server's clock, as the rows' stamps are). None when the tables
    do not exist yet (a schema older than 7: the daemon adds them when it starts)."""
    parts = ", ".join(
        f"(SELECT COUNT(*) FROM {table(base, t)}), "
        f"(SELECT TIMESTAMPDIFF(MICROSECOND, MIN({col}), UTC_TIMESTAMP(6)) FROM {table(base, t)})"
        for _, t, col in _KINDS
    )
    try:
        row = conn.exec_driver_sql(f"SELECT {parts}").one()
    except sa.exc.ProgrammingError as exc:
        if errno_of(exc) != 1146:  # ER_NO_SUCH_TABLE
            raise
        return None
    out: dict[str, dict[str, Any]] = {}
    for i, (name, _, _) in enumerate(_KINDS):
        n, micros = row[2 * i], row[2 * i + 1]
        out[name] = {
            "pending": int(n or 0),
            "oldest_age_s": None if micros is None else round(max(0, int(micros)) / 1e6, 3),
        }
    return out


def next_due_in(conn: sa.Connection, base: str, settle_seconds: float) -> float | None:
    """Seconds until the earliest deferral or check is due (``<= 0``: due now; None: none waits),
    one statement. Rows recorded later are due later still (each is due ``settle_seconds`` after
    it was recorded or postponed), so the daemon's idle loop need not look before then."""
    far = "'9999-12-31'"
    micros = conn.exec_driver_sql(
        "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), NULLIF(LEAST("
        f"COALESCE((SELECT MIN(deferred_at) FROM {table(base, 'syncd_field_defer')}), {far}), "
        f"COALESCE((SELECT MIN(written_at) FROM {table(base, 'syncd_field_check')}), {far})), {far}))"
    ).scalar()
    return None if micros is None else int(micros) / 1e6 + settle_seconds


def waiting(work: dict[str, dict[str, Any]] | None) -> int:
    return sum(int(v["pending"]) for v in (work or {}).values())


def warning(work: dict[str, dict[str, Any]] | None, leader_held: bool) -> str | None:
    """Why the queued field work will not finish now (None: it will, or there is none)."""
    if work is None or leader_held or not waiting(work):
        return None
    return (
        f"{work['deferred']['pending']} deferred field write(s) and {work['checks']['pending']} price "
        "check(s) wait, and no daemon leads: they are finished only by a leading daemon "
        "(start syncd; a manual sync alone leaves them queued)"
    )


def describe(work: dict[str, dict[str, Any]]) -> str:
    """One line: '2 deferred (oldest 3.1 s), 0 price checks'."""

    def one(name: str, label: str) -> str:
        w = work[name]
        oldest = f" (oldest {w['oldest_age_s']} s)" if w["oldest_age_s"] is not None else ""
        return f"{w['pending']} {label}{oldest}"

    return f"{one('deferred', 'deferred')}, {one('checks', 'price checks')}"
