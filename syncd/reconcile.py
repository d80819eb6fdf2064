"""Reconcile: make every member of a link group hold its authority's values; and the operator's
writing tools built on the same path (``syncd sync SKU...``, ``syncd set-stock SKU QTY``).

The authority (``[reconcile] authority``):

* ``lowest`` (default): the member with the lowest quantity among those that manage stock with a
  usable number - never oversells; ties go to the lowest blog id. A group where no member manages
  stock takes the registers of its member on the lowest blog id.
* ``latest``: the member changed most recently - the newest of its product's last save
  (``post_modified_gmt``) and of syncd's history for it (capture time of its own changes, apply
  time of what syncd wrote to it); ties go to the lowest quantity, then the lowest blog id.
* ``blog:N``: the member on blog N; a group without one is left alone (and reported).

Registers (manage stock, backorders, low-stock amount, and the stock status of products whose
status is set by hand) follow the same member as the quantity.

Every write runs through the apply machinery, one transaction per chunk of groups, on a session
whose writes the capture triggers ignore (``@syncd_apply``):

1. lock the stock meta of every member of the chunk's groups (:meth:`Applier.lock`,
   the daemon's lock step: blog by blog, ascending post id, one scan each - the daemon's
   canonical order);
2. look for pending ``{base}syncd_change`` rows of those members (a plain read). If there are
   any, roll back, apply them with the normal :class:`~syncd.apply.Applier` in a transaction of
   their own, exactly as the daemon does (acknowledge, then lock; a daemon that got there first
   makes it a BatchConflict, which is fine), and start the chunk again. The chunk never deletes
   change rows while it holds stock rows: the daemon takes change rows first and stock rows
   second, and the opposite order made a three-way deadlock - daemon, a shop's
   ``UPDATE ... meta_value - 1`` scanning ``_stock`` rows, reconcile - whose victim InnoDB
   chose was the shop's statement: a lost sale. A shop write that arrives after step 1 waits
   for our locks and is captured relative to the value we write, so nothing is lost and nothing
   is counted twice;
3. decide the authority from the values read under lock;
4. write the members that differ (absolute values, on locked rows; registers deleted where the
   authority has none), recompute WooCommerce's derived data of every touched product
   (:func:`syncd.derived.refresh_many`, as the daemon: every blog's locking reads, then every
   blog's writes, ascending blog id) and of products whose own derived data disagrees
   with their quantity, and record history (role ``reconcile``; ``set`` for set-stock);
5. commit. A lock wait timeout (1205) or deadlock (1213) rolls the chunk back; it is retried
   twice, then skipped and reported (exit bit 8).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from syncd import capture, queue, settle
from syncd.apply import Applier, BatchConflict, BatchExtend, new_batch_id
from syncd.audit import (
    EXIT_BAD_ARGUMENT,
    EXIT_DRIFT,
    EXIT_FATAL,
    EXIT_SKIPPED,
    EXIT_UNSAFE,
    FIELDS,
    QUERY_CACHE,
    RECONCILE_MAX_BUCKETS,
    REPORT_LIMIT,
    Auditor,
    GroupState,
    MemberValues,
    Report,
    Scope,
    close_components,
    compare_group,
    disagreement_entry,
    read_members,
    read_meta,
    scope_for,
)
from syncd.audit import (
    render as render_audit,
)
from syncd.config import Config
from syncd.db import errno_of, is_disconnect, is_retryable, table
from syncd.exclusion import matching_pattern
from syncd.fields import realtime
from syncd.lock import MetaRow, ProductRows
from syncd.plan import (
    BACKORDERS,
    LOW_STOCK,
    MANAGE,
    STATUS,
    STOCK,
    Change,
    Key,
    StockValueError,
    format_quantity,
    parse_quantity,
)
from syncd.preview import PreviewRefused
from syncd.progress import Progress, dump_json
from syncd.progress import table as print_table
from syncd.queue import HeldBlogs
from syncd.schema import get_meta, schema_present
from syncd.woo import manages_stock

log = structlog.get_logger("syncd.reconcile")

#: Attempts per chunk: the first, then two retries on lock wait timeout / deadlock / conflict.
ATTEMPTS = 3
#: How many times one chunk applies newly arrived changes and looks again before it is skipped.
PENDING_ROUNDS = 20
#: Groups written per transaction (every member locked for its duration, ~0.1 s per 10 groups x 10 blogs).
WRITE_GROUPS = 100


# --------------------------------------------------------------------------- planning (pure)
@dataclass(frozen=True)
class FieldWrite:
    member: Key
    sku: str
    meta_key: str
    old: str | None
    new: str | None  # None: delete the row (SQL NULL for _stock)

    @property
    def field(self) -> str:
        return next(name for name, key in FIELDS.items() if key == self.meta_key)


@dataclass
class GroupPlan:
    group_id: int
    sku: str
    lang: str
    authority: Key | None
    reason: str  # why this member is the authority, or why the group is left alone
    writes: list[FieldWrite] = field(default_factory=list)
    left_alone: list[tuple[Key, str]] = field(default_factory=list)  # unsafe members skipped


def _usable_quantity(m: MemberValues) -> Decimal | None:
    """The member's quantity when it manages stock with one numeric ``_stock`` row, else None."""
    if not m.manages:
        return None
    try:
        return m.quantity()
    except StockValueError:
        return None


def choose_authority(
    policy: str, members: Sequence[MemberValues], last_changed: Mapping[Key, datetime] | None = None
) -> tuple[MemberValues | None, str]:
    """The member whose values the others take, and why (pure)."""
    if not members:
        return None, "no linked member"
    ordered = sorted(members, key=lambda m: m.key)
    if policy.startswith("blog:"):
        blog_id = int(policy.split(":", 1)[1])
        on_blog = [m for m in ordered if m.blog_id == blog_id]
        if not on_blog:
            return None, f"no member on authority blog {blog_id}"
        return on_blog[0], f"blog {blog_id}"
    managing = [m for m in ordered if m.manages]
    usable = [(q, m) for m in managing if (q := _usable_quantity(m)) is not None]
    if policy == "latest":
        times = last_changed or {}
        best = max(
            ordered,
            key=lambda m: (
                times.get(m.key) or datetime.min,
                -(q if (q := _usable_quantity(m)) is not None else Decimal("Infinity")),
                -m.blog_id,
                -m.post_id,
            ),
        )
        when = times.get(best.key)
        return best, f"latest change ({when.isoformat(sep=' ', timespec='seconds') if when else 'no record'})"
    # lowest
    if usable:
        q, best = min(usable, key=lambda qm: (qm[0], qm[1].key))
        return best, f"lowest quantity ({format_quantity(q)})"
    if managing:
        return None, "no member that manages stock has a usable quantity"
    return ordered[0], "no member manages stock: registers of the lowest blog id"


