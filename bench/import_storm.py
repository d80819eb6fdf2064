"""An import on one blog while sales run on the others: do the sales wait behind the import?

    python -m bench.import_storm            # 10 blogs, a 10,000-product import on blog 1, 20 sales/s
    python -m bench.import_storm --quick    # 1,000 products, 3 blogs (< 1 min)
    python -m bench.import_storm --mode multi --chunk 1000 --json

How it is measured
------------------
* The catalogue (``bench.common.load_catalogue``) has ``--products`` SKUs for the import plus
  ``--sale-skus`` others; every SKU exists on every blog, linked.
* Sales: WooCommerce's checkout statement at ``--sales-rate`` per second on blogs 2..N, open loop
  (``bench.common.PacedWriters``), on the SKUs the import does not touch (``--overlap``: on the
  imported ones too; a sale of a product whose import row is still queued must then wait for it:
  per-product capture order). They start ``--lead`` s before the import and run ``--duration`` s.
* The import, on blog 1, from one connection, as importers write stock:
  ``rows`` (default): per product the statements of an import plugin
  (traces/08-import-stock.json: ``DELETE`` the ``_stock`` row, ``INSERT`` the new one, autocommit);
  ``multi``: multi-row ``UPDATE ... SET meta_value = CASE post_id ... END`` of ``--chunk`` products.
* Reported: sale propagation (commit on one blog -> the daemon's COMMIT of the batch that applied
  it, ``on_batch`` hook, as bench.latency) for the sales committed while the import was being
  written or applied, and for the others; the import's writing time; the time from the import's
  first statement until no change of blog 1 is queued any more (polled every 20 ms); daemon and
  server CPU during that time.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CpuMeter,
    DaemonProcess,
    PacedWriters,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    match_latencies,
    print_table,
    product_id,
    resolve_refresh,
    start_server,
    summarize,
    wait_drained,
)

TARGET_P99_MS = 100.0
TARGET_IMPORT_S = 15.0
IMPORT_BLOG = 1


def import_statements(net: Any, mode: str, products: int, chunk: int) -> list[str]:
    """The importer's statements, in order (stock of product n set to 500,000 + n)."""
    pm = net.table(IMPORT_BLOG, "postmeta")
    posts = [product_id(IMPORT_BLOG, n) for n in range(1, products + 1)]
    if mode == "rows":
        out = []
        for n, p in enumerate(posts, 1):
            out.append(f"DELETE FROM {pm} WHERE post_id = {p} AND meta_key = '_stock'")
            out.append(
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({p}, '_stock', '{500000 + n}')"
            )
        return out
    out = []
    for i in range(0, len(posts), chunk):
        part = list(enumerate(posts, 1))[i : i + chunk]
        cases = " ".join(f"WHEN {p} THEN '{500000 + n}'" for n, p in part)
        ids = ", ".join(str(p) for _, p in part)
        out.append(
            f"UPDATE {pm} SET meta_value = CASE post_id {cases} END WHERE meta_key = '_stock' AND post_id IN ({ids})"
        )
    return out


def blog_queued(net: Any, blog_id: int) -> int:
    with net.raw() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {net.prefix}syncd_change WHERE blog_id = %s", (blog_id,))
        return int(cur.fetchone()[0])


def run_import(net: Any, statements: list[str], times: dict[str, float]) -> None:
    with net.raw() as conn, conn.cursor() as cur:
        times["import_start"] = time.monotonic()
        for sql in statements:
            cur.execute(sql)
        times["import_written"] = time.monotonic()


