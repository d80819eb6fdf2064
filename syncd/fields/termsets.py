"""A product's terms of one taxonomy, by slug, written as WordPress + WooCommerce 11 write them.

WordPress keeps a product's categories, tags, shipping class and visibility flags as
``term_relationships`` rows; term ids differ per blog, so syncd compares and carries **slugs**
(sorted tuples). Setting them on a target blog does what ``wp_set_object_terms()`` does there,
with the hooks WooCommerce adds:

* relationships inserted / deleted (``term_order`` 0);
* ``term_taxonomy.count`` of every added or removed term by ``_update_post_term_count()``:
  published objects of the taxonomy's post types (``product`` for categories and tags, ``product``
  and ``product_variation`` for shipping classes and visibility; fixtures 17C, 19B/C, 20);
* ``wc_clear_term_product_ids()``: the ``product_ids`` termmeta of the old and new terms;
* ``WC_Post_Data::force_default_term()``: a product left without a category gets the blog's
  ``default_product_cat``;
* a slug the target blog lacks: a :class:`~syncd.fields.group.Problem` (``missing = "skip"``), or the
  term is created as ``wp_insert_term()`` creates it (``missing = "create"``): ``terms`` +
  ``term_taxonomy`` (name and description of the source term, parent by the source parent's slug
  when the target has it), ``{taxonomy}_children`` rebuilt (``clean_term_cache`` ->
  ``_get_term_hierarchy``), for ``product_cat`` the ``wc_category_lookup`` rows (fixture 20 step 2),
  and on a Polylang blog the product's language and a translation group (:mod:`syncd.fields.polylang`).

The catalog counts (``product_count_*`` termmeta, ``_wc_term_recount()``) are
:func:`syncd.derived.recount_catalog_terms`; this module decides which terms need them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
import structlog

from syncd import woo
from syncd.db import table
from syncd.fields import polylang
from syncd.network import Blog

log = structlog.get_logger("syncd.fields.terms")

#: ``register_taxonomy()`` object types of each taxonomy whose count syncd rewrites
#: (class-wc-post-types.php): what ``_update_post_term_count()`` counts.
COUNT_POST_TYPES: dict[str, tuple[str, ...]] = {
    "product_cat": (woo.PRODUCT,),
    "product_tag": (woo.PRODUCT,),
    "product_shipping_class": woo.PRODUCT_POST_TYPES,
    "product_visibility": woo.PRODUCT_POST_TYPES,
}
HIERARCHICAL = frozenset({"product_cat"})
MISSING_MODES = ("skip", "create")


def field_name(taxonomy: str) -> str:
    """The field name of a taxonomy in a group's values (``terms:product_cat``)."""
    return f"terms:{taxonomy}"


@dataclass(frozen=True)
class SourceTerm:
    """What creating a term on another blog needs to know of the source blog's term."""

    name: str
    description: str
    parent_slug: str | None


@dataclass(frozen=True)
class TermRow:
    term_id: int
    tt_id: int
    slug: str
    name: str
    parent: int


@dataclass
class TermChange:
    """The result of :func:`set_terms` on one product and taxonomy."""

    added: list[TermRow] = field(default_factory=list)
    removed: list[TermRow] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # reasons; nothing written when not empty
    current: list[TermRow] = field(default_factory=list)  # the product's terms afterwards

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- reading


