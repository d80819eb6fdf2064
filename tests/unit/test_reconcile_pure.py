"""Pure parts of audit and reconcile: field comparison, authority policies, group plans, SQL text,
argument parsing; and the planner's handling of excluded origins."""

from __future__ import annotations

import re
from array import array
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from syncd.audit import (
    U32,
    Auditor,
    GroupState,
    MemberValues,
    Scope,
    _BlogScan,
    _spread,
    compare_group,
    member_checksum_sql,
    meta_checksum_sql,
    packed_sql,
    unpack,
)
from syncd.config import ConfigError, config_for
from syncd.history import BadArgument, parse_since
from syncd.plan import Change, Facts, Member, plan_batch
from syncd.reconcile import choose_authority, parse_qty, plan_group


def mv(blog, post, stock="5", manage="yes", backorders="no", low=None, status="instock", **kw):
    meta = {"_manage_stock": [manage], "_backorders": [backorders], "_stock_status": [status]}
    if stock is not False:
        meta["_stock"] = stock if isinstance(stock, list) else [stock]
    if low is not None:
        meta["_low_stock_amount"] = [low]
    return MemberValues(
        blog,
        post,
        kw.pop("sku", "SKU"),
        "en",
        kw.pop("post_type", "product"),
        kw.pop("product_type", "simple"),
        kw.pop("parent_id", 0),
        meta=meta,
        **kw,
    )


def group(*members):
    return GroupState(7, list(members))


def test_quantities_compare_as_numbers():
    g = group(mv(1, 10, "7"), mv(2, 20, "7.000000"), mv(3, 30, "7.0"))
    assert compare_group(g) == ([], [])
    diffs, _ = compare_group(group(mv(1, 10, "7"), mv(2, 20, "6.5")))
    assert [d.field for d in diffs] == ["quantity"]
    assert diffs[0].values == {(1, 10): "7", (2, 20): "6.5"}


def test_quantity_ignored_where_stock_is_not_managed_and_status_only_where_manual():
    g = group(mv(1, 10, None, manage="no", status="instock"), mv(2, 20, "3", manage="no", status="instock"))
    assert compare_group(g) == ([], [])
    diffs, _ = compare_group(
        group(mv(1, 10, None, manage="no", status="outofstock"), mv(2, 20, None, manage="no"))
    )
    assert [d.field for d in diffs] == ["stock_status"]
    # managed: status is derived, never compared
    assert compare_group(group(mv(1, 10, "0", status="instock"), mv(2, 20, "0", status="outofstock"))) == (
        [],
        [],
    )
    # a variation whose parent manages stock takes its status from the parent
    a = mv(
        1,
        10,
        None,
        manage="no",
        status="outofstock",
        post_type="product_variation",
        product_type="",
        parent_id=5,
        parent_manages=True,
    )
    b = mv(
        2,
        20,
        None,
        manage="no",
        status="instock",
        post_type="product_variation",
        product_type="",
        parent_id=6,
        parent_manages=True,
    )
    assert compare_group(group(a, b)) == ([], [])


def test_registers_and_empty_low_stock_amount():
    diffs, _ = compare_group(group(mv(1, 10, backorders="notify"), mv(2, 20)))
    assert [d.field for d in diffs] == ["backorders"]
    assert compare_group(group(mv(1, 10, low=""), mv(2, 20))) == ([], [])
    diffs, _ = compare_group(group(mv(1, 10, low="2"), mv(2, 20)))
    assert [d.field for d in diffs] == ["low_stock_amount"]


