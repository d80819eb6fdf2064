"""Issue 10, what a demanding shop owner would still trip over (real server; recorded WooCommerce
traces replayed with syncd acting between two statements; no sleeps).

1. ``syncd status`` (text and ``--json``), ``syncd check`` and the dashboard count the field work
   a pass left for the leading daemon (deferred members, price checks) with the oldest age, and
   warn when it waits and no daemon leads.
2. A pass never copies a half-saved authority: it defers the link group, and the daemon gives
   the members the authority's values once it has settled.
3. A variation's tax status (and "sold individually") is its parent's: syncd neither compares nor
   writes the variation's own row, and its lookup row keeps what WooCommerce wrote.
4. While field work waits, the idle loop looks for it when the earliest is due, not every 0.1 s;
   the checks still finish.
"""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from syncd import status
from syncd.daemon import lock_name
from syncd.fields.price import PriceGroup
from tests.integration.dashboard_helpers import running_dashboard
from tests.integration.sync_helpers import ids, make_daemon, meta
from tests.integration.test_audit_reconcile import drift_sql
from tests.integration.test_check import check
from tests.integration.test_fields_exact import SETTLE, price_duplicates, price_values
from tests.integration.test_fields_gaps import (
    _identity_pass_inside_a_price_save,
    _set_tax_class,
    checks_settle,
    deferrals,
    field_checks,
)
from tests.integration.test_fields_pass import history, lookup, newest, put_meta
from tests.integration.trace_replay import Replay

FIELDS = {"identity": "manual", "price": "manual", "schedule": {"authority": "2"}}


def _status(net: Any, d: Any) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    status.main(d.config, SimpleNamespace(json=True), out)
    text = io.StringIO()
    status.main(d.config, SimpleNamespace(json=False), text)
    return json.loads(out.getvalue()), text.getvalue()


def _leave_work_behind(net: Any, d: Any) -> None:
    """A manual identity pass inside trace 09 (blog 1's MUG being saved: deferred), then a manual
    price pass while that save is still "in flight" (settle_seconds is an hour): blog 1 deferred
    again, blog 3 written and so checked once settled."""
    from syncd.fields.manual import sync_fields

    mug = ids(net, "MUG")
    with Replay(net, "09-price-save", now=True) as replay:
        _identity_pass_inside_a_price_save(net, mug, d, replay)
        replay.run()
    put_meta(net, 2, mug[2], "_regular_price", "12.00")
    report, errors = sync_fields(d.config, net.engine, {"price": PriceGroup()}, skus=["MUG"])
    assert errors == [] and [w["blog"] for w in report.written if w["field"] == "_regular_price"] == [3]
    assert deferrals(net) == [(1, mug[1], "identity"), (1, mug[1], "price")]
    assert field_checks(net) == [(3, mug[3], "price")]


