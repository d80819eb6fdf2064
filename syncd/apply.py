"""Apply: one transaction per batch, as a short sequence of pipeline steps.

In order, on the apply connection (whose session has ``@syncd_apply`` set, so nothing written
here is captured again); each step is a module with one job:

1. **claim** (:mod:`syncd.queue`): delete exactly the batch's change rows by id; if any is
   already gone another applier got there first (:class:`~syncd.queue.BatchConflict`); a change
   whose origin blog is not usable now abandons the batch (:class:`~syncd.queue.HeldBlogs`: the
   queue keeps that blog's changes until it is usable);
2. **resolve** (:mod:`syncd.resolve`): membership of products whose SKU or trash state changed,
   link groups, shared translations, joining and frozen products: the batch's :class:`Scope`;
3. **lock** (:mod:`syncd.lock`): the stock meta and posts rows of every product involved, in
   canonical order (blog, then post id);
4. **plan** (:mod:`syncd.plan`, pure), then the **re-check** (:class:`BatchExtend`);
5. **write** (:mod:`syncd.write`): relative deltas in bulk, every other member in a savepoint,
   SKU renames;
6. **derive** (:mod:`syncd.derived`): WooCommerce's derived data on every touched product;
7. **record** (:mod:`syncd.record`, :mod:`syncd.settle`): history, and the joins and heals.

Statements that do not depend on each other's results share a round trip
(:func:`syncd.db.run_many`; executed in order, so locks are taken in the same order as one by
one): step 1 + the live blogs + the link groups, step 3's closure reads and locking reads of
every blog, the bulk stock writes of every blog, the derived reads and the derived writes of
every blog.

The caller commits. Any error that is not about one member (every transient or connection
error, :data:`syncd.db.TRANSIENT` included: it never makes a member skipped) escapes, the caller
rolls back, and nothing of the batch was applied: its change rows are still there to be retried.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
import structlog

from syncd import catalog, derived, fanout, lock, poll, record, settle
from syncd.config import BlogSettings
from syncd.db import ER_SP_DOES_NOT_EXIST, errno_of, guarded, is_retryable, run_many
from syncd.fields.realtime import RealtimeFields
from syncd.fields.writer import FieldWriter, JoinSources
from syncd.lock import ProductRows
from syncd.network import Blog
from syncd.plan import (
    FAN_OUT_NOTE,
    MEMBERSHIP_KEYS,
    SKU,
    STOCK,
    Change,
    FieldPlan,
    JoinPlan,
    Key,
    Member,
    MemberWrite,
    Missed,
    Note,
    Plan,
    format_quantity,
    plan_batch,
    plan_fields,
    plan_join,
    plan_missed_sales,
)
from syncd.queue import BatchConflict as BatchConflict  # re-exported: callers catch it from here
from syncd.queue import acknowledge_sql, check_acknowledged
from syncd.record import BatchResult as BatchResult  # re-exported: the daemon's batch outcome
from syncd.record import HistoryRow
from syncd.resolve import Resolver, Scope, by_blog
from syncd.write import MemberWriter, delta_of, unreachable_reason

log = structlog.get_logger("syncd.apply")

RefreshFn = Callable[..., object]


class BatchExtend(RuntimeError):  # noqa: N818 - a request to the caller, not a failure
    """Changes of products this batch writes fixed values into were captured after the batch was
    fetched (the lock step saw their effect): the caller rolls back and applies the batch again
    with them (``ids``), so that a member's own newer value is never overwritten by an older one."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"{len(ids)} changes of written products were captured after the fetch")
        self.ids = list(ids)


_batch_ids = itertools.count(int(datetime.now(UTC).timestamp() * 1000))


def new_batch_id() -> int:
    return next(_batch_ids)


