"""Dead letters: list, retry (back into the change queue), discard."""

from __future__ import annotations

import structlog
from starlette.responses import RedirectResponse, Response

from syncd.web import deadletters
from syncd.web.http import Ctx, Problem, View

log = structlog.get_logger("syncd.dashboard")


def dead_page(ctx: Ctx) -> View:
    with ctx.app.read_engine.connect() as conn:
        rows = deadletters.list_dead(conn, ctx.app.base)
        conn.rollback()
    return View("dead.html", {"dead_letters": rows})


def _ids(ctx: Ctx) -> list[int]:
    raw = ctx.params_list("id")
    if not raw or not all(x.isdigit() for x in raw):
        raise Problem(400, "choose dead letters by id")
    return [int(x) for x in raw]


def retry(ctx: Ctx) -> View | Response:
    return _act(ctx, deadletters.retry, "retried")


def discard(ctx: Ctx) -> View | Response:
    return _act(ctx, deadletters.discard, "discarded")


def _act(ctx: Ctx, fn, verb: str) -> View | Response:  # noqa: ANN001
    ids = _ids(ctx)
    with ctx.app.write_engine.connect() as conn:
        n = fn(conn, ctx.app.base, ids)
        conn.commit()
    log.info("dashboard_dead_letters", action=verb, user=ctx.user.name, count=n)
    if ctx.json:
        return View("dead.html", {verb: n})
    return RedirectResponse("/dead-letters", status_code=303)
