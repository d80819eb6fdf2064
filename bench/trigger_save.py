"""Trigger cost of a real WooCommerce product creation (issue 10: "one WooCommerce product save,
about 30 meta writes"): trace 01 (``wc.php 2 create``, recorded from WooCommerce 11.0.1: 363
statements, 18 postmeta INSERTs, the posts INSERT and UPDATE, 7 term_relationships writes) replayed
on fresh copies of the recorded network, with and without syncd's triggers.

    python -m bench.trigger_save                   # 60 replays per side
    python -m bench.trigger_save --replays 20 --json

Sides: ``plain`` (no syncd), ``fields`` (syncd's tables and blog 2's capture triggers with every
field group realtime), ``fields+dashboard`` (the same plus the dashboard's attribution triggers),
``binlog fields`` (the triggers of ``capture.mode = "binlog"``: posts and term_relationships
only, no postmeta trigger; the dashboard drops its attribution triggers in that mode). ``--binlog`` runs the server with a ROW binary
log (binlog capture's requirement) and adds ``plain, binary log off`` (the replay's session with
``sql_log_bin = 0``: what writing the log costs the save).
Each replay gets its own copy of the recorded network (made before the timing); the sides of one
round run one after the other in an order rotated every round, and the figure is the median of
the paired differences against ``plain`` in the same round. Timed client-side per statement, on
one autocommit connection as the recording had (tests/integration/trace_replay.py); reported as
the whole replay and as the sum over the statements on the triggered tables (blog 2's postmeta,
posts and term_relationships: where the triggers fire; the rest is the same SQL on both sides and
only adds noise). The load average is recorded before and after. The replay's connection is new,
as a PHP request's is: what the first trigger firing and the first change row of a connection
cost (~35 and ~50 us more than the next ones here) is part of every real save.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BINLOG_OPTIONS,
    base_parser,
    emit,
    log,
    machine,
    print_table,
    start_server,
)
from bench.trigger_overhead import ALL_FIELDS  # noqa: E402
from syncd import attribution, capture, schema  # noqa: E402
from syncd.network import Blog  # noqa: E402
from syncd.testnet.harness import NetworkFactory  # noqa: E402
from tests.integration.trace_replay import Replay  # noqa: E402

TRACE = "01-create-simple"
BLOG = 2
SIDES = ("plain", "fields", "fields+dashboard", "binlog fields")
#: --binlog: the plain replay with its session's binary log off (sql_log_bin = 0).
NO_BINLOG = "plain, binary log off"
TRIGGERED = ("wp_2_postmeta", "wp_2_posts", "wp_2_term_relationships")


def prepare(net: Any, side: str) -> None:
    if side.startswith("plain"):
        return
    blog = Blog(BLOG, net.blog_prefix(BLOG))
    # binlog capture (capture.mode = "binlog"): the posts and term triggers only, no postmeta one
    watch = replace(ALL_FIELDS, meta_triggers=False) if side.startswith("binlog") else ALL_FIELDS
    with net.engine.connect() as conn:
        schema.ensure_schema(conn, net.prefix)
        capture.install_blog_triggers(conn, net.prefix, blog, watch)
        if side.endswith("+dashboard"):
            attribution.install(conn, net.prefix, [blog])
        conn.commit()


def warm(net: Any) -> None:
    """Open every table once, and the triggered ones for each kind of write (their triggers are
    parsed, and the tables they write opened, when a table is first opened): a shop's server has
    them in its table cache; a fresh copy would charge the first replay with it, unevenly."""
    with net.engine.connect() as conn:
        names = conn.exec_driver_sql(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_TYPE = 'BASE TABLE'"
        ).scalars()
        for name in list(names):
            conn.exec_driver_sql(f"SELECT 1 FROM `{name}` LIMIT 0").all()
        for name in TRIGGERED:
            conn.exec_driver_sql(f"INSERT INTO `{name}` SELECT * FROM `{name}` WHERE 1 = 0")
            conn.exec_driver_sql(f"DELETE FROM `{name}` WHERE 1 = 0")
        conn.exec_driver_sql("UPDATE `wp_2_postmeta` SET meta_value = meta_value WHERE 1 = 0")
        conn.exec_driver_sql("UPDATE `wp_2_posts` SET post_title = post_title WHERE 1 = 0")
        # Every trigger's statements once, rolled back (InnoDB's first use of the change table and
        # of the tables the triggers read), on this connection, not the replay's.
        post = conn.exec_driver_sql(
            "SELECT MIN(ID) FROM `wp_2_posts` WHERE post_type = 'product'"
        ).scalar_one()
        cat = conn.exec_driver_sql(
            "SELECT MIN(term_taxonomy_id) FROM `wp_2_term_taxonomy` WHERE taxonomy = 'product_cat'"
        ).scalar_one()
        conn.exec_driver_sql(
            f"UPDATE `wp_2_postmeta` SET meta_value = CONCAT(meta_value, 'x') WHERE post_id = {post} "
            "AND meta_key IN ('_stock', '_price')"
        )
        conn.exec_driver_sql(
            f"INSERT INTO `wp_2_postmeta` (post_id, meta_key, meta_value) VALUES ({post}, '_sku', 'x')"
        )
        conn.exec_driver_sql(
            f"DELETE FROM `wp_2_postmeta` WHERE post_id = {post} AND meta_key = '_sku' AND meta_value = 'x'"
        )
        conn.exec_driver_sql(
            f"UPDATE `wp_2_posts` SET post_title = CONCAT(post_title, 'x') WHERE ID = {post}"
        )
        conn.exec_driver_sql(
            f"INSERT INTO `wp_2_term_relationships` (object_id, term_taxonomy_id) VALUES (0, {cat})"
        )
        conn.exec_driver_sql(
            f"DELETE FROM `wp_2_term_relationships` WHERE object_id = 0 AND term_taxonomy_id = {cat}"
        )
        conn.rollback()
        conn.commit()


def triggered(sql: str) -> bool:
    head = sql[:60].replace("`", "")
    return head.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")) and any(
        f" {t} " in head or f" {t}(" in head for t in TRIGGERED
    )


def replay(net: Any, log_bin: bool = True) -> tuple[list[float], int]:
    """(ms of each statement in trace order, change rows made); ``log_bin`` False: the replay's
    session writes no binary log."""
    clock = time.perf_counter_ns
    per: list[float] = []
    with Replay(net, TRACE) as r:
        r.connection_id(1)  # the connection is opened outside the timing
        if not log_bin:
            cur = r._conn(1).cursor()
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.close()
        last = clock()

        def tick(st: Any) -> None:
            nonlocal last
            now = clock()
            per.append((now - last) / 1e6)
            last = now

        r.run(between=tick)
    rows = 0
    with net.engine.connect() as conn:
        if schema.schema_present(conn, net.prefix):
            rows = int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM `{net.prefix}syncd_change`").scalar_one())
    return per, rows


def added(side: list[list[float]], plain: list[list[float]], which: list[int]) -> float:
    """Sum over the statements ``which`` of each statement's median paired difference (robust to
    the machine's ms-long hiccups, which hit one statement of one replay at a time)."""
    return sum(statistics.median(s[i] - p[i] for s, p in zip(side, plain, strict=True)) for i in which)


