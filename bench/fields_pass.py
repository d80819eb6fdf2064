"""Benchmark: a scheduled/manual field pass over a network where nothing differs (issue 10).

A private MariaDB and a network of ``--blogs`` blogs with ``--skus`` simple products each (the
audit benchmark's loader), syncd's tables and link groups, then ``syncd sync --fields GROUPS --all
--json`` (every group by default: ``--groups``) in its own process: wall time, CPU, rows read, and
the load average. Target (issue 10): 100,000 SKUs x 10 blogs with nothing to change <= 10 s. Run
``python bench/fields_pass.py`` (mostly loading the catalogue), ``--quick`` for 4,000 SKUs x 3
blogs. ``--baseline DIR`` (e.g. ``git archive C | tar -x -C DIR``) measures a second source tree on
the same network, the two trees alternating over ``--rounds`` rounds (order swapped every round),
so that both see the same load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.audit_reconcile import install, measure, row, write_config  # noqa: E402
from bench.common import (  # noqa: E402
    base_parser,
    create_network,
    emit,
    load_catalogue,
    machine,
    print_table,
    server_version,
    start_server,
)

GROUPS = "price,tax,shipping,identity,purchase,content,visibility,taxonomy"


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--blogs", type=int, default=10)
    p.add_argument("--buffer-pool", default="6G")
    p.add_argument("--groups", default=GROUPS, help=f"field groups of the pass (default: {GROUPS})")
    p.add_argument("--baseline", type=Path, help="a second syncd source tree, alternated with this one")
    p.add_argument("--rounds", type=int, default=2, help="measured runs per tree (after one warm-up each)")
    args = p.parse_args()
    if args.quick:
        args.skus, args.blogs = 4_000, 3
    server = start_server(buffer_pool=args.buffer_pool)
    result: dict[str, Any] = {
        "machine": machine(),
        "blogs": args.blogs,
        "skus": args.skus,
        "groups": args.groups,
    }
    try:
        net = create_network(server, args.blogs)
        result["server"] = server_version(net)
        cfg = write_config(net, Path(tempfile.mkdtemp(prefix="syncd-bench-fields-")) / "syncd.toml")
        load_catalogue(net, args.skus)
        result["install_s"] = round(install(net), 1)
        result["runs"] = _runs(args, cfg, net)
        this = [r["seconds"] for r in result["runs"] if r["tree"] == "this"]
        result["targets"] = {"pass_nothing_to_change_le_10s": min(this) <= 10}
        print_table(
            result["runs"],
            [
                ("run", "run"),
                ("tree", "tree"),
                ("seconds", "seconds"),
                ("client_cpu_s", "syncd CPU s"),
                ("server_cpu_s", "server CPU s"),
                ("rows_read_m", "rows read M"),
                ("load", "load 1/5/15"),
            ],
            f"Field pass ({args.groups}), {args.skus:,} SKUs x {args.blogs} blogs",
        )
    finally:
        server.stop()
    emit(result, args.json)
    return 0


def _runs(args: argparse.Namespace, cfg: Path, net: Any) -> list[dict[str, Any]]:
    """One warm-up per tree (cold pages), then ``--rounds`` measured runs per tree, alternating."""
    trees = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    cmd = ("sync", "--fields", args.groups, "--all", "--json")
    for _, tree in trees:
        measure(cfg, *cmd, net=net, tree=tree)
    runs = []
    for i in range(args.rounds):
        for name, tree in trees if i % 2 == 0 else trees[::-1]:
            before = _load()
            m = measure(cfg, *cmd, net=net, tree=tree)
            assert m["exit"] == 0 and m["doc"]["written"] == [], {k: v for k, v in m.items() if k != "doc"}
            runs.append(row(f"round {i + 1}, nothing to change", m, name, load=f"{before} -> {_load()}"))
    return runs


if __name__ == "__main__":
    sys.exit(main())
