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
(``{base}syncd_field_check``, in the write's transaction). Once it has been quiet for
``sync.settle_seconds`` the daemon's settle step takes the due checks: :func:`triage` (no locks,
a few statements per blog) postpones those still being saved and drops those whose rows agree
with their own values (``group.stale``), the common case; :func:`finish` takes each of the rest
in a transaction of its own: locked in the daemon's order, postponed while it (or its parent) is
being saved or has captured changes of the group queued, then ``group.rederive`` derives its
rows again from its own values where they differ (logged ``field_rederived``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def triage(
    conn: sa.Connection,
    base: str,
    blogs: Mapping[int, Blog],
    groups: Mapping[str, FieldGroup],
    settle_seconds: float,
    checks: Sequence[Check],
) -> tuple[list[Check], int]:
    """Settle most checks without locks, in the caller's transaction, a few statements per blog:
        a product still being saved is postponed (one statement each: rare), one whose rows agree with its own values
        (``group.stale``, a plain read) is dropped. Returns the rest, for :func:`finish` one by one,
    and how many were dropped.
        (A save that loaded the product before syncd's write has ended by now unless it is in
        flight, which :func:`recent` reports; its ``_price`` write is then seen here.)"""
    todo: list[Check] = []
    dropped = 0
    jobs: dict[tuple[str, int], list[Check]] = {}
    for c in checks:
        jobs.setdefault((c.group, c.blog_id), []).append(c)
    for (name, blog_id), mine in sorted(jobs.items()):
        group = groups.get(name)
        if blog_id not in blogs or group is None or not callable(getattr(group, "stale", None)):
            todo += mine  # finish() drops or postpones them with the reason
            continue
        blog = blogs[blog_id]
        parents = dict(
            conn.exec_driver_sql(
                f"SELECT ID, post_parent FROM {table(blog.prefix, 'posts')} "
                f"WHERE ID IN ({', '.join(['%s'] * len(mine))})",
                tuple(c.post_id for c in mine),
            ).all()
        )
        posts = {blog_id: {p for c in mine for p in (c.post_id, int(parents.get(c.post_id) or 0)) if p}}
        saving = recent(conn, base, posts, blogs, settle_seconds)
        busy = [
            c for c in mine if {(blog_id, c.post_id), (blog_id, int(parents.get(c.post_id) or 0))} & saving
        ]
        stale = group.stale(conn, blog, [c.post_id for c in mine if c not in busy])  # type: ignore[attr-defined]
        for c in busy:
            _postpone(conn, base, c, "still being saved")
        todo += [c for c in mine if c not in busy and c.post_id in stale]
        fine = [c for c in mine if c not in busy and c.post_id not in stale]
        _drop_unchanged(conn, base, fine)
        dropped += len(fine)
    return todo, dropped


def _drop_unchanged(conn: sa.Connection, base: str, checks: Sequence[Check]) -> None:
    """One statement for these checks of one group and blog; a check recorded again meanwhile (a
    newer ``written_at``) stays."""
    if checks:
        conn.exec_driver_sql(
            f"DELETE FROM {table(base, 'syncd_field_check')} WHERE field_group = %s AND blog_id = %s "
            f"AND (post_id, written_at) IN ({', '.join(['(%s, %s)'] * len(checks))})",
            (checks[0].group, checks[0].blog_id, *(v for c in checks for v in (c.post_id, c.written_at))),
        )


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