def run(args: Any) -> dict[str, Any]:
    replays = args.replays or (6 if args.quick else 60)
    sides = SIDES + ((NO_BINLOG,) if args.binlog else ())
    # Room for every table of the copies of the network and the template (400 by default: shares
    # evicted mid-replay would be reopened, and their triggers parsed again, at every statement).
    caches = ["--table_definition_cache=4000", "--table_open_cache=8000"]
    server = start_server(extra=[*caches, *(BINLOG_OPTIONS if args.binlog else ())])
    factory = NetworkFactory(server)
    load = [os.getloadavg()[0]]
    times: dict[str, list[list[float]]] = {s: [] for s in sides}
    change_rows: dict[str, int] = {}
    try:
        for i in range(-2, replays):  # two warm-up rounds
            nets = {}
            for side in sides:
                nets[side] = factory.recorded_network()
                prepare(nets[side], side)
                warm(nets[side])
            k = i % len(sides)
            for side in sides[k:] + sides[:k]:
                per, change_rows[side] = replay(nets[side], log_bin=side != NO_BINLOG)
                if i >= 0:
                    times[side].append(per)
            for net in nets.values():
                factory.release(net)
            if i % 10 == 9:
                log(f"{i + 1} rounds, load {os.getloadavg()[0]:.2f}")
        load.append(os.getloadavg()[0])
    finally:
        factory.close()
        server.stop()
    sql = [st.sql for st in Replay(None, TRACE).todo]  # the statements as replayed (no connection yet)
    on = [i for i, q in enumerate(sql) if triggered(q)]
    every = list(range(len(sql)))
    rows = []
    for side in sides:
        rows.append(
            {
                "side": side,
                "change_rows": change_rows[side],
                "replay_median_ms": round(statistics.median(sum(t) for t in times[side]), 3),
                "triggered_median_ms": round(
                    statistics.median(sum(t[i] for i in on) for t in times[side]), 3
                ),
                "added_replay_ms": round(added(times[side], times["plain"], every), 3),
                "added_triggered_ms": round(added(times[side], times["plain"], on), 3),
            }
        )
    return {
        "benchmark": "trigger_save",
        "machine": machine(),
        "server": server.version,
        "binlog": args.binlog,
        "trace": TRACE,
        "statements": len(sql),
        "triggered_statements": len(on),
        "replays": replays,
        "load_1min": load,
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--replays", type=int, default=0, help="replays per side (default 60)")
    p.add_argument(
        "--binlog",
        action="store_true",
        help="a server writing a ROW binary log (as binlog capture needs), and the plain replay without it",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    print_table(
        out["results"],
        [
            ("side", "side"),
            ("change_rows", "change rows"),
            ("replay_median_ms", "replay ms (median)"),
            ("triggered_median_ms", "triggered-table statements ms"),
            ("added_replay_ms", "added, replay"),
            ("added_triggered_ms", "added, triggered-table statements"),
        ],
        title=f"\nTrace {out['trace']} ({out['statements']} statements, {out['triggered_statements']} on "
        f"triggered tables), {out['replays']} replays per side, load {out['load_1min']}; added = sum of "
        "per-statement paired medians",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
