"""Record: syncd's history of what it applied (``{base}syncd_history``), written in the same
transaction as the writes it describes: one ``origin`` row per captured change, one ``copy`` row
per member written because of it, one ``skipped`` row (with the reason) per member left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd.db import table
from syncd.plan import BACKORDERS, LOW_STOCK, MANAGE, STATUS, STOCK, Change, Key, Member, MemberWrite, Note


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


# -- registers: last captured wins across batches ({base}syncd_register) -----------------------

#: Keys whose changes are last-captured-wins values (a manual ``_stock_status`` is one).
REGISTER_KEYS = (MANAGE, BACKORDERS, LOW_STOCK, STATUS)
#: Keys whose newest applied change is kept per group: the registers, and ``_stock`` (an
#: importer's absolute set older than a sale already applied must not overwrite it).
TRACKED_KEYS = (*REGISTER_KEYS, STOCK)


def _tracked(c: Change) -> bool:
    """Watched for lateness: register changes, and ``_stock`` inserts (absolute sets)."""
    return c.meta_key in REGISTER_KEYS or (c.meta_key == STOCK and c.op == "I")


def _group_of(groups: Mapping[Key, Sequence[Member]], key: Key) -> int | None:
    me = next((m for m in groups.get(key, ()) if m.key == key), None)
    return me.group_id if me is not None else None


def superseded(
    conn: sa.Connection, base_prefix: str, changes: Sequence[Change], groups: Mapping[Key, Sequence[Member]]
) -> dict[int, int]:
    """Register changes older than the newest change of the same key its link group already took
    in an earlier batch: change id -> that newer change's id. Such a change arrives late (its
    blog was held, it was a dead letter retried, or it committed after a later-captured one) and
    must not overwrite the newer value. One read, only when the batch holds register changes."""
    asked: dict[tuple[int, str], list[Change]] = {}
    for c in changes:
        group = _group_of(groups, c.key) if _tracked(c) else None
        if group is not None:
            asked.setdefault((group, c.meta_key), []).append(c)
    if not asked:
        return {}
    where = " OR ".join(["(group_id = %s AND meta_key = %s)"] * len(asked))
    params = tuple(v for pair in sorted(asked) for v in pair)
    rows = conn.exec_driver_sql(
        f"SELECT group_id, meta_key, change_id FROM {table(base_prefix, 'syncd_register')} WHERE {where}",
        params,
    ).all()
    out: dict[int, int] = {}
    for group, key, newest in rows:
        for c in asked.get((int(group), str(key)), ()):
            if c.id < int(newest):
                out[c.id] = int(newest)
    return out


def advance_registers(
    conn: sa.Connection,
    base_prefix: str,
    applied: Sequence[Change],
    writes: Sequence[MemberWrite],
    groups: Mapping[Key, Sequence[Member]],
) -> None:
    """After the batch's writes: each applied register or stock change becomes the newest its
    origin's group and every group it was written into has taken (in the same transaction)."""
    newest: dict[tuple[int, str], int] = {}

    def take(group: int | None, c: Change) -> None:
        if group is not None and c.meta_key in TRACKED_KEYS:
            newest[(group, c.meta_key)] = max(c.id, newest.get((group, c.meta_key), 0))

    by_id = {c.id: c for c in applied}
    for c in applied:
        take(_group_of(groups, c.key), c)
    for w in writes:
        for cid in w.change_ids:
            if cid in by_id:
                take(_group_of(groups, w.key), by_id[cid])
    if not newest:
        return
    conn.exec_driver_sql(
        f"INSERT INTO {table(base_prefix, 'syncd_register')} (group_id, meta_key, change_id) VALUES "
        + ", ".join(["(%s, %s, %s)"] * len(newest))
        + " ON DUPLICATE KEY UPDATE change_id = GREATEST(change_id, VALUES(change_id))",
        tuple(v for (g, k), cid in sorted(newest.items()) for v in (g, k, cid)),
    )


def late_set_bases(
    conn: sa.Connection, base_prefix: str, changes: Sequence[Change], superseded: Mapping[int, int]
) -> dict[int, str | None]:
    """For each superseded ``_stock`` insert (an importer's absolute set arriving late): the value
    the importer's delete of that row removed just before, from this batch or, when the delete
    was applied in an earlier batch, from its ``origin`` history row (searched backwards from the
    insert's id on the ``change_id`` index, within 100,000 ids: the delete is right before it)."""
    out: dict[int, str | None] = {}
    for c in changes:
        if c.id not in superseded or c.meta_key != STOCK or c.op != "I":
            continue
        deletes = [
            d for d in changes if d.key == c.key and d.meta_key == STOCK and d.op == "D" and d.id < c.id
        ]
        if deletes:
            out[c.id] = max(deletes, key=lambda d: d.id).old_value
            continue
        out[c.id] = conn.exec_driver_sql(
            f"SELECT old_value FROM {table(base_prefix, 'syncd_history')} WHERE change_id < %s AND change_id > %s "
            "AND role = 'origin' AND meta_key = %s AND blog_id = %s AND post_id = %s AND new_value IS NULL "
            "ORDER BY change_id DESC LIMIT 1",
            (c.id, c.id - 100_000, STOCK, c.blog_id, c.post_id),
        ).scalar()
    return out