def read_terms(
    conn: sa.Connection,
    prefix: str,
    post_ids: Sequence[int],
    taxonomies: Sequence[str],
    known: dict[tuple[str, str], SourceTerm] | None = None,
) -> dict[int, dict[str, tuple[str, ...]]]:
    """``{post: {taxonomy: sorted slugs}}`` for every post and taxonomy (empty tuple: none), in one
    statement. ``known`` (if given) collects each term's name, description and parent slug, which
    creating it on another blog needs."""
    out: dict[int, dict[str, tuple[str, ...]]] = {int(p): {t: () for t in taxonomies} for p in post_ids}
    if not post_ids or not taxonomies:
        return out
    rows = conn.exec_driver_sql(
        f"SELECT tr.object_id, tt.taxonomy, t.slug, t.name, tt.description, pt.slug "
        f"FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"LEFT JOIN {table(prefix, 'terms')} pt ON pt.term_id = tt.parent AND tt.parent <> 0 "
        f"WHERE tr.object_id IN ({_marks(len(post_ids))}) AND tt.taxonomy IN ({_marks(len(taxonomies))})",
        (*[int(p) for p in post_ids], *taxonomies),
    )
    found: dict[int, dict[str, set[str]]] = {}
    for object_id, taxonomy, slug, name, description, parent_slug in rows:
        tax, s = _text(taxonomy), _text(slug)
        found.setdefault(int(object_id), {}).setdefault(tax, set()).add(s)
        if known is not None:
            known[(tax, s)] = SourceTerm(
                _text(name), _text(description or ""), _text(parent_slug) if parent_slug else None
            )
    for pid, per_tax in found.items():
        for tax, slugs in per_tax.items():
            out[pid][tax] = tuple(sorted(slugs))
    return out


def _terms_by_slug(
    conn: sa.Connection, prefix: str, taxonomy: str, slugs: Collection[str]
) -> dict[str, TermRow]:
    if not slugs:
        return {}
    rows = conn.exec_driver_sql(
        f"SELECT t.term_id, tt.term_taxonomy_id, t.slug, t.name, tt.parent "
        f"FROM {table(prefix, 'term_taxonomy')} tt JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = %s AND t.slug IN ({_marks(len(slugs))})",
        (taxonomy, *sorted(slugs)),
    )
    out: dict[str, TermRow] = {}
    for term_id, tt_id, slug, name, parent in rows:
        row = TermRow(int(term_id), int(tt_id), _text(slug), _text(name), int(parent))
        if row.slug in slugs:  # the column's collation may match more loosely than WordPress does
            out[row.slug] = row
    return out


def _object_terms(conn: sa.Connection, prefix: str, post_id: int, taxonomy: str) -> list[TermRow]:
    """The product's terms of the taxonomy; its relationship rows are locked."""
    rows = conn.exec_driver_sql(
        f"SELECT t.term_id, tt.term_taxonomy_id, t.slug, t.name, tt.parent "
        f"FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tr.object_id = %s AND tt.taxonomy = %s ORDER BY tt.term_taxonomy_id FOR UPDATE",
        (post_id, taxonomy),
    )
    return [TermRow(int(a), int(b), _text(c), _text(d), int(e)) for a, b, c, d, e in rows]


def _default_category(conn: sa.Connection, prefix: str) -> TermRow | None:
    """The blog's ``default_product_cat`` term (``absint`` of the option; 0 or gone: none)."""
    value = conn.exec_driver_sql(
        f"SELECT option_value FROM {table(prefix, 'options')} WHERE option_name = 'default_product_cat'"
    ).scalar()
    term_id = woo.php_int(value) if value is not None else 0
    if term_id <= 0:
        return None
    row = conn.exec_driver_sql(
        f"SELECT t.term_id, tt.term_taxonomy_id, t.slug, t.name, tt.parent "
        f"FROM {table(prefix, 'term_taxonomy')} tt JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = 'product_cat' AND t.term_id = %s",
        (term_id,),
    ).first()
    return TermRow(int(row[0]), int(row[1]), _text(row[2]), _text(row[3]), int(row[4])) if row else None


# --------------------------------------------------------------------------- creating terms


def _parent_of(conn: sa.Connection, prefix: str, taxonomy: str, source: SourceTerm) -> int:
    """The target's term with the source parent's slug (hierarchical taxonomies), else 0."""
    if not source.parent_slug or taxonomy not in HIERARCHICAL:
        return 0
    found = _terms_by_slug(conn, prefix, taxonomy, {source.parent_slug})
    return found[source.parent_slug].term_id if source.parent_slug in found else 0


