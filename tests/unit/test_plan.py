"""The planner is pure: these tests pin its merge rules without a database."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.plan import (
    Change,
    Facts,
    Member,
    StockValueError,
    format_quantity,
    parse_quantity,
    plan_batch,
    target_stock_value,
)

A, B, C = (1, 11), (2, 21), (3, 31)
GROUP = [Member(*A, sku="X"), Member(*B, sku="X"), Member(*C, sku="X")]
GROUPS = {m.key: GROUP for m in GROUP}
FACTS = {m.key: Facts(stock="10") for m in GROUP}
LIVE = (1, 2, 3)


def ch(i, key, old, new, meta="_stock", op="U"):
    return Change(i, key[0], key[1], meta, op, old, new)


def writes(plan):
    return {w.key: w for w in plan.writes}


def test_relative_change_goes_to_every_other_member():
    plan = plan_batch([ch(1, A, "10", "7")], GROUPS, FACTS, LIVE)
    w = writes(plan)
    assert set(w) == {B, C}
    assert all(x.stock.delta == -3 and not x.stock.is_set for x in w.values())
    assert plan.refresh == {1: {11}, 2: {21}, 3: {31}}  # the origin is repaired too


def test_concurrent_deltas_sum_per_member():
    plan = plan_batch([ch(1, A, "10", "9"), ch(2, B, "10", "8"), ch(3, A, "9", "12")], GROUPS, FACTS, LIVE)
    w = writes(plan)
    assert w[A].stock.delta == -2
    assert w[B].stock.delta == 2
    # C's net delta is zero (-1 -2 +3): nothing to write on C, but all three changes reached it
    assert w[C].stock.is_noop and w[C].change_ids == [1, 2, 3]
    assert 3 not in plan.refresh  # C is no origin and nothing is written on it: no derived refresh


def test_text_forms_compare_as_numbers():
    plan = plan_batch([ch(1, A, "42", "42.000000")], GROUPS, FACTS, LIVE)
    assert plan.writes == []


def test_absolute_set_from_null_and_own_set_overrides_earlier_sibling_deltas():
    plan = plan_batch([ch(1, B, "10", "9"), ch(2, A, None, "5")], GROUPS, FACTS, LIVE)
    w = writes(plan)
    assert w[B].stock.is_set and w[B].stock.set_value == 5
    assert w[C].stock.is_set and w[C].stock.set_value == 5
    assert A not in w  # A's own set came after B's delta: A keeps 5


def test_delta_after_set_is_added_to_it():
    plan = plan_batch([ch(1, A, None, "5"), ch(2, B, "5", "4")], GROUPS, FACTS, LIVE)
    w = writes(plan)
    assert w[C].stock.is_set and w[C].stock.set_value == 5 and w[C].stock.delta == -1
    assert target_stock_value("999", w[C].stock) == 4


@pytest.mark.parametrize("bad", ["abc", "", " "])
def test_unparseable_origin_value_is_not_propagated(bad):
    plan = plan_batch([ch(1, A, "10", bad)], GROUPS, FACTS, LIVE)
    assert plan.writes == []
    assert any(n.level == "warning" and "not a number" in n.reason for n in plan.notes)


def test_registers_last_captured_change_wins_and_own_later_change_wins():
    plan = plan_batch(
        [ch(1, A, "no", "notify", "_backorders"), ch(2, C, "no", "yes", "_backorders")], GROUPS, FACTS, LIVE
    )
    w = writes(plan)
    assert w[B].registers == {"_backorders": "yes"}
    assert w[A].registers == {"_backorders": "yes"}
    assert C not in w


def test_superseded_register_change_reaches_nobody_and_says_why():
    # Change 1 arrives late (its blog was held): change 9 of the group was applied before.
    plan = plan_batch(
        [ch(1, C, "no", "yes", "_backorders"), ch(10, A, "10", "9")], GROUPS, FACTS, LIVE, superseded={1: 9}
    )
    w = writes(plan)
    assert all(not x.registers for x in w.values())  # the stock delta still goes out
    assert w[B].stock.delta == -1
    [n] = [n for n in plan.notes if n.change_id == 1]
    assert n.level == "warning" and n.reason.startswith("superseded") and "change 9" in n.reason


def test_low_stock_amount_unset_is_propagated_as_delete_but_other_deletes_are_not():
    plan = plan_batch(
        [ch(1, A, "5", None, "_low_stock_amount", "D"), ch(2, A, "no", None, "_backorders", "D")],
        GROUPS,
        FACTS,
        LIVE,
    )
    w = writes(plan)
    assert w[B].registers == {"_low_stock_amount": None}


def test_creation_inserts_are_not_propagated():
    # A product being created is settling (syncd.settle): its inserted rows reach nobody.
    plan = plan_batch(
        [ch(1, A, None, "10", op="I"), ch(2, A, None, "no", "_backorders", "I")],
        GROUPS,
        FACTS,
        LIVE,
        settling={A},
    )
    assert plan.writes == []


def test_importer_delete_and_re_add_of_stock_is_an_absolute_set():
    # delete_post_meta('_stock') + add_post_meta('_stock', 4) on a linked product (issue 9 path 3):
    # the delete is not propagated, the insert sets 4 everywhere (it used to be taken for a creation).
    plan = plan_batch([ch(1, A, "7", None, op="D"), ch(2, A, None, "4", op="I")], GROUPS, FACTS, LIVE)
    assert {w.key: (w.stock.is_set, w.stock.set_value) for w in plan.writes} == {
        B: (True, Decimal(4)),
        C: (True, Decimal(4)),
    }


def test_duplicate_stock_rows_make_a_product_unsafe_as_origin_and_as_target():
    facts = {**FACTS, A: Facts(stock="10", duplicate_keys=("_stock",))}
    plan = plan_batch([ch(1, A, "10", "9"), ch(2, A, "10", "9")], GROUPS, facts, LIVE)
    assert plan.writes == [] and {n.level for n in plan.notes} == {"warning"}
    plan = plan_batch([ch(3, B, "10", "9")], GROUPS, facts, LIVE)
    assert A not in writes(plan) and any("duplicate _stock" in n.reason for n in plan.notes)


def test_members_that_do_not_manage_stock_get_no_quantity():
    facts = dict(FACTS)
    facts[B] = Facts(manage_stock="no", stock=None)
    plan = plan_batch([ch(1, A, "10", "7")], GROUPS, facts, LIVE)
    assert set(writes(plan)) == {C}


def test_manage_stock_switched_on_with_quantity_in_one_batch():
    facts = {k: Facts(manage_stock="no", stock=None) for k in FACTS}
    plan = plan_batch([ch(1, A, "no", "yes", "_manage_stock"), ch(2, A, None, "4")], GROUPS, facts, LIVE)
    w = writes(plan)
    assert w[B].registers == {"_manage_stock": "yes"}
    assert w[B].stock.is_set and w[B].stock.set_value == 4


def test_status_is_derived_when_managed_and_a_register_when_not():
    managed = plan_batch([ch(1, A, "instock", "outofstock", "_stock_status")], GROUPS, FACTS, LIVE)
    assert managed.writes == [] and managed.refresh == {1: {11}}
    facts = {k: Facts(manage_stock="no", stock=None) for k in FACTS}
    unmanaged = plan_batch([ch(1, A, "instock", "outofstock", "_stock_status")], GROUPS, facts, LIVE)
    assert {w.key: w.status_register for w in unmanaged.writes} == {B: "outofstock", C: "outofstock"}


def test_dead_blogs_trashed_members_ambiguous_and_unlinked_origins():
    facts = dict(FACTS)
    facts[C] = Facts(post_status="trash", stock="10")
    plan = plan_batch([ch(1, A, "10", "7")], GROUPS, facts, live_blogs=(1,))
    assert plan.writes == []  # blog 2 not live, blog 3 member trashed
    amb = [Member(*A, sku="X", state="ambiguous"), Member(*B, sku="X")]
    plan = plan_batch([ch(1, A, "10", "7")], {A: amb}, FACTS, LIVE)
    assert plan.writes == [] and any("ambiguous" in n.reason for n in plan.notes)
    plan = plan_batch([ch(1, (1, 99), "10", "7")], {}, {(1, 99): Facts()}, LIVE)
    assert plan.writes == [] and plan.refresh == {1: {99}}


def test_membership_changes_are_acknowledged_without_writes():
    plan = plan_batch([ch(1, A, "X", "Y", "_sku")], GROUPS, FACTS, LIVE)
    assert plan.writes == [] and [c.id for c in plan.applied] == [1]


@pytest.mark.parametrize(
    ("text", "value"), [("7", 7), ("42.000000", 42), ("-2", -2), ("2.5", Decimal("2.5")), (None, None)]
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["abc", "", "NaN", "inf", "1e"])
def test_parse_quantity_refuses_non_numbers(text):
    with pytest.raises(StockValueError):
        parse_quantity(text)


def test_format_quantity():
    assert format_quantity(Decimal("42.000000")) == "42"
    assert format_quantity(Decimal("2.50")) == "2.5"


deltas = st.lists(
    st.tuples(st.sampled_from([A, B, C]), st.integers(min_value=-5, max_value=5)), min_size=1, max_size=40
)


@given(deltas)
@settings(max_examples=200)
def test_any_sequence_of_relative_changes_converges(events):
    """Each member ends at start + the sum of every delta, whichever member it happened on."""
    current = {k: Decimal(10) for k in GROUPS}
    changes = []
    for i, (key, d) in enumerate(events, 1):
        old = current[key]
        current[key] = old + d
        changes.append(ch(i, key, str(old), str(old + d)))
    plan = plan_batch(changes, GROUPS, FACTS, LIVE)
    w = writes(plan)
    final = {k: current[k] + (w[k].stock.delta if k in w and w[k].stock else 0) for k in current}
    expected = 10 + sum(d for _, d in events)
    assert set(final.values()) == {expected}


def test_null_stock_on_a_product_that_still_manages_stock_is_not_propagated():
    """Broken data (direct SQL), not WooCommerce switching management off: copying it would wipe
    every member's stock (found by the fault test)."""
    plan = plan_batch([ch(1, A, "10", None)], GROUPS, FACTS, LIVE)
    assert plan.writes == []
    assert any(n.level == "warning" and "SQL NULL" in n.reason for n in plan.notes)


