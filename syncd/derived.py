"""Derived data: what WooCommerce writes when it saves a product, written by syncd.

The apply engine (:mod:`syncd.apply`) writes quantities and registers, then calls
:func:`refresh_products` inside the same open transaction, once per blog. For every product id
given, this module recomputes and writes - only where the stored value really differs - what a
WooCommerce 11 product save would have written on that blog:

* ``_stock_status`` (when the product manages stock, or inherits it from its parent, or is a
  variable product that takes it from its children);
* the ``wc_product_meta_lookup`` row (inserted when missing);
* the ``product_visibility`` / ``outofstock`` relationship and that term's ``count``;
* ``wc_product_attributes_lookup.in_stock`` (WooCommerce does this later in an Action Scheduler
  job; syncd writes the same value now);
* children of a variable product that manages stock (status + lookup row, no term: fixture 08B);
* the variable parent of a variation (WooCommerce's deferred parent sync at shutdown);
* ``posts.post_modified``/``post_modified_gmt`` of every product WooCommerce would save;
* the transients ``wc_delete_product_transients()`` deletes, and both version transients;
* with ``woocommerce_hide_out_of_stock_items = yes``, the ``product_count_product_cat/_tag``
  termmeta of a product whose status flipped, and the ``wc_term_counts`` transient.

Shape (gh-ost style): one set-based read of everything needed for all ids (rows that will be
rewritten are locked ``FOR UPDATE`` in ascending post id order), a pure planner
(:func:`plan_refresh`) that decides every write with the rules of :mod:`syncd.woo`, then a few
multi-row statements. No per-product round trips. ``docs/woocommerce-fidelity.md`` lists where
syncd deliberately differs from WooCommerce.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd import woo
from syncd.db import Rows, run_many, table
from syncd.network import Blog

log = structlog.get_logger("syncd.derived")

STATUS_KEY = "_stock_status"
#: Every meta key the rules read: the lookup row's inputs plus ``_backorders``.
META_KEYS: tuple[str, ...] = tuple(sorted(set(woo.LOOKUP_META_KEYS) | {"_backorders"}))
#: Post statuses syncd refuses to touch: WooCommerce does not sell or save trashed products.
UNUSABLE_POST_STATUSES = frozenset({"trash"})


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class PostRow:
    id: int
    post_type: str
    post_status: str
    parent_id: int
    menu_order: int = 0


@dataclass
class Snapshot:
    """Everything the planner needs, read in one go for one blog."""

    posts: dict[int, PostRow] = field(default_factory=dict)
    product_types: dict[int, str] = field(default_factory=dict)  # product_type term slug
    meta: dict[int, dict[str, list[str | None]]] = field(default_factory=dict)  # meta_id order
    lookup: dict[int, dict[str, Any]] = field(default_factory=dict)
    lookup_columns: tuple[str, ...] = woo.LOOKUP_COLUMNS
    visibility_terms: dict[str, int] = field(default_factory=dict)  # term name -> term_taxonomy_id
    visibility_counts: dict[int, int] = field(default_factory=dict)  # term_taxonomy_id -> count
    outofstock_objects: set[int] = field(default_factory=set)
    attribute_in_stock: dict[int, list[int]] = field(default_factory=dict)
    present_transients: set[str] = field(default_factory=set)  # existing _transient_<name> rows

    def meta_of(self, post_id: int) -> dict[str, list[str | None]]:
        return self.meta.get(post_id, {})

    def children_of(self, parent_id: int) -> list[int]:
        """``read_children()`` 'all': publish/private variations, by menu_order then ID."""
        kids = [
            p
            for p in self.posts.values()
            if p.post_type == woo.VARIATION
            and p.parent_id == parent_id
            and p.post_status in woo.CHILD_POST_STATUSES
        ]
        return [p.id for p in sorted(kids, key=lambda p: (p.menu_order, p.id))]

    @property
    def outofstock_tt(self) -> int | None:
        return self.visibility_terms.get(woo.OUT_OF_STOCK)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ProductOutcome:
    """What happens (or happened) to one product.

    ``role``: 'given' (asked for), 'parent' (the variable parent of a saved variation: WooCommerce's
    deferred sync), 'child' (a variation of a variable product that manages stock, receiving the
    parent's status). ``saved``: WooCommerce would have saved it, so ``post_modified`` and its
    transients are written. ``term``: 'added'/'removed' when the ``outofstock`` relationship changes.
    """

    product_id: int
    role: str
    old_status: str | None = None
    new_status: str | None = None
    status_written: bool = False
    lookup_columns: tuple[str, ...] = ()
    term: str | None = None
    attributes_written: bool = False
    saved: bool = False
    parent_id: int | None = None
    children_written: tuple[int, ...] = ()
    skipped: str | None = None
    #: The new status differs from the stored ``_stock_status`` or from the lookup row's status
    #: (the caller itself may have written ``_stock_status``, e.g. a manual-status register).
    flipped: bool = False

    @property
    def lookup_written(self) -> bool:
        return bool(self.lookup_columns)

    @property
    def changed(self) -> bool:
        return bool(self.status_written or self.lookup_columns or self.term or self.attributes_written)


@dataclass
class RefreshPlan:
    outcomes: dict[int, ProductOutcome] = field(default_factory=dict)
    status_updates: dict[int, str] = field(default_factory=dict)  # existing _stock_status rows
    status_inserts: dict[int, str] = field(default_factory=dict)  # missing rows
    lookup_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    term_add: list[int] = field(default_factory=list)
    term_remove: list[int] = field(default_factory=list)
    attributes: dict[int, int] = field(default_factory=dict)  # product_id -> in_stock
    saved: list[int] = field(default_factory=list)
    transient_ids: list[int] = field(default_factory=list)  # per-product transients
    recount_products: list[int] = field(default_factory=list)

    @property
    def skipped(self) -> dict[int, str]:
        return {pid: o.skipped for pid, o in self.outcomes.items() if o.skipped}


def _unusable(post: PostRow | None) -> str | None:
    if post is None:
        return "post is gone"
    if post.post_type not in woo.PRODUCT_POST_TYPES:
        return f"not a product (post_type {post.post_type!r})"
    if post.post_status in UNUSABLE_POST_STATUSES:
        return f"post is {post.post_status}"
    return None


def _quantity_of(meta: Mapping[str, Sequence[str | None]], whose: str) -> Any:
    """The first ``_stock`` row as a number (None = NULL or no row, read as 0 when managed: 09C)."""
    raw = woo.meta_single_raw(meta, "_stock")
    try:
        return woo.parse_stock(raw)
    except woo.UnparseableStock as exc:
        raise _Skip(f"{whose} _stock {exc.text!r} is not a number") from exc


class _Skip(Exception):
    """A product syncd must leave alone; the message is the reason reported to the caller."""


def plan_refresh(
    snap: Snapshot,
    product_ids: Iterable[int],
    *,
    notify_no_stock_amount: int,
    hide_out_of_stock: bool,
    forced: Collection[int] | None = None,
    audit: bool = False,
    children_from_postmeta: bool = False,
) -> RefreshPlan:
    """Decide every derived write for ``product_ids`` on one blog (pure).

    ``forced``: ids WooCommerce would save regardless of what differs (the caller wrote their
    quantity or a register); ``None`` = all of ``product_ids``. Other ids count as saved only when
    one of their derived values has to change. ``audit``: check mode - an inheriting variation's
    term and attribute rows are not expected to follow its status (WooCommerce leaves both as they
    were when the parent pushes a status: fixture 08B), so they are not reported.
    ``children_from_postmeta``: the blog's option ``woocommerce_product_lookup_table_is_generating``
    is set, so ``child_has_stock_status()`` reads the children's ``_stock_status`` postmeta instead
    of their lookup rows.
    """
    given = sorted({int(p) for p in product_ids})
    forced_set = set(given) if forced is None else {int(p) for p in forced}
    notify = int(notify_no_stock_amount)
    plan = RefreshPlan()
    outcomes = plan.outcomes
    lookup_status: dict[int, str] = {}  # product -> stock_status its lookup row will hold
    oos_tt = snap.outofstock_tt

    def current_status(pid: int) -> str | None:
        return woo.meta_single_raw(snap.meta_of(pid), STATUS_KEY)

    def parent_row(post: PostRow) -> PostRow | None:
        if post.post_type != woo.VARIATION or not post.parent_id:
            return None
        parent = snap.posts.get(post.parent_id)
        return parent if _unusable(parent) is None else None

    def source_of(post: PostRow) -> woo.StockSource:
        parent = parent_row(post)
        return woo.stock_source(
            product_id=post.id,
            post_type=post.post_type,
            product_type=snap.product_types.get(post.id),
            manage_meta=woo.meta_single_raw(snap.meta_of(post.id), "_manage_stock"),
            parent_id=parent.id if parent else None,
            parent_manage_meta=woo.meta_single_raw(snap.meta_of(parent.id), "_manage_stock")
            if parent
            else None,
        )

    def rule_status(post: PostRow, source: woo.StockSource) -> str:
        """Status from the validate_props() rule (sources 'own', 'parent', 'manual')."""
        meta = snap.meta_of(post.id)
        if source.mode == "own":
            qty = _quantity_of(meta, "own")
            return woo.managed_stock_status(qty, woo.meta_single_raw(meta, "_backorders"), notify)
        if source.mode == "parent":
            holder = snap.meta_of(source.holder_id or 0)
            qty = _quantity_of(holder, f"parent {source.holder_id}")
            return woo.managed_stock_status(qty, woo.meta_single_raw(holder, "_backorders"), notify)
        # Manual status: WooCommerce keeps what is stored; a missing row gets the prop default.
        stored = current_status(post.id)
        return stored if stored is not None else woo.IN_STOCK

    def evaluate(
        post: PostRow, status: str, role: str, *, with_term: bool, with_attributes: bool
    ) -> dict[str, Any]:
        """Compare the desired derived values of one product with what is stored."""
        pid = post.id
        meta = snap.meta_of(pid)
        old = current_status(pid)
        status_changed = old != status
        current_row = snap.lookup.get(pid)
        flipped = status_changed or (current_row is not None and current_row.get("stock_status") != status)
        row = woo.lookup_row(
            pid,
            meta,
            stock_status=status,
            include_global_unique_id="global_unique_id" in snap.lookup_columns,
        )
        lookup_cols = tuple(woo.lookup_differences(current_row, row))
        term = None
        if with_term and oos_tt is not None:
            want = woo.visibility_wants_outofstock(status)
            has = pid in snap.outofstock_objects
            if want and not has:
                term = "added"
            elif has and not want:
                term = "removed"
        attributes = False
        if with_attributes:
            target = woo.attribute_lookup_in_stock(status)
            attributes = any(v != target for v in snap.attribute_in_stock.get(pid, ()))
        return {
            "post": post,
            "role": role,
            "old": old,
            "new": status,
            "status_changed": status_changed,
            "flipped": flipped,
            "row": row,
            "lookup_cols": lookup_cols,
            "term": term,
            "attributes": attributes,
        }

    def commit(ev: dict[str, Any], *, saved: bool, parent_id: int | None = None) -> ProductOutcome:
        post: PostRow = ev["post"]
        pid = post.id
        if ev["status_changed"]:
            if woo.meta_has(snap.meta_of(pid), STATUS_KEY):
                plan.status_updates[pid] = ev["new"]
            else:
                # Every WooCommerce product has the row from its creation on: one that lacks it is
                # being created by a request that checked for it and will insert it (a second
                # row would follow, syncd.settle). Its lookup row and term still follow.
                log.info("status_row_missing", post=pid, status=ev["new"], rule="never inserted by syncd")
        if ev["lookup_cols"]:
            plan.lookup_rows[pid] = ev["row"]
        lookup_status[pid] = ev["new"]
        if ev["term"] == "added":
            plan.term_add.append(pid)
        elif ev["term"] == "removed":
            plan.term_remove.append(pid)
        if ev["attributes"]:
            plan.attributes[pid] = woo.attribute_lookup_in_stock(ev["new"])
        if saved:
            plan.saved.append(pid)
        out = ProductOutcome(
            product_id=pid,
            role=ev["role"],
            old_status=ev["old"],
            new_status=ev["new"],
            status_written=ev["status_changed"],
            lookup_columns=ev["lookup_cols"],
            term=ev["term"],
            attributes_written=ev["attributes"],
            saved=saved,
            parent_id=parent_id,
            flipped=ev["flipped"],
        )
        outcomes[pid] = out
        return out

    def any_change(ev: dict[str, Any]) -> bool:
        return bool(ev["status_changed"] or ev["lookup_cols"] or ev["term"] or ev["attributes"])

    # Pass 1: the given products that have a rule of their own (everything but variable
    # products that take their status from their children or manage stock for them).
    variable_items: dict[int, str] = {}  # variable product -> role ('given' or 'parent')
    synced: set[int] = set()  # variable parents of saved variations: always saved
    for pid in given:
        post = snap.posts.get(pid)
        reason = _unusable(post)
        if reason:
            outcomes[pid] = ProductOutcome(pid, "given", skipped=reason)
            continue
        assert post is not None
        if post.post_type == woo.PRODUCT and snap.product_types.get(pid) == "variable":
            variable_items[pid] = "given"
            continue
        source = source_of(post)
        try:
            status = rule_status(post, source)
        except _Skip as exc:
            outcomes[pid] = ProductOutcome(pid, "given", old_status=current_status(pid), skipped=str(exc))
            continue
        # A variation save always rewrites its visibility terms (the variation data store forces
        # update_visibility); in audit mode an inheriting variation is exempt (see docstring).
        exempt = audit and source.mode == "parent"
        ev = evaluate(post, status, "given", with_term=not exempt, with_attributes=not exempt)
        saved = pid in forced_set or any_change(ev)
        parent = parent_row(post)
        if saved and parent is not None and snap.product_types.get(parent.id) == "variable":
            # maybe_defer_product_sync(): the parent is synced and saved at shutdown (fixture 07).
            variable_items.setdefault(parent.id, "parent")
            synced.add(parent.id)
        commit(ev, saved=saved, parent_id=parent.id if parent else None)

    # Pass 2: variable products (given, or parents of saved variations), after their children.
    for vid in sorted(variable_items):
        role = variable_items[vid]
        post = snap.posts[vid]
        source = source_of(post)
        children = snap.children_of(vid)
        try:
            if source.mode == "own":
                status = rule_status(post, source)
            else:
                # sync_stock_status(): from the children's lookup rows, as they will be after
                # this transaction (children first: fixture 07 step 3).
                if children_from_postmeta:
                    statuses = [lookup_status.get(c, current_status(c)) for c in children]
                else:
                    statuses = [
                        lookup_status.get(c, (snap.lookup.get(c) or {}).get("stock_status")) for c in children
                    ]
                status = woo.variable_parent_status(statuses)
        except _Skip as exc:
            outcomes[vid] = ProductOutcome(vid, role, old_status=current_status(vid), skipped=str(exc))
            continue
        ev = evaluate(post, status, role, with_term=True, with_attributes=True)
        saved = vid in synced or vid in forced_set or any_change(ev)
        pushed: list[int] = []
        if source.mode == "own":
            # sync_managed_variation_stock_status(): children that do not manage stock get the
            # parent's status in postmeta and their lookup row - no term, no attribute rows (08B).
            for cid in children:
                if cid in outcomes or cid in variable_items:
                    continue  # given itself: already computed with the same rule
                child = snap.posts[cid]
                if not woo.pushes_status_to_child(woo.meta_single_raw(snap.meta_of(cid), "_manage_stock")):
                    continue
                cev = evaluate(child, status, "child", with_term=False, with_attributes=False)
                if any_change(cev):
                    commit(cev, saved=False, parent_id=vid)
                    pushed.append(cid)
        out = commit(ev, saved=saved)
        if pushed:
            outcomes[vid] = replace(out, children_written=tuple(pushed))

    # Transients: wc_delete_product_transients() of every saved product and, for a variation,
    # of its parent too.
    transient_ids: dict[int, None] = {}
    for pid in plan.saved:
        transient_ids[pid] = None
        post = snap.posts[pid]
        if post.post_type == woo.VARIATION and post.parent_id:
            transient_ids[post.parent_id] = None
    plan.transient_ids = sorted(transient_ids)
    plan.saved.sort()
    plan.term_add.sort()
    plan.term_remove.sort()
    plan.recount_products = sorted(
        pid
        for pid, o in outcomes.items()
        if woo.recount_needed(
            hide_out_of_stock=hide_out_of_stock,
            post_type=snap.posts[pid].post_type if pid in snap.posts else "",
            status_changed=o.flipped,
        )
    )
    return plan


# --------------------------------------------------------------------------- reports


@dataclass
class DerivedReport:
    """What :func:`refresh_products` did on one blog (for logs and history)."""

    blog_id: int
    products: dict[int, ProductOutcome] = field(default_factory=dict)
    outofstock_count: tuple[int, int] | None = None  # (old, new) when rewritten
    term_counts: dict[str, tuple[int | None, int]] = field(default_factory=dict)  # 'product_cat:31'
    transients_deleted: tuple[str, ...] = ()
    versions_bumped: bool = False
    posts_modified: tuple[int, ...] = ()
    statements: int = 0

    @property
    def skipped(self) -> dict[int, str]:
        return {pid: o.skipped for pid, o in self.products.items() if o.skipped}

    @property
    def written(self) -> bool:
        return bool(
            any(o.changed for o in self.products.values())
            or self.posts_modified
            or self.transients_deleted
            or self.versions_bumped
            or self.outofstock_count
            or self.term_counts
        )

    def summary(self) -> dict[str, Any]:
        """Flat fields for a structured log line."""
        flips = {
            pid: f"{o.old_status}->{o.new_status}"
            for pid, o in sorted(self.products.items())
            if o.status_written
        }
        return {
            "blog": self.blog_id,
            "products": len(self.products),
            "status_flips": flips,
            "lookup_rows": sorted(p for p, o in self.products.items() if o.lookup_written),
            "terms": {p: o.term for p, o in sorted(self.products.items()) if o.term},
            "saved": list(self.posts_modified),
            "skipped": self.skipped,
            "transients_deleted": len(self.transients_deleted),
            "term_counts": self.term_counts,
            "statements": self.statements,
        }


@dataclass(frozen=True)
class Disagreement:
    """A derived value that does not agree with the product's quantity and settings."""

    blog_id: int
    product_id: int  # 0 for a blog-level value (a term count)
    field: str
    expected: Any
    actual: Any


# --------------------------------------------------------------------------- SQL: reading


class _Sql:
    """Runs statements at the driver level (``%s`` placeholders, values always bound) and counts them.

    Driver-level execution skips SQLAlchemy's per-parameter compilation, which dominated the cost
    of the large multi-row statements (profiled: ~40% of a 100-product refresh).
    """

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.count = 0
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []

    def run(self, statement: str, params: Sequence[Any] = ()) -> Any:
        self.flush()
        self.count += 1
        return self.conn.exec_driver_sql(statement, tuple(params))

    def many(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Rows]:
        """Deferred writes, then ``statements``, in order - one round trip on the apply connection
        (:func:`syncd.db.run_many`). Returns the results of ``statements``."""
        queued, self._deferred = self._deferred, []
        self.count += len(statements)
        return run_many(self.conn, [*queued, *((t, tuple(p)) for t, p in statements)])[len(queued) :]

    def defer(self, statement: str, params: Sequence[Any] = ()) -> None:
        """A write whose result nobody reads: sent with the next statement, or by :meth:`flush`."""
        self.count += 1
        self._deferred.append((statement, tuple(params)))

    def flush(self) -> None:
        if self._deferred:
            self.many([])


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _posts_sql(prefix: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
    """The given posts, their variations, and for a given variation its parent and siblings.

    Four indexed branches (primary key, ``post_parent``) in one statement; an OR across ``ID``
    and ``post_parent`` could scan the table.
    """
    posts = table(prefix, "posts")
    cols = "x.ID, x.post_type, x.post_status, x.post_parent, x.menu_order"
    marks = _marks(len(ids))
    return (
        f"SELECT {cols} FROM {posts} x WHERE x.ID IN ({marks}) "
        f"UNION SELECT {cols} FROM {posts} x WHERE x.post_parent IN ({marks}) AND x.post_type = %s "
        f"UNION SELECT {cols} FROM {posts} v JOIN {posts} x ON x.ID = v.post_parent "
        f"WHERE v.ID IN ({marks}) AND v.post_type = %s "
        f"UNION SELECT {cols} FROM {posts} v JOIN {posts} x ON x.post_parent = v.post_parent AND x.post_type = %s "
        f"WHERE v.ID IN ({marks}) AND v.post_type = %s AND v.post_parent > 0",
        [*ids, *ids, woo.VARIATION, *ids, woo.VARIATION, woo.VARIATION, *ids, woo.VARIATION],
    )


def _parse_posts(rows: Iterable[Sequence[Any]]) -> dict[int, PostRow]:
    return {int(r[0]): PostRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in rows}


def posts_for(rows: Mapping[int, PostRow], ids: Iterable[int]) -> dict[int, PostRow]:
    """What :func:`_posts_sql` reads for ``ids``, taken from rows already read: the given
    posts, their variations, and for a given variation its parent and siblings. ``rows`` must
    hold all of those (the apply step's lock closure does); ids absent from it are not posts."""
    wanted = set(ids)
    parents: set[int] = set()  # the parents of given variations: themselves and their variations
    for pid in wanted:
        row = rows.get(pid)
        if row is not None and row.post_type == woo.VARIATION and row.parent_id > 0:
            parents.add(row.parent_id)
    out: dict[int, PostRow] = {}
    for pid, row in rows.items():
        if (
            pid in wanted
            or pid in parents
            or (row.post_type == woo.VARIATION and (row.parent_id in wanted or row.parent_id in parents))
        ):
            out[pid] = row
    return out


def _candidate_transients(snap: Snapshot, ids: Sequence[int], hide_out_of_stock: bool) -> list[str]:
    """``_transient_`` rows a save of ``ids`` (and their variable parents) may delete."""
    owners = set(ids)
    for pid in ids:
        post = snap.posts.get(pid)
        if post is not None and post.post_type == woo.VARIATION and post.parent_id:
            owners.add(post.parent_id)
    names = list(woo.FIXED_PRODUCT_TRANSIENTS)
    for pid in sorted(owners):
        names += [f"{p}{pid}" for p in woo.PER_PRODUCT_TRANSIENT_PREFIXES]
    if hide_out_of_stock:
        names.append(woo.TERM_COUNTS_TRANSIENT)
    return [woo.transient_option_names(n)[0] for n in names]


def _side_tables_sql(
    prefix: str, involved: Sequence[int], transients: Sequence[str]
) -> tuple[str, list[Any]]:
    """product_type/product_visibility terms, the relationships that matter (variable type,
    outofstock), attribute-lookup stock flags and existing transients: one UNION ALL.

    Every string column is cast to BINARY so that tables created with different collations
    cannot make the UNION fail ("Illegal mix of collations")."""
    tt, terms, rel = (
        table(prefix, "term_taxonomy"),
        table(prefix, "terms"),
        table(prefix, "term_relationships"),
    )
    marks = _marks(len(involved))
    parts = [
        f"SELECT 't', tt.term_taxonomy_id, CAST(tt.taxonomy AS BINARY), CAST(t.name AS BINARY), "
        f"CAST(t.slug AS BINARY), tt.count FROM {tt} tt JOIN {terms} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy IN ('product_type', 'product_visibility')",
        # Driven from the products' own relationships (primary key), never from the terms: the
        # outofstock term can hold thousands of objects.
        f"SELECT 'r', tr.object_id, tr.term_taxonomy_id, NULL, NULL, NULL FROM {rel} tr FORCE INDEX (PRIMARY) "
        f"STRAIGHT_JOIN {tt} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"STRAIGHT_JOIN {terms} t ON t.term_id = tt.term_id "
        f"WHERE tr.object_id IN ({marks}) AND ((tt.taxonomy = 'product_type' AND t.slug = 'variable') "
        f"OR (tt.taxonomy = 'product_visibility' AND t.name = 'outofstock'))",
        f"SELECT DISTINCT 'a', product_id, in_stock, NULL, NULL, NULL "
        f"FROM {table(prefix, 'wc_product_attributes_lookup')} WHERE product_id IN ({marks})",
    ]
    params: list[Any] = [*involved, *involved]
    # A 500-product batch asks for ~2,500 names. An IN list of in_predicate_conversion_threshold
    # (1,000) values or more is turned by MariaDB into a join with a temporary table: measured
    # 18 ms for 2,500 names against 7 ms for the same names in lists of fewer than 1,000.
    for i in range(0, len(transients), _OPTION_NAMES_PER_LIST):
        names = transients[i : i + _OPTION_NAMES_PER_LIST]
        parts.append(
            f"SELECT 'o', NULL, CAST(option_name AS BINARY), NULL, NULL, NULL FROM {table(prefix, 'options')} "
            f"WHERE option_name IN ({_marks(len(names))})"
        )
        params += names
    return " UNION ALL ".join(parts), params


#: Below MariaDB's default in_predicate_conversion_threshold (1,000), see _side_tables_sql.
_OPTION_NAMES_PER_LIST = 900


def _parse_side_tables(snap: Snapshot, rows: Iterable[Sequence[Any]]) -> None:
    relationships: list[tuple[int, int]] = []
    type_tt: dict[int, str] = {}
    for kind, a, b, c, d, e in rows:
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "t":
            taxonomy, name, slug = _text(b), _text(c), _text(d)
            if taxonomy == "product_type":
                type_tt[int(a)] = slug
            else:
                # wc_get_product_visibility_term_ids(): name -> term_taxonomy_id.
                snap.visibility_terms.setdefault(name, int(a))
                snap.visibility_counts[int(a)] = int(e)
        elif kind == "r":
            relationships.append((int(a), int(b)))
        elif kind == "a":
            snap.attribute_in_stock.setdefault(int(a), []).append(int(b))
        else:
            snap.present_transients.add(_text(b))
    oos = snap.outofstock_tt
    for object_id, tt_id in relationships:
        if tt_id == oos:
            snap.outofstock_objects.add(object_id)
        elif tt_id in type_tt:
            # get_product_type(): only "variable" changes a rule here; anything else is simple.
            snap.product_types[object_id] = type_tt[tt_id]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _first_row_expr(agg: str) -> str:
    # The value of the row with the lowest (MIN) or highest (MAX) meta_id for one key: the
    # zero-padded meta_id decides the comparison; 'N'/'V' keeps SQL NULL apart from ''.
    return (
        f"{agg}(CASE WHEN meta_key = %s THEN CONCAT(LPAD(meta_id, 20, '0'), "
        f"IF(meta_value IS NULL, 'N', CONCAT('V', meta_value))) END)"
    )


def _meta_sql(prefix: str, ids: Sequence[int], lock: bool) -> tuple[str, list[Any]]:
    """One row per post with ``get_post_meta($id, $key, true)`` of every key (first row by meta_id)
    and the last ``_price`` row: the pivot happens in the server, so ~15x fewer rows cross the wire."""
    keys = list(META_KEYS)
    columns = [_first_row_expr("MIN") for _ in keys] + [_first_row_expr("MAX")]
    return (
        f"SELECT post_id, {', '.join(columns)} FROM {table(prefix, 'postmeta')} FORCE INDEX (post_id) "
        f"WHERE post_id IN ({_marks(len(ids))}) AND meta_key IN ({_marks(len(keys))}) "
        f"GROUP BY post_id ORDER BY post_id" + (" FOR UPDATE" if lock else ""),
        [*keys, "_price", *ids, *keys],
    )


def _parse_meta(rows: Iterable[Sequence[Any]]) -> dict[int, dict[str, list[str | None]]]:
    keys = list(META_KEYS)
    n = len(keys)
    price = 1 + keys.index("_price")
    out: dict[int, dict[str, list[str | None]]] = {}
    for r in rows:
        # Each cell is _first_row_expr's text: 20 digits of meta_id, then 'N' (SQL NULL) or 'V' and
        # the value. Inlined (a 500-change batch on 10 blogs parses ~80,000 cells); only the two
        # _price cells need their meta_id, compared as the zero-padded digits they are.
        meta: dict[str, list[str | None]] = {}
        for key, cell in zip(keys, r[1 : 1 + n], strict=True):
            if cell is not None:
                text = cell.decode("utf-8") if isinstance(cell, bytes) else str(cell)
                meta[key] = [None if text[20] == "N" else text[21:]]
        last, first_price = r[1 + n], r[price]
        if last is not None and first_price is not None:
            last_text = last.decode("utf-8") if isinstance(last, bytes) else str(last)
            if last_text[:20] != _meta_id_digits(first_price):
                meta["_price"] = [meta["_price"][0], None if last_text[20] == "N" else last_text[21:]]
        out[int(r[0])] = meta
    return out


def _meta_id_digits(cell: Any) -> str:
    return (cell.decode("utf-8") if isinstance(cell, bytes) else str(cell))[:20]


def read_snapshot(
    conn: sa.Connection,
    blog: Blog,
    product_ids: Iterable[int],
    *,
    lock: bool,
    with_transients: bool = False,
    posts: Mapping[int, PostRow] | None = None,
) -> tuple[Snapshot, int]:
    """Read what the planner needs for ``product_ids``, their variable parents and their children.

    With ``lock``, the postmeta rows and the lookup rows of every involved product are read
    ``FOR UPDATE`` in ascending post id order (the canonical lock order); the postmeta read is
    forced onto the ``post_id`` index so that the scan, and therefore the locking, follows post ids.
    ``with_transients`` also reads which of the transients a save may delete exist. Four
    statements in two round trips, three in one when ``posts`` (rows the caller already read in
    this transaction, holding at least what :func:`posts_for` needs) is given. Returns the
    snapshot and the number of statements used.
    """
    ids = sorted({int(p) for p in product_ids})
    snaps = read_snapshots(_Sql(conn), [(blog, ids, posts)], lock=lock, with_transients=with_transients)
    return snaps[blog.blog_id]


def read_snapshots(
    sql: _Sql,
    jobs: Sequence[tuple[Blog, Sequence[int], Mapping[int, PostRow] | None]],
    *,
    lock: bool,
    with_transients: bool,
) -> dict[int, tuple[Snapshot, int]]:
    """:func:`read_snapshot` of several blogs (ascending blog id): the posts reads that are
    needed in one round trip, then every blog's three reads in one, blog after blog."""
    snaps: dict[int, Snapshot] = {blog.blog_id: Snapshot() for blog, _, _ in jobs}
    counts: dict[int, int] = {blog.blog_id: 0 for blog, _, _ in jobs}
    unread = [(blog, ids) for blog, ids, posts in jobs if ids and posts is None]
    if unread:
        for (blog, _ids), result in zip(
            unread, sql.many([_posts_sql(blog.prefix, ids) for blog, ids in unread]), strict=True
        ):
            snaps[blog.blog_id].posts = _parse_posts(result.rows)
            counts[blog.blog_id] += 1
    statements: list[tuple[str, Sequence[Any]]] = []
    reading: list[Blog] = []
    for blog, ids, posts in jobs:
        snap = snaps[blog.blog_id]
        if not ids:
            continue
        if posts is not None:
            snap.posts = posts_for(posts, ids)
        involved = sorted(snap.posts)
        if not involved:
            continue
        transients = _candidate_transients(snap, ids, blog.hide_out_of_stock) if with_transients else []
        # Three reads that depend only on the posts (the meta rows, then the lookup rows, are
        # locked in ascending post id order).
        statements += [
            _side_tables_sql(blog.prefix, involved, transients),
            _meta_sql(blog.prefix, involved, lock),
            (
                f"SELECT * FROM {table(blog.prefix, 'wc_product_meta_lookup')} "
                f"WHERE product_id IN ({_marks(len(involved))}) ORDER BY product_id"
                + (" FOR UPDATE" if lock else ""),
                involved,
            ),
        ]
        reading.append(blog)
    results = sql.many(statements) if statements else []
    for i, blog in enumerate(reading):
        side, meta, lookup = results[3 * i : 3 * i + 3]
        snap = snaps[blog.blog_id]
        _parse_side_tables(snap, side.rows)
        snap.meta = _parse_meta(meta.rows)
        keys = list(lookup.columns)
        snap.lookup_columns = tuple(c for c in woo.LOOKUP_COLUMNS if c in keys)
        for r in lookup.rows:
            row = dict(zip(keys, r, strict=True))
            snap.lookup[int(row["product_id"])] = row
        counts[blog.blog_id] += 3
    return {b: (snaps[b], counts[b]) for b in snaps}


# --------------------------------------------------------------------------- SQL: writing


def _write_statuses(sql: _Sql, prefix: str, plan: RefreshPlan) -> None:
    postmeta = table(prefix, "postmeta")
    by_value: dict[str, list[int]] = {}
    for pid, status in plan.status_updates.items():
        by_value.setdefault(status, []).append(pid)
    for status, pids in sorted(by_value.items()):
        # update_post_meta() without prev_value rewrites every row of the key. Through the
        # post_id index: the rows it touches are then only these products' rows, which the
        # apply lock step already holds; through the meta_key index it would lock its way past
        # every _stock_status row of the blog, i.e. wait for (or deadlock with) the shop.
        sql.defer(
            f"UPDATE {postmeta} FORCE INDEX (post_id) SET meta_value = %s "
            f"WHERE meta_key = %s AND post_id IN ({_marks(len(pids))})",
            [status, STATUS_KEY, *sorted(pids)],
        )
    if plan.status_inserts:
        params: list[Any] = []
        for pid, status in sorted(plan.status_inserts.items()):
            params += [pid, STATUS_KEY, status]
        sql.defer(
            f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(plan.status_inserts)),
            params,
        )


def _write_lookup(sql: _Sql, prefix: str, plan: RefreshPlan, snap: Snapshot) -> None:
    if not plan.lookup_rows:
        return
    # Existing rows (locked by the read) get only the columns that differ; missing rows get the
    # whole row WooCommerce computes. Never REPLACE: a column this code does not know (e.g. COGS)
    # keeps its value. Rows with the same set of changed columns share one statement.
    groups: dict[tuple[str, ...], list[int]] = {}
    all_cols = tuple(c for c in woo.LOOKUP_COLUMNS if c in snap.lookup_columns)
    for pid in sorted(plan.lookup_rows):
        if pid in snap.lookup:
            cols = ("product_id", *(c for c in plan.outcomes[pid].lookup_columns if c != "product_id"))
        else:
            cols = all_cols
        groups.setdefault(cols, []).append(pid)
    for cols, pids in sorted(groups.items()):
        params: list[Any] = []
        for pid in pids:
            row = plan.lookup_rows[pid]
            params += [row.get(c) for c in cols]
        updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in cols if c != "product_id")
        if not updates:
            continue
        sql.defer(
            f"INSERT INTO {table(prefix, 'wc_product_meta_lookup')} ({', '.join(f'`{c}`' for c in cols)}) VALUES "
            + ", ".join([f"({_marks(len(cols))})"] * len(pids))
            + f" ON DUPLICATE KEY UPDATE {updates}",
            params,
        )