class Applier:
    """Applies batches of captured changes for one network."""

    def __init__(
        self,
        base_prefix: str,
        blogs: Callable[[], Mapping[int, Blog]],
        refresh: RefreshFn | None = None,
        *,
        poll_mode: bool = False,
        blog_settings: Callable[[int], BlogSettings] | None = None,
        propagate_sku_renames: bool = True,
        settle_seconds: float = 3.0,
        step_hook: Callable[[str], None] | None = None,
        fields: RealtimeFields | None = None,
        blogs_away: Callable[[], Mapping[int, Blog]] | None = None,
    ) -> None:
        self.base = base_prefix
        #: Called with a step's name just before it runs ('lock', 'locked', 'settle_lock'): tests make races
        #: deterministic with it (a shop write between the fetch and the lock step).
        self._step_hook = step_hook
        self._blogs = blogs
        self.poll_mode = poll_mode
        # [blogs.N] language / translations_share_stock (config.blogs.for_blog) and [sync]
        # propagate_sku_renames: how products are linked (syncd.catalog).
        settings: Callable[[int], BlogSettings] = blog_settings or (lambda _b: BlogSettings())
        self.propagate_sku_renames = propagate_sku_renames
        self.resolver = Resolver(
            base_prefix, blogs, settings, propagate_sku_renames=propagate_sku_renames, away=blogs_away
        )
        self.writer = MemberWriter(blogs, settle_seconds)
        #: Realtime field groups (issue 10): their changes are registers planned by
        #: plan.plan_fields and written by syncd.fields.writer after the stock writes.
        self.fields = fields
        self.field_writer = FieldWriter(fields, settle_seconds, base_prefix) if fields is not None else None
        self.field_keys = fields.index() if fields is not None else {}
        # None: syncd.derived.refresh_many, every blog's derived step in two round trips; a
        # given function (tests, benchmarks) is called per blog like refresh_products.
        self._refresh = refresh
        #: Per blog, this batch's locked product ids and the posts rows read with them (the lock
        #: step's closure), handed to the derived step so that it does not read them again.
        self._posts: dict[int, tuple[frozenset[int], dict[int, derived.PostRow]]] = {}
        #: Poll mode: per blog, the watched rows this transaction's lock step holds (syncd.poll).
        self._poll_seen: dict[int, poll.Seen] = {}

    # -- the transaction -------------------------------------------------------------------

    def apply(
        self, conn: sa.Connection, changes: Sequence[Change], batch_id: int | None = None
    ) -> BatchResult:
        result = BatchResult(
            batch_id=batch_id if batch_id is not None else new_batch_id(), changes=len(changes)
        )
        if not changes:
            return result
        self.forget_posts()
        now = datetime.now(UTC).replace(tzinfo=None)
        scope = self.claim(conn, changes)
        rows, unreadable = self._lock_step(conn, scope)
        self.step("locked")  # every stock row of the batch is locked; nothing written yet
        superseded, queued = self._after_lock_reads(conn, changes, scope, rows)
        stock = [c for c in changes if c.meta_key not in self.field_keys]
        plan = self._plan(conn, stock, scope, rows, superseded)
        fields = self._plan_fields(changes, scope, rows, superseded)
        if self.field_writer is not None and fields.writes:
            self.field_writer.lock_targets(conn, fields, scope.blogs)
        self._recheck(changes, plan.writes, queued, [w.key for w in fields.writes])
        result.notes = plan.notes
        result.history.extend(_notes_history(plan.notes, changes))
        result.settling.extend(
            settle.batch_records(changes, scope.joining, scope.frozen, plan.settle_deltas, scope.groups)
        )
        result.settling.extend(_heal_superseded(stock, superseded))
        self.writer.skip_unreachable(plan.missed, {c.id: c for c in changes}, unreadable, result)
        result.settling.extend(_heal_missed_fields(fields.missed, unreadable))
        settle.copy_instead(conn, self.base, plan.set_reached)
        touched, written = self._write(conn, changes, plan, rows, scope.blogs, result)
        self._write_fields(conn, changes, fields, rows, scope, result)
        record.advance_registers(  # stock and field changes: one statement
            conn,
            self.base,
            [*plan.applied, *fields.applied],
            [*plan.writes, *fields.writes],
            scope.groups,
            self.field_keys,
        )
        result.history.extend(_origin_history(plan))
        jobs = [(scope.blogs[b], sorted(p)) for b, p in sorted(touched.items()) if p and b in scope.blogs]
        result.derived.update(self._refresh_blogs(conn, jobs, written, now))
        result.settling.extend(_heal_failed_derived(jobs, result.derived))
        if self.poll_mode:
            self.poll_advance(conn, scope.blogs)
        settle.record(conn, self.base, result.settling)
        # Recorded as applied now, not at the batch's start: a field group's write saves its
        # member at its own time, and syncd's own save is recognised by a history row applied at or
        # after it (syncd.fields.inflight): a batch that crossed a second boundary must not leave
        # its members looking like WooCommerce saves in flight.
        record.write_history(
            conn, self.base, result.batch_id, result.history, datetime.now(UTC).replace(tzinfo=None)
        )
        return result

    def step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    def claim(self, conn: sa.Connection, changes: Sequence[Change]) -> Scope:
        """Steps 1 and 2 in one round trip: acknowledge the change rows, read which blogs are live
        and the link groups of every changed product; then resolve the batch's scope."""
        ack, live, members = run_many(
            conn,
            [
                acknowledge_sql(self.base, changes),
                (self.resolver.live_blogs_sql(), ()),
                catalog.members_and_groups_sql(self.base, {c.key for c in changes}),
            ],
        )
        check_acknowledged(changes, ack.rowcount)
        live_ids = {int(r[0]) for r in live.rows}
        blogs = self.resolver.usable(live_ids)
        self.resolver.hold_unusable_origins(changes, blogs, live_ids)
        return self.resolver.scope(conn, changes, blogs, members.rows)

    def _lock_step(self, conn: sa.Connection, scope: Scope) -> tuple[dict[Key, ProductRows], dict[int, str]]:
        """Step 3: every blog at once (two or three round trips); if one blog cannot be read, blog
        by blog, leaving out the one that fails (``scope.blogs`` loses it; the reason by blog is
        returned). Locks already taken are ours and taken again in the same order."""
        rows: dict[Key, ProductRows] = {}
        unreadable: dict[int, str] = {}
        jobs = sorted(by_blog(scope.involved).items())
        self.step("lock")
        if not self.poll_mode:
            try:
                return self.lock(conn, [(scope.blogs[b], sorted(set(p))) for b, p in jobs]), unreadable
            except Exception as exc:  # noqa: BLE001 - a blog that cannot be read: see below
                if is_retryable(exc):
                    raise
                log.warning("lock_step_per_blog", error=str(exc)[:300], errno=errno_of(exc))
        for blog_id, posts in jobs:
            try:
                rows.update(self.lock(conn, [(scope.blogs[blog_id], sorted(set(posts)))]))
                if self.poll_mode:
                    self.poll_capture(conn, scope.blogs[blog_id])
            except Exception as exc:  # noqa: BLE001 - one broken blog must not stop the others
                if is_retryable(exc) or isinstance(exc, BatchConflict):
                    raise  # a conflict (poll mode: another poller got there first) is not a broken blog
                log.error("blog_unreadable", blog=blog_id, error=str(exc), errno=errno_of(exc))
                scope.blogs = {b: v for b, v in scope.blogs.items() if b != blog_id}
                unreadable[blog_id] = f"blog {blog_id} is unreadable (errno {errno_of(exc)})"
        return rows, unreadable

    def _plan(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        scope: Scope,
        rows: Mapping[Key, ProductRows],
        superseded: Mapping[int, int],
    ) -> Plan:
        """Step 4 (pure planning) with what it needs read under the locks: the Polylang fan-out
        copies expected (syncd.fanout) and the SKU-rename conflicts; records the fan-outs."""
        sharing_origins = [c.key for c in changes if c.meta_key == STOCK and c.key in scope.translations]
        expected = fanout.expected(conn, self.base, sharing_origins) if sharing_origins else []
        late = record.late_sets(conn, self.base, changes, superseded, scope.groups) if superseded else None
        plan = plan_batch(
            changes,
            scope.groups,
            {k: r.facts() for k, r in rows.items()},
            scope.blogs.keys(),
            translations=scope.translations,
            propagate_renames=self.propagate_sku_renames,
            sku_conflicts=self.resolver.sku_conflicts(conn, changes, scope.groups, scope.blogs, scope.frozen),
            settling=scope.frozen,
            expected_copies=expected,
            superseded=superseded,
            late_sets=late,
        )
        fanout.record(conn, self.base, plan.copies_expected, plan.copies_met)
        return plan

    def _plan_fields(
        self,
        changes: Sequence[Change],
        scope: Scope,
        rows: Mapping[Key, ProductRows],
        superseded: Mapping[int, int],
    ) -> FieldPlan:
        """Step 4 for the realtime field groups' changes (pure: :func:`syncd.plan.plan_fields`)."""
        if self.fields is None or not any(c.meta_key in self.field_keys for c in changes):
            return FieldPlan([], [], [], {})
        return plan_fields(
            changes,
            scope.groups,
            {k: r.facts() for k, r in rows.items()},
            scope.blogs.keys(),
            self.field_keys,
            self.fields.takes_part,
            settling=scope.frozen,
            superseded=superseded,
        )

    def _write_fields(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        fields: FieldPlan,
        rows: Mapping[Key, ProductRows],
        scope: Scope,
        result: BatchResult,
    ) -> None:
        """Step 5 for the realtime field groups (after the stock writes, before the derived step,
        which then sees the new values), with their history: origins, copies, skips."""
        warnings = [n for n in fields.notes if n.level == "warning"]
        result.history.extend(_notes_history(warnings, changes, self.field_keys))
        if self.field_writer is None or not fields.writes:
            return
        self.field_writer.write_all(conn, fields, rows, scope.blogs, {c.id: c for c in changes}, result)
        result.history.extend(
            HistoryRow(
                c,
                "origin",
                c.blog_id,
                c.post_id,
                fields.origin_sku.get(c.id, ""),
                c.meta_key,
                c.old_value,
                c.new_value,
                None,
                field_group=self.field_keys[c.meta_key][0],
            )
            for c in fields.applied
        )

    def _after_lock_reads(
        self, conn: sa.Connection, changes: Sequence[Change], scope: Scope, locked: Iterable[Key]
    ) -> tuple[dict[int, int], list[tuple[int, Key, str, str]]]:
        """Right after the lock step, in one round trip: the batch's superseded changes
        (:func:`syncd.record.superseded`) and the queued changes of the locked products
        (:func:`syncd.settle.queued_rows`, for :meth:`_recheck`)."""
        late = record.superseded_query(self.base, changes, scope.groups, self.field_keys)
        statements = [settle.queued_rows_sql(self.base, locked)]
        if late is not None:
            statements.append((late.sql, late.params))
        results = run_many(conn, statements)
        queued = settle.parse_queued_rows(results[0].rows)
        return (late.answer(results[1].rows) if late is not None else {}), queued

    def _recheck(
        self,
        changes: Sequence[Change],
        writes: Sequence[MemberWrite],
        queued_rows: Sequence[tuple[int, Key, str, str]],
        also_fixed: Iterable[Key] = (),
    ) -> None:
        """After the lock step, the changes of the locked products captured after this batch was
        fetched (their rows are locked now: nothing more can commit for them). The batch starts
        again with them (BatchExtend) when applying it without them would lose one (issue 9 path 2):
        a member that receives a fixed value (a register, an absolute stock set, a manual status, a
        SKU) would have its own newer value overwritten by an older one; a member whose ``_stock``
        row an importer deleted and added again (an absolute set) would get this batch's deltas on
        top of the value that supersedes them. The batch then takes every queued change of these
        products up to the last one needed, so that capture order holds within it (a delta
        captured before an absolute set is never applied after it). Relative deltas alone commute."""
        fixed = {
            w.key
            for w in writes
            if w.registers
            or w.status_register is not None
            or w.new_sku is not None
            or (w.stock and w.stock.is_set)
        } | set(also_fixed)  # a member taking a field group's value is written a fixed value too
        if not writes and not fixed:
            return
        batch = {c.id for c in changes}
        queued = [r for r in queued_rows if r[0] not in batch]
        needed = [
            cid for cid, key, meta_key, op in queued if key in fixed or (meta_key == STOCK and op == "I")
        ]
        if needed:
            raise BatchExtend([cid for cid, *_ in queued if cid <= max(needed)])

    def _write(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        plan: Plan,
        rows: Mapping[Key, ProductRows],
        blogs: Mapping[int, Blog],
        result: BatchResult,
    ) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        """Step 5. Returns, per blog, the products the derived step recomputes (a skipped member
        is left alone) and those written (saved, as WooCommerce saves a product it writes)."""
        by_id = {c.id: c for c in changes}
        touched: dict[int, set[int]] = {b: set(p) for b, p in plan.refresh.items()}
        written: dict[int, set[int]] = {}
        done = self.writer.write_all(conn, plan.writes, rows, by_id, result)
        for w in plan.writes:
            if w.key not in done:
                touched.get(w.blog_id, set()).discard(w.post_id)
            elif w.post_id in touched.get(w.blog_id, ()):
                written.setdefault(w.blog_id, set()).add(w.post_id)
        renamed = self.writer.renames(conn, plan.writes, rows, by_id, result)
        for blog_id, posts in sorted(by_blog(renamed).items()):  # they keep their group
            guarded(
                blog_id,
                lambda b=blog_id, p=posts: catalog.refresh_members(
                    conn, self.base, blogs[b], p, settings=self.resolver.settings(b)
                ),
                savepoint=conn,
            )
            touched.setdefault(blog_id, set()).update(posts)
            written.setdefault(blog_id, set()).update(posts)
        for c in plan.renamed:
            if catalog.move_group_key(conn, self.base, c.blog_id, c.post_id):
                log.info(
                    "group_renamed", blog=c.blog_id, post=c.post_id, old_sku=c.old_value, sku=c.new_value
                )
        return touched, written

    # -- settling: joins and heals (syncd.settle) --------------------------------------------

    def settle(self, conn: sa.Connection, item: settle.Settling, batch_id: int | None = None) -> str:
        """Join (kind 'join') or heal (kind 'heal') one settled product, in the caller's
        transaction: lock its group's stock rows in the apply step's order, and unless changes of
        the group are still queued (then later: the join must see the group as they leave it),
        give it the group's stock and settings plus its own sales, and its own sales to the others.
        Returns 'joined', 'healed', 'postponed' or 'dropped' (no longer a linked product)."""
        self.forget_posts()
        (live,) = run_many(conn, [(self.resolver.live_blogs_sql(), ())])
        blogs = self.resolver.usable({int(r[0]) for r in live.rows})
        key = item.key
        if key[0] not in blogs:
            settle.postpone(conn, self.base, item, f"blog {key[0]} is not live or not usable")
            return "postponed"
        everyone = catalog.groups_for(conn, self.base, [key]).get(key, [])
        group = [m for m in everyone if m.blog_id in blogs]
        away = [m for m in everyone if m.blog_id not in blogs and m.state == "linked" and m.key != key]
        me = next((m for m in group if m.key == key), None)
        if (me is None or me.state != "linked") and item.kind == settle.JOIN:
            settle.remove(conn, self.base, item)
            log.info(
                "settle_dropped",
                blog=key[0],
                post=key[1],
                kind=item.kind,
                reason="not a linked product any more",
            )
            return "dropped"
        if me is None or me.state != "linked":  # a heal of a product that is not synced: derived data only
            me, group = Member(key[0], key[1]), []
        involved = sorted({m.key for m in group if m.state == "linked"} | {key})
        self.step("settle_lock")
        rows = self.lock(conn, [(blogs[b], p) for b, p in sorted(by_blog(involved).items())])
        if self.poll_mode:  # shop writes the poller has not seen yet are queued: the join waits for them
            for b in sorted({k[0] for k in involved}):
                self.poll_capture(conn, blogs[b])
        current = settle.lock(conn, self.base, item)
        if current is None:
            return "dropped"
        if settle.queued(conn, self.base, involved):
            settle.postpone(
                conn, self.base, current, "changes of its group are queued: after them", restart=False
            )
            return "postponed"
        frozen = settle.frozen(conn, self.base, involved) - {key}
        linked = [m for m in group if m.state == "linked" and m.key != key and m.key not in frozen]
        if current.adds_deltas:  # it missed only sales while its blog was not live: it receives them
            planned = plan_missed_sales(me, {k: r.facts() for k, r in rows.items()}, current.stock_delta)
            if planned is not None:
                return self._write_join(conn, current, me, (None, None), planned, rows, blogs, batch_id)
        behind = settle.heals(conn, self.base, [m.key for m in linked])
        authority, authority_missed = _authority(linked, key, behind)
        if authority is None and away:
            # Its group's only other members are on blogs not live now: joining as the first
            # member would leave two values in one group once they are back.
            blogs_away = sorted({m.blog_id for m in away})
            settle.postpone(
                conn, self.base, current, f"its group's members are on blogs not live now: {blogs_away}"
            )
            return "postponed"
        delta = current.stock_delta if current.kind == settle.JOIN else Decimal(0)
        # Members on blogs not live now miss the joiner's own sales, which the others receive.
        joined = plan_join(
            me,
            authority,
            {k: r.facts() for k, r in rows.items()},
            linked,
            delta,
            carry_sku=current.kind == settle.HEAL and self.propagate_sku_renames,
            authority_missed=authority_missed,
            away=away if current.kind == settle.JOIN else (),
        )
        sources = self._field_sources(conn, me, linked, authority)
        return self._write_join(conn, current, me, (authority, sources), joined, rows, blogs, batch_id)

    def _field_sources(
        self, conn: sa.Connection, me: Member, linked: Sequence[Member], authority: Member | None
    ) -> JoinSources | None:
        """Where a joining or healed member takes its realtime fields from: per field, the member
        whose change its group took last; else a linked member not waiting to be healed itself
        (lowest blog id), else the stock authority."""
        if self.field_writer is None or not linked:
            return None
        behind = settle.waiting(conn, self.base, [m.key for m in linked])
        fallback = min(
            (m for m in linked if m.blog_id != me.blog_id and m.key not in behind),
            key=lambda m: m.key,
            default=authority,
        )
        return JoinSources(
            fallback.key if fallback is not None else None,
            record.register_origins(conn, self.base, me.group_id, self.field_keys.keys()),
            frozenset(m.key for m in linked),
        )

    def _write_join(
        self,
        conn: sa.Connection,
        item: settle.Settling,
        me: Member,
        authorities: tuple[Member | None, JoinSources | None],
        joined: JoinPlan,
        rows: Mapping[Key, ProductRows],
        blogs: Mapping[int, Blog],
        batch_id: int | None,
    ) -> str:
        """Write a planned join: the joiner first (if it cannot be written safely yet, nothing is
        written and the join waits), then its own sales to the others, its realtime field values
        (from the second of ``authorities``; stock and settings come from the first), derived
        data, history."""
        key = item.key
        authority, field_sources = authorities
        sale = Change(
            0, key[0], key[1], STOCK, "J", "0", format_quantity(item.stock_delta), item.last_change_at, 0
        )
        result = BatchResult(batch_id if batch_id is not None else new_batch_id(), 0)
        written: dict[int, set[int]] = {}
        if joined.joiner is not None:
            if not self.writer.member(conn, joined.joiner, rows[key], {0: sale}, result):
                settle.postpone(conn, self.base, item, result.history[-1].note or "not writable yet")
                return "postponed"
            if joined.joiner.new_sku is not None:
                self._carry_sku(conn, me, joined.joiner, rows[key], blogs[key[0]], sale, result)
            if item.kind == settle.JOIN and joined.joiner.stock is not None and joined.joiner.stock.is_set:
                settle.copy_instead(conn, self.base, [key])  # a heal queued for it before it joined
            written.setdefault(key[0], set()).add(key[1])
        bulk = self.writer.stock_deltas(conn, joined.others, rows)
        for w in joined.others:
            if w.key in bulk:
                result.history.extend(self.writer.stock_history(w, {0: sale}, bulk[w.key]))
            elif not self.writer.member(conn, w, rows[w.key], {0: sale}, result):
                continue
            written.setdefault(w.blog_id, set()).add(w.post_id)
        if self._join_fields(conn, me, field_sources, rows[key], blogs, result):
            written.setdefault(key[0], set()).add(key[1])
        touched = {b: set(p) for b, p in written.items()}
        touched.setdefault(key[0], set()).add(key[1])
        now = datetime.now(UTC).replace(tzinfo=None)
        jobs = [(blogs[b], sorted(p)) for b, p in sorted(touched.items())]
        heals = _heal_failed_derived(jobs, self._refresh_blogs(conn, jobs, written, now))
        if self.poll_mode:  # the snapshot takes the join's own writes: never seen as a shop's
            self.poll_advance(conn, blogs)
        if joined.joiner is not None:
            result.settling.extend(self._shared_translation_heals(conn, blogs[key[0]], item))
        result.settling.extend(_heal_when_back(miss, key) for miss in joined.missed.values())
        settle.record(conn, self.base, heals + result.settling)
        # What it wrote is committed with this transaction, its sales included: a heal that must
        # come back (its fields wait, or its own derived step failed) keeps none of them.
        comes_back = item.kind == settle.HEAL and any(r.key == key for r in heals + result.settling)
        if comes_back:
            settle.consume(conn, self.base, item)
        else:
            settle.remove(conn, self.base, item)
        record.write_history(conn, self.base, result.batch_id, result.history, now)
        w = joined.joiner
        log.info(
            "member_joined" if item.kind == settle.JOIN else "member_healed",
            blog=key[0],
            post=key[1],
            sku=me.sku,
            lang=me.lang,
            group=me.group_id,
            authority_blog=authority.blog_id if authority else None,
            authority_post=authority.post_id if authority else None,
            stock=None if w is None or w.stock is None else format_quantity(w.stock.set_value or Decimal(0)),
            own_sales=format_quantity(item.stock_delta) if item.kind == settle.JOIN else None,
            missed_sales=format_quantity(item.stock_delta) if item.adds_deltas else None,
            settings=sorted(w.registers) if w is not None else [],
            rule=_JOIN_RULE if not item.adds_deltas or authority is not None else _MISSED_SALES_RULE,
        )
        return "postponed" if comes_back else "joined" if item.kind == settle.JOIN else "healed"

    def _shared_translation_heals(
        self, conn: sa.Connection, blog: Blog, item: settle.Settling
    ) -> list[settle.Record]:
        """A product that took its group's values on a blog whose translations share its stock:
        its translations are healed too, at once (the same stock; a heal that writes nothing
        queues none: this ends). A heal that only received missed sales queues none: each
        translation the batch did not reach has a record of its own (the planner's component
        reaches every translation of the origin and their groups: ``Plan.missed``), and turning
        its exact sales into a copy loses them when its group's other members are behind too."""
        if item.kind != settle.HEAL or item.adds_deltas:
            return []
        if not catalog.shares_stock(blog, self.resolver.settings(blog.blog_id)):
            return []
        translations, _problems = catalog.translations_for(conn, blog, [item.post_id])
        return [
            settle.Record(
                blog.blog_id,
                post_id,
                settle.HEAL,
                last_change_at=item.last_change_at,
                reason=f"translation of post {item.post_id}, healed: they share their stock",
            )
            for post_id in translations.get(item.post_id, ())
            if post_id != item.post_id
        ]

    def _join_fields(
        self,
        conn: sa.Connection,
        me: Member,
        sources: JoinSources | None,
        row: ProductRows,
        blogs: Mapping[int, Blog],
        result: BatchResult,
    ) -> bool:
        """The realtime field groups' values into a joining or healed member
        (:meth:`syncd.fields.writer.FieldWriter.join`). A group it cannot take now because a save
        may be in flight adds a heal record to ``result.settling``. True if anything was written."""
        if self.field_writer is None or sources is None or not row.exists:
            return False
        return self.field_writer.join(conn, me, sources, row, blogs, result)

    def _carry_sku(
        self,
        conn: sa.Connection,
        me: Member,
        w: MemberWrite,
        rows: ProductRows,
        blog: Blog,
        origin: Change,
        result: BatchResult,
    ) -> None:
        """A healed member takes the SKU rename it missed (carried while its blog was archived),
        unless its blog already has a product with that SKU; it keeps its group."""
        assert w.new_sku is not None
        clash = catalog.sku_conflict(
            conn, self.base, blog, w.post_id, w.new_sku, me.lang, per_language=blog.polylang_wc
        )
        if clash is not None:
            log.warning(
                "sku_not_carried",
                blog=w.blog_id,
                post=w.post_id,
                sku=me.sku,
                new_sku=w.new_sku,
                clash=int(clash),
            )
            return
        old = rows.value(SKU)
        if not self.writer.set_meta(conn, blog, w.post_id, rows, SKU, w.new_sku):
            return
        note = "healed: a SKU rename it missed"
        result.history.append(
            HistoryRow(origin, "copy", w.blog_id, w.post_id, w.new_sku, SKU, old, w.new_sku, None, note)
        )
        guarded(
            blog.blog_id,
            lambda: catalog.refresh_members(
                conn, self.base, blog, [w.post_id], settings=self.resolver.settings(blog.blog_id)
            ),
            savepoint=conn,
        )
        log.info("sku_renamed", blog=w.blog_id, post=w.post_id, old_sku=old, sku=w.new_sku, rule=note)

    def lock(self, conn: sa.Connection, jobs: Sequence[tuple[Blog, Sequence[int]]]) -> dict[Key, ProductRows]:
        """The lock step (:func:`syncd.lock.lock_and_read`) of this transaction; the posts rows it
        read are handed to this transaction's derived step (:meth:`refresh_job`)."""
        rows, closures = lock.lock_and_read(conn, jobs)
        for blog, ids in jobs:
            self._posts[blog.blog_id] = (frozenset(ids), closures[blog.blog_id])
        return rows

    def refresh_job(self, blog: Blog, posts: list[int], changed: list[int]) -> derived.RefreshJob:
        """The derived step's job for ``posts`` on ``blog``, with the posts rows this transaction's
        lock step read when it locked every one of them (their closure was read there), so that
        the derived step does not read them again; otherwise the derived step reads them."""
        locked, rows = self._posts.get(blog.blog_id, (frozenset(), {}))
        return derived.RefreshJob(
            blog, posts, changed=changed, posts=rows if locked.issuperset(posts) else None
        )

    def forget_posts(self) -> None:
        """A new transaction: the lock step's posts rows of the last one are not to be reused."""
        self._posts = {}
        self._poll_seen = {}

    # -- poll mode (syncd.poll): the snapshot moves only with what was captured or written -----

    def poll_capture(self, conn: sa.Connection, blog: Blog) -> int:
        """Right after the lock step of ``blog``: queue the shop writes the poller has not seen
        on every product locked there (the closure too). Returns the changes queued."""
        ids, post_rows = self._posts.get(blog.blog_id, (frozenset(), {}))
        try:
            seen = poll.capture_unseen(conn, self.base, blog, set(ids) | set(post_rows))
        except poll.SnapshotConflict as exc:
            raise BatchConflict(str(exc)) from exc
        self._poll_seen[blog.blog_id] = seen
        return seen.queued

    def poll_advance(self, conn: sa.Connection, blogs: Collection[int]) -> None:
        """After every write of the transaction: the snapshot takes syncd's own writes only."""
        committed = poll.committed_elsewhere(conn.engine)
        for blog_id, seen in sorted(self._poll_seen.items()):
            if blog_id not in blogs:
                continue
            try:
                poll.advance_snapshot(conn, self.base, seen, committed)
            except poll.SnapshotConflict as exc:
                raise BatchConflict(str(exc)) from exc

    def _refresh_blogs(
        self,
        conn: sa.Connection,
        jobs: Sequence[tuple[Blog, list[int]]],
        written: Mapping[int, set[int]],
        now: datetime,
    ) -> dict[int, object]:
        """The derived step of every touched blog, under one savepoint.

        Members syncd wrote count as saved (post_modified, transients), as WooCommerce saves a
        product whose stock it sets; an origin that is only repaired is saved only where one of
        its derived values was wrong. If one blog fails (not retryably: e.g. a table missing),
        everything the step wrote is rolled back and it runs again with a savepoint per blog, so
        that the failing blog alone is left out: the common case pays for one savepoint, not one
        per blog (two round trips each)."""
        if not jobs:
            return {}

        def job(blog: Blog, posts: list[int]) -> derived.RefreshJob:
            return self.refresh_job(blog, posts, sorted(written.get(blog.blog_id, ())))

        def refresh(blog: Blog, posts: list[int]) -> object:
            j = job(blog, posts)
            if self._refresh is None:
                return derived.refresh_many(conn, [j], now_utc=now)[blog.blog_id]
            return self._refresh(conn, blog, posts, now_utc=now, changed=j.changed, posts=j.posts)

        at_once = self._refresh_at_once(conn, jobs, job, refresh, now)
        if at_once is not None:
            return at_once
        return {
            blog.blog_id: guarded(
                blog.blog_id, lambda blog=blog, posts=posts: refresh(blog, posts), savepoint=conn
            )
            for blog, posts in jobs
        }

    def _refresh_at_once(
        self,
        conn: sa.Connection,
        jobs: Sequence[tuple[Blog, list[int]]],
        job: Callable[[Blog, list[int]], derived.RefreshJob],
        refresh: Callable[[Blog, list[int]], object],
        now: datetime,
    ) -> dict[int, object] | None:
        """Every blog's derived step under one savepoint; None (rolled back to it) when one blog
        failed, not retryably. The daemon's own step sends its savepoint with its statements
        (two round trips fewer); an injected refresh runs under SQLAlchemy's."""
        if self._refresh is None:
            try:
                return dict(
                    derived.refresh_many(
                        conn, [job(b, p) for b, p in jobs], now_utc=now, savepoint=_DERIVED_SAVEPOINT
                    )
                )
            except Exception as exc:
                if is_retryable(exc):
                    raise
                _undo_savepoint(conn, _DERIVED_SAVEPOINT)
                log.warning("derived_retry_per_blog", error=str(exc)[:300], errno=errno_of(exc))
                return None
        sp = conn.begin_nested()
        try:
            out = {b.blog_id: refresh(b, p) for b, p in jobs}
            sp.commit()
            return out
        except Exception as exc:
            if is_retryable(exc):
                raise
            sp.rollback()
            log.warning("derived_retry_per_blog", error=str(exc)[:300], errno=errno_of(exc))
            return None


