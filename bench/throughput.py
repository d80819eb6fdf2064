"""Sustained throughput with 10 blogs: stock changes applied per second.

    python -m bench.throughput            # 10 blogs, 10,000 SKUs: 20,000-change backlog (60 s max) + 20 s steady state
    python -m bench.throughput --quick    # 500 SKUs, 600-change backlog, 1.5 s steady state (< 30 s)
    python -m bench.throughput --backlog 100000 --max-drain 600 --rate 2000 --steady 120 --json

Two phases, each with the daemon in its own process (``bench.daemon_proc``, default settings:
batch_size 500, idle_wait 10 ms):

1. **Drain.** With the daemon stopped, ``--backlog`` WooCommerce checkout statements
   (``meta_value = meta_value -1.000000``, autocommit, random SKU on a random blog) are committed:
   the triggers queue one change row each. Then the daemon starts; the drain rate is measured from
   its ``on_batch`` commit times: changes of every batch after the first / (last commit - first
   commit), so start-up (discovery, triggers, link groups) is not counted. The drain stops at
   ``--max-drain`` seconds if it has not finished (the rate is still exact for what was applied).
2. **Steady state.** Writers commit at ``--rate`` changes/s (open loop, as in bench.latency) for
   ``--steady`` seconds while the daemon runs. Reported: the rate the daemon applied during the
   writing window, the backlog left when the writers stopped, and commit->applied latency.

An "applied change" is one captured change row consumed in a committed batch; each one writes its
SKU on the 9 other blogs ("member writes").
"""

from __future__ import annotations

import random
import sys
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
    quiet_logs,
    resolve_refresh,
    start_server,
    summarize,
    wait_drained,
    woo_decrease_sql,
)
from syncd.config import config_for  # noqa: E402
from syncd.daemon import Daemon  # noqa: E402

TARGET_PER_S = 1000.0


def install(net: Any) -> None:
    """syncd's tables, triggers and link groups, without running the daemon (like `syncd install`)."""
    quiet_logs()
    cfg = config_for(net.url, net.prefix, log={"level": "warning"})
    d = Daemon(cfg, instance="bench-install", refresh=lambda *a, **k: None)
    try:
        d.prepare()
    finally:
        d.close()


