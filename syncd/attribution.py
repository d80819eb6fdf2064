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
product (or the variation's parent, for an admin save). The match also requires the two to be
within an hour of each other: not to guess, but because the server reuses connection ids after
a restart. An origin row with no match was made by another writer (an import, the REST API, SQL)
when attribution was recording at that time, else it is "not recorded".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.db import table, validate_prefix
from syncd.network import Blog
from syncd.schema import get_meta, set_meta
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
    if get_meta(conn, base, "attribution_since") is None:
        set_meta(conn, base, "attribution_since", datetime.now(UTC).replace(tzinfo=None).isoformat())
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


def recording_since(conn: sa.Connection, base: str) -> datetime | None:
    raw = get_meta(conn, base, "attribution_since")
    return datetime.fromisoformat(raw) if raw else None


def lookup(conn: sa.Connection, base: str, change_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """change id -> {'kind', 'order_id', 'user_id'} for the changes a source row was recorded for."""
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(change_ids), 1000):
        part = [int(c) for c in change_ids[start : start + 1000]]
        rows = conn.execute(
            sa.text(
                f"SELECT c.change_id, s.kind, s.order_id, s.user_id FROM {table(base, 'syncd_change_conn')} c "
                f"LEFT JOIN {table(base, 'syncd_member')} m ON m.blog_id = c.blog_id AND m.post_id = c.post_id "
                f"JOIN {table(base, 'syncd_source')} s ON s.blog_id = c.blog_id AND s.conn_id = c.conn_id "
                "AND (s.product_id = c.post_id OR (s.kind = 'admin' AND s.product_id = m.parent_id AND m.parent_id <> 0)) "
                "AND s.recorded_at BETWEEN c.captured_at - INTERVAL 1 HOUR AND c.captured_at + INTERVAL 1 HOUR "
                f"WHERE c.change_id IN ({', '.join(map(str, part))})"
            )
        )
        for cid, kind, order_id, user_id in rows:
            best = out.get(int(cid))
            if best is None or _RANK.get(kind, 9) < _RANK.get(best["kind"], 9):
                out[int(cid)] = {"kind": kind, "order_id": int(order_id), "user_id": int(user_id)}
    return out


def prune(conn: sa.Connection, base: str, days: int) -> None:
    """Forget attribution rows older than history's retention (the caller commits)."""
    for name, column in (("syncd_source", "recorded_at"), ("syncd_change_conn", "captured_at")):
        conn.execute(
            sa.text(f"DELETE FROM {table(base, name)} WHERE {column} < UTC_TIMESTAMP() - INTERVAL :d DAY"),
            {"d": days},
        )


def describe(
    role: str,
    source: str | None,
    change_id: int,
    origin: tuple[int, int],
    found: dict[str, Any] | None,
    recorded: bool,
) -> str:
    """The source of one history row, in words (pure; shown by ``syncd history`` and the dashboard)."""
    if source:
        kind, _, who = source.partition(":")
        return f"{kind} user {who}" if who else source
    if role == "copy":
        return f"copy of {origin[0]}:{origin[1]}"
    if role != "origin":
        return role
    if found is None:
        return "other writer (import, REST, SQL)" if recorded else "not recorded"
    if found["kind"] == "admin":
        return f"admin user #{found['user_id']}"
    label = {"order": "order", "refund": "refund of order", "restock": "cancelled order"}.get(
        found["kind"], found["kind"]
    )
    return f"{label} #{found['order_id']}"