def test_unusable_quantities_are_reported_and_count_as_different():
    diffs, unsafe = compare_group(
        group(mv(1, 10, "abc"), mv(2, 20, "5"), mv(3, 30, ["5", "5"]), mv(4, 40, None))
    )
    assert [d.field for d in diffs] == ["quantity"]
    assert [(m.key, r) for m, r in unsafe] == [
        ((1, 10), "_stock not a number: 'abc'"),
        ((3, 30), "_stock has 2 _stock rows"),
        ((4, 40), "_stock is SQL NULL (or missing) while stock is managed"),
    ]
    # a broken member is overwritten with the authority's quantity
    plan = plan_group("lowest", group(mv(1, 10, "abc"), mv(2, 20, "5"), mv(4, 40, None)))
    assert plan.authority == (2, 20) and {(w.member, w.new) for w in plan.writes} == {
        ((1, 10), "5"),
        ((4, 40), "5"),
    }


def test_lowest_never_oversells_and_ties_go_to_the_lowest_blog():
    a, b, c = mv(1, 10, "9"), mv(2, 20, "4"), mv(3, 30, "4.000")
    auth, why = choose_authority("lowest", [a, b, c])
    assert auth is b and why == "lowest quantity (4)"
    assert choose_authority("lowest", [mv(1, 10, "abc"), mv(2, 20, "8")])[0].key == (2, 20)
    # SQL NULL under managed stock is broken data, never an authority
    assert choose_authority("lowest", [mv(1, 10, "abc"), mv(2, 20, None)]) == (
        None,
        "no member that manages stock has a usable quantity",
    )
    unmanaged = [mv(2, 20, None, manage="no"), mv(1, 10, None, manage="no", backorders="yes")]
    assert choose_authority("lowest", unmanaged)[0].key == (1, 10)


def test_blog_and_latest_policies():
    a, b = mv(1, 10, "9"), mv(2, 20, "4")
    assert choose_authority("blog:1", [a, b])[0] is a
    assert choose_authority("blog:3", [a, b]) == (None, "no member on authority blog 3")
    t = {(1, 10): datetime(2026, 1, 2), (2, 20): datetime(2026, 1, 1)}
    assert choose_authority("latest", [a, b], t)[0] is a
    assert choose_authority("latest", [a, b], {})[0] is b  # no record: ties go to the lowest quantity


def test_plan_group_writes_every_field_from_one_authority():
    auth = mv(2, 20, "4", backorders="notify", low="1")
    other = mv(1, 10, "9.000000", backorders="no")
    plan = plan_group("blog:2", group(other, auth))
    assert plan.authority == (2, 20)
    assert {(w.meta_key, w.old, w.new) for w in plan.writes} == {
        ("_backorders", "no", "notify"),
        ("_low_stock_amount", None, "1"),
        ("_stock", "9.000000", "4"),
    }
    # same values in another text form: nothing to write
    assert plan_group("lowest", group(mv(1, 10, "4.000000"), mv(2, 20, "4"))).writes == []
    # an authority whose own quantity is unusable leaves the group alone
    bad = plan_group("blog:1", group(mv(1, 10, "x"), mv(2, 20, "4")))
    assert bad.authority is None and "unusable quantity" in bad.reason and bad.writes == []


def test_plan_group_copies_manual_status_and_manage_flag():
    auth = mv(1, 10, None, manage="no", status="outofstock")
    other = mv(2, 20, "3", manage="yes", status="instock")
    plan = plan_group("blog:1", group(auth, other))
    assert {(w.meta_key, w.new) for w in plan.writes} == {
        ("_manage_stock", "no"),
        ("_stock_status", "outofstock"),
    }


