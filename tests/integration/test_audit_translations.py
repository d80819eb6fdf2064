"""Issue 9 path 7: audit and reconcile treat shared translations as the daemon does.

On blogs whose translations share stock (Polylang for WooCommerce; here [blogs.N]
translations_share_stock on the recorded network's Polylang blogs 2 and 3), BOOK (en) and BOOK
(fr) are one stock: the daemon writes a change to the whole *component* (link groups + shared
translations). Audit must report a component whose products differ even when each link group
agrees with itself, and reconcile must make the whole component equal."""

from __future__ import annotations

from tests.integration.test_audit_reconcile import audit, drift_sql, installed, run_reconcile
from tests.integration.test_linking import BOOK, SHARED, books


def _drift(report: dict) -> dict[str, set[str]]:
    return {g["sku"]: set(g["fields"]) for g in report["drift"]}


def test_drift_between_shared_translations_is_reported_and_reconciled(wp_network):
    net = wp_network
    installed(net)
    assert set(books(net).values()) == {7}
    # The French book drifted to 4 on both blogs (a writer syncd never saw): each link group
    # (BOOK/en, BOOK/fr) still agrees with itself; the shared stock does not.
    drift_sql(net, 2, BOOK[(2, "fr")], "_stock", "4")
    drift_sql(net, 3, BOOK[(3, "fr")], "_stock", "4")
    assert "BOOK" not in _drift(audit(net).document())  # translations kept apart: no drift
    report = audit(net, blogs=SHARED).document()
    assert _drift(report).get("BOOK") == {"quantity"}, report["drift"]
    run_reconcile(net, blogs=SHARED)
    assert len(set(books(net).values())) == 1, books(net)  # before the fix: en 7 / fr 4 stayed
    assert "BOOK" not in _drift(audit(net, blogs=SHARED).document())

    # One translation alone drifts (en on blog 3): reconcile makes all four equal, not only
    # the English group (before the fix: en = 2 / fr = 7 stayed).
    drift_sql(net, 3, BOOK[(3, "en")], "_stock", "2")
    assert _drift(audit(net, blogs=SHARED).document()).get("BOOK") == {"quantity"}
    run_reconcile(net, blogs=SHARED)
    assert len(set(books(net).values())) == 1, books(net)
    after = audit(net, blogs=SHARED).document()
    assert after["counts"]["drifted_groups"] == 0 and after["counts"]["derived"] == 0, after


def test_set_stock_on_one_translation_sets_the_shared_stock(wp_network):
    """`syncd set-stock BOOK 5 --lang en` on a sharing network writes the French book too (one
    stock), as a change to BOOK (en) through the daemon would."""
    from syncd.config import config_for
    from syncd.reconcile import set_stock

    net = wp_network
    installed(net)
    outcome, errors = set_stock(config_for(net.url, net.prefix, blogs=SHARED), "BOOK", "5", lang="en")
    assert errors == [], errors
    assert set(books(net).values()) == {5}, (books(net), outcome)
    assert "BOOK" not in _drift(audit(net, blogs=SHARED).document())
