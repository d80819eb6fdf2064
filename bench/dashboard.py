"""Dashboard: products page at 100,000 SKUs x 10 blogs (target: first page <= 300 ms) and the
product page of a group with 10,000 history events.

A private MariaDB, the benchmark catalogue (bench.common), syncd's tables and link groups as
``syncd install`` makes them, then the real dashboard (uvicorn, in this process, on a loopback
port) timed over HTTP with a logged-in session: each figure is the median of ``--runs`` requests
after one warm-up request (the first, cold one is reported too).

    python -m bench.dashboard            # 100,000 x 10 (loads ~1M products: minutes)
    python -m bench.dashboard --quick    # 4,000 x 3
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
import sqlalchemy as sa
import uvicorn

from bench.audit_reconcile import install
from bench.common import (
    BASE,
    base_parser,
    code_version,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    sku_text,
    start_server,
)
from syncd.config import config_for
from syncd.web import auth
from syncd.web.app import build_app
from syncd.web.server import prepare

USER = ("bench", "bench-password-1")


def serve(url: str) -> tuple[str, Any, Any]:
    dashboard = prepare(config_for(url, BASE))
    with dashboard.write_engine.connect() as conn:
        auth.add_user(conn, BASE, *USER)
        conn.commit()
    server = uvicorn.Server(
        uvicorn.Config(build_app(dashboard), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, dashboard


def login(base: str) -> requests.Session:
    s = requests.Session()
    nonce = re.search(r'name="nonce" value="([^"]+)"', s.get(base + "/login").text).group(1)
    r = s.post(base + "/login", data={"name": USER[0], "password": USER[1], "nonce": nonce})
    r.raise_for_status()
    return s


def timed(s: requests.Session, url: str, runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        r = s.get(url)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return {
        "cold_ms": round(times[0], 1),
        "median_ms": round(statistics.median(times[1:]), 1),
        "max_ms": round(max(times[1:]), 1),
        "bytes": len(r.content),
    }


def add_history(net: Any, sku_n: int, events: int) -> None:
    """``events`` history rows for one group: origin rows on a rotating blog plus a copy row per
    other blog (one 'event' = one row), spread over the last 30 days."""
    now = datetime.now(UTC).replace(tzinfo=None)
    blogs = list(net.blog_ids)
    rows, qty, n, change = [], 1000, 0, 0
    while n < events:
        change += 1
        origin = blogs[change % len(blogs)]
        at = now - timedelta(seconds=(events - n) * 30 * 86400 // events)
        for b in [origin, *(x for x in blogs if x != origin)]:
            if n >= events:
                break
            rows.append(
                {
                    "at": at,
                    "cid": change,
                    "role": "origin" if b == origin else "copy",
                    "b": b,
                    "p": product_id(b, sku_n),
                    "sku": sku_text(sku_n),
                    "old": str(qty),
                    "new": str(qty - 1),
                    "ob": origin,
                    "op": product_id(origin, sku_n),
                }
            )
            n += 1
        qty -= 1
    with net.engine.connect() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {BASE}syncd_history (applied_at, batch_id, change_id, captured_at, role, blog_id, post_id, "
                "sku, meta_key, old_value, new_value, delta, origin_blog_id, origin_post_id) VALUES "
                "(:at, 1, :cid, :at, :role, :b, :p, :sku, '_stock', :old, :new, -1, :ob, :op)"
            ),
            rows,
        )
        conn.commit()


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--blogs", type=int, default=10)
    p.add_argument("--events", type=int, default=10_000, help="history events of the product page's group")
    p.add_argument("--runs", type=int, default=9, help="timed requests per page (after one warm-up)")
    p.add_argument("--buffer-pool", default="2G")
    args = p.parse_args()
    if args.quick:
        args.skus, args.blogs, args.events = 4_000, 3, 2_000
    server = start_server(buffer_pool=args.buffer_pool)
    try:
        net = create_network(server, args.blogs)
        load_catalogue(net, args.skus)
        install(net)
        add_history(net, 42, args.events)
        base, uv, dashboard = serve(net.url)
        s = login(base)
        gid = s.get(base + "/products.json", params={"q": sku_text(42)}).json()["groups"][0]["group"]
        pages = [
            ("products, first page", "/products"),
            ("products, first page (JSON)", "/products.json"),
            ("products, page 1000", "/products?page=1000"),
            ("products, search by SKU prefix", f"/products?q={sku_text(42)[:-2]}"),
            ("products, search by name", "/products?q=Product%2042"),
            ("products, blog filter", "/products?blog=2"),
            ("products, only drifted", "/products?drifted=1"),
            ("products, out of stock somewhere", "/products?outofstock=1"),
            (f"product page, {args.events:,} events (newest 2,000 shown)", f"/product/{gid}"),
            (f"product page, {args.events:,} events, all shown", f"/product/{gid}?limit={args.events}"),
            (f"product page JSON, {args.events:,} events", f"/product/{gid}.json?limit={args.events}"),
        ]
        rows = []
        for name, path in pages:
            r = timed(s, base + path, args.runs)
            rows.append({"page": name, **r})
            log(f"{name}: median {r['median_ms']} ms (cold {r['cold_ms']} ms)")
        uv.should_exit = True
        dashboard.close()
        result = {
            "machine": machine(),
            "code": code_version(),
            "skus": args.skus,
            "blogs": args.blogs,
            "events": args.events,
            "pages": rows,
        }
        print_table(
            rows,
            [
                ("page", "page"),
                ("median_ms", "median ms"),
                ("max_ms", "max ms"),
                ("cold_ms", "cold ms"),
                ("bytes", "bytes"),
            ],
            f"Dashboard at {args.skus:,} SKUs x {args.blogs} blogs",
        )
        emit(result, args.json)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
