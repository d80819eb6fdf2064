"""The price group on a real server, beyond the recordings: bad values, a blog without Action
Scheduler tables, variable parents as targets, hidden out-of-stock variations, no-op writes, the
site time zone in Action Scheduler dates. Each case names the WooCommerce source it is based on
where no fixture records it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.db import table
from syncd.fields import price_rules as rules
from syncd.fields.group import Problem, Target
from syncd.fields.price import PriceGroup
from syncd.network import Blog, discover
from tests.integration import derived_helpers as h
from tests.integration.test_price_golden import AS_TABLES, _as_snapshot

NOW = datetime(2026, 12, 6, 9, 58, 40, tzinfo=UTC)  # fixture 15's recording time
FUTURE_FROM, FUTURE_TO = "1797379200", "1798329599"  # fixture 15 A step 1


def _blog(net: Any, blog_id: int, **options: str) -> Blog:
    with net.engine.connect() as conn:
        blog = discover(conn, net.prefix).blog(blog_id)
    return replace(blog, options={**blog.options, **options}) if options else blog


def _target(conn: sa.Connection, blog: Blog, post_id: int, sku: str) -> Target:
    post_type, parent = conn.exec_driver_sql(
        f"SELECT post_type, post_parent FROM {table(blog.prefix, 'posts')} WHERE ID = %s", (post_id,)
    ).one()
    return Target(blog, post_id, sku, str(post_type), int(parent))


def _write(net: Any, blog: Blog, post_id: int, sku: str, wanted: dict[str, str | None]) -> list[Problem]:
    group = PriceGroup(clock=lambda: NOW)
    with net.engine.begin() as conn:
        current = group.read(conn, blog, [post_id])[post_id]
        return group.write(conn, _target(conn, blog, post_id, sku), current, {**current, **wanted})


def _meta(net: Any, blog: Blog, post_id: int, key: str) -> list[str | None]:
    with net.engine.connect() as conn:
        return [
            r[0]
            for r in conn.exec_driver_sql(
                f"SELECT meta_value FROM {table(blog.prefix, 'postmeta')} WHERE post_id = %s AND meta_key = %s "
                "ORDER BY meta_id",
                (post_id, key),
            )
        ]


@pytest.mark.parametrize(
    ("wanted", "field"),
    [
        ({rules.REGULAR: "abc"}, rules.REGULAR),
        ({rules.REGULAR: "1,99"}, rules.REGULAR),
        ({rules.REGULAR: "-3.00"}, rules.REGULAR),
        ({rules.SALE: "12.00"}, rules.SALE),  # regular 9.50
        ({rules.SALE: "7.00", rules.DATE_FROM: "16/12/2026"}, rules.DATE_FROM),
        ({rules.SALE: "7.00", rules.DATE_TO: "tomorrow"}, rules.DATE_TO),
    ],
)
def test_bad_values_are_reported_and_nothing_is_written(
    wp_network: Any, wanted: dict[str, str], field: str
) -> None:
    blog = _blog(wp_network, 2)
    before, as_before = h.snapshot(wp_network.url, blog.prefix), _as_snapshot(wp_network, 2)
    problems = _write(wp_network, blog, 23, "MUG", wanted)  # MUG on blog 2
    assert [(p.blog_id, p.post_id, p.sku, p.field) for p in problems] == [(2, 23, "MUG", field)]
    assert problems[0].reason
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}
    assert _as_snapshot(wp_network, 2) == as_before


def test_missing_action_scheduler_tables_skip_a_date_change(wp_network: Any) -> None:
    blog = _blog(wp_network, 3)
    with wp_network.engine.begin() as conn:
        for t in AS_TABLES:
            conn.exec_driver_sql(f"DROP TABLE {table(blog.prefix, t)}")
    before = h.snapshot(wp_network.url, blog.prefix)
    wanted = {rules.SALE: "7.00", rules.DATE_FROM: FUTURE_FROM, rules.DATE_TO: FUTURE_TO}
    problems = _write(wp_network, blog, 14, "MUG", wanted)  # MUG on blog 3
    assert [(p.blog_id, p.post_id, p.sku, p.field) for p in problems] == [(3, 14, "MUG", rules.DATE_FROM)]
    assert "Action Scheduler" in problems[0].reason
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}
    # A change without dates needs no actions: written.
    assert _write(wp_network, blog, 14, "MUG", {rules.REGULAR: "11.00"}) == []
    assert _meta(wp_network, blog, 14, rules.PRICE) == ["11.00"]


def test_second_write_with_the_same_values_writes_nothing(wp_network: Any) -> None:
    blog = _blog(wp_network, 2)
    wanted = {rules.SALE: "7.00", rules.DATE_FROM: FUTURE_FROM, rules.DATE_TO: FUTURE_TO}
    assert _write(wp_network, blog, 23, "MUG", wanted) == []
    before, as_before = h.snapshot(wp_network.url, blog.prefix), _as_snapshot(wp_network, 2)
    assert _write(wp_network, blog, 23, "MUG", wanted) == []
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}
    assert _as_snapshot(wp_network, 2) == as_before


def test_empty_text_and_no_row_are_the_same_value(wp_network: Any) -> None:
    """``update_or_delete_post_meta()`` deletes a row set to '' (fixture 15 A step 3), so ''
    and no row never differ: read() returns None for both."""
    blog = _blog(wp_network, 2)
    with wp_network.engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {table(blog.prefix, 'postmeta')} (post_id, meta_key, meta_value) VALUES (23, %s, '')",
            (rules.SALE,),
        )
        assert PriceGroup().read(conn, blog, [23])[23][rules.SALE] is None
    before = h.snapshot(wp_network.url, blog.prefix)
    assert _write(wp_network, blog, 23, "MUG", {rules.SALE: None}) == []
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}


def test_variable_parent_target_is_left_alone(wp_network: Any) -> None:
    """A variable product holds no price of its own (``read_product_data()`` blanks it,
    ``sync_price()`` deletes the rows): its rows are never copied."""
    blog = _blog(wp_network, 2)
    before = h.snapshot(wp_network.url, blog.prefix)
    assert _write(wp_network, blog, 14, "HOODIE", {rules.REGULAR: "99.00"}) == []
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}


def test_trashed_target_is_left_alone(wp_network: Any) -> None:
    blog = _blog(wp_network, 2)
    with wp_network.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {table(blog.prefix, 'posts')} SET post_status = 'trash' WHERE ID = 23")
    before = h.snapshot(wp_network.url, blog.prefix)
    assert _write(wp_network, blog, 23, "MUG", {rules.REGULAR: "11.00"}) == []
    assert h.diff_snapshots(before, h.snapshot(wp_network.url, blog.prefix)) == {}


def test_hidden_out_of_stock_variation_does_not_count_for_the_parent(wp_network: Any) -> None:
    """``sync_price()`` reads the *visible* children (``read_children()``): with
    ``woocommerce_hide_out_of_stock_items = yes`` (blog 2) a variation with the ``outofstock``
    term does not count. HOODIE on blog 2: 14, variations S 15, M 16, L 17 (39, 39, 42)."""
    blog = _blog(wp_network, 2)
    p = blog.prefix
    with wp_network.engine.begin() as conn:
        tt = conn.exec_driver_sql(
            f"SELECT tt.term_taxonomy_id FROM {table(p, 'term_taxonomy')} tt JOIN {table(p, 'terms')} t "
            "ON t.term_id = tt.term_id WHERE tt.taxonomy = 'product_visibility' AND t.name = 'outofstock'"
        ).scalar_one()
        conn.exec_driver_sql(
            f"INSERT INTO {table(p, 'term_relationships')} (object_id, term_taxonomy_id) VALUES (17, %s)",
            (tt,),
        )
    assert _write(wp_network, blog, 16, "HOODIE-M", {rules.REGULAR: "36.00"}) == []
    assert _meta(wp_network, blog, 14, rules.PRICE) == ["36.00", "39.00"]  # L (42.00) hidden
    with wp_network.engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT min_price, max_price, onsale FROM {table(p, 'wc_product_meta_lookup')} WHERE product_id = 14"
        ).one()
    assert (str(row[0]), str(row[1]), int(row[2])) == ("36.0000", "39.0000", 0)


def test_action_scheduler_local_dates_use_the_site_time_zone(wp_network: Any) -> None:
    """``ActionScheduler_TimezoneHelper``: the ``*_local`` columns are in the site's zone."""
    blog = _blog(wp_network, 2, timezone_string="Europe/Paris")
    wanted = {rules.SALE: "7.00", rules.DATE_FROM: FUTURE_FROM, rules.DATE_TO: FUTURE_TO}
    assert _write(wp_network, blog, 23, "MUG", wanted) == []
    pending = sorted(
        (r["hook"], r["scheduled_date_gmt"], r["scheduled_date_local"], r["args"])
        for r in _as_snapshot(wp_network, 2)["actionscheduler_actions"].values()
        if r["status"] == "pending"
    )
    assert pending == [
        (rules.END_HOOK, "2026-12-26 23:59:59", "2026-12-27 00:59:59", '{"product_id":23}'),
        (rules.START_HOOK, "2026-12-16 00:00:00", "2026-12-16 01:00:00", '{"product_id":23}'),
    ]
    logs = _as_snapshot(wp_network, 2)["actionscheduler_logs"].values()
    assert {(r["log_date_gmt"], r["log_date_local"]) for r in logs} == {
        ("2026-12-06 09:58:40", "2026-12-06 10:58:40")
    }