def _write_terms(sql: _Sql, prefix: str, plan: RefreshPlan, snap: Snapshot) -> tuple[int, int] | None:
    tt = snap.outofstock_tt
    if tt is None or not (plan.term_add or plan.term_remove):
        return None
    rel = table(prefix, "term_relationships")
    if plan.term_add:
        params: list[Any] = []
        for pid in plan.term_add:
            params += [pid, tt]
        # A concurrent WooCommerce save may have added the same row since the read: no-op then.
        sql.defer(
            f"INSERT INTO {rel} (object_id, term_taxonomy_id, term_order) VALUES "
            + ", ".join(["(%s, %s, 0)"] * len(plan.term_add))
            + " ON DUPLICATE KEY UPDATE term_order = term_order",
            params,
        )
    if plan.term_remove:
        sql.defer(
            f"DELETE FROM {rel} WHERE term_taxonomy_id = %s AND object_id IN ({_marks(len(plan.term_remove))})",
            [tt, *plan.term_remove],
        )
    # wp_set_object_terms() -> wp_update_term_count() -> _update_post_term_count(): published
    # objects of the taxonomy's post types (fixture 07 step 3: 3 -> 5).
    old, new = _outofstock_count(sql, prefix, tt, lock=True)
    if old != new:
        sql.defer(
            f"UPDATE {table(prefix, 'term_taxonomy')} SET count = %s WHERE term_taxonomy_id = %s", [new, tt]
        )
        return old, new
    return None


