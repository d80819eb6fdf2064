"""Record: syncd's history of what it applied (``{base}syncd_history``), written in the same
transaction as the writes it describes: one ``origin`` row per captured change, one ``copy`` row
per member written because of it, one ``skipped`` row (with the reason) per member left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd.db import table
from syncd.plan import Change, Note


@dataclass
class HistoryRow:
    change: Change
    role: str  # origin | copy | skipped
    blog_id: int
    post_id: int
    sku: str
    meta_key: str
    old_value: str | None
    new_value: str | None
    delta: Decimal | None
    note: str | None = None


@dataclass
class BatchResult:
    """What one unit of work (a batch, a join) did: counts, its history rows, the planner's
    notes, each blog's derived outcome, and the joins and heals to record."""

    batch_id: int
    changes: int
    writes: int = 0
    skipped: int = 0
    history: list[HistoryRow] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    derived: dict[int, object] = field(default_factory=dict)
    settling: list[Any] = field(default_factory=list)  # syncd.settle.Record: joins and heals


def write_history(
    conn: sa.Connection, base_prefix: str, batch_id: int, rows: Sequence[HistoryRow], now: datetime
) -> None:
    """Every history row of one unit of work, in its transaction."""
    if not rows:
        return
    # Driver level, positional: one multi-row INSERT built by the driver's executemany,
    # without SQLAlchemy's per-row parameter dictionaries (a 500-change batch on 10 blogs
    # writes 5,000 rows of 15 values).
    conn.exec_driver_sql(
        f"INSERT INTO {table(base_prefix, 'syncd_history')} (applied_at, batch_id, change_id, captured_at, role, "
        "blog_id, post_id, sku, meta_key, old_value, new_value, delta, origin_blog_id, origin_post_id, note) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                now,
                batch_id,
                h.change.id,
                h.change.captured_at or now,
                h.role,
                h.blog_id,
                h.post_id,
                (h.sku or "")[:255],
                h.meta_key,
                _clip(h.old_value),
                _clip(h.new_value),
                h.delta,
                h.change.blog_id,
                h.change.post_id,
                h.note,
            )
            for h in rows
        ],
    )


def _clip(v: str | None) -> str | None:
    return None if v is None else v[:255]
