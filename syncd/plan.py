"""Planning: captured changes + link groups + current facts -> the writes of one batch.

Pure functions, no I/O. The apply step reads the facts under lock, calls :func:`plan_batch`,
and executes what it returns, all in one transaction.

Merge rules (DESIGN.md section 2, step 3):

* ``_stock`` is a counter. A change whose old and new values are both numbers contributes
  ``new - old``; every *other* member of the group receives the sum of its siblings' deltas as a
  relative update, so concurrent sales on different blogs all count. A change from a
  non-number (SQL NULL, e.g. stock management switched on) to a value is an absolute set;
  a change to SQL NULL (management switched off) sets NULL. Changes are folded in capture order,
  and a member's own absolute set discards the sibling deltas captured before it, so every member
  ends at the same value.
* ``_manage_stock``, ``_backorders``, ``_low_stock_amount`` are registers: the last captured
  change wins (capture order), and a member's own later change wins over an earlier sibling's.
* ``_stock_status`` is derived when the product manages stock (never copied; the product's own
  derived data is recomputed: "repair"), and a register when it does not.
* Inserts of ``_stock``/``_manage_stock``/``_backorders``/``_stock_status`` rows are WooCommerce
  creating a product: they are not propagated (a new member keeps its own values until
  reconcile). Deletes are product deletion, except ``_low_stock_amount`` (unset).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from syncd.woo import UnparseableStock, manages_stock, parse_stock

STOCK = "_stock"
MANAGE = "_manage_stock"
BACKORDERS = "_backorders"
LOW_STOCK = "_low_stock_amount"
STATUS = "_stock_status"
SKU = "_sku"
TRASH_MARK = "_wp_trash_meta_status"

REGISTERS = (MANAGE, BACKORDERS, LOW_STOCK)
#: Meta keys the capture triggers watch. Order matters only for readability.
WATCHED_KEYS = (STOCK, MANAGE, BACKORDERS, LOW_STOCK, STATUS, SKU, TRASH_MARK)
#: History/notes: a change absorbed into a Polylang for WooCommerce fan-out (see _collapse_fan_out).
FAN_OUT_NOTE = "translation fan-out (shared stock)"
#: A register change older than one its group already took (last captured wins across batches).
SUPERSEDED_NOTE = "superseded"
#: Keys whose change can move a product into, out of, or between link groups.
MEMBERSHIP_KEYS = (SKU, TRASH_MARK)

Key = tuple[int, int]  # (blog_id, post_id)


def member_of(groups: Mapping[Key, Sequence[Member]], key: Key) -> Member | None:
    """The product's own entry in its link group (``groups``: product -> every member of its
    group, itself included); None when it is not a member."""
    return next((m for m in groups.get(key, ()) if m.key == key), None)


@dataclass(frozen=True)
class Change:
    """One row of {base}syncd_change."""

    id: int
    blog_id: int
    post_id: int
    meta_key: str
    op: str  # 'I', 'U', 'D'
    old_value: str | None
    new_value: str | None
    captured_at: datetime | None = None
    conn_id: int = 0  # CONNECTION_ID() of the writer (0: unknown)

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass(frozen=True)
class Member:
    """A product that belongs to a link group."""

    blog_id: int
    post_id: int
    sku: str = ""
    state: str = "linked"  # linked | ambiguous | skipped | excluded
    lang: str = ""
    group_id: int | None = None
    kind: str = "sku"  # sku (matched by SKU + language) | manual (syncd link)

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass(frozen=True)
class Facts:
    """What the apply step read, under lock, about one product before planning."""

    exists: bool = True
    post_status: str = "publish"
    manage_stock: str | None = "yes"
    stock: str | None = None
    has_stock_row: bool = True
    backorders: str | None = None
    low_stock_amount: str | None = None  # None: no row
    #: Watched keys this product holds more than one row of (a WooCommerce save raced by another
    #: writer): unsafe - each sale would decrement both rows and be captured twice.
    duplicate_keys: tuple[str, ...] = ()

    @property
    def manages(self) -> bool:
        return manages_stock(self.manage_stock)

    @property
    def alive(self) -> bool:
        return self.exists and self.post_status not in ("trash", "auto-draft")


#: The one quantity parser and its error (:func:`syncd.woo.parse_stock` has the contract):
#: re-exported here because planning is where most callers meet them.
StockValueError = UnparseableStock
parse_quantity = parse_stock


@dataclass
class StockOp:
    """What one member's ``_stock`` receives: an optional absolute set, then a relative delta."""

    set_value: Decimal | None = None
    is_set: bool = False  # True: write set_value (None = SQL NULL) before adding delta
    delta: Decimal = Decimal(0)

    @property
    def is_noop(self) -> bool:
        return not self.is_set and self.delta == 0


@dataclass
class MemberWrite:
    blog_id: int
    post_id: int
    sku: str
    stock: StockOp | None = None
    registers: dict[str, str | None] = field(default_factory=dict)  # None = delete the row
    status_register: str | None = None  # only applied if the member does not manage stock
    change_ids: list[int] = field(default_factory=list)
    new_sku: str | None = None  # a propagated SKU rename: write _sku (and the lookup row's sku)
    joined_from: Key | None = None  # a member joining its group: values taken from this member
    history_note: str | None = None  # why, on its stock history rows (a heal)

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass(frozen=True)
class Note:
    change_id: int
    blog_id: int
    post_id: int
    sku: str
    reason: str
    level: str = "info"  # info: expected (creation, no group); warning: unsafe input skipped


