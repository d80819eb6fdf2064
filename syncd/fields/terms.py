"""The term-based field groups: ``shipping``, ``visibility`` and ``taxonomy`` (issue 10).

Values: meta values as stored (``None``: no row) and, per taxonomy, the sorted slugs of the
product's terms (field ``terms:<taxonomy>``). Terms are matched by slug on every blog (term ids
differ); a slug the target blog lacks is a problem (``missing = "skip"``, the default) or is
created there (``missing = "create"``), see :mod:`syncd.fields.termsets`.

* ``shipping``: ``_weight``, ``_length``, ``_width``, ``_height`` and the ``product_shipping_class``
  term (fixture 17B/C). WooCommerce stores an empty dimension as *no row*
  (``update_or_delete_post_meta``), so ``''`` reads as ``None``.
* ``visibility``: catalog visibility and featured, i.e. the ``exclude-from-catalog``,
  ``exclude-from-search`` and ``featured`` terms of ``product_visibility`` (fixture 19B/C). The
  ``outofstock`` and ``rated-N`` terms of that taxonomy are never touched (stock and reviews own them).
* ``taxonomy``: ``product_cat`` and ``product_tag`` (fixture 20).

Every write that changes something ends with WooCommerce's product save
(:func:`syncd.fields.product_save.save_product`): ``post_modified``, transients, version transients.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import sqlalchemy as sa
import structlog

from syncd import woo
from syncd.db import table
from syncd.derived import recount_catalog_terms
from syncd.fields.group import Problem, Target, Value, Values
from syncd.fields.product_save import Clock, save_product, utc_now
from syncd.fields.termsets import (
    MISSING_MODES,
    SourceTerm,
    TermChange,
    delete_transient,
    field_name,
    read_terms,
    set_terms,
)
from syncd.network import Blog

log = structlog.get_logger("syncd.fields.terms")

SHIPPING_META: tuple[str, ...] = ("_weight", "_length", "_width", "_height")
SHIPPING_CLASS = "product_shipping_class"
VISIBILITY = "product_visibility"
#: The ``product_visibility`` terms the visibility group owns (catalog visibility + featured).
VISIBILITY_SLUGS = frozenset({"exclude-from-catalog", "exclude-from-search", "featured"})
EXCLUDE_FROM_CATALOG = "exclude-from-catalog"
CATALOG_TAXONOMIES: tuple[str, ...] = ("product_cat", "product_tag")
#: ``wc_format_decimal()`` output WooCommerce stores for weight and dimensions.
_DECIMAL_RE = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _slugs(value: Value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(sorted(set(value)))


class _TermGroup:
    """Shared machinery: reading meta + terms, writing terms by slug, then the product save."""

    name = ""
    meta_keys: tuple[str, ...] = ()
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()
    #: Post types that carry the group's terms (variations have no categories or visibility).
    term_post_types: tuple[str, ...] = (woo.PRODUCT,)
    managed: frozenset[str] | None = None

    def __init__(self, missing: str = "skip", clock: Clock = utc_now) -> None:
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, not {missing!r}")
        self.missing = missing
        self.clock = clock
        #: Terms seen by :meth:`read` on any blog: what creating them elsewhere needs.
        self.known_terms: dict[tuple[str, str], SourceTerm] = {}

    # ------------------------------------------------------------------ checksums

    @property
    def checksum_keys(self) -> tuple[str, ...]:
        """A full pass's checksums (syncd.fields.checksum): the stored meta rows, as read."""
        return tuple(self.meta_keys)

    @property
    def checksum_terms(self) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str] | None]:
        """A full pass's checksums: (taxonomies, post types carrying them, managed slugs), as read."""
        return tuple(self.taxonomies), tuple(self.term_post_types), self.managed

    # ------------------------------------------------------------------ read

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        ids = sorted({int(p) for p in post_ids})
        out: dict[int, dict[str, Value]] = {pid: {k: None for k in self.meta_keys} for pid in ids}
        if not ids:
            return {}
        types = dict(self._post_types(conn, blog.prefix, ids))
        terms = read_terms(conn, blog.prefix, ids, self.taxonomies, self.known_terms)
        for pid in ids:
            carries = types.get(pid) in self.term_post_types
            for tax in self.taxonomies:
                slugs = terms[pid][tax] if carries else ()
                if self.managed is not None:
                    slugs = tuple(s for s in slugs if s in self.managed)
                out[pid][field_name(tax)] = slugs
        if self.meta_keys:
            for pid, key, value in self._first_meta(conn, blog.prefix, ids):
                out[pid][key] = None if value == "" else value
        return dict(out)

    @staticmethod
    def _post_types(conn: sa.Connection, prefix: str, ids: Sequence[int]) -> list[tuple[int, str]]:
        return [
            (int(pid), str(ptype))
            for pid, ptype in conn.exec_driver_sql(
                f"SELECT ID, post_type FROM {table(prefix, 'posts')} WHERE ID IN ({_marks(len(ids))})",
                tuple(ids),
            )
        ]

    def _first_meta(
        self, conn: sa.Connection, prefix: str, ids: Sequence[int]
    ) -> list[tuple[int, str, str | None]]:
        """``get_post_meta($id, $key, true)``: the value of the lowest meta_id row per key."""
        pm = table(prefix, "postmeta")
        rows = conn.exec_driver_sql(
            f"SELECT m.post_id, m.meta_key, m.meta_value FROM {pm} m JOIN (SELECT post_id, meta_key, "
            f"MIN(meta_id) AS first FROM {pm} WHERE post_id IN ({_marks(len(ids))}) "
            f"AND meta_key IN ({_marks(len(self.meta_keys))}) GROUP BY post_id, meta_key) f ON f.first = m.meta_id",
            (*ids, *self.meta_keys),
        )
        return [(int(p), str(k), None if v is None else str(v)) for p, k, v in rows]

    # ------------------------------------------------------------------ problems

    def problems(self, values: Values) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for tax in self.taxonomies:
            for slug in _slugs(values.get(field_name(tax))):
                if not slug.strip():
                    out.append((field_name(tax), "empty term slug"))
                elif self.managed is not None and slug not in self.managed:
                    out.append((field_name(tax), f"{slug!r} is not one of {sorted(self.managed)}"))
        return out

    # ------------------------------------------------------------------ write

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        """Write what differs; a field whose wanted value is bad (:meth:`problems`) is left alone
        and reported, the other fields are written."""
        bad = dict(self.problems(wanted))
        problems = [self._problem(target, fname, reason) for fname, reason in bad.items()]
        saved = self._write_meta(conn, target, current, wanted, skip=frozenset(bad))
        changes = self._write_terms(conn, target, current, wanted, frozenset(bad), problems)
        if any(c.changed for c in changes.values()):
            self._after_terms(conn, target, changes)
        if saved or any(c.changed for c in changes.values()):
            save_product(conn, target.blog, target.post_id, self.clock())
        return problems

    def _write_terms(
        self,
        conn: sa.Connection,
        target: Target,
        current: Values,
        wanted: Values,
        skip: frozenset[str],
        problems: list[Problem],
    ) -> dict[str, TermChange]:
        changes: dict[str, TermChange] = {}
        if target.post_type not in self.term_post_types:
            return changes
        for tax in self.taxonomies:
            fname = field_name(tax)
            if fname in skip or _slugs(current.get(fname)) == _slugs(wanted.get(fname)):
                continue
            change = set_terms(
                conn,
                target.blog,
                (target.post_id, target.post_type),
                tax,
                _slugs(wanted.get(fname)),
                missing=self.missing,
                known=self.known_terms,
                managed=self.managed,
            )
            problems += [self._problem(target, fname, reason) for reason in change.problems]
            for slug in change.created:
                log.info(
                    "field_term_created",
                    blog=target.blog.blog_id,
                    post=target.post_id,
                    sku=target.sku,
                    taxonomy=tax,
                    slug=slug,
                )
            changes[tax] = change
        return changes

    def _write_meta(
        self, conn: sa.Connection, target: Target, current: Values, wanted: Values, skip: frozenset[str]
    ) -> bool:
        return False

    def _after_terms(self, conn: sa.Connection, target: Target, changes: Mapping[str, TermChange]) -> None:
        """Hooks of the taxonomy beyond relationships and ``count`` (catalog recounts)."""

    def _recount_catalog(self, conn: sa.Connection, blog: Blog, terms: Mapping[str, set[int]]) -> None:
        """``_wc_term_recount()``: ``product_count_*`` termmeta, then ``delete_transient('wc_term_counts')``."""
        if any(terms.values()):
            recount_catalog_terms(conn, blog, terms)
            delete_transient(conn, blog.prefix, woo.TERM_COUNTS_TRANSIENT)

    @staticmethod
    def _problem(target: Target, fname: str, reason: str) -> Problem:
        log.warning(
            "field_skipped",
            blog=target.blog.blog_id,
            post=target.post_id,
            sku=target.sku,
            field=fname,
            reason=reason,
        )
        return Problem(target.blog.blog_id, target.post_id, target.sku, fname, reason)


