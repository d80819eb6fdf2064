"""Dead letters for the dashboard: list, retry, discard - the functions ``syncd dead-letters``
uses (:mod:`syncd.queue`), in the caller's transaction. A retry puts the whole statement group
back under its own ids, so the daemon applies it like any captured change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from syncd import queue


def list_dead(conn: sa.Connection, base: str, *, limit: int = 500) -> list[dict[str, Any]]:
    out = []
    for letter in queue.list_dead(conn, base)[:limit]:
        d = letter.document()
        for k in ("captured_at", "failed_at"):
            if d.get(k):
                d[k] = d[k].replace("T", " ")[:19]
        out.append(d)
    return out


def retry(conn: sa.Connection, base: str, ids: Sequence[int]) -> int:
    """Move the dead letters (with the rest of their statements) back into the queue; how many."""
    return len(queue.retry_dead(conn, base, [int(i) for i in ids])) if ids else 0


def discard(conn: sa.Connection, base: str, ids: Sequence[int]) -> int:
    return len(queue.discard_dead(conn, base, [int(i) for i in ids])) if ids else 0