@dataclass
class Plan:
    writes: list[MemberWrite]
    refresh: dict[int, set[int]]  # blog_id -> post ids whose derived data must be recomputed
    notes: list[Note]
    applied: list[Change]  # changes that produced at least one write or a repair
    origin_sku: dict[int, str]  # change id -> sku of its group (for history/logging)
    # SKU renames the group takes: carried to its other members now, or when their blog is back
    renamed: list[Change] = field(default_factory=list)
    #: Products still settling (joining their group once WooCommerce has finished writing them):
    #: the sum of their own ``_stock`` deltas in this batch, carried into the join.
    settle_deltas: dict[Key, Decimal] = field(default_factory=dict)
    #: Polylang for WooCommerce copies of a stock change: met in this batch (absorbed), and still
    #: expected after it (syncd.fanout records them).
    copies_met: list[CopyExpected] = field(default_factory=list)
    copies_expected: list[CopyExpected] = field(default_factory=list)
    #: Linked members on blogs that are not live now (not written): what each missed.
    missed: dict[Key, Missed] = field(default_factory=dict)
    #: Products an absolute stock set of this batch reached, their origin included: sales a
    #: queued heal of theirs would add came before it (syncd.settle.copy_instead).
    set_reached: set[Key] = field(default_factory=set)


@dataclass
class Missed:
    """What a linked member on a blog that is not live (archived, deleted, spam, unusable,
    unreadable) missed in one batch. Sales are deltas: it receives their sum (``delta``) when its
    blog is back, as the live members received them, so that sales it missed and sales the others
    missed in turn all count. Anything else it missed (an absolute set, a setting, a carried SKU
    rename) makes it take its group's values instead (``copy``)."""

    member: Member
    change_ids: list[int] = field(default_factory=list)
    delta: Decimal = Decimal(0)
    copy: bool = False

    def add(self, change_id: int, delta: Decimal | None) -> None:
        """One change it missed: a sale (``delta``), or anything else (None)."""
        if change_id not in self.change_ids:
            self.change_ids.append(change_id)
        if delta is None:
            self.copy = True
        else:
            self.delta += delta


def duplicates_reason(keys: Sequence[str]) -> str:
    return (
        f"has duplicate {', '.join(keys)} rows: unsafe (each write would count twice); "
        "not synced until the duplicates are removed (syncd check lists them)"
    )


