"""No field write inserts a row into a product a WooCommerce save may still be writing (issue 10).

A WooCommerce save checks for each key (``SELECT meta_id ... WHERE meta_key = K AND post_id = P``)
and then INSERTs it; a row syncd inserts between the two is inserted a second time by WooCommerce
(trace 09: ``_sale_price``, statements 62 -> 63), and one it inserts before the save's
``delete_post_meta`` of a key it holds empty is deleted again. Stock obeys the rule in
:meth:`syncd.write.MemberWriter.set_meta`; the field groups obey the same one here, whatever rows
their ``write`` touches (source rows, ``_price``, a variable parent's ``_price`` rows, term
relationships):

* the product (or its parent) was not saved within ``settle_seconds``
  (:func:`syncd.write.recently_saved`, read by the caller *before* it writes anything: a group's
  write saves the product as WooCommerce does, and the next group written into the same member
  in the same transaction must not take that for a save in flight): ``FieldGroup.write`` as is;
* otherwise the write runs inside a savepoint, and if it added a postmeta row to the product or
  its parent, or a term relationship to the product, the savepoint is rolled back (the rows were
  never committed, so no WooCommerce statement saw them) and :class:`SaveInFlight` is raised:
  the caller skips that member for that group and has it healed once it has settled.

Updates of existing rows are allowed: WooCommerce overwrites them only with values its own
captured changes then carry (last captured wins), and never duplicates them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import sqlalchemy as sa

from syncd.db import table
from syncd.fields.group import FieldGroup, Problem, Target, Values
from syncd.network import Blog
from syncd.write import recently_saved

Key = tuple[int, int]

#: Rows of one product: ('m', meta_id) of its and its parent's postmeta, ('t', term_taxonomy_id).
Snapshot = frozenset[tuple[str, int]]


class SaveInFlight(Exception):  # noqa: N818 - an outcome the caller handles, like MemberSkipped
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def posts_of(target: Target) -> list[int]:
    """The product, and its parent (a variation's price write rewrites the parent's ``_price``)."""
    return [target.post_id] + ([target.parent_id] if target.parent_id else [])


def recent(
    conn: sa.Connection, posts: Mapping[int, Iterable[int]], blogs: Mapping[int, Blog], settle_seconds: float
) -> set[Key]:
    """Which of these products (blog -> post ids, parents included) were saved within
    ``settle_seconds``: one read per blog, before the caller writes anything."""
    out: set[Key] = set()
    for b, ids in sorted(posts.items()):
        if b in blogs:
            out |= {(b, p) for p in recently_saved(conn, blogs[b], sorted(set(ids)), settle_seconds)}
    return out


def write_settled(
    conn: sa.Connection,
    group: FieldGroup,
    target: Target,
    current: Values,
    wanted: Values,
    saved: Collection[Key],
    settle_seconds: float,
) -> list[Problem]:
    """``group.write``, unless it would insert a row into a product in ``saved`` (see
    :func:`recent`): then nothing is written and :class:`SaveInFlight` is raised."""
    if not any((target.blog.blog_id, p) in saved for p in posts_of(target)):
        return group.write(conn, target, current, wanted)
    before = snapshot(conn, target)
    sp = conn.begin_nested()
    try:
        problems = group.write(conn, target, current, wanted)
        added = snapshot(conn, target) - before
    except BaseException:
        sp.rollback()
        raise
    if added:
        sp.rollback()
        raise SaveInFlight(
            f"was saved less than {settle_seconds:g} s ago and writing {group.name} would insert a row a "
            "WooCommerce save in flight may insert too; it takes the group's values once it settles"
        )
    sp.commit()
    return problems


def snapshot(conn: sa.Connection, target: Target) -> Snapshot:
    """The product's (and parent's) postmeta ids and its term relationships, one round trip."""
    posts = posts_of(target)
    marks = ", ".join(["%s"] * len(posts))
    rows = conn.exec_driver_sql(
        f"SELECT 'm', meta_id FROM {table(target.blog.prefix, 'postmeta')} WHERE post_id IN ({marks}) "
        f"UNION ALL SELECT 't', term_taxonomy_id FROM {table(target.blog.prefix, 'term_relationships')} "
        "WHERE object_id = %s",
        (*posts, target.post_id),
    ).all()
    return frozenset((str(k), int(i)) for k, i in rows)