def test_status_check_and_dashboard_count_field_work_and_warn_without_a_leader(wp_network):
    """Recordings: trace 09 (the save the pass meets in flight). Without a daemon leading, the
    work stays queued and every view says so; with one leading, no warning; once the daemon has
    finished it, nothing is left."""
    net = wp_network
    d = make_daemon(net, fields=FIELDS, sync=SETTLE)
    try:
        _leave_work_behind(net, d)
        doc, text = _status(net, d)
        fw = doc["field_work"]
        assert fw["deferred"]["pending"] == 2 and fw["checks"]["pending"] == 1
        assert fw["deferred"]["oldest_age_s"] >= 0 and fw["checks"]["oldest_age_s"] >= 0
        assert "no daemon leads" in fw["warning"]
        assert "field work    2 deferred (oldest " in text and ", 1 price checks (oldest " in text
        assert "WARNING       2 deferred field write(s) and 1 price check(s) wait" in text

        code, out = check(d.config, json_output=True)
        report = json.loads(out)
        assert (
            report["field_work"]["deferred"]["pending"] == 2 and report["field_work"]["leader_held"] is False
        )
        assert any(w.startswith("fields: 2 deferred field write(s)") for w in report["warnings"])
        _, page = check(d.config)
        assert "Field work: 2 deferred (oldest " in page and "(NO daemon leads)" in page

        with running_dashboard(net, fields=FIELDS) as dash:
            page = dash.session().get(dash.url + "/").text
            assert 'id="field-work"' in page and "no daemon leads" in page
            data = dash.api().get(dash.url + "/index.json").json()
            assert data["status"]["field_work"]["checks"]["pending"] == 1

        # A daemon leads (it holds the leader lock): the work will finish, no warning.
        with net.engine.connect() as c:
            database = c.exec_driver_sql("SELECT DATABASE()").scalar_one()
            assert (
                c.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (lock_name(database, net.prefix),)).scalar() == 1
            )
            try:
                doc, text = _status(net, d)
                assert doc["field_work"]["deferred"]["pending"] == 2 and doc["field_work"]["warning"] is None
                assert "WARNING" not in text
                _, out = check(d.config, json_output=True)
                assert not any(w.startswith("fields:") for w in json.loads(out)["warnings"])
            finally:
                c.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (lock_name(database, net.prefix),))

        checks_settle(net)  # the save settled; the leading daemon's settle step finishes the work
        d.apply_pending()
        checks_settle(net)  # the deferred price write is checked in turn
        d.apply_pending()
        assert deferrals(net) == [] and field_checks(net) == []
        doc, text = _status(net, d)
        assert doc["field_work"]["deferred"] == {"pending": 0, "oldest_age_s": None}
        assert doc["field_work"]["warning"] is None and "field work    0 deferred, 0 price checks" in text
    finally:
        d.close()


# -- 2. the authority itself mid-save -------------------------------------------------------------


@pytest.mark.parametrize("after", [60, 63, 87])
def test_a_pass_defers_a_link_group_whose_authority_is_being_saved(wp_network, after):
    """Recorded: trace 09, WooCommerce saving MUG on blog 1 (11.00 regular, 8.00 sale). It records
    the save first (``post_modified`` 54), so "newest" picks blog 1 as the authority; a manual price
    pass runs after statement ``after``, when blog 1 holds a half-written price: the new regular
    price without its sale price (60), or both without the ``_price`` it derives at 89 (63, 87).
    The pass copies nothing and defers blogs 2 and 3 for the price group; once the save has
    settled the daemon gives them what the save finally wrote (their ``_price`` and lookup rows
    derived on each blog), and a later pass finds nothing to do."""
    from syncd.fields.manual import sync_fields

    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, fields={"price": "manual"}, sync=SETTLE)
    before = price_values(net, mug)
    try:
        with Replay(net, "09-price-save", now=True) as replay:
            replay.run(until=after)
            report, errors = sync_fields(d.config, net.engine, {"price": PriceGroup()}, skus=["MUG"])
            assert errors == [] and report.problems == []
            assert report.written == []  # nothing copied from a half-saved product
            assert {(e["blog"], e["authority"]) for e in report.deferred} == {
                (2, f"1:{mug[1]}"),
                (3, f"1:{mug[1]}"),
            }
            assert "being saved" in report.deferred[0]["reason"]
            assert deferrals(net) == [(2, mug[2], "price"), (3, mug[3], "price")]
            assert price_values(net, mug)[1:] == before[1:]
            assert {r[0] for r in history(net, "price")} == {"skipped"}
            d.apply_pending()  # the save still runs: nothing is due
            replay.run()
        d.apply_pending()  # saved a moment ago: still not due
        assert deferrals(net) == [(2, mug[2], "price"), (3, mug[3], "price")]
        for _ in range(2):  # the deferrals, then the price checks of their writes
            checks_settle(net)
            d.apply_pending()
        assert deferrals(net) == [] and field_checks(net) == []
        assert price_duplicates(net, mug) == []
        assert [v[:4] for v in price_values(net, mug)] == [("11.00", "8.00", None, None)] * 3
        assert [lookup(net, b, mug[b], "onsale") for b in (1, 2, 3)] == [1, 1, 1]
        assert [float(lookup(net, b, mug[b], "min_price")) for b in (1, 2, 3)] == [8.0] * 3
        again, _ = sync_fields(d.config, net.engine, {"price": PriceGroup()}, skus=["MUG"])
        assert again.written == [] and again.deferred == [] and again.problems == []
    finally:
        d.close()


