"""Members a manual or scheduled field pass deferred, finished once they have settled (issue 10).

A pass writes nothing into a member WooCommerce saved less than ``sync.settle_seconds`` ago
(:mod:`syncd.fields.inflight`). It records that member here instead, in the pass's transaction
(``{base}syncd_field_defer``: the field group, the authority it took from, the value of each
differing field the member held when the pass looked and the value the pass would have written,
and the pass's history batch), and reports it as *deferred*. The daemon
(:meth:`syncd.daemon.Daemon.settle_due`) finishes it once it has settled, in a transaction of
its own (:func:`finish`):

1. postpones it while it has captured changes of the group's fields waiting for the realtime path;
2. locks the member in the daemon's order (:func:`syncd.fields.sync_pass.lock_members`), and
   postpones it while it (or its parent) is still being saved;
3. per deferred field: a member whose value is no longer the one it held when the pass looked was
   edited after the pass (by the save in flight or later): that newer value is kept (logged
   ``field_kept``); otherwise it takes the pass's value;
4. writes them as the pass would (``FieldGroup.write``: the derived rows too), records history in
   the pass's batch (role ``field``, or ``skipped`` with the reason: the pass's merge base,
   :mod:`syncd.fields.since`, then says the member holds the pass's value) and drops the record.

A record is dropped without a write when the member left the link group or was deleted, its blog
no longer takes part in the group (``[fields.blogs]``), or nothing differs any more. An edit of the
authority made after the pass is newer than the pass's value: the next pass takes it (it is
"edited since the last pass", :mod:`syncd.fields.since`).

A pass that meets the *authority* mid-save copies nothing from it (its values may be half
written): it records every other member with every field it holds and no ``wanted`` values
(:attr:`Deferral.from_authority`). Finishing such a record locks the member and the authority
together (the daemon's order), postpones while either is being saved, and takes the wanted
values from the authority as it is then; it is dropped when the authority left the link group,
was deleted, or its blog no longer takes part in the group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.db import table
from syncd.fields import recheck
from syncd.fields.group import FieldGroup, Target, Value, Values
from syncd.fields.inflight import recent
from syncd.network import Blog
from syncd.record import FieldHistoryRow, write_field_history

log = structlog.get_logger("syncd.fields")

Key = tuple[int, int]
_COLUMNS = (
    "blog_id, post_id, field_group, link_group, sku, origin_blog_id, origin_post_id, batch_id, held, "
    "wanted, deferred_at, attempts, reason, source"
)


@dataclass(frozen=True)
class Deferral:
    """One row of ``{base}syncd_field_defer``."""

    blog_id: int
    post_id: int
    group: str
    link_group: int
    sku: str
    origin: Key
    batch_id: int  # the pass's history batch: the finishing write is recorded in it
    held: Mapping[str, str | None]  # field -> the value (as history shows it) the member held
    wanted: Mapping[str, Value]  # field -> the authority's value the pass would have written
    # (empty: the authority itself was being saved; its values are read once it has settled)
    deferred_at: datetime | None = None
    attempts: int = 0
    reason: str = ""
    source: str | None = None

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)

    @property
    def from_authority(self) -> bool:
        """The pass met its authority mid-save: the values are the authority's once settled."""
        return not self.wanted


def record_sql(base: str, rows: Sequence[Deferral]) -> tuple[str, tuple[Any, ...]]:
    """Insert or replace the records (a later pass's deferral of the same member and group is the
    one that counts: its authority and held values are the newer ones)."""
    marks = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(6), 0, %s, %s)"
    params: list[Any] = []
    for d in rows:
        params += [d.blog_id, d.post_id, d.group, d.link_group, d.sku[:255], *d.origin, d.batch_id]
        params += [_json(d.held), _json(d.wanted), d.reason[:255], d.source]
    sql = (
        f"INSERT INTO {table(base, 'syncd_field_defer')} ({_COLUMNS}) VALUES "
        + ", ".join([marks] * len(rows))
        + " ON DUPLICATE KEY UPDATE link_group = VALUES(link_group), sku = VALUES(sku), "
        "origin_blog_id = VALUES(origin_blog_id), origin_post_id = VALUES(origin_post_id), "
        "batch_id = VALUES(batch_id), held = VALUES(held), wanted = VALUES(wanted), deferred_at = VALUES(deferred_at), attempts = 0, "
        "reason = VALUES(reason), source = VALUES(source)"
    )
    return sql, tuple(params)


def record(conn: sa.Connection, base: str, rows: Sequence[Deferral]) -> None:
    if rows:
        conn.exec_driver_sql(*record_sql(base, rows))


def _json(values: Mapping[str, Value]) -> str:
    return json.dumps(dict(values), sort_keys=True)


