"""Benchmark: a scheduled/manual field pass over a network where nothing differs (issue 10).

A private MariaDB and a network of ``--blogs`` blogs with ``--skus`` simple products each (the
audit benchmark's loader), syncd's tables and link groups, then ``syncd sync --fields
tax,identity,purchase --all --json`` in its own process: wall time, CPU, rows read. Target (issue
10): 100,000 SKUs x 10 blogs with nothing to change <= 10 s. Run ``python bench/fields_pass.py``
(mostly loading the catalogue), ``--quick`` for 4,000 SKUs x 3 blogs.
"""

from __future__ import annotations

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

GROUPS = "tax,identity,purchase"


def main() -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--blogs", type=int, default=10)
    p.add_argument("--buffer-pool", default="6G")
    args = p.parse_args()
    if args.quick:
        args.skus, args.blogs = 4_000, 3
    server = start_server(buffer_pool=args.buffer_pool)
    result: dict[str, Any] = {"machine": machine(), "blogs": args.blogs, "skus": args.skus}
    try:
        net = create_network(server, args.blogs)
        result["server"] = server_version(net)
        cfg = write_config(net, Path(tempfile.mkdtemp(prefix="syncd-bench-fields-")) / "syncd.toml")
        load_catalogue(net, args.skus)
        result["install_s"] = round(install(net), 1)
        measure(cfg, "sync", "--fields", GROUPS, "--all", "--json", net=net)  # warm-up: cold pages
        m = measure(cfg, "sync", "--fields", GROUPS, "--all", "--json", net=net)
        assert m["exit"] == 0 and m["doc"]["written"] == [], {k: v for k, v in m.items() if k != "doc"}
        result["runs"] = [row(f"field pass ({GROUPS}), nothing to change", m, "this")]
        result["targets"] = {"pass_nothing_to_change_le_10s": m["seconds"] <= 10}
        print_table(
            result["runs"],
            [
                ("run", "run"),
                ("seconds", "seconds"),
                ("client_cpu_s", "syncd CPU s"),
                ("server_cpu_s", "server CPU s"),
                ("rows_read_m", "rows read M"),
            ],
            f"Field pass, {args.skus:,} SKUs x {args.blogs} blogs",
        )
    finally:
        server.stop()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
