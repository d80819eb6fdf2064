"""Trigger cost of one product save with every field group realtime, by the secondary indexes of
``{base}syncd_change`` (issue 10's lever "fewer indexes on the change table").

    python -m bench.trigger_indexes                  # 600 saves per side, variant and round, 3 rounds
    python -m bench.trigger_indexes --saves 300 --rounds 2 --json

The every-group save of :mod:`bench.trigger_overhead` (33 statements, 25 change rows), measured the
same way (triggered blog against plain blog, interleaved, paired), with the change table's indexes
set to each variant in turn; variants run in a different order every round (forward, backward) so
that a load that changes during the run does not favour one. Each row carries the load average.
A variant is only a measurement: ``stmt`` serves ``syncd.queue.complete`` and ``product`` the
per-product look-ups (``pending_for``, ``passed_rows``, settle); dropping one needs a schema change
and a measurement of those queries at 100,000 queued rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trigger_overhead as to  # noqa: E402
from bench.common import base_parser, create_network, emit, load_catalogue, log, print_table, start_server  # noqa: E402
from syncd import capture, schema  # noqa: E402
from syncd.network import Blog  # noqa: E402

STMT, PRODUCT = "`stmt` (`conn_id`, `captured_at`)", "`product` (`blog_id`, `post_id`)"
VARIANTS: dict[str, tuple[str, ...]] = {
    "today: PK, stmt, product": (STMT, PRODUCT),
    "PK, stmt": (STMT,),
    "PK, product": (PRODUCT,),
    "PK only": (),
}
SKUS = 2000


def set_indexes(net: Any, keys: tuple[str, ...]) -> None:
    change = f"`{net.prefix}syncd_change`"
    with net.engine.connect() as conn:
        have = {r[2] for r in conn.exec_driver_sql(f"SHOW INDEX FROM {change}") if r[2] != "PRIMARY"}
        for name in sorted(have):
            conn.exec_driver_sql(f"ALTER TABLE {change} DROP KEY `{name}`")
        for key in keys:
            conn.exec_driver_sql(f"ALTER TABLE {change} ADD KEY {key}")
        conn.commit()


def run(args: Any) -> list[dict[str, Any]]:
    server = start_server()
    rows: list[dict[str, Any]] = []
    try:
        net = create_network(server, 3)
        load_catalogue(net, SKUS)
        with net.engine.connect() as conn:
            schema.ensure_schema(conn, net.prefix)
            blog = Blog(to.TRIGGERED, net.blog_prefix(to.TRIGGERED))
            capture.install_blog_triggers(conn, net.prefix, blog, to.ALL_FIELDS)
            conn.commit()
        to.prepare_saves(net, SKUS)
        case = next(c for c in to.save_cases(net) if c["key"] == "save_fields")
        for r in range(args.rounds):
            names = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
            for name in names:
                set_indexes(net, VARIANTS[name])
                load = os.getloadavg()[0]
                m = to.measure(net, case, args.saves, SKUS)
                rows.append(
                    {
                        "round": r + 1,
                        "indexes": name,
                        "added_paired_median_ms": m["added_paired_median_ms"],
                        "added_mean_ms": m["added_mean_ms"],
                        "without_p50_ms": m["without_ms"]["p50"],
                        "load": f"{load:.2f} -> {os.getloadavg()[0]:.2f}",
                    }
                )
                log(str(rows[-1]))
        net.engine.dispose()
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--saves", type=int, default=600, help="saves per side, variant and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rows = run(args)
    if args.json:
        emit({"benchmark": "trigger_indexes", "results": rows}, True)
        return 0
    print_table(
        rows,
        [
            ("round", "round"),
            ("indexes", "change table indexes"),
            ("added_paired_median_ms", "added ms (paired median)"),
            ("added_mean_ms", "added ms (mean)"),
            ("without_p50_ms", "save without triggers p50 ms"),
            ("load", "load"),
        ],
        "Every-group product save: trigger cost by change table indexes",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
