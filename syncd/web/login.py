"""Log in and out. The login form is protected by a double-submit nonce (cookie + field, both
SameSite=Strict), failed attempts are rate-limited per address and per user name."""

from __future__ import annotations

import hmac

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from syncd.web import auth
from syncd.web.http import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Ctx,
    Problem,
    _body,
    login_nonce,
    parse_params,
    secure,
)
from syncd.web.state import Dashboard

log = structlog.get_logger("syncd.dashboard")


def _form(app: Dashboard, message: str = "", status: int = 200, next_path: str = "/") -> Response:
    nonce = login_nonce()
    html = app.templates.get_template("login.html").render(
        nonce=nonce,
        message=message,
        next=next_path,
        user=None,
        csrf="",
        banner=None,
        plain_remote=app.plain_remote,
        path="/login",
    )
    response = HTMLResponse(html, status_code=status)
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=app.secure_cookies, path="/login"
    )
    return secure(response)


def _safe_next(value: str) -> str:
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def login_page(app: Dashboard):  # noqa: ANN201
    async def endpoint(request: Request) -> Response:
        if request.method == "GET":
            return _form(app, next_path=_safe_next(request.query_params.get("next", "/")))
        try:
            params = parse_params(request, await _body(request))
        except Problem as exc:
            return _form(app, exc.message, exc.status)
        name, password = str(params.get("name", "")), str(params.get("password", ""))
        next_path = _safe_next(str(params.get("next", "/")))
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(nonce.encode(), str(params.get("nonce", "")).encode()):
            return _form(app, "the login form expired: try again", 403, next_path)
        client = request.client.host if request.client else "?"
        keys = (f"ip:{client}", f"user:{name}")
        if app.limiter.blocked(*keys):
            log.warning("login_rate_limited", user=name, client=client)
            return _form(app, "too many failed logins: wait a few minutes", 429, next_path)
        sid = await run_in_threadpool(_check, app, name, password)
        if sid is None:
            app.limiter.failed(*keys)
            log.warning("login_failed", user=name, client=client)
            return _form(app, "wrong user name or password", 401, next_path)
        log.info("login", user=name, client=client)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            httponly=True,
            samesite="strict",
            secure=app.secure_cookies,
            path="/",
            max_age=auth.SESSION_HOURS * 3600,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return secure(response)

    return endpoint


def _check(app: Dashboard, name: str, password: str) -> str | None:
    with app.read_engine.connect() as conn:
        found = auth.get_user(conn, app.base, name) if auth.NAME_RE.match(name) else None
        if found is None:
            auth.verify_password(password, _DUMMY)  # same time for unknown users
            return None
        user, stored = found
        if not auth.verify_password(password, stored):
            return None
        sid, _csrf = auth.create_session(conn, app.base, user)
        conn.commit()
        return sid


_DUMMY = auth.hash_password("not a password of anyone")


def logout(ctx: Ctx) -> Response:
    sid = ctx.request.cookies.get(SESSION_COOKIE)
    if sid:
        with ctx.app.read_engine.connect() as conn:
            auth.end_session(conn, ctx.app.base, sid)
            conn.commit()
    if ctx.json:
        raise Problem(400, "log out is for browser sessions")
    log.info("logout", user=ctx.user.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
