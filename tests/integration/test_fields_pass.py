"""The field pass through ``syncd sync --fields`` (manual mode, real server): the tax, identity and
purchase groups copied from the authority to the other members with their derived rows (lookup
columns, post_modified), history with ``field_group``, --dry-run, --json, bad values, the
authority setting, ``[fields.blogs]``, and captured changes left to the realtime path."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.sync_helpers import ids, meta
from tests.integration.test_audit_reconcile import drift_sql, installed
from tests.integration.test_operator_tools import _restore_logging, run  # noqa: F401 - fixture

MUG = "MUG"


def put_meta(net: Any, blog_id: int, post_id: int, key: str, value: str) -> None:
    """Set a meta value as a shop does (update, or insert when the product has no row)."""
    if meta(net, blog_id, post_id, key) is not None:
        drift_sql(net, blog_id, post_id, key, value)
        return
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.table(blog_id, 'postmeta')} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",
            (post_id, key, value),
        )
        c.commit()


def newest(net: Any, blog_id: int, post_id: int, when: str = "2030-01-01 00:00:00") -> None:
    """Make this member the most recently modified one (authority "newest")."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(blog_id, 'posts')} SET post_modified_gmt = %s WHERE ID = %s", (when, post_id)
        )
        c.commit()


def lookup(net: Any, blog_id: int, post_id: int, column: str) -> Any:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT `{column}` FROM {net.table(blog_id, 'wc_product_meta_lookup')} WHERE product_id = %s",
            (post_id,),
        ).scalar()


def history(net: Any, group: str | None = None) -> list[tuple[Any, ...]]:
    with net.engine.connect() as c:
        return c.execute(
            sa.text(
                f"SELECT role, field_group, blog_id, post_id, meta_key, old_value, new_value, origin_blog_id "
                f"FROM {net.prefix}syncd_history WHERE field_group IS NOT NULL "
                + ("AND field_group = :g " if group else "")
                + "ORDER BY id"
            ),
            {"g": group},
        ).all()


@pytest.fixture
def mug(wp_network: Any) -> tuple[Any, dict[int, int]]:
    installed(wp_network)
    where = ids(wp_network, MUG)
    assert len(where) >= 2
    return wp_network, where


def test_manual_tax_sync_writes_meta_lookup_post_modified_and_history(mug, tmp_path, capsys) -> None:
    net, where = mug
    src = min(where)
    drift_sql(net, src, where[src], "_tax_status", "shipping")
    newest(net, src, where[src])
    code, out, err = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    assert code == 4, err
    doc = json.loads(out)
    others = sorted(b for b in where if b != src)
    assert {(w["blog"], w["field"], w["old"], w["new"]) for w in doc["written"]} == {
        (b, "_tax_status", "taxable", "shipping") for b in others
    }
    for b in others:
        assert meta(net, b, where[b], "_tax_status") == "shipping"
        assert lookup(net, b, where[b], "tax_status") == "shipping"
        with net.engine.connect() as c:
            gmt = c.exec_driver_sql(
                f"SELECT post_modified_gmt FROM {net.table(b, 'posts')} WHERE ID = %s", (where[b],)
            ).scalar()
        assert gmt.year >= 2026  # a save: post_modified moved to now
    rows = history(net, "tax")
    assert {(r[0], r[2], r[4], r[5], r[6], r[7]) for r in rows} == {
        ("field", b, "_tax_status", "taxable", "shipping", src) for b in others
    }
    # syncd history shows them, and --field filters by group ('stock': stock rows only).
    code, out, _ = run(net, tmp_path, capsys, "history", MUG, "--field", "tax", "--json")
    entries = json.loads(out)["entries"]
    assert code == 0 and {(e["field_group"], e["blog"], e["key"], e["role"]) for e in entries} == {
        ("tax", b, "_tax_status", "field") for b in others
    }
    code, out, _ = run(net, tmp_path, capsys, "history", MUG, "--field", "stock", "--json")
    assert all(e["field_group"] is None for e in json.loads(out)["entries"])
    code, out, _ = run(net, tmp_path, capsys, "history", MUG)
    assert "tax:_tax_status" in out
    # Nothing differs any more: a second run writes nothing and says so.
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    assert code == 0 and json.loads(out)["written"] == []