def _creation_problem(
    conn: sa.Connection, prefix: str, taxonomy: str, slug: str, source: SourceTerm
) -> str | None:
    """``wp_insert_term()``'s refusal: "A term with the name provided already exists with this parent"."""
    clash = conn.exec_driver_sql(
        f"SELECT t.slug FROM {table(prefix, 'term_taxonomy')} tt JOIN {table(prefix, 'terms')} t "
        f"ON t.term_id = tt.term_id WHERE tt.taxonomy = %s AND tt.parent = %s AND t.name = %s LIMIT 1",
        (taxonomy, _parent_of(conn, prefix, taxonomy, source), source.name),
    ).first()
    if clash is None:
        return None
    return f"cannot create {slug!r}: a term named {source.name!r} exists with slug {_text(clash[0])!r}"


def _create_term(
    conn: sa.Connection, blog: Blog, post_id: int, taxonomy: str, slug: str, source: SourceTerm
) -> TermRow:
    """``wp_insert_term()`` with the source term's name and description (parent: :func:`_parent_of`);
    on a Polylang blog the term takes the product's language, as Polylang does for a term
    created from a product of that language."""
    prefix = blog.prefix
    parent = _parent_of(conn, prefix, taxonomy, source)
    term_id = conn.exec_driver_sql(
        f"INSERT INTO {table(prefix, 'terms')} (name, slug, term_group) VALUES (%s, %s, 0)",
        (source.name, slug),
    ).lastrowid
    tt_id = conn.exec_driver_sql(
        f"INSERT INTO {table(prefix, 'term_taxonomy')} (term_id, taxonomy, description, parent, count) "
        f"VALUES (%s, %s, %s, %s, 0)",
        (term_id, taxonomy, source.description, parent),
    ).lastrowid
    if taxonomy in HIERARCHICAL:
        _rebuild_children_option(conn, prefix, taxonomy)
        if taxonomy == "product_cat":
            _category_lookup_insert(conn, prefix, int(term_id))
    if blog.polylang:
        polylang.set_term_language(conn, prefix, int(term_id), post_id, taxonomy)
    return TermRow(int(term_id), int(tt_id), slug, source.name, parent)


def children_option_value(pairs: Iterable[tuple[int, int]]) -> str:
    """``_get_term_hierarchy()`` as ``update_option`` stores it: ``{parent: [children]}`` from
    ``(term_id, parent)`` pairs in term id order, PHP-serialized."""
    children: dict[int, list[int]] = {}
    for term_id, parent in pairs:
        if parent > 0:
            children.setdefault(parent, []).append(term_id)
    parts = []
    for parent, kids in children.items():
        inner = "".join(f"i:{i};i:{k};" for i, k in enumerate(kids))
        parts.append(f"i:{parent};a:{len(kids)}:{{{inner}}}")
    return f"a:{len(children)}:{{{''.join(parts)}}}"


def _rebuild_children_option(conn: sa.Connection, prefix: str, taxonomy: str) -> None:
    """``clean_term_cache()``: ``delete_option("{taxonomy}_children")`` then ``_get_term_hierarchy()``
    adds it again (autoload 'auto'; fixture 20 step 2: deleted and inserted with a new option_id)."""
    pairs = conn.exec_driver_sql(
        f"SELECT term_id, parent FROM {table(prefix, 'term_taxonomy')} WHERE taxonomy = %s ORDER BY term_id",
        (taxonomy,),
    )
    value = children_option_value((int(t), int(p)) for t, p in pairs)
    options = table(prefix, "options")
    name = f"{taxonomy}_children"
    conn.exec_driver_sql(f"DELETE FROM {options} WHERE option_name = %s", (name,))
    conn.exec_driver_sql(
        f"INSERT INTO {options} (option_name, option_value, autoload) VALUES (%s, %s, 'auto')", (name, value)
    )


