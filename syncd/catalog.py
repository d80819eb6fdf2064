"""Link groups: which products on which blogs are "the same thing".

Membership lives in ``{base}syncd_member`` (one row per product with a SKU), refreshed with
set-based SQL so that memory stays flat however large the catalogue is. A group is every
'linked' member sharing a link key; today the key is the SKU's collation weight (WooCommerce
compares SKUs through the lookup column's collation: 'tshirt-red' and 'TSHIRT-RED' are one SKU),
and later issues extend it (SKU + language, manual links) without changing the callers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from datetime import UTC, datetime

import sqlalchemy as sa

from syncd.db import table, validate_prefix
from syncd.network import Blog
from syncd.plan import Key, Member
from syncd.sqlfiles import sql_text

DEFAULT_COLLATION = "utf8mb4_unicode_520_ci"
_COLLATION_RE = re.compile(r"^[a-z0-9_]{1,64}$")


def sku_collation(conn: sa.Connection, blog: Blog) -> str:
    """Collation of ``{prefix}wc_product_meta_lookup.sku`` (what WooCommerce's uniqueness check uses)."""
    name = conn.execute(
        sa.text(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = :t AND COLUMN_NAME = 'sku'"
        ),
        {"t": blog.prefix + "wc_product_meta_lookup"},
    ).scalar_one_or_none()
    if not name or not _COLLATION_RE.match(name) or not name.startswith("utf8mb4"):
        return DEFAULT_COLLATION
    return name


def refresh_sql(base_prefix: str, prefix: str, collation: str, n_ids: int | None) -> str:
    """The membership refresh statement (pure, golden-tested)."""
    validate_prefix(base_prefix)
    validate_prefix(prefix)
    if not _COLLATION_RE.match(collation):
        raise ValueError(f"bad collation {collation!r}")
    only = ""
    if n_ids is not None:
        only = "AND p.ID IN (" + ", ".join(f":id{i}" for i in range(n_ids)) + ")"
    text = "\n".join(
        ln for ln in sql_text("member_refresh.sql").splitlines() if not ln.lstrip().startswith("--")
    )
    return (
        text.replace("{base}", base_prefix)
        .replace("{prefix}", prefix)
        .replace("{collation}", collation)
        .replace("{only_ids}", only)
    )


def refresh_members(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    post_ids: Collection[int] | None = None,
    *,
    collation: str | None = None,
) -> None:
    """Re-read membership of ``blog``'s products (all, or only ``post_ids``) inside the caller's transaction.

    Products that no longer qualify (SKU removed, trashed, deleted) leave; ambiguity is recomputed.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    ids = sorted(set(post_ids)) if post_ids is not None else None
    if ids is not None and not ids:
        return
    params: dict[str, object] = {"blog_id": blog.blog_id, "now": now}
    if ids is not None:
        params.update({f"id{i}": v for i, v in enumerate(ids)})
    coll = collation or sku_collation(conn, blog)
    conn.execute(
        sa.text(refresh_sql(base_prefix, blog.prefix, coll, len(ids) if ids is not None else None)), params
    )
    member = table(base_prefix, "syncd_member")
    if ids is None:
        conn.execute(
            sa.text(f"DELETE FROM {member} WHERE blog_id = :b AND refreshed_at < :now"),
            {"b": blog.blog_id, "now": now},
        )
    else:
        in_list = ", ".join(f":id{i}" for i in range(len(ids)))
        conn.execute(
            sa.text(
                f"DELETE FROM {member} WHERE blog_id = :b AND post_id IN ({in_list}) AND refreshed_at < :now"
            ),
            {"b": blog.blog_id, "now": now, **{f"id{i}": v for i, v in enumerate(ids)}},
        )
    recompute_ambiguity(conn, base_prefix, blog.blog_id)


def recompute_ambiguity(conn: sa.Connection, base_prefix: str, blog_id: int) -> None:
    member = table(base_prefix, "syncd_member")
    conn.execute(
        sa.text(f"UPDATE {member} SET state = 'linked' WHERE blog_id = :blog_id AND state = 'ambiguous'"),
        {"blog_id": blog_id},
    )
    conn.execute(
        sa.text(sql_text("member_ambiguity.sql").replace("{base}", validate_prefix(base_prefix))),
        {"blog_id": blog_id},
    )


def drop_blog_members(conn: sa.Connection, base_prefix: str, keep_blogs: Iterable[int]) -> int:
    """Forget members of blogs that are no longer live or usable."""
    keep = sorted(set(keep_blogs))
    member = table(base_prefix, "syncd_member")
    if not keep:
        return conn.execute(sa.text(f"DELETE FROM {member}")).rowcount
    in_list = ", ".join(f":b{i}" for i in range(len(keep)))
    return conn.execute(
        sa.text(f"DELETE FROM {member} WHERE blog_id NOT IN ({in_list})"),
        {f"b{i}": b for i, b in enumerate(keep)},
    ).rowcount


def known_members(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> set[Key]:
    if not keys:
        return set()
    cond, params = _key_condition("m", keys)
    rows = conn.execute(
        sa.text(f"SELECT m.blog_id, m.post_id FROM {table(base_prefix, 'syncd_member')} m WHERE {cond}"),
        params,
    )
    return {(r[0], r[1]) for r in rows}


def member_skus(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> dict[Key, str]:
    """The members among ``keys``, with their SKU."""
    if not keys:
        return {}
    cond, params = _key_condition("m", keys)
    rows = conn.execute(
        sa.text(
            f"SELECT m.blog_id, m.post_id, m.sku FROM {table(base_prefix, 'syncd_member')} m WHERE {cond}"
        ),
        params,
    )
    return {(r[0], r[1]): r[2] for r in rows}


def groups_for(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> dict[Key, list[Member]]:
    """For each origin product in ``keys`` that is a member: every member of its group (itself included)."""
    if not keys:
        return {}
    member = table(base_prefix, "syncd_member")
    cond, params = _key_condition("o", keys)
    rows = conn.execute(
        sa.text(
            f"SELECT o.blog_id, o.post_id, m.blog_id, m.post_id, m.sku, m.state "
            f"FROM {member} o JOIN {member} m ON m.link_key = o.link_key "
            f"WHERE {cond} ORDER BY m.blog_id, m.post_id"
        ),
        params,
    )
    out: dict[Key, list[Member]] = {}
    for ob, op, mb, mp, sku, state in rows:
        out.setdefault((ob, op), []).append(Member(mb, mp, sku, state))
    return out


def _key_condition(alias: str, keys: Collection[Key]) -> tuple[str, dict[str, int]]:
    by_blog: dict[int, list[int]] = {}
    for b, p in keys:
        by_blog.setdefault(b, []).append(p)
    parts = []
    params: dict[str, int] = {}
    for i, (b, posts) in enumerate(sorted(by_blog.items())):
        params[f"kb{i}"] = b
        names = []
        for j, p in enumerate(sorted(set(posts))):
            params[f"kp{i}_{j}"] = p
            names.append(f":kp{i}_{j}")
        parts.append(f"({alias}.blog_id = :kb{i} AND {alias}.post_id IN ({', '.join(names)}))")
    return " OR ".join(parts), params