def plan_batch(
    changes: Sequence[Change],
    groups: Mapping[Key, Sequence[Member]],
    facts: Mapping[Key, Facts],
    live_blogs: Iterable[int],
    *,
    translations: Mapping[Key, Sequence[Key]] | None = None,
    propagate_renames: bool = False,
    sku_conflicts: Mapping[tuple[int, Key], int] | None = None,
    settling: Collection[Key] = (),
    expected_copies: Sequence[CopyExpected] = (),
    superseded: Mapping[int, int] | None = None,
    late_sets: Mapping[int, Decimal] | None = None,
) -> Plan:
    """Compute the writes of one batch.

    ``groups`` maps a product to every member of its link group (itself included; only members
    in state 'linked' are written). ``facts`` holds what was read under lock for origins and
    members. ``live_blogs`` are the blogs that may be written.

    ``translations`` maps each product on a blog whose translations share stock
    (``[blogs.N] translations_share_stock``) to every post of its Polylang translation group on
    that blog, itself included. There, a translation group is one stock:

    * a change reaches every product connected to its origin through link groups and such shared
      translations, each exactly once (the *component*; syncd never writes the origin's own
      translations: the shop wrote them, or will);
    * the add-on's own fan-out - one statement hitting every translation's ``_stock``, captured as
      rows with the same ``conn_id``, the same ``captured_at`` (the statement's start time) and the
      same delta on posts of one translation group - is one sale, not one per translation; so is
      its per-translation copy (same connection, same old and new value), also when the copy is
      captured after the batch that applied the original (``expected_copies``, recorded by that
      batch: ``Plan.copies_expected``; the ones this batch meets are ``Plan.copies_met``).

    ``propagate_renames``: a ``_sku`` change (old and new non-empty) on a linked SKU-matched member
    is written to every other linked member of its group, except where ``sku_conflicts`` holds
    (change id, member) -> the post that already has the new SKU on that blog (refused, warned).

    ``settling`` are products that are joining their group but may still be written by the
    WooCommerce save that created (or re-linked) them (see :mod:`syncd.settle`): syncd writes
    nothing into them, their own changes are not propagated, and their own ``_stock`` deltas
    are summed in ``Plan.settle_deltas`` so that the join (:func:`plan_join`) counts them once.

    A ``_stock`` (or register) row *inserted* into a product that is not settling is an absolute
    set (an importer's ``delete_post_meta`` + ``add_post_meta``); a deleted one is not propagated.
    A product holding duplicate watched rows is unsafe: neither origin nor target.

    ``superseded`` maps a register change to a newer change of its group (captured later) that an
    earlier batch already applied (``{base}syncd_register``): it is not propagated, so that the
    last captured value wins across batches too (a held blog's change, a retried dead letter).
    A superseded ``_stock`` insert (an importer's absolute set) with an entry in ``late_sets`` (the
    sum of the group's stock deltas captured after it and already applied) sets its value plus
    that sum, so those sales are kept; without one it is superseded like a register.
    """
    live = set(live_blogs)
    translations = translations or {}
    sku_conflicts = sku_conflicts or {}
    superseded = superseded or {}
    late_sets = late_sets or {}
    joins = set(settling)
    settle_deltas: dict[Key, Decimal] = {}
    ordered = sorted(changes, key=lambda c: c.id)
    writes: dict[Key, MemberWrite] = {}
    refresh: dict[int, set[int]] = {}
    notes: list[Note] = []
    applied: dict[int, Change] = {}
    origin_sku: dict[int, str] = {}
    renamed: list[Change] = []
    missed: dict[Key, Missed] = {}
    set_reached: set[Key] = set()

    def miss(m: Member, c: Change, delta: Decimal | None) -> None:
        """``m``, on a blog that is not live, is not written: what it missed is kept (Plan.missed)."""
        if m.key not in joins:  # a joining member takes its group's values when it joins
            missed.setdefault(m.key, Missed(m)).add(c.id, delta)

    def note(c: Change, sku: str, reason: str, level: str = "info") -> None:
        notes.append(Note(c.id, c.blog_id, c.post_id, sku, reason, level))

    def repair(c: Change) -> None:
        refresh.setdefault(c.blog_id, set()).add(c.post_id)
        applied[c.id] = c

    def self_of(key: Key) -> Member | None:
        return member_of(groups, key)

    # Pass 1: what each change means, independent of targets.
    stock_events: list[tuple[Change, Decimal | None, bool]] = []  # (change, value, is_set)
    register_events: list[tuple[Change, str, str | None]] = []
    status_events: list[Change] = []
    rename_events: list[Change] = []
    for c in ordered:
        self_member = self_of(c.key)
        sku = self_member.sku if self_member else ""
        origin_sku[c.id] = sku
        origin_facts = facts.get(c.key, Facts(exists=False))
        if c.meta_key in MEMBERSHIP_KEYS:
            note(c, sku, "membership")
            applied[c.id] = c
            if c.id in superseded:  # a rename older than one its group already took
                note(
                    c,
                    sku,
                    f"{SUPERSEDED_NOTE}: change {superseded[c.id]} of its group, captured later, was applied first",
                    "warning",
                )
            elif (
                propagate_renames
                and c.meta_key == SKU
                and c.op == "U"
                and (c.old_value or "").strip()
                and (c.new_value or "").strip()
                and self_member is not None
                and self_member.state == "linked"
                and self_member.kind == "sku"
                and c.key not in joins
                and origin_facts.alive
            ):
                rename_events.append(c)
            continue
        if self_member is not None and self_member.state == "excluded":
            # [sync] exclude_skus: not propagated, not repaired, no history - left to the shop.
            note(c, sku, "origin is excluded (sync.exclude_skus)")
            continue
        if c.key in joins:
            _settle_delta(c, settle_deltas)
            note(c, sku, "origin is settling: it joins its group once WooCommerce has finished writing it")
            continue
        if origin_facts.duplicate_keys:
            note(c, sku, "origin " + duplicates_reason(origin_facts.duplicate_keys), "warning")
            continue
        if c.blog_id in live and origin_facts.alive:
            repair(c)  # the origin's own derived data is recomputed (DESIGN step 5)
        if not origin_facts.alive:
            note(c, sku, "origin product is deleted or trashed")
            continue
        shared = c.key in translations
        if not shared and (self_member is None or self_member.state != "linked"):
            state = self_member.state if self_member else "unlinked"
            level = "warning" if state == "ambiguous" else "info"
            note(c, sku, f"origin is {state}", level)
            continue
        if c.id in superseded:
            late = _late_set_value(c, late_sets.get(c.id))
            if late is None:
                note(
                    c,
                    sku,
                    f"{SUPERSEDED_NOTE}: change {superseded[c.id]} of its group, captured later, was applied first",
                    "warning",
                )
                continue
            # An importer's absolute set that arrives after later sales were applied: its value
            # plus those sales, which the set alone would overwrite.
            note(
                c,
                sku,
                f"late absolute set (change {superseded[c.id]} applied first): plus the sales after it",
            )
            stock_events.append((c, late, True))
            continue
        if c.meta_key == STOCK:
            if c.op == "D":
                note(
                    c,
                    sku,
                    "stock row deleted (product deleted, or re-added next by an importer); not propagated",
                )
                continue
            try:
                old = parse_quantity(c.old_value)
                new = parse_quantity(c.new_value)
            except StockValueError as exc:
                note(c, sku, f"origin _stock {exc}; not propagated", "warning")
                continue
            if old is not None and new is not None:
                if new != old:
                    stock_events.append((c, new - old, False))
            elif new is None and origin_facts.manages:
                # WooCommerce nulls _stock only together with _manage_stock='no' (fixture 09E). A
                # NULL on a product that still manages stock is broken data, not a switch-off:
                # copying it would wipe every member's stock.
                note(
                    c,
                    sku,
                    "origin _stock became SQL NULL while it still manages stock; not propagated",
                    "warning",
                )
                continue
            else:
                stock_events.append((c, new, True))
        elif c.meta_key in REGISTERS:
            if c.op == "D" and c.meta_key != LOW_STOCK:
                note(
                    c,
                    sku,
                    "register row deleted (product deleted, or re-added next by an importer); not propagated",
                )
                continue
            register_events.append((c, c.meta_key, c.new_value if c.op != "D" else None))
        elif c.meta_key == STATUS:
            if c.op == "U" and not origin_facts.manages:
                status_events.append(c)

    corrections: list[tuple[Change, Decimal]] = []
    stock_events, copies_met, copies_expected = _collapse_fan_out(
        stock_events, translations, note, origin_sku, applied, expected_copies, corrections
    )

    # Pass 2: fold the events onto each target, in capture order.
    def origin_set(c: Change) -> set[Key]:
        return set(translations.get(c.key, (c.key,)))

    def component(c: Change, missed_as: Decimal | None) -> tuple[list[Member], list[Key]]:
        """Every product connected to the origin by linked groups and shared translations, once,
        and the products of it on blogs that are not live: those are not written, each keeps
        what it missed (Plan.missed: ``missed_as``, a sale, or None, anything else), and the
        component goes on through them, as it would if their blog were live (``translations``
        holds such blogs' translation groups too)."""
        own = origin_set(c)
        seen = set(own)
        queue = sorted(own)
        out: list[Member] = []
        away: list[Key] = []
        while queue:
            key = queue.pop(0)
            me = self_of(key)
            reached: list[Member] = []
            if me is not None and me.state == "linked":
                reached += [m for m in groups.get(key, ()) if m.key not in seen and m.state == "linked"]
            sku = me.sku if me is not None else origin_sku.get(c.id, "")
            for t in translations.get(key, ()):
                if t in seen:
                    continue
                tm = self_of(t) or Member(t[0], t[1], sku)
                if tm.state == "excluded":
                    continue  # sync.exclude_skus: left to the shop, even as a shared translation
                if tm.state != "linked":
                    # Ambiguous or without a SKU: not linked by key, but it is the same stock.
                    tm = Member(t[0], t[1], tm.sku or sku)
                reached.append(tm)
            for m in reached:
                if m.key in seen:
                    continue
                seen.add(m.key)
                queue.append(m.key)
                if m.blog_id in live:
                    out.append(m)
                else:
                    away.append(m.key)
                    miss(m, c, missed_as)
        return out, away

    def target(member: Member, c: Change) -> MemberWrite | None:
        if member.key in joins:
            return None  # takes the group's values after this batch instead
        w = writes.get(member.key)
        if w is None:
            w = writes[member.key] = MemberWrite(member.blog_id, member.post_id, member.sku)
        if c.id not in w.change_ids:
            w.change_ids.append(c.id)
        applied[c.id] = c
        return w

    events: list[tuple[int, str, object]] = (
        [(c.id, "stock", (c, v, s)) for c, v, s in stock_events]
        + [(c.id, "register", (c, k, v)) for c, k, v in register_events]
        + [(c.id, "status", c) for c in status_events]
    )
    events.sort(key=lambda e: e[0])
    for _, kind, payload in events:
        if kind == "stock":
            c, value, is_set = payload  # type: ignore[misc]
            for key in origin_set(c):
                own = writes.get(key)
                if is_set and own is not None and own.stock is not None:
                    own.stock = None  # its own absolute set overrides earlier sibling deltas
                elif own is not None and own.stock is not None and own.stock.is_set:
                    # A sibling's absolute set, then its own sale: the set overwrites the row that
                    # already holds the sale, so the sale goes on top of the set value.
                    own.stock.delta += value  # type: ignore[operator]
            reached, away = component(c, None if is_set else value)  # type: ignore[arg-type]
            if is_set:
                set_reached.update(origin_set(c), (m.key for m in reached), away)
            for m in reached:
                w = target(m, c)
                if w is None:
                    continue
                op = w.stock or StockOp()
                if is_set:
                    op = StockOp(set_value=value, is_set=True)
                else:
                    op.delta += value  # type: ignore[operator]
                w.stock = op
        elif kind == "register":
            c, meta_key, value = payload  # type: ignore[misc]
            for key in origin_set(c):
                own = writes.get(key)
                if own is not None:
                    own.registers.pop(meta_key, None)  # its own later change wins
            for m in component(c, None)[0]:
                w = target(m, c)
                if w is not None:
                    w.registers[meta_key] = value
        else:
            c = payload  # type: ignore[assignment]
            for key in origin_set(c):
                own = writes.get(key)
                if own is not None:
                    own.status_register = None
            for m in component(c, None)[0]:
                w = target(m, c)
                if w is not None:
                    w.status_register = c.new_value

    for c, fix in corrections:  # a translation copy that overwrote a sale syncd wrote into it
        w = target(self_of(c.key) or Member(c.blog_id, c.post_id, origin_sku.get(c.id, "")), c)
        if w is not None:
            w.stock = w.stock or StockOp()
            w.stock.delta += fix

    own_rename = {c.key: c.id for c in rename_events}  # each member's last rename in this batch
    for c in rename_events:
        new_sku = (c.new_value or "").strip()
        carried = False
        for m in groups.get(c.key, ()):
            if m.key == c.key or m.state != "linked" or m.key in joins:
                continue
            if own_rename.get(m.key, -1) > c.id:
                continue  # its own later rename wins (last captured change, as for registers)
            if m.blog_id not in live:
                # Its blog is archived or unusable now: the group still takes the rename, and the
                # member takes it when its blog is back (Plan.missed: MemberWriter.skip_unreachable queues its heal).
                carried = True
                miss(m, c, None)
                continue
            clash = sku_conflicts.get((c.id, m.key))
            if clash is not None:
                notes.append(
                    Note(
                        c.id,
                        m.blog_id,
                        m.post_id,
                        m.sku,
                        f"SKU rename to {new_sku[:60]!r} refused on blog {m.blog_id}: post {clash} already has that SKU",
                        "warning",
                    )
                )
                continue
            w = target(m, c)
            if w is not None:
                w.new_sku = new_sku
                carried = True
        if carried:
            renamed.append(c)

    # Pass 3: drop what cannot or need not be written; every written member gets a derived refresh.
    final: list[MemberWrite] = []
    for key in sorted(writes):
        w = writes[key]
        f = facts.get(key, Facts(exists=False))
        if not f.alive or f.duplicate_keys:
            why = duplicates_reason(f.duplicate_keys) if f.duplicate_keys else "member is deleted or trashed"
            for cid in w.change_ids:
                notes.append(Note(cid, w.blog_id, w.post_id, w.sku, why, "warning"))
            continue
        manages_after = manages_stock(w.registers.get(MANAGE, f.manage_stock))
        if w.stock is not None and not manages_after and not w.stock.is_set:
            for cid in w.change_ids:
                notes.append(Note(cid, w.blog_id, w.post_id, w.sku, "member does not manage stock"))
            w.stock = None
        if w.status_register is not None and manages_after:
            w.status_register = None
        if w.stock is None and not w.registers and w.status_register is None and w.new_sku is None:
            continue
        final.append(w)
        if (
            w.stock is not None
            and w.stock.is_noop
            and not w.registers
            and w.status_register is None
            and w.new_sku is None
        ):
            # Sibling deltas cancelled out (-1 from one blog, +1 from another): nothing to write,
            # but each change still reached this member, and history records that.
            continue
        refresh.setdefault(w.blog_id, set()).add(w.post_id)
    return Plan(
        writes=final,
        refresh=refresh,
        notes=notes,
        applied=[applied[i] for i in sorted(applied)],
        origin_sku=origin_sku,
        renamed=renamed,
        settle_deltas=settle_deltas,
        copies_met=copies_met,
        copies_expected=copies_expected,
        missed={k: missed[k] for k in sorted(missed)},
        set_reached=set_reached,
    )


