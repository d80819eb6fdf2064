"""The price group's pure rules (syncd.fields.price_rules), without a database.

Each case names the recorded fixture it comes from, or the WooCommerce source function where no
fixture covers it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from syncd.fields import price_rules as r
from syncd.fields.price import PriceGroup

# Fixture 15 was recorded on 2026-12-06 09:58 UTC (blog 1, gmt_offset 0).
NOW = int(datetime(2026, 12, 6, 9, 58, 40, tzinfo=UTC).timestamp())
TODAY_START = 1796515200  # 2026-12-06 00:00:00 (fixture 15 A step 2 'from')
FUTURE_FROM, FUTURE_TO = 1797379200, 1798329599  # +10 days 00:00:00, +20 days 23:59:59 (15 A step 1)
LATER_TO = 1799193599  # +30 days 23:59:59 (15 A step 2 'to')


def values(
    regular: str | None = "9.50", sale: str | None = None, start: int | None = None, end: int | None = None
):
    return {
        r.REGULAR: regular,
        r.SALE: sale,
        r.DATE_FROM: None if start is None else str(start),
        r.DATE_TO: None if end is None else str(end),
    }


# --------------------------------------------------------------------------- active price


@pytest.mark.parametrize(
    ("vals", "expected", "source"),
    [
        (values("11.00"), "11.00", "11 A step 1: regular only"),
        (values("11.00", "8.00"), "8.00", "11 A step 2: sale without dates runs at once"),
        (values("9.50", "7.00", FUTURE_FROM, FUTURE_TO), "9.50", "15 A step 1: future sale"),
        (values("9.50", "7.00", TODAY_START, LATER_TO), "7.00", "15 A step 2: dates cover now"),
        (values("9.50"), "9.50", "15 A step 3: sale removed"),
        (values("9.50", "7.00", NOW - 10, None), "7.00", "15 B/C: start passed (cron / action)"),
        (values("9.50", "7.00", None, NOW - 1), "9.50", "is_on_sale(): 'to' in the past"),
        (values("9.50", "9.50"), "9.50", "is_on_sale(): regular must be above sale"),
        (values("", "5.00"), "", "is_on_sale(): '' is never above a numeric string"),
        (values(None), "", "no regular price: _price ''"),
        (values("10", "9.5"), "9.5", "texts kept as stored"),
    ],
)
def test_active_price(vals: dict[str, str | None], expected: str, source: str) -> None:
    assert r.active_price(vals, NOW) == expected, source


def test_sale_boundaries_are_inclusive() -> None:
    # is_on_sale(): 'from' > now and 'to' < now end a sale, so both boundary seconds are on sale.
    assert r.is_on_sale(values("9.50", "7.00", NOW, NOW), NOW)
    assert not r.is_on_sale(values("9.50", "7.00", NOW + 1, None), NOW)
    assert not r.is_on_sale(values("9.50", "7.00", None, NOW - 1), NOW)


# --------------------------------------------------------------------------- problems


@pytest.mark.parametrize(
    ("vals", "field", "fragment"),
    [
        (values("abc"), r.REGULAR, "not a number"),
        (values("1,99"), r.REGULAR, "decimal comma"),
        (values("9.50", "1,99"), r.SALE, "decimal comma"),
        (values("-1"), r.REGULAR, "negative"),
        (values("9.50", "-0.50"), r.SALE, "negative"),
        (values("1e3"), r.REGULAR, "not a number"),
        (values(" 9.50"), r.REGULAR, "not a number"),
        (values("9.50", "12.00"), r.SALE, "above the regular price"),
        ({**values("9.50", "7.00"), r.DATE_FROM: "2026-12-16"}, r.DATE_FROM, "malformed sale date"),
        ({**values("9.50", "7.00"), r.DATE_TO: "-5"}, r.DATE_TO, "malformed sale date"),
        ({**values("9.50", "7.00"), r.DATE_TO: "1.5"}, r.DATE_TO, "malformed sale date"),
    ],
)
def test_bad_values_are_problems(vals: dict[str, str | None], field: str, fragment: str) -> None:
    found = r.problems(vals)
    assert any(f == field and fragment in reason for f, reason in found), found
    assert PriceGroup().problems(vals) == found


@pytest.mark.parametrize(
    "vals",
    [
        values("9.50"),
        values("11", "8"),
        values(".5"),
        values("9.50", "9.50"),
        values(None, None),
        values("", ""),
        values("9.50", "7.00", FUTURE_FROM, FUTURE_TO),
        values("", "7.00"),  # odd but harmless: never on sale
    ],
)
def test_good_values_have_no_problems(vals: dict[str, str | None]) -> None:
    assert r.problems(vals) == []


# --------------------------------------------------------------------------- variable parents


@pytest.mark.parametrize(
    ("children", "expected", "source"),
    [
        (["39.00", "36.00", "42.00"], ["36.00", "39.00", "42.00"], "16 step 1"),
        (["39.00", "36.00", "35.00"], ["35.00", "36.00", "39.00"], "16 step 2"),
        (["39.00", "39.00", "45.00"], ["39.00", "45.00"], "11 B"),
        (["10", "9.5", "", None, "100"], ["9.5", "10", "100"], "sync_price(): empty skipped, numeric sort"),
        (["5", "5.00"], ["5", "5.00"], "sync_price(): array_unique compares text, sort is stable"),
        ([], [], "no visible child: no row"),
    ],
)
def test_parent_prices(children: list[str | None], expected: list[str], source: str) -> None:
    assert r.parent_prices(children) == expected, source


# --------------------------------------------------------------------------- scheduled sales


def test_actions_queued_for_future_dates_only() -> None:
    # 15 A step 1: both in the future; 15 A step 2: start today 00:00 (past): end only.
    assert r.scheduled_actions(str(FUTURE_FROM), str(FUTURE_TO), NOW) == [
        (r.START_HOOK, FUTURE_FROM),
        (r.END_HOOK, FUTURE_TO),
    ]
    assert r.scheduled_actions(str(TODAY_START), str(LATER_TO), NOW) == [(r.END_HOOK, LATER_TO)]
    assert r.scheduled_actions(None, None, NOW) == []


def test_date_writes_follow_woocommerce_order() -> None:
    empty = values("9.50")
    future = values("9.50", "7.00", FUTURE_FROM, FUTURE_TO)
    running = values("9.50", "7.00", TODAY_START, LATER_TO)
    f, t = r.DATE_FROM, r.DATE_TO
    # 15 A step 1: 'from' inserted (start queued alone), then 'to' (start re-queued + end).
    assert r.date_writes(empty, future) == [
        {f: str(FUTURE_FROM), t: None},
        {f: str(FUTURE_FROM), t: str(FUTURE_TO)},
    ]
    # 15 A step 2: 'from' updated while the old 'to' still stands, then 'to'.
    assert r.date_writes(future, running) == [
        {f: str(TODAY_START), t: str(FUTURE_TO)},
        {f: str(TODAY_START), t: str(LATER_TO)},
    ]
    # 15 A step 3: both deleted, 'from' first.
    assert r.date_writes(running, empty) == [{f: None, t: str(LATER_TO)}, {f: None, t: None}]
    assert r.date_writes(running, {**running, r.SALE: "6.00"}) == []


def test_action_row_texts_match_fixture_15() -> None:
    assert r.action_args(12) == '{"product_id":12}'
    assert r.simple_schedule(1797379200) == (
        'O:30:"ActionScheduler_SimpleSchedule":2:{s:22:"\0*\0scheduled_timestamp";i:1797379200;'
        's:41:"\0ActionScheduler_SimpleSchedule\0timestamp";i:1797379200;}'
    )