class ShippingGroup(_TermGroup):
    """Weight, dimensions and the shipping class (fixture 17B/C)."""

    name = "shipping"
    meta_keys = SHIPPING_META
    taxonomies = (SHIPPING_CLASS,)
    term_post_types = woo.PRODUCT_POST_TYPES

    def problems(self, values: Values) -> list[tuple[str, str]]:
        out = super().problems(values)
        for key in SHIPPING_META:
            value = values.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str) or not _DECIMAL_RE.match(value.strip()):
                reason = (
                    "negative" if isinstance(value, str) and value.strip().startswith("-") else "not a number"
                )
                out.append((key, f"{value!r} is {reason}"))
        if len(_slugs(values.get(field_name(SHIPPING_CLASS)))) > 1:
            out.append((field_name(SHIPPING_CLASS), "more than one shipping class"))
        return out

    def _write_meta(
        self, conn: sa.Connection, target: Target, current: Values, wanted: Values, skip: frozenset[str]
    ) -> bool:
        """``update_or_delete_post_meta()``: an empty value deletes the rows, anything else is
        ``update_post_meta`` (every row of the key, or a new row)."""
        pm = table(target.blog.prefix, "postmeta")
        written = False
        for key in SHIPPING_META:
            want = wanted.get(key)
            want = None if want == "" else want
            if key in skip or want == current.get(key):
                continue
            written = True
            if want is None:
                conn.exec_driver_sql(
                    f"DELETE FROM {pm} WHERE post_id = %s AND meta_key = %s", (target.post_id, key)
                )
                continue
            rows = conn.exec_driver_sql(
                f"SELECT meta_id FROM {pm} WHERE post_id = %s AND meta_key = %s FOR UPDATE",
                (target.post_id, key),
            ).all()
            if rows:
                conn.exec_driver_sql(
                    f"UPDATE {pm} SET meta_value = %s WHERE post_id = %s AND meta_key = %s",
                    (want, target.post_id, key),
                )
            else:
                conn.exec_driver_sql(
                    f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",
                    (target.post_id, key, want),
                )
        return written


