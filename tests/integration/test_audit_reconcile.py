"""Audit and reconcile on a real server (recorded WooCommerce 11 network, capture triggers installed,
no daemon applying unless a test starts one)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.audit import Auditor, scope_for
from syncd.config import config_for
from syncd.reconcile import reconcile
from tests.integration.sync_helpers import deadlocks, ids, make_daemon, meta, pending, qty, stock


def audit(net: Any, **sections: Any):
    cfg = config_for(net.url, net.prefix, **sections)
    engine = cfg.database.make_engine()
    try:
        with engine.connect() as conn:
            scope = scope_for(conn, cfg)
        return Auditor(engine, scope).run()
    finally:
        engine.dispose()


def run_reconcile(net: Any, dry_run: bool = False, **sections: Any):
    return reconcile(config_for(net.url, net.prefix, **sections), dry_run=dry_run)


def installed(net: Any) -> None:
    """Triggers and link groups as the daemon leaves them, without a daemon applying anything."""
    make_daemon(net).close()


def drift_sql(
    net: Any, blog_id: int, post_id: int, key: str, value: str | None, *, captured: bool = False
) -> None:
    """Write a meta value directly; ``captured=False`` bypasses the triggers (drift from before
    syncd was installed, or from a writer syncd never saw)."""
    with net.engine.connect() as c:
        if not captured:
            c.exec_driver_sql("SET @syncd_apply = 1")
        c.execute(
            sa.text(
                f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"
            ),
            {"v": value, "p": post_id, "k": key},
        )
        if not captured:
            c.exec_driver_sql("SET @syncd_apply = NULL")
        c.commit()


def lookup_status(net: Any, blog_id: int, post_id: int) -> tuple[Any, ...] | None:
    with net.engine.connect() as c:
        row = c.execute(
            sa.text(
                f"SELECT stock_status, stock_quantity FROM {net.table(blog_id, 'wc_product_meta_lookup')} WHERE product_id = :p"
            ),
            {"p": post_id},
        ).one_or_none()
    return None if row is None else tuple(row)


def test_drift_is_found_by_audit_and_fixed_by_reconcile(wp_network):
    net = wp_network
    installed(net)
    mug, tshirt, poster, hm, hl, nb = (
        ids(net, s) for s in ("MUG", "TSHIRT-RED", "POSTER", "HOODIE-M", "HOODIE-L", "NOTEBOOK")
    )
    drift_sql(net, 2, mug[2], "_stock", "1.000000")  # quantity
    drift_sql(net, 3, tshirt[3], "_backorders", "yes")  # register
    drift_sql(net, 3, poster[3], "_stock_status", "instock")  # derived: stock 0, says in stock
    with net.engine.connect() as c:  # derived: a missing lookup row
        c.execute(
            sa.text(f"DELETE FROM {net.table(2, 'wc_product_meta_lookup')} WHERE product_id = :p"),
            {"p": hm[2]},
        )
        c.commit()
    drift_sql(net, 1, hl[1], "_stock", "6", captured=True)  # a sale captured, no daemon applying it
    assert pending(net) == 1

    report = audit(net).document()
    drifted = {g["sku"]: g["fields"] for g in report["drift"]}
    assert set(drifted) == {"MUG", "TSHIRT-RED", "NOTEBOOK"}  # NOTEBOOK: the recorded network's own
    assert [(g["sku"], g["pending_changes"]) for g in report["in_flight"]] == [("HOODIE-L", 1)]
    assert set(drifted["MUG"]) == {"quantity"} and set(drifted["TSHIRT-RED"]) == {"backorders"}
    derived = {(d["blog"], d["post"], d["field"]) for d in report["derived"]}
    assert (3, poster[3], "_stock_status") in derived
    assert any(d[:2] == (2, hm[2]) and d[2].startswith("wc_product_meta_lookup") for d in derived)
    assert report["exit_status"] & 4

    found, done = run_reconcile(net)
    assert found.counts["drifted_groups"] == 3 and found.counts["in_flight"] == 1
    assert done.pending_applied == 1 and pending(net) == 0
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [1, 1, 1]
    assert stock(net, 1, mug[1]) == "1"
    assert [qty(net, b, hl[b]) for b in (1, 2, 3)] == [6, 6, 6]  # the pending sale counted once
    assert [meta(net, b, tshirt[b], "_backorders") for b in (1, 2, 3)] == ["no", "no", "no"]
    assert [meta(net, b, nb[b], "_backorders") for b in (1, 2, 3)] == ["notify"] * 3  # tie: lowest blog id
    assert meta(net, 3, poster[3], "_stock_status") == "outofstock"
    assert lookup_status(net, 2, hm[2]) == ("instock", 3.0)
    assert lookup_status(net, 1, mug[1]) == ("instock", 1.0) and lookup_status(net, 2, mug[2]) == (
        "instock",
        1.0,
    )

    after = audit(net).document()
    assert after["counts"]["drifted_groups"] == 0 and after["counts"]["derived"] == 0, after
    assert after["exit_status"] == 0


def test_excluded_skus_are_ignored_by_daemon_audit_reconcile_and_tools(wp_network):
    from syncd.reconcile import set_stock, sync_skus

    net = wp_network
    sections = {"sync": {"exclude_skus": ["MUG", "POST*"]}}
    d = make_daemon(net, **sections)
    try:
        mug, poster, tshirt = ids(net, "MUG"), ids(net, "POSTER"), ids(net, "TSHIRT-RED")
        with net.engine.connect() as c:
            states = dict(
                c.execute(sa.text(f"SELECT sku, MIN(state) FROM {net.prefix}syncd_member GROUP BY sku")).all()
            )
        assert states["MUG"] == states["POSTER"] == "excluded" and states["TSHIRT-RED"] == "linked"
        # Capture/apply: a sale of an excluded product stays on its blog.
        drift_sql(net, 1, mug[1], "_stock", "2", captured=True)
        drift_sql(net, 1, tshirt[1], "_stock", "9", captured=True)
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [2, 3, 3]
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [9, 9, 9]
        drift_sql(net, 2, poster[2], "_stock", "4")  # and derived data of an excluded product left as is
    finally:
        d.close()
    report = audit(net, **sections).document()
    assert all(g["sku"] not in ("MUG", "POSTER") for g in report["drift"])
    assert all(x["sku"] not in ("MUG", "POSTER") for x in report["derived"])
    _found, done = run_reconcile(net, **sections)
    assert all(w["sku"] not in ("MUG", "POSTER") for w in done.writes)
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [2, 3, 3]
    assert meta(net, 2, poster[2], "_stock_status") == "outofstock"  # not healed: excluded
    cfg = config_for(net.url, net.prefix, **sections)
    for run in (lambda: sync_skus(cfg, ["MUG"]), lambda: set_stock(cfg, "poster", "5")):
        outcome, errors = run()
        assert len(errors) == 1 and "excluded by sync.exclude_skus" in errors[0]
        assert outcome.counts["writes"] == 0
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [2, 3, 3]


def checksums(net: Any) -> dict[str, Any]:
    """CHECKSUM TABLE of every table of the network database (WordPress's and syncd's)."""
    with net.engine.connect() as c:
        names = [r[0] for r in c.exec_driver_sql("SHOW TABLES")]
        return {r[0]: r[1] for r in c.exec_driver_sql("CHECKSUM TABLE " + ", ".join(f"`{n}`" for n in names))}


def test_dry_run_writes_nothing(wp_network):
    net = wp_network
    installed(net)
    mug, poster = ids(net, "MUG"), ids(net, "POSTER")
    drift_sql(net, 3, mug[3], "_stock", "2")
    drift_sql(net, 2, poster[2], "_stock_status", "instock")
    tshirt = ids(net, "TSHIRT-RED")
    drift_sql(net, 1, tshirt[1], "_backorders", "yes", captured=True)  # pending: not applied by a dry run
    before = checksums(net)
    found, plan = run_reconcile(net, dry_run=True)
    assert checksums(net) == before
    assert pending(net) == 1
    writes = {(w["sku"], w["blog"], w["field"], w["old"], w["new"]) for w in plan.writes}
    assert ("MUG", 1, "quantity", "3", "2") in writes and ("MUG", 2, "quantity", "3", "2") in writes
    assert not [
        w for w in plan.writes if w["sku"] == "TSHIRT-RED"
    ]  # in flight: its pending change comes first
    assert [g["sku"] for g in found.in_flight] == ["TSHIRT-RED"]
    assert {(h["blog"], h["post"]) for h in plan.healed} >= {(2, poster[2])}
    assert found.counts["drifted_groups"] >= 2  # MUG, NOTEBOOK


def spread(net: Any, sku: str, values: dict[int, tuple[str, str]]) -> dict[int, int]:
    """Give each blog's member its own (stock, backorders), uncaptured."""
    posts = ids(net, sku)
    for b, (q, bo) in values.items():
        drift_sql(net, b, posts[b], "_stock", q)
        drift_sql(net, b, posts[b], "_backorders", bo)
    return posts