def _values(text: str) -> dict[str, Value]:
    """JSON back to values (a term set, a JSON list, is a tuple again)."""
    return {f: tuple(v) if isinstance(v, list) else v for f, v in json.loads(text).items()}


def _row(r: Sequence[Any]) -> Deferral:
    return Deferral(
        int(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4]), (int(r[5]), int(r[6])), int(r[7]),
        json.loads(r[8]), _values(r[9]), r[10], int(r[11]), str(r[12]), r[13],
    )  # fmt: skip


def due(conn: sa.Connection, base: str, settle_seconds: float, limit: int = 50) -> list[Deferral]:
    """Records deferred (or postponed) at least ``settle_seconds`` ago."""
    rows = conn.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM {table(base, 'syncd_field_defer')} "
        "WHERE deferred_at <= UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND "
        "ORDER BY blog_id, post_id, field_group LIMIT %s",
        (int(settle_seconds * 1_000_000), int(limit)),
    ).all()
    return [_row(r) for r in rows]


def pending(conn: sa.Connection, base: str) -> list[Deferral]:
    """Every record (``syncd status``, tests)."""
    rows = conn.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM {table(base, 'syncd_field_defer')} ORDER BY blog_id, post_id, field_group"
    ).all()
    return [_row(r) for r in rows]


def _locked(conn: sa.Connection, base: str, d: Deferral) -> Deferral | None:
    row = conn.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM {table(base, 'syncd_field_defer')} "
        "WHERE blog_id = %s AND post_id = %s AND field_group = %s FOR UPDATE",
        (d.blog_id, d.post_id, d.group),
    ).first()
    return None if row is None else _row(row)


def _drop(conn: sa.Connection, base: str, d: Deferral) -> None:
    conn.exec_driver_sql(
        f"DELETE FROM {table(base, 'syncd_field_defer')} WHERE blog_id = %s AND post_id = %s AND field_group = %s",
        (d.blog_id, d.post_id, d.group),
    )


def _postpone(conn: sa.Connection, base: str, d: Deferral, reason: str) -> None:
    conn.exec_driver_sql(
        f"UPDATE {table(base, 'syncd_field_defer')} SET attempts = attempts + 1, "
        "deferred_at = UTC_TIMESTAMP(6), reason = %s WHERE blog_id = %s AND post_id = %s AND field_group = %s",
        (reason[:255], d.blog_id, d.post_id, d.group),
    )


# --------------------------------------------------------------------------- pure decision
def fields_to_take(group: FieldGroup, d: Deferral, mine: Values) -> tuple[dict[str, Value], list[str]]:
    """(field -> the pass's value, for the deferred fields the member still holds as it did when
    the pass looked and that still differ; the fields edited on the member since: kept)."""
    from syncd.fields.sync_pass import canonical, text_of

    have, want = canonical(group, mine), canonical(group, {**mine, **d.wanted})
    take: dict[str, Value] = {}
    kept: list[str] = []
    for f, was in sorted(d.held.items()):
        if text_of(have.get(f)) != was:
            kept.append(f)
        elif have.get(f) != want.get(f):
            take[f] = d.wanted.get(f)
    return take, kept


# --------------------------------------------------------------------------- finishing one
@dataclass(frozen=True)
class Context:
    """What finishing a record needs from the daemon's running configuration."""

    base: str
    blogs: Mapping[int, Blog]
    groups: Mapping[str, FieldGroup]  # every available group (registry.make_groups)
    settle_seconds: float
    takes_part: Callable[[str, int], bool]  # ``FieldsConfig.takes_part``


def finish(conn: sa.Connection, ctx: Context, item: Deferral) -> str:
    """Finish one record in the caller's transaction: "written", "dropped" or "postponed"."""
    from syncd.audit import Scope
    from syncd.fields.sync_pass import lock_members, member_rows, queued_fields, watched_names

    group = ctx.groups.get(item.group)
    if group is None or not ctx.takes_part(item.group, item.blog_id):
        return _dropped(conn, ctx, item, f"field group {item.group} does not sync this blog")
    if item.blog_id not in ctx.blogs:
        return _postponed(conn, ctx, item, f"blog {item.blog_id} cannot be written now")
    keys = [item.key, item.origin] if item.from_authority else [item.key]
    rows = {m.key: m for m in member_rows(conn, ctx.base, keys) if m.group_id == item.link_group}
    me, auth = rows.get(item.key), rows.get(item.origin) if item.from_authority else None
    if me is None:
        return _dropped(conn, ctx, item, "the member left its link group")
    if item.from_authority:
        if auth is None or not ctx.takes_part(item.group, auth.blog_id):
            return _dropped(conn, ctx, item, "its authority left the link group or this field group")
        if auth.blog_id not in ctx.blogs:
            return _postponed(conn, ctx, item, f"its authority's blog {auth.blog_id} cannot be read now")
    both = [me] + ([auth] if auth is not None else [])
    queued = queued_fields(conn, ctx.base, both)
    if any(watched_names(group) & queued.get(m.key, set()) for m in both):
        return _postponed(conn, ctx, item, "captured changes of these fields wait for the realtime path")
    locked = lock_members(conn, Scope(ctx.base, dict(ctx.blogs)), both)
    if any(m.key not in locked for m in both):
        return _dropped(conn, ctx, item, "the member or its authority was deleted")
    now = _locked(conn, ctx.base, item)  # after the product rows, as the pass records it
    if now is None:
        return "dropped"
    posts: dict[int, set[int]] = {}
    for m in both:
        posts.setdefault(m.blog_id, set()).update({m.post_id, m.parent_id} - {0})
    if recent(conn, ctx.base, posts, ctx.blogs, ctx.settle_seconds):
        return _postponed(conn, ctx, now, "still being saved" + (" (or its authority)" if auth else ""))
    if auth is not None:
        theirs = group.read(conn, ctx.blogs[auth.blog_id], [auth.post_id]).get(auth.post_id)
        if theirs is None:
            return _dropped(conn, ctx, now, "its authority is not readable")
        now = replace(now, wanted={f: theirs[f] for f in now.held if f in theirs})
    return _write(conn, ctx, group, now, me)


