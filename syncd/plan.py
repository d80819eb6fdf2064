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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

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
#: Keys whose change can move a product into, out of, or between link groups.
MEMBERSHIP_KEYS = (SKU, TRASH_MARK)

Key = tuple[int, int]  # (blog_id, post_id)


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

    @property
    def manages(self) -> bool:
        return self.manage_stock == "yes"

    @property
    def alive(self) -> bool:
        return self.exists and self.post_status not in ("trash", "auto-draft")


class StockValueError(ValueError):
    """A stored quantity that is neither SQL NULL nor a number ('abc', '')."""


def parse_quantity(text: str | None) -> Decimal | None:
    """Numeric value of a ``_stock`` text; None for SQL NULL; StockValueError otherwise.

    WooCommerce writes '7', '42.000000' or '42' for the same kind of value, so quantities are
    compared as numbers, never as text. '' is not a quantity (MySQL arithmetic would turn it into
    0 with a warning, silently inventing stock), so it is refused like any other non-number.
    """
    if text is None:
        return None
    stripped = text.strip()
    try:
        value = Decimal(stripped)
    except (InvalidOperation, ValueError):
        raise StockValueError(f"not a number: {text[:40]!r}") from None
    if not value.is_finite() or not stripped:
        raise StockValueError(f"not a number: {text[:40]!r}")
    return value


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


def plan_batch(
    changes: Sequence[Change],
    groups: Mapping[Key, Sequence[Member]],
    facts: Mapping[Key, Facts],
    live_blogs: Iterable[int],
) -> Plan:
    """Compute the writes of one batch.

    ``groups`` maps an origin product to every member of its link group (itself included; only
    members in state 'linked' are written). ``facts`` holds what was read under lock for origins
    and members. ``live_blogs`` are the blogs that may be written.
    """
    live = set(live_blogs)
    ordered = sorted(changes, key=lambda c: c.id)
    writes: dict[Key, MemberWrite] = {}
    refresh: dict[int, set[int]] = {}
    notes: list[Note] = []
    applied: dict[int, Change] = {}
    origin_sku: dict[int, str] = {}

    def note(c: Change, sku: str, reason: str, level: str = "info") -> None:
        notes.append(Note(c.id, c.blog_id, c.post_id, sku, reason, level))

    def repair(c: Change) -> None:
        refresh.setdefault(c.blog_id, set()).add(c.post_id)
        applied[c.id] = c

    # Pass 1: what each change means, independent of targets.
    stock_events: list[tuple[Change, Decimal | None, bool]] = []  # (change, value, is_set)
    register_events: list[tuple[Change, str, str | None]] = []
    status_events: list[Change] = []
    for c in ordered:
        group = groups.get(c.key, ())
        self_member = next((m for m in group if m.key == c.key), None)
        sku = self_member.sku if self_member else ""
        origin_sku[c.id] = sku
        origin_facts = facts.get(c.key, Facts(exists=False))
        if c.meta_key in MEMBERSHIP_KEYS:
            note(c, sku, "membership")
            applied[c.id] = c
            continue
        if c.blog_id in live and origin_facts.alive:
            repair(c)  # the origin's own derived data is recomputed (DESIGN step 5)
        if not origin_facts.alive:
            note(c, sku, "origin product is deleted or trashed")
            continue
        if self_member is None or self_member.state != "linked":
            state = self_member.state if self_member else "unlinked"
            level = "warning" if state == "ambiguous" else "info"
            note(c, sku, f"origin is {state}", level)
            continue
        if c.meta_key == STOCK:
            if c.op != "U":
                note(c, sku, "stock row created or deleted with the product; not propagated")
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
            else:
                stock_events.append((c, new, True))
        elif c.meta_key in REGISTERS:
            if c.op == "D" and c.meta_key != LOW_STOCK:
                note(c, sku, "register row deleted with the product; not propagated")
                continue
            if c.op == "I" and c.meta_key != LOW_STOCK:
                note(c, sku, "register row created with the product; not propagated")
                continue
            register_events.append((c, c.meta_key, c.new_value if c.op != "D" else None))
        elif c.meta_key == STATUS:
            if c.op == "U" and not origin_facts.manages:
                status_events.append(c)

    # Pass 2: fold the events onto each target, in capture order.
    def target(member: Member, c: Change) -> MemberWrite | None:
        if member.key == c.key or member.state != "linked":
            return None
        if member.blog_id not in live:
            return None
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
            for m in groups.get(c.key, ()):
                if m.key == c.key:
                    own = writes.get(m.key)
                    if is_set and own is not None and own.stock is not None:
                        own.stock = None  # its own absolute set overrides earlier sibling deltas
                    continue
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
            for m in groups.get(c.key, ()):
                if m.key == c.key:
                    own = writes.get(m.key)
                    if own is not None:
                        own.registers.pop(meta_key, None)  # its own later change wins
                    continue
                w = target(m, c)
                if w is not None:
                    w.registers[meta_key] = value
        else:
            c = payload  # type: ignore[assignment]
            for m in groups.get(c.key, ()):
                if m.key == c.key:
                    own = writes.get(m.key)
                    if own is not None:
                        own.status_register = None
                    continue
                w = target(m, c)
                if w is not None:
                    w.status_register = c.new_value

    # Pass 3: drop what cannot or need not be written; every written member gets a derived refresh.
    final: list[MemberWrite] = []
    for key in sorted(writes):
        w = writes[key]
        f = facts.get(key, Facts(exists=False))
        if not f.alive:
            for cid in w.change_ids:
                notes.append(
                    Note(cid, w.blog_id, w.post_id, w.sku, "member is deleted or trashed", "warning")
                )
            continue
        manages_after = w.registers.get(MANAGE, f.manage_stock) == "yes"
        if w.stock is not None and not manages_after and not w.stock.is_set:
            for cid in w.change_ids:
                notes.append(Note(cid, w.blog_id, w.post_id, w.sku, "member does not manage stock"))
            w.stock = None
        if w.status_register is not None and manages_after:
            w.status_register = None
        if w.stock is None and not w.registers and w.status_register is None:
            continue
        final.append(w)
        if w.stock is not None and w.stock.is_noop and not w.registers and w.status_register is None:
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
    )


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
