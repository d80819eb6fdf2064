"""Where one trigger firing's cost goes (issue 10): the per-statement cost of a postmeta UPDATE
under trigger bodies that add one piece at a time.

    python -m bench.trigger_floor                      # 20,000 statements per variant and case
    python -m bench.trigger_floor --iterations 5000 --variants none,empty,full --json
    python -m bench.trigger_floor --save --binlog   # the save under each capture mode's triggers

One blog per variant, identical catalogues; each blog's postmeta has one AFTER UPDATE trigger
(two for the ``+attribution`` variants) with that variant's body; blog 1 has none. Every
iteration runs the same statement (same product) on every blog, in an order rotated each
iteration, on one autocommit PyMySQL connection over the unix socket, and the per-variant figure
is the median of the paired differences against blog 1 in the same iteration. Cases: an
unwatched key (``_price``: the trigger fires and returns at its first test) and a watched key
really changed (``_stock`` relative, one change row). The load average is recorded before and
after. The change rows are deleted between blocks, outside the timed statements.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BINLOG_OPTIONS,
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
from bench.trigger_overhead import ALL_FIELDS  # noqa: E402
from syncd import attribution, capture, schema  # noqa: E402
from syncd.network import Blog  # noqa: E402

SKUS = 1000
_TEST = "@syncd_apply IS NULL AND (NEW.meta_key IN ({w}) OR OLD.meta_key IN ({w}))"
_TEST2 = "@syncd_apply IS NULL AND (NEW.meta_key IN ({w}) OR (NOT (OLD.meta_key <=> NEW.meta_key) AND OLD.meta_key IN ({w})))"
_HANDLER = "DECLARE CONTINUE HANDLER FOR 1146 BEGIN END;"
_INSERT = (
    "IF NOT (BINARY OLD.meta_value <=> BINARY NEW.meta_value) THEN INSERT INTO `{base}syncd_change` "
    "(blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) VALUES ({blog}, NEW.post_id, "
    "NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID()); END IF;"
)

#: The postmeta UPDATE body of trigger version 1 (sql/capture_trigger_update.sql before issue 10's
#: trigger-cost work), frozen here so that later versions are measured against it.
_V1 = (
    f"BEGIN {_HANDLER} IF {_TEST} THEN IF OLD.post_id <> NEW.post_id OR NOT (OLD.meta_key <=> NEW.meta_key) THEN "
    "INSERT INTO `{base}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) "
    "VALUES ({blog}, OLD.post_id, OLD.meta_key, 'D', OLD.meta_value, NULL, UTC_TIMESTAMP(6), CONNECTION_ID()), "
    "({blog}, NEW.post_id, NEW.meta_key, 'I', NULL, NEW.meta_value, UTC_TIMESTAMP(6), CONNECTION_ID()); "
    "ELSEIF" + _INSERT[len("IF") : -len(" END IF;")] + " END IF; END IF; END"
)

#: variant -> how its blog's postmeta UPDATE trigger(s) are made: a body template, or "capture"
#: (the body syncd installs today for every group realtime), plus "+attr" for the dashboard's
#: attribution ``_pm_au`` trigger as a second trigger on the same event.
VARIANTS: dict[str, str] = {
    "none": "",
    "empty": "BEGIN END",
    "one SET": "BEGIN SET @syncd_floor = 1; END",
    "apply test only": "BEGIN IF @syncd_apply IS NOT NULL THEN SET @syncd_floor = 1; END IF; END",
    "NEW.meta_key IN (1 key)": "BEGIN IF NEW.meta_key IN ('_stock') THEN SET @syncd_floor = 1; END IF; END",
    "NEW.meta_key IN (22 keys)": "BEGIN IF NEW.meta_key IN ({w}) THEN SET @syncd_floor = 1; END IF; END",
    "FIND_IN_SET (22 keys)": "BEGIN IF FIND_IN_SET(NEW.meta_key, {set}) THEN SET @syncd_floor = 1; END IF; END",
    "IN (22 keys), never evaluated": "BEGIN IF @syncd_never IS NOT NULL AND NEW.meta_key IN ({w}) THEN "
    "SET @syncd_floor = 1; END IF; END",
    "FIND_IN_SET x2 + tail-space guarded IN x2, one IF": "BEGIN IF {fis2} OR ({tail2} AND (NEW.meta_key IN ({w}) "
    "OR OLD.meta_key IN ({w}))) THEN SET @syncd_floor = 1; END IF; END",
    "FIND_IN_SET x2, ELSEIF tail-space: IN x2": "BEGIN IF {fis2} THEN SET @syncd_floor = 1; ELSEIF {tail2} THEN "
    "IF NEW.meta_key IN ({w}) OR OLD.meta_key IN ({w}) THEN SET @syncd_floor = 1; END IF; END IF; END",
    "CASE (22 keys)": "BEGIN IF CASE NEW.meta_key {case} ELSE 0 END THEN SET @syncd_floor = 1; END IF; END",
    "= OR chain (22 keys)": "BEGIN IF {or} THEN SET @syncd_floor = 1; END IF; END",
    "test only": f"BEGIN IF {_TEST} THEN SET @syncd_floor = 1; END IF; END",
    "test v2 only (OLD key tested only if moved)": f"BEGIN IF {_TEST2} THEN SET @syncd_floor = 1; END IF; END",
    "handler + test": f"BEGIN {_HANDLER} IF {_TEST} THEN SET @syncd_floor = 1; END IF; END",
    "test + insert, no handler": f"BEGIN IF {_TEST} THEN {_INSERT} END IF; END",
    "test, nested handler + insert": f"BEGIN IF {_TEST} THEN BEGIN {_HANDLER} {_INSERT} END; END IF; END",
    "test, insert into a bare table": f"BEGIN IF {_TEST} THEN IF NOT (BINARY OLD.meta_value <=> "
    "BINARY NEW.meta_value) THEN INSERT INTO floor_bare (v) VALUES (1); END IF; END IF; END",
    "test, insert, change table without secondary keys": f"BEGIN IF {_TEST} THEN "
    + _INSERT.replace("{base}syncd_change", "floor_nokeys")
    + " END IF; END",
    "v1 capture (every group)": _V1,
    "v1 capture + attribution": _V1 + "+attr",
    "capture (this tree)": "current",
    "capture (this tree) + attribution": "current+attr",
}


@contextmanager
def bench_network(blogs: int, binlog: bool = False) -> Iterator[Any]:
    """A private server holding ``blogs`` identical blogs of SKUS products and syncd's tables,
    stopped when the block ends (``binlog``: the server writes a ROW binary log)."""
    server = start_server(extra=BINLOG_OPTIONS if binlog else ())
    try:
        net = create_network(server, blogs)
        load_catalogue(net, SKUS)
        with net.engine.connect() as conn:
            schema.ensure_schema(conn, net.prefix)
        yield net
        net.engine.dispose()
    finally:
        server.stop()


def install_variant(conn: Any, net: Any, blog: int, variant: str) -> None:
    spec = VARIANTS[variant]
    if not spec:
        return
    pm = net.blog_prefix(blog) + "postmeta"
    name = f"{net.prefix}floor_b{blog}"
    if spec.startswith("current"):
        b = Blog(blog, net.blog_prefix(blog))
        capture.install_blog_triggers(conn, net.prefix, b, ALL_FIELDS)
        if spec.endswith("+attr"):
            _attribution_pm_au(conn, net, blog)
        return
    body = spec.removesuffix("+attr").replace("{w}", capture.watched_list(ALL_FIELDS.meta_keys))
    keys = ALL_FIELDS.meta_keys
    body = body.replace("{set}", "'" + ",".join(keys) + "'")
    body = body.replace("{fis2}", "(FIND_IN_SET(NEW.meta_key, {set}) OR FIND_IN_SET(OLD.meta_key, {set}))")
    body = body.replace("{tail2}", "(RIGHT(NEW.meta_key, 1) = ' ' OR RIGHT(OLD.meta_key, 1) = ' ')")
    body = body.replace("{set}", "'" + ",".join(keys) + "'")
    body = body.replace("{case}", " ".join(f"WHEN '{k}' THEN 1" for k in keys))
    body = body.replace("{or}", " OR ".join(f"NEW.meta_key = '{k}'" for k in keys))
    body = body.replace("{base}", net.prefix).replace("{blog}", str(blog))
    conn.exec_driver_sql(f"CREATE TRIGGER `{name}` AFTER UPDATE ON `{pm}` FOR EACH ROW {body}")
    if spec.endswith("+attr"):
        _attribution_pm_au(conn, net, blog)
    conn.commit()


def _attribution_pm_au(conn: Any, net: Any, blog: int) -> None:
    """The dashboard's ``_pm_au`` trigger only (its syncd_change trigger would reach every variant:
    ``--dashboard`` installs that one for all)."""
    attr = dict(attribution.render_blog(net.prefix, Blog(blog, net.blog_prefix(blog))))
    conn.exec_driver_sql(attr[f"{attribution.blog_trigger_prefix(net.prefix, blog)}_pm_au"])


def measure(
    net: Any,
    variants: list[str],
    make: Callable[[int, int, int], list[str]],
    iterations: int,
    clear_every: int = 500,
    session: dict[str, tuple[str, str]] | None = None,
) -> dict[str, list[float]]:
    """us per call of ``make(blog, sku, i)``'s statements, per variant (blog = its position + 1).
    ``session``: variant -> (statement before, statement after) its calls, outside the timing."""
    conn = net.raw()
    cur = conn.cursor()
    times: dict[str, list[float]] = {v: [] for v in variants}
    blogs = {v: i + 1 for i, v in enumerate(variants)}
    session = session or {}
    clock = time.perf_counter_ns
    for i in range(-min(500, iterations // 10), iterations):
        sku = (i % SKUS) + 1
        k = i % len(variants)
        for v in variants[k:] + variants[:k]:
            statements = make(blogs[v], sku, i)
            if v in session:
                cur.execute(session[v][0])
            t0 = clock()
            for sql in statements:
                cur.execute(sql)
            t1 = clock()
            if v in session:
                cur.execute(session[v][1])
            if i >= 0:
                times[v].append((t1 - t0) / 1000)
        if i % clear_every == clear_every - 1:
            _clear(cur, net)
    _clear(cur, net)
    conn.close()
    return times


def one_update(net: Any, key: str, value: str) -> Callable[[int, int, int], list[str]]:
    def make(blog: int, sku: int, i: int) -> list[str]:
        return [
            f"UPDATE `{net.blog_prefix(blog)}postmeta` SET meta_value = {value.format(i=i)} "
            f"WHERE post_id = {product_id(blog, sku)} AND meta_key = '{key}'"
        ]

    return make


def _clear(cur: Any, net: Any) -> None:
    for t in (f"{net.prefix}syncd_change", f"{net.prefix}syncd_source", "floor_bare", "floor_nokeys"):
        if _exists(cur, t):
            cur.execute(f"DELETE FROM `{t}`")


def _exists(cur: Any, name: str) -> bool:
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        (name,),
    )
    return bool(cur.fetchone()[0])


def summarize(times: dict[str, list[float]], base: str) -> list[dict[str, Any]]:
    out = []
    for v, t in times.items():
        diffs = sorted(x - y for x, y in zip(t, times[base], strict=True))
        out.append(
            {
                "variant": v,
                "median_us": round(statistics.median(t), 1),
                "added_paired_median_us": round(diffs[len(diffs) // 2], 1),
            }
        )
    return out


#: --save: the synthetic product save of bench/trigger_overhead.py (30 postmeta UPDATEs, the posts
#: UPDATE, a category moved) under these trigger sets. "binlog capture": the triggers syncd installs
#: with ``capture.mode = "binlog"`` (no postmeta trigger: ``Watch.meta_triggers`` False); with stock
#: only that is no trigger at all, a second "none" (a control: what two identical blogs differ by).
#: The dashboard drops its attribution triggers in binlog capture (syncd.web.server), so no
#: binlog row has them (and ``--dashboard`` measures a trigger that mode does not install).
SAVE_VARIANTS = (
    "none",
    "v1, stock only",
    "this tree, stock only",
    "v1, every group",
    "this tree, every group",
    "this tree, every group + dashboard's postmeta triggers",
    "binlog capture, stock only (no trigger: a control)",
    "binlog capture, every group",
)
#: --save --binlog: the save with the session's binary log off (``sql_log_bin = 0``), no trigger:
#: what writing the ROW binary log costs the save, for a shop that turns it on for binlog capture.
NO_BINLOG = "none, binary log off for the session"


def install_save_variant(conn: Any, net: Any, blog: int, variant: str) -> None:
    if variant in ("none", NO_BINLOG):
        return
    b = Blog(blog, net.blog_prefix(blog))
    watch = capture.STOCK_ONLY if "stock only" in variant else ALL_FIELDS
    if variant.startswith("binlog capture"):
        watch = replace(watch, meta_triggers=False)
    capture.install_blog_triggers(conn, net.prefix, b, watch)
    if variant.startswith("v1"):  # version 1's postmeta UPDATE body (the save's other triggers are unchanged)
        body = _V1.replace("{w}", capture.watched_list(watch.meta_keys))
        body = body.replace("{base}", net.prefix).replace("{blog}", str(blog))
        name = capture.trigger_name(net.prefix, blog, "update")
        conn.exec_driver_sql(
            f"CREATE OR REPLACE TRIGGER `{name}` AFTER UPDATE ON `{net.blog_prefix(blog)}postmeta` FOR EACH ROW {body}"
        )
    if variant.endswith("postmeta triggers"):
        attr = dict(attribution.render_blog(net.prefix, b))
        for suffix in ("_pm_ai", "_pm_au"):
            conn.exec_driver_sql(attr[attribution.blog_trigger_prefix(net.prefix, blog) + suffix])
    conn.commit()


def run_save(args: Any) -> dict[str, Any]:
    from bench import trigger_overhead as to  # noqa: PLC0415

    variants = list(SAVE_VARIANTS) + ([NO_BINLOG] if args.binlog else [])
    iterations = args.iterations or (200 if args.quick else 2000)
    load = [os.getloadavg()[0]]
    with bench_network(len(variants), args.binlog) as net:
        to.prepare_saves(net, SKUS, tuple(range(1, len(variants) + 1)))
        with net.engine.connect() as conn:
            if args.dashboard:
                conn.exec_driver_sql(attribution.render_change(net.prefix)[1])
            for i, v in enumerate(variants):
                install_save_variant(conn, net, i + 1, v)
            conn.commit()
        save = to.save_cases(net)[0]["make_many"]
        log(f"product save: {iterations:,} saves x {len(variants)} variants")
        session = {NO_BINLOG: ("SET SESSION sql_log_bin = 0", "SET SESSION sql_log_bin = 1")}
        times = measure(
            net,
            variants,
            lambda b, sku, i: save(b, sku, i, SKUS),
            iterations,
            clear_every=100,
            session=session,
        )
        results = {"product save (33 statements)": summarize(times, "none")}
        load.append(os.getloadavg()[0])
    return {
        "benchmark": "trigger_floor --save",
        "machine": machine(),
        "binlog": args.binlog,
        "iterations": iterations,
        "load_1min": load,
        "dashboard": args.dashboard,
        "results": results,
    }


def first_statements(net: Any, variants: list[str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """A new connection per round and variant (as every PHP request opens one): us of its first and
    second unwatched UPDATE, then of its first and second change row."""
    steps = (
        ("1st unwatched", "_price"),
        ("2nd unwatched", "_price"),
        ("1st row", "_stock"),
        ("2nd row", "_stock"),
    )
    out: dict[str, dict[str, list[float]]] = {name: {v: [] for v in variants} for name, _ in steps}
    clock = time.perf_counter_ns
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            blog = variants.index(v) + 1
            conn = net.raw()
            cur = conn.cursor()
            for name, key in steps:
                sql = (
                    f"UPDATE `{net.blog_prefix(blog)}postmeta` SET meta_value = meta_value + 1 "
                    f"WHERE post_id = {product_id(blog, r % SKUS + 1)} AND meta_key = '{key}'"
                )
                t0 = clock()
                cur.execute(sql)
                out[name][v].append((clock() - t0) / 1000)
            conn.close()
        if r % 100 == 99:
            with net.raw() as conn, conn.cursor() as cur:
                _clear(cur, net)
    return out


#: --terms: a term given to a product (term_relationships INSERT) under syncd's terms trigger
#: (unchanged by version 2: INSERT ... SELECT joining term_taxonomy and terms, filtered by
#: taxonomy) and under a variant that first tests the taxonomy with EXISTS (not adopted: cheaper
#: for an unwatched taxonomy, dearer for a watched one).
TERMS_VARIANTS = ("none", "capture's terms trigger", "EXISTS test first")


def install_terms_variant(conn: Any, net: Any, blog: int, variant: str) -> None:
    if variant == "none":
        return
    d = capture.render_terms_trigger(
        net.prefix, (blog, net.blog_prefix(blog)), "insert", ALL_FIELDS.taxonomies
    )
    sql = d.create_sql
    if variant.startswith("EXISTS"):
        p = net.blog_prefix(blog)
        gate = (
            f"IF @syncd_apply IS NULL AND EXISTS (SELECT 1 FROM `{p}term_taxonomy` x WHERE x.term_taxonomy_id = "
            f"NEW.term_taxonomy_id AND x.taxonomy IN ({capture.taxonomy_list(ALL_FIELDS.taxonomies)})) THEN"
        )
        sql = sql.replace("IF @syncd_apply IS NULL THEN", gate, 1)
    conn.exec_driver_sql(sql)
    conn.commit()


def run_terms(args: Any) -> dict[str, Any]:
    variants = list(TERMS_VARIANTS)
    iterations = args.iterations or (2000 if args.quick else 20000)
    load = [os.getloadavg()[0]]
    with bench_network(len(variants)) as net:
        with net.engine.connect() as conn:
            for i, v in enumerate(variants):
                install_terms_variant(conn, net, i + 1, v)
            ids = {
                b: dict(
                    conn.exec_driver_sql(
                        f"SELECT taxonomy, MIN(term_taxonomy_id) FROM `{net.blog_prefix(b)}term_taxonomy` GROUP BY taxonomy"
                    ).all()
                )
                for b in range(1, len(variants) + 1)
            }
            conn.commit()
        results = {}
        for taxonomy in ("product_type", "product_cat"):

            def make(blog: int, sku: int, i: int, taxonomy: str = taxonomy) -> list[str]:
                rel, post, tt = (
                    f"`{net.blog_prefix(blog)}term_relationships`",
                    product_id(blog, sku) + 5,
                    ids[blog][taxonomy],
                )
                # the DELETE is timed on both sides too (the DELETE trigger is not installed here)
                return [
                    f"INSERT INTO {rel} (object_id, term_taxonomy_id) VALUES ({post}, {tt})",
                    f"DELETE FROM {rel} WHERE object_id = {post} AND term_taxonomy_id = {tt}",
                ]

            watched = taxonomy in ALL_FIELDS.taxonomies
            case = f"term given ({taxonomy}, {'watched' if watched else 'unwatched'}), INSERT + DELETE"
            log(f"{case}: {iterations:,} x {len(variants)} variants")
            results[case] = summarize(measure(net, variants, make, iterations), "none")
            load.append(os.getloadavg()[0])
    return {
        "benchmark": "trigger_floor --terms",
        "machine": machine(),
        "iterations": iterations,
        "load_1min": load,
        "dashboard": False,
        "results": results,
    }


def run(args: Any) -> dict[str, Any]:
    if args.terms:
        return run_terms(args)
    if args.save:
        return run_save(args)
    variants = args.variants.split(";") if args.variants else list(VARIANTS)
    if variants[0] != "none":
        variants = ["none", *[v for v in variants if v != "none"]]
    iterations = args.iterations or (2000 if args.quick else 20000)
    load = [os.getloadavg()[0]]
    with bench_network(len(variants)) as net:
        with net.engine.connect() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE floor_bare (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, v INT)"
            )
            conn.exec_driver_sql(f"CREATE TABLE floor_nokeys LIKE `{net.prefix}syncd_change`")
            for key in ("stmt", "product"):
                conn.exec_driver_sql(f"ALTER TABLE floor_nokeys DROP KEY `{key}`")
            if args.dashboard:
                conn.exec_driver_sql(attribution.render_change(net.prefix)[1])
            for i, v in enumerate(variants):
                install_variant(conn, net, i + 1, v)
            conn.commit()
        results = {}
        for case, key, value in (
            ("unwatched key (_price)", "_price", "'{i}.99'"),
            ("watched key changed (_stock)", "_stock", "meta_value - 1"),
        ):
            log(f"{case}: {iterations:,} statements x {len(variants)} variants")
            results[case] = summarize(measure(net, variants, one_update(net, key, value), iterations), "none")
            load.append(os.getloadavg()[0])
        rounds = max(100, iterations // 50)
        log(f"first statements of a new connection: {rounds} connections x {len(variants)} variants")
        for name, times in first_statements(net, variants, rounds).items():
            results[f"new connection, {name} ({rounds} connections)"] = summarize(times, "none")
        load.append(os.getloadavg()[0])
    return {
        "benchmark": "trigger_floor",
        "machine": machine(),
        "iterations": iterations,
        "load_1min": load,
        "dashboard": args.dashboard,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=0, help="statements per variant and case (20,000)")
    p.add_argument("--variants", default="", help="separated by ;, from: " + "; ".join(VARIANTS))
    p.add_argument(
        "--dashboard", action="store_true", help="the dashboard's trigger on syncd_change too (every variant)"
    )
    p.add_argument(
        "--save", action="store_true", help="the synthetic product save under v1 and this tree's triggers"
    )
    p.add_argument("--terms", action="store_true", help="a term_relationships INSERT under the terms trigger")
    p.add_argument(
        "--binlog",
        action="store_true",
        help="--save on a server writing a ROW binary log (as binlog capture needs), plus the save "
        "with the session's binary log off",
    )
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        emit(out, True)
        return 0
    for case, rows in out["results"].items():
        per = "" if "connection" in case else f", {out['iterations']:,} per variant"
        print_table(
            rows,
            [("variant", "variant"), ("median_us", "median us"), ("added_paired_median_us", "added us")],
            title=f"\n{case}{per}, load {out['load_1min']}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