def _category_lookup_insert(conn: sa.Connection, prefix: str, term_id: int) -> None:
    """WooCommerce's ``CategoryLookup`` on a new category: one row for itself and one per ancestor
    (``category_tree_id`` = the ancestor). Fixture 20 step 2 records the self row; the ancestor
    rows are from the source. Nothing when the blog has no such table."""
    lookup = table(prefix, "wc_category_lookup")
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s",
        (f"{prefix}wc_category_lookup",),
    ).first()
    if exists is None:
        return
    parents = {
        int(t): int(p)
        for t, p in conn.exec_driver_sql(
            f"SELECT term_id, parent FROM {table(prefix, 'term_taxonomy')} WHERE taxonomy = 'product_cat'"
        )
    }
    trees = [term_id, *woo.term_ancestors(term_id, parents)]
    params: list[int] = []
    for tree in trees:
        params += [tree, term_id]
    conn.exec_driver_sql(
        f"INSERT IGNORE INTO {lookup} (category_tree_id, category_id) VALUES "
        + ", ".join(["(%s, %s)"] * len(trees)),
        tuple(params),
    )


# --------------------------------------------------------------------------- setting terms


def _resolve(
    conn: sa.Connection,
    blog: Blog,
    post_id: int,
    taxonomy: str,
    wanted: Sequence[str],
    missing: str,
    known: Mapping[tuple[str, str], SourceTerm],
    change: TermChange,
) -> dict[str, TermRow]:
    """The target's terms for the wanted slugs, the missing ones created where allowed; when any
    slug cannot be had, problems and nothing created."""
    found = _terms_by_slug(conn, blog.prefix, taxonomy, set(wanted))
    to_create: list[tuple[str, SourceTerm]] = []
    for slug in (s for s in wanted if s not in found):
        source = known.get((taxonomy, slug))
        if missing != "create":
            change.problems.append(f"term {slug!r} of {taxonomy} does not exist on this blog")
        elif source is None:
            change.problems.append(f"term {slug!r} of {taxonomy} is missing and its source term is unknown")
        elif (reason := _creation_problem(conn, blog.prefix, taxonomy, slug, source)) is not None:
            change.problems.append(reason)
        else:
            to_create.append((slug, source))
    if change.problems:
        return found
    for slug, source in to_create:
        found[slug] = _create_term(conn, blog, post_id, taxonomy, slug, source)
        change.created.append(slug)
    return found


def set_terms(
    conn: sa.Connection,
    blog: Blog,
    post: tuple[int, str],
    taxonomy: str,
    wanted: Sequence[str],
    *,
    missing: str = "skip",
    known: Mapping[tuple[str, str], SourceTerm] | None = None,
    managed: frozenset[str] | None = None,
) -> TermChange:
    """Make the terms of ``post`` = (id, post_type) in ``taxonomy`` the ``wanted`` slugs.

    ``managed``: only these slugs are added or removed (``product_visibility``: the catalog
    visibility and featured terms; ``outofstock`` and ``rated-N`` belong to others). Terms are
    created before anything else is written; a problem leaves the relationships untouched."""
    prefix = blog.prefix
    change = TermChange()
    current = _object_terms(conn, prefix, post[0], taxonomy)
    wanted_rows = list(
        _resolve(conn, blog, post[0], taxonomy, sorted(set(wanted)), missing, known or {}, change).values()
    )
    if change.problems:
        change.current = current
        return change
    if taxonomy == "product_cat" and not wanted_rows and post[1] == woo.PRODUCT:
        default = _default_category(conn, prefix)  # WC_Post_Data::force_default_term()
        wanted_rows = [default] if default is not None else []
    in_scope = [r for r in current if managed is None or r.slug in managed]
    wanted_tt = {r.tt_id for r in wanted_rows}
    current_tt = {r.tt_id for r in in_scope}
    change.added = sorted((r for r in wanted_rows if r.tt_id not in current_tt), key=lambda r: r.tt_id)
    change.removed = [r for r in in_scope if r.tt_id not in wanted_tt]
    change.current = sorted(
        [*(r for r in current if r.tt_id not in {x.tt_id for x in change.removed}), *change.added],
        key=lambda r: r.tt_id,
    )
    if change.changed:
        _write_relationships(conn, prefix, post[0], change)
        _update_post_term_counts(conn, prefix, taxonomy, [r.tt_id for r in change.added + change.removed])
        _clear_term_product_ids(conn, prefix, {r.tt_id for r in current} | {r.tt_id for r in change.current})
    return change