#: The derived step's savepoint (a name SQLAlchemy never uses), sent with the step's statements.
_DERIVED_SAVEPOINT = "syncd_derived"


def _undo_savepoint(conn: sa.Connection, name: str) -> None:
    """Roll back to and release a savepoint sent with a step's statements; one that was never
    reached (the step failed before its first round trip) has nothing to undo."""
    try:
        conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
    except sa.exc.DBAPIError as exc:
        if errno_of(exc) == ER_SP_DOES_NOT_EXIST:
            return
        raise
    conn.exec_driver_sql(f"RELEASE SAVEPOINT {name}")


def _notes_history(
    notes: Sequence[Note], changes: Sequence[Change], field_keys: Mapping[str, tuple[str, str]] | None = None
) -> list[HistoryRow]:
    """A change the planner skipped (warning) is logged and recorded, with blog, post and SKU (and
    its field group, for a realtime field's change)."""
    field_keys = field_keys or {}
    by_id = {c.id: c for c in changes}
    out = []
    for n in notes:
        if n.level != "warning":
            continue
        log.warning(
            "change_skipped", blog=n.blog_id, post=n.post_id, sku=n.sku, change=n.change_id, reason=n.reason
        )
        c = by_id[n.change_id]
        out.append(
            HistoryRow(
                c,
                "skipped",
                n.blog_id,
                n.post_id,
                n.sku,
                c.meta_key,
                None,
                None,
                None,
                n.reason[:255],
                field_keys.get(c.meta_key, (None, ""))[0],
            )
        )
    return out


