"""Settling: products that syncd must not write into yet.

A WooCommerce save (product creation, an admin save, an import) is many autocommit statements sent
over tens of milliseconds by a PHP process that read the product's meta cache first: for each key
it checks ``SELECT meta_id ... WHERE meta_key = K AND post_id = P`` and then INSERTs or UPDATEs. A
row syncd inserted between that check and the INSERT is inserted a second time by WooCommerce
(two ``_stock`` rows: every later sale is counted twice), and a row syncd inserted before the
save's ``delete_post_meta`` of a key it holds empty is deleted again (the windows are listed, per
statement, in the recorded traces of ``shared/fixtures/woocommerce-11/traces``). So:

* a product that **joins** its link group (created, untrashed, SKU added) is recorded here with
  kind ``join`` and is *frozen*: syncd writes nothing into it (not even its derived data), its own
  changes are not propagated, and its own sales (``_stock`` updates between numbers) are summed
  in ``stock_delta``. Once no change of it has been captured for ``sync.settle_seconds`` and none
  is queued, :func:`due` hands it to the apply step (``Applier.settle``), which in one transaction
  gives it the group's stock and settings plus its own sales, and gives the others its own sales;
* a linked member whose copy could not be written safely (it lacks a row that every WooCommerce
  product has - it is being created or imported - or its derived step failed) is recorded with
  kind ``heal``; it keeps receiving changes, and once settled it takes the group's values the same
  way and its derived data is recomputed.

Every function here builds or runs one statement with bound parameters; the caller owns the
transaction (records are written in the apply transaction, so they are exactly as durable as the
batch that made them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.db import errno_of, keys_where, table
from syncd.plan import Change, Key, Member, member_of

log = structlog.get_logger("syncd.settle")

JOIN = "join"
HEAL = "heal"


@dataclass(frozen=True)
class Settling:
    """One row of ``{base}syncd_settle``."""

    blog_id: int
    post_id: int
    kind: str
    stock_delta: Decimal
    last_change_at: datetime
    attempts: int
    reason: str
    copy_values: bool = True  # a heal: True takes the group's values, False adds stock_delta

    @property
    def adds_deltas(self) -> bool:
        """A heal of a member that missed only sales while its blog was not live."""
        return self.kind == HEAL and not self.copy_values

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass(frozen=True)
class Record:
    """What the apply step asks to record: a join or a heal of one product."""

    blog_id: int
    post_id: int
    kind: str
    stock_delta: Decimal = Decimal(0)
    last_change_at: datetime | None = None  # None: now (the server's clock)
    reason: str = ""
    #: A heal: take the group's values (True), or only add ``stock_delta``, the sales this member
    #: missed (False). Records of one product merge: one that must copy makes the heal copy.
    copy_values: bool = True

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


#: The columns a :class:`Settling` is read from, in its fields' order (:func:`_settling`).
_COLUMNS = (
    "blog_id",
    "post_id",
    "kind",
    "stock_delta",
    "last_change_at",
    "attempts",
    "reason",
    "copy_values",
)


def _settling(row: Sequence[Any]) -> Settling:
    b, p, k, d, at, n, r, c = row
    return Settling(int(b), int(p), str(k), Decimal(d), at, int(n), str(r), bool(c))


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def frozen(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> set[Key]:
    return {(int(b), int(p)) for b, p in conn.exec_driver_sql(*frozen_sql(base_prefix, keys))}


def frozen_sql(base_prefix: str, keys: Iterable[Key]) -> tuple[str, tuple[Any, ...]]:
    """Which of ``keys`` are joining (frozen): ``SELECT blog_id, post_id``."""
    where, params = keys_where(keys)
    return (
        f"SELECT blog_id, post_id FROM {table(base_prefix, 'syncd_settle')} WHERE kind = 'join' AND ({where})",
        tuple(params),
    )


def waiting(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` are settling, of any kind (joining, or behind their group until healed)."""
    where, params = keys_where(keys)
    return {
        (int(b), int(p))
        for b, p in conn.exec_driver_sql(
            f"SELECT blog_id, post_id FROM {table(base_prefix, 'syncd_settle')} WHERE {where}", tuple(params)
        )
    }


