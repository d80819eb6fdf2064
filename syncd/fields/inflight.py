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

A product syncd itself saved moments ago counts too (``post_modified_gmt`` cannot tell the two
apart): its field copy waits for the heal, ``settle_seconds`` later.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import sqlalchemy as sa

from syncd.fields.group import FieldGroup, Problem, Target, Values
from syncd.network import Blog
from syncd.write import recently_saved

Key = tuple[int, int]


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
    """``group.write``, unless the target or its parent is in ``saved`` (see :func:`recent`): then
    nothing is written and :class:`SaveInFlight` is raised."""
    if any((target.blog.blog_id, p) in saved for p in posts_of(target)):
        raise SaveInFlight(
            f"was saved less than {settle_seconds:g} s ago and a save in flight would insert its "
            f"{group.name} rows again or overwrite them; it takes the group's values once it settles"
        )
    return group.write(conn, target, current, wanted)