def test_stock_management_switched_off_propagates_null_and_the_register():
    facts = dict(FACTS)
    facts[A] = Facts(manage_stock="no", stock=None)
    plan = plan_batch([ch(1, A, "yes", "no", "_manage_stock"), ch(2, A, "3", None)], GROUPS, facts, LIVE)
    w = writes(plan)
    assert w[B].registers == {"_manage_stock": "no"}
    assert w[B].stock.is_set and w[B].stock.set_value is None


def test_own_sale_after_a_siblings_absolute_set_is_kept_on_top_of_it():
    # Found by the storm: blog 2's importer sets 0 (delete + add), then blog 1 sells 1 (its row
    # already holds that sale). Blog 1 must end at -1 like the others, not at the set's 0.
    plan = plan_batch([ch(1, B, "3", None, op="D"), ch(2, B, None, "0", op="I"), ch(3, A, "0", "-1")], GROUPS, FACTS, LIVE)
    w = writes(plan)
    assert (w[A].stock.set_value, w[A].stock.delta) == (Decimal(0), Decimal(-1))
    assert (w[C].stock.set_value, w[C].stock.delta) == (Decimal(0), Decimal(-1))
    assert (w[B].stock.is_set, w[B].stock.delta) == (False, Decimal(-1))


# -- realtime field groups (issue 10): plan_fields ----------------------------------------------


