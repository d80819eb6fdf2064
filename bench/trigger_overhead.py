"""Trigger overhead: what syncd's capture trigger adds to the shop's own writes.

    python -m bench.trigger_overhead             # 20,000 iterations per case (~1.5 min)
    python -m bench.trigger_overhead --quick     # 2,000 iterations per case (< 30 s)
    python -m bench.trigger_overhead --iterations 100000 --durable --json

Two blogs with identical catalogues: blog 2 has syncd's triggers, blog 3 has none. Each case runs
the same statement against both, interleaved (A B, then B A, ...) so that any drift of the machine
hits both sides equally, on one PyMySQL connection over the unix socket, in autocommit (as
WordPress runs), each statement on a different product. Timed client-side around the statement
(round trip + commit); the client's own cost is the same on both sides and cancels in the
difference. Cases:

* ``_stock`` relative UPDATE - WooCommerce's checkout statement; the trigger inserts one change row;
* ``_stock_status`` re-saved unchanged - the trigger compares the value and writes nothing;
* ``_price`` UPDATE - an unwatched key: the trigger fires and returns at its first test;
* apply session (``@syncd_apply = 1``) ``_stock`` UPDATE - syncd's own writes: the trigger returns
  at its first test (the marker path);
* one WooCommerce product save (issue 10): 30 postmeta UPDATEs, each a real change (every key of a
  simple product plus the price, shipping, identity and purchase keys), the ``posts`` UPDATE of
  title and modification time, and a category moved (term_relationships DELETE + INSERT): 33
  autocommit statements, timed as one save. Measured with the stock-only triggers and with every
  field group realtime (``--only save,save_fields``); target <= 0.5 ms added per save with every
  group realtime. Every write being a change is the worst case (WooCommerce writes changed keys only).

The change rows the trigger writes are deleted between blocks, outside the timed statements, as
the daemon would. ``--durable`` puts the server on disk with ``innodb_flush_log_at_trx_commit=1``
(one fsync per commit, like a production server); by default durability is off (tmpfs, no flush),
which makes the trigger's share of the statement look *larger*, not smaller.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    PRODUCT_META,
    BenchServer,
    base_parser,
    create_network,
    emit,
    load_catalogue,
    log,
    machine,
    print_table,
    product_id,
    start_server,
)
from syncd import capture, schema  # noqa: E402
from syncd.network import Blog  # noqa: E402
from syncd.plan import WATCHED_KEYS  # noqa: E402

TARGET_ADDED_MS = 0.2
TARGET_SAVE_ADDED_MS = 0.5
TRIGGERED, PLAIN = 2, 3

#: Every field group realtime: the fields of issue 10's table (price, tax, shipping, identity,
#: purchase, content, visibility, taxonomy), as the capture triggers watch them.
ALL_FIELDS = capture.Watch(
    (
        *WATCHED_KEYS,
        *sorted(
            "_regular_price _sale_price _sale_price_dates_from _sale_price_dates_to _tax_status _tax_class "
            "_weight _length _width _height _global_unique_id _sold_individually _purchase_note _virtual "
            "_downloadable".split()
        ),
    ),
    ("post_content", "post_excerpt", "post_title"),
    ("product_cat", "product_shipping_class", "product_tag", "product_visibility"),
)
#: Keys a product save writes besides bench.common.PRODUCT_META's 18 (inserted at set-up): 30 in all.
SAVE_EXTRA_META = (
    "_sale_price _sale_price_dates_from _sale_price_dates_to _weight _length _width _height "
    "_global_unique_id _purchase_note _low_stock_amount _edit_last _edit_lock".split()
)


def cases(net: Any) -> list[dict[str, Any]]:
    def stmt(key: str, value_sql: str) -> Any:
        def make(blog: int, sku: int, i: int) -> str:
            v = value_sql.format(i=i)
            return (
                f"UPDATE {net.table(blog, 'postmeta')} SET meta_value = {v} "
                f"WHERE post_id = {product_id(blog, sku)} AND meta_key='{key}'"
            )

        return make

    return [
        {
            "case": "_stock relative UPDATE (checkout)",
            "key": "stock",
            "make": stmt("_stock", "meta_value -1.000000"),
            "marker": False,
        },
        {
            "case": "_stock_status re-saved unchanged",
            "key": "status_same",
            "make": stmt("_stock_status", "'instock'"),
            "marker": False,
        },
        {
            "case": "_price UPDATE (unwatched key)",
            "key": "price",
            "make": stmt("_price", "'{i}.99'"),
            "marker": False,
        },
        {
            "case": "_stock UPDATE in apply session (@syncd_apply)",
            "key": "marker",
            "make": stmt("_stock", "meta_value -1.000000"),
            "marker": True,
        },
    ]


def save_cases(net: Any) -> list[dict[str, Any]]:
    """One product save as a list of statements (see the module docstring)."""
    keys = [k for k, _ in PRODUCT_META] + SAVE_EXTRA_META

    def make(blog: int, sku: int, i: int, skus: int) -> list[str]:
        post, pm = product_id(blog, sku), net.table(blog, "postmeta")
        cats = net.bench_cats[blog]
        moved_to = cats[(i // skus) % 2 == 0]  # the product moves between two categories
        return [
            *(
                f"UPDATE {pm} SET meta_value = '{i}.{n}' WHERE post_id = {post} AND meta_key = '{k}'"
                for n, k in enumerate(keys)
            ),
            f"UPDATE {net.table(blog, 'posts')} SET post_title = 'Product {i}', post_modified = NOW(), "
            f"post_modified_gmt = UTC_TIMESTAMP() WHERE ID = {post}",
            f"DELETE FROM {net.table(blog, 'term_relationships')} WHERE object_id = {post} "
            f"AND term_taxonomy_id IN ({cats[0]}, {cats[1]})",
            f"INSERT INTO {net.table(blog, 'term_relationships')} (object_id, term_taxonomy_id) VALUES ({post}, {moved_to})",
        ]

    base = {"make_many": make, "marker": False}
    return [
        {
            **base,
            "case": "product save (33 statements), stock triggers",
            "key": "save",
            "watch": capture.STOCK_ONLY,
        },
        {
            **base,
            "case": "product save (33 statements), every group realtime",
            "key": "save_fields",
            "watch": ALL_FIELDS,
        },
        # Floors of the every-group save (only with --only): what firing the same triggers costs
        # with a body that does nothing, and with one that names the change table (so every
        # statement opens and locks it, MariaDB's prelocking) but never inserts a row.
        {
            **base,
            "case": "save floor: every trigger body empty",
            "key": "save_floor_empty",
            "watch": ALL_FIELDS,
            "body": lambda prefix: "BEGIN END",
            "opt_in": True,
        },
        {
            **base,
            "case": "save floor: change table prelocked, no row",
            "key": "save_floor_prelock",
            "watch": ALL_FIELDS,
            "body": lambda prefix: (
                f"BEGIN IF @syncd_floor = 1 THEN INSERT INTO `{prefix}syncd_change` (blog_id, post_id, "
                "meta_key, op, captured_at) VALUES (0, 0, '', 'U', UTC_TIMESTAMP(6)); END IF; END"
            ),
            "opt_in": True,
        },
    ]


def replace_bodies(net: Any, body: str) -> None:
    """Blog TRIGGERED's triggers with this body instead of theirs (the floor cases)."""
    with net.engine.connect() as conn:
        for name, (table_name, _) in capture.installed_triggers(conn, net.prefix).items():
            event = conn.exec_driver_sql(
                "SELECT EVENT_MANIPULATION FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = %s",
                (name,),
            ).scalar_one()
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER `{name}` AFTER {event} ON `{table_name}` FOR EACH ROW {body}"
            )
        conn.commit()


