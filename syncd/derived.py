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
from syncd.db import table
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
) -> RefreshPlan:
    """Decide every derived write for ``product_ids`` on one blog (pure).

    ``forced``: ids WooCommerce would save regardless of what differs (the caller wrote their
    quantity or a register); ``None`` = all of ``product_ids``. Other ids count as saved only when
    one of their derived values has to change. ``audit``: check mode - an inheriting variation's
    term and attribute rows are not expected to follow its status (WooCommerce leaves both as they
    were when the parent pushes a status: fixture 08B), so they are not reported.
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
        row = woo.lookup_row(
            pid,
            meta,
            stock_status=status,
            include_global_unique_id="global_unique_id" in snap.lookup_columns,
        )
        lookup_cols = tuple(woo.lookup_differences(snap.lookup.get(pid), row))
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
                plan.status_inserts[pid] = ev["new"]
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
        )
        outcomes[pid] = out
        return out

    def any_change(ev: dict[str, Any]) -> bool:
        return bool(ev["status_changed"] or ev["lookup_cols"] or ev["term"] or ev["attributes"])

    # Pass 1: the given products that have a rule of their own (everything but variable
    # products that take their status from their children or manage stock for them).
    variable_items: dict[int, str] = {}  # variable product -> role ('given' or 'parent')
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
                statuses = [
                    lookup_status.get(c, (snap.lookup.get(c) or {}).get("stock_status")) for c in children
                ]
                status = woo.variable_parent_status(statuses)
        except _Skip as exc:
            outcomes[vid] = ProductOutcome(vid, role, old_status=current_status(vid), skipped=str(exc))
            continue
        ev = evaluate(post, status, role, with_term=True, with_attributes=True)
        saved = role == "parent" or vid in forced_set or any_change(ev)
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
            status_changed=o.status_written,
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
    """Counts statements; every statement goes through here with bound parameters."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.count = 0

    def run(self, sql: str, params: Mapping[str, Any] | None = None, expanding: Sequence[str] = ()) -> Any:
        stmt = sa.text(sql)
        if expanding:
            stmt = stmt.bindparams(*(sa.bindparam(name, expanding=True) for name in expanding))
        self.count += 1
        return self.conn.execute(stmt, dict(params or {}))


def _read_posts(sql: _Sql, prefix: str, ids: Sequence[int]) -> dict[int, PostRow]:
    posts = table(prefix, "posts")
    # Two indexed branches in one round trip (an OR across ID and post_parent could scan).
    rows = sql.run(
        f"SELECT ID, post_type, post_status, post_parent, menu_order FROM {posts} WHERE ID IN :ids "
        f"UNION SELECT ID, post_type, post_status, post_parent, menu_order FROM {posts} "
        f"WHERE post_parent IN :ids AND post_type = :variation",
        {"ids": list(ids), "variation": woo.VARIATION},
        expanding=("ids",),
    )
    return {
        int(r.ID): PostRow(int(r.ID), r.post_type, r.post_status, int(r.post_parent), int(r.menu_order))
        for r in rows
    }


