"""Trigger overhead: what syncd's capture trigger adds to the shop's own writes.

    python -m bench.trigger_overhead             # 20,000 iterations per case (~1.5 min)
    python -m bench.trigger_overhead --quick     # 2,000 iterations per case (< 30 s)
    python -m bench.trigger_overhead --iterations 100000 --durable --json

Two blogs with identical catalogues: blog 2 has syncd's triggers, blog 3 has none. Each case runs
the same statement against both, interleaved (A B, then B A, ...) so that any drift of the machine
hits both sides equally, on one PyMySQL connection over the unix socket, in autocommit (as
WordPress runs), each statement on a different product. Timed client-side around the statement
(round trip + commit); the client's own cost is the same on both sides and cancels in the
difference. Cases:

* ``_stock`` relative UPDATE - WooCommerce's checkout statement; the trigger inserts one change row;
* ``_stock_status`` re-saved unchanged - the trigger compares the value and writes nothing;
* ``_price`` UPDATE - an unwatched key: the trigger fires and returns at its first test;
* apply session (``@syncd_apply = 1``) ``_stock`` UPDATE - syncd's own writes: the trigger returns
  at its first test (the marker path).

The change rows the trigger writes are deleted between blocks, outside the timed statements, as
the daemon would. ``--durable`` puts the server on disk with ``innodb_flush_log_at_trx_commit=1``
(one fsync per commit, like a production server); by default durability is off (tmpfs, no flush),
which makes the trigger's share of the statement look *larger*, not smaller.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BenchServer,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    start_server,
)
from syncd import capture, schema  # noqa: E402
from syncd.network import Blog  # noqa: E402

TARGET_ADDED_MS = 0.2
TRIGGERED, PLAIN = 2, 3


def cases(net: Any) -> list[dict[str, Any]]:
    def stmt(key: str, value_sql: str) -> Any:
        def make(blog: int, sku: int, i: int) -> str:
            v = value_sql.format(i=i)
            return (
                f"UPDATE {net.table(blog, 'postmeta')} SET meta_value = {v} "
                f"WHERE post_id = {product_id(blog, sku)} AND meta_key='{key}'"
            )

        return make

    return [
        {
            "case": "_stock relative UPDATE (checkout)",
            "key": "stock",
            "make": stmt("_stock", "meta_value -1.000000"),
            "marker": False,
        },
        {
            "case": "_stock_status re-saved unchanged",
            "key": "status_same",
            "make": stmt("_stock_status", "'instock'"),
            "marker": False,
        },
        {
            "case": "_price UPDATE (unwatched key)",
            "key": "price",
            "make": stmt("_price", "'{i}.99'"),
            "marker": False,
        },
        {
            "case": "_stock UPDATE in apply session (@syncd_apply)",
            "key": "marker",
            "make": stmt("_stock", "meta_value -1.000000"),
            "marker": True,
        },
    ]


def measure(net: Any, case: dict[str, Any], iterations: int, skus: int, block: int = 2000) -> dict[str, Any]:
    conn = net.raw()
    cur = conn.cursor()
    if case["marker"]:
        cur.execute("SET @syncd_apply = 1")
    with_t: list[float] = []
    without_t: list[float] = []
    make = case["make"]
    clock = time.perf_counter_ns
    warm = min(500, iterations // 10)
    for i in range(-warm, iterations):
        sku = (i % skus) + 1
        a, b = make(TRIGGERED, sku, i), make(PLAIN, sku, i)
        order = ((a, with_t), (b, without_t)) if i % 2 == 0 else ((b, without_t), (a, with_t))
        for sql, out in order:
            t0 = clock()
            cur.execute(sql)
            t1 = clock()
            if i >= 0:
                out.append((t1 - t0) / 1e6)
        if i % block == block - 1:
            cur.execute(f"DELETE FROM {net.prefix}syncd_change")
    cur.execute(f"DELETE FROM {net.prefix}syncd_change")
    conn.close()

    def stats(v: list[float]) -> dict[str, float]:
        s = sorted(v)
        q = lambda p: s[min(len(s) - 1, int(p / 100 * len(s)))]  # noqa: E731
        return {
            "mean": statistics.fmean(v),
            "p50": q(50),
            "p95": q(95),
            "p99": q(99),
            "trimmed_mean": statistics.fmean(s[len(s) // 20 : len(s) - len(s) // 20]),
        }

    w, wo = stats(with_t), stats(without_t)
    # Paired differences (same product, same moment): robust to the machine's drift.
    diffs = sorted(x - y for x, y in zip(with_t, without_t, strict=True))
    return {
        "case": case["case"],
        "iterations": iterations,
        "without_ms": {k: round(v, 4) for k, v in wo.items()},
        "with_ms": {k: round(v, 4) for k, v in w.items()},
        "added_mean_ms": round(w["mean"] - wo["mean"], 4),
        "added_p50_ms": round(w["p50"] - wo["p50"], 4),
        "added_trimmed_mean_ms": round(w["trimmed_mean"] - wo["trimmed_mean"], 4),
        "added_paired_median_ms": round(diffs[len(diffs) // 2], 4),
    }


def run(args: Any) -> dict[str, Any]:
    iterations = args.iterations or (2000 if args.quick else 20000)
    skus = 2000
    if args.durable:
        server = BenchServer(
            extra_options=[
                "--innodb_buffer_pool_size=256M",
                "--innodb_flush_log_at_trx_commit=1",
                "--innodb_flush_method=fsync",
                "--innodb_doublewrite=1",
            ],
            base_dir=tempfile.gettempdir(),
        ).start()
        log(f"durable private server {server.version} in {server.datadir}")
    else:
        server = start_server()
    results = []
    try:
        net = create_network(server, 3)
        load_catalogue(net, skus)
        with net.engine.connect() as conn:
            schema.ensure_schema(conn, net.prefix)
            capture.install_blog_triggers(conn, net.prefix, Blog(TRIGGERED, net.blog_prefix(TRIGGERED)))
            conn.commit()
            names = capture.installed_triggers(conn, net.prefix)
        log(f"triggers on blog {TRIGGERED}: {sorted(names)}; none on blog {PLAIN}")
        for case in cases(net):
            if args.only and case["key"] not in args.only.split(","):
                continue
            log(f"{case['case']}: {iterations:,} iterations x 2")
            results.append(measure(net, case, iterations, skus))
        net.engine.dispose()
    finally:
        server.stop()
    stock = next((r for r in results if r["case"].startswith("_stock relative")), None)
    return {
        "benchmark": "trigger_overhead",
        "machine": machine(),
        "server": server.version,
        "durable": args.durable,
        "results": results,
        "target": {
            "added_ms": TARGET_ADDED_MS,
            "measured_mean": stock["added_mean_ms"] if stock else None,
            "measured_paired_median": stock["added_paired_median_ms"] if stock else None,
            "met": (stock["added_mean_ms"] <= TARGET_ADDED_MS) if stock else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=0, help="statements per side and case (default 20,000)")
    p.add_argument("--durable", action="store_true", help="server on disk with a flush at every commit")
    p.add_argument("--only", default="", help="comma-separated cases: stock,status_same,price,marker")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    rows = []
    for r in out["results"]:
        rows.append(
            {
                "case": r["case"],
                "n": r["iterations"],
                **{f"wo_{k}": v for k, v in r["without_ms"].items()},
                **{f"w_{k}": v for k, v in r["with_ms"].items()},
                "added_mean": r["added_mean_ms"],
                "added_p50": r["added_p50_ms"],
                "added_paired": r["added_paired_median_ms"],
            }
        )
    print(
        f"\nTrigger overhead per autocommit statement, ms ({'durable' if out['durable'] else 'durability off'})"
    )
    print_table(
        rows,
        [
            ("case", "case"),
            ("n", "n"),
            ("wo_mean", "without mean"),
            ("wo_p50", "p50"),
            ("wo_p95", "p95"),
            ("wo_p99", "p99"),
            ("w_mean", "with mean"),
            ("w_p50", "p50"),
            ("w_p95", "p95"),
            ("w_p99", "p99"),
            ("added_mean", "added (mean)"),
            ("added_p50", "added (p50)"),
            ("added_paired", "added (paired median)"),
        ],
    )
    t = out["target"]
    print(
        f"\ntarget <= {t['added_ms']} ms added on the checkout UPDATE: measured {t['measured_mean']} ms (mean), "
        f"{t['measured_paired_median']} ms (paired median) -> {'met' if t['met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
