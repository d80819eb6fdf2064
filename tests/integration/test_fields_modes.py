"""Scheduled field groups in the daemon (one cron job per group, leader-only, running the field
pass) and the currency check of the price group (refused at start-up, listed by ``syncd check``)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger

from syncd.check import run_check
from syncd.config import config_for
from syncd.daemon import EXIT_CONFIG, Daemon
from syncd.fields.checks import currency_mismatches
from syncd.network import discover
from tests.integration.daemon_process import running
from tests.integration.sync_helpers import ids, make_daemon, meta
from tests.integration.test_audit_reconcile import drift_sql
from tests.integration.test_fields_pass import history, lookup, newest

SCHEDULED = {"tax": "scheduled", "purchase": "manual", "schedule": {"cron": "*/5 * * * *"}}


def test_scheduled_group_runs_from_its_cron_job_while_leading(wp_network) -> None:
    net = wp_network
    d = make_daemon(net, fields=SCHEDULED)
    where = ids(net, "MUG")
    src = min(where)
    drift_sql(net, src, where[src], "_tax_status", "none")
    drift_sql(net, src, where[src], "_virtual", "yes")  # purchase is manual: the schedule leaves it
    newest(net, src, where[src])
    try:
        # Not leading (prepared only): the pass is skipped, nothing written.
        assert d.run_field_pass(["tax"]) is None
        assert history(net) == []
        with running(d):
            jobs = {j.id: j for j in d._scheduler.get_jobs()}
            assert "fields:tax" in jobs and "fields:purchase" not in jobs
            trigger = jobs["fields:tax"].trigger
            assert isinstance(trigger, CronTrigger) and str(trigger) == str(
                CronTrigger.from_crontab("*/5 * * * *", timezone="UTC")
            )
            jobs["fields:tax"].func()  # what the scheduler runs at the next */5 minute
        for b in where:
            assert meta(net, b, where[b], "_tax_status") == "none"
            if b != src:  # (the source's lookup row was left stale by the direct write above)
                assert lookup(net, b, where[b], "tax_status") == "none"
                assert meta(net, b, where[b], "_virtual") == "no"
        assert {(r[0], r[1], r[2]) for r in history(net)} == {("field", "tax", b) for b in where if b != src}
    finally:
        d.close()


def _currency(net: Any, blog_id: int, value: str) -> None:
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.table(blog_id, 'options')} (option_name, option_value, autoload) "
            "VALUES ('woocommerce_currency', %s, 'on') ON DUPLICATE KEY UPDATE option_value = VALUES(option_value)",
            (value,),
        )
        c.commit()


def test_price_group_between_currencies_is_refused_unless_allowed(wp_network) -> None:
    net = wp_network
    _currency(net, 1, "EUR")
    _currency(net, 2, "USD")
    _currency(net, 3, "USD")
    with net.engine.connect() as c:
        blogs = {b.blog_id: b for b in discover(c, net.prefix).usable_blogs()}
    cfg = config_for(net.url, net.prefix, fields={"price": "realtime"})
    (msg,) = currency_mismatches(cfg, blogs)
    assert "woocommerce_currency" in msg and "blog 1: 'EUR'" in msg and "allow_mismatch" in msg
    ok = [
        {"price": "realtime", "blogs": {"price": [2, 3]}},
        {"price": "realtime", "allow_mismatch": {"price": True}},
        {"price": "off", "tax": "scheduled"},
    ]
    for fields in ok:
        assert currency_mismatches(config_for(net.url, net.prefix, fields=fields), blogs) == []

    # The daemon refuses to start (exit 78, like other configuration errors).
    d = Daemon(config_for(net.url, net.prefix, fields={"price": "manual"}), instance="test")
    try:
        assert d.run() == EXIT_CONFIG
    finally:
        d.close()
    # syncd check lists it (run_check's output stream given: its default is bound at import).
    buf = io.StringIO()
    code = run_check(config_for(net.url, net.prefix, fields={"price": "manual"}), json_output=True, out=buf)
    doc = json.loads(buf.getvalue())
    assert code & 1 and any("woocommerce_currency" in e for e in doc["errors"])


@pytest.mark.parametrize("group", ["tax"])
def test_a_group_without_an_implementation_is_refused(wp_network, monkeypatch, group) -> None:
    from syncd.fields import registry

    monkeypatch.setitem(registry._CLASSES, group, ("syncd.fields.no_such_module", "X", lambda c: {}))
    d = Daemon(config_for(wp_network.url, wp_network.prefix, fields={group: "manual"}), instance="test")
    try:
        assert d.run() == EXIT_CONFIG
    finally:
        d.close()


def test_reload_reschedules_field_jobs_and_refuses_a_currency_mismatch(wp_network, tmp_path) -> None:
    from syncd.config import load_config

    net = wp_network
    path = tmp_path / "syncd.toml"
    head = f'[database]\nurl = "{net.url}"\ntable_prefix = "{net.prefix}"\n[sync]\nsettle_seconds = 0\n'
    path.write_text(head + '[fields]\ntax = "scheduled"\n', encoding="utf-8")
    d = Daemon(load_config(path), instance="test")
    d.prepare()
    try:
        with running(d):
            assert {j.id for j in d._scheduler.get_jobs() if j.id.startswith("fields:")} == {"fields:tax"}
            path.write_text(
                head + '[fields]\npurchase = "scheduled"\n[fields.schedule]\ncron = "0 3 * * *"\n',
                encoding="utf-8",
            )
            assert d.reload_config()
            jobs = {j.id: j for j in d._scheduler.get_jobs() if j.id.startswith("fields:")}
            assert set(jobs) == {"fields:purchase"}
            assert str(jobs["fields:purchase"].trigger) == str(
                CronTrigger.from_crontab("0 3 * * *", timezone="UTC")
            )
            _currency(net, 1, "GBP")  # the others keep the baseline's EUR
            d.discover()
            # Refused as at start-up (blog 1's currency differs): the running [fields] stay.
            path.write_text(head + '[fields]\nprice = "scheduled"\n', encoding="utf-8")
            assert d.reload_config()
            assert (
                d.config.fields.modes["price"] == "off" and d.config.fields.modes["purchase"] == "scheduled"
            )
            assert {j.id for j in d._scheduler.get_jobs() if j.id.startswith("fields:")} == {
                "fields:purchase"
            }
    finally:
        d.close()
