"""The dashboard's "Sync fields now" form per manual field group (CSRF like the other forms) and
its JSON twin, running the field pass for one link group."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.dashboard_helpers import READER, running_dashboard
from tests.integration.sync_helpers import ids, meta
from tests.integration.test_audit_reconcile import drift_sql, installed
from tests.integration.test_dashboard_http import group_of
from tests.integration.test_fields_pass import history, newest


@pytest.fixture
def dash(wp_network: Any) -> Any:
    installed(wp_network)
    with running_dashboard(wp_network, fields={"tax": "manual", "purchase": "scheduled"}) as d:
        yield d


def test_sync_fields_now_per_manual_group(dash: Any, wp_network: Any) -> None:
    d, net = dash, wp_network
    gid = group_of(d, "MUG")
    mug = ids(net, "MUG")
    drift_sql(net, 2, mug[2], "_tax_status", "none")
    newest(net, 2, mug[2])
    s = d.session()
    page = s.get(d.url + f"/product/{gid}").text
    assert 'id="sync-fields-tax"' in page and 'id="sync-fields-purchase"' not in page  # manual groups only
    r = s.post(d.url + f"/product/{gid}/sync-fields", data={"field": "tax"})
    assert r.status_code == 403 and "CSRF" in r.text
    reader = d.session(READER)
    r = reader.post(d.url + f"/product/{gid}/sync-fields", data={"field": "tax", "csrf": reader.csrf})
    assert r.status_code == 403
    assert meta(net, 1, mug[1], "_tax_status") == "taxable"
    r = s.post(d.url + f"/product/{gid}/sync-fields", data={"field": "tax", "csrf": s.csrf})
    assert r.status_code == 200 and "tax synced (2 value(s) written)" in r.text
    assert {meta(net, b, mug[b], "_tax_status") for b in (1, 2, 3)} == {"none"}
    rows = history(net, "tax")
    assert len(rows) == 2
    # A scheduled (not manual) group is refused; the JSON twin answers with the pass report.
    r = s.post(d.url + f"/product/{gid}/sync-fields", data={"field": "purchase", "csrf": s.csrf})
    assert r.status_code == 400 and "manual field groups: tax" in r.text
    drift_sql(net, 3, mug[3], "_tax_status", "shipping")
    newest(net, 3, mug[3], "2031-01-01 00:00:00")
    r = d.api().post(d.url + f"/product/{gid}/sync-fields.json", json={"field": "tax"})
    doc = r.json()
    assert r.status_code == 200 and doc["groups"] == ["tax"] and doc["counts"]["written"] == 2
    assert {(w["blog"], w["new"]) for w in doc["written"]} == {(1, "shipping"), (2, "shipping")}
