"""Issue 9: a property-based storm (hypothesis) on the real server.

Random sequences of what shops do - relative sales, absolute admin sets, register changes, a
product created on one blog after another (joins), an importer's delete + re-add of ``_stock``,
Polylang for WooCommerce's fan-out sales and per-translation copies on blogs whose translations
share stock, SKU renames carried to the group, a blog archived and back (its changes held meanwhile,
then applied after newer ones of the other blogs) - interleaved with the daemon applying batches of random sizes and being killed at
random steps (the transaction dies with the process: nothing of it is committed). After
quiescence: every group equal; the quantity equals the model (start + every captured delta, the
importer's absolute value where it set one); each register holds its last captured value; no
duplicate meta row; nothing queued or settling; the audit finds no drift in these groups.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.testnet.factory import ProductFactory
from tests.integration.sync_helpers import ids, make_daemon, meta, pending, qty, settled_now
from tests.integration.test_audit_reconcile import audit
from tests.integration.test_settle import duplicates, settling

SKUS = ("MUG", "TSHIRT-RED")
BOOK = {(2, "en"): 18, (2, "fr"): 19, (3, "en"): 16, (3, "fr"): 17}
SHARED = {"2": {"translations_share_stock": True}, "3": {"translations_share_stock": True}}
KILL_STEPS = ("lock", "locked", "settle_lock")
# The suite (and CI) runs the same examples every time: a storm that finds a new path in one run
# of ten would make every submission a lottery. A hunt (SYNCD_STORM_EXAMPLES=N) draws new ones;
# what it finds becomes a FOUND case below.
HUNT = os.environ.get("SYNCD_STORM_EXAMPLES")


class SimulatedCrash(BaseException):
    """The daemon dies inside a step: its open transaction is never committed."""


blog = st.integers(1, 3)
OPS = (
    st.tuples(st.just("sale"), st.sampled_from(SKUS), blog, st.integers(1, 3)),
    st.tuples(st.just("set"), st.sampled_from(SKUS), blog, st.integers(0, 20)),
    st.tuples(st.just("backorders"), st.sampled_from(SKUS), blog, st.sampled_from(["no", "notify", "yes"])),
    st.tuples(st.just("readd"), st.sampled_from(SKUS), blog, st.integers(0, 20)),
    st.tuples(st.just("book_sale"), st.integers(2, 3), st.integers(1, 2)),
    st.tuples(st.just("book_set"), st.integers(2, 3), st.integers(0, 20)),
    st.tuples(st.just("create"), blog, st.integers(0, 30)),
    st.tuples(st.just("new_sale"), blog, st.integers(1, 2)),
    st.tuples(st.just("rename"), st.sampled_from(SKUS), blog),
    st.tuples(st.just("apply"), st.sampled_from([None, *KILL_STEPS]), st.integers(1, 3)),
    st.tuples(st.just("settle"), st.sampled_from([None, "settle_lock"])),
    st.tuples(st.just("archive"), st.integers(2, 3)),
)
ops = st.one_of(*OPS)


@dataclass
class Model:
    quantity: dict[str, Decimal]
    backorders: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)  # the SKU each group ends with (renames)
    new: dict[int, int] = field(default_factory=dict)  # NEW-A: blog -> post
    new_initial: dict[int, Decimal] = field(default_factory=dict)  # NEW-A: stock at creation
    new_sold: Decimal = Decimal(0)  # every NEW-A sale, before or after its product joined


class Shop:
    """The shop's side: writes as WooCommerce and its add-ons do, and the model of what must result."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.ids = {sku: ids(net, sku) for sku in SKUS}
        self.model = Model(
            quantity={**{s: qty(net, 1, self.ids[s][1]) for s in SKUS}, "BOOK": qty(net, 2, BOOK[(2, "en")])},
            backorders={s: meta(net, 1, self.ids[s][1], "_backorders") for s in SKUS},
            names={s: s for s in SKUS},
        )
        self.renames = 0
        self.archived: set[int] = set()

    def sql(self, statement: str, conn: Any = None) -> None:
        if conn is not None:
            conn.exec_driver_sql(statement)
            conn.commit()
            return
        with self.net.engine.connect() as c:
            c.exec_driver_sql(statement)
            c.commit()

    def archive(self, d: Any, b: int) -> None:
        """The network admin archives blog ``b`` (its own admin and imports still write), or brings
        it back; discovery then releases its held changes."""
        back = b in self.archived
        self.sql(f"UPDATE {self.net.prefix}blogs SET archived = {0 if back else 1} WHERE blog_id = {b}")
        self.archived ^= {b}
        if back:
            d.discover()

    def pm(self, b: int) -> str:
        return self.net.table(b, "postmeta")

    def sale(self, sku: str, b: int, n: int) -> None:
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = meta_value -{n} WHERE post_id = {self.ids[sku][b]} AND meta_key = '_stock'"
        )
        self.model.quantity[sku] -= n

    def set(self, sku: str, b: int, v: int) -> None:
        old = qty(self.net, b, self.ids[sku][b])
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = '{v}' WHERE post_id = {self.ids[sku][b]} AND meta_key = '_stock'"
        )
        self.model.quantity[sku] += v - old  # an admin's edit counts as its difference

    def backorders(self, sku: str, b: int, v: str) -> None:
        if meta(self.net, b, self.ids[sku][b], "_backorders") == v:
            return  # not a change: nothing is captured (the trigger compares values)
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = '{v}' WHERE post_id = {self.ids[sku][b]} AND meta_key = '_backorders'"
        )
        self.model.backorders[sku] = v

    def rename(self, sku: str, b: int) -> None:
        """An admin renames the SKU on one blog: carried to the group (sync.propagate_sku_renames)."""
        self.renames += 1
        new = f"{sku}-R{self.renames}"
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = '{new}' WHERE post_id = {self.ids[sku][b]} AND meta_key = '_sku'"
        )
        self.model.names[sku] = new

    def readd(self, sku: str, b: int, v: int) -> None:
        post = self.ids[sku][b]
        with self.net.engine.connect() as c:  # delete_post_meta + add_post_meta, one request
            self.sql(f"DELETE FROM {self.pm(b)} WHERE post_id = {post} AND meta_key = '_stock'", c)
            self.sql(
                f"INSERT INTO {self.pm(b)} (post_id, meta_key, meta_value) VALUES ({post}, '_stock', '{v}')",
                c,
            )
        self.model.quantity[sku] = Decimal(v)

    def book_sale(self, b: int, n: int) -> None:
        en, fr = BOOK[(b, "en")], BOOK[(b, "fr")]
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = meta_value -{n} WHERE post_id IN ({en}, {fr}) AND meta_key = '_stock'"
        )
        self.model.quantity["BOOK"] -= n

    def book_set(self, b: int, v: int) -> None:
        old = qty(self.net, b, BOOK[(b, "en")])
        with self.net.engine.connect() as c:  # the admin's edit, then the add-on's copy: one connection
            for lang in ("en", "fr"):
                self.sql(
                    f"UPDATE {self.pm(b)} SET meta_value = '{v}' WHERE post_id = {BOOK[(b, lang)]} AND meta_key = '_stock'",
                    c,
                )
        self.model.quantity["BOOK"] += v - old

    def create(self, b: int, stock: int) -> None:
        if b in self.model.new:
            return
        with self.net.engine.connect() as c, ProductFactory(c, self.net.blog_prefix(b)) as f:
            self.model.new[b] = f.simple("NEW-A", "New A", stock=stock)
        self.model.new_initial[b] = Decimal(stock)

    def new_sale(self, b: int, n: int) -> None:
        if b not in self.model.new:
            return
        self.sql(
            f"UPDATE {self.pm(b)} SET meta_value = meta_value -{n} WHERE post_id = {self.model.new[b]} AND meta_key = '_stock'"
        )
        self.model.new_sold += n


