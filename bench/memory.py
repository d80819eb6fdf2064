"""Daemon memory with a large catalogue: peak RSS of ``syncd run`` at 10,000 and 100,000 SKUs x 10 blogs.

    python -m bench.memory                       # 10k SKUs x 10 blogs (~1 min)
    python -m bench.memory --quick               # 2k SKUs x 10 blogs (< 30 s)
    python -m bench.memory --skus 10000,100000   # the full size: + 100k SKUs x 10 blogs (~7 min, most of
                                                 # it loading 900k products and the daemon's start-up)

For each size (ascending; the catalogue grows in place):

1. load the catalogue with the fast server-side loader (bench.common.load_catalogue: posts, 18
   postmeta rows per product, product_type/product_cat relationships, lookup row);
2. start the daemon exactly as an operator would, ``python -m syncd run --config FILE`` (real
   derived writes, default settings, log level warning), and wait for its first heartbeat: by then
   it has taken the leader lock, created its tables, discovered the 10 blogs, installed triggers
   and built the link groups of every product (``syncd_member``);
3. commit a burst of ``--burst`` WooCommerce checkout statements (random SKU, random blog) and
   wait until the daemon has applied them all (or ``--drain-timeout``);
4. read VmRSS and VmHWM (peak RSS) from /proc/<pid>/status - sampled every 100 ms during the run,
   and once more just before SIGTERM - then stop the daemon.

The server runs with a 2 GB buffer pool so that a million products stay in memory (the figure is
the daemon's, not the server's).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DaemonProcess,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    start_server,
    wait_drained,
    woo_decrease_sql,
)

TARGET_MB = 150.0


class RssSampler(threading.Thread):
    def __init__(self, daemon: DaemonProcess, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.d, self.every = daemon, every
        self.max_rss = 0
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.halt.is_set():
            try:
                rss = self.d.rss().get("VmRSS", 0)
            except OSError:
                return
            self.max_rss = max(self.max_rss, rss)
            self.samples.append((round(time.monotonic() - t0, 2), rss))
            self.halt.wait(self.every)


def burst(net: Any, n: int, skus: int, seed: int) -> float:
    rnd = random.Random(seed)
    t0 = time.monotonic()
    with net.raw() as conn, conn.cursor() as cur:
        for _ in range(n):
            b = rnd.choice(net.blog_ids)
            cur.execute(woo_decrease_sql(net, b, product_id(b, rnd.randrange(1, skus + 1))))
    return time.monotonic() - t0


def run(args: Any) -> dict[str, Any]:
    sizes = [int(x) for x in (args.skus or ("2000" if args.quick else "10000")).split(",")]
    burst_n = args.burst or (500 if args.quick else 3000)
    server = start_server(
        buffer_pool="2G", extra=["--innodb_log_file_size=1G", "--innodb_sort_buffer_size=64M"]
    )
    results = []
    try:
        net = create_network(server, args.blogs)
        loaded = 0
        for size in sorted(sizes):
            load_s = load_catalogue(net, size - loaded, first=loaded + 1) if size > loaded else 0.0
            loaded = size
            d = DaemonProcess(net, use_cli=not args.bench_runner, record=False, refresh=args.refresh)
            t0 = time.monotonic()
            d.start(timeout=600)
            ready_s = time.monotonic() - t0
            sampler = RssSampler(d)
            sampler.start()
            at_ready = d.rss()
            log(f"{size:,} SKUs: daemon pid {d.pid} ready in {ready_s:.1f} s, RSS {at_ready}")
            write_s = burst(net, burst_n, size, args.seed)
            drained = wait_drained(net, timeout=args.drain_timeout, poll=0.2)
            applied_s = time.monotonic() - t0 - ready_s
            left = net.pending()
            final = d.rss()
            sampler.halt.set()
            sampler.join()
            d.stop()
            errors = d.errors()
            with net.raw() as conn, conn.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {net.prefix}syncd_member")
                members = int(cur.fetchone()[0])
                cur.execute(f"DELETE FROM {net.prefix}syncd_change")
            results.append(
                {
                    "skus": size,
                    "blogs": args.blogs,
                    "products": size * args.blogs,
                    "members": members,
                    "load_s": round(load_s, 1),
                    "ready_s": round(ready_s, 1),
                    "burst": burst_n,
                    "burst_write_s": round(write_s, 1),
                    "burst_applied": burst_n - left,
                    "drained": drained,
                    "apply_s": round(applied_s, 1),
                    "rss_ready_mb": round(at_ready.get("VmRSS", 0) / 1024, 1),
                    "rss_end_mb": round(final.get("VmRSS", 0) / 1024, 1),
                    "peak_rss_mb": round(max(final.get("VmHWM", 0), sampler.max_rss) / 1024, 1),
                    "daemon_errors": len(errors),
                    "first_error": errors[0] if errors else None,
                    "command": " ".join(d.cmd[1:]),
                }
            )
            log(f"{size:,} SKUs: {results[-1]}")
        net.engine.dispose()
    finally:
        server.stop()
    worst = max((r["peak_rss_mb"] for r in results), default=None)
    return {
        "benchmark": "memory",
        "machine": machine(),
        "server": server.version,
        "results": results,
        "target": {
            "peak_rss_mb": TARGET_MB,
            "measured": worst,
            "met": worst is not None and worst <= TARGET_MB,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--skus", default="", help="comma-separated catalogue sizes (SKUs per blog), default 10000,100000"
    )
    p.add_argument("--blogs", type=int, default=10)
    p.add_argument("--burst", type=int, default=0, help="changes committed after start-up (default 3,000)")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument(
        "--bench-runner",
        action="store_true",
        help="run bench.daemon_proc instead of `python -m syncd run` (honours --refresh)",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    print("\nDaemon memory (python -m syncd run), 10 blogs")
    print_table(
        out["results"],
        [
            ("skus", "SKUs"),
            ("products", "products"),
            ("members", "members"),
            ("load_s", "load s"),
            ("ready_s", "start-up s"),
            ("burst_applied", "burst applied"),
            ("apply_s", "apply s"),
            ("rss_ready_mb", "RSS ready MB"),
            ("rss_end_mb", "RSS end MB"),
            ("peak_rss_mb", "peak RSS MB"),
        ],
    )
    t = out["target"]
    print(
        f"\ntarget peak RSS <= {t['peak_rss_mb']:.0f} MB: measured {t['measured']} MB -> {'met' if t['met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