def plan_group(
    policy: str, group: GroupState, last_changed: Mapping[Key, datetime] | None = None
) -> GroupPlan:
    """What reconcile writes to make ``group`` agree with its authority (pure)."""
    auth, reason = choose_authority(policy, group.members, last_changed)
    plan = GroupPlan(group.group_id, group.sku, group.lang, auth.key if auth else None, reason)
    if auth is None:
        return plan
    if auth.manages and _usable_quantity(auth) is None:
        plan.authority = None
        plan.reason = (
            f"authority {auth.blog_id}:{auth.post_id} has an unusable quantity ({auth.value(STOCK)!r})"
        )
        return plan
    target_manage = auth.value(MANAGE)
    target_qty = _usable_quantity(auth)
    for m in group.members:
        if m.key == auth.key:
            continue
        for key in (MANAGE, BACKORDERS):
            if m.value(key) != auth.value(key) or len(m.meta.get(key) or []) > 1:
                plan.writes.append(FieldWrite(m.key, m.sku, key, m.value(key), auth.value(key)))
        if _blank(m.value(LOW_STOCK)) != _blank(auth.value(LOW_STOCK)):
            plan.writes.append(FieldWrite(m.key, m.sku, LOW_STOCK, m.value(LOW_STOCK), auth.value(LOW_STOCK)))
        if target_qty is not None:
            try:
                current = m.quantity()
            except StockValueError:
                current = None
                differs = True
            else:
                differs = current != target_qty
            if differs:
                plan.writes.append(
                    FieldWrite(m.key, m.sku, STOCK, m.value(STOCK), format_quantity(target_qty))
                )
        manual_after = (
            not manages_stock(target_manage)
            and m.product_type != "variable"
            and not (m.post_type == "product_variation" and m.parent_manages)
        )
        if auth.manual_status and manual_after and m.value(STATUS) != auth.value(STATUS):
            if auth.value(STATUS) is not None:
                plan.writes.append(FieldWrite(m.key, m.sku, STATUS, m.value(STATUS), auth.value(STATUS)))
    return plan


def _blank(v: str | None) -> str | None:
    return None if v is None or v.strip() == "" else v


def parse_qty(text: str) -> Decimal:
    """A quantity argument WooCommerce would store as it is, read by the one quantity parser
    (:func:`syncd.woo.parse_stock`: a number within the exact range of SQL arithmetic and of the
    lookup table's DOUBLE, 10^15) and whole: WooCommerce rounds stock with wc_stock_amount()
    (intval), so a fraction would be stored in _stock and shown truncated everywhere else."""
    try:
        value = parse_quantity(text)
    except StockValueError as exc:
        if "exact range" in str(exc):
            raise ValueError(
                f"QTY must be within the exact range of SQL arithmetic (10^15), got {text!r}"
            ) from exc
        raise ValueError(f"QTY must be a number, got {text!r}") from exc
    assert value is not None  # a str is never SQL NULL
    if value != value.to_integral_value():
        raise ValueError(
            f"QTY must be a whole number, got {text!r}: WooCommerce keeps stock in whole units "
            "(wc_stock_amount), so a fraction would show truncated on the shop"
        )
    return value.to_integral_value()


# --------------------------------------------------------------------------- SKU arguments
class BadSku(ValueError):
    """A SKU argument that names no group syncd may write (unknown, ambiguous, excluded...)."""


@dataclass
class Resolved:
    sku: str
    group_ids: list[int]
    langs: list[str]


def resolve_sku(conn: sa.Connection, scope: Scope, sku: str, lang: str | None = None) -> Resolved:
    """The link group(s) a SKU argument names, compared as WooCommerce compares SKUs (collation)."""
    from syncd.catalog import sku_collation

    text = sku.strip()
    if not text:
        raise BadSku("an empty SKU names no product")
    pattern = matching_pattern(text, scope.exclude_skus)
    if pattern is not None:
        raise BadSku(f"SKU {text!r} is excluded by sync.exclude_skus ({pattern!r}): syncd never writes it")
    member = table(scope.base, "syncd_member")
    found: list[tuple[int, int, int | None, str, str, str]] = []
    for blog_id in scope.blog_ids:
        blog = scope.blogs[blog_id]
        coll = sku_collation(conn, blog)
        rows = conn.execute(
            sa.text(
                f"SELECT blog_id, post_id, group_id, state, lang, sku FROM {member} WHERE blog_id = :b "
                f"AND sku_key = WEIGHT_STRING(CONVERT(TRIM(TRAILING ' ' FROM :sku) USING utf8mb4) COLLATE {coll})"
            ),
            {"b": blog_id, "sku": text},
        ).all()
        found.extend((int(r[0]), int(r[1]), r[2], r[3], r[4] or "", r[5]) for r in rows)
    if lang is not None:
        found = [f for f in found if f[4] == lang.lower()]
    if not found:
        where = f" in language {lang!r}" if lang else ""
        raise BadSku(
            f"unknown SKU {text!r}{where}: no linked product has it on blogs "
            f"{', '.join(map(str, scope.blog_ids))} (syncd install / the daemon refresh the link groups)"
        )
    for b, p, _g, state, _l, real in found:
        pat = matching_pattern(real, scope.exclude_skus)
        if state == "excluded" or pat is not None:
            raise BadSku(f"SKU {real!r} (blog {b}, post {p}) is excluded by sync.exclude_skus")
    ambiguous: dict[int, list[int]] = {}
    for b, p, _g, state, _l, _s in found:
        if state == "ambiguous":
            ambiguous.setdefault(b, []).append(p)
    if ambiguous:
        where = "; ".join(
            f"blog {b}: posts {', '.join(map(str, sorted(ps)))}" for b, ps in sorted(ambiguous.items())
        )
        raise BadSku(
            f"SKU {text!r} is ambiguous ({where} share it): syncd does not know which product is meant; "
            f"give them distinct SKUs or link one manually (syncd link)"
        )
    linked = [f for f in found if f[3] == "linked" and f[2] is not None]
    if not linked:
        states = sorted({f[3] for f in found})
        raise BadSku(
            f"SKU {text!r} is not synced (state {', '.join(states)}: grouped/external products hold no stock)"
        )
    groups: dict[int, str] = {}
    for _b, _p, g, _s, lg, _k in linked:
        groups[int(g)] = lg
    if len(groups) > 1 and lang is None:
        langs = ", ".join(sorted(set(groups.values())))
        raise BadSku(f"SKU {text!r} names {len(groups)} link groups (languages {langs}): add --lang")
    return Resolved(text, sorted(groups), sorted(set(groups.values())))