def run_storm(
    net: Any,
    steps: list[tuple[Any, ...]],
    batch_size: int,
    mode: str = "trigger",
    capture_step: Callable[[Any], Callable[[], object]] | None = None,
) -> None:
    """``capture_step(d)`` gives what captures a shop write before the next one (poll mode: a
    full poll; binlog capture: comparing what the log named, tests/integration/test_binlog_exact.py)."""
    shop = Shop(net)
    d = make_daemon(
        net, blogs=SHARED, sync={"settle_seconds": 3600, "batch_size": batch_size}, capture={"mode": mode}
    )
    observe = capture_step(d) if capture_step is not None else (d.poll if mode == "poll" else None)
    try:
        if d.polls_meta:
            d.poll()  # the first poll takes the snapshot
        d.apply_pending()
        for op in steps:
            name, args = op[0], op[1:]
            if name == "apply":
                crash_at(d, *args, observe=observe)
            elif name == "settle":
                settled_now(net)
                crash_at(d, args[0], 1, observe=observe)
            elif name == "archive":
                shop.archive(d, *args)
            else:
                getattr(shop, name)(*args)
                if observe is not None:
                    # The poller sees each write before the next (writes between two polls are one
                    # net difference, their order across rows unknown: README, Capture modes).
                    observe()
        d.step_hook = None
        for b in sorted(shop.archived):
            shop.archive(d, b)
        for _ in range(2):
            if observe is not None:
                observe()
            d.apply_pending()
            settled_now(net)
        d.apply_pending()
        check(net, shop)
    finally:
        d.close()


