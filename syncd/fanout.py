"""Polylang for WooCommerce's per-translation stock copies, across batches (``{base}syncd_fanout``).

On a blog whose translations share stock, an admin's stock edit of BOOK (en) 7 -> 12 is followed a
few milliseconds later, on the same connection, by the add-on's own statement writing BOOK (fr)
7 -> 12. Both are one change of one stock. When the copy is captured in the same batch the planner
absorbs it (:func:`syncd.plan._collapse_fan_out`); when a batch boundary or the poll interval
falls between the two, the batch that applied the original records which translations will copy
it, and the batch that sees the copy finds it here. Whatever the batch boundaries: counted once.

Records are written and deleted in the apply transaction; ones never met (the add-on did not copy,
e.g. the translation already held the value) are pruned after :data:`KEEP_HOURS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from syncd.db import keys_where, table
from syncd.plan import CopyExpected, Key

KEEP_HOURS = 1
_COLS = "blog_id, post_id, conn_id, old_value, new_value, change_id"


def expected(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> list[CopyExpected]:
    """The copies expected on ``keys`` (the batch's origins on sharing blogs)."""
    where, params = keys_where(keys)
    if not params:
        return []
    rows = conn.exec_driver_sql(
        f"SELECT {_COLS} FROM {table(base_prefix, 'syncd_fanout')} WHERE {where} ORDER BY change_id",
        tuple(params),
    )
    return [CopyExpected(int(b), int(p), int(c), o, n, int(i)) for b, p, c, o, n, i in rows]


def record(
    conn: sa.Connection, base_prefix: str, expect: Sequence[CopyExpected], met: Sequence[CopyExpected]
) -> None:
    t = table(base_prefix, "syncd_fanout")
    for e in met:
        conn.exec_driver_sql(
            f"DELETE FROM {t} WHERE blog_id = %s AND post_id = %s AND conn_id = %s AND change_id = %s",
            (e.blog_id, e.post_id, e.conn_id, e.change_id),
        )
    if expect:
        conn.exec_driver_sql(
            f"INSERT IGNORE INTO {t} ({_COLS}, created_at) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(6))"] * len(expect)),
            tuple(
                v
                for e in expect
                for v in (e.blog_id, e.post_id, e.conn_id, e.old_value, e.new_value, e.change_id)
            ),
        )


def prune(conn: sa.Connection, base_prefix: str) -> int:
    return conn.exec_driver_sql(
        f"DELETE FROM {table(base_prefix, 'syncd_fanout')} WHERE created_at < UTC_TIMESTAMP(6) - INTERVAL %s HOUR",
        (KEEP_HOURS,),
    ).rowcount