def values(net: Any, posts: dict[int, int]) -> list[tuple[str | None, str | None]]:
    return [(stock(net, b, posts[b]), meta(net, b, posts[b], "_backorders")) for b in sorted(posts)]


def test_authority_lowest_blog_and_latest(wp_network):
    net = wp_network
    installed(net)
    posts = spread(net, "TSHIRT-RED", {1: ("8", "no"), 2: ("5", "notify"), 3: ("7", "yes")})
    run_reconcile(net)  # default: lowest (blog 2), registers follow it
    assert values(net, posts) == [("5", "notify")] * 3

    spread(net, "TSHIRT-RED", {1: ("8", "no"), 2: ("5", "notify"), 3: ("7", "yes")})
    run_reconcile(net, reconcile={"authority": "blog:3"})
    assert values(net, posts) == [("7", "yes")] * 3

    spread(net, "TSHIRT-RED", {1: ("8", "no"), 2: ("5", "notify"), 3: ("7", "yes")})
    with net.engine.connect() as c:  # blog 1's product was saved last
        c.execute(
            sa.text(
                f"UPDATE {net.table(1, 'posts')} SET post_modified_gmt = UTC_TIMESTAMP() + INTERVAL 1 HOUR WHERE ID = :p"
            ),
            {"p": posts[1]},
        )
        c.commit()
    _found, done = run_reconcile(net, reconcile={"authority": "latest"})
    assert values(net, posts) == [("8", "no")] * 3
    assert {g["authority"] for g in done.groups if g["sku"] == "TSHIRT-RED"} == {f"1:{posts[1]}"}

    # A group without a member on the authority blog is left alone, and says so (exit bit 32).
    mug = ids(net, "MUG")
    with net.engine.connect() as c:
        c.execute(
            sa.text(
                f"UPDATE {net.prefix}syncd_member SET state = 'skipped' WHERE blog_id = 3 AND post_id = :p"
            ),
            {"p": mug[3]},
        )
        c.commit()
    drift_sql(net, 2, mug[2], "_stock", "1")
    _found, done = run_reconcile(net, reconcile={"authority": "blog:3"})
    assert any(x["sku"] == "MUG" and "no member on authority blog 3" in x["reason"] for x in done.left_alone)
    assert qty(net, 2, mug[2]) == 1