def test_dry_run_writes_nothing_and_json_shape(mug, tmp_path, capsys) -> None:
    net, where = mug
    src = max(where)
    drift_sql(net, src, where[src], "_virtual", "yes")
    newest(net, src, where[src])
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "purchase", "--all", "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 4 and doc["exit_status"] == 4 and doc["dry_run"] is True
    assert set(doc) >= {
        "groups",
        "authority",
        "dry_run",
        "link_groups",
        "counts",
        "written",
        "problems",
        "skipped",
    }
    assert doc["groups"] == ["purchase"] and doc["authority"] == "newest"
    w = next(w for w in doc["written"] if w["sku"] == MUG)
    assert set(w) == {"group", "link_group", "blog", "post", "sku", "field", "old", "new", "authority"}
    assert (w["field"], w["old"], w["new"]) == ("_virtual", "no", "yes")
    for b in where:
        if b != src:
            assert meta(net, b, where[b], "_virtual") == "no"
            assert lookup(net, b, where[b], "virtual") == 0
    assert history(net) == []


def test_identity_and_purchase_insert_update_and_delete_as_woocommerce(mug, tmp_path, capsys) -> None:
    net, where = mug
    src, dst = sorted(where)[:2]
    # The target has a purchase note the authority does not: '' is deleted, never stored.
    put_meta(net, dst, where[dst], "_purchase_note", "old note")
    for key, value in (
        ("_global_unique_id", "4006381333931"),
        ("_downloadable", "yes"),
        ("_sold_individually", "yes"),
    ):
        put_meta(net, src, where[src], key, value)
    newest(net, src, where[src])
    code, out, err = run(net, tmp_path, capsys, "sync", "--fields", "identity,purchase", MUG)
    assert code == 4, err
    assert meta(net, dst, where[dst], "_global_unique_id") == "4006381333931"
    assert lookup(net, dst, where[dst], "global_unique_id") == "4006381333931"
    assert (
        meta(net, dst, where[dst], "_downloadable") == "yes"
        and lookup(net, dst, where[dst], "downloadable") == 1
    )
    assert meta(net, dst, where[dst], "_sold_individually") == "yes"
    assert meta(net, dst, where[dst], "_purchase_note") is None
    assert {r[1] for r in history(net)} == {"identity", "purchase"}


def test_bad_authority_value_and_missing_tax_class_are_left_alone(mug, tmp_path, capsys) -> None:
    net, where = mug
    src = min(where)
    drift_sql(net, src, where[src], "_tax_status", "bogus")
    newest(net, src, where[src])
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    doc = json.loads(out)
    assert code == 32 and doc["written"] == []
    assert doc["problems"][0]["field"] == "_tax_status" and "bogus" in doc["problems"][0]["reason"]
    # A tax class only the authority's blog has: that member is left alone with the reason.
    drift_sql(net, src, where[src], "_tax_status", "taxable")
    drift_sql(net, src, where[src], "_tax_class", "reduced-rate")
    others = sorted(b for b in where if b != src)
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.table(others[0], 'wc_tax_rate_classes')} (name, slug) VALUES ('Reduced rate', 'reduced-rate')"
        )
        c.commit()
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    doc = json.loads(out)
    assert code == 4 | 32
    assert [(w["blog"], w["new"]) for w in doc["written"]] == [(others[0], "reduced-rate")]
    assert [(p["blog"], p["field"]) for p in doc["problems"]] == [(b, "_tax_class") for b in others[1:]]
    assert "does not exist" in doc["problems"][0]["reason"]
    assert meta(net, others[0], where[others[0]], "_tax_class") == "reduced-rate"
    for b in others[1:]:
        assert meta(net, b, where[b], "_tax_class") == ""
    assert {r[0] for r in history(net)} == {"field", "skipped"}


