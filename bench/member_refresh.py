"""Full member refresh: how long it takes, and how long an apply batch can wait for it.

    python -m bench.member_refresh                 # 50,000 SKUs x 2 blogs (~2 min)
    python -m bench.member_refresh --quick         # 5,000 SKUs x 2 blogs (< 30 s)
    python -m bench.member_refresh --skus 100000 --blogs 10 --json

Issue 9 path 13. For each way of refreshing a blog's membership - the single transaction per blog
(``catalog.refresh_members``, what the periodic refresh did until now) and the chunked one
(``catalog.refresh_members_in_chunks``, what it does now) - the script refreshes every blog while
a probe thread plays an apply batch that needs member rows: in a loop, ``SELECT ... FOR UPDATE``
of one random member row of the blog being refreshed (READ COMMITTED, the apply session's
isolation), timed, then rolled back. Reported: the refresh's duration, the longest transaction it
held (the whole blog, or the longest chunk), and the probe's lock waits (p50/p99/max). Nothing
is asserted (figures depend on the machine); the deterministic check is
tests/integration/test_member_refresh.py.
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

import sqlalchemy as sa  # noqa: E402

from bench.common import (  # noqa: E402
    BenchNetwork,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    start_server,
    summarize,
)
from syncd import catalog, schema  # noqa: E402
from syncd.db import SessionSettings, make_engine  # noqa: E402
from syncd.network import discover  # noqa: E402


class Probe(threading.Thread):
    """Times ``SELECT ... FOR UPDATE`` of random member rows of one blog until stopped."""

    def __init__(self, net: BenchNetwork, post_ids: dict[int, list[int]]) -> None:
        super().__init__(name="probe", daemon=True)
        self.engine = make_engine(net.url, SessionSettings(lock_wait_timeout=600), pool_size=1)
        self.member = f"{net.prefix}syncd_member"
        self.post_ids, self.blog, self.phase = post_ids, 0, ""
        self.waits_ms: list[tuple[str, float]] = []  # (phase the probe started in, wait)
        self.halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        with self.engine.connect() as conn:
            while not self.halt.is_set():
                blog = self.blog
                if not blog:
                    time.sleep(0.001)
                    continue
                post, phase = rng.choice(self.post_ids[blog]), self.phase
                t0 = time.perf_counter()
                conn.execute(
                    sa.text(f"SELECT 1 FROM {self.member} WHERE blog_id = :b AND post_id = :p FOR UPDATE"),
                    {"b": blog, "p": post},
                ).all()
                self.waits_ms.append((phase, (time.perf_counter() - t0) * 1000))
                conn.rollback()
                time.sleep(0.002)

    def stop(self) -> None:
        self.halt.set()
        self.join(600)
        self.engine.dispose()


def refresh_pass(net: BenchNetwork, mode: str, probe: Probe, chunk: int) -> dict[str, Any]:
    """Refresh every blog's membership the ``mode`` way; returns the figures of that pass."""
    longest, started = 0.0, time.perf_counter()
    probe.phase = mode
    with net.engine.connect() as conn:
        blogs = discover(conn, net.prefix).usable_blogs()
        conn.rollback()
        for blog in blogs:
            probe.blog = blog.blog_id
            if mode == "one transaction":
                t0 = time.perf_counter()
                catalog.refresh_members(conn, net.prefix, blog)
                conn.commit()
                longest = max(longest, time.perf_counter() - t0)
            else:
                marks = [time.perf_counter()]

                def tick(_range: Any, marks: list[float] = marks) -> None:
                    marks.append(time.perf_counter())

                catalog.refresh_members_in_chunks(conn, net.prefix, blog, chunk=chunk, after_chunk=tick)
                longest = max([longest, *(b - a for a, b in zip(marks, marks[1:], strict=False))])
        probe.blog = 0
    elapsed = time.perf_counter() - started
    time.sleep(0.1)  # let the last probe of this pass finish (its wait counts for this pass)
    waits = summarize([w for phase, w in probe.waits_ms if phase == mode])
    return {
        "mode": mode,
        "refresh_s": round(elapsed, 2),
        "longest_transaction_ms": round(longest * 1000, 1),
        "probe_locks": waits.get("n"),
        "wait_p50_ms": waits.get("p50"),
        "wait_p99_ms": waits.get("p99"),
        "wait_max_ms": waits.get("max"),
    }


def run(args: Any) -> dict[str, Any]:
    skus = args.skus or (5_000 if args.quick else 50_000)
    server = start_server()
    results = []
    try:
        net = create_network(server, args.blogs)
        load_catalogue(net, skus)
        with net.engine.connect() as conn:
            schema.ensure_schema(conn, net.prefix)
            for blog in discover(conn, net.prefix).usable_blogs():
                catalog.refresh_members(conn, net.prefix, blog)
                conn.commit()
            rows = conn.exec_driver_sql(f"SELECT blog_id, post_id FROM {net.prefix}syncd_member").all()
        post_ids: dict[int, list[int]] = {}
        for b, p in rows:
            post_ids.setdefault(int(b), []).append(int(p))
        log(f"{len(rows):,} members on {len(post_ids)} blogs")
        probe = Probe(net, post_ids)
        probe.start()
        try:
            for mode in ("one transaction", "chunks"):
                log(f"full refresh, {mode}")
                results.append(refresh_pass(net, mode, probe, args.chunk))
        finally:
            probe.stop()
        net.engine.dispose()
    finally:
        server.stop()
    return {
        "benchmark": "member_refresh",
        "machine": machine(),
        "server": server.version,
        "skus": skus,
        "blogs": args.blogs,
        "chunk": args.chunk,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--skus", type=int, default=0, help="SKUs per blog (default 50,000; --quick 5,000)")
    p.add_argument("--blogs", type=int, default=2, help="blogs (default 2)")
    p.add_argument(
        "--chunk", type=int, default=catalog.REFRESH_CHUNK, help="posts per chunk (default: syncd's)"
    )
    args = p.parse_args(argv)
    result = run(args)
    if not args.json:
        print_table(
            result["results"],
            [
                ("mode", "refresh"),
                ("refresh_s", "total s"),
                ("longest_transaction_ms", "longest txn ms"),
                ("probe_locks", "probes"),
                ("wait_p50_ms", "wait p50 ms"),
                ("wait_p99_ms", "wait p99 ms"),
                ("wait_max_ms", "wait max ms"),
            ],
            title=f"full member refresh, {result['skus']:,} SKUs x {result['blogs']} blogs, "
            f"chunks of {result['chunk']} posts",
        )
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