def read_snapshot(
    conn: sa.Connection, blog: Blog, product_ids: Iterable[int], *, lock: bool
) -> tuple[Snapshot, int]:
    """Read what the planner needs for ``product_ids``, their variable parents and their children.

    With ``lock``, the postmeta rows and the lookup rows of every involved product are read
    ``FOR UPDATE`` in ascending post id order (the canonical lock order); the postmeta read is
    forced onto the ``post_id`` index so that the scan, and therefore the locking, follows post ids.
    Returns the snapshot and the number of statements used.
    """
    sql = _Sql(conn)
    prefix = blog.prefix
    ids = sorted({int(p) for p in product_ids})
    snap = Snapshot()
    if not ids:
        return snap, 0
    snap.posts = _read_posts(sql, prefix, ids)
    parents = sorted(
        {
            p.parent_id
            for p in snap.posts.values()
            if p.id in ids and p.post_type == woo.VARIATION and p.parent_id
        }
        - set(snap.posts)
    )
    if parents:
        snap.posts.update(_read_posts(sql, prefix, parents))
    involved = sorted(snap.posts)
    for_update = " FOR UPDATE" if lock else ""

    terms = sql.run(
        f"SELECT tr.object_id, tt.taxonomy, tt.term_taxonomy_id, t.name, t.slug "
        f"FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tr.object_id IN :ids AND tt.taxonomy IN ('product_type', 'product_visibility')",
        {"ids": involved},
        expanding=("ids",),
    )
    visibility_rows: list[Any] = []
    for r in terms:
        if r.taxonomy == "product_type":
            # get_product_type(): the first type term, sanitized; the slug is that.
            snap.product_types.setdefault(int(r.object_id), r.slug)
        else:
            visibility_rows.append(r)
    for r in sql.run(
        f"SELECT tt.term_taxonomy_id, t.name, tt.count FROM {table(prefix, 'term_taxonomy')} tt "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = 'product_visibility' ORDER BY tt.term_taxonomy_id"
    ):
        # wc_get_product_visibility_term_ids(): name -> term_taxonomy_id.
        snap.visibility_terms.setdefault(r.name, int(r.term_taxonomy_id))
        snap.visibility_counts[int(r.term_taxonomy_id)] = int(r.count)
    oos = snap.outofstock_tt
    snap.outofstock_objects = {int(r.object_id) for r in visibility_rows if int(r.term_taxonomy_id) == oos}

    for r in sql.run(
        f"SELECT post_id, meta_key, meta_value FROM {table(prefix, 'postmeta')} FORCE INDEX (post_id) "
        f"WHERE post_id IN :ids AND meta_key IN :keys ORDER BY post_id, meta_id{for_update}",
        {"ids": involved, "keys": list(META_KEYS)},
        expanding=("ids", "keys"),
    ):
        snap.meta.setdefault(int(r.post_id), {}).setdefault(r.meta_key, []).append(r.meta_value)

    result = sql.run(
        f"SELECT * FROM {table(prefix, 'wc_product_meta_lookup')} WHERE product_id IN :ids "
        f"ORDER BY product_id{for_update}",
        {"ids": involved},
        expanding=("ids",),
    )
    snap.lookup_columns = tuple(c for c in woo.LOOKUP_COLUMNS if c in result.keys())
    for r in result.mappings():
        snap.lookup[int(r["product_id"])] = dict(r)

    for r in sql.run(
        f"SELECT product_id, in_stock FROM {table(prefix, 'wc_product_attributes_lookup')} "
        f"WHERE product_id IN :ids",
        {"ids": involved},
        expanding=("ids",),
    ):
        snap.attribute_in_stock.setdefault(int(r.product_id), []).append(int(r.in_stock))
    return snap, sql.count


# --------------------------------------------------------------------------- SQL: writing


def _write_statuses(sql: _Sql, prefix: str, plan: RefreshPlan) -> None:
    postmeta = table(prefix, "postmeta")
    by_value: dict[str, list[int]] = {}
    for pid, status in plan.status_updates.items():
        by_value.setdefault(status, []).append(pid)
    for status, pids in sorted(by_value.items()):
        # update_post_meta() without prev_value rewrites every row of the key.
        sql.run(
            f"UPDATE {postmeta} SET meta_value = :status WHERE meta_key = :key AND post_id IN :ids",
            {"status": status, "key": STATUS_KEY, "ids": sorted(pids)},
            expanding=("ids",),
        )
    if plan.status_inserts:
        params: dict[str, Any] = {"key": STATUS_KEY}
        values = []
        for n, (pid, status) in enumerate(sorted(plan.status_inserts.items())):
            values.append(f"(:p{n}, :key, :s{n})")
            params[f"p{n}"] = pid
            params[f"s{n}"] = status
        sql.run(f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES {', '.join(values)}", params)


def _write_lookup(sql: _Sql, prefix: str, plan: RefreshPlan, columns: Sequence[str]) -> None:
    if not plan.lookup_rows:
        return
    cols = [c for c in woo.LOOKUP_COLUMNS if c in columns]
    params: dict[str, Any] = {}
    values = []
    for n, (_pid, row) in enumerate(sorted(plan.lookup_rows.items())):
        names = []
        for i, c in enumerate(cols):
            params[f"r{n}c{i}"] = row.get(c)
            names.append(f":r{n}c{i}")
        values.append(f"({', '.join(names)})")
    # Not REPLACE: only the columns WooCommerce's row has are assigned, so a column this code does
    # not know (e.g. COGS) keeps its value. Identical values leave the row untouched.
    updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in cols if c != "product_id")
    sql.run(
        f"INSERT INTO {table(prefix, 'wc_product_meta_lookup')} ({', '.join(f'`{c}`' for c in cols)}) "
        f"VALUES {', '.join(values)} ON DUPLICATE KEY UPDATE {updates}",
        params,
    )