def test_authority_blog_and_fields_blogs(mug, tmp_path, capsys) -> None:
    net, where = mug
    blogs = sorted(where)
    assert len(blogs) == 3
    drift_sql(net, blogs[2], where[blogs[2]], "_tax_status", "none")
    newest(net, blogs[0], where[blogs[0]])  # newest, but the configured authority wins
    extra = f'[fields]\ntax = "manual"\n[fields.schedule]\nauthority = "{blogs[2]}"\n[fields.blogs]\ntax = [{blogs[1]}, {blogs[2]}]\n'
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json", extra=extra)
    doc = json.loads(out)
    assert code == 4 and doc["authority"] == str(blogs[2])
    assert [(w["blog"], w["new"]) for w in doc["written"]] == [(blogs[1], "none")]
    assert meta(net, blogs[0], where[blogs[0]], "_tax_status") == "taxable"  # not taking part


def test_captured_changes_are_left_to_the_realtime_path(mug, tmp_path, capsys) -> None:
    net, where = mug
    src, dst = sorted(where)[:2]
    drift_sql(net, src, where[src], "_tax_status", "none")
    newest(net, src, where[src])
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.prefix}syncd_change (blog_id, post_id, meta_key, op, old_value, new_value, captured_at) "
            "VALUES (%s, %s, '_tax_status', 'U', 'taxable', 'shipping', NOW(6))",
            (dst, where[dst]),
        )
        c.commit()
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax,purchase", MUG, "--json")
    doc = json.loads(out)
    assert doc["written"] == [] and code == 32
    assert [(s["group"], s["sku"]) for s in doc["skipped"]] == [("tax", MUG)]
    assert "realtime" in doc["skipped"][0]["reason"]


def test_bad_arguments(mug, tmp_path, capsys) -> None:
    net, _ = mug
    assert run(net, tmp_path, capsys, "sync", "--fields", "colour", MUG)[0] == 16
    assert run(net, tmp_path, capsys, "sync", "--fields", "tax", "NO-SUCH-SKU")[0] == 16
    assert run(net, tmp_path, capsys, "sync", "--fields", "tax")[0] == 2
    assert run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--all")[0] == 2
    assert run(net, tmp_path, capsys, "sync", "--all")[0] == 2
    assert history(net) == []


def test_audit_reports_differing_synced_fields(mug, tmp_path, capsys) -> None:
    net, where = mug
    src = min(where)
    drift_sql(net, src, where[src], "_tax_status", "shipping")
    # tax off: not synced, not reported (the stale lookup row of the direct write is the stock
    # audit's business: derived data).
    code, out, _ = run(net, tmp_path, capsys, "audit", "--json")
    assert json.loads(out)["synced_fields"] == {"count": 0, "differing": []}
    extra = '[fields]\ntax = "scheduled"\npurchase = "manual"\n'
    code, out, _ = run(net, tmp_path, capsys, "audit", "--json", extra=extra)
    doc = json.loads(out)["synced_fields"]
    assert code & 4 and doc["count"] == 1
    (entry,) = doc["differing"]
    assert (entry["group"], entry["sku"], entry["field"]) == ("tax", MUG, "_tax_status")
    assert {(v["blog"], v["value"]) for v in entry["values"]} == {
        (b, "shipping" if b == src else "taxable") for b in where
    }
    code, out, _ = run(net, tmp_path, capsys, "audit", extra=extra)
    assert "Synced product fields that differ: 1" in out and "_tax_status" in out