def _field_setup():
    from syncd.plan import Facts, Member

    members = [Member(b, 10 * b, "MUG", group_id=7) for b in (1, 2, 3)]
    groups = {m.key: members for m in members}
    facts = {m.key: Facts() for m in members}
    index = {"_regular_price": ("price", "_regular_price"), "post:post_title": ("content", "post_title")}
    return groups, facts, index


def _fields(changes, *, takes_part=lambda g, b: True, **kw):
    from syncd.plan import plan_fields

    groups, facts, index = _field_setup()
    return plan_fields(changes, groups, facts, (1, 2, 3), index, takes_part, **kw)


def _sources(plan):
    return {(w.blog_id, w.group): dict(w.sources) for w in plan.writes}


def test_fields_last_captured_change_wins_and_its_origin_keeps_it():
    p = _fields([ch(5, (3, 30), "1", "3", "_regular_price"), ch(6, (2, 20), "1", "2", "_regular_price")])
    # The last captured (id 6, blog 2) wins: blogs 1 and 3 take blog 2's value; blog 2 is not written.
    assert _sources(p) == {
        (1, "price"): {"_regular_price": (2, 20)},
        (3, "price"): {"_regular_price": (2, 20)},
    }
    assert [c.id for c in p.applied] == [5, 6]


def test_fields_per_field_registers_and_stock_keys_untouched():
    p = _fields([ch(5, (1, 10), "1", "2", "_regular_price"), ch(6, (2, 20), "a", "b", "post:post_title")])
    assert _sources(p) == {
        (2, "price"): {"_regular_price": (1, 10)},
        (3, "price"): {"_regular_price": (1, 10)},
        (1, "content"): {"post_title": (2, 20)},
        (3, "content"): {"post_title": (2, 20)},
    }
    assert _fields([ch(5, (1, 10), "1", "2")]).writes == []  # _stock is not a field