def heals(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> dict[Key, tuple[bool, Decimal]]:
    """The heal records of ``keys``: product -> (takes its group's values, missed stock deltas).
    Read after the caller locked the products' stock rows: a batch that adds to one waits."""
    keys = list(keys)
    if not keys:
        return {}
    where, params = keys_where(keys)
    return {
        (int(b), int(p)): (bool(c), Decimal(d))
        for b, p, c, d in conn.exec_driver_sql(
            f"SELECT blog_id, post_id, copy_values, stock_delta FROM {table(base_prefix, 'syncd_settle')} "
            f"WHERE kind = 'heal' AND ({where})",
            tuple(params),
        )
    }


def record_sql(base_prefix: str, records: Sequence[Record]) -> tuple[str, tuple[Any, ...]]:
    """Insert or extend records: deltas add up, a copy wins over deltas alone, the newest change
    time wins, attempts restart."""
    rows, params = [], []
    for r in records:
        rows.append("(%s, %s, %s, %s, %s, COALESCE(%s, UTC_TIMESTAMP(6)), UTC_TIMESTAMP(6), %s)")
        params += [
            r.blog_id,
            r.post_id,
            r.kind,
            r.stock_delta,
            int(r.copy_values),
            r.last_change_at,
            r.reason[:255],
        ]
    sql = (
        f"INSERT INTO {table(base_prefix, 'syncd_settle')} "
        "(blog_id, post_id, kind, stock_delta, copy_values, last_change_at, queued_at, reason) VALUES "
        + ", ".join(rows)
        + " ON DUPLICATE KEY UPDATE stock_delta = stock_delta + VALUES(stock_delta), "
        "copy_values = GREATEST(copy_values, VALUES(copy_values)), "
        "last_change_at = GREATEST(last_change_at, VALUES(last_change_at)), reason = VALUES(reason)"
    )
    return sql, tuple(params)


def record(conn: sa.Connection, base_prefix: str, records: Sequence[Record]) -> None:
    if records:
        conn.exec_driver_sql(*record_sql(base_prefix, records))


def due_sql(base_prefix: str, settle_seconds: float, limit: int) -> tuple[str, tuple[Any, ...]]:
    """Records whose product has been quiet for ``settle_seconds`` and has no queued change."""
    return (
        f"SELECT {', '.join('s.' + c for c in _COLUMNS)} FROM {table(base_prefix, 'syncd_settle')} s "
        "WHERE s.last_change_at <= UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND "
        f"AND NOT EXISTS (SELECT 1 FROM {table(base_prefix, 'syncd_change')} c "
        "WHERE c.blog_id = s.blog_id AND c.post_id = s.post_id) "
        "ORDER BY s.blog_id, s.post_id, s.kind LIMIT %s",
        (int(settle_seconds * 1_000_000), int(limit)),
    )


def due(conn: sa.Connection, base_prefix: str, settle_seconds: float, limit: int = 50) -> list[Settling]:
    return [_settling(row) for row in conn.exec_driver_sql(*due_sql(base_prefix, settle_seconds, limit))]


def lock(conn: sa.Connection, base_prefix: str, item: Settling) -> Settling | None:
    """The record as it is now, locked (taken after the product's stock rows, like the apply
    step records it): a batch that added a sale to it meanwhile is counted, never lost."""
    row = conn.exec_driver_sql(
        f"SELECT {', '.join(_COLUMNS)} FROM {table(base_prefix, 'syncd_settle')} "
        "WHERE blog_id = %s AND post_id = %s AND kind = %s FOR UPDATE",
        (item.blog_id, item.post_id, item.kind),
    ).first()
    return None if row is None else _settling(row)


def remove(conn: sa.Connection, base_prefix: str, item: Settling) -> None:
    conn.exec_driver_sql(
        f"DELETE FROM {table(base_prefix, 'syncd_settle')} WHERE blog_id = %s AND post_id = %s AND kind = %s",
        (item.blog_id, item.post_id, item.kind),
    )


def copy_instead(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> None:
    """An absolute stock value was written into (or set by) ``keys``: the sales a queued heal of
    theirs would add are older than that value, which the group holds too, so each heal takes its
    group's values instead (a member healed by deltas after an import set everyone's stock would
    end the import's value minus sales that came before it)."""
    keys = list(keys)
    if keys:
        where, params = keys_where(keys)
        conn.exec_driver_sql(
            f"UPDATE {table(base_prefix, 'syncd_settle')} SET copy_values = 1 "
            f"WHERE kind = 'heal' AND copy_values = 0 AND ({where})",
            tuple(params),
        )


def consume(conn: sa.Connection, base_prefix: str, item: Settling) -> None:
    """A heal that wrote (its sales included) but must come back for the rest (its fields wait,
    or its derived step failed): it keeps no sale it has received. Sales added to it since it was
    locked (:func:`lock`) cannot exist: a batch that adds one waits for that lock."""
    conn.exec_driver_sql(
        f"UPDATE {table(base_prefix, 'syncd_settle')} SET stock_delta = stock_delta - %s, attempts = attempts + 1 "
        "WHERE blog_id = %s AND post_id = %s AND kind = %s",
        (item.stock_delta, item.blog_id, item.post_id, item.kind),
    )


def postpone(
    conn: sa.Connection, base_prefix: str, item: Settling, reason: str, *, restart: bool = True
) -> None:
    """Not now. ``restart``: the product may still be being written (a row is missing, its blog is
    not usable): it must be quiet for ``settle_seconds`` again. Otherwise (its group has changes
    queued, applied within milliseconds) it is due again as soon as they are."""
    conn.exec_driver_sql(
        f"UPDATE {table(base_prefix, 'syncd_settle')} SET attempts = attempts + 1, "
        f"last_change_at = {'UTC_TIMESTAMP(6)' if restart else 'last_change_at'}, reason = %s "
        "WHERE blog_id = %s AND post_id = %s AND kind = %s",
        (reason[:255], item.blog_id, item.post_id, item.kind),
    )


def counts(conn: sa.Connection, base_prefix: str) -> dict[str, int]:
    """kind -> how many products are settling (for `syncd status`; {} before schema 3)."""
    try:
        with conn.begin_nested():
            rows = conn.exec_driver_sql(
                f"SELECT kind, COUNT(*) FROM {table(base_prefix, 'syncd_settle')} GROUP BY kind"
            ).all()
    except sa.exc.DBAPIError as exc:
        if errno_of(exc) != 1146:  # an installation not upgraded yet: nothing is settling
            raise
        return {}
    return {str(k): int(n) for k, n in rows}


def queued(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> int:
    """How many captured changes of ``keys`` wait in the queue (a plain read: under READ
    COMMITTED, after the caller locked the products' stock rows, nothing new can commit for them)."""
    where, params = keys_where(keys)
    return int(
        conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM {table(base_prefix, 'syncd_change')} WHERE {where}", tuple(params)
        ).scalar_one()
    )


def queued_rows(
    conn: sa.Connection, base_prefix: str, keys: Iterable[Key]
) -> list[tuple[int, Key, str, str]]:
    """(id, product, meta_key, op) of the captured changes of ``keys`` waiting in the queue (see
    :func:`queued`), in capture order."""
    text, params = queued_rows_sql(base_prefix, keys)
    return parse_queued_rows(conn.exec_driver_sql(text, tuple(params)))


def queued_rows_sql(base_prefix: str, keys: Iterable[Key]) -> tuple[str, list[Any]]:
    """:func:`queued_rows`' read, to be sent with other statements (:func:`syncd.db.run_many`)."""
    where, params = keys_where(keys)
    return (
        f"SELECT id, blog_id, post_id, meta_key, op FROM {table(base_prefix, 'syncd_change')} WHERE {where} ORDER BY id",
        params,
    )


def parse_queued_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[int, Key, str, str]]:
    return [(int(i), (int(b), int(p)), str(k), str(o)) for i, b, p, k, o in rows]


def batch_records(
    changes: Sequence[Change],
    joining: set[Key],
    frozen: set[Key],
    deltas: Mapping[Key, Decimal],
    groups: Mapping[Key, Sequence[Member]],
) -> list[Record]:
    """The join records this batch writes: new joiners, and settling products it saw change
    (their own sales add up, and their quiet period starts again)."""
    newest: dict[Key, datetime | None] = {}
    for c in changes:
        if c.key in frozen:
            at = newest.get(c.key)
            newest[c.key] = c.captured_at if at is None or (c.captured_at and c.captured_at > at) else at
    out = []
    for key in sorted(newest):
        if key in joining:
            me = member_of(groups, key)
            log.info(
                "member_settling",
                blog=key[0],
                post=key[1],
                sku=me.sku if me else "",
                group=me.group_id if me else None,
                rule="joins its group once WooCommerce has finished writing it (sync.settle_seconds)",
            )
        out.append(Record(key[0], key[1], JOIN, deltas.get(key, Decimal(0)), newest[key]))
    return out
