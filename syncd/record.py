"""Record: syncd's history of what it applied (``{base}syncd_history``), written in the same
transaction as the writes it describes: one ``origin`` row per captured change, one ``copy`` row
per member written because of it, one ``skipped`` row (with the reason) per member left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from syncd.db import table
from syncd.plan import Change


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


# --------------------------------------------------------------------------- field groups (issue 10)
#: History shows field changes, it is not a backup: a value longer than this is cut.
FIELD_VALUE_MAX = 255
FIELD_VALUE_CUT = 240


@dataclass
class FieldHistoryRow:
    """One field of one member, written (role ``field``) or left alone (role ``skipped``) by a
    field pass; ``origin`` is the authority member whose value it took."""

    role: str
    group: str
    blog_id: int
    post_id: int
    sku: str
    field: str  # meta key, 'post:post_title', 'terms:product_cat'
    old_value: str | None
    new_value: str | None
    origin: tuple[int, int]
    note: str | None = None


def clip_field_value(value: str | None) -> str | None:
    """A value for history's 255-character columns: longer ones cut to 240 characters + '…'."""
    if value is None or len(value) <= FIELD_VALUE_MAX:
        return value
    return value[:FIELD_VALUE_CUT] + "…"


def write_field_history(
    conn: sa.Connection,
    base_prefix: str,
    batch_id: int,
    rows: Sequence[FieldHistoryRow],
    now: datetime,
    source: str | None = None,
) -> None:
    """The history rows of one field-pass chunk, in its transaction (``field_group`` set)."""
    if not rows:
        return
    conn.exec_driver_sql(
        f"INSERT INTO {table(base_prefix, 'syncd_history')} (applied_at, batch_id, change_id, captured_at, role, "
        "blog_id, post_id, sku, meta_key, old_value, new_value, delta, origin_blog_id, origin_post_id, note, "
        "source, field_group) VALUES (%s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s)",
        [
            (
                now,
                batch_id,
                now,
                h.role,
                h.blog_id,
                h.post_id,
                (h.sku or "")[:255],
                h.field[:255],
                clip_field_value(h.old_value),
                clip_field_value(h.new_value),
                h.origin[0],
                h.origin[1],
                None if h.note is None else h.note[:255],
                None if source is None else source[:191],
                h.group,
            )
            for h in rows
        ],
    )