def _outofstock_count(sql: _Sql, prefix: str, tt: int, *, lock: bool) -> tuple[int, int]:
    statuses = list(woo.VISIBILITY_COUNT_POST_STATUSES)
    types = list(woo.VISIBILITY_COUNT_POST_TYPES)
    row = sql.run(
        f"SELECT tt.count, (SELECT COUNT(*) FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'posts')} p ON p.ID = tr.object_id "
        f"WHERE tr.term_taxonomy_id = tt.term_taxonomy_id AND p.post_status IN ({_marks(len(statuses))}) "
        f"AND p.post_type IN ({_marks(len(types))})) "
        f"FROM {table(prefix, 'term_taxonomy')} tt WHERE tt.term_taxonomy_id = %s"
        + (" FOR UPDATE" if lock else ""),
        [*statuses, *types, tt],
    ).one()
    return int(row[0]), int(row[1])


def _write_attributes(sql: _Sql, prefix: str, plan: RefreshPlan) -> None:
    by_value: dict[int, list[int]] = {}
    for pid, in_stock in plan.attributes.items():
        by_value.setdefault(in_stock, []).append(pid)
    for in_stock, pids in sorted(by_value.items()):
        sql.defer(
            f"UPDATE {table(prefix, 'wc_product_attributes_lookup')} SET in_stock = %s "
            f"WHERE product_id IN ({_marks(len(pids))}) AND in_stock <> %s",
            [in_stock, *sorted(pids), in_stock],
        )