# -- 3. a variation's tax status is its parent's --------------------------------------------------


def _own_row(net: Any, blog: int, post: int, key: str, value: str) -> None:
    """A variation's own row as WooCommerce left it (set-up, not a shop edit: not captured)."""
    drift_sql(net, blog, post, key, value)


def _lookup_tax_status(net: Any, blog: int, post: int, value: str) -> None:
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(blog, 'wc_product_meta_lookup')} SET tax_status = %s WHERE product_id = %s",
            (value, post),
        )
        c.commit()


def test_a_variations_own_tax_status_row_is_neither_compared_nor_written(wp_network):
    """Source only (WooCommerce 11, ``WC_Product_Variation_Data_Store_CPT::read_product_data``):
    a variation's tax status and "sold individually" are set from its *parent's* rows ("no
    user-facing way to set props"); its own ``_tax_status`` row is written when it is created and
    then only copied into its lookup row (``get_data_for_lookup_table`` reads
    ``get_post_meta($id, '_tax_status')``). So blog 2's HOODIE-S, created while its parent was not
    taxable, keeps its own 'none' row and lookup value: no product object differs. Its tax class
    is still copied, and the lookup row derived then keeps its own tax status, as WooCommerce's
    would. The parents' tax status is synced as every product's."""
    from syncd.fields.manual import sync_fields
    from syncd.fields.meta import PurchaseGroup, TaxGroup

    net = wp_network
    hs, hoodie = ids(net, "HOODIE-S"), ids(net, "HOODIE")
    _own_row(net, 2, hs[2], "_tax_status", "none")
    _lookup_tax_status(net, 2, hs[2], "none")
    put_meta(net, 3, hs[3], "_sold_individually", "yes")  # its parent is not: no product object differs
    _set_tax_class(net, 1, hs[1], "parent")
    _set_tax_class(net, 2, hs[2], "")  # standard: differs from the authority's 'parent'
    groups = {"tax": TaxGroup(), "purchase": PurchaseGroup()}
    d = make_daemon(net, fields={"tax": "manual", "purchase": "manual", "schedule": {"authority": "1"}})
    try:
        report, errors = sync_fields(d.config, net.engine, groups, skus=["HOODIE-S"])
        assert errors == [] and report.problems == []
        assert [(w["blog"], w["field"], w["new"]) for w in report.written] == [(2, "_tax_class", "parent")]
        assert [meta(net, b, hs[b], "_tax_status") for b in (1, 2, 3)] == ["taxable", "none", "taxable"]
        assert meta(net, 3, hs[3], "_sold_individually") == "yes"
        assert (lookup(net, 2, hs[2], "tax_class"), lookup(net, 2, hs[2], "tax_status")) == ("parent", "none")
        again, _ = sync_fields(d.config, net.engine, groups, skus=["HOODIE-S"])
        assert again.written == [] and again.problems == []
        # The parent's tax status is what the variations use: synced like any product's.
        drift_sql(net, 1, hoodie[1], "_tax_status", "shipping")
        newest(net, 1, hoodie[1])
        parents, _ = sync_fields(d.config, net.engine, groups, skus=["HOODIE"])
        assert sorted((w["blog"], w["field"], w["new"]) for w in parents.written) == [
            (2, "_tax_status", "shipping"),
            (3, "_tax_status", "shipping"),
        ]
        assert [lookup(net, b, hoodie[b], "tax_status") for b in (1, 2, 3)][1:] == ["shipping", "shipping"]
        assert [meta(net, b, hs[b], "_tax_status") for b in (1, 2, 3)] == ["taxable", "none", "taxable"]
    finally:
        d.close()