def test_checksum_sql_binds_everything_but_table_names():
    sql = meta_checksum_sql("wp_", "wp_3_", "(FALSE OR m.state = 'excluded')")
    assert (
        "FROM `wp_3_postmeta` pm LEFT JOIN `wp_syncd_member` m ON m.blog_id = :b AND m.post_id = pm.post_id"
        in sql
    )
    assert (
        "BIT_XOR(IF((m.state = 'linked' AND NOT (FALSE OR m.state = 'excluded')), CRC32(CONCAT_WS('#', m.group_id, pm.meta_key, IF(pm.meta_key = '_stock' AND LOCATE('.', pm.meta_value) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM pm.meta_value)), pm.meta_value), ISNULL(pm.meta_value))), 0))"
        in sql
    )
    assert "pm.meta_id >= :lo AND pm.meta_id < :hi GROUP BY bucket" in sql
    assert set(re.findall(r":(\w+)", sql)) == {"b", "g0", "w", "kmax", "notify", "oos", "lo", "hi"}
    assert "GROUP BY bucket" in member_checksum_sql("wp_", "FALSE")
    packed = packed_sql(sql)
    assert packed.startswith("SELECT COUNT(*), GROUP_CONCAT(") and packed.endswith(f"FROM ({sql}) t")
    assert set(re.findall(r":(\w+)", packed)) == set(re.findall(r":(\w+)", sql))


def test_packed_checksum_rows_are_unpacked_and_truncation_is_an_error():
    text = "000000000000000000000000000000020000000100000005FFFFFFFF00000000"
    assert list(unpack((2, text))) == [0, 0, 0, 2, 1, 5, 4294967295, 0]
    assert list(unpack((2, text.lower().encode()))) == [0, 0, 0, 2, 1, 5, 4294967295, 0]
    assert list(unpack((0, None))) == []
    with pytest.raises(RuntimeError, match="truncated"):
        unpack((3, text))  # group_concat_max_len cut the text


def test_packed_checksum_values_are_summed_per_bucket():
    k = 4
    ordinal = array(U32, range(1, k + 1))
    n, x = array(U32, bytes(4 * k)), array(U32, bytes(4 * k))
    # every bucket, in order (copied), with the non-member bucket -1 first and one flag
    dense = array(U32, [0, 0, 0, 1, 1, 2, 10, 0, 2, 2, 20, 0, 3, 2, 30, 3, 4, 2, 40, 0])
    assert _spread(dense, n, x, ordinal, first=True) == [(-1, 1), (2, 3)]
    assert list(n) == [2, 2, 2, 2] and list(x) == [10, 20, 30, 40]
    # a second slice with some buckets only: summed and XORed
    assert _spread(array(U32, [2, 1, 7, 0, 4, 3, 1, 0]), n, x, ordinal, first=False) == []
    assert list(n) == [2, 3, 2, 5] and list(x) == [10, 20 ^ 7, 30, 40 ^ 1]
    # a sparse first result
    n2, x2 = array(U32, bytes(4 * k)), array(U32, bytes(4 * k))
    assert _spread(array(U32, [3, 1, 9, 0]), n2, x2, ordinal, first=True) == []
    assert list(n2) == [0, 0, 1, 0] and list(x2) == [0, 0, 9, 0]
    # bucket -1 anywhere else (never the case in bucket order) is still never added to a bucket
    assert _spread(array(U32, [1, 1, 5, 0, 0, 3, 3, 1]), n2, x2, ordinal, first=False) == [(-1, 1)]
    assert list(n2) == [1, 0, 1, 0] and list(x2) == [5, 0, 9, 0]


def test_authority_setting_and_arguments():
    assert config_for("mysql+pymysql://u@h/db").reconcile.authority == "lowest"
    assert (
        config_for("mysql+pymysql://u@h/db", reconcile={"authority": "blog:2"}).reconcile.authority_blog == 2
    )
    with pytest.raises(ConfigError, match="reconcile.authority"):
        config_for("mysql+pymysql://u@h/db", reconcile={"authority": "highest"})
    with pytest.raises(ConfigError, match="reconcile.color"):
        config_for("mysql+pymysql://u@h/db", reconcile={"color": "x"})
    assert parse_qty(" 12 ") == Decimal(12) and parse_qty("-2") == Decimal("-2")
    # issue 13: a fraction is refused (WooCommerce keeps whole units: wc_stock_amount); was accepted.
    for bad in ("", "ten", "nan", "inf", "-2.5"):
        with pytest.raises(ValueError):
            parse_qty(bad)
    assert parse_since("2026-05-01") == datetime(2026, 5, 1)
    assert parse_since("2h", datetime(2026, 5, 1, 12, tzinfo=__import__("datetime").UTC)) == datetime(
        2026, 5, 1, 10
    )
    with pytest.raises(BadArgument):
        parse_since("yesterday")