def prepare_saves(net: Any, skus: int, blogs: tuple[int, ...] = (TRIGGERED, PLAIN)) -> None:
    """Set-up for the save cases (not timed): the extra meta rows, a second product category."""
    net.bench_cats = {}
    with net.engine.connect() as conn:
        for blog in blogs:
            pm, t, tt = (
                net.table(blog, "postmeta"),
                net.table(blog, "terms"),
                net.table(blog, "term_taxonomy"),
            )
            for k in SAVE_EXTRA_META:
                conn.exec_driver_sql(
                    f"INSERT INTO {pm} (post_id, meta_key, meta_value) SELECT {product_id(blog, 0)} + n * 10, '{k}', '' "
                    f"FROM bench_num WHERE n <= {skus}"
                )
            term = conn.exec_driver_sql(f"INSERT INTO {t} (name, slug) VALUES ('Bench', 'bench')").lastrowid
            other = conn.exec_driver_sql(
                f"INSERT INTO {tt} (term_id, taxonomy, description) VALUES ({term}, 'product_cat', '')"
            ).lastrowid
            uncategorized = conn.exec_driver_sql(
                f"SELECT tt.term_taxonomy_id FROM {tt} tt JOIN {t} t ON t.term_id = tt.term_id "
                "WHERE tt.taxonomy = 'product_cat' AND t.slug = 'uncategorized'"
            ).scalar_one()
            net.bench_cats[blog] = (int(uncategorized), int(other))
        conn.commit()


