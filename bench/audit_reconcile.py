"""Benchmark: audit and reconcile on a large network.

1. A private MariaDB (``--buffer-pool``, default 6G so that the catalogue stays in memory) and a
   network of ``--blogs`` blogs with simple products loaded server-side (bench/common.py).
2. syncd's tables and link groups (``catalog.refresh_members`` per blog, as ``syncd install`` does).
3. ``syncd audit --json`` in its own process on the clean network: wall time and peak RSS, first
   at ``--small`` SKUs, then again after growing the catalogue to ``--skus`` (memory must stay flat).
4. 1% of the groups drifted (one member's quantity lowered by direct SQL, uncaptured), then
   ``syncd reconcile --json`` in its own process: wall time, peak RSS, writes; then an audit that
   must find nothing.

Targets (issue 4): audit of 100,000 SKUs x 10 blogs with no drift <= 10 s; reconcile with 1% of the
groups drifted <= 20 s. Run: ``python bench/audit_reconcile.py`` (about 15 minutes on 2 cores, most
of it loading the catalogue), ``--quick`` for a small run (about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from bench.common import (  # noqa: E402
    BASE,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    server_version,
    start_server,
)
from syncd import catalog, schema  # noqa: E402
from syncd.db import make_engine  # noqa: E402
from syncd.network import discover  # noqa: E402


def write_config(net: Any, path: Path) -> Path:
    path.write_text(
        f'[database]\nurl = "{net.url}"\ntable_prefix = "{net.prefix}"\n\n[log]\nlevel = "warning"\nformat = "json"\n',
        encoding="utf-8",
    )
    return path


def measure(config: Path, *args: str) -> dict[str, Any]:
    """``python -m syncd --config C ARGS`` under a fresh measuring process, so that the peak RSS
    (RUSAGE_CHILDREN of that process) is syncd's alone: wall seconds, peak RSS (kB), exit, JSON."""
    code = (
        "import json, os, resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "s = time.monotonic() - t\n"
        "print(json.dumps({'seconds': s, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "'exit': p.returncode, 'out': p.stdout.decode(), 'err': p.stderr.decode()[-3000:]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "syncd", "--config", str(config), *args],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(res.stdout)
    try:
        doc = json.loads(r["out"])
    except ValueError:
        doc = {}
        log(f"syncd {' '.join(args)} exited {r['exit']}; stderr tail:\n{r['err']}")
    return {"seconds": round(r["seconds"], 2), "rss_peak_kb": r["rss"], "exit": r["exit"], "doc": doc}


def install(net: Any) -> float:
    """syncd's tables and link groups, as `syncd install` makes them. Returns seconds."""
    t0 = time.monotonic()
    engine = make_engine(net.url, connect_args={"read_timeout": 7200})
    try:
        with engine.connect() as conn:
            schema.ensure_schema(conn, BASE)
            network = discover(conn, BASE)
            conn.rollback()
            for blog in network.usable_blogs():
                t = time.monotonic()
                catalog.refresh_members(conn, BASE, blog)
                conn.commit()
                log(f"link groups of blog {blog.blog_id}: {time.monotonic() - t:.1f} s")
    finally:
        engine.dispose()
    return time.monotonic() - t0


def drift(net: Any, skus: int, share: float) -> int:
    """Lower one member's quantity (uncaptured: no triggers are installed) in ``share`` of the groups."""
    every = max(1, round(1 / share))
    n = 0
    with net.engine.connect() as conn:
        for b in net.blog_ids:
            chosen = [s for s in range(1, skus + 1, every) if (s // every) % len(net.blog_ids) == b - 1]
            for start in range(0, len(chosen), 1000):
                part = chosen[start : start + 1000]
                ids = ", ".join(str(product_id(b, s)) for s in part)
                conn.execute(
                    sa.text(
                        f"UPDATE {net.table(b, 'postmeta')} SET meta_value = meta_value - 5 "
                        f"WHERE meta_key = '_stock' AND post_id IN ({ids})"
                    )
                )
                n += len(part)
        conn.commit()
    return n


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--skus", type=int, default=100_000, help="SKUs of the large run (default 100000)")
    p.add_argument("--small", type=int, default=10_000, help="SKUs of the first (memory) run (default 10000)")
    p.add_argument("--blogs", type=int, default=10, help="blogs (default 10)")
    p.add_argument(
        "--drift", type=float, default=0.01, help="share of groups drifted for reconcile (default 0.01)"
    )
    p.add_argument("--buffer-pool", default="6G", help="innodb_buffer_pool_size of the private server")
    args = p.parse_args()
    if args.quick:
        args.skus, args.small, args.blogs = 4_000, 1_000, 3
    server = start_server(buffer_pool=args.buffer_pool)
    result: dict[str, Any] = {"machine": machine(), "blogs": args.blogs, "skus": args.skus}
    try:
        net = create_network(server, args.blogs)
        result["server"] = server_version(net)
        cfg = write_config(net, Path(tempfile.mkdtemp(prefix="syncd-bench-ar-")) / "syncd.toml")
        rows = []
        load_catalogue(net, args.small)
        result["install_small_s"] = round(install(net), 1)
        small = measure(cfg, "audit", "--json")
        assert small["exit"] == 0, small
        rows.append(
            {
                "run": f"audit, clean, {args.small:,} SKUs",
                "seconds": small["seconds"],
                "rss_mb": small["rss_peak_kb"] / 1024,
            }
        )
        load_catalogue(net, args.skus - args.small, first=args.small + 1)
        result["install_large_s"] = round(install(net), 1)
        measure(cfg, "audit", "--json")  # warm-up: the first scan after the load reads cold pages
        large = measure(cfg, "audit", "--json")
        assert large["exit"] == 0, {k: v for k, v in large.items() if k != "doc"}
        rows.append(
            {
                "run": f"audit, clean, {args.skus:,} SKUs",
                "seconds": large["seconds"],
                "rss_mb": large["rss_peak_kb"] / 1024,
            }
        )
        drifted = drift(net, args.skus, args.drift)
        rec = measure(cfg, "reconcile", "--json")
        written = rec["doc"].get("reconcile", {}).get("counts", {})
        rows.append(
            {
                "run": f"reconcile, {drifted:,} groups drifted",
                "seconds": rec["seconds"],
                "rss_mb": rec["rss_peak_kb"] / 1024,
                "writes": written.get("writes"),
                "exit": rec["exit"],
            }
        )
        after = measure(cfg, "audit", "--json")
        rows.append(
            {
                "run": "audit after reconcile",
                "seconds": after["seconds"],
                "rss_mb": after["rss_peak_kb"] / 1024,
                "drifted": after["doc"].get("counts", {}).get("drifted_groups"),
                "exit": after["exit"],
            }
        )
        result["runs"] = rows
        result["targets"] = {
            "audit_clean_le_10s": large["seconds"] <= 10,
            "reconcile_1pct_le_20s": rec["seconds"] <= 20,
        }
        print_table(
            rows,
            [
                ("run", "run"),
                ("seconds", "seconds"),
                ("rss_mb", "peak RSS MB"),
                ("writes", "writes"),
                ("drifted", "drift left"),
                ("exit", "exit"),
            ],
            title=f"syncd audit / reconcile, {args.blogs} blogs ({result['server']}, {result['machine']['cpus']} CPUs)",
        )
        print(
            f"\nlink groups built in {result['install_small_s']} s ({args.small:,} SKUs) and {result['install_large_s']} s ({args.skus:,} SKUs)"
        )
        print(f"targets: {result['targets']}")
        emit(result, args.json)
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