def _settle_delta(c: Change, out: dict[Key, Decimal]) -> None:
    """A settling product's own sale (a ``_stock`` update between numbers) is kept for its join."""
    if c.meta_key != STOCK or c.op != "U":
        return
    try:
        old, new = parse_quantity(c.old_value), parse_quantity(c.new_value)
    except StockValueError:
        return
    if old is not None and new is not None and new != old:
        out[c.key] = out.get(c.key, Decimal(0)) + (new - old)


@dataclass
class JoinPlan:
    """What a settled product's join writes: its own values, and its own sales to the others."""

    joiner: MemberWrite | None  # None: it already holds the group's values
    others: list[MemberWrite]
    notes: list[Note]
    #: Members on blogs not live now: the joiner's own sales, which the others receive, later.
    missed: dict[Key, Missed] = field(default_factory=dict)


def plan_join(
    joiner: Member,
    authority: Member | None,
    facts: Mapping[Key, Facts],
    others: Sequence[Member],
    own_delta: Decimal = Decimal(0),
    change_id: int = 0,
    carry_sku: bool = False,
    authority_missed: Decimal = Decimal(0),
    away: Sequence[Member] = (),
) -> JoinPlan:
    """A product that has settled joins its group (pure).

    It takes the registers and the quantity of ``authority`` (the group's linked member with the
    lowest blog id that is not settling itself; None: it is the first of its group and keeps its
    own values), plus the sum of its own sales since it was created (``own_delta``), which the
    other linked members (``others``) receive too: a sale on a product that has not joined yet is
    neither lost nor counted twice.

    ``carry_sku`` (a heal, with SKU renames propagated): a SKU-matched member whose SKU differs
    from the authority's missed a rename carried while it could not be written (its blog was
    archived): it takes the authority's SKU too (``MemberWrite.new_sku``).

    ``authority_missed``: the sales the authority itself missed while its blog was not live, not
    received yet (its heal adds them): the group's quantity is its quantity plus those.
    ``away``: linked members on blogs not live now; they receive the joiner's own sales when back
    (``JoinPlan.missed``), as the others do now.
    """
    key = joiner.key
    jf = facts.get(key, Facts(exists=False))
    notes: list[Note] = []
    if not jf.alive:
        return JoinPlan(
            None, [], [Note(change_id, key[0], key[1], joiner.sku, "join: product is deleted or trashed")]
        )
    if jf.duplicate_keys:
        reason = "join refused: " + duplicates_reason(jf.duplicate_keys)
        return JoinPlan(None, [], [Note(change_id, key[0], key[1], joiner.sku, reason, "warning")])
    if authority is None:
        note = "joined its group as its first member: keeps its own stock and settings"
        return JoinPlan(None, [], [Note(change_id, key[0], key[1], joiner.sku, note)])
    af = facts.get(authority.key, Facts(exists=False))
    w = MemberWrite(key[0], key[1], joiner.sku, change_ids=[change_id], joined_from=authority.key)
    a_registers = {MANAGE: af.manage_stock, BACKORDERS: af.backorders, LOW_STOCK: af.low_stock_amount}
    j_registers = {MANAGE: jf.manage_stock, BACKORDERS: jf.backorders, LOW_STOCK: jf.low_stock_amount}
    for k in REGISTERS:
        if a_registers[k] != j_registers[k] and (a_registers[k] is not None or k == LOW_STOCK):
            w.registers[k] = a_registers[k]
    others_writes: list[MemberWrite] = []
    if manages_stock(a_registers[MANAGE]):
        try:
            a_stock = parse_quantity(af.stock)
            mine = parse_quantity(jf.stock) if jf.stock is not None else None
        except StockValueError as exc:
            notes.append(Note(change_id, key[0], key[1], joiner.sku, f"join: _stock {exc}", "warning"))
            a_stock, mine = None, None
        if a_stock is not None:
            a_stock += authority_missed
        if a_stock is not None and a_stock + own_delta != mine:
            w.stock = StockOp(set_value=a_stock + own_delta, is_set=True)
        if a_stock is not None and own_delta:
            for m in others:
                if facts.get(m.key, Facts(exists=False)).alive and not facts[m.key].duplicate_keys:
                    others_writes.append(
                        MemberWrite(
                            m.blog_id, m.post_id, m.sku, StockOp(delta=own_delta), change_ids=[change_id]
                        )
                    )
    notes.append(
        Note(
            change_id,
            key[0],
            key[1],
            joiner.sku,
            f"joined its group: takes stock and settings of blog {authority.blog_id} post {authority.post_id}",
        )
    )
    if carry_sku and joiner.kind == "sku" and authority.kind == "sku" and authority.sku.strip():
        if authority.sku.strip().casefold() != joiner.sku.strip().casefold():  # not a mere case variant
            w.new_sku = authority.sku
    joined = w if (w.stock is not None or w.registers or w.new_sku is not None) else None
    missed: dict[Key, Missed] = {}
    if others_writes:
        for m in away:
            missed.setdefault(m.key, Missed(m)).add(change_id, own_delta)
    return JoinPlan(joined, others_writes, notes, missed)


