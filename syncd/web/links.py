"""Links: the manual link groups; link and unlink with the CLI's refusals and reasons
(:func:`syncd.links.create_link` / :func:`~syncd.links.remove_link`, in one transaction)."""

from __future__ import annotations

import structlog
from starlette.responses import RedirectResponse, Response

from syncd import links as links_mod
from syncd import schema
from syncd.web.http import Ctx, Problem, View

log = structlog.get_logger("syncd.dashboard")


def links_page(ctx: Ctx, *, message: str = "", status: int = 200) -> View:
    with ctx.app.read_engine.connect() as conn:
        groups = links_mod.list_links(conn, ctx.app.base)
        conn.rollback()
    return View("links.html", {"groups": groups, "message": message}, status=status)


def _targets(ctx: Ctx, name: str) -> list[tuple[int, int]]:
    raw = ctx.params.get(name)
    texts = raw if isinstance(raw, list) else str(raw or "").split()
    try:
        return [links_mod.parse_target(str(t)) for t in texts]
    except links_mod.LinkError as exc:
        raise Problem(400, str(exc)) from None


def link(ctx: Ctx) -> View | Response:
    keys = _targets(ctx, "targets")
    if len(keys) < 2:
        raise Problem(400, "name two or more products as BLOG:POST")
    return _change(
        ctx,
        lambda conn, blogs: links_mod.create_link(
            conn, ctx.app.base, blogs, keys, ctx.app.config.blogs.for_blog
        ),
        "link",
    )


def unlink(ctx: Ctx) -> View | Response:
    keys = _targets(ctx, "target")
    if len(keys) != 1:
        raise Problem(400, "name one product as BLOG:POST")
    return _change(
        ctx,
        lambda conn, blogs: links_mod.remove_link(
            conn, ctx.app.base, blogs, keys[0], ctx.app.config.blogs.for_blog
        ),
        "unlink",
    )


def _change(ctx: Ctx, action, verb: str) -> View | Response:  # noqa: ANN001
    app = ctx.app
    try:
        with app.write_engine.connect() as conn:
            schema.ensure_schema(conn, app.base)
            blogs = links_mod._network(conn, app.config)
            group_id, _ = action(conn, blogs)
            conn.commit()
    except links_mod.LinkError as exc:
        if ctx.json:
            raise Problem(409, f"refused: {exc}") from None
        return links_page(ctx, message=f"{verb} refused: {exc}", status=409)
    log.info("dashboard_links", action=verb, user=ctx.user.name, group=group_id)
    if ctx.json:
        return View("links.html", {"group": group_id, "done": verb})
    return RedirectResponse("/links", status_code=303)