def test_a_shop_write_during_the_pass_waits_and_is_never_overwritten(mug) -> None:
    """The pass holds the members' rows from its read to its commit: a shop's UPDATE of a target's
    field made meanwhile waits for the lock and lands after the copy, so the newer value stays."""
    import threading

    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.meta import TaxGroup
    from syncd.fields.sync_pass import FieldPass

    net, where = mug
    src, dst = sorted(where)[:2]
    drift_sql(net, src, where[src], "_tax_status", "shipping")
    newest(net, src, where[src])
    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    shop_done: list[BaseException | None] = []

    def shop_write() -> None:
        try:
            drift_sql(net, dst, where[dst], "_tax_status", "none", captured=True)
            shop_done.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            shop_done.append(exc)

    def hook(step: str) -> None:
        if step != "locked" or shop:
            return
        shop.append(threading.Thread(target=shop_write))
        shop[0].start()
        with net.engine.connect() as c:  # until the shop's UPDATE waits for our lock (a condition)
            while not c.exec_driver_sql(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
            ).scalar():
                assert shop[0].is_alive(), f"the shop write did not wait: {shop_done}"
                c.rollback()

    shop: list[threading.Thread] = []
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        runner = FieldPass(cfg, scope, engine, {"tax": TaxGroup()})
        runner.step_hook = hook
        with engine.connect() as c:
            (gid,) = {m.group_id for m in read_members_of(c, scope, where)}
        report = runner.run([gid])
    finally:
        engine.dispose()
    shop[0].join(30)
    assert shop_done == [None]
    assert (dst, "shipping") in {(w["blog"], w["new"]) for w in report.written}
    assert meta(net, dst, where[dst], "_tax_status") == "none"  # the shop's newer write stands


def read_members_of(conn: Any, scope: Any, where: dict[int, int]) -> list[Any]:
    from syncd.fields.sync_pass import read_members

    gids = conn.exec_driver_sql(
        f"SELECT DISTINCT group_id FROM {scope.base}syncd_member WHERE blog_id = %s AND post_id = %s",
        (min(where), where[min(where)]),
    ).all()
    return read_members(conn, scope, [int(g[0]) for g in gids])


def test_a_network_in_step_is_passed_without_a_lock(mug) -> None:
    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.meta import PurchaseGroup, TaxGroup
    from syncd.fields.sync_pass import FieldPass

    net, _ = mug
    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    steps: list[str] = []
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        runner = FieldPass(cfg, scope, engine, {"tax": TaxGroup(), "purchase": PurchaseGroup()})
        runner.step_hook = steps.append
        report = runner.run()
    finally:
        engine.dispose()
    assert report.link_groups >= 10 and report.written == [] and report.problems == []
    assert steps == []  # nothing differed: no chunk took a lock


def test_dry_run_before_install_previews_in_temporary_tables(wp_network, tmp_path, capsys) -> None:
    """Like the stock dry runs: on a network where syncd is not installed, the link groups are built
    in temporary tables and the pass is rolled back; nothing is created or written."""
    net = wp_network
    where = ids(net, MUG)
    src = min(where)
    drift_sql(net, src, where[src], "_tax_status", "none")
    newest(net, src, where[src])
    code, out, err = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 4, err
    assert {(w["blog"], w["new"]) for w in doc["written"]} == {(b, "none") for b in where if b != src}
    assert all(meta(net, b, where[b], "_tax_status") == "taxable" for b in where if b != src)
    with net.engine.connect() as c:
        assert not c.exec_driver_sql("SHOW TABLES LIKE %s", (f"{net.prefix}syncd_%",)).all()


def test_values_stored_differently_but_read_alike_are_not_written(mug, tmp_path, capsys) -> None:
    """The server-side fingerprint sees a missing `_virtual` row and a 'no' row as different; the
    comparison as WooCommerce reads them does not: nothing is written."""
    net, where = mug
    src, dst = sorted(where)[:2]
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"DELETE FROM {net.table(dst, 'postmeta')} WHERE post_id = %s AND meta_key = '_virtual'",
            (where[dst],),
        )
        c.commit()
    put_meta(net, src, where[src], "_virtual", "no")
    newest(net, dst, where[dst])
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "purchase", "--all", "--json")
    assert code == 0 and json.loads(out)["written"] == []
    assert meta(net, dst, where[dst], "_virtual") is None