def wait_import_applied(net: Any, times: dict[str, float], timeout: float) -> None:
    """Until no change of the import blog is queued (after the importer finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "import_written" in times and blog_queued(net, IMPORT_BLOG) == 0:
            times["import_applied"] = time.monotonic()
            return
        time.sleep(0.02)


def sale_figures(pairs: list[tuple[Any, float]], t0: float, t1: float) -> dict[str, Any]:
    during = [(t - w.committed) * 1000 for w, t in pairs if t0 <= w.committed <= t1]
    other = [(t - w.committed) * 1000 for w, t in pairs if not t0 <= w.committed <= t1]
    return {"during_import": summarize(during), "outside_import": summarize(other)}


def run(args: Any) -> dict[str, Any]:
    refresh = resolve_refresh(args.refresh)
    blogs = args.blogs or (3 if args.quick else 10)
    products = args.products or (1000 if args.quick else 10000)
    sale_skus = args.sale_skus or (500 if args.quick else 2000)
    duration = args.duration or (15.0 if args.quick else 60.0)
    server = start_server()
    out: dict[str, Any] = {
        "benchmark": "import_storm",
        "refresh": refresh,
        "machine": machine(),
        "server": server.version,
        "blogs": blogs,
        "products": products,
        "mode": args.mode,
        "chunk": args.chunk if args.mode == "multi" else None,
        "sales_rate": args.sales_rate,
        "overlap": args.overlap,
    }
    try:
        net = create_network(server, blogs)
        load_catalogue(net, products + sale_skus)
        statements = import_statements(net, args.mode, products, args.chunk)
        daemon = DaemonProcess(net, refresh).start()
        first = 1 if args.overlap else products + 1
        sales = PacedWriters(
            net,
            args.sales_rate,
            duration,
            2,
            sale_skus + (products if args.overlap else 0),
            [b for b in net.blog_ids if b != IMPORT_BLOG],
            seed=args.seed,
            first_sku=first,
        )
        times: dict[str, float] = {}
        cpu = CpuMeter(daemon.pid, server.proc.pid if server.proc else None)
        sold: list[Any] = []
        seller = threading.Thread(target=lambda: sold.extend(sales.run()), daemon=True)
        seller.start()
        time.sleep(args.lead)
        log(
            f"import: {len(statements):,} statements ({args.mode}) on blog {IMPORT_BLOG}, {products:,} products"
        )
        cpu.start()
        run_import(net, statements, times)
        wait_import_applied(net, times, timeout=args.max_wait)
        cpu.stop()
        seller.join()
        drained = wait_drained(net, timeout=args.max_wait, poll=0.2)
        events = daemon.stop()
        pairs, unmatched = match_latencies(sold, events)
        t0 = times["import_start"]
        t1 = times.get("import_applied", float("inf"))
        changes = (events.get("stats") or {}).get("changes", 0)
        out.update(
            {
                "import_statements": len(statements),
                "import_write_s": round(times["import_written"] - t0, 2),
                "import_applied_s": round(t1 - t0, 2) if "import_applied" in times else None,
                "sales": len(sold),
                "sales_unmatched": unmatched,
                "sales_late": sales.late,
                "sale_latency_ms": sale_figures(pairs, t0, t1),
                "drained": drained,
                "batches": len(events.get("batches", [])),
                "daemon_errors": len(daemon.errors()),
                "stats": events.get("stats"),
                **{k: round(v, 2) for k, v in cpu.used.items()},
                **cpu.per_change_ms(changes),
            }
        )
        net.engine.dispose()
    finally:
        server.stop()
    during = out["sale_latency_ms"]["during_import"]
    out["target"] = {
        "sale_p99_ms": TARGET_P99_MS,
        "import_s": TARGET_IMPORT_S,
        "measured_p99": during.get("p99"),
        "measured_import_s": out["import_applied_s"],
        "met": bool(
            during.get("p99") is not None
            and during["p99"] <= TARGET_P99_MS
            and out["import_applied_s"] is not None
            and out["import_applied_s"] <= TARGET_IMPORT_S
        ),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--blogs", type=int, default=0, help="blogs (default 10, quick 3)")
    p.add_argument("--products", type=int, default=0, help="products imported on blog 1 (default 10,000)")
    p.add_argument(
        "--sale-skus", type=int, default=0, help="SKUs sold that the import does not touch (2,000)"
    )
    p.add_argument("--sales-rate", type=float, default=20.0, help="sales per second on the other blogs")
    p.add_argument("--mode", choices=("rows", "multi"), default="rows", help="how the importer writes")
    p.add_argument("--chunk", type=int, default=1000, help="products per statement in --mode multi")
    p.add_argument("--overlap", action="store_true", help="sell the imported products too")
    p.add_argument("--duration", type=float, default=0.0, help="seconds of sales (default 60, quick 15)")
    p.add_argument("--lead", type=float, default=2.0, help="seconds of sales before the import starts")
    p.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for the import to apply")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    print(
        f"\nImport storm: {out['blogs']} blogs, {out['products']:,} products imported on blog {IMPORT_BLOG} "
        f"({out['mode']}, {out['import_statements']:,} statements), {out['sales_rate']:g} sales/s on the others, "
        f"derived writes: {out['refresh']}, load average {out['machine']['loadavg_at_end']}"
    )
    rows = [{"sales": k.replace("_", " "), **v} for k, v in out["sale_latency_ms"].items()]
    print_table(
        rows,
        [
            ("sales", "sales"),
            ("n", "n"),
            ("p50", "p50 ms"),
            ("p95", "p95 ms"),
            ("p99", "p99 ms"),
            ("max", "max ms"),
        ],
    )
    print(
        f"import written in {out['import_write_s']} s, fully applied after {out['import_applied_s']} s; "
        f"daemon CPU {out.get('daemon_cpu_ms_per_change')} ms/change, server {out.get('server_cpu_ms_per_change')}"
    )
    t = out["target"]
    print(
        f"\ntarget: sale p99 <= {t['sale_p99_ms']:g} ms during the import and the import applied in <= "
        f"{t['import_s']:g} s: {'met' if t['met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