def test_sync_and_set_stock(wp_network):
    from syncd.reconcile import set_stock, sync_skus

    net = wp_network
    installed(net)
    cfg = config_for(net.url, net.prefix)
    hs = ids(net, "HOODIE-S")
    drift_sql(net, 3, hs[3], "_stock", "2")
    drift_sql(net, 2, hs[2], "_stock", "4", captured=True)  # pending 5 -> 4: applied first (-1 everywhere)
    outcome, errors = sync_skus(cfg, ["hoodie-s"])  # SKUs compare like WooCommerce: case-insensitive
    assert errors == []
    assert [qty(net, b, hs[b]) for b in (1, 2, 3)] == [1, 1, 1]  # lowest of 4, 4, 1
    assert pending(net) == 0 and outcome.pending_applied == 1
    outcome, errors = set_stock(cfg, "HOODIE-S", "0")
    assert errors == [] and outcome.counts["writes"] == 3
    assert [stock(net, b, hs[b]) for b in (1, 2, 3)] == ["0", "0", "0"]
    assert [meta(net, b, hs[b], "_stock_status") for b in (1, 2, 3)] == ["outofstock"] * 3
    report = audit(net).document()
    assert not [g for g in report["drift"] if g["sku"] == "HOODIE-S"] and report["counts"]["derived"] == 0
    _o, errors = set_stock(cfg, "HOODIE-S", "lots")
    assert errors == ["QTY must be a number, got 'lots'"]