def test_fields_go_only_to_blogs_that_take_part_and_not_to_settling_members():
    p = _fields(
        [ch(5, (1, 10), "1", "2", "_regular_price")],
        takes_part=lambda g, b: b != 3,
        settling={(2, 20)},
    )
    assert p.writes == []
    outside = _fields([ch(5, (3, 30), "1", "2", "_regular_price")], takes_part=lambda g, b: b != 3)
    assert outside.writes == [] and "does not take part" in outside.notes[0].reason


def test_fields_superseded_change_reaches_nobody_and_its_origin_takes_the_group_value_back():
    p = _fields([ch(5, (3, 30), "1", "2", "_regular_price")], superseded={5: 9})
    assert _sources(p) == {(3, "price"): {"_regular_price": (1, 10)}}
    assert p.applied == [] and p.notes[0].level == "warning" and "superseded" in p.notes[0].reason


def test_a_member_on_a_blog_not_live_misses_sales_as_deltas_and_anything_else_as_a_copy():
    """Issue 9: what a member on an archived blog missed decides how it is healed when back."""
    from syncd.plan import Missed

    sales = plan_batch([ch(1, A, "10", "9"), ch(2, B, "10", "7")], GROUPS, FACTS, (1, 2))
    assert set(writes(sales)) == {A, B}
    assert sales.missed == {C: Missed(GROUP[2], [1, 2], Decimal(-4), copy=False)}
    # An absolute set (an importer's delete + add), then a sale: it must take the group's value.
    imported = plan_batch([ch(1, A, None, "5", op="I"), ch(2, B, "10", "9")], GROUPS, FACTS, (1, 2))
    assert imported.missed[C].copy and imported.missed[C].change_ids == [1, 2]
    # A setting is a register: a copy as well.
    setting = plan_batch([ch(1, A, "no", "notify", meta="_backorders")], GROUPS, FACTS, (1, 2))
    assert setting.missed == {C: Missed(GROUP[2], [1], Decimal(0), copy=True)}
    # A member that is joining misses nothing: it takes its group's values when it joins.
    assert plan_batch([ch(1, A, "10", "9")], GROUPS, FACTS, (1, 2), settling=[C]).missed == {}
    # A change that reaches nobody (not propagated) is missed by nobody either.
    assert plan_batch([ch(1, A, "10", None, op="D")], GROUPS, FACTS, (1, 2)).missed == {}


def test_missed_sales_are_received_as_one_delta_or_the_member_takes_its_groups_values():
    from syncd.plan import plan_missed_sales

    member = GROUP[2]
    manages = {C: Facts(stock="10", manage_stock="yes")}
    healed = plan_missed_sales(member, manages, Decimal(-4))
    assert healed is not None and healed.joiner is not None and healed.others == []
    assert healed.joiner.stock.delta == -4 and not healed.joiner.stock.is_set
    assert "sales it missed" in (healed.joiner.history_note or "")
    # It missed sales that cancel out: nothing to write.
    assert plan_missed_sales(member, manages, Decimal(0)).joiner is None
    # Its _stock is not a number: it cannot take a delta, it takes its group's values (None).
    assert plan_missed_sales(member, {C: Facts(stock="lots", manage_stock="yes")}, Decimal(-1)) is None
    # It does not manage stock: a live member would have received nothing either.
    assert plan_missed_sales(member, {C: Facts(stock=None, manage_stock="no")}, Decimal(-1)).joiner is None


def test_a_join_gives_its_own_sales_to_members_away_later_and_only_when_the_others_get_them():
    from syncd.plan import Missed, plan_join

    facts = {m.key: Facts(stock="10", manage_stock="yes") for m in GROUP}
    joined = plan_join(GROUP[1], GROUP[0], facts, [GROUP[0]], Decimal(-3), away=[GROUP[2]])
    assert [w.key for w in joined.others] == [A] and joined.others[0].stock.delta == -3
    assert joined.missed == {C: Missed(GROUP[2], [0], Decimal(-3), copy=False)}
    # No sales of its own: nothing to give, to anyone.
    assert plan_join(GROUP[1], GROUP[0], facts, [GROUP[0]], Decimal(0), away=[GROUP[2]]).missed == {}
    # The authority missed a sale itself (its heal adds it later): the joiner takes that into account.
    behind = plan_join(GROUP[1], GROUP[0], facts, [GROUP[0]], Decimal(0), authority_missed=Decimal(-2))
    assert behind.joiner.stock.set_value == 8
