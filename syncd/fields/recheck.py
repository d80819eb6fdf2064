"""Derived rows a WooCommerce save may have overwritten after syncd wrote a field group, derived
again once the product has settled (issue 10; trace 09, window 48 -> 54).

A WooCommerce save loads the product (trace 09: the meta cache read 48) and only later records
itself (``UPDATE posts SET post_modified`` 54). A field write syncd makes in between is not held
back by the in-flight rule (:mod:`syncd.fields.inflight`: nothing says a save is running yet), and
the save, which does not see it, ends by writing what it derives from the values it loaded:
``handle_updated_props()`` sets ``_price`` from its in-memory sale price, dates and regular price
(89), and the lookup row follows (92). A sale date syncd copied in that window is then in the
database while ``_price`` says the sale runs.

So every product a group with ``rederive`` (the price group) was written into is recorded here
(``{base}syncd_field_check``, in the write's transaction) and, once it has been quiet for
``sync.settle_seconds`` (:func:`finish`, from the daemon's settle step): locked in the daemon's
order, postponed while it (or its parent) is being saved or has captured changes of the group
queued, then ``group.rederive`` derives its rows again from its own values where they differ
(logged ``field_rederived``). A product whose rows agree is only dropped from the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import structlog

from syncd.db import table
from syncd.fields.group import FieldGroup
from syncd.fields.inflight import recent
from syncd.network import Blog

log = structlog.get_logger("syncd.fields")

Key = tuple[int, int]


@dataclass(frozen=True)
class Check:
    blog_id: int
    post_id: int
    group: str
    written_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


def rederives(group: FieldGroup) -> bool:
    """Whether a write of this group is checked again once settled (it has ``rederive``)."""
    return callable(getattr(group, "rederive", None))


def record(conn: sa.Connection, base: str, group: str, keys: Iterable[Key]) -> None:
    """Record (or restart) the check of these products, in the caller's transaction."""
    rows = sorted(set(keys))
    if rows:
        conn.exec_driver_sql(
            f"INSERT INTO {table(base, 'syncd_field_check')} (blog_id, post_id, field_group, written_at) "
            "VALUES " + ", ".join(["(%s, %s, %s, UTC_TIMESTAMP(6))"] * len(rows)) + " "
            "ON DUPLICATE KEY UPDATE written_at = VALUES(written_at), attempts = 0",
            tuple(v for b, p in rows for v in (b, p, group)),
        )


def due(conn: sa.Connection, base: str, settle_seconds: float, limit: int = 50) -> list[Check]:
    rows = conn.exec_driver_sql(
        f"SELECT blog_id, post_id, field_group, written_at FROM {table(base, 'syncd_field_check')} "
        "WHERE written_at <= UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND ORDER BY blog_id, post_id LIMIT %s",
        (int(settle_seconds * 1_000_000), int(limit)),
    ).all()
    return [Check(int(b), int(p), str(g), w) for b, p, g, w in rows]


def _done(conn: sa.Connection, base: str, c: Check) -> None:
    conn.exec_driver_sql(
        f"DELETE FROM {table(base, 'syncd_field_check')} WHERE blog_id = %s AND post_id = %s AND field_group = %s",
        (c.blog_id, c.post_id, c.group),
    )


def _postpone(conn: sa.Connection, base: str, c: Check, reason: str) -> str:
    conn.exec_driver_sql(
        f"UPDATE {table(base, 'syncd_field_check')} SET written_at = UTC_TIMESTAMP(6), attempts = attempts + 1 "
        "WHERE blog_id = %s AND post_id = %s AND field_group = %s",
        (c.blog_id, c.post_id, c.group),
    )
    log.debug("field_check_postponed", group=c.group, blog=c.blog_id, post=c.post_id, reason=reason)
    return "postponed"


def finish(
    conn: sa.Connection,
    base: str,
    blogs: Mapping[int, Blog],
    groups: Mapping[str, FieldGroup],
    settle_seconds: float,
    c: Check,
) -> str:
    """One check in the caller's transaction: "rederived", "dropped" or "postponed"."""
    from syncd.fields.sync_pass import Member, lock_members, queued_fields, watched_names

    group = groups.get(c.group)
    if group is None or not rederives(group):
        _done(conn, base, c)
        return "dropped"
    if c.blog_id not in blogs:
        return _postpone(conn, base, c, f"blog {c.blog_id} cannot be written now")
    me = Member(0, c.blog_id, c.post_id, "", "", 0)
    if watched_names(group) & queued_fields(conn, base, [me]).get(me.key, set()):
        return _postpone(conn, base, c, "captured changes of the group are queued")
    from syncd.audit import Scope

    if me.key not in lock_members(conn, Scope(base, dict(blogs)), [me]):
        _done(conn, base, c)  # deleted
        return "dropped"
    parent = conn.exec_driver_sql(
        f"SELECT post_parent FROM {table(blogs[c.blog_id].prefix, 'posts')} WHERE ID = %s", (c.post_id,)
    ).scalar()
    if recent(conn, base, {c.blog_id: {c.post_id, int(parent or 0)} - {0}}, blogs, settle_seconds):
        return _postpone(conn, base, c, "still being saved")
    changed = group.rederive(conn, blogs[c.blog_id], c.post_id)  # type: ignore[attr-defined]
    _done(conn, base, c)
    if changed is None:
        return "dropped"
    log.warning(
        "field_rederived",
        group=c.group,
        blog=c.blog_id,
        post=c.post_id,
        old=changed[0],
        new=changed[1],
        reason="a save that loaded the product before syncd's write wrote what it derived from older values",
    )
    return "rederived"
