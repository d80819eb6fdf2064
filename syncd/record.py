"""Record: syncd's history of what it applied (``{base}syncd_history``), written in the same
transaction as the writes it describes: one ``origin`` row per captured change, one ``copy`` row
per member written because of it, one ``skipped`` row (with the reason) per member left alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd.db import keys_where, run_many, table
from syncd.plan import (
    BACKORDERS,
    FAN_OUT_NOTE,
    LOW_STOCK,
    MANAGE,
    SKU,
    STATUS,
    STOCK,
    Change,
    FieldWrite,
    Key,
    Member,
    MemberWrite,
    Note,
    member_of,
)


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
    field_group: str | None = None  # a realtime field group's row (None: stock)


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


#: History rows per INSERT: a 500-change batch on 10 blogs writes 5,000 rows of 16 values, sent
#: as a few multi-row statements in one round trip (:func:`syncd.db.run_many`; values at most
#: ~1.3 KB per row, so a statement stays far below any max_allowed_packet).
HISTORY_ROWS_PER_INSERT = 500
_HISTORY_COLUMNS = (
    "applied_at, batch_id, change_id, captured_at, role, blog_id, post_id, sku, meta_key, old_value, "
    "new_value, delta, origin_blog_id, origin_post_id, note, field_group"
)


def write_history(
    conn: sa.Connection, base_prefix: str, batch_id: int, rows: Sequence[HistoryRow], now: datetime
) -> None:
    """Every history row of one unit of work, in its transaction."""
    if not rows:
        return
    values = [
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
            _clip(h.old_value) if h.field_group is None else clip_field_value(h.old_value),
            _clip(h.new_value) if h.field_group is None else clip_field_value(h.new_value),
            h.delta,
            h.change.blog_id,
            h.change.post_id,
            h.note,
            h.field_group,
        )
        for h in rows
    ]
    head = f"INSERT INTO {table(base_prefix, 'syncd_history')} ({_HISTORY_COLUMNS}) VALUES "
    row = "(" + ", ".join(["%s"] * 16) + ")"
    statements = []
    for i in range(0, len(values), HISTORY_ROWS_PER_INSERT):
        chunk = values[i : i + HISTORY_ROWS_PER_INSERT]
        statements.append((head + ", ".join([row] * len(chunk)), [v for r in chunk for v in r]))
    run_many(conn, statements)


def _clip(v: str | None) -> str | None:
    return None if v is None else v[:255]


#: syncd_meta: the newest ``applied_at`` history pruning may have removed rows before (UTC).
HISTORY_PRUNED_BEFORE = "history_pruned_before"


# -- registers: last captured wins across batches ({base}syncd_register) -----------------------

#: Keys whose changes are last-captured-wins values (a manual ``_stock_status`` is one).
REGISTER_KEYS = (MANAGE, BACKORDERS, LOW_STOCK, STATUS)
#: Keys whose newest applied change is kept per group: the registers, ``_sku`` (renames), and
#: ``_stock``: an importer's absolute set older than a sale already applied must not overwrite it.
TRACKED_KEYS = (*REGISTER_KEYS, STOCK, SKU)
#: The newest applied absolute ``_stock`` set per group: a sale captured before it and applied
#: after it (a held blog's) is already part of the value it set.
STOCK_SET_MARK = "_stock:set"


def _is_set(c: Change) -> bool:
    """An absolute ``_stock`` value: an inserted row (importer), or a value from SQL NULL."""
    return c.meta_key == STOCK and (c.op == "I" or c.old_value is None)


def _watermark(c: Change, fields: Collection[str] = ()) -> str | None:
    """The watermark a change is checked against for lateness (None: it never is late)."""
    if c.meta_key in REGISTER_KEYS or c.meta_key in fields or (c.meta_key == SKU and c.op == "U"):
        return c.meta_key
    if c.meta_key == STOCK and c.op != "D":
        return STOCK if _is_set(c) else STOCK_SET_MARK
    return None


def _group_of(groups: Mapping[Key, Sequence[Member]], key: Key) -> int | None:
    me = member_of(groups, key)
    return me.group_id if me is not None else None


def superseded(
    conn: sa.Connection,
    base_prefix: str,
    changes: Sequence[Change],
    groups: Mapping[Key, Sequence[Member]],
    fields: Collection[str] = (),
) -> dict[int, int]:
    """Register changes older than the newest change of the same key its link group already took
    in an earlier batch: change id -> that newer change's id. Such a change arrives late (its
    blog was held, it was a dead letter retried, or it committed after a later-captured one) and
    must not overwrite the newer value. One read, only when the batch holds register changes.
    ``fields``: the realtime field groups' change keys (registers too)."""
    query = superseded_query(base_prefix, changes, groups, fields)
    if query is None:
        return {}
    return query.answer(conn.exec_driver_sql(query.sql, query.params).all())


@dataclass(frozen=True)
class SupersededQuery:
    """The read of :func:`superseded`, to be sent with other statements (:func:`syncd.db.run_many`)."""

    sql: str
    params: tuple[Any, ...]
    asked: Mapping[tuple[int, str], Sequence[Change]]

    def answer(self, rows: Sequence[Sequence[Any]]) -> dict[int, int]:
        out: dict[int, int] = {}
        for group, key, newest in rows:
            for c in self.asked.get((int(group), str(key)), ()):
                if c.id < int(newest):
                    out[c.id] = int(newest)
        return out