# --------------------------------------------------------------------------- the writer
@dataclass
class Outcome:
    """What reconcile (or sync / set-stock) did, or would do with --dry-run."""

    dry_run: bool = False
    authority: str = "lowest"
    writes: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # per group written / planned
    healed: list[dict[str, Any]] = field(default_factory=list)
    skipped_chunks: list[dict[str, Any]] = field(default_factory=list)
    left_alone: list[dict[str, Any]] = field(default_factory=list)
    pending_applied: int = 0
    #: --dry-run: captured changes of the products previewed that a real run would apply first.
    pending_waiting: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: {"groups": 0, "writes": 0, "healed": 0, "skipped_chunks": 0, "left_alone": 0}
    )

    def add(self, kind: str, entry: dict[str, Any]) -> None:
        key = {
            "writes": "writes",
            "healed": "healed",
            "skipped_chunks": "skipped_chunks",
            "left_alone": "left_alone",
            "groups": "groups",
        }[kind]
        self.counts[key] += 1
        target: list[dict[str, Any]] = getattr(self, kind)
        if len(target) < REPORT_LIMIT:
            target.append(entry)

    def document(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "authority": self.authority,
            "counts": self.counts,
            "pending_applied": self.pending_applied,
            "pending_waiting": self.pending_waiting,
            "groups": self.groups,
            "writes": self.writes,
            "healed": self.healed,
            "left_alone": self.left_alone,
            "skipped_chunks": self.skipped_chunks,
        }


class ChunkSkipped(RuntimeError):
    pass


class PendingChanges(Exception):
    """Captured, unapplied changes of a chunk's products: apply them first, then redo the chunk."""

    def __init__(self, changes: Sequence[Change]) -> None:
        super().__init__(f"{len(changes)} pending change(s)")
        self.changes = list(changes)