def test_realtime_tax_leaves_the_variations_own_tax_status_rows_alone(wp_network):
    """Source only (as above): a captured write of a variation's own ``_tax_status`` row (WooCommerce
    writes it when it creates the variation) changes no product object: it is not copied; a
    captured ``_tax_class`` of the same variation is."""
    net = wp_network
    hs = ids(net, "HOODIE-S")
    for b in (1, 2, 3):
        _set_tax_class(net, b, hs[b], "parent")
    net.engine.dispose()  # that helper leaves @syncd_apply set on its pooled session: not the shop's
    d = make_daemon(net, fields={"tax": "realtime"})
    try:
        drift_sql(net, 1, hs[1], "_tax_status", "none", captured=True)
        drift_sql(net, 1, hs[1], "_tax_class", "", captured=True)
        d.apply_pending()
        assert [meta(net, b, hs[b], "_tax_status") for b in (1, 2, 3)] == ["none", "taxable", "taxable"]
        assert [meta(net, b, hs[b], "_tax_class") for b in (2, 3)] == ["", ""]
        assert [lookup(net, b, hs[b], "tax_status") for b in (2, 3)] == ["taxable"] * 2
    finally:
        d.close()


# -- 4. the idle loop waits until field work is due -----------------------------------------------


def _price_pass_leaving_a_check(net: Any, d: Any) -> dict[int, int]:
    """Blog 2's new regular price, copied by a manual pass: each written product gets a check."""
    from syncd.fields.manual import sync_fields

    mug = ids(net, "MUG")
    put_meta(net, 2, mug[2], "_regular_price", "12.00")
    report, _ = sync_fields(d.config, net.engine, {"price": PriceGroup()}, skus=["MUG"])
    assert sorted(w["blog"] for w in report.written if w["field"] == "_regular_price") == [1, 3]
    assert field_checks(net) == [(1, mug[1], "price"), (3, mug[3], "price")]
    return mug


def test_the_idle_loop_looks_for_field_work_when_it_is_due_not_before(wp_network):
    """Source of the checks: the price group's writes (syncd.fields.recheck). Their due time is
    the server's (written_at + settle_seconds); the loop's clock is made to pass, no sleeping."""
    from syncd.fields import pending

    net = wp_network
    d = make_daemon(net, fields={"price": "manual", "schedule": {"authority": "2"}}, sync=SETTLE)
    try:
        _price_pass_leaving_a_check(net, d)
        with net.engine.connect() as c:
            due_in = pending.next_due_in(c, net.prefix, 3600)
        assert due_in is not None and 3590 < due_in <= 3600
        assert d._work_waiting(True)  # not looked yet: at once
        assert d.apply_pending() == 0  # the look: nothing due; the next one is in an hour
        assert d._fields_due_at > time.monotonic() + 3590
        assert not d._work_waiting(True)  # rows exist, none due: no look (was: every 0.1 s)
        checks_settle(net)  # an hour passes on the server...
        d._fields_due_at -= 3600  # ...and on the loop's clock (no sleeping)
        assert d._work_waiting(True)
        d.apply_pending()
        assert field_checks(net) == []
        with net.engine.connect() as c:
            assert pending.next_due_in(c, net.prefix, 3600) is None
        assert d._work_waiting(True) is False  # nothing waits
    finally:
        d.close()


def test_price_checks_finish_under_the_real_idle_loop(wp_network):
    """The daemon's own loop (a thread), settle_seconds 2: the checks of a pass's writes are
    finished without a batch to wake it, and it looked for them only a few times meanwhile."""
    from tests.integration.test_wake import Running, until

    net = wp_network
    d = make_daemon(
        net, fields={"price": "manual", "schedule": {"authority": "2"}}, sync={"settle_seconds": 2}
    )
    looks = []
    finish = d.finish_deferred
    d.finish_deferred = lambda conn, limit=50: looks.append(1) or finish(conn, limit)  # type: ignore[method-assign]
    with Running(d) as run:
        _price_pass_leaving_a_check(net, d)
        assert until(lambda: field_checks(net) == [], 60, run.thread.is_alive), "the checks never finished"
    assert d.stats.errors == 0, d.stats.last_error
    assert len(looks) <= 10, len(looks)  # was: one every 0.1 s from the pass until they were due