def test_the_other_groups_run_through_the_same_pass(mug, tmp_path, capsys) -> None:
    """price (fields-price) and content (fields-terms) built by the registry, driven by the pass."""
    net, where = mug
    src = min(where)
    drift_sql(net, src, where[src], "_regular_price", "12.00")
    drift_sql(net, src, where[src], "_price", "12.00")
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(src, 'posts')} SET post_title = 'Big mug' WHERE ID = %s", (where[src],)
        )
        c.commit()
    newest(net, src, where[src])
    code, out, err = run(net, tmp_path, capsys, "sync", "--fields", "price,content", MUG, "--json")
    doc = json.loads(out)
    assert code == 4, err
    others = [b for b in where if b != src]
    assert {(w["group"], w["blog"], w["field"]) for w in doc["written"]} == {
        (g, b, f) for b in others for g, f in (("price", "_regular_price"), ("content", "post_title"))
    }
    for b in others:
        assert meta(net, b, where[b], "_regular_price") == "12.00"
        assert meta(net, b, where[b], "_price") == "12.00"
        assert lookup(net, b, where[b], "min_price") == 12
    assert {r[1] for r in history(net)} == {"price", "content"}


def test_newest_is_the_member_edited_since_the_last_pass(mug, tmp_path, capsys) -> None:
    """syncd's stock writes make every member "modified" at the same time: after a sale, an edit
    made before it must still win over the members that only took the sale (history is the base)."""
    net, where = mug
    b1, b2, b3 = sorted(where)
    drift_sql(net, b1, where[b1], "_tax_status", "shipping")
    newest(net, b1, where[b1], "2030-01-01 00:00:00")
    assert run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG)[0] == 4  # the base: shipping
    drift_sql(net, b2, where[b2], "_tax_status", "none")  # an edit on blog 2 ...
    newest(net, b2, where[b2], "2031-01-01 00:00:00")
    for b in (b1, b3):  # ... then a sale, written by syncd on the other members, later
        newest(net, b, where[b], "2032-01-01 00:00:00")
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    doc = json.loads(out)
    assert code == 4 and {(w["blog"], w["new"]) for w in doc["written"]} == {(b1, "none"), (b3, "none")}
    assert doc["written"][0]["authority"] == f"{b2}:{where[b2]} (newest edited since the last pass)"


def test_a_member_the_last_pass_could_not_write_does_not_become_the_authority(mug, tmp_path, capsys) -> None:
    net, where = mug
    b1, b2, b3 = sorted(where)
    with net.engine.connect() as c:
        for b in (b1, b2):
            c.exec_driver_sql(
                f"INSERT INTO {net.table(b, 'wc_tax_rate_classes')} (name, slug) VALUES ('Reduced', 'reduced-rate')"
            )
        c.commit()
    drift_sql(net, b1, where[b1], "_tax_class", "reduced-rate")
    newest(net, b1, where[b1], "2030-01-01 00:00:00")
    assert run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG)[0] == 4 | 32  # blog 3 lacks the class
    newest(net, b3, where[b3], "2032-01-01 00:00:00")  # blog 3 (still '') is now the newest member
    code, out, _ = run(net, tmp_path, capsys, "sync", "--fields", "tax", MUG, "--json")
    doc = json.loads(out)
    assert code == 32 and doc["written"] == [] and [p["blog"] for p in doc["problems"]] == [b3]
    assert meta(net, b1, where[b1], "_tax_class") == meta(net, b2, where[b2], "_tax_class") == "reduced-rate"
