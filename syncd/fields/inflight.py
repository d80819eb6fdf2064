"""No field write goes into a product a WooCommerce save may still be writing (issue 10).

A WooCommerce save is many autocommit statements from a PHP process that loaded the product
first. For each key it checks (``SELECT meta_id ... WHERE meta_key = K AND post_id = P``) and then
INSERTs; a row syncd inserts between the two is inserted a second time (trace 09: ``_sale_price``,
statements 62 -> 63). And it ends by writing what it derives from the values it loaded (trace 09:
``UPDATE _price`` 89): a sale price syncd updated meanwhile is left with a ``_price`` computed
from the old one. Stock obeys the settle rule in :meth:`syncd.write.MemberWriter.set_meta`; the
field groups obey it here, whatever rows their ``write`` touches (source rows, ``_price``, a
variable parent's ``_price`` rows, lookup rows, term relationships):

* which targets (and their parents) were saved within ``settle_seconds`` is read once, before the
  caller writes anything (:func:`recent`, :func:`syncd.write.recently_saved`: a group's write saves
  the product as WooCommerce does, and the next group written into the same member in the same
  transaction must not take that for a save in flight);
* :func:`write_settled` writes a group into any other product, and raises :class:`SaveInFlight`
  for one of these, writing nothing: the caller skips that member for that group and has it
  healed once it has settled (realtime), or leaves it to the next pass.

A product whose latest save is syncd's own (its history shows the write) is not waited for
(:func:`in_flight_sql`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from syncd.db import run_many, table
from syncd.fields.group import FieldGroup, Problem, Target, Values
from syncd.network import Blog
from syncd.write import recently_saved_sql

Key = tuple[int, int]


class SaveInFlight(Exception):  # noqa: N818 - an outcome the caller handles, like MemberSkipped
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def posts_of(target: Target) -> list[int]:
    """The product, and its parent (a variation's price write rewrites the parent's ``_price``)."""
    return [target.post_id] + ([target.parent_id] if target.parent_id else [])


def recent(
    conn: sa.Connection,
    base_prefix: str,
    posts: Mapping[int, Iterable[int]],
    blogs: Mapping[int, Blog],
    settle_seconds: float,
) -> set[Key]:
    """Which of these products (blog -> post ids, parents included) may have a WooCommerce save
    in flight: every blog in one round trip, before the caller writes anything."""
    if settle_seconds <= 0:
        return set()
    jobs = [(b, sorted(set(ids))) for b, ids in sorted(posts.items()) if b in blogs]
    jobs = [(b, ids) for b, ids in jobs if ids]
    results = run_many(conn, [in_flight_sql(base_prefix, blogs[b], ids, settle_seconds) for b, ids in jobs])
    return {(b, int(r[0])) for (b, _), rows in zip(jobs, results, strict=True) for r in rows.rows}


def in_flight_sql(
    base_prefix: str, blog: Blog, post_ids: Sequence[int], settle_seconds: float
) -> tuple[str, tuple[Any, ...]]:
    """The ``post_ids`` saved within ``settle_seconds`` (:func:`syncd.write.recently_saved_sql`)
    whose latest save is not syncd's own: syncd saves every member it writes, and a product it
    keeps writing (one that sells every few seconds) would otherwise never take a field value.
    Its own save is recognised by a history row of its write (``copy``, ``field``) applied at or
    after the save's ``post_modified_gmt`` (whole seconds: a WooCommerce save that starts later
    within that same second is not told apart)."""
    sql, params = recently_saved_sql(blog, post_ids, settle_seconds)
    posts = table(blog.prefix, "posts")
    return (
        f"{sql} AND NOT EXISTS (SELECT 1 FROM {table(base_prefix, 'syncd_history')} h "
        f"WHERE h.applied_at >= {posts}.post_modified_gmt AND h.blog_id = %s AND h.post_id = {posts}.ID "
        "AND h.role IN ('copy', 'field'))",
        (*params, blog.blog_id),
    )


def write_settled(
    conn: sa.Connection,
    group: FieldGroup,
    target: Target,
    current: Values,
    wanted: Values,
    saved: Collection[Key],
    settle_seconds: float,
) -> list[Problem]:
    """``group.write``, unless the target or its parent is in ``saved`` (see :func:`recent`): then
    nothing is written and :class:`SaveInFlight` is raised."""
    if any((target.blog.blog_id, p) in saved for p in posts_of(target)):
        raise SaveInFlight(
            f"was saved less than {settle_seconds:g} s ago and a save in flight would insert its "
            f"{group.name} rows again or overwrite them; it takes the group's values once it settles"
        )
    return group.write(conn, target, current, wanted)