def plan_missed_sales(member: Member, facts: Mapping[Key, Facts], delta: Decimal) -> JoinPlan | None:
    """A member that missed only sales while its blog was not live (a heal that adds deltas,
    :class:`Missed`) receives their sum as one relative delta, as the live members received each
    (pure). None: it cannot take a delta (its ``_stock`` is missing or not a number): it takes its
    group's values instead (:func:`plan_join`)."""
    key = member.key
    f = facts.get(key, Facts(exists=False))
    if not f.alive:
        return JoinPlan(
            None, [], [Note(0, key[0], key[1], member.sku, "heal: product is deleted or trashed")]
        )
    if f.duplicate_keys:
        reason = "heal refused: " + duplicates_reason(f.duplicate_keys)
        return JoinPlan(None, [], [Note(0, key[0], key[1], member.sku, reason, "warning")])
    if not manages_stock(f.manage_stock):  # a live member that does not manage stock takes no sale either
        note = "heal: does not manage stock; the sales it missed are not added"
        return JoinPlan(None, [], [Note(0, key[0], key[1], member.sku, note)])
    try:
        if parse_quantity(f.stock) is None:
            return None
    except StockValueError:
        return None
    why = f"healed: the sales it missed while its blog was not live ({format_quantity(delta)})"
    if delta == 0:
        return JoinPlan(None, [], [Note(0, key[0], key[1], member.sku, why)])
    w = MemberWrite(key[0], key[1], member.sku, StockOp(delta=delta), change_ids=[0], history_note=why)
    return JoinPlan(w, [], [Note(0, key[0], key[1], member.sku, why)])