def _origin_history(plan: Plan) -> list[HistoryRow]:
    """One ``origin`` row per applied change (membership keys aside); an origin absorbed as part
    of a translation fan-out says so: it reached nobody itself."""
    fan_out = {n.change_id: n.reason for n in plan.notes if n.reason.startswith(FAN_OUT_NOTE)}
    return [
        HistoryRow(
            c,
            "origin",
            c.blog_id,
            c.post_id,
            plan.origin_sku.get(c.id, ""),
            c.meta_key,
            c.old_value,
            c.new_value,
            delta_of(c) if c.meta_key == STOCK else None,
            fan_out.get(c.id),
        )
        for c in plan.applied
        if c.meta_key not in MEMBERSHIP_KEYS
    ]


_JOIN_RULE = (
    "takes the stock and settings of a linked member not behind its group (lowest blog id among equals)"
)
_MISSED_SALES_RULE = "receives the sales it missed while its blog was not live, as deltas"


def _heal_failed_derived(
    jobs: Sequence[tuple[Blog, Sequence[int]]], outcome: Mapping[int, object]
) -> list[settle.Record]:
    """A blog whose derived step failed (not retryably: its stock is written, its lookup row,
    status or term is not): each of its products is queued to be healed (issue 9 path 9), never
    left wrong silently until its next change."""
    return [
        settle.Record(blog.blog_id, pid, settle.HEAL, reason="derived step failed; recomputed once settled")
        for blog, posts in jobs
        if outcome.get(blog.blog_id) is None
        for pid in posts
    ]


