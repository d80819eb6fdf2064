"""Benchmark: audit and reconcile on a large network.

1. A private MariaDB (``--buffer-pool``, default 6G so that the catalogue stays in memory) and a
   network of ``--blogs`` blogs with simple products loaded server-side (bench/common.py).
2. syncd's tables and link groups (``catalog.refresh_members`` per blog, as ``syncd install`` does).
3. ``syncd audit --json`` in its own process on the clean network: wall time and peak RSS, first
   at ``--small`` SKUs, then again after growing the catalogue to ``--skus`` (memory must stay flat).
4. 1% of the groups drifted (one member's quantity lowered by direct SQL, uncaptured), then
   ``syncd reconcile --json`` in its own process: wall time, peak RSS, writes; then an audit that
   must find nothing.

Every run also reports the CPU seconds of the syncd process and of the server, and the rows InnoDB
read (``Innodb_rows_read``): on a shared machine the wall time stretches with other work, these
much less. ``--baseline DIR`` measures a second source tree (e.g. ``git archive C | tar -x -C DIR``)
on the same network, each run right after the same run of this tree, so that the two compare in
the same conditions without loading the catalogue twice.

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


def server_cpu(server: Any) -> float:
    """CPU seconds (user + system) the private server has used so far."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rows_read(net: Any) -> int:
    """Rows the server has read from tables so far (``Rows_read`` on MariaDB, ``Innodb_rows_read``
    on MySQL; MariaDB also counts rows of internal temporary tables apart, in ``Rows_tmp_read``)."""
    with net.raw() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Rows_read', 'Innodb_rows_read')")
        found = dict(cur.fetchall())
    return int(found.get("Rows_read", found.get("Innodb_rows_read", 0)))


def measure(config: Path, *args: str, net: Any = None, tree: Path = REPO) -> dict[str, Any]:
    """``python -m syncd --config C ARGS`` (syncd from ``tree``) under a fresh measuring process, so
    that the peak RSS (RUSAGE_CHILDREN of that process) is syncd's alone: wall seconds, peak RSS
    (kB), client CPU seconds, exit, JSON; with ``net``, the server's CPU seconds and the rows it
    read (millions)."""
    code = (
        "import json, os, resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "s = time.monotonic() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'seconds': s, 'rss': u.ru_maxrss, 'cpu': u.ru_utime + u.ru_stime, "
        "'exit': p.returncode, 'out': p.stdout.decode(), 'err': p.stderr.decode()[-3000:]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = (server_cpu(net.server), rows_read(net)) if net is not None else None
    res = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "syncd", "--config", str(config), *args],
        cwd=str(tree),
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
    out = {
        "seconds": round(r["seconds"], 2),
        "rss_peak_kb": r["rss"],
        "client_cpu_s": round(r["cpu"], 2),
        "exit": r["exit"],
        "doc": doc,
    }
    if before is not None:
        out["server_cpu_s"] = round(server_cpu(net.server) - before[0], 2)
        out["rows_read_m"] = round((rows_read(net) - before[1]) / 1e6, 2)
    log(
        f"syncd {' '.join(args)} ({tree}): {out['seconds']} s, client CPU {out['client_cpu_s']} s, "
        f"server CPU {out.get('server_cpu_s')} s, rows read {out.get('rows_read_m')} M"
    )
    return out


def row(run: str, m: dict[str, Any], tree: str, **extra: Any) -> dict[str, Any]:
    return {
        "run": run,
        "tree": tree,
        "seconds": m["seconds"],
        "client_cpu_s": m["client_cpu_s"],
        "server_cpu_s": m.get("server_cpu_s"),
        "rows_read_m": m.get("rows_read_m"),
        "rss_mb": m["rss_peak_kb"] / 1024,
        **extra,
    }


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
    p.add_argument(
        "--baseline",
        type=Path,
        help="a second syncd source tree, measured right after this one in every run (same network, same load)",
    )
    args = p.parse_args()
    if args.quick:
        args.skus, args.small, args.blogs = 4_000, 1_000, 3
    trees = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    server = start_server(buffer_pool=args.buffer_pool)
    result: dict[str, Any] = {"machine": machine(), "blogs": args.blogs, "skus": args.skus}
    if args.baseline:
        result["baseline"] = str(args.baseline)
    try:
        net = create_network(server, args.blogs)
        result["server"] = server_version(net)
        cfg = write_config(net, Path(tempfile.mkdtemp(prefix="syncd-bench-ar-")) / "syncd.toml")
        rows = []
        load_catalogue(net, args.small)
        result["install_small_s"] = round(install(net), 1)
        for name, tree in trees:
            small = measure(cfg, "audit", "--json", net=net, tree=tree)
            assert small["exit"] == 0, small
            rows.append(row(f"audit, clean, {args.small:,} SKUs", small, name))
        load_catalogue(net, args.skus - args.small, first=args.small + 1)
        result["install_large_s"] = round(install(net), 1)
        measure(cfg, "audit", "--json", net=net)  # warm-up: the first scan after the load reads cold pages
        large = {}
        for name, tree in trees:
            large[name] = measure(cfg, "audit", "--json", net=net, tree=tree)
            assert large[name]["exit"] == 0, {k: v for k, v in large[name].items() if k != "doc"}
            rows.append(row(f"audit, clean, {args.skus:,} SKUs", large[name], name))
        rec = {}
        for name, tree in trees:
            drifted = drift(net, args.skus, args.drift)  # the same members again: the same writes
            rec[name] = measure(cfg, "reconcile", "--json", net=net, tree=tree)
            written = rec[name]["doc"].get("reconcile", {}).get("counts", {})
            rows.append(
                row(
                    f"reconcile, {drifted:,} groups drifted",
                    rec[name],
                    name,
                    writes=written.get("writes"),
                    exit=rec[name]["exit"],
                )
            )
            after = measure(cfg, "audit", "--json", net=net, tree=tree)
            rows.append(
                row(
                    "audit after reconcile",
                    after,
                    name,
                    drifted=after["doc"].get("counts", {}).get("drifted_groups"),
                    exit=after["exit"],
                )
            )
        large, rec = large["this"], rec["this"]
        result["runs"] = rows
        result["targets"] = {
            "audit_clean_le_10s": large["seconds"] <= 10,
            "reconcile_1pct_le_20s": rec["seconds"] <= 20,
        }
        print_table(
            rows,
            [
                ("run", "run"),
                ("tree", "tree"),
                ("seconds", "seconds"),
                ("client_cpu_s", "syncd CPU s"),
                ("server_cpu_s", "server CPU s"),
                ("rows_read_m", "rows read M"),
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
