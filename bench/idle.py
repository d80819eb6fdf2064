"""What a quiet shop costs: daemon and server CPU while nothing changes, and the propagation
latency of a sale that comes after a quiet moment.

    python -m bench.idle            # 3 blogs: 20 s idle, then 50 sales 250 ms apart
    python -m bench.idle --quick    # 5 s idle, 20 sales
    python -m bench.idle --blogs 10 --idle 60 --json

* Idle: the daemon (``bench.daemon_proc``, default settings) runs with an empty queue; CPU time
  of the daemon process and of the server process over ``--idle`` s (``/proc/<pid>/stat``), in
  percent of one core. The server's figure includes its own background threads (a server without
  syncd uses some too: ``--baseline`` measures it before the daemon starts).
* Idle propagation latency: sales (WooCommerce's checkout statement) ``--gap`` s apart, each
  after a quiet moment; commit -> the daemon's COMMIT of the batch that applied it (the
  ``on_batch`` hook, as bench.latency).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BINLOG_OPTIONS,
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
    resolve_refresh,
    start_server,
    summarize,
    wait_drained,
)

TARGET_PCT = 0.5


def cpu_pct(pids: dict[str, int | None], seconds: float) -> dict[str, float]:
    meter = CpuMeter(pids.get("daemon") or 0, pids.get("server"))
    meter.pids = {k: v for k, v in pids.items() if v}
    meter.start()
    time.sleep(seconds)
    return {f"{k}_cpu_pct": round(100 * v / seconds, 2) for k, v in meter.stop().items()}


def run(args: Any) -> dict[str, Any]:
    refresh = resolve_refresh(args.refresh)
    idle_s = args.idle or (5.0 if args.quick else 20.0)
    sales = args.sales or (20 if args.quick else 50)
    server = start_server(extra=BINLOG_OPTIONS if args.binlog else ())
    server_pid = server.proc.pid if server.proc else None
    out: dict[str, Any] = {
        "benchmark": "idle",
        "refresh": refresh,
        "machine": machine(),
        "server": server.version,
        "blogs": args.blogs,
        "binlog": args.binlog,
    }
    try:
        net = create_network(server, args.blogs)
        load_catalogue(net, args.skus)
        if args.baseline:
            out["server_without_daemon"] = cpu_pct({"server": server_pid}, idle_s)
        daemon = DaemonProcess(net, refresh).start()
        time.sleep(1.0)  # start-up's own work done
        out["idle"] = cpu_pct({"daemon": daemon.pid, "server": server_pid}, idle_s)
        log(f"idle {idle_s:g} s: {out['idle']}")
        w = PacedWriters(net, 1 / args.gap, sales * args.gap, 1, args.skus, net.blog_ids, seed=args.seed)
        writes = w.run()
        wait_drained(net, timeout=30)
        events = daemon.stop()
        pairs, unmatched = match_latencies(writes, events)
        out["latency_ms"] = summarize([(t - x.committed) * 1000 for x, t in pairs])
        out["unmatched"] = unmatched
        out["daemon_errors"] = len(daemon.errors())
        net.engine.dispose()
    finally:
        server.stop()
    out["target"] = {
        "cpu_pct": TARGET_PCT,
        "met": all(v <= TARGET_PCT for v in out["idle"].values()),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--blogs", type=int, default=3)
    p.add_argument("--skus", type=int, default=500)
    p.add_argument("--idle", type=float, default=0.0, help="seconds measured idle (default 20, quick 5)")
    p.add_argument("--sales", type=int, default=0, help="sales after quiet moments (default 50, quick 20)")
    p.add_argument("--gap", type=float, default=0.25, help="seconds between those sales")
    p.add_argument("--binlog", action="store_true", help="the server writes a binary log (ROW format)")
    p.add_argument("--baseline", action="store_true", help="also the server's CPU before the daemon starts")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    i, lat = out["idle"], out["latency_ms"]
    print(
        f"\nIdle, {out['blogs']} blogs, binary log {'on' if out['binlog'] else 'off'} ({out['machine']['code']['commit']}, load average "
        f"{out['machine']['loadavg_at_end']}): daemon {i.get('daemon_cpu_pct')}% of a core, "
        f"server {i.get('server_cpu_pct')}%"
        + (
            f" (server without the daemon: {out['server_without_daemon']['server_cpu_pct']}%)"
            if "server_without_daemon" in out
            else ""
        )
    )
    print(
        f"sale after a quiet moment: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, max {lat.get('max')} ms "
        f"({lat.get('n')} sales)"
    )
    print(f"target <= {TARGET_PCT}% each: {'met' if out['target']['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