def superseded_query(
    base_prefix: str,
    changes: Sequence[Change],
    groups: Mapping[Key, Sequence[Member]],
    fields: Collection[str] = (),
) -> SupersededQuery | None:
    """:func:`superseded`'s read, or None when the batch asks nothing."""
    asked: dict[tuple[int, str], list[Change]] = {}
    for c in changes:
        mark = _watermark(c, fields)
        group = _group_of(groups, c.key) if mark is not None else None
        if group is not None and mark is not None:
            asked.setdefault((group, mark), []).append(c)
    if not asked:
        return None
    where = " OR ".join(["(group_id = %s AND meta_key = %s)"] * len(asked))
    params = tuple(v for pair in sorted(asked) for v in pair)
    return SupersededQuery(
        f"SELECT group_id, meta_key, change_id FROM {table(base_prefix, 'syncd_register')} WHERE {where}",
        params,
        asked,
    )


def advance_registers(
    conn: sa.Connection,
    base_prefix: str,
    applied: Sequence[Change],
    writes: Sequence[MemberWrite | FieldWrite],
    groups: Mapping[Key, Sequence[Member]],
    fields: Collection[str] = (),
) -> None:
    """After the batch's writes: each applied register or stock change becomes the newest its
    origin's group and every group it was written into has taken (in the same transaction)."""
    newest: dict[tuple[int, str], int] = {}

    def take(group: int | None, c: Change) -> None:
        if group is None or (c.meta_key not in TRACKED_KEYS and c.meta_key not in fields):
            return
        for mark in (c.meta_key, STOCK_SET_MARK) if _is_set(c) else (c.meta_key,):
            newest[(group, mark)] = max(c.id, newest.get((group, mark), 0))

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


def register_origins(
    conn: sa.Connection, base_prefix: str, group_id: int | None, keys: Collection[str]
) -> dict[str, Key]:
    """For each of ``keys`` (realtime field change keys) the member whose change the link group
    took last (its register, and that change's ``origin`` history row): who holds the group's
    value as realtime left it. Keys without a register (or whose history was pruned) are absent."""
    if group_id is None or not keys:
        return {}
    rows = conn.exec_driver_sql(
        f"SELECT r.meta_key, h.blog_id, h.post_id FROM {table(base_prefix, 'syncd_register')} r "
        f"JOIN {table(base_prefix, 'syncd_history')} h ON h.change_id = r.change_id AND h.role = 'origin' "
        f"WHERE r.group_id = %s AND r.meta_key IN ({', '.join(['%s'] * len(keys))})",
        (group_id, *sorted(keys)),
    ).all()
    return {str(k): (int(b), int(p)) for k, b, p in rows}


def late_sets(
    conn: sa.Connection,
    base_prefix: str,
    changes: Sequence[Change],
    superseded: Mapping[int, int],
    groups: Mapping[Key, Sequence[Member]],
) -> dict[int, Decimal]:
    """For each superseded ``_stock`` insert (an importer's absolute set arriving late, e.g. from a
    held blog): the sum of the stock deltas of its group captured after it and already applied,
    read from their ``origin`` history rows (a translation fan-out's absorbed rows aside), so that
    the set's value plus that sum is what capture order gives. Left out (superseded like a
    register) when an absolute set of the group was applied after it, or when history no longer
    reaches back to its capture (rows applied before ``history_pruned_before`` are gone)."""
    out: dict[int, Decimal] = {}
    hist, meta = table(base_prefix, "syncd_history"), table(base_prefix, "syncd_meta")
    for c in changes:
        if c.id not in superseded or c.meta_key != STOCK or c.op != "I":
            continue
        members = sorted({m.key for m in groups.get(c.key, ()) if m.state == "linked"} | {c.key})
        where, params = keys_where(members)
        total, sets, reaches = conn.exec_driver_sql(
            f"SELECT SUM(delta), SUM(delta IS NULL AND new_value IS NOT NULL), "
            f"COALESCE((SELECT CAST(value AS DATETIME(6)) FROM {meta} WHERE name = %s) <= %s, TRUE) "
            f"FROM {hist} WHERE change_id > %s "
            "AND role = 'origin' AND meta_key = %s AND (note IS NULL OR note NOT LIKE %s) "
            f"AND ({where})",
            (HISTORY_PRUNED_BEFORE, c.captured_at, c.id, STOCK, FAN_OUT_NOTE + "%", *params),
        ).one()
        if reaches and not sets:
            out[c.id] = Decimal(total or 0)
    return out


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


def field_value_hash(value: str | None) -> str | None:
    """SHA-1 (hex) of a value history cuts (:func:`clip_field_value`), stored next to the cut text
    (``old_hash``/``new_hash``): two long values that differ only after the cut are told apart.
    None for a value history keeps whole."""
    if value is None or len(value) <= FIELD_VALUE_MAX:
        return None
    return hashlib.sha1(value.encode("utf-8")).hexdigest()  # noqa: S324 - an identity, not a secret


def field_fingerprint(value: str | None) -> str | None:
    """What the field pass compares a value by against history (syncd.fields.since): the value
    itself when history keeps it whole, else ``'#'`` + :func:`field_value_hash`."""
    digest = field_value_hash(value)
    return value if digest is None else "#" + digest


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
        "source, field_group, old_hash, new_hash) "
        "VALUES (%s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s, %s, %s)",
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
                field_value_hash(h.old_value),
                field_value_hash(h.new_value),
            )
            for h in rows
        ],
    )