@pytest.mark.parametrize("write_groups", [100, 1], ids=["one-chunk", "chunk-per-group"])
def test_reconcile_during_a_write_storm_loses_nothing(wp_network, write_groups, monkeypatch):
    """Writers sell and restock on every blog (WooCommerce's relative UPDATE, autocommit) while the
    daemon applies and reconcile passes run: every member ends at its authority's start value plus
    every captured delta, exactly, and the final audit is clean.

    And InnoDB detected no deadlock at all: reconcile once deleted pending change rows while it
    held stock rows (the daemon's order is the reverse), and in about one run in three the cycle
    daemon -> shop UPDATE -> reconcile ended with the shop's statement rolled back. With one group
    per write chunk, reconcile runs many short transactions against the storm instead of one."""
    import syncd.reconcile

    monkeypatch.setattr(syncd.reconcile, "WRITE_GROUPS", write_groups)
    import random
    import threading
    import time as _time

    from syncd.db import SessionSettings, make_engine

    net = wp_network
    d = make_daemon(net)
    skus = ["TSHIRT-RED", "MUG", "HOODIE-S", "HOODIE-L", "NOTEBOOK"]
    posts = {s: ids(net, s) for s in skus}
    for s in skus:  # stock high enough that nothing flips out of stock
        for b, p in posts[s].items():
            drift_sql(net, b, p, "_stock", "500")
    drift_sql(net, 2, posts["MUG"][2], "_stock", "450")  # drift before the storm: MUG's lowest is 450
    drift_sql(net, 3, posts["HOODIE-L"][3], "_stock", "480")
    start = {s: min(qty(net, b, p) for b, p in posts[s].items()) for s in skus}
    stop = threading.Event()
    totals = {s: Decimal(0) for s in skus}
    lock = threading.Lock()
    errors: list[BaseException] = []
    writer_engine = make_engine(net.url, SessionSettings(lock_wait_timeout=50))  # WordPress's default wait

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with writer_engine.connect() as c:
                for _ in range(60):
                    s = rng.choice(skus)
                    b = rng.choice(sorted(posts[s]))
                    n = rng.choice([-3, -2, -1, -1, 1, 2])
                    c.exec_driver_sql(
                        f"UPDATE {net.table(b, 'postmeta')} SET meta_value = meta_value {'+' if n > 0 else '-'}{abs(n)} "
                        f"WHERE post_id = {int(posts[s][b])} AND meta_key = '_stock'"
                    )
                    c.commit()
                    with lock:
                        totals[s] += n
                    _time.sleep(rng.random() * 0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def daemon_loop() -> None:
        try:
            while not stop.is_set():
                if not d.apply_pending():
                    stop.wait(0.005)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    applier = threading.Thread(target=daemon_loop)
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    deadlocks_before = deadlocks(net)
    applier.start()
    for t in writers:
        t.start()
    passes = 0
    try:
        while any(t.is_alive() for t in writers) or passes < 2:
            run_reconcile(net)
            passes += 1
    finally:
        for t in writers:
            t.join()
        run_reconcile(net)  # a chunk skipped under contention is retried by the next pass
        deadline = _time.monotonic() + 30
        while pending(net) and _time.monotonic() < deadline:
            _time.sleep(0.05)
        stop.set()
        applier.join()
        d.close()
        writer_engine.dispose()
    if errors:
        with net.engine.connect() as c:
            st = c.exec_driver_sql("SHOW ENGINE INNODB STATUS").one()[2]
        i = st.find("LATEST DETECTED DEADLOCK")
        print("DEADLOCK_INFO", st[i : i + 6000])
    assert not errors, errors
    assert deadlocks(net) == deadlocks_before
    assert pending(net) == 0
    for s in skus:
        assert [qty(net, b, posts[s][b]) for b in sorted(posts[s])] == [start[s] + totals[s]] * len(
            posts[s]
        ), s
    report = audit(net).document()
    assert report["counts"]["drifted_groups"] == 0 and report["counts"]["derived"] == 0, report


def test_audit_reports_ambiguous_single_blog_and_mismatched_types(wp_network):
    net = wp_network
    sticker, cap, mug, notebook = ids(net, "STICKER"), ids(net, "CAP"), ids(net, "MUG"), ids(net, "NOTEBOOK")
    drift_sql(net, 3, cap[3], "_sku", "CAP-OLD")  # blog 3's variable CAP leaves the group: single-blog
    drift_sql(net, 3, sticker[3], "_sku", "CAP")  # ... and a simple product takes its SKU: types differ
    drift_sql(net, 1, notebook[1], "_sku", "MUG")  # two MUGs on blog 1: ambiguous
    installed(net)
    report = audit(net).document()
    assert [(s["sku"], s["blog"]) for s in report["single_blog"]] == [("CAP-OLD", 3)]
    assert [(t["sku"], sorted(m["type"] for m in t["members"])) for t in report["type_mismatch"]] == [
        ("CAP", ["simple", "variable", "variable"])
    ]
    assert [(a["sku"], a["blog"], sorted(a["posts"])) for a in report["ambiguous"]] == [
        ("MUG", 1, sorted([mug[1], notebook[1]]))
    ]