class Writer:
    """Writes through the apply machinery, one transaction per chunk (see module docstring)."""

    def __init__(
        self, config: Config, scope: Scope, engine: sa.Engine, outcome: Outcome, *, dry_run: bool = False
    ) -> None:
        #: --dry-run: each chunk runs exactly as it would (locks, writes, derived data, history)
        #: and is rolled back instead of committed, so the preview is what a real run writes.
        self.dry_run = dry_run
        self.config = config
        self.scope = scope
        self.engine = engine
        self.outcome = outcome
        self.base = scope.base
        self.policy = config.reconcile.authority
        #: set-stock from a page: the ``_stock`` value of every member the admin saw; the chunk is
        #: refused (:class:`StaleQuantities`) when, under lock, any member differs or the members changed.
        self.expect: Mapping[Key, str | None] | None = None
        #: who asked for the writes (e.g. "dashboard:alice"), recorded in history's ``source``.
        self.source: str | None = None
        self._poll_blogs: set[int] | None = None
        self.applier = Applier(
            self.base,
            lambda: scope.blogs,
            poll_mode=False,
            blog_settings=config.blogs.for_blog,
            propagate_sku_renames=config.sync.propagate_sku_renames,
            # Pending changes are applied exactly as the daemon does: realtime field groups too.
            fields=realtime.fields_for(config, realtime.realtime_groups(config)),
        )
        from syncd.derived import refresh_many

        self._refresh_many = refresh_many

    # -- public ---------------------------------------------------------------------------
    def run_chunk(
        self,
        group_ids: Sequence[int],
        heal: Mapping[int, Iterable[int]] | None = None,
        *,
        force: bool = False,
        set_quantity: Decimal | None = None,
    ) -> bool:
        """One chunk in its own transaction, retried as documented. False when skipped."""
        heal = {b: set(p) for b, p in (heal or {}).items() if p}
        attempt = 0
        pending_rounds = 0
        while True:
            attempt += 1
            try:
                with self.engine.connect() as conn:
                    try:
                        staged = self._chunk(conn, group_ids, heal, force=force, set_quantity=set_quantity)
                        if self.dry_run:
                            conn.rollback()
                        else:
                            conn.commit()
                    except BaseException:
                        _safe_rollback(conn)
                        raise
                self._publish(staged)
                return True
            except PendingChanges as exc:
                # Not a failure: the shops are selling these products right now. Apply what they
                # sold (its own transaction, the daemon's lock order) and look again; a product
                # that never rests for the milliseconds between two looks is reported, not forced.
                pending_rounds += 1
                attempt -= 1
                if pending_rounds <= PENDING_ROUNDS:
                    self._apply_pending(exc.changes)
                    continue
                reason = f"changes kept arriving for {pending_rounds} rounds"
                attempt = ATTEMPTS
            except BatchConflict as exc:
                reason = f"conflict with the daemon: {exc}"
            except Exception as exc:
                if not (is_retryable(exc) or is_disconnect(exc)):
                    raise
                reason = f"errno {errno_of(exc)}: {str(getattr(exc, 'orig', exc))[:160]}"
            log.warning("chunk_retry", groups=len(group_ids), attempt=attempt, reason=reason)
            if attempt >= ATTEMPTS:
                self.outcome.add(
                    "skipped_chunks",
                    {"groups": list(group_ids)[:50], "n_groups": len(group_ids), "reason": reason},
                )
                log.error("chunk_skipped", groups=len(group_ids), attempts=attempt, reason=reason)
                return False
            time.sleep(0.05 * attempt)

    # -- the transaction ------------------------------------------------------------------
    def _chunk(
        self,
        conn: sa.Connection,
        group_ids: Sequence[int],
        heal: Mapping[int, set[int]],
        *,
        force: bool,
        set_quantity: Decimal | None,
    ) -> dict[str, Any]:
        staged: dict[str, Any] = {"writes": [], "groups": [], "healed": [], "left_alone": []}
        ranges = [(g, g) for g in sorted(set(group_ids))]
        groups, rows = self._lock(conn, ranges, heal)
        pending = self._pending(conn, rows.keys())
        if pending and self.dry_run:
            # A preview applies nothing: say that a real run would apply these first.
            staged["pending"] = len(pending)
        elif pending:
            # Deleting change rows now, while holding stock rows, would invert the daemon's lock
            # order (see the module docstring): roll back and apply them first (run_chunk).
            raise PendingChanges(pending)
        self._fill_values(conn, groups.values(), rows)
        if self.expect is not None:
            _check_expected(groups.values(), self.expect)
        last = last_changed(conn, self.scope, groups.values()) if self.policy == "latest" else None
        now = datetime.now(UTC).replace(tzinfo=None)
        written: dict[int, set[int]] = {}
        history: list[dict[str, Any]] = []
        pending_writes: list[tuple[GroupState, GroupPlan, FieldWrite, str]] = []
        stock_written: list[Key] = []
        batch = new_batch_id()
        for gid in sorted(groups):
            g = groups[gid]
            if set_quantity is not None:
                plan = self._plan_set(g, set_quantity)
            else:
                if not force and not compare_group(g)[0]:
                    continue  # agrees now (the daemon, or a pending change, already fixed it)
                plan = plan_group(self.policy, g, last)
            if plan.authority is None and set_quantity is None:
                staged["left_alone"].append(
                    {"group": gid, "sku": g.sku, "lang": g.lang, "reason": plan.reason}
                )
                continue
            staged["groups"].append(
                {
                    "group": gid,
                    "sku": g.sku,
                    "lang": g.lang,
                    "authority": None
                    if plan.authority is None
                    else f"{plan.authority[0]}:{plan.authority[1]}",
                    "reason": plan.reason,
                    "writes": len(plan.writes),
                }
            )
            for (b, p), reason in plan.left_alone:
                staged["left_alone"].append(
                    {"group": gid, "sku": g.sku, "blog": b, "post": p, "reason": reason}
                )
            role = "set" if set_quantity is not None else "reconcile"
            for w in plan.writes:
                pending_writes.append((g, plan, w, role))
        for g, plan, w, role, error in self._write_values(conn, pending_writes, rows):
            if error is not None:
                staged["left_alone"].append(
                    {
                        "group": g.group_id,
                        "sku": w.sku,
                        "blog": w.member[0],
                        "post": w.member[1],
                        "reason": error,
                    }
                )
                continue
            written.setdefault(w.member[0], set()).add(w.member[1])
            if w.meta_key == STOCK:
                stock_written.append(w.member)
            staged["writes"].append(_write_entry(g, plan, w))
            history.append(self._history_row(batch, now, g, plan, w, role))
        # A heal queued for a member written here must not add sales older than this value.
        settle.copy_instead(conn, self.base, stock_written)
        # Derived data: every member of a group reconciled (the authority's own may disagree with
        # its quantity too - a drift written straight into postmeta), and the products to heal; only
        # the members written count as saved (post_modified, transients).
        touched: dict[int, set[int]] = {b: set(p) for b, p in heal.items()}
        for b, ps in written.items():
            touched.setdefault(b, set()).update(ps)
        for entry in staged["groups"]:
            for m in groups[entry["group"]].members:
                touched.setdefault(m.blog_id, set()).add(m.post_id)
        if force:
            for g in groups.values():
                for m in g.members:
                    touched.setdefault(m.blog_id, set()).add(m.post_id)
        # Every blog's derived step at once, as the daemon's (ascending blog id; its reads in one
        # round trip, its writes in one).
        jobs = [
            self.applier.refresh_job(self.scope.blogs[b], sorted(touched[b]), sorted(written.get(b, ())))
            for b in sorted(touched)
            if touched[b] and b in self.scope.blogs
        ]
        reports = self._refresh_many(conn, jobs, now_utc=now) if jobs else {}
        for blog_id, report in sorted(reports.items()):
            for pid, o in sorted(getattr(report, "products", {}).items()):
                if o.changed and pid not in written.get(blog_id, ()):
                    # The field names `syncd audit` uses (derived.check_products' Disagreement.field).
                    what = []
                    if o.status_written:
                        what.append(f"_stock_status: {o.old_status} -> {o.new_status}")
                    what.extend(f"wc_product_meta_lookup.{c}" for c in o.lookup_columns if c != "product_id")
                    if o.term:
                        what.append(f"product_visibility:outofstock: {o.term}")
                    if o.attributes_written:
                        what.append("wc_product_attributes_lookup.in_stock")
                    staged["healed"].append({"blog": blog_id, "post": pid, "what": "; ".join(what)})
        # Poll mode: the snapshot takes exactly what this chunk wrote (syncd.poll).
        self.applier.poll_advance(conn, self._poll(conn))
        self._write_history(conn, history)
        return staged

    def _write_values(
        self,
        conn: sa.Connection,
        writes: Sequence[tuple[GroupState, GroupPlan, FieldWrite, str]],
        rows: Mapping[Key, ProductRows],
    ) -> Iterable[tuple[GroupState, GroupPlan, FieldWrite, str, str | None]]:
        """Write the planned values; yields each write with None or the reason it was left alone.

        A value replacing the one row of its key is written in bulk, per blog, by meta_id (one
        statement for up to 500 rows: a statement that fails is undone on its own, so no savepoint
        is needed); inserts, deletions and keys with several rows go through the apply step's
        ``_set_meta``, one savepoint each, so that one unsafe member never stops the others."""
        bulk: dict[int, list[tuple[int, tuple[GroupState, GroupPlan, FieldWrite, str]]]] = {}
        single: list[tuple[GroupState, GroupPlan, FieldWrite, str]] = []
        for item in writes:
            w = item[2]
            existing = rows[w.member].meta.get(w.meta_key) or []
            if len(existing) == 1 and (w.new is not None or w.meta_key == STOCK):
                bulk.setdefault(w.member[0], []).append((existing[0].meta_id, item))
            else:
                single.append(item)
        for blog_id, items in sorted(bulk.items()):
            pm = table(self.scope.blogs[blog_id].prefix, "postmeta")
            for start in range(0, len(items), 500):
                part = items[start : start + 500]
                params: dict[str, Any] = {}
                cases = []
                for n, (meta_id, item) in enumerate(part):
                    params[f"i{n}"], params[f"v{n}"] = meta_id, item[2].new
                    cases.append(f"WHEN :i{n} THEN :v{n}")
                try:
                    conn.execute(
                        sa.text(
                            f"UPDATE {pm} SET meta_value = CASE meta_id {' '.join(cases)} END "
                            f"WHERE meta_id IN ({', '.join(f':i{n}' for n in range(len(part)))})"
                        ),
                        params,
                    )
                except Exception as exc:
                    if is_retryable(exc) or is_disconnect(exc):
                        raise
                    log.warning("bulk_write_failed", blog=blog_id, values=len(part), errno=errno_of(exc))
                    single.extend(item for _mid, item in part)  # nothing of it was applied
                    continue
                for meta_id, item in part:
                    g, plan, w, role = item
                    rows[w.member].meta[w.meta_key] = [MetaRow(meta_id, w.new)]
                    yield g, plan, w, role, None
        for g, plan, w, role in single:
            blog = self.scope.blogs[w.member[0]]
            sp = conn.begin_nested()
            try:
                self.applier.writer.set_meta(conn, blog, w.member[1], rows[w.member], w.meta_key, w.new)
                sp.commit()
            except Exception as exc:
                if is_retryable(exc) or is_disconnect(exc):
                    raise
                sp.rollback()
                yield g, plan, w, role, f"database error {errno_of(exc)}"
                continue
            yield g, plan, w, role, None

    def _publish(self, staged: Mapping[str, Any]) -> None:
        o = self.outcome
        o.pending_waiting += int(staged.get("pending", 0))
        for kind in ("groups", "writes", "healed", "left_alone"):
            for entry in staged[kind]:
                o.add(kind, entry)
        for entry in staged["writes"]:
            log.info(
                "reconcile_planned" if self.dry_run else "reconcile_written",
                sku=entry["sku"],
                blog=entry["blog"],
                post=entry["post"],
                key=entry["key"],
                old=entry["old"],
                new=entry["new"],
                authority=entry["authority"],
            )

    # -- steps ----------------------------------------------------------------------------
    def _lock(
        self, conn: sa.Connection, ranges: Sequence[tuple[int, int]], heal: Mapping[int, set[int]]
    ) -> tuple[dict[int, GroupState], dict[Key, ProductRows]]:
        """Membership of the groups, then every member's (and healed product's) stock meta locked,
        blog by blog in ascending post id order."""
        self.applier.forget_posts()  # this chunk's transaction: its own lock step
        # A translation component (shared stock) is one unit, as for the daemon (audit.close_components).
        groups = close_components(conn, self.scope, read_members(conn, self.scope, ranges))
        by_blog: dict[int, set[int]] = {b: set(p) for b, p in heal.items()}
        for g in groups.values():
            for m in g.members:
                by_blog.setdefault(m.blog_id, set()).add(m.post_id)
        rows: dict[Key, ProductRows] = {}
        poll_blogs = self._poll(conn)
        jobs = [
            (self.scope.blogs[b], sorted(by_blog[b]))
            for b in sorted(by_blog)
            if b in self.scope.blogs and by_blog[b]
        ]
        if poll_blogs.isdisjoint(blog.blog_id for blog, _ in jobs):
            # The daemon's lock step for every blog at once: the same statements in the same order
            # (blog by blog, ascending post id, one scan each), one round trip per phase.
            rows.update(self.applier.lock(conn, jobs))
            return groups, rows
        queued = 0
        for blog, ids in jobs:
            rows.update(self.applier.lock(conn, [(blog, sorted(set(ids)))]))
            if blog.blog_id in poll_blogs:
                queued += self.applier.poll_capture(conn, blog)
        if queued:
            # Shop writes the poller had not seen yet, now change rows: commit them (nothing was
            # written yet) and apply them first, as for any pending change (run_chunk).
            conn.commit()
            raise PendingChanges(self._pending(conn, rows.keys()))
        return groups, rows

    def _apply_pending(self, changes: Sequence[Change]) -> None:
        """Apply captured changes as the daemon does: one transaction that acknowledges them
        first, then locks. A daemon that took some first raises BatchConflict here: nothing to do,
        the chunk looks again."""
        with self.engine.connect() as conn:
            try:
                self.applier.poll_mode = bool(self._poll(conn))
                self.applier.apply(conn, changes)
                conn.commit()
            except (BatchConflict, HeldBlogs, BatchExtend):
                # Someone else applied them, their blog is not usable now (the daemon holds them),
                # or more changes of them arrived: the chunk looks again (PENDING_ROUNDS).
                _safe_rollback(conn)
                return
            except Exception as exc:
                _safe_rollback(conn)
                if not (is_retryable(exc) or is_disconnect(exc)):
                    raise
                log.warning("pending_retry", changes=len(changes), errno=errno_of(exc))
                return
            except BaseException:
                _safe_rollback(conn)
                raise
        self.outcome.pending_applied += len(changes)

    def _pending(self, conn: sa.Connection, keys: Iterable[Key]) -> list[Change]:
        """Committed, not yet applied change rows of these products, with the rest of their
        statements (a translation fan-out is applied whole, never split: syncd.queue)."""
        return queue.pending_for(conn, self.base, keys)

    def _poll(self, conn: sa.Connection) -> set[int]:
        """Blogs captured by polling (no triggers, a poll baseline taken): writes there must keep
        the snapshot current, and unseen shop writes must be queued before we overwrite anything."""
        if self._poll_blogs is None:
            installed = capture.installed_triggers(conn, self.base)
            out = set()
            for b, blog in self.scope.blogs.items():
                # Captured by triggers (an "outdated" set still captures: a field group's keys differ).
                if capture.blog_trigger_state(installed, self.base, blog).state in ("installed", "outdated"):
                    continue
                if get_meta(conn, self.base, f"poll_baseline:{b}") is not None:
                    out.add(b)
            self._poll_blogs = out
        return self._poll_blogs

    def _fill_values(
        self, conn: sa.Connection, groups: Iterable[GroupState], rows: Mapping[Key, ProductRows]
    ) -> None:
        parents: dict[int, set[int]] = {}
        members = [m for g in groups for m in g.members]
        for m in members:
            r = rows.get(m.key)
            m.meta = {k: [x.value for x in v] for k, v in (r.meta.items() if r else ()) if v}
            if m.parent_id:
                parents.setdefault(m.blog_id, set()).add(m.parent_id)
        manages: dict[Key, bool] = {}
        for blog_id, ids in parents.items():
            meta = read_meta(conn, self.scope.blogs[blog_id], sorted(ids), (MANAGE,))
            for pid in ids:
                manages[(blog_id, pid)] = manages_stock((meta.get(pid, {}).get(MANAGE) or [None])[0])
        for m in members:
            if m.parent_id:
                m.parent_manages = manages.get((m.blog_id, m.parent_id), False)

    def _plan_set(self, g: GroupState, qty: Decimal) -> GroupPlan:
        plan = GroupPlan(g.group_id, g.sku, g.lang, None, f"set-stock {format_quantity(qty)}")
        target = format_quantity(qty)
        for m in g.members:
            if not m.manages:
                plan.left_alone.append((m.key, "does not manage stock"))
                continue
            try:
                same = m.quantity() == qty
            except StockValueError:
                same = False
            if not same:
                plan.writes.append(FieldWrite(m.key, m.sku, STOCK, m.value(STOCK), target))
        return plan

    def _history_row(
        self, batch: int, now: datetime, g: GroupState, plan: GroupPlan, w: FieldWrite, role: str
    ) -> dict[str, Any]:
        delta = None
        if w.meta_key == STOCK:
            try:
                old, new = parse_quantity(w.old), parse_quantity(w.new)
                delta = None if old is None or new is None else new - old
            except StockValueError:
                delta = None
        auth = plan.authority or w.member
        return {
            "at": now,
            "batch": batch,
            "cid": 0,
            "cap": now,
            "role": role,
            "b": w.member[0],
            "p": w.member[1],
            "sku": (w.sku or g.sku)[:255],
            "k": w.meta_key,
            "old": None if w.old is None else w.old[:255],
            "new": None if w.new is None else w.new[:255],
            "d": delta,
            "ob": auth[0],
            "op": auth[1],
            "note": f"{role}: {plan.reason}"[:255],
            "src": None if self.source is None else self.source[:191],
        }

    def _write_history(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        conn.execute(
            sa.text(
                f"INSERT INTO {table(self.base, 'syncd_history')} (applied_at, batch_id, change_id, captured_at, role, "
                "blog_id, post_id, sku, meta_key, old_value, new_value, delta, origin_blog_id, origin_post_id, note, source) "
                "VALUES (:at, :batch, :cid, :cap, :role, :b, :p, :sku, :k, :old, :new, :d, :ob, :op, :note, :src)"
            ),
            rows,
        )


class StaleQuantities(Exception):
    """Set-stock refused: a member's quantity (or the membership) changed since the caller read it.
    ``current``: every member's ``_stock`` as it is now, under lock."""

    def __init__(self, current: Mapping[Key, str | None]) -> None:
        super().__init__("the stock changed since it was read")
        self.current = dict(current)


def _check_expected(groups: Iterable[GroupState], expect: Mapping[Key, str | None]) -> None:
    """Compare the members' ``_stock`` read under lock with what the caller saw (pure)."""
    current = {m.key: m.value(STOCK) for g in groups for m in g.members}
    if set(current) != set(expect):
        raise StaleQuantities(current)
    for key, value in current.items():
        if not _same_quantity(value, expect[key]):
            raise StaleQuantities(current)


def _same_quantity(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    try:
        qa, qb = parse_quantity(a), parse_quantity(b)
    except StockValueError:
        return False
    return qa is not None and qa == qb


def last_changed(conn: sa.Connection, scope: Scope, groups: Iterable[GroupState]) -> dict[Key, datetime]:
    """Per member: the newest of its last save and syncd's history of it."""
    out: dict[Key, datetime] = {}
    members = [m for g in groups for m in g.members]
    by_blog: dict[int, list[int]] = {}
    for m in members:
        by_blog.setdefault(m.blog_id, []).append(m.post_id)
    for blog_id, ids in by_blog.items():
        names = ", ".join(f":i{n}" for n in range(len(ids)))
        for pid, when in conn.execute(
            sa.text(
                f"SELECT ID, post_modified_gmt FROM {table(scope.blogs[blog_id].prefix, 'posts')} WHERE ID IN ({names})"
            ),
            {f"i{n}": v for n, v in enumerate(ids)},
        ):
            if when is not None:
                out[(blog_id, int(pid))] = when
    skus = sorted({m.sku for m in members if m.sku})
    wanted = {m.key for m in members}
    for start in range(0, len(skus), 500):
        part = skus[start : start + 500]
        names = ", ".join(f":s{n}" for n in range(len(part)))
        for b, p, when in conn.execute(
            sa.text(
                f"SELECT blog_id, post_id, MAX(IF(role = 'origin', captured_at, applied_at)) "
                f"FROM {table(scope.base, 'syncd_history')} WHERE sku IN ({names}) AND role <> 'skipped' "
                f"GROUP BY blog_id, post_id"
            ),
            {f"s{n}": v for n, v in enumerate(part)},
        ):
            key = (int(b), int(p))
            if key in wanted and when is not None and (key not in out or when > out[key]):
                out[key] = when
    return out


def _write_entry(g: GroupState, plan: GroupPlan, w: FieldWrite) -> dict[str, Any]:
    return {
        "group": g.group_id,
        "sku": w.sku or g.sku,
        "lang": g.lang,
        "blog": w.member[0],
        "post": w.member[1],
        "field": w.field,
        "key": w.meta_key,
        "old": w.old,
        "new": w.new,
        "authority": None if plan.authority is None else f"{plan.authority[0]}:{plan.authority[1]}",
    }


def _safe_rollback(conn: sa.Connection) -> None:
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - a dead connection has nothing to roll back
        pass


# --------------------------------------------------------------------------- reconcile
def reconcile(
    config: Config,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    engine: sa.Engine | None = None,
) -> tuple[Report, Outcome]:
    """Audit every group; write the authority's values where members differ and heal derived data.

    Returns the audit report (what was found before writing) and what was written (or, with
    ``dry_run``, what would be). ``dry_run`` runs the very same chunks and rolls each one back
    instead of committing it, so the preview lists exactly what a real run writes (a derived fix
    the written quantity makes unnecessary is not listed); groups with captured changes in flight
    are left to the daemon (a real run applies those first) and counted in ``pending_waiting``.
    On a network where syncd was never installed only ``dry_run`` is possible: the link groups
    are then built in temporary tables (:mod:`syncd.preview`) and nothing is created."""
    own = engine is None
    temporary = False
    if engine is None:
        engine, temporary = _engine(config, preview=dry_run)
    progress = progress or Progress("reconcile", enabled=False)
    outcome = Outcome(dry_run=dry_run, authority=config.reconcile.authority)
    try:
        with engine.connect() as conn:
            if not temporary:
                _require_schema(conn, config)
            scope = scope_for(conn, config)
        auditor = Auditor(
            engine, scope, progress=progress, max_buckets=RECONCILE_MAX_BUCKETS, workers=1 if temporary else 2
        )
        auditor.report.preview = temporary
        writer = Writer(config, scope, engine, outcome, dry_run=dry_run)
        started = time.monotonic()
        buckets = auditor.checksum()
        chunks = list(auditor.bucket_ranges(buckets))
        progress.stage("reconcile: examining and writing", len(chunks))
        # Drifted groups and products to heal collect across examined chunks; each write chunk
        # (at most WRITE_GROUPS groups) is one transaction.
        todo: list[int] = []
        heal: dict[int, set[int]] = {}

        def flush(final: bool = False) -> None:
            while todo and (final or len(todo) >= WRITE_GROUPS):
                part = todo[:WRITE_GROUPS]
                del todo[:WRITE_GROUPS]
                writer.run_chunk(part, heal)
                heal.clear()
            if final and heal:
                writer.run_chunk([], heal)
                heal.clear()

        with engine.connect() as ro:
            for ranges in chunks:
                chunk = auditor.examine(ro, ranges, check_drifted=False)
                ro.rollback()
                auditor.record(chunk)
                drifted = sorted(chunk.drifted)
                if dry_run:
                    # A real run applies these groups' captured changes first and usually finds
                    # nothing left to write: the preview cannot apply them, so it leaves them out.
                    outcome.pending_waiting += sum(chunk.pending.values())
                    drifted = [g for g in drifted if not chunk.pending.get(g)]
                todo.extend(drifted)
                waiting = {m.key for g in chunk.groups if chunk.pending.get(g.group_id) for m in g.members}
                for d in chunk.disagreements:
                    if d.product_id and not (dry_run and (d.blog_id, d.product_id) in waiting):
                        heal.setdefault(d.blog_id, set()).add(d.product_id)
                flush()
                progress.advance(1)
            flush(final=True)
            for blog_id, found in auditor.unlinked_disagreements(ro):
                ro.rollback()
                ids = sorted({d.product_id for d in found if d.product_id})
                for d in found:
                    auditor.report.add("derived", disagreement_entry(d))
                if ids:
                    writer.run_chunk([], {blog_id: set(ids)})
            for entry in auditor.single_blog_groups(ro, buckets):
                auditor.report.add("single_blog", entry)
            ro.rollback()
        auditor.report.seconds = time.monotonic() - started
        return auditor.report, outcome
    finally:
        if own:
            engine.dispose()


def _engine(config: Config, *, preview: bool = False) -> tuple[sa.Engine, bool]:
    """Writes as syncd's apply session (never captured by the triggers), long reads allowed; with
    multi-statements, as the daemon's apply engine, so that the derived step sends its reads and
    its writes as one round trip each per blog (:func:`syncd.db.run_many`). ``preview``: a
    --dry-run, which also works where syncd is not installed (temporary tables, True returned)."""
    kw: dict[str, Any] = {
        "apply_marker": True,
        "pool_size": 2,
        "max_overflow": 2,
        "query_cache_size": QUERY_CACHE,
        "connect_args": {"read_timeout": 3600},
        "multi_statements": True,
    }
    if preview:
        from syncd.preview import open_engine

        return open_engine(config, **kw)
    return config.database.make_engine(**kw), False


def _require_schema(conn: sa.Connection, config: Config) -> None:
    if not schema_present(conn, config.database.table_prefix):
        raise NotInstalled("syncd is not installed in this database (run: syncd install)")


class NotInstalled(RuntimeError):
    pass


# --------------------------------------------------------------------------- rendering
def render_outcome(outcome: Outcome, out: TextIO) -> None:
    verb = "Would write" if outcome.dry_run else "Wrote"
    c = outcome.counts
    print(
        f"\n{verb} {c['writes']} value(s) in {c['groups']} group(s) (authority: {outcome.authority}); "
        f"derived data {'to heal' if outcome.dry_run else 'healed'} on {c['healed']} product(s)"
        + ("" if outcome.dry_run else f"; {outcome.pending_applied} pending change(s) applied first"),
        file=out,
    )
    if outcome.dry_run and outcome.pending_waiting:
        print(
            f"{outcome.pending_waiting} captured change(s) of these products wait for the daemon: a real run "
            "applies them first, so what it writes for their groups is not previewed",
            file=out,
        )
    if outcome.writes:
        print_table(
            [
                (
                    w["sku"],
                    w["lang"],
                    f"{w['blog']}:{w['post']}",
                    w["field"],
                    _txt(w["old"]),
                    _txt(w["new"]),
                    w["authority"],
                )
                for w in outcome.writes
            ],
            ("SKU", "LANG", "BLOG:POST", "FIELD", "OLD", "NEW", "AUTHORITY"),
            out,
        )
    if outcome.healed:
        print_table(
            [(h["blog"], h["post"], h["what"]) for h in outcome.healed],
            (
                "BLOG",
                "POST",
                "DERIVED DATA " + ("TO RECOMPUTE" if outcome.dry_run else "RECOMPUTED"),
            ),
            out,
        )
    if outcome.left_alone:
        print(f"\nLeft alone: {c['left_alone']}", file=out)
        print_table(
            [
                (
                    x.get("sku", ""),
                    x.get("group", ""),
                    f"{x['blog']}:{x['post']}" if "blog" in x else "",
                    x["reason"],
                )
                for x in outcome.left_alone
            ],
            ("SKU", "GROUP", "BLOG:POST", "REASON"),
            out,
        )
    if outcome.skipped_chunks:
        print(f"\nChunks skipped after {ATTEMPTS} attempts (run again): {c['skipped_chunks']}", file=out)
        for s in outcome.skipped_chunks:
            print(f"  {s['n_groups']} group(s): {s['reason']}", file=out)


def _txt(v: Any) -> str:
    return "NULL" if v is None else str(v)


def exit_status(report: Report | None, outcome: Outcome, bad_arguments: bool = False) -> int:
    """Reconcile: 4 when drift was found (written, or with --dry-run to be written); sync and
    set-stock (``report`` None): 0 when done. Both: 8 chunk skipped, 16 bad argument, 32 left alone."""
    code = 0
    if report is not None:
        code |= report.exit_status()
        if outcome.counts["writes"] or outcome.counts["healed"]:
            code |= EXIT_DRIFT
    if outcome.counts["skipped_chunks"]:
        code |= EXIT_SKIPPED
    if outcome.counts["left_alone"]:
        code |= EXIT_UNSAFE
    if bad_arguments:
        code |= EXIT_BAD_ARGUMENT
    return code


# --------------------------------------------------------------------------- entry points
def main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd --reconcile [--dry-run] [--json]`` / ``syncd reconcile``."""
    out = out or sys.stdout
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        with Progress("reconcile") as bar:
            report, outcome = reconcile(config, dry_run=dry_run, progress=bar)
    except (NotInstalled, PreviewRefused) as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FATAL
    code = exit_status(report, outcome)
    log.info(
        "reconcile_finished",
        dry_run=dry_run,
        authority=outcome.authority,
        groups=outcome.counts["groups"],
        writes=outcome.counts["writes"],
        healed=outcome.counts["healed"],
        skipped_chunks=outcome.counts["skipped_chunks"],
        exit_status=code,
    )
    if getattr(args, "json", False):
        dump_json({"audit": report.document(), "reconcile": outcome.document(), "exit_status": code}, out)
    else:
        render_audit(report, out)
        render_outcome(outcome, out)
        print(f"\nExit status {code}", file=out)
    return code


def _resolve_all(
    conn: sa.Connection, scope: Scope, skus: Sequence[str], lang: str | None
) -> tuple[list[Resolved], list[str]]:
    resolved, errors = [], []
    for sku in skus:
        try:
            resolved.append(resolve_sku(conn, scope, sku, lang))
        except BadSku as exc:
            errors.append(str(exc))
    return resolved, errors


def sync_skus(
    config: Config, skus: Sequence[str], *, lang: str | None = None, dry_run: bool = False
) -> tuple[Outcome, list[str]]:
    """``syncd sync SKU...``: push each named group's authoritative state to all its members now.
    Nothing is written when any argument is bad (the errors are returned)."""
    engine, temporary = _engine(config, preview=dry_run)
    outcome = Outcome(dry_run=dry_run, authority=config.reconcile.authority)
    try:
        with engine.connect() as conn:
            if not temporary:
                _require_schema(conn, config)
            scope = scope_for(conn, config)
            resolved, errors = _resolve_all(conn, scope, skus, lang)
            conn.rollback()
        if errors:
            return outcome, errors
        writer = Writer(config, scope, engine, outcome, dry_run=dry_run)
        for r in resolved:
            writer.run_chunk(r.group_ids, force=True)
        return outcome, []
    finally:
        engine.dispose()


def set_stock(
    config: Config, sku: str, qty: str, *, lang: str | None = None, dry_run: bool = False
) -> tuple[Outcome, list[str]]:
    """``syncd set-stock SKU QTY``: every member of the group that manages stock gets QTY, in one
    transaction (pending changes of the group are applied first, as in reconcile)."""
    try:
        value = parse_qty(qty)
    except ValueError as exc:
        return Outcome(authority="set-stock"), [str(exc)]
    engine, temporary = _engine(config, preview=dry_run)
    outcome = Outcome(dry_run=dry_run, authority="set-stock")
    try:
        with engine.connect() as conn:
            if not temporary:
                _require_schema(conn, config)
            scope = scope_for(conn, config)
            resolved, errors = _resolve_all(conn, scope, [sku], lang)
            conn.rollback()
        if errors:
            return outcome, errors
        writer = Writer(config, scope, engine, outcome, dry_run=dry_run)
        writer.run_chunk(resolved[0].group_ids, force=True, set_quantity=value)
        return outcome, []
    finally:
        engine.dispose()


def _tool_main(
    run: Callable[[], tuple[Outcome, list[str]]], args: Any, out: TextIO | None, title: str
) -> int:
    out = out or sys.stdout
    try:
        outcome, errors = run()
    except (NotInstalled, PreviewRefused) as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FATAL
    for e in errors:
        print(f"syncd {title}: {e}", file=sys.stderr)
    code = exit_status(None, outcome, bad_arguments=bool(errors))
    if getattr(args, "json", False):
        dump_json({**outcome.document(), "errors": errors, "exit_status": code}, out)
    elif not errors:
        render_outcome(outcome, out)
    return code


def sync_main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd sync SKU... [--lang L] [--json]``."""
    dry = bool(getattr(args, "dry_run", False))
    return _tool_main(lambda: sync_skus(config, args.skus, lang=args.lang, dry_run=dry), args, out, "sync")


def set_stock_main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd set-stock SKU QTY [--lang L] [--json]``."""
    dry = bool(getattr(args, "dry_run", False))
    return _tool_main(
        lambda: set_stock(config, args.sku, args.qty, lang=args.lang, dry_run=dry), args, out, "set-stock"
    )


# --------------------------------------------------------------------------- by group (dashboard)
# The dashboard names link groups by id (it lists them); these run the same Writer path as
# set-stock, sync and reconcile above, on the caller's engine (made with :func:`writer_engine`).
def writer_engine(config: Config) -> sa.Engine:
    """The engine these functions write with (syncd's apply session, never captured)."""
    return _engine(config)[0]


def set_group_stock(
    config: Config,
    engine: sa.Engine,
    group_id: int,
    qty: Decimal,
    *,
    expect: Mapping[Key, str | None] | None = None,
    source: str | None = None,
) -> Outcome:
    """Set-stock on one group. With ``expect`` (each member's ``_stock`` as the caller saw it) the
    write is refused with :class:`StaleQuantities` when any member changed since - checked under the
    chunk's locks, after captured changes of the group were applied."""
    outcome = Outcome(authority="set-stock")
    writer = _group_writer(config, engine, outcome, source)
    writer.expect = expect
    writer.run_chunk([group_id], force=True, set_quantity=qty)
    return outcome


def sync_group(
    config: Config,
    engine: sa.Engine,
    group_id: int,
    *,
    from_blog: int | None = None,
    source: str | None = None,
) -> Outcome:
    """``syncd sync`` for one group; ``from_blog``: that blog's member is the authority."""
    outcome = Outcome(authority=config.reconcile.authority if from_blog is None else f"blog:{from_blog}")
    writer = _group_writer(config, engine, outcome, source)
    writer.policy = outcome.authority
    writer.run_chunk([group_id], force=True)
    return outcome


def reconcile_groups(
    config: Config,
    engine: sa.Engine,
    group_ids: Sequence[int],
    *,
    dry_run: bool = False,
    source: str | None = None,
) -> Outcome:
    """Reconcile the named groups (those that still differ when locked); ``dry_run``: the same
    chunks rolled back instead of committed, so the preview is what the real run writes."""
    outcome = Outcome(dry_run=dry_run, authority=config.reconcile.authority)
    ids = sorted(set(group_ids))
    writer = _group_writer(config, engine, outcome, source)
    writer.dry_run = dry_run
    for start in range(0, len(ids), WRITE_GROUPS):
        writer.run_chunk(ids[start : start + WRITE_GROUPS])
    return outcome


def _group_writer(config: Config, engine: sa.Engine, outcome: Outcome, source: str | None) -> Writer:
    with engine.connect() as conn:
        _require_schema(conn, config)
        scope = scope_for(conn, config)
        conn.rollback()
    writer = Writer(config, scope, engine, outcome)
    writer.source = source
    return writer
