"""Products: one row per link group, one column per blog (quantity and status), drift
highlighted; search by SKU or name; filters (only drifted, out of stock somewhere, language, blog);
server-side paging by SKU.

Fast at 100,000 SKUs x 10 blogs: a page is one indexed read of the group table (LIMIT), one read
of the page's members, and one UNION over the blogs for the page's stock values and titles. The
"only drifted" and "out of stock somewhere" filters scan the stock rows of every member and are
slower (documented in docs/benchmarks.md).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from syncd.audit import Scope
from syncd.db import table
from syncd.web.http import Ctx, Problem, View

PAGE = 50


def products(ctx: Ctx) -> View:
    app = ctx.app
    f = _filters(ctx)
    with app.read_engine.connect() as conn:
        scope = app.scope(conn)
        blogs = [b for b in scope.blog_ids if f["blog"] is None or b == f["blog"]] or scope.blog_ids
        rows, more = page_rows(conn, scope, f)
        langs = [
            r[0]
            for r in conn.execute(
                sa.text(f"SELECT DISTINCT lang FROM {table(app.base, 'syncd_group')} ORDER BY 1")
            )
        ]
        conn.rollback()
    data = {
        "filters": {k: v for k, v in f.items() if k != "offset"},
        "page": f["page"],
        "per_page": PAGE,
        "next_page": f["page"] + 1 if more else None,
        "blogs": scope.blog_ids,
        "languages": [x for x in langs if x],
        "groups": rows,
    }
    return View("products.html", data, extra={"shown_blogs": blogs})


def _filters(ctx: Ctx) -> dict[str, Any]:
    page_text = ctx.param("page", "1")
    blog_text = ctx.param("blog", "")
    if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
        raise Problem(400, "page must be a number from 1")
    if blog_text and not blog_text.isdigit():
        raise Problem(400, "blog must be a blog id")
    q = ctx.param("q", "").strip()
    if len(q) > 200:
        raise Problem(400, "the search text is too long (200 characters at most)")
    return {
        "q": q,
        "drifted": ctx.param("drifted", "").lower() in ("1", "on", "true"),
        "outofstock": ctx.param("outofstock", "").lower() in ("1", "on", "true"),
        "lang": ctx.param("lang", "").strip()[:32],
        "blog": int(blog_text) if blog_text else None,
        "page": int(page_text),
    }


def page_rows(conn: sa.Connection, scope: Scope, f: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """One page of groups with their members' values, and whether there is a next page. Groups
    without a synced (or ambiguous) member - grouped and external products - are left out of the
    page after the read (a page may then hold a few less than PAGE rows): filtering them in SQL
    cost a member lookup per group read (page 1,000 at 100,000 x 10: 0.8 s instead of 0.1 s)."""
    base = scope.base
    conds = ["1 = 1"]
    params: dict[str, Any] = {"limit": PAGE + 1, "offset": (f["page"] - 1) * PAGE}
    if f["q"]:
        names = _name_matches(conn, scope, f["q"])
        params["q"] = _like(f["q"]) + "%"
        conds.append(
            "(g.sku LIKE :q" + (f" OR g.group_id IN ({', '.join(map(str, names))}))" if names else ")")
        )
    if f["lang"]:
        conds.append("g.lang = :lang")
        params["lang"] = f["lang"]
    if f["blog"] is not None:
        conds.append(
            f"EXISTS (SELECT 1 FROM {table(base, 'syncd_member')} mb WHERE mb.group_id = g.group_id AND mb.blog_id = :fb AND mb.state = 'linked')"
        )
        params["fb"] = f["blog"]
    for flag, sql in (("drifted", _drifted_sql), ("outofstock", _outofstock_sql)):
        if f[flag]:
            conds.append(f"g.group_id IN ({sql(scope)})")
    groups = conn.execute(
        sa.text(
            f"SELECT g.group_id, g.sku, g.lang, g.kind FROM {table(base, 'syncd_group')} g "
            f"WHERE {' AND '.join(conds)} ORDER BY g.sku, g.lang, g.group_id LIMIT :limit OFFSET :offset"
        ),
        params,
    ).all()
    more = len(groups) > PAGE
    rows = [{"group": int(g), "sku": s, "lang": lg, "kind": k} for g, s, lg, k in groups[:PAGE]]
    return [r for r in attach_members(conn, scope, rows) if r["members"]], more


def attach_members(conn: sa.Connection, scope: Scope, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return rows
    ids = ", ".join(str(r["group"]) for r in rows)
    members = conn.execute(
        sa.text(
            f"SELECT group_id, blog_id, post_id, sku, state FROM {table(scope.base, 'syncd_member')} "
            f"WHERE group_id IN ({ids}) AND state IN ('linked', 'ambiguous')"
        )
    ).all()
    values = _values(
        conn, scope, [(int(b), int(p)) for _g, b, p, _s, _st in members if int(b) in scope.blogs]
    )
    by_group: dict[int, dict[str, Any]] = {r["group"]: r for r in rows}
    for r in rows:
        r["members"] = {}
    for g, b, p, sku, state in members:
        if int(b) not in scope.blogs:
            continue
        v = values.get((int(b), int(p)), {})
        by_group[int(g)]["members"][str(int(b))] = {"post": int(p), "sku": sku, "state": state, **v}
    for r in rows:
        r["drift"] = _drift(r["members"].values())
        r["name"] = next((m.get("title") for m in r["members"].values() if m.get("title")), "")
    return rows


def _values(
    conn: sa.Connection, scope: Scope, keys: list[tuple[int, int]]
) -> dict[tuple[int, int], dict[str, Any]]:
    """_stock, _stock_status, _manage_stock and the title of each product: one UNION over the blogs."""
    by_blog: dict[int, list[int]] = {}
    for b, p in keys:
        by_blog.setdefault(b, []).append(p)
    if not by_blog:
        return {}
    parts = []
    for b, posts in sorted(by_blog.items()):
        prefix = scope.blogs[b].prefix
        ids = ", ".join(str(p) for p in posts)
        parts.append(
            f"SELECT {b}, post_id, meta_key, meta_value FROM {table(prefix, 'postmeta')} "
            f"WHERE post_id IN ({ids}) AND meta_key IN ('_stock', '_stock_status', '_manage_stock')"
        )
        parts.append(
            f"SELECT {b}, ID, '_title', post_title FROM {table(prefix, 'posts')} WHERE ID IN ({ids})"
        )
    out: dict[tuple[int, int], dict[str, Any]] = {}
    names = {"_stock": "stock", "_stock_status": "status", "_manage_stock": "manage", "_title": "title"}
    for b, p, k, v in conn.execute(sa.text(" UNION ALL ".join(parts))):
        out.setdefault((int(b), int(p)), {})[names[k]] = v
    return out


def _drift(members: Any) -> bool:
    qty = set()
    for m in members:
        if m.get("state") != "linked" or m.get("manage") != "yes":
            continue
        try:
            qty.add(Decimal(str(m.get("stock")).strip()))
        except (InvalidOperation, ValueError):
            return True
    return len(qty) > 1


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _name_matches(conn: sa.Connection, scope: Scope, q: str, limit: int = 500) -> list[int]:
    """Groups with a member whose product name contains ``q`` (at most ``limit``)."""
    parts = [
        f"SELECT m.group_id FROM {table(scope.blogs[b].prefix, 'posts')} p JOIN {table(scope.base, 'syncd_member')} m "
        f"ON m.blog_id = {b} AND m.post_id = p.ID WHERE p.post_type IN ('product', 'product_variation') "
        "AND p.post_title LIKE :name AND m.group_id IS NOT NULL"
        for b in scope.blog_ids
    ]
    if not parts:
        return []
    rows = conn.execute(
        sa.text(f"SELECT DISTINCT group_id FROM ({' UNION ALL '.join(parts)}) x LIMIT {limit}"),
        {"name": "%" + _like(q) + "%"},
    )
    return [int(r[0]) for r in rows]


def _member_meta_union(scope: Scope, key: str) -> str:
    return (
        " UNION ALL ".join(
            f"SELECT m.group_id, pm.meta_value FROM {table(scope.base, 'syncd_member')} m JOIN "
            f"{table(scope.blogs[b].prefix, 'postmeta')} pm ON pm.post_id = m.post_id AND pm.meta_key = '{key}' "
            f"WHERE m.blog_id = {b} AND m.state = 'linked'"
            for b in scope.blog_ids
        )
        or "SELECT NULL, NULL"
    )


def _drifted_sql(scope: Scope) -> str:
    """Groups whose members' quantities differ (compared as numbers)."""
    return (
        f"SELECT group_id FROM ({_member_meta_union(scope, '_stock')}) s GROUP BY group_id "
        "HAVING COUNT(DISTINCT CAST(meta_value AS DECIMAL(30,6))) > 1"
    )


def _outofstock_sql(scope: Scope) -> str:
    return f"SELECT group_id FROM ({_member_meta_union(scope, '_stock_status')}) s WHERE meta_value = 'outofstock'"
