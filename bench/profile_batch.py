"""Where the time of one apply batch goes: wall time and SQL statements per step of the apply
transaction, for a given blog count and batch size.

    python -m bench.profile_batch                   # 3 and 10 blogs x batches of 1 and 500 changes
    python -m bench.profile_batch --quick           # smaller
    python -m bench.profile_batch --blogs 10 --batch 500 --rounds 3 --cprofile 30

Runs the daemon's own ``process_once`` in this process (no writers run while a batch is applied,
so there is no GIL sharing to distort anything), with every step of :class:`syncd.apply.Applier`
wrapped by a timer and every SQL statement on the apply connection counted and attributed to the
step that issued it. Statement counts do not depend on the machine's load; milliseconds do.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import random
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench.common import (  # noqa: E402
    base_parser,
    cpu_seconds,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    quiet_logs,
    resolve_refresh,
    start_server,
    woo_decrease_sql,
)
from syncd import apply as apply_mod  # noqa: E402
from syncd import catalog  # noqa: E402
from syncd import derived as derived_mod  # noqa: E402
from syncd import queue as queue_mod  # noqa: E402

try:
    from syncd import record as record_mod  # noqa: E402
except ImportError:  # an older syncd (--snapshot): history was written by the Applier
    record_mod = None
try:
    from syncd import write as write_mod  # noqa: E402
except ImportError:  # an older syncd (--snapshot): members were written by the Applier
    write_mod = None
from syncd.config import config_for  # noqa: E402
from syncd.daemon import Daemon  # noqa: E402

STEPS = (
    "fetch",
    # acknowledge + live blogs + link groups: one round trip at the start of apply, in "other"
    "membership",
    "groups",
    "lock_and_read",
    "plan",
    "member_writes",
    "derived",
    "history",
    "commit",
)


class Recorder:
    def __init__(self) -> None:
        self.stack: list[str] = []
        self.ms: dict[str, float] = defaultdict(float)
        self.stmts: dict[str, int] = defaultdict(int)
        self.trips: dict[str, int] = defaultdict(int)
        self.log: list[tuple[str, str]] | None = None  # (step, statement) of the last batch, if asked
        self.peak_kb: dict[str, float] = defaultdict(float)  # with tracemalloc: peak growth per step
        #: CPU seconds per step: this process (the daemon's side) and the server's (/proc ticks).
        self.client_s: dict[str, float] = defaultdict(float)
        self.server_s: dict[str, float] = defaultdict(float)
        self.server_pid: int | None = None

    def wrap(self, owner: Any, attr: str, step: str) -> None:
        fn = getattr(owner, attr)
        rec = self

        def wrapper(*a: Any, **k: Any) -> Any:
            rec.stack.append(step)
            tracing = tracemalloc.is_tracing()
            if tracing:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            t0, c0, s0 = time.perf_counter(), time.process_time(), rec.server_cpu()
            try:
                return fn(*a, **k)
            finally:
                rec.ms[step] += (time.perf_counter() - t0) * 1000
                rec.client_s[step] += time.process_time() - c0
                rec.server_s[step] += rec.server_cpu() - s0
                if tracing:
                    grown = (tracemalloc.get_traced_memory()[1] - base) / 1024
                    rec.peak_kb[step] = max(rec.peak_kb[step], grown)
                rec.stack.pop()

        setattr(owner, attr, wrapper)

    def server_cpu(self) -> float:
        return cpu_seconds(self.server_pid) if self.server_pid else 0.0

    def wrap_fn(self, fn: Callable[..., Any], step: str) -> Callable[..., Any]:
        holder = type("H", (), {"f": staticmethod(fn)})
        self.wrap(holder, "f", step)
        return holder.f

    def on_statement(self, _conn: Any, _cursor: Any, statement: str, *_a: Any, **_k: Any) -> None:
        step = self.stack[-1] if self.stack else "other"
        # syncd.db.run_many sends several statements as one round trip, joined by ";\n" (values
        # are bound, so the separator can only be syncd's): count statements and round trips.
        self.stmts[step] += statement.count(";\n") + 1
        self.trips[step] += 1
        if self.log is not None:
            self.log.append((step, " ".join(statement.split())[:160]))

    def reset(self) -> None:
        self.ms.clear()
        self.client_s.clear()
        self.server_s.clear()
        self.stmts.clear()
        self.trips.clear()


def measure(
    server: Any,
    nblogs: int,
    batch: int,
    rounds: int,
    refresh: str,
    skus: int,
    cprof: int,
    seed: int,
    show_sql: bool = False,
    trace: bool = False,
) -> dict[str, Any]:
    net = create_network(server, nblogs)
    load_catalogue(net, skus)
    rec = Recorder()
    rec.server_pid = server.proc.pid if server.proc else None
    cfg = config_for(net.url, net.prefix, log={"level": "warning"})
    if refresh == "real":
        # The daemon's own path: syncd.derived.refresh_many for every blog at once (wrapped as a
        # step below, like the other module attributes).
        d = Daemon(cfg, instance="bench-profile")
    else:

        def stub(*a: Any, **k: Any) -> None:
            return None

        d = Daemon(cfg, instance="bench-profile", refresh=rec.wrap_fn(stub, "derived"))
    d.prepare()
    # Wrap the steps (module attributes, so that the Applier's calls go through the wrappers).
    originals = []
    for owner, attr, step in (
        (queue_mod, "fetch", "fetch"),
        (derived_mod, "refresh_many", "derived"),
        (catalog, "known_members", "membership"),
        (catalog, "refresh_members", "membership"),
        (catalog, "groups_for", "groups"),
        (apply_mod.Applier, "_lock_and_read", "lock_and_read"),  # older syncd
        (apply_mod.Applier, "_lock_and_read_blogs", "lock_and_read"),  # older syncd
        (apply_mod.Applier, "lock", "lock_and_read"),
        (apply_mod, "plan_batch", "plan"),
        (apply_mod.Applier, "_write_member", "member_writes"),
        (apply_mod.Applier, "_write_stock_deltas", "member_writes"),  # bulk path (older syncd)
        (write_mod and write_mod.MemberWriter, "member", "member_writes"),
        (write_mod and write_mod.MemberWriter, "stock_deltas", "member_writes"),
        (apply_mod.Applier, "_write_history", "history"),  # older syncd
        (record_mod, "write_history", "history"),
    ):
        if owner is None or not hasattr(owner, attr):
            continue
        originals.append((owner, attr, getattr(owner, attr)))
        rec.wrap(owner, attr, step)
    assert d._apply_engine is not None
    sa.event.listen(d._apply_engine, "before_cursor_execute", rec.on_statement)
    rnd = random.Random(seed)
    writer = net.raw()
    cur = writer.cursor()

    def queue() -> None:
        for _ in range(batch):
            b = rnd.choice(net.blog_ids)
            cur.execute(woo_decrease_sql(net, b, product_id(b, rnd.randrange(1, skus + 1))))

    totals: list[float] = []
    cpu_totals = [0.0, 0.0]  # client, server CPU seconds over the measured rounds
    profile_text = ""
    try:
        with d._apply_engine.connect() as conn:
            commit = conn.commit

            def timed_commit() -> None:
                rec.stack.append("commit")
                t0 = time.perf_counter()
                try:
                    commit()
                finally:
                    rec.ms["commit"] += (time.perf_counter() - t0) * 1000
                    rec.stack.pop()

            queue()
            d.process_once(conn)  # warm-up: caches, compiled statements, buffer pool
            rec.reset()
            prof = cProfile.Profile() if cprof else None
            batch_peak_kb = 0.0
            if trace:
                tracemalloc.start(1)
            for i in range(rounds):
                if show_sql and i == rounds - 1:
                    rec.log = []
                queue()
                conn.commit = timed_commit  # type: ignore[method-assign]
                if prof:
                    prof.enable()
                if trace:
                    base = tracemalloc.get_traced_memory()[0]
                    tracemalloc.reset_peak()
                t0, c0, s0 = time.perf_counter(), time.process_time(), rec.server_cpu()
                n = d.process_once(conn)
                totals.append((time.perf_counter() - t0) * 1000)
                cpu_totals[0] += time.process_time() - c0
                cpu_totals[1] += rec.server_cpu() - s0
                if trace:
                    batch_peak_kb = max(batch_peak_kb, (tracemalloc.get_traced_memory()[1] - base) / 1024)
                if prof:
                    prof.disable()
                conn.commit = commit  # type: ignore[method-assign]
                if n != batch:
                    log(f"warning: batch applied {n} changes, expected {batch}")
            if trace:
                tracemalloc.stop()
            if prof:
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats(os.environ.get("SYNCD_PROFILE_SORT", "cumulative")).print_stats(cprof)
                profile_text = s.getvalue()
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
        d.close()
        writer.close()
        net.engine.dispose()
    total = sum(totals) / len(totals)
    steps = []
    accounted = 0.0
    for step in (*STEPS, "other"):
        ms = rec.ms.get(step, 0.0) / rounds
        accounted += ms if step != "other" else 0
        st = rec.stmts.get(step, 0) / rounds
        tr = rec.trips.get(step, 0) / rounds
        client_ms = rec.client_s.get(step, 0.0) * 1000 / rounds
        server_ms = rec.server_s.get(step, 0.0) * 1000 / rounds
        if step == "other":
            ms = max(0.0, total - accounted)
            client_ms = max(0.0, cpu_totals[0] * 1000 / rounds - sum(rec.client_s.values()) * 1000 / rounds)
            server_ms = max(0.0, cpu_totals[1] * 1000 / rounds - sum(rec.server_s.values()) * 1000 / rounds)
        steps.append(
            {
                "step": step,
                "ms": round(ms, 2),
                "pct": round(100 * ms / total, 1) if total else 0,
                "statements": round(st, 1),
                "round_trips": round(tr, 1),
                "per_change": round(st / batch, 2),
                "client_cpu_ms": round(client_ms, 1),
                "server_cpu_ms": round(server_ms, 1),
                **({"peak_mb": round(rec.peak_kb.get(step, 0.0) / 1024, 1)} if trace else {}),
            }
        )
    stmts_total = sum(rec.stmts.values()) / rounds
    trips_total = sum(rec.trips.values()) / rounds
    return {
        "blogs": nblogs,
        "batch": batch,
        "refresh": refresh,
        "rounds": rounds,
        "ms_per_batch": round(total, 2),
        "client_cpu_ms_per_change": round(cpu_totals[0] * 1000 / rounds / batch, 3),
        "server_cpu_ms_per_change": round(cpu_totals[1] * 1000 / rounds / batch, 3),
        "changes_per_s": round(batch * 1000 / total, 1),
        "statements_per_batch": round(stmts_total, 1),
        "statements_per_change": round(stmts_total / batch, 2),
        "round_trips_per_batch": round(trips_total, 1),
        "ms_per_statement": round(total / stmts_total, 3) if stmts_total else None,
        "steps": steps,
        "cprofile": profile_text,
        "sql": rec.log or [],
        **({"batch_peak_mb": round(batch_peak_kb / 1024, 1)} if trace else {}),
    }


def run(args: Any) -> dict[str, Any]:
    quiet_logs()
    refreshes = ["stub", "real"] if args.refresh == "both" else [resolve_refresh(args.refresh)]
    blogs = [int(x) for x in args.blogs.split(",")]
    batches = [int(x) for x in (args.batch or ("1,100" if args.quick else "1,500")).split(",")]
    rounds = args.rounds or (2 if args.quick else 5)
    skus = args.skus or (1000 if args.quick else 5000)
    server = start_server()
    results = []
    try:
        for refresh in refreshes:
            for nb in blogs:
                for b in batches:
                    r = 1 if b >= 200 and args.quick else rounds if b < 200 else max(1, rounds // 2)
                    log(f"profiling {nb} blogs, batches of {b}, {refresh} derived, {r} rounds")
                    results.append(
                        measure(
                            server,
                            nb,
                            b,
                            r,
                            refresh,
                            skus,
                            args.cprofile,
                            args.seed,
                            args.sql,
                            args.tracemalloc,
                        )
                    )
    finally:
        server.stop()
    return {"benchmark": "profile_batch", "machine": machine(), "server": server.version, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.set_defaults(refresh="both")
    for action in p._actions:
        if action.dest == "refresh":
            action.choices = ("auto", "stub", "real", "both")
    p.add_argument("--blogs", default="3,10")  # quick: the same blog counts, smaller batches
    p.add_argument(
        "--batch", default="", help="changes per batch, comma-separated (default 1,500; quick 1,100)"
    )
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--skus", type=int, default=0)
    p.add_argument(
        "--cprofile", type=int, default=0, help="also print the top N functions by cumulative time"
    )
    p.add_argument("--sql", action="store_true", help="also print every statement of the last batch")
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also measure the Python memory each step allocates at its peak (slower)",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    summary = [{k: v for k, v in r.items() if k not in ("steps", "cprofile", "sql")} for r in out["results"]]
    print_table(
        summary,
        [
            ("blogs", "blogs"),
            ("batch", "batch"),
            ("refresh", "derived"),
            ("ms_per_batch", "ms/batch"),
            ("changes_per_s", "changes/s"),
            ("client_cpu_ms_per_change", "client CPU ms/change"),
            ("server_cpu_ms_per_change", "server CPU ms/change"),
            ("statements_per_batch", "stmts/batch"),
            ("statements_per_change", "stmts/change"),
            ("round_trips_per_batch", "round trips/batch"),
            ("ms_per_statement", "ms/stmt"),
        ],
        title="Apply batches (in process, no concurrent writers)",
    )
    for r in out["results"]:
        print_table(
            r["steps"],
            [
                ("step", "step"),
                ("ms", "ms"),
                ("pct", "%"),
                ("statements", "statements"),
                ("round_trips", "round trips"),
                ("per_change", "per change"),
                ("client_cpu_ms", "client CPU ms"),
                ("server_cpu_ms", "server CPU ms"),
            ]
            + ([("peak_mb", "peak MB")] if "batch_peak_mb" in r else []),
            title=f"{r['blogs']} blogs, batch of {r['batch']}, {r['refresh']} derived: {r['ms_per_batch']} ms"
            + (f", Python allocation peak {r['batch_peak_mb']} MB" if "batch_peak_mb" in r else ""),
        )
        if r["cprofile"]:
            print(r["cprofile"])
        for step, stmt in r["sql"]:
            print(f"  {step:>13}  {stmt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