@dataclass(frozen=True)
class CopyExpected:
    """A translation that Polylang for WooCommerce will copy an applied stock change to, in a
    statement of its own on the same connection, possibly after the batch that applied it
    (``{base}syncd_fanout``): when that copy is captured, it is the same sale, not another."""

    blog_id: int
    post_id: int
    conn_id: int
    old_value: str | None
    new_value: str | None
    change_id: int  # the change it copies

    def matches(self, c: Change) -> bool:
        """The add-on writes the same absolute value: same connection, same new value."""
        return (c.blog_id, c.post_id, c.conn_id) == (self.blog_id, self.post_id, self.conn_id) and _number(
            c.new_value
        ) == _number(self.new_value)


def _number(text: str | None) -> object:
    try:
        return parse_quantity(text)
    except StockValueError:
        return text


def _copy_correction(copied_old: str | None, copy: Change) -> Decimal | None:
    """A copy overwrites what the translation held: if syncd wrote a sibling's sale into it
    between the original and the copy (copy.old differs), that sale is put back (the difference)."""
    old, mine = _number(copied_old), _number(copy.old_value)
    if isinstance(old, Decimal) and isinstance(mine, Decimal) and old != mine:
        return mine - old
    return None


def _collapse_fan_out(
    events: list[tuple[Change, Decimal | None, bool]],
    translations: Mapping[Key, Sequence[Key]],
    note: Callable[[Change, str, str], None],
    origin_sku: Mapping[int, str],
    applied: dict[int, Change],
    expected: Sequence[CopyExpected] = (),
    corrections: list[tuple[Change, Decimal]] | None = None,
) -> tuple[list[tuple[Change, Decimal | None, bool]], list[CopyExpected], list[CopyExpected]]:
    """Polylang for WooCommerce writes one sale to every translation's ``_stock`` (one statement,
    ``post_id IN (...)``; or one copy per translation after an absolute set): keep the first
    change of each such fan-out, absorb the others (counted once; history keeps them as origins).

    Two changes belong to one fan-out when they are on different posts of one translation group
    of a sharing blog, come from the same connection, and either share the statement's capture
    time and the delta (or set value), or write the same new value (the copy: an absolute write
    of the original's new value). A copy captured after the batch that applied its original
    matches one of ``expected`` (recorded by that batch). A copy whose old value is not the
    original's overwrote a sibling's sale syncd had written into that translation meanwhile: the
    difference is appended to ``corrections`` (written back into that translation only). Returns the events kept, the expectations this batch met (to delete) and the
    copies it still expects (to record: every translation of a kept event that did not copy it yet).
    """
    out: list[tuple[Change, Decimal | None, bool]] = []
    met: list[CopyExpected] = []
    open_fanouts: dict[tuple[object, ...], tuple[Change, set[int]]] = {}
    for event in events:
        c, value, is_set = event
        tr = translations.get(c.key)
        if tr is None or c.conn_id == 0:
            out.append(event)
            continue
        earlier = next((e for e in expected if e not in met and e.matches(c)), None)
        if earlier is not None:
            met.append(earlier)
            applied[c.id] = c
            note(c, origin_sku.get(c.id, ""), f"{FAN_OUT_NOTE} of change {earlier.change_id}: counted once")
            _correct(corrections, c, earlier.old_value)
            continue
        group = tuple(sorted(tr))
        kind = ("set", value) if is_set else ("delta", value)
        keys = [
            ("stmt", c.blog_id, group, c.conn_id, c.captured_at, kind),
            ("copy", c.blog_id, group, c.conn_id, _number(c.new_value)),
        ]
        absorbed_by: Change | None = None
        for k in keys:
            found = open_fanouts.get(k)
            if found is not None and c.post_id not in found[1]:
                absorbed_by = found[0]
                found[1].add(c.post_id)
                break
        if absorbed_by is not None:
            applied[c.id] = c
            note(c, origin_sku.get(c.id, ""), f"{FAN_OUT_NOTE} of change {absorbed_by.id}: counted once")
            if k[0] == "copy":
                _correct(corrections, c, absorbed_by.old_value)
            continue
        posts = {c.post_id}  # one set for both keys: a translation seen by either is copied
        for k in keys:
            open_fanouts[k] = (c, posts)
        out.append(event)
    expect = [
        CopyExpected(c.blog_id, post, c.conn_id, c.old_value, c.new_value, c.id)
        for k, (c, posts) in open_fanouts.items()
        if k[0] == "copy"
        for _blog, post in translations[c.key]
        if post not in posts
    ]
    return out, met, expect