def _write_post_modified(sql: _Sql, blog: Blog, plan: RefreshPlan, now_utc: datetime) -> None:
    if not plan.saved:
        return
    local, gmt = woo.post_modified_values(now_utc, blog.option("timezone_string"), blog.option("gmt_offset"))
    sql.defer(
        f"UPDATE {table(blog.prefix, 'posts')} SET post_modified = %s, post_modified_gmt = %s "
        f"WHERE ID IN ({_marks(len(plan.saved))})",
        [local, gmt, *plan.saved],
    )


def _product_terms(sql: _Sql, prefix: str, product_ids: Sequence[int]) -> dict[str, dict[int, set[int]]]:
    """taxonomy -> product -> term ids, for product_cat and product_tag."""
    out: dict[str, dict[int, set[int]]] = {}
    taxonomies = list(woo.RECOUNT_TAXONOMIES)
    for object_id, taxonomy, term_id in sql.run(
        f"SELECT tr.object_id, tt.taxonomy, tt.term_id FROM {table(prefix, 'term_relationships')} tr "
        f"FORCE INDEX (PRIMARY) STRAIGHT_JOIN {table(prefix, 'term_taxonomy')} tt "
        f"ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"WHERE tr.object_id IN ({_marks(len(product_ids))}) AND tt.taxonomy IN ({_marks(len(taxonomies))})",
        [*product_ids, *taxonomies],
    ):
        out.setdefault(str(taxonomy), {}).setdefault(int(object_id), set()).add(int(term_id))
    return out