def _write_terms(sql: _Sql, prefix: str, plan: RefreshPlan, snap: Snapshot) -> tuple[int, int] | None:
    tt = snap.outofstock_tt
    if tt is None or not (plan.term_add or plan.term_remove):
        return None
    rel = table(prefix, "term_relationships")
    if plan.term_add:
        params: dict[str, Any] = {"tt": tt}
        values = []
        for n, pid in enumerate(plan.term_add):
            params[f"o{n}"] = pid
            values.append(f"(:o{n}, :tt, 0)")
        # A concurrent WooCommerce save may have added the same row since the read: no-op then.
        sql.run(
            f"INSERT INTO {rel} (object_id, term_taxonomy_id, term_order) VALUES {', '.join(values)} "
            f"ON DUPLICATE KEY UPDATE term_order = term_order",
            params,
        )
    if plan.term_remove:
        sql.run(
            f"DELETE FROM {rel} WHERE term_taxonomy_id = :tt AND object_id IN :ids",
            {"tt": tt, "ids": plan.term_remove},
            expanding=("ids",),
        )
    # wp_set_object_terms() -> wp_update_term_count() -> _update_post_term_count(): published
    # objects of the taxonomy's post types (fixture 07 step 3: 3 -> 5).
    old, new = _outofstock_count(sql, prefix, tt, lock=True)
    if old != new:
        sql.run(
            f"UPDATE {table(prefix, 'term_taxonomy')} SET count = :n WHERE term_taxonomy_id = :tt",
            {"n": new, "tt": tt},
        )
        return old, new
    return None


def _outofstock_count(sql: _Sql, prefix: str, tt: int, *, lock: bool) -> tuple[int, int]:
    row = sql.run(
        f"SELECT tt.count AS old_count, ("
        f"SELECT COUNT(*) FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'posts')} p ON p.ID = tr.object_id "
        f"WHERE tr.term_taxonomy_id = tt.term_taxonomy_id AND p.post_status IN :statuses "
        f"AND p.post_type IN :types) AS new_count "
        f"FROM {table(prefix, 'term_taxonomy')} tt WHERE tt.term_taxonomy_id = :tt"
        + (" FOR UPDATE" if lock else ""),
        {
            "tt": tt,
            "statuses": list(woo.VISIBILITY_COUNT_POST_STATUSES),
            "types": list(woo.VISIBILITY_COUNT_POST_TYPES),
        },
        expanding=("statuses", "types"),
    ).one()
    return int(row.old_count), int(row.new_count)


def _write_attributes(sql: _Sql, prefix: str, plan: RefreshPlan) -> None:
    by_value: dict[int, list[int]] = {}
    for pid, in_stock in plan.attributes.items():
        by_value.setdefault(in_stock, []).append(pid)
    for in_stock, pids in sorted(by_value.items()):
        sql.run(
            f"UPDATE {table(prefix, 'wc_product_attributes_lookup')} SET in_stock = :v "
            f"WHERE product_id IN :ids AND in_stock <> :v",
            {"v": in_stock, "ids": sorted(pids)},
            expanding=("ids",),
        )


def _write_post_modified(sql: _Sql, blog: Blog, plan: RefreshPlan, now_utc: datetime) -> None:
    if not plan.saved:
        return
    local, gmt = woo.post_modified_values(now_utc, blog.option("timezone_string"), blog.option("gmt_offset"))
    sql.run(
        f"UPDATE {table(blog.prefix, 'posts')} SET post_modified = :local, post_modified_gmt = :gmt "
        f"WHERE ID IN :ids",
        {"local": local, "gmt": gmt, "ids": plan.saved},
        expanding=("ids",),
    )


def _product_terms(sql: _Sql, prefix: str, product_ids: Sequence[int]) -> dict[str, dict[int, set[int]]]:
    """taxonomy -> product -> term ids, for product_cat and product_tag."""
    out: dict[str, dict[int, set[int]]] = {}
    for r in sql.run(
        f"SELECT tr.object_id, tt.taxonomy, tt.term_id FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"WHERE tr.object_id IN :ids AND tt.taxonomy IN :taxonomies",
        {"ids": list(product_ids), "taxonomies": list(woo.RECOUNT_TAXONOMIES)},
        expanding=("ids", "taxonomies"),
    ):
        out.setdefault(r.taxonomy, {}).setdefault(int(r.object_id), set()).add(int(r.term_id))
    return out