def _correct(corrections: list[tuple[Change, Decimal]] | None, copy: Change, copied_old: str | None) -> None:
    fix = _copy_correction(copied_old, copy)
    if corrections is not None and fix is not None:
        corrections.append((copy, fix))


def target_stock_value(current: str | None, op: StockOp) -> Decimal | None:
    """The quantity a member ends with (for checks and history); raises StockValueError."""
    if op.is_set:
        if op.set_value is None:
            return None if op.delta == 0 else op.delta
        return op.set_value + op.delta
    base = parse_quantity(current)
    if base is None:
        raise StockValueError("is SQL NULL while stock is managed")
    return base + op.delta


def format_quantity(value: Decimal) -> str:
    """Text for an absolute ``_stock`` write, as WooCommerce's CRUD save writes it ('42', '2.5')."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


# -- realtime field groups (issue 10) -----------------------------------------------------------


@dataclass
class FieldWrite:
    """One member's values of one realtime field group to take from other members: for each
    field, the member whose current value it takes (the origin of the field's last captured
    change in the batch). Values are read under the batch's locks when written."""

    blog_id: int
    post_id: int
    sku: str
    group: str
    sources: dict[str, Key] = field(default_factory=dict)  # field name -> origin
    change_ids: list[int] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass
class FieldPlan:
    writes: list[FieldWrite]
    applied: list[Change]  # field changes that reached at least one member
    notes: list[Note]
    origin_sku: dict[int, str]
    #: Members on blogs that are not live now, which a field change did not reach: each takes its
    #: group's values when its blog is back (a heal that copies).
    missed: dict[Key, Missed] = field(default_factory=dict)


