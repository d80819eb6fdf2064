"""A product's scheduled-sale actions in one blog's Action Scheduler tables, as WooCommerce queues them.

Since WooCommerce 10.5 a sale starts and ends through per-product Action Scheduler actions
(``wc_product_start_scheduled_sale`` / ``wc_product_end_scheduled_sale``, group
``woocommerce-sales``, args ``{"product_id":N}``), re-queued by PHP hooks on every write of a sale
date row. Dates written straight into the database queue nothing, so a copy's sale would start
only with the daily ``wc_scheduled_sales()`` cron, hours late. When syncd writes sale dates into a
copy it queues the same actions itself (:func:`requeue`), with the same rows WooCommerce writes
(fixture 15: ``actionscheduler_actions`` pending/canceled rows, the ``woocommerce-sales`` group,
``actionscheduler_logs`` "action created" / "action canceled"). When the copy's action runs,
WooCommerce's own handler applies the sale from the copy's (identical) values, so the copy
switches ``_price`` at the same moment as the origin and syncd never competes with those jobs.

Everything runs in the caller's transaction, with bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from syncd import woo
from syncd.db import table
from syncd.fields import price_rules as rules
from syncd.network import Blog

TABLES = ("actionscheduler_actions", "actionscheduler_groups", "actionscheduler_logs")


def tables_present(conn: sa.Connection, blog: Blog) -> bool:
    """Whether the blog has the three Action Scheduler tables syncd writes."""
    names = [f"{blog.prefix}{t}" for t in TABLES]
    row = conn.exec_driver_sql(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        f"AND TABLE_NAME IN ({', '.join(['%s'] * len(names))})",
        tuple(names),
    ).one()
    return int(row[0]) == len(names)


def _dates(blog: Blog, ts: int) -> tuple[str, str]:
    """(GMT, local) ``Y-m-d H:i:s`` of a unix time; local = the site's time zone, as
    ``ActionScheduler_TimezoneHelper`` computes the ``*_local`` columns."""
    utc = datetime.fromtimestamp(ts, UTC)
    local = utc.astimezone(woo.wp_timezone(blog.option("timezone_string"), blog.option("gmt_offset")))
    return woo.mysql_datetime(utc), woo.mysql_datetime(local)


def _group_id(conn: sa.Connection, blog: Blog) -> int:
    """``ActionScheduler_DBStore::get_group_id()``: the slug's row, created when missing. Like
    Action Scheduler, no lock: two first writers may both create it (harmless: the slug has no
    unique key and lookups go by slug), where a locking read would make them deadlock."""
    groups = table(blog.prefix, "actionscheduler_groups")
    row = conn.exec_driver_sql(
        f"SELECT group_id FROM {groups} WHERE slug = %s ORDER BY group_id LIMIT 1",
        (rules.SALES_GROUP,),
    ).first()
    if row is not None:
        return int(row[0])
    return int(
        conn.exec_driver_sql(f"INSERT INTO {groups} (slug) VALUES (%s)", (rules.SALES_GROUP,)).lastrowid
    )


def _log(conn: sa.Connection, blog: Blog, action_id: int, message: str, now_ts: int) -> None:
    gmt, local = _dates(blog, now_ts)
    conn.exec_driver_sql(
        f"INSERT INTO {table(blog.prefix, 'actionscheduler_logs')} "
        "(action_id, message, log_date_gmt, log_date_local) VALUES (%s, %s, %s, %s)",
        (action_id, message, gmt, local),
    )


def _cancel_pending(conn: sa.Connection, blog: Blog, product_id: int, now_ts: int) -> list[int]:
    """``as_unschedule_all_actions()`` for both hooks (start first): every pending action of the
    product in the group (matched by slug, as Action Scheduler's query does) becomes
    ``canceled``, each with its log line."""
    actions = table(blog.prefix, "actionscheduler_actions")
    groups = table(blog.prefix, "actionscheduler_groups")
    cancelled: list[int] = []
    for hook in (rules.START_HOOK, rules.END_HOOK):
        ids = [
            int(r[0])
            for r in conn.exec_driver_sql(
                f"SELECT action_id FROM {actions} WHERE hook = %s AND status = 'pending' AND args = %s "
                f"AND group_id IN (SELECT group_id FROM {groups} WHERE slug = %s) "
                "ORDER BY scheduled_date_gmt, action_id FOR UPDATE",
                (hook, rules.action_args(product_id), rules.SALES_GROUP),
            )
        ]
        for action_id in ids:
            conn.exec_driver_sql(
                f"UPDATE {actions} SET status = 'canceled' WHERE action_id = %s", (action_id,)
            )
            _log(conn, blog, action_id, "action canceled", now_ts)
        cancelled += ids
    return cancelled


def _queue(
    conn: sa.Connection, blog: Blog, product_id: int, group_id: int, hook: str, ts: int, now_ts: int
) -> int:
    """``as_schedule_single_action()``: a pending row (priority 10) and its "action created" log."""
    gmt, local = _dates(blog, ts)
    action_id = int(
        conn.exec_driver_sql(
            f"INSERT INTO {table(blog.prefix, 'actionscheduler_actions')} "
            "(hook, status, scheduled_date_gmt, scheduled_date_local, schedule, group_id, priority, args) "
            "VALUES (%s, 'pending', %s, %s, %s, %s, 10, %s)",
            (hook, gmt, local, rules.simple_schedule(ts), group_id, rules.action_args(product_id)),
        ).lastrowid
    )
    _log(conn, blog, action_id, "action created", now_ts)
    return action_id


def requeue(
    conn: sa.Connection,
    blog: Blog,
    product_id: int,
    current: Mapping[str, str | None],
    wanted: Mapping[str, str | None],
    now_ts: int,
) -> dict[str, list[int]]:
    """Queue and cancel what WooCommerce's date-meta hooks would for a save that changes the sale
    dates from ``current`` to ``wanted`` (:func:`syncd.fields.price_rules.date_writes`: one
    unschedule + schedule round per date row written). Returns the action ids queued and cancelled."""
    rounds = rules.date_writes(current, wanted)
    out: dict[str, list[int]] = {"queued": [], "cancelled": []}
    if not rounds:
        return out
    group_id = _group_id(conn, blog)
    for dates in rounds:
        out["cancelled"] += _cancel_pending(conn, blog, product_id, now_ts)
        for hook, ts in rules.scheduled_actions(dates[rules.DATE_FROM], dates[rules.DATE_TO], now_ts):
            out["queued"].append(_queue(conn, blog, product_id, group_id, hook, ts, now_ts))
    return out
