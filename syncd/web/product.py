"""Product (one link group): each member's state and whether WooCommerce's lookup row agrees, a
chart of its stock on every blog, the event table, and the actions - set stock everywhere (with
the quantities the admin saw: refused when any member changed since), sync now from a chosen
member, reconcile this group (preview first, then apply). Writes go through syncd.reconcile's
functions, the path of ``syncd set-stock`` / ``sync`` / ``reconcile``."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from starlette.responses import RedirectResponse, Response

from syncd import history as history_mod
from syncd import reconcile
from syncd.audit import GroupState, read_members, read_values
from syncd.db import table
from syncd.plan import BACKORDERS, LOW_STOCK, MANAGE, STATUS, STOCK, StockValueError, parse_quantity
from syncd.web import charts, sources
from syncd.web.http import Ctx, Problem, View

log = structlog.get_logger("syncd.dashboard")
HISTORY_LIMIT = 2000


def product(ctx: Ctx, *, message: str = "", status: int = 200, preview: dict[str, Any] | None = None) -> View:
    gid = _gid(ctx)
    with ctx.app.read_engine.connect() as conn:
        data = group_state(ctx, conn, gid)
        limit = _limit(ctx)
        entries = history_mod.read_history(conn, ctx.app.scope(conn), [gid], limit=limit)
        found = sources.attribute(conn, ctx.app.base, entries)
        conn.rollback()
    data["history"] = [_event(e, found.get(e.change_id), data["siteurls"]) for e in entries]
    data["done"] = ctx.request.query_params.get("done", "")[:200]
    data["manual_fields"] = list(ctx.app.config.fields.groups_in("manual"))
    data["message"] = message
    if preview is not None:
        data["preview"] = preview
    chart = _chart(data, entries, found)
    return View("product.html", data, status=status, extra={"chart": chart})


def _gid(ctx: Ctx) -> int:
    return int(ctx.path_params["gid"])


def _limit(ctx: Ctx) -> int:
    text = ctx.param("limit", str(HISTORY_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise Problem(400, "limit must be a number from 1 to 100000")
    return int(text)


def group_state(ctx: Ctx, conn: sa.Connection, gid: int) -> dict[str, Any]:
    app = ctx.app
    scope = app.scope(conn)
    row = conn.execute(
        sa.text(f"SELECT sku, lang, kind FROM {table(app.base, 'syncd_group')} WHERE group_id = :g"),
        {"g": gid},
    ).first()
    groups = read_members(conn, scope, [(gid, gid)])
    if row is None or gid not in groups:
        raise Problem(
            404, f"no link group {gid} (it may have been dissolved or renamed): search the products page"
        )
    g = groups[gid]
    read_values(conn, scope, [g])
    lookups = _lookups(conn, scope, g)
    members = []
    for m in (*g.members, *g.ambiguous):
        meta = {k: m.value(k) for k in (STOCK, STATUS, MANAGE, BACKORDERS, LOW_STOCK)}
        look = lookups.get(m.key, {})
        members.append(
            {
                "blog": m.blog_id,
                "post": m.post_id,
                "sku": m.sku,
                "state": m.state,
                "type": m.type_label,
                "title": look.get("title", ""),
                "stock": meta[STOCK],
                "status": meta[STATUS],
                "manage_stock": meta[MANAGE],
                "backorders": meta[BACKORDERS],
                "low_stock_amount": meta[LOW_STOCK],
                "lookup_agrees": _agrees(meta, look),
                "lookup": {"stock_quantity": look.get("qty"), "stock_status": look.get("status")},
            }
        )
    return {
        "group": gid,
        "sku": row[0],
        "lang": row[1],
        "kind": row[2],
        "members": members,
        "drift": len(
            {_num(m["stock"]) for m in members if m["manage_stock"] == "yes" and m["state"] == "linked"}
        )
        > 1,
        "siteurls": _siteurls(conn, scope, [m["blog"] for m in members]),
    }


def _num(text: str | None) -> Any:
    try:
        return parse_quantity(text)
    except StockValueError:
        return text


def _agrees(meta: dict[str, Any], look: dict[str, Any]) -> bool | None:
    if "status" not in look:
        return None
    qty_ok = True
    if meta[MANAGE] == "yes":
        lq = look.get("qty")
        qty_ok = lq is not None and _num(meta[STOCK]) == Decimal(str(lq))
    return qty_ok and look.get("status") == meta[STATUS]


def _lookups(conn: sa.Connection, scope: Any, g: GroupState) -> dict[tuple[int, int], dict[str, Any]]:
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for m in (*g.members, *g.ambiguous):
        prefix = scope.blogs[m.blog_id].prefix
        r = conn.execute(
            sa.text(
                f"SELECT p.post_title, l.stock_quantity, l.stock_status FROM {table(prefix, 'posts')} p "
                f"LEFT JOIN {table(prefix, 'wc_product_meta_lookup')} l ON l.product_id = p.ID WHERE p.ID = :p"
            ),
            {"p": m.post_id},
        ).first()
        if r is not None:
            entry: dict[str, Any] = {"title": r[0]}
            if r[2] is not None:
                entry.update(qty=r[1], status=r[2])
            out[m.key] = entry
    return out


def _siteurls(conn: sa.Connection, scope: Any, blogs: list[int]) -> dict[int, str]:
    out = {}
    for b in sorted(set(blogs)):
        v = conn.execute(
            sa.text(
                f"SELECT option_value FROM {table(scope.blogs[b].prefix, 'options')} WHERE option_name = 'siteurl'"
            )
        ).scalar()
        if v and str(v).startswith(("http://", "https://")):
            out[b] = str(v).rstrip("/")
    return out


def _event(e: history_mod.Entry, found: dict[str, Any] | None, siteurls: dict[int, str]) -> dict[str, Any]:
    doc = e.document()
    doc["source"] = sources.describe(e, found, siteurls)
    return doc


def _chart(data: dict[str, Any], entries: list[history_mod.Entry], found: dict[int, dict[str, Any]]) -> str:
    series: dict[int, list[tuple[datetime, float]]] = {}
    marks: list[charts.Mark] = []
    for e in entries:
        if e.meta_key != STOCK or e.role == "skipped":
            continue
        try:
            v = parse_quantity(e.new)
        except StockValueError:
            continue
        if v is None:
            continue
        at = e.captured_at if e.role == "origin" else e.applied_at
        series.setdefault(e.blog_id, []).append((at, float(v)))
        kind = {"reconcile": "reconcile", "set": "set"}.get(e.role)
        if e.role == "origin":
            origin_kind = (found.get(e.change_id) or {}).get("kind")
            kind = {"order": "sale", "admin": "admin", "refund": "other", "restock": "other"}.get(
                origin_kind or "", "other"
            )
        if kind:
            marks.append(
                charts.Mark(at, e.blog_id, float(v), kind, f"blog {e.blog_id}: {e.old} -> {e.new} ({e.role})")
            )
    now = datetime.now(UTC).replace(tzinfo=None)
    for m in data["members"]:
        v = _num(m["stock"])
        if isinstance(v, Decimal) and m["state"] == "linked":
            s = series.setdefault(m["blog"], [])
            if not s:
                s.append((now, float(v)))
            s.append((now, float(v)))
    for s in series.values():
        s.sort(key=lambda p: p[0])
    return charts.stock_chart(
        series, marks, f"Stock of {data['sku'] or 'group ' + str(data['group'])} on every blog"
    )


# --------------------------------------------------------------------------- actions
def set_stock(ctx: Ctx) -> View | Response:
    gid = _gid(ctx)
    try:
        qty = reconcile.parse_qty(ctx.param("qty"))
    except ValueError as exc:
        return _form_error(ctx, str(exc))
    expect = _expected(ctx)
    try:
        outcome = reconcile.set_group_stock(
            ctx.app.config, ctx.app.write_engine, gid, qty, expect=expect, source=ctx.source
        )
    except reconcile.StaleQuantities as exc:
        current = {f"{b}:{p}": v for (b, p), v in sorted(exc.current.items())}
        msg = "refused: the stock changed since you loaded the page; here is the new state - check it and try again"
        log.info("dashboard_set_stock_refused", user=ctx.user.name, group=gid)
        if ctx.json:
            raise Problem(409, msg, {"current": current}) from None
        return product(ctx, message=msg, status=409)
    log.info(
        "dashboard_set_stock", user=ctx.user.name, group=gid, qty=str(qty), writes=outcome.counts["writes"]
    )
    return _done(ctx, gid, outcome, f"stock set to {qty} everywhere ({outcome.counts['writes']} write(s))")


def _expected(ctx: Ctx) -> dict[tuple[int, int], str | None]:
    """The quantities the admin saw: JSON {"expect": {"1:11": "5", ...}} or form fields expect-1-11."""
    raw = ctx.params.get("expect")
    pairs: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif raw is None:
        pairs = [
            (k[len("expect-") :].replace("-", ":"), v)
            for k, v in ctx.params.items()
            if k.startswith("expect-")
        ]
    if not pairs:
        raise Problem(400, "set stock must carry the quantities you saw (expect): reload the product page")
    out: dict[tuple[int, int], str | None] = {}
    for key, value in pairs:
        b, _, p = str(key).partition(":")
        if not (b.isdigit() and p.isdigit()) or not (value is None or isinstance(value, str | int | float)):
            raise Problem(400, f"bad expect entry {str(key)[:40]!r}: BLOG:POST -> quantity")
        out[(int(b), int(p))] = None if value in (None, "") else str(value)
    return out


def sync(ctx: Ctx) -> View | Response:
    gid = _gid(ctx)
    text = ctx.param("from_blog", "")
    if text and not text.isdigit():
        return _form_error(ctx, "from_blog must be a blog id")
    outcome = reconcile.sync_group(
        ctx.app.config, ctx.app.write_engine, gid, from_blog=int(text) if text else None, source=ctx.source
    )
    log.info(
        "dashboard_sync",
        user=ctx.user.name,
        group=gid,
        from_blog=text or None,
        writes=outcome.counts["writes"],
    )
    return _done(ctx, gid, outcome, f"synced from {outcome.authority} ({outcome.counts['writes']} write(s))")


def reconcile_group(ctx: Ctx) -> View | Response:
    gid = _gid(ctx)
    apply = ctx.param("confirm", "").lower() in ("1", "yes", "true")
    outcome = reconcile.reconcile_groups(
        ctx.app.config, ctx.app.write_engine, [gid], dry_run=not apply, source=ctx.source
    )
    if not apply:
        if ctx.json:
            return View("product.html", {"group": gid, "preview": outcome.document()})
        return product(ctx, preview=outcome.document())
    log.info("dashboard_reconcile", user=ctx.user.name, group=gid, writes=outcome.counts["writes"])
    return _done(ctx, gid, outcome, f"reconciled ({outcome.counts['writes']} write(s))")


def sync_fields(ctx: Ctx) -> View | Response:
    """The "Sync fields now" form: one manual field group (``field``) of this link group, from its
    authority ([fields.schedule] authority) to the members that differ (syncd.fields.manual)."""
    from syncd.fields.manual import sync_fields as run_pass
    from syncd.fields.registry import groups_in_mode

    gid = _gid(ctx)
    name = ctx.param("field", "")
    groups = groups_in_mode(ctx.app.config, "manual")
    if name not in groups:
        return _form_error(
            ctx, f"field must be one of the manual field groups: {', '.join(groups) or 'none'}"
        )
    report, _ = run_pass(
        ctx.app.config, ctx.app.write_engine, {name: groups[name]}, group_ids=[gid], source=ctx.source
    )
    log.info("dashboard_sync_fields", user=ctx.user.name, group=gid, field=name, written=len(report.written))
    if ctx.json:
        return View("product.html", {"group": gid, **report.document()})
    text = f"{name} synced ({len(report.written)} value(s) written"
    text += f", {len(report.problems)} left alone" if report.problems else ""
    text += f", {len(report.deferred)} deferred until settled)" if report.deferred else ")"
    return RedirectResponse(f"/product/{gid}?done=" + _q(text), status_code=303)


def _done(ctx: Ctx, gid: int, outcome: reconcile.Outcome, text: str) -> View | Response:
    if ctx.json:
        return View("product.html", {"group": gid, **outcome.document()})
    if outcome.counts["skipped_chunks"]:
        return product(
            ctx, message="not written: " + "; ".join(s["reason"] for s in outcome.skipped_chunks), status=409
        )
    return RedirectResponse(f"/product/{gid}?done=" + _q(text), status_code=303)


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:200])


def _form_error(ctx: Ctx, message: str) -> View:
    if ctx.json:
        raise Problem(400, message)
    return product(ctx, message=message, status=400)