def plan_fields(
    changes: Sequence[Change],
    groups: Mapping[Key, Sequence[Member]],
    facts: Mapping[Key, Facts],
    live_blogs: Iterable[int],
    fields: Mapping[str, tuple[str, str]],
    takes_part: Callable[[str, int], bool],
    *,
    settling: Collection[Key] = (),
    superseded: Mapping[int, int] | None = None,
) -> FieldPlan:
    """The writes of a batch's realtime field changes (``fields``: change key -> (group, field)).

    Each (member, field) is a register: the last captured change (highest id) of the field in
    the member's link group wins, and a member's own later change wins over an earlier sibling's.
    A value goes to the other linked members on blogs that take part in the group
    (``takes_part(group, blog)``, ``[fields.blogs]``), never to a settling product (it joins
    later), a deleted or trashed one, or the origin itself. Link groups are SKU + language, so
    text fields only reach members of the same language. A change of an origin that is not
    linked, settling, deleted or outside the group's blogs reaches nobody. A ``superseded`` one (an
    earlier batch applied a later change of its group: last captured wins across batches too)
    reaches nobody either, and its origin takes the group's value back from a linked member
    that took the later one (the lowest blog id), so that every member ends with the same value.
    """
    live, joins, superseded = set(live_blogs), set(settling), superseded or {}
    writes: dict[tuple[Key, str], FieldWrite] = {}
    notes: list[Note] = []
    applied: dict[int, Change] = {}
    origin_sku: dict[int, str] = {}
    missed: dict[Key, Missed] = {}
    for c in sorted((c for c in changes if c.meta_key in fields), key=lambda c: c.id):
        group, name = fields[c.meta_key]
        me = member_of(groups, c.key)
        sku = origin_sku[c.id] = me.sku if me is not None else ""
        why = _field_origin_problem(c, me, facts.get(c.key, Facts(exists=False)), group, takes_part, joins)
        if why is not None:
            notes.append(Note(c.id, c.blog_id, c.post_id, sku, why))
            continue
        receivers = _field_receivers(c.key, group, groups, facts, live, joins, takes_part)
        if c.id in superseded:
            why = f"{SUPERSEDED_NOTE}: change {superseded[c.id]} of its group, captured later, was applied first"
            notes.append(Note(c.id, c.blog_id, c.post_id, sku, why, "warning"))
            if receivers:  # the origin takes the group's (newer) value back
                w = writes.setdefault((c.key, group), FieldWrite(c.blog_id, c.post_id, sku, group))
                w.sources[name] = min(m.key for m in receivers)
                w.change_ids.append(c.id)
            continue
        own = writes.get((c.key, group))
        if own is not None:
            own.sources.pop(name, None)  # its own later change wins
        for m in receivers:
            w = writes.setdefault((m.key, group), FieldWrite(m.blog_id, m.post_id, m.sku, group))
            w.sources[name] = c.key
            w.change_ids.append(c.id)
            applied[c.id] = c
        for m in groups.get(c.key, ()):
            if (
                m.state == "linked"
                and m.blog_id not in live
                and m.key not in joins
                and takes_part(group, m.blog_id)
            ):
                missed.setdefault(m.key, Missed(m)).add(c.id, None)  # its blog is not live: later
    final = [w for _, w in sorted(writes.items()) if w.sources]
    return FieldPlan(
        final,
        [applied[i] for i in sorted(applied)],
        notes,
        origin_sku,
        {k: missed[k] for k in sorted(missed)},
    )


def _field_origin_problem(
    c: Change,
    me: Member | None,
    facts: Facts,
    group: str,
    takes_part: Callable[[str, int], bool],
    joins: Collection[Key],
) -> str | None:
    """Why a field change must not be carried to the origin's group (None: it is carried)."""
    if me is None or me.state != "linked":
        return f"origin is {me.state if me is not None else 'unlinked'}"
    if c.key in joins:
        return "origin is settling: it joins its group once WooCommerce has finished writing it"
    if not facts.alive:
        return "origin product is deleted or trashed"
    if not takes_part(group, c.blog_id):
        return f"blog {c.blog_id} does not take part in field group {group} ([fields.blogs])"
    return None


def _field_receivers(
    origin: Key,
    group: str,
    groups: Mapping[Key, Sequence[Member]],
    facts: Mapping[Key, Facts],
    live: Collection[int],
    joins: Collection[Key],
    takes_part: Callable[[str, int], bool],
) -> list[Member]:
    """The members a field change of ``origin`` is carried to."""
    return [
        m
        for m in groups.get(origin, ())
        if m.key != origin
        and m.state == "linked"
        and m.blog_id in live
        and m.key not in joins
        and takes_part(group, m.blog_id)
        and facts.get(m.key, Facts(exists=False)).alive
    ]


def _late_set_value(c: Change, later: Decimal | None) -> Decimal | None:
    """A late absolute ``_stock`` set's value plus the deltas applied after it (None: not a
    stock set, unknown sum, or a value that is not a quantity)."""
    if c.meta_key != STOCK or c.op != "I" or later is None:
        return None
    try:
        new = parse_quantity(c.new_value)
    except StockValueError:
        return None
    return None if new is None else new + later
