"""What each member held right after the latest pass that wrote a link group's field, from history
(the pass's "merge base"): the members whose values differ from it were edited since.

Why: syncd's stock writes set ``post_modified`` of every member of a group to the same time, so
after a sale "newest" by ``post_modified_gmt`` is a tie, and a field edited on one blog before that
sale would lose to the lowest blog id at the next pass. With a base, the members edited since the
last pass are the candidates, and the newest of them wins.

Values are compared by :func:`syncd.record.field_fingerprint`: the value itself, or ``'#'`` + the
SHA-1 history stores next to a value it cuts at 240 characters, so an edit past that point is seen.
(Rows written before schema 7 have no hash: a long value there compares as changed once, i.e.
that pass chooses as it would without history.)

Per (link group, field): the latest history row (``field`` or ``skipped``, this field group) of
any member gives the pass (``batch_id``) and the value it copied (``new_value``); a member with a
row in that pass held ``new_value`` (``field``) or kept ``old_value`` (``skipped``); one without
held the copied value (it was the authority, or already equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from syncd.db import table

Key = tuple[int, int]


class _Member(Protocol):
    group_id: int
    blog_id: int
    post_id: int
    sku: str

    @property
    def key(self) -> Key: ...


@dataclass(frozen=True)
class HistoryFact:
    id: int
    batch_id: int
    role: str  # field | skipped
    key: Key
    field: str
    old: str | None
    new: str | None


def known_values(
    facts: Iterable[HistoryFact], members: Sequence[_Member]
) -> tuple[dict[Key, dict[str, str | None]], dict[int, dict[str, str | None]]]:
    """Pure: per member, per field with a base, the value it held after the latest pass; and per
    link group the value that pass copied (the base)."""
    group_of = {m.key: m.group_id for m in members}
    latest: dict[tuple[int, str], HistoryFact] = {}
    mine: dict[tuple[int, str, Key], HistoryFact] = {}
    for f in facts:
        gid = group_of.get(f.key)
        if gid is None:
            continue
        if (gid, f.field) not in latest or f.id > latest[(gid, f.field)].id:
            latest[(gid, f.field)] = f
        if (gid, f.field, f.key) not in mine or f.id > mine[(gid, f.field, f.key)].id:
            mine[(gid, f.field, f.key)] = f
    out: dict[Key, dict[str, str | None]] = {}
    bases: dict[int, dict[str, str | None]] = {}
    for (gid, fld), last in latest.items():
        bases.setdefault(gid, {})[fld] = last.new
    for m in members:
        for (gid, fld), last in latest.items():
            if gid != m.group_id:
                continue
            own = mine.get((gid, fld, m.key))
            if own is not None and own.batch_id == last.batch_id:
                value = own.new if own.role == "field" else own.old
            else:
                value = last.new
            out.setdefault(m.key, {})[fld] = value
    return out, bases


def read_facts(
    conn: sa.Connection, base: str, group_name: str, members: Sequence[_Member]
) -> list[HistoryFact]:
    """The history rows of this field group for the members' SKUs (the ``sku`` index)."""
    skus = sorted({m.sku[:255] for m in members})
    if not skus:
        return []
    wanted = {m.key for m in members}
    rows = conn.exec_driver_sql(
        "SELECT id, batch_id, role, blog_id, post_id, meta_key, "
        "IF(old_hash IS NULL, old_value, CONCAT('#', old_hash)), IF(new_hash IS NULL, new_value, CONCAT('#', new_hash)) "
        f"FROM {table(base, 'syncd_history')} WHERE sku IN ({', '.join(['%s'] * len(skus))}) "
        "AND field_group = %s AND role IN ('field', 'skipped')",
        (*skus, group_name),
    ).all()
    return [
        HistoryFact(int(r[0]), int(r[1]), str(r[2]), (int(r[3]), int(r[4])), str(r[5]), r[6], r[7])
        for r in rows
        if (int(r[3]), int(r[4])) in wanted
    ]


def edited_since(
    known: Mapping[Key, Mapping[str, str | None]],
    current: Mapping[Key, Mapping[str, str | None]],
) -> list[Key]:
    """Members whose current value of a field with a base differs from what they held (both as
    the caller normalised them)."""
    return [
        k for k, fields in known.items() if any(current.get(k, {}).get(f) != v for f, v in fields.items())
    ]