def crash_at(d: Any, step: str | None, nth: int, observe: Callable[[], object] | None = None) -> bool:
    """Apply everything (after ``observe``, the capture step, if any); with ``step``, the daemon
    dies the ``nth`` time it reaches it. True if it died."""
    seen = [0]

    def hook(name: str) -> None:
        if name == step:
            seen[0] += 1
            if seen[0] == nth:
                raise SimulatedCrash(name)

    d.step_hook = hook if step else None
    try:
        if observe is not None:
            observe()
        d.apply_pending()
    except SimulatedCrash:
        return True
    finally:
        d.step_hook = None
    return False


def check(net: Any, shop: Shop) -> None:
    m = shop.model
    assert pending(net) == 0 and settling(net) == {}
    for sku in SKUS:
        assert [qty(net, b, shop.ids[sku][b]) for b in (1, 2, 3)] == [m.quantity[sku]] * 3, sku
        assert [meta(net, b, shop.ids[sku][b], "_backorders") for b in (1, 2, 3)] == [
            m.backorders[sku]
        ] * 3, sku
        assert [meta(net, b, shop.ids[sku][b], "_sku") for b in (1, 2, 3)] == [m.names[sku]] * 3, sku
    assert [qty(net, k[0], p) for k, p in BOOK.items()] == [m.quantity["BOOK"]] * 4
    if m.new:
        # The first NEW-A product to settle keeps its creation stock, the others join it with their
        # own sales (which products settle first depends on when each was last written): every
        # member ends at one value, which is one creation stock minus every NEW-A sale, once.
        values = {qty(net, b, p) for b, p in m.new.items()}
        assert len(values) == 1, values
        assert values.pop() + m.new_sold in set(m.new_initial.values())
    assert duplicates(net, 1) == duplicates(net, 2) == duplicates(net, 3) == []
    report = audit(net, blogs=SHARED)
    drifted = {g["sku"] for g in report.drift} & {*m.names.values(), "BOOK", "NEW-A"}
    assert drifted == set(), report.drift


