"""Dead letters for the dashboard: list, retry, discard.

Kept in this one module so that it can be switched to ``syncd.queue``'s functions (the
``syncd dead-letters`` command) when both exist: retry moves the row back into
``{base}syncd_change`` with the same columns (the daemon applies it like any captured change),
discard deletes it. Both in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from syncd.db import table

COLUMNS = "id, blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id"


def list_dead(conn: sa.Connection, base: str, *, limit: int = 500) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(f"SELECT {COLUMNS}, failed_at, error FROM {table(base, 'syncd_dead')} ORDER BY id LIMIT :n"),
        {"n": limit},
    )
    keys = [*(c.strip() for c in COLUMNS.split(",")), "failed_at", "error"]
    out = []
    for r in rows:
        d = dict(zip(keys, r, strict=True))
        for k in ("captured_at", "failed_at"):
            d[k] = d[k].isoformat(sep=" ", timespec="seconds")
        out.append(d)
    return out


def retry(conn: sa.Connection, base: str, ids: Sequence[int]) -> int:
    """Move the dead letters back into the change queue (same id and columns). Returns how many."""
    if not ids:
        return 0
    names, params = _in(ids)
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'syncd_change')} ({COLUMNS}) SELECT {COLUMNS} "
            f"FROM {table(base, 'syncd_dead')} WHERE id IN ({names})"
        ),
        params,
    )
    return discard(conn, base, ids)


def discard(conn: sa.Connection, base: str, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    names, params = _in(ids)
    return int(
        conn.execute(
            sa.text(f"DELETE FROM {table(base, 'syncd_dead')} WHERE id IN ({names})"), params
        ).rowcount
    )


def _in(ids: Sequence[int]) -> tuple[str, dict[str, int]]:
    params = {f"i{n}": int(v) for n, v in enumerate(ids)}
    return ", ".join(f":{k}" for k in params), params
