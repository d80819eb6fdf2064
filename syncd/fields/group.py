"""The contract every field group implements, and the names that form the config interface.

A *field group* (``price``, ``tax``, ...) is a set of source values WooCommerce stores for a
product (meta rows, ``posts`` columns, term relationships) that a shop owner chooses to keep
identical across the members of a link group. The group knows, for one blog:

* how to **read** the source values of many products at once (one set-based read);
* which values are **bad** (pure: a non-numeric price, a sale price above the regular one, ...);
* how to **write** wanted values into one member exactly as WooCommerce 11 would, i.e. the
  source rows *and* everything WooCommerce derives from them on that blog from that blog's own
  values and options (``_price``, lookup columns, term counts, transients, queued actions).

The modes never look inside a group: realtime apply, the scheduled pass and the manual sync all
read, compare, check and write through this interface, inside the caller's transaction, after the
caller has locked the rows it will write (the caller owns transactions, locks and history).

Optional members a group may add (looked up with ``getattr``; fields-core's pass and audit use them):

* ``canonical(values) -> Values``: the values as WooCommerce reads them (a missing row is the
  prop's default, '1' is 'yes'); members are compared on these, so a member is written only
  when a product object would differ. Without it, the values are compared as read.
* ``fingerprint_sql(prefix, post_id_sql) -> str``: a scalar SQL expression, equal for two
  products whose stored source values are equal; the pass narrows a chunk on the server with it
  before reading anything (a filter: unequal fingerprints are compared exactly afterwards).
* ``checksum_keys: tuple[str, ...]`` (postmeta rows of these keys), ``checksum_columns`` with
  ``checksum_post_types`` (``posts`` columns of products of these types) and ``checksum_terms``
  ((taxonomies, post types, slugs or None): term slugs): together, exactly what the group's
  stored source values are; when every group of a full pass has them, the pass first compares
  whole buckets of link groups by checksum (syncd.fields.checksum) and looks only at the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from syncd.network import Blog

#: Group names, in the order they are documented; ``[fields]`` keys. Stock is always realtime.
GROUPS: tuple[str, ...] = (
    "price",
    "tax",
    "shipping",
    "identity",
    "purchase",
    "content",
    "visibility",
    "taxonomy",
)
#: Modes a group can have; anything not named in ``[fields]`` is ``off``.
MODES: tuple[str, ...] = ("off", "realtime", "scheduled", "manual")

#: One value of a group: a meta value / post column as stored (``None``: no row), or for a
#: taxonomy a sorted tuple of term slugs.
Value = str | tuple[str, ...] | None
#: A product's source values for one group, by field name (a meta key such as ``_regular_price``,
#: a posts column such as ``post_title``, or ``terms:<taxonomy>``).
Values = Mapping[str, Value]


@dataclass(frozen=True)
class Target:
    """One member to write: which product on which blog (context for logs and problems)."""

    blog: Blog
    post_id: int
    sku: str
    post_type: str  # 'product' or 'product_variation'
    parent_id: int = 0


@dataclass(frozen=True)
class Problem:
    """Why one member's field was not written (logged with blog, post, SKU and field; the member
    is skipped for this group, the rest of the pass goes on)."""

    blog_id: int
    post_id: int
    sku: str
    field: str
    reason: str


class FieldGroup(Protocol):
    """What a field group offers the modes."""

    name: str
    #: postmeta keys the realtime capture triggers watch for this group.
    meta_keys: tuple[str, ...]
    #: ``{prefix}posts`` columns watched (content group).
    post_columns: tuple[str, ...]
    #: taxonomies whose term relationships are watched (shipping class, visibility, taxonomy).
    taxonomies: tuple[str, ...]

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        """The group's source values of these products on this blog (every field present as a
        key; ``None`` for an absent row). One round trip or a few, never one per product."""
        ...

    def problems(self, values: Values) -> list[tuple[str, str]]:
        """Pure: ``(field, reason)`` for every value that must not be written anywhere."""
        ...

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        """Make the target's values ``wanted`` (it holds ``current``, read under the caller's
        lock) and write what WooCommerce derives from them on that blog. Writes only what
        differs. Returns the problems that made it leave a field alone (e.g. a category slug
        missing on the target blog); raises nothing for bad data."""
        ...
