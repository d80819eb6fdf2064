"""The request pipeline every page and action goes through: size limit, authentication (session
cookie or bearer token), CSRF, role, parameter parsing, then the view (in a worker thread: the
views use the blocking database driver), rendered as HTML or as its JSON twin.

A view returns a :class:`View` (template + data); the ``.json`` URL returns ``data`` itself.
Errors are pages too: :class:`Problem` (400/403/404/409) with a message that is safe to show.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import sqlalchemy as sa
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from syncd.db import errno_of
from syncd.web import auth
from syncd.web.state import Dashboard

log = structlog.get_logger("syncd.dashboard")

MAX_BODY = 64 * 1024
MAX_FIELDS = 2000
SESSION_COOKIE = "syncd_session"
LOGIN_COOKIE = "syncd_login"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Problem(Exception):
    """A request refused with a message safe to show (never a secret or a stack trace)."""

    def __init__(self, status: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.data = status, message, data or {}


@dataclass
class View:
    template: str
    data: dict[str, Any]
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)  # for the template only (charts, forms)


@dataclass
class Ctx:
    """One request as the views see it."""

    app: Dashboard
    request: Request
    user: auth.User
    csrf: str  # '' for bearer requests
    params: dict[str, Any]
    json: bool
    path_params: dict[str, Any]

    @property
    def source(self) -> str:
        return f"dashboard:{self.user.name}"

    def param(self, name: str, default: str = "") -> str:
        value = self.params.get(name, default)
        if isinstance(value, list):
            value = value[-1] if value else default
        if value is None:
            return default
        if not isinstance(value, str | int | float):
            raise Problem(400, f"parameter {name!r} must be a string or a number")
        return str(value)

    def params_list(self, name: str) -> list[str]:
        value = self.params.get(name, [])
        values = value if isinstance(value, list) else [value]
        return [str(v) for v in values if isinstance(v, str | int) and str(v) != ""]


def secure(response: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    return response


def page(
    app: Dashboard, view: Callable[[Ctx], Any], *, as_json: bool = False, write: bool = False
) -> Callable[[Request], Any]:
    """Wrap a view: ``as_json`` for the .json twin; ``write`` for actions the read-only role may not use."""

    async def endpoint(request: Request) -> Response:
        want_json = as_json or request.url.path.endswith(".json")
        try:
            body = await _body(request)
            ctx = await run_in_threadpool(_authenticate, app, request, body, want_json)
            if isinstance(ctx, Response):
                return secure(ctx)
            if write and not ctx.user.can_write:
                raise Problem(
                    403, f"user {ctx.user.name!r} is read-only: this changes stock, links or the queue"
                )
            result = await run_in_threadpool(view, ctx)
            if isinstance(result, Response):
                return secure(result)
            return secure(render(app, ctx, result))
        except Problem as exc:
            return secure(problem_response(app, request, exc, want_json))
        except Exception as exc:  # noqa: BLE001 - never a stack trace or a secret on a page
            ref = uuid.uuid4().hex[:12]
            log.error(
                "request_failed",
                path=request.url.path,
                error=type(exc).__name__,
                ref=ref,
                errno=errno_of(exc),
            )
            return secure(
                problem_response(
                    app, request, Problem(500, f"internal error (reference {ref} in the log)"), want_json
                )
            )

    return endpoint


async def _body(request: Request) -> bytes:
    if request.method != "POST":
        return b""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise Problem(400, f"request body too large (at most {MAX_BODY} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Problem(400, f"request body too large (at most {MAX_BODY} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_params(request: Request, body: bytes) -> dict[str, Any]:
    """Query string, then the body (form-encoded or a JSON object); 400 when malformed."""
    params: dict[str, Any] = {}
    for k, v in request.query_params.multi_items():
        _add(params, k, v)
    if not body:
        return params
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Problem(400, "malformed JSON body") from None
        if not isinstance(doc, dict):
            raise Problem(400, "the JSON body must be an object")
        params.update(doc)
        return params
    if ctype != "application/x-www-form-urlencoded":
        raise Problem(400, "send application/x-www-form-urlencoded or application/json")
    try:
        items = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "malformed form body") from None
    for k, v in items:
        _add(params, k, v)
    return params


def _add(params: dict[str, Any], key: str, value: str) -> None:
    if key.endswith("[]") or key in params:
        key = key.removesuffix("[]")
        old = params.get(key)
        params[key] = [*(old if isinstance(old, list) else [] if old is None else [old]), value]
    else:
        params[key] = value


def _authenticate(app: Dashboard, request: Request, body: bytes, want_json: bool) -> Ctx | Response:
    params = parse_params(request, body)
    header = request.headers.get("authorization", "")
    with app.read_engine.connect() as conn:
        found, bearer = _who(conn, app, request, header)
        conn.rollback()
    if found is None:
        if bearer or want_json or request.method == "POST":
            raise Problem(401, "authentication required (log in, or send Authorization: Bearer TOKEN)")
        return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)
    user, csrf = found
    if request.method == "POST" and not bearer:
        sent = params.get("csrf") or request.headers.get("x-csrf-token") or ""
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), csrf.encode()):
            raise Problem(403, "missing or wrong CSRF token: reload the page and try again")
    params.pop("csrf", None)
    return Ctx(app, request, user, "" if bearer else csrf, params, want_json, dict(request.path_params))


def _who(
    conn: sa.Connection, app: Dashboard, request: Request, header: str
) -> tuple[tuple[auth.User, str] | None, bool]:
    if header:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Problem(401, "Authorization must be: Bearer TOKEN")
        return auth.lookup(conn, app.base, token.strip(), "api"), True
    sid = request.cookies.get(SESSION_COOKIE)
    return (auth.lookup(conn, app.base, sid, "session") if sid else None), False


def render(app: Dashboard, ctx: Ctx, view: View) -> Response:
    if ctx.json:
        return JSONResponse(_jsonable(view.data), status_code=view.status)
    with app.read_engine.connect() as conn:
        banner = app.daemon_state(conn)
        conn.rollback()
    html = app.templates.get_template(view.template).render(
        data=view.data,
        user=ctx.user,
        csrf=ctx.csrf,
        banner=banner,
        plain_remote=app.plain_remote,
        path=ctx.request.url.path,
        **view.extra,
    )
    return HTMLResponse(html, status_code=view.status)


def problem_response(app: Dashboard, request: Request, exc: Problem, want_json: bool) -> Response:
    if want_json:
        return JSONResponse({"error": exc.message, **_jsonable(exc.data)}, status_code=exc.status)
    html = app.templates.get_template("error.html").render(
        status=exc.status,
        message=exc.message,
        data=exc.data,
        user=None,
        csrf="",
        banner=None,
        plain_remote=app.plain_remote,
        path=request.url.path,
    )
    return HTMLResponse(html, status_code=exc.status)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def login_nonce() -> str:
    return secrets.token_urlsafe(24)