def _heal_missed_fields(missed: Mapping[Key, Missed], unreadable: Mapping[int, str]) -> list[settle.Record]:
    """Members on blogs not live now that a realtime field change did not reach: each takes its
    group's values (the field sources of :meth:`Applier._field_sources`) once its blog is back."""
    out = []
    for key, miss in missed.items():
        reason = unreachable_reason(key[0], unreadable)
        log.warning(
            "field_member_skipped",
            blog=key[0],
            post=key[1],
            sku=miss.member.sku,
            changes=miss.change_ids,
            reason=reason,
        )
        out.append(settle.Record(key[0], key[1], settle.HEAL, reason=reason))
    return out


def _heal_when_back(miss: Missed, joiner: Key) -> settle.Record:
    """A member away when ``joiner`` joined: it receives the joiner's own sales when back."""
    m = miss.member
    reason = f"blog {m.blog_id} was not live when blog {joiner[0]} post {joiner[1]} joined"
    return settle.Record(m.blog_id, m.post_id, settle.HEAL, miss.delta, reason=reason, copy_values=miss.copy)


def _authority(
    linked: Sequence[Member], key: Key, behind: Mapping[Key, tuple[bool, Decimal]]
) -> tuple[Member | None, Decimal]:
    """The member a joining or healed product takes its group's values from, and the sales that
    member missed itself while its blog was not live (not received yet): a member on another blog
    that is not behind its group first (no heal queued), then one that only missed sales (its
    quantity plus those is the group's), then any; the lowest blog id among equals."""

    def rank(m: Member) -> tuple[int, Key]:
        heal = behind.get(m.key)
        return (0 if heal is None else 2 if heal[0] else 1, m.key)

    best = min((m for m in linked if m.blog_id != key[0]), key=rank, default=None)
    heal = behind.get(best.key) if best is not None else None
    return best, (heal[1] if heal is not None and not heal[0] else Decimal(0))


def _heal_superseded(changes: Sequence[Change], superseded: Mapping[int, int]) -> list[settle.Record]:
    """A product whose register change was superseded still holds that older value: it takes its
    group's values once settled (syncd.settle, kind 'heal'), as the newer change's targets did."""
    return [
        settle.Record(
            c.blog_id, c.post_id, settle.HEAL, reason=f"change {c.id} superseded by change {superseded[c.id]}"
        )
        for c in changes
        if c.id in superseded
    ]