@settings(
    max_examples=int(os.environ.get("SYNCD_STORM_EXAMPLES", "12")),  # more for a long hunt
    derandomize=HUNT is None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(steps=st.lists(ops, min_size=5, max_size=30), batch_size=st.sampled_from([1, 2, 3, 500]))
def test_storm_of_shop_writes_with_the_daemon_killed_at_random_steps_converges(
    network_factory, steps, batch_size
):
    net = network_factory.recorded_network()
    try:
        run_storm(net, steps, batch_size)
    finally:
        network_factory.release(net)


# Poll mode sees no connection ids: Polylang for WooCommerce's fan-out and copies cannot be told
# from independent writes there (README, Capture modes), so the BOOK operations are left out.
poll_ops = st.one_of(*(OPS[i] for i in (0, 1, 2, 3, 6, 7, 8, 9, 10, 11)))  # no book_sale, book_set


@settings(
    max_examples=int(os.environ.get("SYNCD_STORM_EXAMPLES", "12")) // 2 or 1,
    derandomize=HUNT is None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(steps=st.lists(poll_ops, min_size=5, max_size=30), batch_size=st.sampled_from([1, 3, 500]))
def test_storm_in_poll_mode_converges_too(network_factory, steps, batch_size):
    net = network_factory.recorded_network()
    try:
        run_storm(net, steps, batch_size, mode="poll")
    finally:
        network_factory.release(net)


# Examples the storm found, kept as fixed regression cases (each failed before its fix).
FOUND = {
    # Poll mode: a join's own write (blog 3 takes 16) was polled back as a shop sale of +16.
    "poll_join_not_polled_back": (
        [("create", 1, 16), ("create", 3, 0), ("apply", None, 1), ("settle", None), ("settle", None)],
        1,
        "poll",
    ),
    # A rename on blog 1 while blogs 2 and 3 are archived: with no live member to write, the plan
    # took it as not carried, so no heal was queued and blogs 2 and 3 kept the old SKU once back.
    "poll_rename_while_two_blogs_archived": (
        [("archive", 2), ("create", 1, 0), ("rename", "MUG", 1), ("archive", 3), ("settle", None)],
        1,
        "poll",
    ),
    # A product created on blog 1 settles while the group's only other member (blog 3, created
    # earlier) is on an archived blog: it joined as a first member, blog 3 kept its own stock
    # once back, two values in one group. The join now waits for blog 3.
    "join_while_the_only_other_member_is_archived": (
        [
            ("create", 3, 12),
            ("apply", "settle_lock", 1),
            ("create", 1, 14),
            ("settle", None),
            ("archive", 3),
            ("settle", None),
        ],
        3,
        "trigger",
    ),
    # An admin's stock set on BOOK (en) then the add-on's copy into BOOK (fr) on blog 2, while blog
    # 3 (translations sharing stock) is archived, in two batches: only blog 3's en was queued to be
    # healed (the fr copy is a copy: it queues nothing), so blog 3's fr kept the old stock. A heal
    # on a sharing blog now heals the product's translations too.
    "shared_translation_copy_while_the_blog_is_archived": (
        [("readd", "MUG", 2, 17), ("archive", 3), ("book_set", 2, 17), ("apply", "locked", 2)],
        3,
        "trigger",
    ),
    # A rename on blog 3 held with blog 3 archived, blog 2 archived too: discovery dropped blog 3's
    # members while it was away and the rename was never carried.
    "rename_held_while_two_blogs_archived": (
        [("book_sale", 2, 1), ("archive", 2), ("book_sale", 2, 1), ("rename", "MUG", 3), ("archive", 3)],
        1,
        "trigger",
    ),
    # Sales and translation-group sales around blogs archived and back (members dropped meanwhile:
    # the products rejoined as new ones and their held sales were counted again or lost).
    "sales_around_archived_blogs": (
        [
            ("book_sale", 2, 1),
            ("archive", 2),
            ("sale", "MUG", 1, 1),
            ("book_sale", 2, 1),
            ("rename", "MUG", 3),
            ("archive", 3),
        ],
        1,
        "trigger",
    ),
    "shared_translations_around_archived_blogs": (
        [
            ("book_sale", 3, 1),
            ("archive", 2),
            ("sale", "MUG", 2, 1),
            ("book_sale", 3, 1),
            ("book_sale", 2, 1),
            ("archive", 3),
            ("archive", 3),
            ("apply", "locked", 2),
        ],
        500,
        "trigger",
    ),
    # Renames: blog 2's rename (held, archived) applied after newer renames on blog 1 won.
    "held_rename_older_than_applied_ones": (
        [
            ("sale", "MUG", 2, 1),
            ("book_sale", 3, 1),
            ("archive", 2),
            ("rename", "MUG", 2),
            ("rename", "MUG", 1),
            ("rename", "MUG", 1),
            ("apply", None, 1),
            ("archive", 3),
            ("settle", "settle_lock"),
            ("archive", 3),
            ("readd", "MUG", 2, 7),
            ("sale", "MUG", 3, 1),
        ],
        500,
        "trigger",
    ),
    # Held sales captured before an importer's absolute set (applied first) were subtracted from it.
    "held_sales_older_than_an_applied_import": (
        [
            ("sale", "MUG", 2, 1),
            ("archive", 2),
            ("sale", "MUG", 2, 3),
            ("readd", "MUG", 3, 11),
            ("apply", "locked", 3),
            ("sale", "TSHIRT-RED", 1, 3),
            ("settle", "settle_lock"),
            ("archive", 2),
            ("set", "MUG", 3, 8),
        ],
        2,
        "trigger",
    ),
    # Blog 3 sells BOOK while blog 2 is archived; later blog 2 sells while blog 3 is archived. Each
    # side's members missed the other's sale; a heal that copied another member's stock lost one.
    # Now a member that missed only sales receives them as deltas (syncd.plan.Missed).
    "sales_on_two_blogs_archived_in_turn": (
        [
            ("book_sale", 3, 1),
            ("archive", 2),
            ("apply", None, 1),
            ("archive", 3),
            ("archive", 3),
            ("archive", 2),
            ("book_sale", 2, 1),
            ("archive", 3),
            ("apply", None, 1),
        ],
        1,
        "trigger",
    ),
    # Found while the fix above was being built: blog 3's member missed blog 2's stock edit (a
    # delta) while archived, then its own held import (an absolute set, captured later) was
    # applied; its heal added the missed delta on top of the import's value.
    "held_import_after_a_missed_edit": (
        [("archive", 3), ("set", "MUG", 2, 15), ("readd", "MUG", 3, 15), ("apply", None, 3)],
        3,
        "trigger",
    ),
    # Hunts after the fix above. Blog 3 (archived) sets BOOK to 0, blog 2 sells one; blog 3 back and
    # blog 2 archived. A heal that received missed sales queued a copy for its translation, which
    # then copied a member behind as well: a sale was lost.
    "translation_heal_copied_a_member_behind_too": (
        [
            ("archive", 3),
            ("book_set", 3, 0),
            ("book_sale", 2, 1),
            ("settle", "settle_lock"),
            ("archive", 3),
            ("archive", 2),
            ("settle", None),
        ],
        2,
        "trigger",
    ),
    # Poll mode did not poll a blog archived since discovery: its import was captured when the blog
    # was back, after a sale made later elsewhere, and overwrote that sale.
    "poll_import_on_a_blog_archived_since_discovery": (
        [("archive", 3), ("archive", 2), ("archive", 2), ("readd", "MUG", 3, 20), ("sale", "MUG", 2, 2)],
        1,
        "poll",
    ),
}


def run_case(network_factory: Any, case: tuple[list[tuple[Any, ...]], int, str]) -> None:
    steps, batch_size, mode = case
    net = network_factory.recorded_network()
    try:
        run_storm(net, steps, batch_size, mode=mode)
    finally:
        network_factory.release(net)


@pytest.mark.parametrize("name", sorted(FOUND))
def test_storm_examples_found_before(network_factory, name):
    run_case(network_factory, FOUND[name])
