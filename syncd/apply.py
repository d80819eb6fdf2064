"""Apply: one transaction per batch.

In order, on the apply connection (whose session has ``@syncd_apply`` set, so nothing written
here is captured again):

1. delete exactly the batch's change rows (by id, :func:`syncd.queue.acknowledge_sql`); if any
   is already gone, another applier got there first and the batch is abandoned; if a change's
   origin blog is not usable now, :class:`~syncd.queue.HeldBlogs` abandons it too (the queue
   keeps that blog's changes until it is usable);
2. refresh the membership of products whose SKU or trash state changed;
3. resolve the link groups of the changed products;
4. lock and read, in canonical order (blog, then post id), the stock meta of every product
   involved, and the posts rows;
5. plan (pure, :mod:`syncd.plan`);
6. write quantities (relative updates) and registers, one savepoint per member so that an
   unsafe member is skipped without losing the others (the common case, relative ``_stock``
   deltas only, in bulk: one savepoint for all);
7. recompute WooCommerce's derived data on every touched product, per blog (:mod:`syncd.derived`);
8. record history.

Statements that do not depend on each other's results share a round trip
(:func:`syncd.db.run_many`; executed in order, so locks are taken in the same order as one by
one): steps 1 + the live blogs + 3, step 4's closure reads and locking reads of every blog, the
bulk stock writes of every blog, the derived reads and the derived writes of every blog.

The caller commits. Any error that is not about one member (every transient or connection
error, :data:`syncd.db.TRANSIENT` included: it never makes a member skipped) escapes, the caller rolls back, and nothing of the batch was applied: its change
rows are still there to be retried.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from syncd import catalog, derived, fanout, lock, poll, record, settle
from syncd.config import BlogSettings
from syncd.db import errno_of, is_retryable, multi_statements, run_many, table
from syncd.lock import MetaRow, ProductRows
from syncd.network import Blog
from syncd.plan import (
    BACKORDERS,
    FAN_OUT_NOTE,
    MANAGE,
    MEMBERSHIP_KEYS,
    SKU,
    STATUS,
    STOCK,
    TRASH_MARK,
    Change,
    JoinPlan,
    Key,
    Member,
    MemberWrite,
    Note,
    StockValueError,
    format_quantity,
    parse_quantity,
    plan_batch,
    plan_join,
)
from syncd.queue import BatchConflict as BatchConflict  # re-exported: callers catch it from here
from syncd.queue import HeldBlogs, acknowledge_sql, check_acknowledged
from syncd.record import HistoryRow
from syncd.woo import manages_stock

log = structlog.get_logger("syncd.apply")

#: Rows every WooCommerce product has from its creation on: syncd never inserts one. A product
#: that lacks one is being created or imported (delete + add) by a request still running, which
#: checked for the row and will insert it: a second row would follow (syncd.settle).
ALWAYS_PRESENT = (STOCK, MANAGE, BACKORDERS, STATUS)
#: The savepoint around the one-round-trip stock writes (a name SQLAlchemy never uses).
_BULK_SAVEPOINT = "syncd_bulk_stock"

RefreshFn = Callable[..., object]


class BatchExtend(RuntimeError):  # noqa: N818 - a request to the caller, not a failure
    """Changes of products this batch writes fixed values into were captured after the batch was
    fetched (the lock step saw their effect): the caller rolls back and applies the batch again
    with them (``ids``), so that a member's own newer value is never overwritten by an older one."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"{len(ids)} changes of written products were captured after the fetch")
        self.ids = list(ids)