def test_other_products_pending_actions_are_not_cancelled(wp_network: Any) -> None:
    """``as_unschedule_all_actions()`` is per hook, args and group: another product's actions stay."""
    blog = _blog(wp_network, 2)
    wanted = {rules.SALE: "7.00", rules.DATE_FROM: FUTURE_FROM, rules.DATE_TO: FUTURE_TO}
    assert _write(wp_network, blog, 23, "MUG", wanted) == []  # MUG
    assert _write(wp_network, blog, 24, "TSHIRT-RED", {**wanted, rules.SALE: "15.00"}) == []
    assert (
        _write(wp_network, blog, 23, "MUG", {rules.SALE: None, rules.DATE_FROM: None, rules.DATE_TO: None})
        == []
    )
    pending = sorted(
        (r["hook"], r["args"])
        for r in _as_snapshot(wp_network, 2)["actionscheduler_actions"].values()
        if r["status"] == "pending"
    )
    assert pending == [(rules.END_HOOK, '{"product_id":24}'), (rules.START_HOOK, '{"product_id":24}')]
    assert _meta(wp_network, blog, 23, rules.PRICE) == ["9.50"]
    assert _meta(wp_network, blog, 23, rules.SALE) == []


def test_pending_actions_of_a_duplicate_group_row_are_cancelled(wp_network: Any) -> None:
    """Action Scheduler creates the group row without a lock, so two rows may share the slug; its
    unschedule query matches the slug, not one row."""
    blog = _blog(wp_network, 2)
    groups, actions = (
        table(blog.prefix, "actionscheduler_groups"),
        table(blog.prefix, "actionscheduler_actions"),
    )
    with wp_network.engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {groups} (slug) VALUES ('woocommerce-sales'), ('woocommerce-sales')"
        )
        second = conn.exec_driver_sql(f"SELECT MAX(group_id) FROM {groups}").scalar_one()
        conn.exec_driver_sql(
            f"INSERT INTO {actions} (hook, status, scheduled_date_gmt, scheduled_date_local, schedule, group_id, "
            "priority, args) VALUES (%s, 'pending', '2026-12-26 23:59:59', '2026-12-26 23:59:59', %s, %s, 10, %s)",
            (rules.END_HOOK, rules.simple_schedule(int(FUTURE_TO)), second, rules.action_args(23)),
        )
    assert _write(wp_network, blog, 23, "MUG", {rules.SALE: "7.00", rules.DATE_TO: FUTURE_TO}) == []
    rows = _as_snapshot(wp_network, 2)["actionscheduler_actions"].values()
    assert sorted((r["group_id"] == str(second), r["status"]) for r in rows) == [
        (False, "pending"),
        (True, "canceled"),
    ]