def selected(case: dict[str, Any], only: str) -> bool:
    """Every case but the floors by default; exactly the named ones with --only."""
    return case["key"] in only.split(",") if only else not case.get("opt_in")


def measure(net: Any, case: dict[str, Any], iterations: int, skus: int, block: int = 2000) -> dict[str, Any]:
    conn = net.raw()
    cur = conn.cursor()
    if case["marker"]:
        cur.execute("SET @syncd_apply = 1")
    with_t: list[float] = []
    without_t: list[float] = []
    make = case.get("make_many") or (lambda blog, sku, i, _skus: [case["make"](blog, sku, i)])
    clock = time.perf_counter_ns
    warm = min(500, iterations // 10)
    for i in range(-warm, iterations):
        sku = (i % skus) + 1
        a, b = make(TRIGGERED, sku, i, skus), make(PLAIN, sku, i, skus)
        order = ((a, with_t), (b, without_t)) if i % 2 == 0 else ((b, without_t), (a, with_t))
        for statements, out in order:
            t0 = clock()
            for sql in statements:
                cur.execute(sql)
            t1 = clock()
            if i >= 0:
                out.append((t1 - t0) / 1e6)
        if i % block == block - 1:
            cur.execute(f"DELETE FROM {net.prefix}syncd_change")
    cur.execute(f"DELETE FROM {net.prefix}syncd_change")
    conn.close()

    def stats(v: list[float]) -> dict[str, float]:
        s = sorted(v)
        q = lambda p: s[min(len(s) - 1, int(p / 100 * len(s)))]  # noqa: E731
        return {
            "mean": statistics.fmean(v),
            "p50": q(50),
            "p95": q(95),
            "p99": q(99),
            "trimmed_mean": statistics.fmean(s[len(s) // 20 : len(s) - len(s) // 20]),
        }

    w, wo = stats(with_t), stats(without_t)
    # Paired differences (same product, same moment): robust to the machine's drift.
    diffs = sorted(x - y for x, y in zip(with_t, without_t, strict=True))
    return {
        "case": case["case"],
        "iterations": iterations,
        "without_ms": {k: round(v, 4) for k, v in wo.items()},
        "with_ms": {k: round(v, 4) for k, v in w.items()},
        "added_mean_ms": round(w["mean"] - wo["mean"], 4),
        "added_p50_ms": round(w["p50"] - wo["p50"], 4),
        "added_trimmed_mean_ms": round(w["trimmed_mean"] - wo["trimmed_mean"], 4),
        "added_paired_median_ms": round(diffs[len(diffs) // 2], 4),
    }


def run(args: Any) -> dict[str, Any]:
    iterations = args.iterations or (2000 if args.quick else 20000)
    skus = 2000
    if args.durable:
        server = BenchServer(
            extra_options=[
                "--innodb_buffer_pool_size=256M",
                "--innodb_flush_log_at_trx_commit=1",
                "--innodb_flush_method=fsync",
                "--innodb_doublewrite=1",
            ],
            base_dir=tempfile.gettempdir(),
        ).start()
        log(f"durable private server {server.version} in {server.datadir}")
    else:
        server = start_server()
    results = []
    try:
        net = create_network(server, 3)
        load_catalogue(net, skus)
        with net.engine.connect() as conn:
            schema.ensure_schema(conn, net.prefix)
            capture.install_blog_triggers(conn, net.prefix, Blog(TRIGGERED, net.blog_prefix(TRIGGERED)))
            conn.commit()
            names = capture.installed_triggers(conn, net.prefix)
        log(f"triggers on blog {TRIGGERED}: {sorted(names)}; none on blog {PLAIN}")
        prepare_saves(net, skus)
        for case in cases(net) + save_cases(net):
            if not selected(case, args.only):
                continue
            with net.engine.connect() as conn:
                blog = Blog(TRIGGERED, net.blog_prefix(TRIGGERED))
                capture.install_blog_triggers(conn, net.prefix, blog, case.get("watch", capture.STOCK_ONLY))
            if "body" in case:
                replace_bodies(net, case["body"](net.prefix))
            n = max(200, iterations // 10) if "make_many" in case else iterations  # a save is 33 statements
            log(f"{case['case']}: {n:,} iterations x 2")
            results.append(measure(net, case, n, skus))
        net.engine.dispose()
    finally:
        server.stop()
    stock = next((r for r in results if r["case"].startswith("_stock relative")), None)
    save = next((r for r in results if r["case"].endswith("every group realtime")), None)
    return {
        "benchmark": "trigger_overhead",
        "machine": machine(),
        "server": server.version,
        "durable": args.durable,
        "results": results,
        "target": {
            "added_ms": TARGET_ADDED_MS,
            "measured_mean": stock["added_mean_ms"] if stock else None,
            "measured_paired_median": stock["added_paired_median_ms"] if stock else None,
            "met": (stock["added_mean_ms"] <= TARGET_ADDED_MS) if stock else None,
        },
        "target_save": {
            "added_ms": TARGET_SAVE_ADDED_MS,
            "measured_mean": save["added_mean_ms"] if save else None,
            "measured_paired_median": save["added_paired_median_ms"] if save else None,
            "met": (save["added_mean_ms"] <= TARGET_SAVE_ADDED_MS) if save else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=0, help="statements per side and case (default 20,000)")
    p.add_argument("--durable", action="store_true", help="server on disk with a flush at every commit")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated cases: stock,status_same,price,marker,save,save_fields "
        "(and, only when named, save_floor_empty,save_floor_prelock)",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    rows = []
    for r in out["results"]:
        rows.append(
            {
                "case": r["case"],
                "n": r["iterations"],
                **{f"wo_{k}": v for k, v in r["without_ms"].items()},
                **{f"w_{k}": v for k, v in r["with_ms"].items()},
                "added_mean": r["added_mean_ms"],
                "added_p50": r["added_p50_ms"],
                "added_paired": r["added_paired_median_ms"],
            }
        )
    print(
        f"\nTrigger overhead per autocommit statement, ms ({'durable' if out['durable'] else 'durability off'})"
    )
    print_table(
        rows,
        [
            ("case", "case"),
            ("n", "n"),
            ("wo_mean", "without mean"),
            ("wo_p50", "p50"),
            ("wo_p95", "p95"),
            ("wo_p99", "p99"),
            ("w_mean", "with mean"),
            ("w_p50", "p50"),
            ("w_p95", "p95"),
            ("w_p99", "p99"),
            ("added_mean", "added (mean)"),
            ("added_p50", "added (p50)"),
            ("added_paired", "added (paired median)"),
        ],
    )
    t = out["target"]
    print(
        f"\ntarget <= {t['added_ms']} ms added on the checkout UPDATE: measured {t['measured_mean']} ms (mean), "
        f"{t['measured_paired_median']} ms (paired median) -> {'met' if t['met'] else 'MISSED'}"
    )
    t = out["target_save"]
    if t["measured_mean"] is not None:
        print(
            f"target <= {t['added_ms']} ms added on a product save with every field group realtime: measured "
            f"{t['measured_mean']} ms (mean), {t['measured_paired_median']} ms (paired median) -> "
            f"{'met' if t['met'] else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