def test_excluded_origin_is_neither_propagated_nor_repaired():
    """[sync] exclude_skus: an excluded member's change is left to the shop (no write, no repair, no history)."""
    members = [Member(1, 10, "GIFT-1", "excluded"), Member(2, 20, "GIFT-1", "linked")]
    c = Change(1, 1, 10, "_stock", "U", "5", "4")
    plan = plan_batch(
        [c],
        {(1, 10): members, (2, 20): members},
        {(1, 10): Facts(stock="4"), (2, 20): Facts(stock="5")},
        [1, 2],
    )
    assert plan.writes == [] and plan.refresh == {} and plan.applied == []
    assert [n.reason for n in plan.notes] == ["origin is excluded (sync.exclude_skus)"]


class _FakeEngine:
    """Answers the checksum pass's one direct query: group ids 1..k, a 16 MB max_allowed_packet."""

    def __init__(self, k: int) -> None:
        self.k = k

    def connect(self) -> Any:
        engine = self

        class _Conn:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def execute(self, *a: object, **kw: object) -> Any:
                return SimpleNamespace(one=lambda: (1, engine.k, 16 << 20))

            def rollback(self) -> None:
                return None

        return _Conn()


def _scan(blog_id: int, k: int, present: dict[int, tuple[int, int, int, int]]) -> _BlogScan:
    cols = [array(U32, bytes(4 * k)) for _ in range(4)]
    for i, values in present.items():
        for col, v in zip(cols, values, strict=True):
            col[i] = v
    return _BlogScan(blog_id, *cols)


def _checksum(scans: list[_BlogScan]) -> tuple[list[int], list[int]]:
    """Buckets to examine, and the per-bucket blog counts (0, 1, 2 = several), of these scans."""
    k = len(scans[0].n_m)
    scope = Scope("wp_", {s.blog_id: SimpleNamespace(blog_id=s.blog_id) for s in scans})
    auditor = Auditor(_FakeEngine(k), scope)  # type: ignore[arg-type]
    by_blog = {s.blog_id: s for s in scans}
    auditor._scan_blog = by_blog.__getitem__  # type: ignore[method-assign]
    return auditor.checksum(), list(auditor._lone)


def test_checksum_comparison_in_c_and_bucket_by_bucket_agree():
    k = 6
    same = dict.fromkeys(range(k), (1, 11, 4, 44))
    # every blog has members in every bucket: compared as whole arrays
    assert _checksum([_scan(b, k, same) for b in (1, 2, 3)]) == ([], [2] * k)
    drifted = {**same, 3: (1, 11, 4, 45)}
    assert _checksum([_scan(1, k, same), _scan(2, k, drifted), _scan(3, k, same)]) == ([3], [2] * k)
    # blogs without members in some buckets: bucket by bucket; bucket 5 has members on blog 2 only
    sparse = {i: v for i, v in drifted.items() if i not in (0, 5)}
    sparse[1] = (2, 12, 8, 88)
    scans = [_scan(1, k, sparse), _scan(2, k, same), _scan(3, k, {**same, 5: (0, 0, 0, 0)})]
    assert _checksum(scans) == ([1, 3], [2, 2, 2, 2, 2, 1])
    # the first blog full, a later one sparse, then a full one again (references partly set)
    scans = [_scan(1, k, same), _scan(2, k, {2: (1, 11, 4, 44)}), _scan(3, k, drifted)]
    assert _checksum(scans) == ([3], [2] * k)