def _term_parents(sql: _Sql, prefix: str, taxonomy: str) -> dict[int, int]:
    return {
        int(r.term_id): int(r.parent)
        for r in sql.run(
            f"SELECT term_id, parent FROM {table(prefix, 'term_taxonomy')} WHERE taxonomy = :taxonomy",
            {"taxonomy": taxonomy},
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
    params: dict[str, Any] = {}
    expanding = []
    for n, (term_id, members) in enumerate(sorted(to_count.items())):
        params[f"t{n}"] = term_id
        params[f"m{n}"] = sorted(members)
        expanding.append(f"m{n}")
        part = (
            f"SELECT :t{n} AS term_id, COUNT(DISTINCT p.ID) AS n FROM {posts} p "
            f"JOIN {rel} tr ON tr.object_id = p.ID "
            f"JOIN {tax} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.term_id IN :m{n} "
            f"WHERE p.post_status = 'publish' AND p.post_type = 'product'"
        )
        if exclude:
            part += (
                f" AND NOT EXISTS (SELECT 1 FROM {rel} x WHERE x.object_id = p.ID "
                f"AND x.term_taxonomy_id IN :ex)"
            )
        parts.append(part)
    if exclude:
        params["ex"] = exclude
        expanding.append("ex")
    if not parts:
        return {}
    return {int(r.term_id): int(r.n) for r in sql.run(" UNION ALL ".join(parts), params, expanding=expanding)}


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


def _recount_terms(
    sql: _Sql, blog: Blog, snap: Snapshot, product_ids: Sequence[int]
) -> dict[str, tuple[int | None, int]]:
    """Rewrite ``product_count_<taxonomy>`` termmeta where it differs (update_term_meta no-op rule)."""
    prefix = blog.prefix
    targets = _terms_for_recount(sql, prefix, product_ids)
    if not targets:
        return {}
    written: dict[str, tuple[int | None, int]] = {}
    for taxonomy in woo.RECOUNT_TAXONOMIES:
        group = {term: members for (tax, term), members in targets.items() if tax == taxonomy}
        if not group:
            continue
        counts = _catalog_counts(sql, prefix, snap, blog.hide_out_of_stock, group)
        key = woo.term_count_meta_key(taxonomy)
        current: dict[int, list[str | None]] = {}
        for r in sql.run(
            f"SELECT term_id, meta_value FROM {table(prefix, 'termmeta')} "
            f"WHERE term_id IN :ids AND meta_key = :key ORDER BY meta_id FOR UPDATE",
            {"ids": sorted(group), "key": key},
            expanding=("ids",),
        ):
            current.setdefault(int(r.term_id), []).append(r.meta_value)
        inserts = []
        for term in sorted(group):
            new = counts.get(term, 0)
            values = current.get(term)
            if values is None:
                inserts.append((term, new))
                written[f"{taxonomy}:{term}"] = (None, new)
            elif values[0] != str(new):
                sql.run(
                    f"UPDATE {table(prefix, 'termmeta')} SET meta_value = :v WHERE term_id = :t AND meta_key = :key",
                    {"v": str(new), "t": term, "key": key},
                )
                written[f"{taxonomy}:{term}"] = (woo.php_int(values[0]), new)
        if inserts:
            params: dict[str, Any] = {"key": key}
            rows = []
            for n, (term, new) in enumerate(inserts):
                params[f"t{n}"] = term
                params[f"v{n}"] = str(new)
                rows.append(f"(:t{n}, :key, :v{n})")
            sql.run(
                f"INSERT INTO {table(prefix, 'termmeta')} (term_id, meta_key, meta_value) VALUES {', '.join(rows)}",
                params,
            )
    return written


def _write_transients(
    sql: _Sql, prefix: str, plan: RefreshPlan, now_utc: datetime, *, term_counts: bool
) -> tuple[tuple[str, ...], bool]:
    options = table(prefix, "options")
    names: dict[str, None] = {}
    if plan.saved:
        for pid in plan.transient_ids:
            for name in woo.transient_names_to_delete(pid):
                names[name] = None
    if term_counts:
        names[woo.TERM_COUNTS_TRANSIENT] = None
    if not names:
        return (), False
    option_names = [n for name in names for n in woo.transient_option_names(name)]
    present = {
        r.option_name
        for r in sql.run(
            f"SELECT option_name FROM {options} WHERE option_name IN :names",
            {"names": option_names},
            expanding=("names",),
        )
    }
    doomed = []
    for name in names:
        main, timeout = woo.transient_option_names(name)
        # delete_transient(): the timeout row goes only when the transient itself existed.
        if main in present:
            doomed.append(main)
            if timeout in present:
                doomed.append(timeout)
    if doomed:
        sql.run(f"DELETE FROM {options} WHERE option_name IN :names", {"names": doomed}, expanding=("names",))
    bumped = False
    versions = woo.version_transients_bumped(product_saved=bool(plan.saved))
    if versions:
        stamp = str(woo.unix_time(now_utc))
        params: dict[str, Any] = {"v": stamp}
        rows = []
        for n, name in enumerate(versions):
            params[f"n{n}"] = woo.transient_option_names(name)[0]
            rows.append(f"(:n{n}, :v, 'on')")
        sql.run(
            f"INSERT INTO {options} (option_name, option_value, autoload) VALUES {', '.join(rows)} "
            f"ON DUPLICATE KEY UPDATE option_value = VALUES(option_value)",
            params,
        )
        bumped = True
    return tuple(doomed), bumped


# --------------------------------------------------------------------------- public API


def refresh_products(
    conn: sa.Connection,
    blog: Blog,
    product_ids: Collection[int],
    *,
    now_utc: datetime,
    changed: Collection[int] | None = None,
) -> DerivedReport:
    """Recompute and write WooCommerce's derived data for ``product_ids`` on ``blog``.

    Runs inside the caller's open transaction, after the caller has written quantities and
    registers; never commits. ``product_ids`` are stock holders or products whose registers
    changed (or whose captured change must be repaired) on this one blog. ``changed``: the ids
    whose stock meta the caller itself wrote in this transaction - WooCommerce would have saved
    those (post_modified, transients, version transients) even when no derived value changes
    (e.g. only ``_low_stock_amount``: fixture 09B). ``None`` (default) treats every given id so.
    Any other id is saved only when one of its derived values had to change.

    ``now_utc`` is the save time (naive = UTC): ``post_modified_gmt``, ``post_modified`` in the
    blog's time zone, and the version transients' unix time.

    Products whose post is gone or trashed, that are not products, or whose quantity is not a
    number are skipped with a reason in the report; nothing is raised for them. Database errors
    (deadlock, lock wait timeout, lost connection) propagate: the caller rolls back and retries.
    """
    report = DerivedReport(blog_id=blog.blog_id)
    ids = sorted({int(p) for p in product_ids})
    if not ids:
        return report
    snap, reads = read_snapshot(conn, blog, ids, lock=True)
    plan = plan_refresh(
        snap,
        ids,
        notify_no_stock_amount=blog.notify_no_stock_amount,
        hide_out_of_stock=blog.hide_out_of_stock,
        forced=changed,
    )
    sql = _Sql(conn)
    prefix = blog.prefix
    _write_statuses(sql, prefix, plan)
    _write_lookup(sql, prefix, plan, snap.lookup_columns)
    report.outofstock_count = _write_terms(sql, prefix, plan, snap)
    _write_attributes(sql, prefix, plan)
    _write_post_modified(sql, blog, plan, now_utc)
    if plan.recount_products:
        report.term_counts = _recount_terms(sql, blog, snap, plan.recount_products)
    report.transients_deleted, report.versions_bumped = _write_transients(
        sql, prefix, plan, now_utc, term_counts=bool(plan.recount_products)
    )
    report.products = dict(sorted(plan.outcomes.items()))
    report.posts_modified = tuple(plan.saved)
    report.statements = reads + sql.count
    for pid, reason in sorted(report.skipped.items()):
        log.warning("derived_product_skipped", blog=blog.blog_id, post=pid, reason=reason)
    if report.written:
        log.debug("derived_refreshed", **report.summary())
    return report


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
            stored: dict[int, str | None] = {}
            for r in sql.run(
                f"SELECT term_id, meta_value FROM {table(blog.prefix, 'termmeta')} "
                f"WHERE term_id IN :ids AND meta_key = :key ORDER BY meta_id",
                {"ids": sorted(group), "key": key},
                expanding=("ids",),
            ):
                stored.setdefault(int(r.term_id), r.meta_value)
            for term in sorted(group):
                expected = counts.get(term, 0)
                actual = stored.get(term)
                if actual is None or actual != str(expected):
                    out.append(Disagreement(b, 0, f"termmeta[{term}].{key}", expected, actual))
    return out


def _now() -> datetime:  # pragma: no cover - convenience for interactive use
    return datetime.now(UTC)