def queue_backlog(net: Any, n: int, skus: int, seed: int) -> float:
    """Commit ``n`` checkout statements (autocommit each) while no daemon runs. Returns seconds."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    with net.raw() as conn, conn.cursor() as cur:
        for _ in range(n):
            b = rnd.choice(net.blog_ids)
            cur.execute(woo_decrease_sql(net, b, product_id(b, rnd.randrange(1, skus + 1))))
    return time.monotonic() - t0


def drain_rate(events: dict[str, Any]) -> tuple[float | None, int, float]:
    """(changes/s over batches 2..n, changes applied, seconds between the first and last commit)."""
    batches = events.get("batches", [])
    if len(batches) < 2:
        return None, sum(len(c) for _, c in batches), 0.0
    t_first, t_last = batches[0][0], batches[-1][0]
    after_first = sum(len(c) for _, c in batches[1:])
    span = t_last - t_first
    return (after_first / span if span > 0 else None), sum(len(c) for _, c in batches), span


def run(args: Any) -> dict[str, Any]:
    refresh = resolve_refresh(args.refresh)
    skus = args.skus or (500 if args.quick else 10000)
    backlog = args.backlog or (600 if args.quick else 20000)
    max_drain = args.max_drain or (6.0 if args.quick else 60.0)
    steady = args.steady or (1.5 if args.quick else 20.0)
    drain_timeout = args.drain_timeout or (3.0 if args.quick else 20.0)
    server = start_server()
    out: dict[str, Any] = {
        "benchmark": "throughput",
        "refresh": refresh,
        "machine": machine(),
        "server": server.version,
        "blogs": args.blogs,
        "skus": skus,
    }
    try:
        net = create_network(server, args.blogs)
        load_catalogue(net, skus)
        install(net)
        # -- 1. drain a backlog
        secs = queue_backlog(net, backlog, skus, args.seed)
        log(
            f"backlog: {backlog:,} changes committed in {secs:.1f} s ({backlog / secs:,.0f}/s, daemon stopped)"
        )
        daemon = DaemonProcess(net, refresh).start()
        cpu = CpuMeter(daemon.pid, server.proc.pid if server.proc else None).start()
        deadline = time.monotonic() + max_drain
        drained = wait_drained(net, timeout=max(0.0, deadline - time.monotonic()), poll=0.2)
        cpu.stop()
        events = daemon.stop()  # finishes the batch in flight
        left = net.pending()
        rate, applied, span = drain_rate(events)
        batches = events.get("batches", [])
        sizes = [len(c) for _, c in batches]
        out["drain"] = {
            "backlog": backlog,
            "applied": applied,
            "left": left,
            "drained": drained,
            "seconds": round(span, 2),
            "changes_per_s": round(rate, 1) if rate else None,
            "member_writes_per_s": round(rate * (args.blogs - 1), 1) if rate else None,
            "batches": len(batches),
            "mean_batch": round(sum(sizes) / len(sizes), 1) if sizes else 0,
            "daemon_errors": len(daemon.errors()),
            "stats": events.get("stats"),
            **cpu.per_change_ms(applied),
        }
        log(f"drain: {out['drain']}")
        if not drained:
            # Clear what is left so the steady state starts from an empty queue.
            with net.raw() as conn, conn.cursor() as cur:
                cur.execute(f"DELETE FROM {net.prefix}syncd_change")
        # -- 2. steady state with concurrent writers
        daemon = DaemonProcess(net, refresh).start()
        w = PacedWriters(net, args.rate, steady, 4, skus, net.blog_ids, seed=args.seed + 1, tag="steady")
        log(f"steady state: {args.rate:g} changes/s for {steady:g} s ({w.total:,} writes)")
        cpu = CpuMeter(daemon.pid, server.proc.pid if server.proc else None).start()
        writes = w.run()
        t_start = min(x.scheduled for x in writes) if writes else 0.0
        t_end = max(x.committed for x in writes) if writes else 0.0
        left_at_end = net.pending()
        drained = wait_drained(net, timeout=drain_timeout, poll=0.2)
        cpu.stop()
        events = daemon.stop()
        in_window = sum(len(c) for t, c in events.get("batches", []) if t_start <= t <= t_end)
        pairs, unmatched = match_latencies(writes, events)
        lat = [(t - x.committed) * 1000 for x, t in pairs]
        out["steady"] = {
            "offered_per_s": args.rate,
            "written_per_s": round(len(writes) / (t_end - t_start), 1) if writes else None,
            "applied_per_s": round(in_window / (t_end - t_start), 1) if writes else None,
            "seconds": round(t_end - t_start, 2),
            "backlog_at_end": left_at_end,
            "drained_after": drained,
            "late_writes": w.late,
            "writer_errors": len(w.errors),
            "unmatched": unmatched,
            "latency_ms": summarize(lat),
            "daemon_errors": len(daemon.errors()),
            "stats": events.get("stats"),
            **cpu.per_change_ms((events.get("stats") or {}).get("changes", 0)),
        }
        log(f"steady: {out['steady']}")
        net.engine.dispose()
    finally:
        server.stop()
    d, s = out["drain"], out["steady"]
    out["target"] = {
        "changes_per_s": TARGET_PER_S,
        "drain_met": bool(d["changes_per_s"] and d["changes_per_s"] >= TARGET_PER_S),
        "steady_met": bool(
            s["applied_per_s"]
            and s["applied_per_s"] >= min(TARGET_PER_S, args.rate) * 0.98
            and s["backlog_at_end"] < args.rate
        ),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--blogs", type=int, default=10)
    p.add_argument("--skus", type=int, default=0, help="SKUs per blog (default 10,000; quick 1,000)")
    p.add_argument("--backlog", type=int, default=0, help="changes queued before the drain (default 20,000)")
    p.add_argument("--max-drain", type=float, default=0.0, help="seconds the drain may take (default 60)")
    p.add_argument("--rate", type=float, default=TARGET_PER_S, help="offered changes/s in the steady state")
    p.add_argument("--steady", type=float, default=0.0, help="seconds of steady state (default 20)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=0.0,
        help="wait for the queue after the writers stop (default 20 s)",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    d, s = out["drain"], out["steady"]
    print(
        f"\nThroughput, {out['blogs']} blogs, {out['skus']:,} SKUs per blog, derived writes: {out['refresh']}"
    )
    print_table(
        [d],
        [
            ("backlog", "backlog"),
            ("applied", "applied"),
            ("left", "left"),
            ("seconds", "seconds"),
            ("changes_per_s", "changes/s"),
            ("member_writes_per_s", "member writes/s"),
            ("batches", "batches"),
            ("mean_batch", "mean batch"),
            ("daemon_cpu_ms_per_change", "daemon CPU ms/change"),
            ("server_cpu_ms_per_change", "server CPU ms/change"),
        ],
        title="Drain of a pre-loaded backlog",
    )
    lat = s["latency_ms"]
    print_table(
        [{**s, **{f"lat_{k}": v for k, v in lat.items()}}],
        [
            ("offered_per_s", "offered/s"),
            ("written_per_s", "written/s"),
            ("applied_per_s", "applied/s"),
            ("backlog_at_end", "backlog at end"),
            ("lat_p50", "p50 ms"),
            ("lat_p99", "p99 ms"),
            ("lat_max", "max ms"),
            ("daemon_cpu_ms_per_change", "daemon CPU ms/change"),
        ],
        title="Steady state with concurrent writers",
    )
    t = out["target"]
    print(
        f"\ntarget >= {t['changes_per_s']:,.0f} changes/s: drain {'met' if t['drain_met'] else 'MISSED'}, "
        f"steady state {'met' if t['steady_met'] else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