def _term_parents(sql: _Sql, prefix: str, taxonomy: str) -> dict[int, int]:
    return {
        int(term_id): int(parent)
        for term_id, parent in sql.run(
            f"SELECT term_id, parent FROM {table(prefix, 'term_taxonomy')} WHERE taxonomy = %s", [taxonomy]
        )
    }


def _catalog_counts(
    sql: _Sql, prefix: str, snap: Snapshot, hide: bool, to_count: Mapping[int, set[int]]
) -> dict[int, int]:
    """``_wc_term_recount()``: per term, distinct published ``product`` posts in the term or any
    descendant, minus those with ``exclude-from-catalog`` and (hide = yes) ``outofstock``."""
    exclude = [snap.visibility_terms[n] for n in ("exclude-from-catalog",) if n in snap.visibility_terms]
    if hide and snap.outofstock_tt is not None:
        exclude.append(snap.outofstock_tt)
    posts = table(prefix, "posts")
    rel = table(prefix, "term_relationships")
    tax = table(prefix, "term_taxonomy")
    parts = []
    params: list[Any] = []
    for term_id, members in sorted(to_count.items()):
        part = (
            f"SELECT %s, COUNT(DISTINCT p.ID) FROM {posts} p "
            f"JOIN {rel} tr ON tr.object_id = p.ID "
            f"JOIN {tax} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.term_id IN ({_marks(len(members))}) "
            f"WHERE p.post_status = 'publish' AND p.post_type = 'product'"
        )
        params += [term_id, *sorted(members)]
        if exclude:
            part += (
                f" AND NOT EXISTS (SELECT 1 FROM {rel} x WHERE x.object_id = p.ID "
                f"AND x.term_taxonomy_id IN ({_marks(len(exclude))}))"
            )
            params += exclude
        parts.append(part)
    if not parts:
        return {}
    return {int(t): int(n) for t, n in sql.run(" UNION ALL ".join(parts), params)}