def _write(conn: sa.Connection, ctx: Context, group: FieldGroup, d: Deferral, me: Any) -> str:
    """The pass's values of the fields the member still holds as the pass saw them."""
    mine = group.read(conn, ctx.blogs[d.blog_id], [d.post_id]).get(d.post_id)
    if mine is None:
        return _dropped(conn, ctx, d, "the member is not readable")
    take, kept = fields_to_take(group, d, mine)
    why_kept = "edited after the pass deferred it: its newer value is kept"
    for f in kept:  # no history row: the pass's batch still says what the member held
        log.info(
            "field_kept", group=d.group, blog=d.blog_id, post=d.post_id, sku=d.sku, field=f, reason=why_kept
        )
    wanted = {**mine, **take}
    bad = group.problems(wanted) if take else []
    history: list[FieldHistoryRow] = []
    if bad:
        why = "; ".join(f"{f}: {r}" for f, r in bad)
        history += [_row_of(d, "skipped", f, mine, wanted, f"bad value, not written: {why}") for f in take]
    elif take:
        target = Target(ctx.blogs[d.blog_id], d.post_id, d.sku, me.post_type, me.parent_id)
        refused = {p.field: p.reason for p in group.write(conn, target, mine, wanted)}
        if recheck.rederives(group):
            recheck.record(conn, ctx.base, d.group, [d.key])
        note = f"{d.group} pass, deferred while saved, written once settled"
        history += [
            _row_of(d, "skipped" if f in refused else "field", f, mine, wanted, refused.get(f, note))
            for f in take
        ]
    _drop(conn, ctx.base, d)
    now = datetime.now(UTC).replace(tzinfo=None)
    write_field_history(conn, ctx.base, d.batch_id, history, now, d.source)
    for h in history:
        event = "field_synced" if h.role == "field" else "field_skipped"
        log.info(event, group=d.group, blog=d.blog_id, post=d.post_id, sku=d.sku, field=h.field, note=h.note)
    return "written" if any(h.role == "field" for h in history) else "dropped"


def _row_of(d: Deferral, role: str, f: str, mine: Values, wanted: Values, note: str) -> FieldHistoryRow:
    from syncd.fields.sync_pass import text_of

    old, new = text_of(mine.get(f)), text_of(wanted.get(f))
    return FieldHistoryRow(role, d.group, d.blog_id, d.post_id, d.sku, f, old, new, d.origin, note)


def _dropped(conn: sa.Connection, ctx: Context, d: Deferral, reason: str) -> str:
    _drop(conn, ctx.base, d)
    log.info(
        "field_deferral_dropped", group=d.group, blog=d.blog_id, post=d.post_id, sku=d.sku, reason=reason
    )
    return "dropped"


def _postponed(conn: sa.Connection, ctx: Context, d: Deferral, reason: str) -> str:
    _postpone(conn, ctx.base, d, reason)
    log.info(
        "field_deferral_postponed", group=d.group, blog=d.blog_id, post=d.post_id, sku=d.sku, reason=reason
    )
    return "postponed"


def forget(conn: sa.Connection, base: str, written: Sequence[tuple[str, int, int]]) -> None:
    """Drop the records of (group, blog, post) a pass has just written: done with."""
    if written:
        conn.exec_driver_sql(
            f"DELETE FROM {table(base, 'syncd_field_defer')} WHERE (field_group, blog_id, post_id) "
            f"IN ({', '.join(['(%s, %s, %s)'] * len(written))})",
            tuple(v for w in written for v in w),
        )
