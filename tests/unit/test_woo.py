"""WooCommerce semantics (syncd.woo) and the pure derived-data planner (syncd.derived.plan_refresh).

No database: the planner is fed hand-built snapshots shaped like the recorded catalogue.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd import woo
from syncd.derived import PostRow, Snapshot, plan_refresh

# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", Decimal(5)),
        ("5.000000", Decimal("5.000000")),
        ("42.000000", Decimal(42)),
        ("-2", Decimal(-2)),
        (" 7 ", Decimal(7)),
        ("1e3", Decimal(1000)),
        (".5", Decimal("0.5")),
        ("3.", Decimal(3)),
        (None, None),
        (b"12", Decimal(12)),
    ],
)
def test_parse_stock_numbers(text: str | None, expected: Decimal | None) -> None:
    assert woo.parse_stock(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "abc", "5abc", "NaN", "inf", "0x1A", "1,5", "--1", "1e"])
def test_parse_stock_refuses_garbage(text: str) -> None:
    with pytest.raises(woo.UnparseableStock) as err:
        woo.parse_stock(text)
    assert err.value.text == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0),
        ("", 0),
        ("abc", 0),
        ("12abc", 12),
        ("2.9", 2),
        ("-2.9", -2),
        ("42.000000", 42),
        ("1e3", 1000),
        (" 5", 5),
        ("99999999999999999999", woo.PHP_INT_MAX),
        ("-99999999999999999999", woo.PHP_INT_MIN),
        ("1e400", 0),  # INF -> 0 (zend_dval_to_lval_cap)
        (Decimal("3.7"), 3),
        (Decimal("-0.5"), 0),
        (2.5, 2),
        (True, 1),
        (7, 7),
    ],
)
def test_php_int(value: object, expected: int) -> None:
    assert woo.php_int(value) == expected


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=0, max_value=6))
def test_php_int_agrees_with_parse_stock_for_decimal_text(whole: int, decimals: int) -> None:
    # The text forms WooCommerce and MariaDB produce ('5', '5.000000', '-2') read the same both ways.
    text = f"{whole}.{'0' * decimals}" if decimals else str(whole)
    assert woo.php_int(text) == int(woo.parse_stock(text))  # type: ignore[arg-type]


def test_php_truthiness_and_bool_strings() -> None:
    assert not woo.php_truthy("") and not woo.php_truthy("0") and woo.php_truthy("0.0")
    assert woo.wc_string_to_bool("YES") and woo.wc_string_to_bool("true") and woo.wc_string_to_bool("1")
    assert (
        not woo.wc_string_to_bool("no")
        and not woo.wc_string_to_bool(None)
        and not woo.wc_string_to_bool("parent")
    )


def test_wc_format_decimal() -> None:
    assert woo.wc_format_decimal("8.00") == "8.00"
    assert woo.wc_format_decimal("1.234.5") == "1234.5"  # only the last dot survives
    assert woo.wc_format_decimal("8,50", ",") == "8.50"
    assert woo.wc_format_decimal(None) == ""


# --------------------------------------------------------------------------- status rules


@pytest.mark.parametrize(
    ("qty", "backorders", "notify", "expected", "fixture"),
    [
        (Decimal(0), "no", 0, "outofstock", "02 MUG 3 -> 0"),
        (Decimal(5), "no", 0, "instock", "03 POSTER 0 -> 5"),
        (Decimal(42), "no", 0, "instock", "04"),
        (Decimal(-2), "notify", 0, "onbackorder", "05 NOTEBOOK"),
        (Decimal(2), "no", 2, "outofstock", "06 blog 3: stock must be > notify amount"),
        (Decimal(3), "no", 2, "instock", "06 before"),
        (Decimal(0), "yes", 0, "onbackorder", "09A"),
        (None, "no", 0, "outofstock", "09C NULL quantity read as 0"),
        (Decimal("0.9"), "no", 0, "outofstock", "(int) cast truncates"),
        (Decimal(0), None, 0, "outofstock", "missing _backorders keeps the default 'no'"),
    ],
)
def test_managed_stock_status(
    qty: Decimal | None, backorders: str | None, notify: int, expected: str, fixture: str
) -> None:
    assert woo.managed_stock_status(qty, backorders, notify) == expected, fixture


def test_variable_parent_status() -> None:
    assert woo.variable_parent_status(["outofstock", "instock"]) == "instock"
    assert woo.variable_parent_status(["outofstock", "onbackorder"]) == "onbackorder"
    assert woo.variable_parent_status(["outofstock", None]) == "outofstock"
    assert woo.variable_parent_status([]) == "outofstock"


def test_visibility_and_attribute_rules() -> None:
    assert woo.visibility_wants_outofstock("outofstock")
    assert not woo.visibility_wants_outofstock("onbackorder")
    assert woo.attribute_lookup_in_stock("onbackorder") == 1
    assert woo.attribute_lookup_in_stock("outofstock") == 0


def test_stock_source() -> None:
    src = woo.stock_source
    assert (
        src(product_id=17, post_type="product_variation", product_type=None, manage_meta="yes").mode == "own"
    )
    inherit = src(
        product_id=21,
        post_type="product_variation",
        product_type=None,
        manage_meta="no",
        parent_id=20,
        parent_manage_meta="yes",
    )
    assert inherit == woo.StockSource("parent", 20)
    assert (
        src(product_id=16, post_type="product", product_type="variable", manage_meta="no").mode == "children"
    )
    assert src(product_id=15, post_type="product", product_type="simple", manage_meta="no").mode == "manual"
    assert woo.pushes_status_to_child("no") and not woo.pushes_status_to_child("yes")
    assert not woo.pushes_status_to_child(None) and not woo.pushes_status_to_child("YES ")


# --------------------------------------------------------------------------- lookup row

MUG_META = {
    "_sku": ["MUG"],
    "_regular_price": ["9.50"],
    "total_sales": ["0"],
    "_tax_status": ["taxable"],
    "_tax_class": [""],
    "_manage_stock": ["yes"],
    "_backorders": ["no"],
    "_virtual": ["no"],
    "_downloadable": ["no"],
    "_stock": ["0"],
    "_stock_status": ["instock"],
    "_wc_average_rating": ["0"],
    "_price": ["9.50"],
}


def test_lookup_row_matches_fixture_02_replace() -> None:
    # REPLACE INTO wp_wc_product_meta_lookup (...) VALUES ('12', 'MUG', '0', '0', '9.50', '9.50', '0', '0',
    # 'outofstock', '0', '0', '0', 'taxable', '', '')
    row = woo.lookup_row(12, MUG_META, stock_status="outofstock")
    assert row == {
        "product_id": 12,
        "sku": "MUG",
        "virtual": 0,
        "downloadable": 0,
        "min_price": "9.50",
        "max_price": "9.50",
        "onsale": 0,
        "stock_quantity": 0,
        "stock_status": "outofstock",
        "rating_count": 0,
        "average_rating": "0",
        "total_sales": "0",
        "tax_status": "taxable",
        "tax_class": "",
        "global_unique_id": "",
    }
    assert list(row) == list(woo.LOOKUP_COLUMNS)


def test_lookup_row_rules() -> None:
    unmanaged = {**MUG_META, "_manage_stock": ["no"], "_stock": [None]}
    assert woo.lookup_row(12, unmanaged)["stock_quantity"] is None  # 09E
    managed_null = {**MUG_META, "_stock": [None]}
    assert woo.lookup_row(15, managed_null)["stock_quantity"] == 0  # 09C
    assert woo.lookup_row(11, {**MUG_META, "_stock": ["42.000000"]})["stock_quantity"] == 42  # 04A
    parent = {**MUG_META, "_price": ["39.00", "42.00"]}
    row = woo.lookup_row(16, parent)
    assert (row["min_price"], row["max_price"]) == ("39.00", "42.00")  # meta_id order, first/last
    on_sale = {**MUG_META, "_price": ["8.00"], "_sale_price": ["8.00"]}
    assert woo.lookup_row(12, on_sale)["onsale"] == 1  # 11A step 2
    assert woo.lookup_row(12, {**on_sale, "_sale_price": ["0"]})["onsale"] == 0  # '0' is falsy in PHP
    assert woo.lookup_row(12, {**MUG_META, "_price": []})["min_price"] == ""  # PHP false
    rated = {**MUG_META, "_wc_rating_count": ['a:2:{i:4;s:1:"2";i:5;i:3;}']}
    assert woo.lookup_row(12, rated)["rating_count"] == 5
    assert "global_unique_id" not in woo.lookup_row(12, MUG_META, include_global_unique_id=False)


def test_stored_lookup_values_and_differences() -> None:
    assert woo.stored_lookup_value("min_price", "9.50") == Decimal("9.5000")
    assert woo.stored_lookup_value("min_price", "") == Decimal(0)
    assert woo.stored_lookup_value("average_rating", "4.555") == Decimal("4.56")
    assert woo.stored_lookup_value("total_sales", "2.5") == 3
    assert woo.stored_lookup_value("stock_quantity", 7) == 7.0
    assert woo.stored_lookup_value("min_price", "abc") is woo.UNKNOWN
    stored = {
        "product_id": 12,
        "sku": "MUG",
        "global_unique_id": "",
        "virtual": 0,
        "downloadable": 0,
        "min_price": Decimal("9.5000"),
        "max_price": Decimal("9.5000"),
        "onsale": 0,
        "stock_quantity": 3.0,
        "stock_status": "instock",
        "rating_count": 0,
        "average_rating": Decimal("0.00"),
        "total_sales": 0,
        "tax_status": "taxable",
        "tax_class": "",
    }
    assert woo.lookup_differences(stored, woo.lookup_row(12, {**MUG_META, "_stock": ["3"]})) == []
    assert woo.lookup_differences(stored, woo.lookup_row(12, MUG_META, stock_status="outofstock")) == [
        "stock_quantity",
        "stock_status",
    ]
    assert woo.lookup_differences(None, {"product_id": 1}) == ["product_id"]


@given(
    st.integers(min_value=-(10**9), max_value=10**9),
    st.sampled_from(["instock", "outofstock", "onbackorder"]),
)
def test_lookup_row_is_stable_against_its_own_stored_form(qty: int, status: str) -> None:
    row = woo.lookup_row(12, {**MUG_META, "_stock": [str(qty)]}, stock_status=status)
    stored = {c: woo.stored_lookup_value(c, v) for c, v in row.items()}
    assert woo.lookup_differences(stored, row) == []


# --------------------------------------------------------------------------- transients, terms, time


def test_transient_names() -> None:
    names = woo.transient_names_to_delete(18, 16)
    assert names[:4] == woo.FIXED_PRODUCT_TRANSIENTS
    assert "wc_product_children_16" in names and "wc_related_18" in names and "wc_var_prices_18" in names
    assert len(names) == 4 + 2 * 5
    assert woo.transient_option_names("wc_related_12") == (
        "_transient_wc_related_12",
        "_transient_timeout_wc_related_12",
    )
    assert woo.version_transients_bumped(product_saved=True) == (
        "product_query-transient-version",
        "product-transient-version",
    )
    assert woo.version_transients_bumped(product_saved=False) == ()


def test_term_recount_rules() -> None:
    parents = {10: 0, 11: 10, 12: 11, 20: 0}
    assert woo.term_ancestors(12, parents) == [11, 10]
    assert woo.term_descendants(10, parents) == {11, 12}
    assert woo.terms_to_recount([12, 20], parents, hierarchical=True) == [12, 20, 11, 10]
    assert woo.terms_to_recount([12], parents, hierarchical=False) == [12]
    assert woo.term_ancestors(1, {1: 2, 2: 1}) == [2]  # cycle-safe
    assert woo.recount_needed(hide_out_of_stock=True, post_type="product", status_changed=True)
    assert not woo.recount_needed(hide_out_of_stock=True, post_type="product_variation", status_changed=True)
    assert not woo.recount_needed(hide_out_of_stock=False, post_type="product", status_changed=True)


def test_post_modified_times() -> None:
    now = datetime(2026, 7, 1, 10, 0, 5, tzinfo=UTC)
    assert woo.post_modified_values(now, "", "0") == ("2026-07-01 10:00:05", "2026-07-01 10:00:05")
    assert woo.post_modified_values(now, "Europe/Berlin", "0") == (
        "2026-07-01 12:00:05",
        "2026-07-01 10:00:05",
    )
    assert woo.post_modified_values(now, "", "5.5")[0] == "2026-07-01 15:30:05"
    assert woo.post_modified_values(now, "", "-3.75")[0] == "2026-07-01 06:15:05"
    assert woo.post_modified_values(now, "No/Such_Zone", "1")[0] == "2026-07-01 11:00:05"
    naive = datetime(2026, 7, 1, 10, 0, 5)
    assert woo.post_modified_values(naive, "", "0")[1] == "2026-07-01 10:00:05"
    assert woo.unix_time(naive) == int(now.timestamp())


# --------------------------------------------------------------------------- planner (pure)


def _meta(**kw: object) -> dict[str, list[str | None]]:
    base = dict(MUG_META)
    base.update({k: v if isinstance(v, list) else [v] for k, v in kw.items()})  # type: ignore[misc]
    return base  # type: ignore[return-value]


def _lookup(pid: int, meta: dict[str, list[str | None]]) -> dict[str, object]:
    row = woo.lookup_row(pid, meta)
    return {c: woo.stored_lookup_value(c, v) for c, v in row.items()}


def _snap() -> Snapshot:
    """Blog 1 of the recorded catalogue, reduced: MUG (12), HOODIE (16) with own-stock variations
    17/18/19, CAP (20) managing stock for 21/22, STICKER (15) unmanaged."""
    posts = {
        12: PostRow(12, "product", "publish", 0),
        15: PostRow(15, "product", "publish", 0),
        16: PostRow(16, "product", "publish", 0),
        17: PostRow(17, "product_variation", "publish", 16, 0),
        18: PostRow(18, "product_variation", "publish", 16, 1),
        19: PostRow(19, "product_variation", "publish", 16, 2),
        20: PostRow(20, "product", "publish", 0),
        21: PostRow(21, "product_variation", "publish", 20, 0),
        22: PostRow(22, "product_variation", "publish", 20, 1),
    }
    meta = {
        12: _meta(_stock="3"),
        15: _meta(_manage_stock="no", _stock=[None]),
        16: _meta(_manage_stock="no", _stock=[None], _price=["39.00", "42.00"]),
        17: _meta(_stock="5", _tax_class="parent"),
        18: _meta(_stock="3", _tax_class="parent"),
        19: _meta(_stock="8", _tax_class="parent"),
        20: _meta(_stock="12"),
        21: _meta(_manage_stock="no", _stock=[None], _tax_class="parent"),
        22: _meta(_manage_stock="no", _stock=[None], _tax_class="parent"),
    }
    snap = Snapshot(
        posts=posts,
        product_types={12: "simple", 15: "simple", 16: "variable", 20: "variable"},
        meta=meta,
        lookup={pid: _lookup(pid, m) for pid, m in meta.items()},
        visibility_terms={"outofstock": 9, "exclude-from-catalog": 7},
        visibility_counts={9: 0},
        attribute_in_stock={17: [1], 18: [1], 19: [1], 21: [1], 22: [1]},
    )
    return snap


def _plan(snap: Snapshot, ids: list[int], **kw: object):  # type: ignore[no-untyped-def]
    return plan_refresh(snap, ids, notify_no_stock_amount=0, hide_out_of_stock=False, **kw)  # type: ignore[arg-type]


def test_plan_simple_product_to_zero() -> None:
    snap = _snap()
    snap.meta[12]["_stock"] = ["0"]
    plan = _plan(snap, [12])
    o = plan.outcomes[12]
    assert (o.old_status, o.new_status, o.status_written, o.term, o.saved) == (
        "instock",
        "outofstock",
        True,
        "added",
        True,
    )
    assert o.lookup_columns == ("stock_quantity", "stock_status")
    assert plan.status_updates == {12: "outofstock"} and plan.term_add == [12]
    assert plan.saved == [12] and plan.transient_ids == [12]


def test_plan_nothing_changed_writes_nothing_unless_forced() -> None:
    snap = _snap()
    quiet = _plan(snap, [12], forced=[])
    assert not quiet.saved and not quiet.lookup_rows and not quiet.status_updates
    assert not quiet.outcomes[12].changed
    loud = _plan(snap, [12])  # forced by default: the caller wrote it (09B: _low_stock_amount only)
    assert loud.saved == [12] and not loud.lookup_rows


def test_plan_variation_saves_parent_and_parent_follows_last_child() -> None:
    snap = _snap()
    snap.meta[18]["_stock"] = ["0"]
    plan = _plan(snap, [18])
    assert plan.outcomes[16].role == "parent" and plan.outcomes[16].new_status == "instock"
    assert plan.saved == [16, 18] and plan.transient_ids == [16, 18]
    # All three at zero in one batch: the parent reads its children's new lookup statuses (07 step 3).
    for pid in (17, 18, 19):
        snap.meta[pid]["_stock"] = ["0"]
    plan = _plan(snap, [17, 18, 19])
    assert plan.outcomes[16].new_status == "outofstock" and plan.outcomes[16].term == "added"
    assert plan.term_add == [16, 17, 18, 19]
    assert plan.attributes == {17: 0, 18: 0, 19: 0}


def test_plan_managed_parent_pushes_status_without_term() -> None:
    snap = _snap()
    snap.meta[20]["_stock"] = ["0"]
    plan = _plan(snap, [20])
    assert plan.outcomes[20].children_written == (21, 22)
    for child in (21, 22):
        o = plan.outcomes[child]
        assert (o.role, o.new_status, o.term, o.attributes_written, o.saved) == (
            "child",
            "outofstock",
            None,
            False,
            False,
        )
    assert plan.term_add == [20]  # 08B: only the parent gets the term
    assert plan.saved == [20] and plan.transient_ids == [20]
    assert plan.lookup_rows[21]["stock_quantity"] is None


def test_plan_inheriting_variation_given_directly_follows_parent() -> None:
    snap = _snap()
    snap.meta[20]["_stock"] = ["0"]
    plan = _plan(snap, [21])
    assert plan.outcomes[21].new_status == "outofstock"
    assert plan.outcomes[21].term == "added"  # a variation save forces its visibility terms
    assert plan.outcomes[20].role == "parent" and plan.outcomes[20].new_status == "outofstock"
    assert plan.outcomes[22].role == "child"
    audit = _plan(snap, [21], audit=True)
    assert audit.outcomes[21].term is None  # WooCommerce leaves it: not a disagreement


def test_plan_skips_unusable_products() -> None:
    snap = _snap()
    snap.posts[30] = PostRow(30, "product", "trash", 0)
    snap.posts[31] = PostRow(31, "page", "publish", 0)
    snap.meta[12]["_stock"] = ["abc"]
    snap.meta[17]["_stock"] = [""]
    plan = _plan(snap, [12, 17, 30, 31, 99])
    assert plan.skipped == {
        12: "own _stock 'abc' is not a number",
        17: "own _stock '' is not a number",
        30: "post is trash",
        31: "not a product (post_type 'page')",
        99: "post is gone",
    }
    assert not plan.saved and not plan.lookup_rows and 16 not in plan.outcomes


def test_plan_unmanaged_product_keeps_its_status() -> None:
    snap = _snap()
    snap.meta[15]["_stock_status"] = ["outofstock"]
    plan = _plan(snap, [15])
    assert plan.outcomes[15].new_status == "outofstock" and not plan.outcomes[15].status_written
    assert plan.lookup_rows[15]["stock_status"] == "outofstock"  # the lookup row follows postmeta
    snap.meta[15].pop("_stock_status")
    plan = _plan(snap, [15])
    # A missing row is never inserted by syncd (issue 9: a product without one is being created by
    # a WooCommerce request that will insert it - a second row would follow); the lookup row and
    # the term still take the prop default.
    assert plan.status_inserts == {} and plan.outcomes[15].new_status == "instock"


def test_plan_hide_out_of_stock_recounts_products_not_variations() -> None:
    snap = _snap()
    snap.meta[12]["_stock"] = ["0"]
    snap.meta[18]["_stock"] = ["0"]
    plan = plan_refresh(snap, [12, 18], notify_no_stock_amount=0, hide_out_of_stock=True)
    assert plan.recount_products == [12]


def test_plan_parent_reads_children_postmeta_while_lookup_table_is_generating() -> None:
    snap = _snap()
    # HOODIE-S and -L are out of stock in postmeta but their lookup rows still say instock.
    for pid in (17, 19):
        snap.meta[pid]["_stock_status"] = ["outofstock"]
    snap.meta[18]["_stock"] = ["0"]
    assert _plan(snap, [18]).outcomes[16].new_status == "instock"  # lookup rows (default)
    plan = _plan(snap, [18], children_from_postmeta=True)
    assert plan.outcomes[16].new_status == "outofstock"


def test_plan_given_parent_is_saved_when_a_given_child_is() -> None:
    snap = _snap()
    snap.meta[17]["_stock"] = ["4"]  # no status change, but the lookup quantity changes
    plan = _plan(snap, [16, 17], forced=[])
    assert plan.saved == [16, 17]  # the deferred parent sync saves HOODIE even though nothing of it differs
    assert plan.outcomes[16].role == "given" and not plan.outcomes[16].changed


def test_plan_recounts_when_the_caller_wrote_a_manual_status() -> None:
    snap = _snap()
    snap.meta[15]["_stock_status"] = ["outofstock"]  # a manual-status register written by syncd
    plan = plan_refresh(snap, [15], notify_no_stock_amount=0, hide_out_of_stock=True)
    o = plan.outcomes[15]
    assert not o.status_written and o.flipped and o.term == "added"
    assert plan.recount_products == [15]