class VisibilityGroup(_TermGroup):
    """Catalog visibility and featured (fixture 19B/C); never ``outofstock`` or ``rated-N``."""

    name = "visibility"
    taxonomies = (VISIBILITY,)
    managed = VISIBILITY_SLUGS

    def _after_terms(self, conn: sa.Connection, target: Target, changes: Mapping[str, TermChange]) -> None:
        """WooCommerce 11.0 ``recount_terms_for_product_visibility_change`` (``set_object_terms``):
        when ``exclude-from-catalog`` is added or removed, ``_wc_recount_terms_by_product()`` - the
        product's categories and tags (fixture 19B steps 1 and 3; not on 2 and 4)."""
        change = changes.get(VISIBILITY)
        if change is None or not any(r.slug == EXCLUDE_FROM_CATALOG for r in change.added + change.removed):
            return
        self._recount_catalog(
            conn, target.blog, _product_catalog_terms(conn, target.blog.prefix, target.post_id)
        )


class TaxonomyGroup(_TermGroup):
    """Categories and tags (fixture 20). A product left without a category gets the target blog's
    ``default_product_cat`` (``WC_Post_Data::force_default_term``)."""

    name = "taxonomy"
    taxonomies = CATALOG_TAXONOMIES

    def _after_terms(self, conn: sa.Connection, target: Target, changes: Mapping[str, TermChange]) -> None:
        """``wp_update_term_count()`` -> ``_wc_term_recount()`` of the added and removed terms, then
        WooCommerce's ``_wc_recount_terms_by_product()``: the product's categories and tags (fixture 20)."""
        terms = _product_catalog_terms(conn, target.blog.prefix, target.post_id)
        for tax, change in changes.items():
            terms[tax] |= {r.term_id for r in change.added + change.removed}
        self._recount_catalog(conn, target.blog, terms)


def _product_catalog_terms(conn: sa.Connection, prefix: str, post_id: int) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {t: set() for t in CATALOG_TAXONOMIES}
    for taxonomy, term_id in conn.exec_driver_sql(
        f"SELECT tt.taxonomy, tt.term_id FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"WHERE tr.object_id = %s AND tt.taxonomy IN ({_marks(len(CATALOG_TAXONOMIES))})",
        (post_id, *CATALOG_TAXONOMIES),
    ):
        out[str(taxonomy)].add(int(term_id))
    return out
