"""The Starlette application: every route, its JSON twin, and the static files."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd.web import audit, dead, links, login, overview, product, products
from syncd.web.http import SECURITY_HEADERS, Problem, page, problem_response, secure
from syncd.web.state import HERE, Dashboard

#: (path, view, write): GET pages, each also at path + ".json".
PAGES = (
    ("/", overview.overview),
    ("/products", products.products),
    ("/product/{gid:int}", product.product),
    ("/audit", audit.audit_page),
    ("/links", links.links_page),
    ("/dead-letters", dead.dead_page),
)
#: POST actions (each also at path + ".json"): (path, view, changes something).
ACTIONS = (
    ("/products", products.products, False),  # search, for scripts
    ("/product/{gid:int}", product.product, False),  # one group's state and history
    ("/product/{gid:int}/set-stock", product.set_stock, True),
    ("/product/{gid:int}/sync", product.sync, True),
    ("/product/{gid:int}/reconcile", product.reconcile_group, True),
    ("/product/{gid:int}/sync-fields", product.sync_fields, True),
    ("/audit/run", audit.run_audit, True),
    ("/audit/reconcile", audit.reconcile_chosen, True),
    ("/links/link", links.link, True),
    ("/links/unlink", links.unlink, True),
    ("/dead-letters/retry", dead.retry, True),
    ("/dead-letters/discard", dead.discard, True),
)


def build_app(dashboard: Dashboard) -> Starlette:
    routes: list[Route | Mount] = [
        Route("/login", login.login_page(dashboard), methods=["GET", "POST"]),
        Route("/logout", page(dashboard, login.logout), methods=["POST"]),
        Route("/index.json", page(dashboard, overview.overview, as_json=True), methods=["GET"]),
    ]
    for path, view in PAGES:
        routes.append(Route(path, page(dashboard, view), methods=["GET"]))
        if path != "/":
            routes.append(Route(path + ".json", page(dashboard, view, as_json=True), methods=["GET"]))
    for path, view, write in ACTIONS:
        routes.append(Route(path, page(dashboard, view, write=write), methods=["POST"]))
        routes.append(
            Route(path + ".json", page(dashboard, view, as_json=True, write=write), methods=["POST"])
        )
    routes.append(Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"))

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = (
            "no such page" if status == 404 else "method not allowed" if status == 405 else "bad request"
        )
        return secure(
            problem_response(dashboard, request, Problem(status, message), request.url.path.endswith(".json"))
        )

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_found, 400: not_found},
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.dashboard = dashboard
    return app


class SecurityHeaders:
    """Adds the CSP and the other security headers to every response (static files included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers)