def _terms_for_recount(sql: _Sql, prefix: str, product_ids: Sequence[int]) -> dict[tuple[str, int], set[int]]:
    """(taxonomy, term) -> the terms whose objects it counts (itself + descendants)."""
    by_tax = _product_terms(sql, prefix, product_ids)
    out: dict[tuple[str, int], set[int]] = {}
    for taxonomy in woo.RECOUNT_TAXONOMIES:
        per_product = by_tax.get(taxonomy)
        if not per_product:
            continue
        hierarchical = taxonomy in woo.HIERARCHICAL_TAXONOMIES
        parents = _term_parents(sql, prefix, taxonomy) if hierarchical else {}
        for pid in sorted(per_product):
            for term in woo.terms_to_recount(sorted(per_product[pid]), parents, hierarchical=hierarchical):
                members = {term} | (woo.term_descendants(term, parents) if hierarchical else set())
                out[(taxonomy, term)] = members
    return out


def _stored_counts(
    sql: _Sql, prefix: str, terms: Sequence[int], key: str, lock: bool
) -> dict[int, str | None]:
    stored: dict[int, str | None] = {}
    for term_id, value in sql.run(
        f"SELECT term_id, meta_value FROM {table(prefix, 'termmeta')} "
        f"WHERE term_id IN ({_marks(len(terms))}) AND meta_key = %s ORDER BY meta_id"
        + (" FOR UPDATE" if lock else ""),
        [*terms, key],
    ):
        stored.setdefault(int(term_id), value)  # get_term_meta(..., true): the first row
    return stored


