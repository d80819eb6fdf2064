"""Attribution: which order, admin user or other writer made a captured stock change.

Recorded by syncd's own triggers inside the shop's statements, never guessed from times:

* ``{base}syncd_src_b{N}_oi_*`` on ``{prefix}woocommerce_order_itemmeta``: WooCommerce writes the
  line item's ``_reduced_stock`` on the connection that reduced the stock (payment, checkout),
  ``_restock_refunded_items`` for a refund, and deletes ``_reduced_stock`` on a cancellation
  (traces 04, 05, 07): one ``{base}syncd_source`` row (blog, connection id, order, product).
* ``{base}syncd_src_b{N}_pm_*`` on ``{prefix}postmeta``: wp-admin's product save writes
  ``_edit_last`` (the user id) on the connection that then saves ``_stock`` (trace 03b).
* ``{base}syncd_src_change`` on ``{base}syncd_change``: the connection that captured each
  ``_stock`` change, kept after the change row is applied (``{base}syncd_change_conn``).

A history origin row (change id) is matched to a source row of the same blog, connection id and
product (or the variation's parent, for an admin save), by the order of that connection's own
statements (:func:`match`). The two must also be within an hour of each other: not to guess,
but because the server reuses connection ids after a restart. An origin row with no match was made by another writer (an import, the REST API, SQL)
when its connection was recorded, else it is "not recorded" (before the triggers existed, poll
mode, keys other than ``_stock``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.db import table, validate_prefix
from syncd.network import Blog
from syncd.sqlfiles import split_statements, sql_text

log = structlog.get_logger("syncd.attribution")

VERSION = 1
#: Which kind wins when one connection recorded several for a product.
_RANK = {"order": 0, "refund": 1, "restock": 2, "admin": 3}


def change_trigger_name(base: str) -> str:
    return f"{validate_prefix(base)}syncd_src_change"


def blog_trigger_prefix(base: str, blog_id: int) -> str:
    return f"{validate_prefix(base)}syncd_src_b{int(blog_id)}"


def render_blog(base: str, blog: Blog) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) for one blog (pure)."""
    validate_prefix(blog.prefix)
    text = (
        sql_text("attribution_triggers.sql")
        .replace("{version}", f"v{VERSION}")
        .replace("{name}", blog_trigger_prefix(base, blog.blog_id))
        .replace("{prefix}", blog.prefix)
        .replace("{base}", base)
        .replace("{blog_id}", str(int(blog.blog_id)))
    )
    out = []
    for stmt in split_statements(text):
        sql = "\n".join(ln for ln in stmt.splitlines() if not ln.lstrip().startswith("--")).strip()
        name = sql.split("`")[1]
        out.append((name, sql))
    return out


def render_change(base: str) -> tuple[str, str]:
    name = change_trigger_name(base)
    text = sql_text("attribution_change_trigger.sql").replace("{version}", f"v{VERSION}")
    text = text.replace("{name}", name).replace("{base}", validate_prefix(base))
    return name, "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--")).strip()


def _installed(conn: sa.Connection, base: str) -> set[str]:
    rows = conn.execute(
        sa.text(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE :p"
        ),
        {"p": validate_prefix(base).replace("_", "\\_") + "syncd\\_src\\_%"},
    )
    return {r[0] for r in rows}


def install(conn: sa.Connection, base: str, blogs: Iterable[Blog]) -> int:
    """Create the missing attribution triggers (idempotent). Returns how many were created. Blogs
    without WooCommerce's order item tables are skipped."""
    have = _installed(conn, base)
    wanted = [render_change(base)]
    for blog in blogs:
        if _has_table(conn, blog.prefix + "woocommerce_order_itemmeta"):
            wanted += render_blog(base, blog)
    created = 0
    for name, sql in wanted:
        if name not in have:
            conn.exec_driver_sql(sql)
            created += 1
    conn.commit()
    return created


def uninstall(conn: sa.Connection, base: str) -> list[str]:
    names = sorted(_installed(conn, base))
    for name in names:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
    return names


def _has_table(conn: sa.Connection, name: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
            ),
            {"t": name},
        ).scalar_one()
    )