@dataclass
class BatchResult:
    batch_id: int
    changes: int
    writes: int = 0
    skipped: int = 0
    history: list[HistoryRow] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    derived: dict[int, object] = field(default_factory=dict)
    settling: list[settle.Record] = field(default_factory=list)  # joins and heals to record


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
    ) -> None:
        self.base = base_prefix
        #: Called with a step's name just before it runs ('lock', 'locked', 'settle_lock'): tests make races
        #: deterministic with it (a shop write between the fetch and the lock step).
        self._step_hook = step_hook
        self.settle_seconds = settle_seconds
        self._blogs = blogs
        self.poll_mode = poll_mode
        # [blogs.N] language / translations_share_stock (config.blogs.for_blog) and [sync]
        # propagate_sku_renames: how products are linked (syncd.catalog).
        self._settings: Callable[[int], BlogSettings] = blog_settings or (lambda _b: BlogSettings())
        self.propagate_sku_renames = propagate_sku_renames
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
        batch_id = batch_id if batch_id is not None else new_batch_id()
        result = BatchResult(batch_id=batch_id, changes=len(changes))
        if not changes:
            return result
        self.forget_posts()
        # One round trip: acknowledge the change rows, which blogs are live, and the link groups
        # of every changed product (a change from a blog that is not usable abandons the batch:
        # HeldBlogs; members on such blogs are left out below).
        ack, live, members = run_many(
            conn,
            [
                acknowledge_sql(self.base, changes),
                (self._live_blogs_sql(), ()),
                catalog.members_and_groups_sql(self.base, {c.key for c in changes}),
            ],
        )
        check_acknowledged(changes, ack.rowcount)
        live_ids = {int(r[0]) for r in live.rows}
        blogs = self._usable(live_ids)
        self._hold_unusable_origins(changes, blogs, live_ids)
        now = datetime.now(UTC).replace(tzinfo=None)

        # Membership first: a product whose SKU changed, that was trashed, or that syncd has not
        # seen yet (created since the last discovery) must be grouped before planning.
        origins = sorted({c.key for c in changes if c.blog_id in blogs})
        stale = {c.key for c in changes if c.meta_key in MEMBERSHIP_KEYS and c.blog_id in blogs}
        known, groups = catalog.parse_members_and_groups(members.rows)
        groups = {k: g for k, g in groups.items() if k[0] in blogs}
        unknown = set(origins) - known
        was_member = catalog.member_skus(conn, self.base, stale)
        before = catalog.member_groups(conn, self.base, stale | unknown)
        for blog_id, posts in _by_blog(stale | unknown).items():
            self._guarded(
                blog_id,
                lambda b=blog_id, p=posts: catalog.refresh_members(
                    conn, self.base, blogs[b], p, settings=self._settings(b)
                ),
            )
        # A product that leaves its group (trashed, SKU removed) is no longer synced: say which.
        for key in sorted(set(was_member) - catalog.known_members(conn, self.base, was_member)):
            log.warning(
                "member_left",
                blog=key[0],
                post=key[1],
                sku=was_member[key],
                keys=sorted({c.meta_key for c in changes if c.key == key}),
                reason="no longer a linked product (trashed, deleted or SKU removed); not synced any more",
            )
        if stale | unknown:  # membership may have moved: read the groups again
            groups = catalog.groups_for(conn, self.base, origins)
        translations = self._translations(conn, blogs, groups)
        joining = self._joining(changes, stale | unknown, before, groups)

        involved: set[Key] = set(origins)
        for members in groups.values():
            involved.update(m.key for m in members if m.blog_id in blogs)
        for tr in translations.values():
            involved.update(k for k in tr if k[0] in blogs)
        # Joining products (now or in an earlier batch) are frozen until they settle (syncd.settle).
        frozen = joining | settle.frozen(conn, self.base, involved)
        rows: dict[Key, ProductRows] = {}
        unreadable: dict[int, str] = {}
        by_blog = sorted(_by_blog(involved).items())
        self.step("lock")
        if not self.poll_mode:
            try:  # every blog at once: two or three round trips
                rows = self.lock(conn, [(blogs[b], sorted(set(p))) for b, p in by_blog])
                by_blog = []
            except Exception as exc:  # noqa: BLE001 - a blog that cannot be read: see below
                if is_retryable(exc):
                    raise
                # Blog by blog, to leave out the one that fails. Locks already taken are ours
                # and taken again in the same order; nothing was written.
                log.warning("lock_step_per_blog", error=str(exc)[:300], errno=errno_of(exc))
        for blog_id, posts in by_blog:
            try:
                locked = self.lock(conn, [(blogs[blog_id], sorted(set(posts)))])
                rows.update(locked)
                if self.poll_mode:
                    self.poll_capture(conn, blogs[blog_id])
            except Exception as exc:  # noqa: BLE001 - one broken blog must not stop the others
                if is_retryable(exc) or isinstance(exc, BatchConflict):
                    raise  # a conflict (poll mode: another poller got there first) is not a broken blog
                log.error("blog_unreadable", blog=blog_id, error=str(exc), errno=errno_of(exc))
                blogs = {b: v for b, v in blogs.items() if b != blog_id}
                unreadable[blog_id] = f"blog {blog_id} is unreadable (errno {errno_of(exc)})"

        self.step("locked")  # every stock row of the batch is locked; nothing written yet
        sharing_origins = [c.key for c in changes if c.meta_key == STOCK and c.key in translations]
        expected = fanout.expected(conn, self.base, sharing_origins) if sharing_origins else []
        plan = plan_batch(
            changes,
            groups,
            {k: r.facts() for k, r in rows.items()},
            blogs.keys(),
            translations=translations,
            propagate_renames=self.propagate_sku_renames,
            sku_conflicts=self._sku_conflicts(conn, changes, groups, blogs, frozen),
            settling=frozen,
            expected_copies=expected,
        )
        fanout.record(conn, self.base, plan.copies_expected, plan.copies_met)
        self._recheck(conn, changes, plan.writes, rows)
        result.notes = plan.notes
        result.settling.extend(self._settle_records(changes, joining, frozen, plan.settle_deltas, groups))
        for n in plan.notes:
            if n.level == "warning":
                log.warning(
                    "change_skipped",
                    blog=n.blog_id,
                    post=n.post_id,
                    sku=n.sku,
                    change=n.change_id,
                    reason=n.reason,
                )
                result.history.append(
                    HistoryRow(
                        _change_by_id(changes, n.change_id),
                        "skipped",
                        n.blog_id,
                        n.post_id,
                        n.sku,
                        _change_by_id(changes, n.change_id).meta_key,
                        None,
                        None,
                        None,
                        n.reason[:255],
                    )
                )

        self._skip_dead_blogs(plan.applied, groups, blogs, unreadable, result)

        by_id = {c.id: c for c in changes}
        touched: dict[int, set[int]] = {b: set(p) for b, p in plan.refresh.items()}
        written: dict[int, set[int]] = {}
        bulk = self._write_stock_deltas(conn, plan.writes, rows)
        for w in plan.writes:
            if w.key in bulk:
                ok = True
                result.writes += 1
                result.history.extend(self._stock_history(w, by_id, bulk[w.key]))
            else:
                ok = self._write_member(conn, w, rows[w.key], by_id, result)
            if not ok:
                touched.get(w.blog_id, set()).discard(w.post_id)
            elif w.post_id in touched.get(w.blog_id, ()):
                written.setdefault(w.blog_id, set()).add(w.post_id)

        renamed = self._write_renames(conn, plan.writes, rows, by_id, result)
        for blog_id, posts in sorted(_by_blog(renamed).items()):
            self._guarded(
                blog_id,
                lambda b=blog_id, p=posts: catalog.refresh_members(
                    conn, self.base, blogs[b], p, settings=self._settings(b)
                ),
                savepoint=conn,
            )
            for p in posts:
                touched.setdefault(blog_id, set()).add(p)
                written.setdefault(blog_id, set()).add(p)
        for c in plan.renamed:
            if catalog.move_group_key(conn, self.base, c.blog_id, c.post_id):
                log.info(
                    "group_renamed", blog=c.blog_id, post=c.post_id, old_sku=c.old_value, sku=c.new_value
                )

        # An origin absorbed as part of a translation fan-out says so: it reached nobody itself.
        fan_out = {n.change_id: n.reason for n in plan.notes if n.reason.startswith(FAN_OUT_NOTE)}
        for c in plan.applied:
            if c.meta_key in MEMBERSHIP_KEYS:
                continue
            delta = _delta(c) if c.meta_key == STOCK else None
            result.history.append(
                HistoryRow(
                    c,
                    "origin",
                    c.blog_id,
                    c.post_id,
                    plan.origin_sku.get(c.id, ""),
                    c.meta_key,
                    c.old_value,
                    c.new_value,
                    delta,
                    fan_out.get(c.id),
                )
            )

        jobs = [(blogs[b], sorted(p)) for b, p in sorted(touched.items()) if p and b in blogs]
        result.derived.update(self._refresh_blogs(conn, jobs, written, now))
        result.settling.extend(_heal_failed_derived(jobs, result.derived))

        if self.poll_mode:
            self.poll_advance(conn, blogs)
        settle.record(conn, self.base, result.settling)
        record.write_history(conn, self.base, batch_id, result.history, now)
        return result

    def step(self, name: str) -> None:
        if self._step_hook is not None:
            self._step_hook(name)

    def _recheck(
        self, conn: sa.Connection, changes: Sequence[Change], writes: Sequence[MemberWrite], locked: Iterable[Key]
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
        if not writes:
            return
        batch = {c.id for c in changes}
        fixed = {
            w.key
            for w in writes
            if w.registers or w.status_register is not None or w.new_sku is not None or (w.stock and w.stock.is_set)
        }
        queued = [r for r in settle.queued_rows(conn, self.base, locked) if r[0] not in batch]
        needed = [cid for cid, key, meta_key, op in queued if key in fixed or (meta_key == STOCK and op == "I")]
        if needed:
            raise BatchExtend([cid for cid, *_ in queued if cid <= max(needed)])

    # -- settling: joins and heals (syncd.settle) --------------------------------------------

    def settle(self, conn: sa.Connection, item: settle.Settling, batch_id: int | None = None) -> str:
        """Join (kind 'join') or heal (kind 'heal') one settled product, in the caller's
        transaction: lock its group's stock rows in the apply step's order, and unless changes of
        the group are still queued (then later: the join must see the group as they leave it),
        give it the group's stock and settings plus its own sales, and its own sales to the others.
        Returns 'joined', 'healed', 'postponed' or 'dropped' (no longer a linked product)."""
        self.forget_posts()
        (live,) = run_many(conn, [(self._live_blogs_sql(), ())])
        blogs = self._usable({int(r[0]) for r in live.rows})
        key = item.key
        if key[0] not in blogs:
            settle.postpone(conn, self.base, item, f"blog {key[0]} is not live or not usable")
            return "postponed"
        group = [m for m in catalog.groups_for(conn, self.base, [key]).get(key, []) if m.blog_id in blogs]
        me = next((m for m in group if m.key == key), None)
        if (me is None or me.state != "linked") and item.kind == settle.JOIN:
            settle.remove(conn, self.base, item)
            log.info("settle_dropped", blog=key[0], post=key[1], kind=item.kind, reason="not a linked product any more")
            return "dropped"
        if me is None or me.state != "linked":  # a heal of a product that is not synced: derived data only
            me, group = Member(key[0], key[1]), []
        involved = sorted({m.key for m in group if m.state == "linked"} | {key})
        self.step("settle_lock")
        rows = self.lock(conn, [(blogs[b], p) for b, p in sorted(_by_blog(involved).items())])
        current = settle.lock(conn, self.base, item)
        if current is None:
            return "dropped"
        if settle.queued(conn, self.base, involved):
            settle.postpone(conn, self.base, current, "changes of its group are queued: after them", restart=False)
            return "postponed"
        frozen = settle.frozen(conn, self.base, involved) - {key}
        linked = [m for m in group if m.state == "linked" and m.key != key and m.key not in frozen]
        authority = min((m for m in linked if m.blog_id != key[0]), key=lambda m: m.key, default=None)
        delta = current.stock_delta if current.kind == settle.JOIN else Decimal(0)
        joined = plan_join(me, authority, {k: r.facts() for k, r in rows.items()}, linked, delta)
        return self._write_join(conn, current, me, authority, joined, rows, blogs, batch_id)

    def _write_join(
        self,
        conn: sa.Connection,
        item: settle.Settling,
        me: Member,
        authority: Member | None,
        joined: JoinPlan,
        rows: Mapping[Key, ProductRows],
        blogs: Mapping[int, Blog],
        batch_id: int | None,
    ) -> str:
        """Write a planned join: the joiner first (if it cannot be written safely yet, nothing is
        written and the join waits), then its own sales to the others, derived data, history."""
        key = item.key
        sale = Change(0, key[0], key[1], STOCK, "J", "0", format_quantity(item.stock_delta), item.last_change_at, 0)
        result = BatchResult(batch_id if batch_id is not None else new_batch_id(), 0)
        written: dict[int, set[int]] = {}
        if joined.joiner is not None:
            if not self._write_member(conn, joined.joiner, rows[key], {0: sale}, result):
                settle.postpone(conn, self.base, item, result.history[-1].note or "not writable yet")
                return "postponed"
            written.setdefault(key[0], set()).add(key[1])
        bulk = self._write_stock_deltas(conn, joined.others, rows)
        for w in joined.others:
            if w.key in bulk:
                result.history.extend(self._stock_history(w, {0: sale}, bulk[w.key]))
            elif not self._write_member(conn, w, rows[w.key], {0: sale}, result):
                continue
            written.setdefault(w.blog_id, set()).add(w.post_id)
        touched = {b: set(p) for b, p in written.items()}
        touched.setdefault(key[0], set()).add(key[1])
        now = datetime.now(UTC).replace(tzinfo=None)
        jobs = [(blogs[b], sorted(p)) for b, p in sorted(touched.items())]
        heals = _heal_failed_derived(jobs, self._refresh_blogs(conn, jobs, written, now))
        if any(h.key == key for h in heals):  # its own derived step failed: again once settled
            settle.postpone(conn, self.base, item, heals[0].reason)
            return "postponed"
        settle.record(conn, self.base, heals)
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
            own_sales=format_quantity(item.stock_delta),
            settings=sorted(w.registers) if w is not None else [],
            rule="takes the stock and settings of the group's linked member with the lowest blog id",
        )
        return "joined" if item.kind == settle.JOIN else "healed"

    # -- linking: translations, joins, renames (syncd.catalog) ---------------------------------

    def _translations(
        self, conn: sa.Connection, blogs: Mapping[int, Blog], groups: dict[Key, list[Member]]
    ) -> dict[Key, tuple[Key, ...]]:
        """On blogs whose translations share stock: the translation group of every product the
        batch involves, and the link groups of those translations (``groups`` is extended), until
        nothing new is found (a few rounds: links and translations form small components)."""
        sharing = {b for b, blog in blogs.items() if catalog.shares_stock(blog, self._settings(b))}
        out: dict[Key, tuple[Key, ...]] = {}
        if not sharing:
            return out
        checked: set[Key] = set()
        todo = {k for k in groups} | {m.key for ms in groups.values() for m in ms}
        for _ in range(6):
            ask = {k for k in todo if k[0] in sharing and k not in checked}
            if not ask:
                break
            found: set[Key] = set()
            for blog_id, posts in sorted(_by_blog(ask).items()):
                tr, problems = catalog.translations_for(conn, blogs[blog_id], posts)
                catalog.report_translation_problems(blog_id, problems)
                for members in tr.values():
                    keys = tuple((blog_id, p) for p in members)
                    for k in keys:
                        out[k] = keys
                    found.update(keys)
            checked |= ask | found
            new = sorted(found - set(groups))
            more = catalog.groups_for(conn, self.base, new) if new else {}
            groups.update(more)
            todo = found | {m.key for ms in more.values() for m in ms}
        return out

    def _joining(
        self,
        changes: Sequence[Change],
        refreshed: set[Key],
        before: Mapping[Key, tuple[int | None, str]],
        groups: Mapping[Key, Sequence[Member]],
    ) -> set[Key]:
        """Products that join a group in this batch: a linked product whose group is new to it
        (SKU added, changed while ambiguous, or a language change), or whose creation or untrash
        this batch applies (its ``_sku`` row inserted, its trash marker deleted: a product found by
        the start-up refresh is already a member when its creation is applied). They join once
        they have settled (:mod:`syncd.settle`), never while WooCommerce may still be writing them.
        An inserted ``_stock`` row alone is not a creation: an importer's delete + re-add."""
        created = {
            c.key
            for c in changes
            if (c.op == "I" and c.meta_key == SKU) or (c.op == "D" and c.meta_key == TRASH_MARK)
        }
        joining: set[Key] = set()
        for key in refreshed | created:
            me = next((m for m in groups.get(key, ()) if m.key == key), None)
            if me is None or me.state != "linked" or me.group_id is None:
                continue
            if key in created or before.get(key) != (me.group_id, "linked"):
                joining.add(key)
        return joining

    @staticmethod
    def _settle_records(
        changes: Sequence[Change],
        joining: set[Key],
        frozen: set[Key],
        deltas: Mapping[Key, Decimal],
        groups: Mapping[Key, Sequence[Member]],
    ) -> list[settle.Record]:
        """The join records this batch writes: new joiners, and settling products it saw change
        (their own sales add up, and their quiet period starts again)."""
        newest: dict[Key, datetime | None] = {}
        for c in changes:
            if c.key in frozen:
                at = newest.get(c.key)
                newest[c.key] = c.captured_at if at is None or (c.captured_at and c.captured_at > at) else at
        out = []
        for key in sorted(newest):
            if key in joining:
                me = next((m for m in groups.get(key, ()) if m.key == key), None)
                log.info(
                    "member_settling",
                    blog=key[0],
                    post=key[1],
                    sku=me.sku if me else "",
                    group=me.group_id if me else None,
                    rule="joins its group once WooCommerce has finished writing it (sync.settle_seconds)",
                )
            out.append(settle.Record(key[0], key[1], settle.JOIN, deltas.get(key, Decimal(0)), newest[key]))
        return out

    def _sku_conflicts(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        groups: Mapping[Key, Sequence[Member]],
        blogs: Mapping[int, Blog],
        joins: Collection[Key],
    ) -> dict[tuple[int, Key], int]:
        """For each SKU rename syncd would carry: the members whose blog already has a product with
        the new SKU (same language where Polylang for WooCommerce allows one SKU per language)."""
        out: dict[tuple[int, Key], int] = {}
        if not self.propagate_sku_renames:
            return out
        for c in changes:
            new_sku = (c.new_value or "").strip()
            if c.meta_key != SKU or c.op != "U" or not new_sku or not (c.old_value or "").strip():
                continue
            if c.key in joins:
                continue
            for m in groups.get(c.key, ()):
                if m.key == c.key or m.state != "linked" or m.kind != "sku" or m.blog_id not in blogs:
                    continue
                blog = blogs[m.blog_id]
                clash = catalog.sku_conflict(
                    conn, self.base, blog, m.post_id, new_sku, m.lang, per_language=blog.polylang_wc
                )
                if clash is not None:
                    out[(c.id, m.key)] = int(clash)
        return out

    def _write_renames(
        self,
        conn: sa.Connection,
        writes: Sequence[MemberWrite],
        rows: Mapping[Key, ProductRows],
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> set[Key]:
        """Write each propagated SKU rename (``_sku``; the lookup row's ``sku`` is rewritten by the
        derived refresh, as WooCommerce's save does: fixture 10). Returns the members renamed."""
        done: set[Key] = set()
        for w in writes:
            if w.new_sku is None or w.key not in rows:
                continue
            blog = self._blogs()[w.blog_id]
            origin = next(by_id[i] for i in w.change_ids if by_id[i].meta_key == SKU)
            old = rows[w.key].value(SKU)
            sp = conn.begin_nested()
            try:
                changed = self.set_meta(conn, blog, w.post_id, rows[w.key], SKU, w.new_sku)
                sp.commit()
            except Exception as exc:
                if is_retryable(exc):
                    raise
                sp.rollback()
                self._skip(result, w, by_id, f"database error {errno_of(exc)}: {str(exc)[:160]}")
                continue
            if changed:
                done.add(w.key)
                result.history.append(
                    HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, SKU, old, w.new_sku, None)
                )
                log.info(
                    "sku_renamed",
                    blog=w.blog_id,
                    post=w.post_id,
                    old_sku=old,
                    sku=w.new_sku,
                    origin_blog=origin.blog_id,
                )
        return done

    # -- steps -----------------------------------------------------------------------------

    def _skip_dead_blogs(
        self,
        applied: Sequence[Change],
        groups: Mapping[Key, Sequence[Member]],
        blogs: Mapping[int, Blog],
        unreadable: Mapping[int, str],
        result: BatchResult,
    ) -> None:
        """Linked members on a blog that is deleted, archived, spam, unusable or unreadable now are
        not written (the planner leaves them out); log and record each, with blog, post and SKU,
        and queue each to be healed (syncd.settle) once its blog is usable again."""
        missed: dict[Key, tuple[Member, list[Change]]] = {}
        for c in applied:
            if c.meta_key in MEMBERSHIP_KEYS:
                continue
            for m in groups.get(c.key, ()):
                if m.key != c.key and m.state == "linked" and m.blog_id not in blogs:
                    missed.setdefault(m.key, (m, []))[1].append(c)
        for key in sorted(missed):
            m, cs = missed[key]
            reason = (
                unreadable.get(m.blog_id)
                or f"blog {m.blog_id} is not live (deleted, archived or spam) or not usable"
            )
            result.skipped += 1
            log.warning(
                "member_skipped",
                blog=m.blog_id,
                post=m.post_id,
                sku=m.sku,
                changes=[c.id for c in cs],
                reason=reason,
            )
            for c in cs:
                result.history.append(
                    HistoryRow(
                        c, "skipped", m.blog_id, m.post_id, m.sku, c.meta_key, None, None, None, reason[:255]
                    )
                )
            # Not left behind for good: once its blog is usable again it takes the group's values.
            result.settling.append(settle.Record(m.blog_id, m.post_id, settle.HEAL, reason=reason))

    def _hold_unusable_origins(
        self, changes: Sequence[Change], blogs: Mapping[int, Blog], live: set[int]
    ) -> None:
        """A change whose origin blog is not usable right now is never acknowledged and dropped:
        the batch is abandoned (rolled back by the caller) and the queue holds that blog's
        changes until it is usable again (syncd.queue.HeldBlogs)."""
        known = self._blogs()
        held: dict[int, str] = {}
        for b in sorted({c.blog_id for c in changes} - set(blogs)):
            if b not in live:
                held[b] = "blog is not live (deleted, archived or spam)"
            elif b in known:
                held[b] = "blog is not usable: " + ("; ".join(known[b].problems) or "WooCommerce not active")
            else:
                held[b] = "blog is not served by syncd (not usable at the last discovery, or excluded)"
        if held:
            raise HeldBlogs(held)

    def _live_blogs_sql(self) -> str:
        return f"SELECT blog_id FROM {table(self.base, 'blogs')} WHERE deleted = 0 AND archived = 0 AND spam = 0"

    def _usable(self, live: set[int]) -> dict[int, Blog]:
        """Usable blogs that are still live right now (a blog deleted mid-run is never written)."""
        return {b: blog for b, blog in self._blogs().items() if b in live and blog.usable}

    def lock(self, conn: sa.Connection, jobs: Sequence[tuple[Blog, Sequence[int]]]) -> dict[Key, ProductRows]:
        """The lock step (:func:`syncd.lock.lock_and_read`) of this transaction; the posts rows it
        read are handed to this transaction's derived step (:meth:`refresh_job`)."""
        rows, closures = lock.lock_and_read(conn, jobs)
        for blog, ids in jobs:
            self._posts[blog.blog_id] = (frozenset(ids), closures[blog.blog_id])
        return rows


    def _write_member(
        self,
        conn: sa.Connection,
        w: MemberWrite,
        rows: ProductRows,
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> bool:
        blog = self._blogs()[w.blog_id]
        origin = by_id[w.change_ids[-1]]
        pending: list[HistoryRow] = []
        sp = conn.begin_nested()
        try:
            for key, value in w.registers.items():
                old = rows.value(key)
                if self.set_meta(conn, blog, w.post_id, rows, key, value):
                    pending.append(
                        HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, key, old, value, None)
                    )
            if w.status_register is not None and not manages_stock(rows.value(MANAGE)):
                old = rows.value(STATUS)
                if self.set_meta(conn, blog, w.post_id, rows, STATUS, w.status_register):
                    pending.append(
                        HistoryRow(
                            origin, "copy", w.blog_id, w.post_id, w.sku, STATUS, old, w.status_register, None
                        )
                    )
            if w.stock is not None:
                row = self._write_stock(conn, blog, w, rows)
                if row is not None and w.joined_from is not None:
                    note = f"joined its group: stock of blog {w.joined_from[0]} post {w.joined_from[1]}"
                    pending.append(
                        HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, STOCK, *row, None, note)
                    )
                elif row is not None:
                    pending.extend(self._stock_history(w, by_id, row))
            sp.commit()
        except _MemberSkipped as skip:
            sp.rollback()
            self._skip(result, w, by_id, skip.reason)
            if skip.heal:
                result.settling.append(settle.Record(w.blog_id, w.post_id, settle.HEAL, reason=skip.reason))
            return False
        except Exception as exc:
            if is_retryable(exc):
                raise
            sp.rollback()
            self._skip(result, w, by_id, f"database error {errno_of(exc)}: {str(exc)[:160]}")
            return False
        result.writes += 1
        result.history.extend(pending)
        return True

    def _write_stock_deltas(
        self, conn: sa.Connection, writes: Sequence[MemberWrite], rows: Mapping[Key, ProductRows]
    ) -> dict[Key, tuple[str | None, str | None]]:
        """The common case in bulk: members that only receive a relative ``_stock`` delta.

        Same checks and same statement as :meth:`_write_stock` (``meta_value = meta_value + d`` on
        the locked row), but one UPDATE per (blog, delta) and one re-read per blog instead of
        SAVEPOINT, UPDATE, SELECT and RELEASE per member: 4 round trips per member were ~80% of a
        10-blog batch (bench/profile_batch.py). No savepoint is needed: each UPDATE is one
        statement, which InnoDB rolls back on its own if it fails. Members that fail a check, and
        every member of a statement that failed (not retryable), are left to :meth:`_write_member`,
        which skips or writes them exactly as before. Returns (old text, new text) per member written.
        """
        todo: dict[int, list[tuple[MemberWrite, MetaRow]]] = {}
        seen: set[Key] = set()
        for w in writes:
            op = w.stock
            if w.registers or w.status_register is not None or op is None or op.is_set or op.is_noop:
                continue
            if getattr(w, "joined_from", None) is not None:  # a joining member: its own history note
                continue
            meta = rows[w.key].meta.get(STOCK)
            if not meta or len(meta) != 1 or w.key in seen:
                continue
            try:
                if parse_quantity(meta[0].value) is None:
                    continue
            except StockValueError:
                continue
            seen.add(w.key)
            todo.setdefault(w.blog_id, []).append((w, meta[0]))
        if todo and multi_statements(conn):
            try:
                return self._write_stock_deltas_at_once(conn, todo, rows)
            except Exception as exc:
                if is_retryable(exc):
                    raise
                log.warning("bulk_stock_write_failed", blogs=sorted(todo), errno=errno_of(exc))
                conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_BULK_SAVEPOINT}")
                conn.exec_driver_sql(f"RELEASE SAVEPOINT {_BULK_SAVEPOINT}")
                # Nothing of it was applied: again statement by statement, to find the one.
        done: dict[Key, tuple[str | None, str | None]] = {}
        for blog_id, items in sorted(todo.items()):
            pm = table(self._blogs()[blog_id].prefix, "postmeta")
            written: list[tuple[MemberWrite, MetaRow]] = []
            for (text, params), group in _delta_updates(pm, items):
                try:
                    conn.exec_driver_sql(text, tuple(params))
                except Exception as exc:
                    if is_retryable(exc):
                        raise
                    log.warning(
                        "bulk_stock_write_failed", blog=blog_id, members=len(group), errno=errno_of(exc)
                    )
                    continue  # nothing of this statement was applied: one by one in _write_member
                written.extend(group)
            if written:
                text, params = _reread(pm, written)
                _record_rereads(written, dict(conn.exec_driver_sql(text, tuple(params)).all()), rows, done)
        return done

    def _write_stock_deltas_at_once(
        self,
        conn: sa.Connection,
        todo: Mapping[int, list[tuple[MemberWrite, MetaRow]]],
        rows: Mapping[Key, ProductRows],
    ) -> dict[Key, tuple[str | None, str | None]]:
        """:meth:`_write_stock_deltas` for every blog in ONE round trip: per blog its UPDATEs
        (one per delta) and the re-read, under a savepoint, so that a failure (not retryable)
        can be undone as a whole and the caller can go statement by statement."""
        statements: list[tuple[str, Sequence[Any]]] = [(f"SAVEPOINT {_BULK_SAVEPOINT}", ())]
        reread: list[tuple[int, int]] = []  # (blog id, index of its re-read)
        for blog_id, items in sorted(todo.items()):
            pm = table(self._blogs()[blog_id].prefix, "postmeta")
            statements += [statement for statement, _ in _delta_updates(pm, items)]
            statements.append(_reread(pm, items))
            reread.append((blog_id, len(statements) - 1))
        statements.append((f"RELEASE SAVEPOINT {_BULK_SAVEPOINT}", ()))
        results = run_many(conn, statements)
        done: dict[Key, tuple[str | None, str | None]] = {}
        for blog_id, i in reread:
            _record_rereads(todo[blog_id], dict(results[i].rows), rows, done)
        return done

    def _skip(self, result: BatchResult, w: MemberWrite, by_id: Mapping[int, Change], reason: str) -> None:
        result.skipped += 1
        log.warning(
            "member_skipped", blog=w.blog_id, post=w.post_id, sku=w.sku, changes=w.change_ids, reason=reason
        )
        for cid in w.change_ids:
            c = by_id[cid]
            result.history.append(
                HistoryRow(
                    c, "skipped", w.blog_id, w.post_id, w.sku, c.meta_key, None, None, None, reason[:255]
                )
            )

    def _write_stock(
        self, conn: sa.Connection, blog: Blog, w: MemberWrite, rows: ProductRows
    ) -> tuple[str | None, str | None] | None:
        op = w.stock
        assert op is not None
        meta = rows.meta.get(STOCK)
        pm = table(blog.prefix, "postmeta")
        if op.is_noop:
            current_text = rows.value(STOCK)
            return (current_text, current_text)
        if op.is_set:
            target = None if op.set_value is None else format_quantity(op.set_value + op.delta)
            old = rows.value(STOCK)
            self.set_meta(conn, blog, w.post_id, rows, STOCK, target)
            return (old, target)
        if not meta:
            raise _MemberSkipped("has no _stock row while it manages stock (being created or imported)", heal=True)
        if len(meta) > 1:
            raise _MemberSkipped(f"has {len(meta)} _stock rows")
        try:
            current = parse_quantity(meta[0].value)
        except StockValueError as exc:
            raise _MemberSkipped(f"_stock {exc}") from None
        if current is None:
            raise _MemberSkipped("_stock is SQL NULL while it manages stock")
        # Relative update, as WooCommerce's own checkout writes it (meta_value = meta_value - 2):
        # the row is locked and its value validated, so the server's arithmetic is exact.
        conn.execute(
            sa.text(f"UPDATE {pm} SET meta_value = meta_value + :d WHERE meta_id = :id"),
            {"d": op.delta, "id": meta[0].meta_id},
        )
        new = conn.execute(
            sa.text(f"SELECT meta_value FROM {pm} WHERE meta_id = :id"), {"id": meta[0].meta_id}
        ).scalar_one()
        old_text = meta[0].value
        meta[0] = MetaRow(meta[0].meta_id, new)
        return (old_text, new)

    def _stock_history(
        self, w: MemberWrite, by_id: Mapping[int, Change], row: tuple[str | None, str | None]
    ) -> list[HistoryRow]:
        """One 'copy' row per originating stock change, so history shows each sale once per member."""
        out = []
        stock_changes = [by_id[c] for c in w.change_ids if by_id[c].meta_key == STOCK]
        old, new = row
        for i, c in enumerate(stock_changes):
            out.append(
                HistoryRow(
                    c,
                    "copy",
                    w.blog_id,
                    w.post_id,
                    w.sku,
                    STOCK,
                    old if i == 0 else None,
                    new if i == len(stock_changes) - 1 else None,
                    _delta(c),
                )
            )
        return out

    def set_meta(
        self, conn: sa.Connection, blog: Blog, post_id: int, rows: ProductRows, key: str, value: str | None
    ) -> bool:
        """Make ``key`` hold ``value`` (None: delete the row, as WooCommerce does for ''). True if written.

        Existing rows are addressed by the meta_ids locked in :meth:`lock`: a statement
        ``WHERE post_id = ? AND meta_key = ?`` may be run through the meta_key index, scanning (and
        waiting on) every row of that key on the blog; a shop's checkout statement scanning the
        same index then forms a lock cycle with syncd, and InnoDB kills the smaller transaction -
        the checkout (found by reconcile's write-storm test)."""
        pm = table(blog.prefix, "postmeta")
        existing = rows.meta.get(key, [])
        ids = {f"m{i}": r.meta_id for i, r in enumerate(existing)}
        in_ids = ", ".join(f":{n}" for n in ids)
        if value is None and key != STOCK:
            if not existing:
                return False
            conn.execute(sa.text(f"DELETE FROM {pm} WHERE meta_id IN ({in_ids})"), ids)
            rows.meta[key] = []
            return True
        if existing:
            if existing[0].value == value and len(existing) == 1:
                return False
            conn.execute(sa.text(f"UPDATE {pm} SET meta_value = :v WHERE meta_id IN ({in_ids})"), {"v": value, **ids})
            rows.meta[key] = [MetaRow(r.meta_id, value) for r in existing]
            return True
        if key in ALWAYS_PRESENT:
            raise _MemberSkipped(
                f"has no {key} row (WooCommerce is still creating or importing it); "
                "it takes the group's values once it settles",
                heal=True,
            )
        if self._saved_recently(conn, blog, post_id):
            raise _MemberSkipped(
                f"was saved by WooCommerce less than {self.settle_seconds:g} s ago and lacks {key}: a save "
                "in flight would delete the row; it takes the group's values once it settles",
                heal=True,
            )
        res = conn.execute(
            sa.text(f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (:p, :k, :v)"),
            {"p": post_id, "k": key, "v": value},
        )
        rows.meta[key] = [MetaRow(res.lastrowid, value)]
        return True

    def _saved_recently(self, conn: sa.Connection, blog: Blog, post_id: int) -> bool:
        """WooCommerce saved the product within ``settle_seconds`` (``post_modified_gmt``, which a
        save bumps before it deletes the keys it holds empty): a save may still be in flight."""
        if self.settle_seconds <= 0:
            return False
        return bool(
            conn.exec_driver_sql(
                f"SELECT post_modified_gmt > UTC_TIMESTAMP() - INTERVAL %s MICROSECOND "
                f"FROM {table(blog.prefix, 'posts')} WHERE ID = %s",
                (int(self.settle_seconds * 1_000_000), post_id),
            ).scalar()
        )

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

        sp = conn.begin_nested()
        try:
            if self._refresh is None:
                out: dict[int, object] = dict(
                    derived.refresh_many(conn, [job(blog, posts) for blog, posts in jobs], now_utc=now)
                )
            else:
                out = {blog.blog_id: refresh(blog, posts) for blog, posts in jobs}
            sp.commit()
            return out
        except Exception as exc:
            if is_retryable(exc):
                raise
            sp.rollback()
            log.warning("derived_retry_per_blog", error=str(exc)[:300], errno=errno_of(exc))
        return {
            blog.blog_id: self._guarded(
                blog.blog_id, lambda blog=blog, posts=posts: refresh(blog, posts), savepoint=conn
            )
            for blog, posts in jobs
        }

    def _guarded(
        self, blog_id: int, fn: Callable[[], object], savepoint: sa.Connection | None = None
    ) -> object:
        """Run one blog's step; a non-retryable failure is logged and leaves the other blogs alone."""
        sp = savepoint.begin_nested() if savepoint is not None else None
        try:
            out = fn()
            if sp is not None:
                sp.commit()
            return out
        except Exception as exc:
            if is_retryable(exc):
                raise
            if sp is not None:
                sp.rollback()
            log.error("blog_step_failed", blog=blog_id, error=str(exc)[:300], errno=errno_of(exc))
            return None

class _MemberSkipped(Exception):
    def __init__(self, reason: str, heal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.heal = heal  # finished later by syncd.settle (kind 'heal') instead of left as is


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


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _delta_updates(
    pm: str, items: Sequence[tuple[MemberWrite, MetaRow]]
) -> list[tuple[tuple[str, list[Any]], list[tuple[MemberWrite, MetaRow]]]]:
    """The relative stock writes of one blog: one ``UPDATE ... meta_value + d`` per delta, by the
    locked rows' meta_id; each with the members it writes."""
    by_delta: dict[Decimal, list[tuple[MemberWrite, MetaRow]]] = {}
    for w, m in items:
        assert w.stock is not None
        by_delta.setdefault(w.stock.delta, []).append((w, m))
    return [
        (
            (
                f"UPDATE {pm} SET meta_value = meta_value + %s WHERE meta_id IN ({_marks(len(group))})",
                [delta, *sorted(m.meta_id for _, m in group)],
            ),
            group,
        )
        for delta, group in sorted(by_delta.items())
    ]


def _reread(pm: str, items: Sequence[tuple[MemberWrite, MetaRow]]) -> tuple[str, list[int]]:
    """The values the server wrote (its own text of ``meta_value + d``), for history."""
    ids = sorted(m.meta_id for _, m in items)
    return f"SELECT meta_id, meta_value FROM {pm} WHERE meta_id IN ({_marks(len(ids))})", ids


def _record_rereads(
    items: Sequence[tuple[MemberWrite, MetaRow]],
    new: Mapping[int, str | None],
    rows: Mapping[Key, ProductRows],
    done: dict[Key, tuple[str | None, str | None]],
) -> None:
    for w, m in items:
        rows[w.key].meta[STOCK][0] = MetaRow(m.meta_id, new[m.meta_id])
        done[w.key] = (m.value, new[m.meta_id])


def _by_blog(keys: Iterable[Key]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for b, p in keys:
        out.setdefault(b, []).append(p)
    return out


def _delta(c: Change) -> Decimal | None:
    try:
        old, new = parse_quantity(c.old_value), parse_quantity(c.new_value)
    except StockValueError:
        return None
    if old is None or new is None:
        return None
    return new - old


def _change_by_id(changes: Sequence[Change], cid: int) -> Change:
    return next(c for c in changes if c.id == cid)