def _recount_terms(
    sql: _Sql, blog: Blog, snap: Snapshot, product_ids: Sequence[int]
) -> dict[str, tuple[int | None, int]]:
    """Rewrite ``product_count_<taxonomy>`` termmeta where it differs (update_term_meta no-op rule)."""
    return _write_term_counts(sql, blog, snap, _terms_for_recount(sql, blog.prefix, product_ids))


def _write_term_counts(
    sql: _Sql, blog: Blog, snap: Snapshot, targets: Mapping[tuple[str, int], set[int]]
) -> dict[str, tuple[int | None, int]]:
    """``product_count_<taxonomy>`` of each (taxonomy, term) -> the terms it counts, written where
    it differs (inserted when missing)."""
    prefix = blog.prefix
    if not targets:
        return {}
    termmeta = table(prefix, "termmeta")
    written: dict[str, tuple[int | None, int]] = {}
    for taxonomy in woo.RECOUNT_TAXONOMIES:
        group = {term: members for (tax, term), members in targets.items() if tax == taxonomy}
        if not group:
            continue
        counts = _catalog_counts(sql, prefix, snap, blog.hide_out_of_stock, group)
        key = woo.term_count_meta_key(taxonomy)
        stored = _stored_counts(sql, prefix, sorted(group), key, lock=True)
        inserts: list[tuple[int, int]] = []
        for term in sorted(group):
            new = counts.get(term, 0)
            if term not in stored:
                inserts.append((term, new))
                written[f"{taxonomy}:{term}"] = (None, new)
            elif stored[term] != str(new):
                sql.defer(
                    f"UPDATE {termmeta} SET meta_value = %s WHERE term_id = %s AND meta_key = %s",
                    [str(new), term, key],
                )
                written[f"{taxonomy}:{term}"] = (woo.php_int(stored[term]), new)
        if inserts:
            params: list[Any] = []
            for term, new in inserts:
                params += [term, key, str(new)]
            sql.defer(
                f"INSERT INTO {termmeta} (term_id, meta_key, meta_value) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(inserts)),
                params,
            )
    return written


def _write_transients(
    sql: _Sql, prefix: str, plan: RefreshPlan, snap: Snapshot, now_utc: datetime, *, term_counts: bool
) -> tuple[tuple[str, ...], bool]:
    options = table(prefix, "options")
    names: dict[str, None] = {}
    if plan.saved:
        names.update(dict.fromkeys(woo.FIXED_PRODUCT_TRANSIENTS))
        for pid in plan.transient_ids:
            names.update(dict.fromkeys(f"{p}{pid}" for p in woo.PER_PRODUCT_TRANSIENT_PREFIXES))
    if term_counts:
        names[woo.TERM_COUNTS_TRANSIENT] = None
    doomed: list[str] = []
    for name in names:
        main, timeout = woo.transient_option_names(name)
        # delete_transient(): the timeout row goes only when the transient itself existed.
        if main in snap.present_transients:
            doomed += [main, timeout]
    if doomed:
        sql.defer(f"DELETE FROM {options} WHERE option_name IN ({_marks(len(doomed))})", doomed)
    versions = woo.version_transients_bumped(product_saved=bool(plan.saved))
    if not versions:
        return tuple(doomed), False
    stamp = str(woo.unix_time(now_utc))
    params: list[Any] = []
    for name in versions:
        params += [woo.transient_option_names(name)[0], stamp]
    sql.defer(
        f"INSERT INTO {options} (option_name, option_value, autoload) VALUES "
        + ", ".join(["(%s, %s, 'on')"] * len(versions))
        + " ON DUPLICATE KEY UPDATE option_value = VALUES(option_value)",
        params,
    )
    return tuple(doomed), True


def _terms_with_ancestors(
    sql: _Sql, prefix: str, terms: Mapping[str, Iterable[int]]
) -> dict[tuple[str, int], set[int]]:
    """``_wc_term_recount()``'s targets for explicit terms: each term and (product_cat) its
    ancestors, each counted over itself and its descendants."""
    out: dict[tuple[str, int], set[int]] = {}
    for taxonomy in woo.RECOUNT_TAXONOMIES:
        given = sorted({int(t) for t in terms.get(taxonomy, ())})
        if not given:
            continue
        hierarchical = taxonomy in woo.HIERARCHICAL_TAXONOMIES
        parents = _term_parents(sql, prefix, taxonomy) if hierarchical else {}
        for term in woo.terms_to_recount(given, parents, hierarchical=hierarchical):
            out[(taxonomy, term)] = {term} | (woo.term_descendants(term, parents) if hierarchical else set())
    return out


def recount_catalog_terms(
    conn: sa.Connection, blog: Blog, terms: Mapping[str, Iterable[int]]
) -> dict[str, tuple[int | None, int]]:
    """``_wc_term_recount()`` for explicit ``product_cat`` / ``product_tag`` term ids (and their
    ancestors): the ``product_count_<taxonomy>`` termmeta, written where it differs, with the
    blog's own visibility terms and ``woocommerce_hide_out_of_stock_items``. Used when a product's
    categories, tags or ``exclude-from-catalog`` term change (syncd.fields.terms). Does not touch
    ``term_taxonomy.count`` nor the ``wc_term_counts`` transient (the caller does). Returns
    ``{"taxonomy:term": (old, new)}`` of the rows written."""
    sql = _Sql(conn)
    targets = _terms_with_ancestors(sql, blog.prefix, terms)
    if not targets:
        return {}
    snap = Snapshot()
    for name, tt_id in sql.run(
        f"SELECT t.name, tt.term_taxonomy_id FROM {table(blog.prefix, 'term_taxonomy')} tt "
        f"JOIN {table(blog.prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = 'product_visibility' ORDER BY tt.term_taxonomy_id"
    ):
        snap.visibility_terms.setdefault(_text(name), int(tt_id))
    written = _write_term_counts(sql, blog, snap, targets)
    sql.flush()
    return written


# --------------------------------------------------------------------------- public API


def refresh_products(
    conn: sa.Connection,
    blog: Blog,
    product_ids: Collection[int],
    *,
    now_utc: datetime,
    changed: Collection[int] | None = None,
    posts: Mapping[int, PostRow] | None = None,
) -> DerivedReport:
    """Recompute and write WooCommerce's derived data for ``product_ids`` on ``blog``.

    Runs inside the caller's open transaction, after the caller has written quantities and
    registers; never commits. ``product_ids`` are stock holders or products whose registers
    changed (or whose captured change must be repaired) on this one blog. ``changed``: the ids
    whose stock meta the caller itself wrote in this transaction - WooCommerce would have saved
    those (post_modified, transients, version transients) even when no derived value changes
    (e.g. only ``_low_stock_amount``: fixture 09B). ``None`` (default) treats every given id so.
    Any other id is saved only when one of its derived values had to change. ``posts``: the
    posts rows the caller read in this transaction, if they include every post
    :func:`posts_for` needs (saves a round trip).

    ``now_utc`` is the save time (naive = UTC): ``post_modified_gmt``, ``post_modified`` in the
    blog's time zone, and the version transients' unix time.

    Products whose post is gone or trashed, that are not products, or whose quantity is not a
    number are skipped with a reason in the report; nothing is raised for them. Database errors
    (deadlock, lock wait timeout, lost connection) propagate: the caller rolls back and retries.
    """
    return refresh_many(conn, [RefreshJob(blog, product_ids, changed, posts)], now_utc=now_utc)[blog.blog_id]