def _write_relationships(conn: sa.Connection, prefix: str, post_id: int, change: TermChange) -> None:
    rel = table(prefix, "term_relationships")
    if change.added:
        params: list[int] = []
        for r in change.added:
            params += [post_id, r.tt_id]
        conn.exec_driver_sql(
            f"INSERT INTO {rel} (object_id, term_taxonomy_id, term_order) VALUES "
            + ", ".join(["(%s, %s, 0)"] * len(change.added))
            + " ON DUPLICATE KEY UPDATE term_order = term_order",
            tuple(params),
        )
    if change.removed:
        conn.exec_driver_sql(
            f"DELETE FROM {rel} WHERE object_id = %s AND term_taxonomy_id IN ({_marks(len(change.removed))})",
            (post_id, *(r.tt_id for r in change.removed)),
        )


def _update_post_term_counts(conn: sa.Connection, prefix: str, taxonomy: str, tt_ids: Sequence[int]) -> None:
    """``_update_post_term_count()``: published objects of the taxonomy's post types, written
    where it differs (the ``term_taxonomy`` rows are locked first)."""
    if not tt_ids:
        return
    types = COUNT_POST_TYPES.get(taxonomy, woo.PRODUCT_POST_TYPES)
    tax = table(prefix, "term_taxonomy")
    rows = conn.exec_driver_sql(
        f"SELECT tt.term_taxonomy_id, tt.count, (SELECT COUNT(*) FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'posts')} p ON p.ID = tr.object_id WHERE tr.term_taxonomy_id = tt.term_taxonomy_id "
        f"AND p.post_status = 'publish' AND p.post_type IN ({_marks(len(types))})) "
        f"FROM {tax} tt WHERE tt.term_taxonomy_id IN ({_marks(len(tt_ids))}) ORDER BY tt.term_taxonomy_id FOR UPDATE",
        (*types, *sorted(set(tt_ids))),
    ).all()
    for tt_id, old, new in rows:
        if int(old) != int(new):
            conn.exec_driver_sql(
                f"UPDATE {tax} SET count = %s WHERE term_taxonomy_id = %s", (int(new), int(tt_id))
            )


def _clear_term_product_ids(conn: sa.Connection, prefix: str, tt_ids: Collection[int]) -> None:
    """``wc_clear_term_product_ids()`` on ``set_object_terms``: ``delete_term_meta($id,
    'product_ids')`` for the old and new term_taxonomy ids (WooCommerce passes them as term ids)."""
    if tt_ids:
        conn.exec_driver_sql(
            f"DELETE FROM {table(prefix, 'termmeta')} WHERE meta_key = 'product_ids' "
            f"AND term_id IN ({_marks(len(tt_ids))})",
            tuple(sorted(tt_ids)),
        )


def delete_transient(conn: sa.Connection, prefix: str, name: str) -> bool:
    """``delete_transient()``: the value row, and the timeout row only when the value existed."""
    main, timeout = woo.transient_option_names(name)
    options = table(prefix, "options")
    deleted = conn.exec_driver_sql(f"DELETE FROM {options} WHERE option_name = %s", (main,)).rowcount
    if deleted:
        conn.exec_driver_sql(f"DELETE FROM {options} WHERE option_name = %s", (timeout,))
    return bool(deleted)