def lookup(conn: sa.Connection, base: str, change_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """change id -> {'kind', 'order_id', 'user_id'} for the changes a source row was recorded for."""
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(change_ids), 500):
        part = ", ".join(str(int(c)) for c in change_ids[start : start + 500])
        changes = conn.execute(
            sa.text(
                f"SELECT c2.change_id, c2.blog_id, c2.conn_id, c2.post_id, c2.captured_at, COALESCE(m.parent_id, 0) "
                f"FROM {table(base, 'syncd_change_conn')} c JOIN {table(base, 'syncd_change_conn')} c2 "
                "ON c2.blog_id = c.blog_id AND c2.conn_id = c.conn_id AND c2.post_id = c.post_id "
                "AND c2.captured_at BETWEEN c.captured_at - INTERVAL 1 HOUR AND c.captured_at + INTERVAL 1 HOUR "
                f"LEFT JOIN {table(base, 'syncd_member')} m ON m.blog_id = c.blog_id AND m.post_id = c.post_id "
                f"WHERE c.change_id IN ({part})"
            )
        ).all()
        sources = conn.execute(
            sa.text(
                f"SELECT DISTINCT s.blog_id, s.conn_id, s.product_id, s.kind, s.order_id, s.user_id, s.recorded_at "
                f"FROM {table(base, 'syncd_change_conn')} c "
                f"LEFT JOIN {table(base, 'syncd_member')} m ON m.blog_id = c.blog_id AND m.post_id = c.post_id "
                f"JOIN {table(base, 'syncd_source')} s ON s.blog_id = c.blog_id AND s.conn_id = c.conn_id "
                "AND (s.product_id = c.post_id OR (s.kind = 'admin' AND s.product_id = m.parent_id AND m.parent_id <> 0)) "
                "AND s.recorded_at BETWEEN c.captured_at - INTERVAL 1 HOUR AND c.captured_at + INTERVAL 1 HOUR "
                f"WHERE c.change_id IN ({part})"
            )
        ).all()
        wanted = {int(c) for c in change_ids[start : start + 500]}
        found = match(changes, sources)
        for row in changes:
            cid = int(row[0])
            if cid in wanted:  # recorded: the matched source, or kind None (another writer)
                out[cid] = found.get(cid, {"kind": None, "order_id": 0, "user_id": 0})
    return out


def match(changes: Sequence[Sequence[Any]], sources: Sequence[Sequence[Any]]) -> dict[int, dict[str, Any]]:
    """Pair stock changes with source rows of the same blog, connection and product (pure).

    ``changes``: (change id, blog, conn, post, captured_at, parent id); ``sources``: (blog, conn,
    product, kind, order id, user id, recorded_at). WooCommerce writes an order's item meta after the
    stock change it made, and wp-admin writes ``_edit_last`` before it (traces 04, 05, 07, 03b); so a
    change takes the first order/refund/restock row recorded after it and before the connection's
    next change of that product, or else the last admin row recorded before it and after the
    connection's previous change of that product."""
    by_key: dict[tuple[int, int, int], list[tuple[datetime, int]]] = {}
    parents: dict[int, int] = {}
    for cid, blog, conn_id, post, at, parent in changes:
        by_key.setdefault((int(blog), int(conn_id), int(post)), []).append((at, int(cid)))
        parents[int(cid)] = int(parent or 0)
    out: dict[int, dict[str, Any]] = {}
    for (blog, conn_id, post), seq in by_key.items():
        seq = sorted(set(seq))
        for i, (at, cid) in enumerate(seq):
            before = seq[i - 1][0] if i else None
            after = seq[i + 1][0] if i + 1 < len(seq) else None
            products = {post, parents[cid]} - {0}
            mine = [
                s for s in sources if int(s[0]) == blog and int(s[1]) == conn_id and int(s[2]) in products
            ]
            orders = [
                s
                for s in mine
                if s[3] != "admin" and int(s[2]) == post and s[6] >= at and (after is None or s[6] < after)
            ]
            admins = [s for s in mine if s[3] == "admin" and s[6] <= at and (before is None or s[6] > before)]
            if orders:
                s = min(orders, key=lambda r: (r[6], _RANK.get(r[3], 9)))
            elif admins:
                s = max(admins, key=lambda r: r[6])
            else:
                continue
            out[cid] = {"kind": s[3], "order_id": int(s[4]), "user_id": int(s[5])}
    return out


def prune(conn: sa.Connection, base: str, days: int) -> None:
    """Forget attribution rows older than history's retention (the caller commits)."""
    for name, column in (("syncd_source", "recorded_at"), ("syncd_change_conn", "captured_at")):
        conn.execute(
            sa.text(f"DELETE FROM {table(base, name)} WHERE {column} < UTC_TIMESTAMP() - INTERVAL :d DAY"),
            {"d": days},
        )


def describe(role: str, source: str | None, origin: tuple[int, int], found: dict[str, Any] | None) -> str:
    """The source of one history row, in words (pure; shown by ``syncd history`` and the dashboard)."""
    if source:
        kind, _, who = source.partition(":")
        return f"{kind} user {who}" if who else source
    if role == "copy":
        return f"copy of {origin[0]}:{origin[1]}"
    if role != "origin":
        return role
    if found is None:  # no connection recorded for it: before attribution, poll mode, not _stock
        return "not recorded"
    if found["kind"] is None:
        return "other writer (import, REST, SQL)"
    if found["kind"] == "admin":
        return f"admin user #{found['user_id']}"
    label = {"order": "order", "refund": "refund of order", "restock": "cancelled order"}.get(
        found["kind"], found["kind"]
    )
    return f"{label} #{found['order_id']}"