@dataclass(frozen=True)
class RefreshJob:
    """One blog's part of :func:`refresh_many` (the arguments of :func:`refresh_products`)."""

    blog: Blog
    product_ids: Collection[int]
    changed: Collection[int] | None = None
    posts: Mapping[int, PostRow] | None = None


def refresh_many(
    conn: sa.Connection, jobs: Sequence[RefreshJob], *, now_utc: datetime, savepoint: str | None = None
) -> dict[int, DerivedReport]:
    """:func:`refresh_products` of several blogs (ascending blog id) in one transaction step: the
    reads of every blog in one round trip, then the writes of every blog in one (more only where
    a status flip makes the ``outofstock`` count or the catalog counts be read back). Per blog,
    the same statements in the same order as :func:`refresh_products` of that blog alone.
    ``savepoint``: a name; the step then runs inside ``SAVEPOINT name`` (sent with the reads) and
    ``RELEASE SAVEPOINT name`` (sent with the writes), no round trip of their own. On an error
    the savepoint is left for the caller to roll back to (``ROLLBACK TO SAVEPOINT name``)."""
    sql = _Sql(conn)
    if savepoint is not None:
        sql.defer(f"SAVEPOINT {savepoint}")
    normalised = [(job.blog, sorted({int(p) for p in job.product_ids}), job.posts) for job in jobs]
    snaps = read_snapshots(sql, normalised, lock=True, with_transients=True)
    reports: dict[int, DerivedReport] = {}
    for job, (blog, ids, _) in zip(jobs, normalised, strict=True):
        report = reports[blog.blog_id] = DerivedReport(blog_id=blog.blog_id)
        if not ids:
            continue
        snap, reads = snaps[blog.blog_id]
        plan = plan_refresh(
            snap,
            ids,
            notify_no_stock_amount=blog.notify_no_stock_amount,
            hide_out_of_stock=blog.hide_out_of_stock,
            forced=job.changed,
            children_from_postmeta=bool(blog.option("woocommerce_product_lookup_table_is_generating")),
        )
        before = sql.count
        prefix = blog.prefix
        _write_statuses(sql, prefix, plan)
        _write_lookup(sql, prefix, plan, snap)
        _write_attributes(sql, prefix, plan)
        _write_post_modified(sql, blog, plan, now_utc)
        # Rows every WooCommerce save of any product also writes (the outofstock term's count,
        # the version transients) come last, so they stay locked for the shortest time.
        report.outofstock_count = _write_terms(sql, prefix, plan, snap)
        if plan.recount_products:
            report.term_counts = _recount_terms(sql, blog, snap, plan.recount_products)
        report.transients_deleted, report.versions_bumped = _write_transients(
            sql, prefix, plan, snap, now_utc, term_counts=bool(plan.recount_products)
        )
        report.products = dict(sorted(plan.outcomes.items()))
        report.posts_modified = tuple(plan.saved)
        report.statements = reads + sql.count - before
    if savepoint is not None:
        sql.defer(f"RELEASE SAVEPOINT {savepoint}")
    sql.flush()  # the writes: one round trip on the apply connection, in the order queued
    for report in reports.values():
        for pid, reason in sorted(report.skipped.items()):
            log.warning("derived_product_skipped", blog=report.blog_id, post=pid, reason=reason)
        if report.written:
            log.debug("derived_refreshed", **report.summary())
    return reports


def check_products(conn: sa.Connection, blog: Blog, product_ids: Collection[int]) -> list[Disagreement]:
    """Read-only audit: where status, lookup row, ``outofstock`` term, attribute rows, the variable
    parent or the pushed children of ``product_ids`` disagree with their quantities and settings,
    plus the ``outofstock`` term count and (hide-out-of-stock blogs) the category/tag counts of
    the given products. Locks nothing; writes nothing.

    Unusable products are reported with field ``'skipped'`` and the reason as ``actual``.
    """
    ids = sorted({int(p) for p in product_ids})
    if not ids:
        return []
    snap, _ = read_snapshot(conn, blog, ids, lock=False)
    plan = plan_refresh(
        snap,
        ids,
        notify_no_stock_amount=blog.notify_no_stock_amount,
        hide_out_of_stock=blog.hide_out_of_stock,
        forced=ids,
        audit=True,
        children_from_postmeta=bool(blog.option("woocommerce_product_lookup_table_is_generating")),
    )
    out: list[Disagreement] = []
    b = blog.blog_id
    for pid, o in sorted(plan.outcomes.items()):
        if o.skipped:
            out.append(Disagreement(b, pid, "skipped", None, o.skipped))
            continue
        if o.status_written:
            out.append(Disagreement(b, pid, STATUS_KEY, o.new_status, o.old_status))
        current = snap.lookup.get(pid)
        for col in o.lookup_columns:
            expected = woo.stored_lookup_value(col, plan.lookup_rows[pid].get(col))
            actual = None if current is None else current.get(col)
            out.append(
                Disagreement(
                    b, pid, f"wc_product_meta_lookup.{col}", expected, actual if current else "missing row"
                )
            )
        if o.term:
            out.append(
                Disagreement(b, pid, "product_visibility:outofstock", o.term == "added", o.term == "removed")
            )
        if o.attributes_written:
            out.append(
                Disagreement(
                    b,
                    pid,
                    "wc_product_attributes_lookup.in_stock",
                    plan.attributes[pid],
                    sorted(set(snap.attribute_in_stock.get(pid, ()))),
                )
            )
    sql = _Sql(conn)
    tt = snap.outofstock_tt
    if tt is not None:
        old, new = _outofstock_count(sql, blog.prefix, tt, lock=False)
        if old != new:
            out.append(Disagreement(b, 0, "term_taxonomy.count[product_visibility:outofstock]", new, old))
    if blog.hide_out_of_stock:
        products = [p for p in ids if p in snap.posts and snap.posts[p].post_type == woo.PRODUCT]
        targets = _terms_for_recount(sql, blog.prefix, products) if products else {}
        for taxonomy in woo.RECOUNT_TAXONOMIES:
            group = {term: m for (tax, term), m in targets.items() if tax == taxonomy}
            if not group:
                continue
            counts = _catalog_counts(sql, blog.prefix, snap, True, group)
            key = woo.term_count_meta_key(taxonomy)
            stored = _stored_counts(sql, blog.prefix, sorted(group), key, lock=False)
            for term in sorted(group):
                expected = counts.get(term, 0)
                actual = stored.get(term)
                if actual is None or actual != str(expected):
                    out.append(Disagreement(b, 0, f"termmeta[{term}].{key}", expected, actual))
    return out


def _now() -> datetime:  # pragma: no cover - convenience for interactive use
    return datetime.now(UTC)
