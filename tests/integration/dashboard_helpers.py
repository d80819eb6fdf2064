"""The dashboard under test: a real uvicorn server (own thread, a free loopback port) on a test
network, with an admin, a read-only user and a bearer token; a requests session per user."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
import uvicorn

from syncd.config import config_for
from syncd.web import auth
from syncd.web.app import build_app
from syncd.web.server import prepare
from syncd.web.state import Dashboard

ADMIN, READER = ("admin", "admin-password-1"), ("reader", "reader-password-1")


@dataclass
class Running:
    url: str
    dashboard: Dashboard
    token: str
    net: Any

    def session(self, who: tuple[str, str] = ADMIN) -> requests.Session:
        """A logged-in browser-like session (cookies), with ``.csrf`` set from a page."""
        s = requests.Session()
        page = s.get(self.url + "/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
        r = s.post(
            self.url + "/login", data={"name": who[0], "password": who[1], "nonce": nonce, "next": "/"}
        )
        assert r.status_code == 200 and r.url.rstrip("/") == self.url, (r.status_code, r.url)
        s.csrf = csrf_of(s.get(self.url + "/products").text)  # type: ignore[attr-defined]
        return s

    def api(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@contextmanager
def running_dashboard(net: Any, **sections: Any) -> Iterator[Running]:
    config = config_for(net.url, net.prefix, **sections)
    dashboard = prepare(config)
    with dashboard.write_engine.connect() as conn:
        auth.add_user(conn, net.prefix, *ADMIN)
        auth.add_user(conn, net.prefix, *READER, read_only=True)
        token = auth.create_token(conn, net.prefix, ADMIN[0])
        conn.commit()
    tls = config.dashboard
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(dashboard),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            ssl_certfile=tls.tls_cert,
            ssl_keyfile=tls.tls_key,
        )
    )
    thread = threading.Thread(target=server.run, name="dashboard-under-test", daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.02):  # until uvicorn has bound its socket (a condition, not a timing)
        if server.started:
            started.set()
        assert thread.is_alive(), "the dashboard server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"{'https' if tls.tls else 'http'}://127.0.0.1:{port}", dashboard, token, net)
    finally:
        server.should_exit = True
        thread.join(10)
        dashboard.close()


def woo_order(net: Any, blog_id: int, post_id: int, order_id: int, n: int = 1) -> None:
    """An order's stock reduction as WooCommerce 11 sends it (trace 04): on one connection, the
    relative ``_stock`` UPDATE, then the line item and its meta, ``_reduced_stock`` last."""
    p = net.blog_prefix(blog_id)
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {p}postmeta SET meta_value = meta_value - {int(n)} WHERE post_id = {int(post_id)} AND meta_key = '_stock'"
        )
        c.exec_driver_sql(
            f"INSERT INTO {p}woocommerce_order_items (order_item_name, order_item_type, order_id) "
            f"VALUES ('item', 'line_item', {int(order_id)})"
        )
        item = c.exec_driver_sql("SELECT LAST_INSERT_ID()").scalar_one()
        for k, v in (("_product_id", post_id), ("_variation_id", 0), ("_qty", n), ("_reduced_stock", n)):
            c.exec_driver_sql(
                f"INSERT INTO {p}woocommerce_order_itemmeta (order_item_id, meta_key, meta_value) VALUES ({item}, '{k}', '{v}')"
            )
        c.commit()
        c.invalidate()  # the next order is another request: another connection
