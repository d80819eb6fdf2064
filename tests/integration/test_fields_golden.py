"""Golden test of the meta-only field groups: a field change made on one blog, copied by the field
pass, must leave on the recorded blog exactly the rows real WooCommerce 11.0.1 wrote there.

Recorded transitions (``schema/wordpress/transitions/``, from the shared fixtures): 17 variant A (``tax``: ``_tax_status``, then ``_tax_class``) and 18 variant A
(``identity`` then ``purchase``: GTIN inserted, sold individually, purchase note inserted,
virtual, downloadable). For every step, on a fresh copy of the recorded network:

1. the step's source meta rows are written on another blog holding the same SKU, the way a
   foreign writer makes them (autocommit UPDATE/INSERT);
2. the field pass runs for the group with that blog as authority (``[fields.schedule] authority``);
3. the recorded blog is diffed against its state before the step and compared, fact by fact, with
   the recorded diff (the same helpers and normalisation as the stock golden tests: natural keys,
   volatile ``post_modified``/transient versions compared loosely).

The recording's baseline had the tax class ``reduced-rate`` (17 A2 writes it; WooCommerce's
``set_tax_class`` keeps only classes that exist); ``baseline.sql`` has no tax class rows, so the
test creates it on every blog first, as the shop's tax settings screen does.
"""

from __future__ import annotations

from typing import Any

import pytest

from syncd.config import config_for
from syncd.fields.manual import sync_fields
from syncd.fields.registry import make_groups
from tests.integration import derived_helpers as h
from tests.integration.test_audit_reconcile import installed
from tests.integration.test_derived_golden import _all_option_names
from tests.integration.test_sync_golden import _next_second, _sku_ids

CASES = [
    ("17-tax-and-shipping", "A-tax", ("tax",)),
    ("18-identity-and-flags", "A", ("identity", "purchase")),
]


def _source_rows(step: dict[str, Any], prefix: str, keys: set[str]) -> list[tuple[str, dict[str, Any]]]:
    d = h.step_diff(step, prefix).get("postmeta", {})
    out = [
        ("update", {**u["context"], "meta_value": u["new"]["meta_value"]})
        for u in d.get("updated", ())
        if u.get("context", {}).get("meta_key") in keys
    ]
    out += [("insert", r) for r in d.get("inserted", ()) if r.get("meta_key") in keys]
    out += [("delete", r) for r in d.get("deleted", ()) if r.get("meta_key") in keys]
    return out


def _replay(net: Any, blog_id: int, rows: list[tuple[str, dict[str, Any]]], post_id: int) -> None:
    pm = net.table(blog_id, "postmeta")
    with net.engine.connect() as c:
        for kind, r in rows:
            params = (r.get("meta_value"), post_id, r["meta_key"])
            if kind == "update":
                c.exec_driver_sql(
                    f"UPDATE {pm} SET meta_value = %s WHERE post_id = %s AND meta_key = %s", params
                )
            elif kind == "insert":
                c.exec_driver_sql(
                    f"INSERT INTO {pm} (meta_value, post_id, meta_key) VALUES (%s, %s, %s)", params
                )
            else:
                c.exec_driver_sql(f"DELETE FROM {pm} WHERE post_id = %s AND meta_key = %s", params[1:])
            c.commit()


def _tax_class(net: Any, blog_id: int, slug: str) -> None:
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.table(blog_id, 'wc_tax_rate_classes')} (name, slug) VALUES (%s, %s)",
            (slug, slug),
        )
        c.commit()


@pytest.mark.parametrize(("scenario", "variant_name", "group_names"), CASES, ids=["17A-tax", "18A"])
def test_field_pass_writes_what_woocommerce_wrote(
    wp_network: Any, scenario: str, variant_name: str, group_names: tuple[str, ...]
) -> None:
    net = wp_network
    installed(net)
    fx = h.load_transition(scenario)
    variant = next(v for v in fx["variants"] if v["variant"] == variant_name)
    target = int(fx["blog"])
    prefix = net.blog_prefix(target)
    (sku,) = [n for n in fx["products"] if n == "MUG"]
    origin = next(b for b in net.blog_ids if b != target and sku in _sku_ids(net, b))
    target_post, origin_post = _sku_ids(net, target)[sku], _sku_ids(net, origin)[sku]
    for b in net.blog_ids:
        _tax_class(net, b, "reduced-rate")
    cfg = config_for(net.url, net.prefix, fields={"schedule": {"authority": str(origin)}})
    groups = {n: g for n, g in make_groups(cfg).items() if n in group_names}
    keys = {k for g in groups.values() for k in g.meta_keys}
    volatile = h.volatile_cells(fx, prefix)
    volatile_options = h.volatile_option_names(fx) | {
        n for n in _all_option_names(fx, prefix) if n.startswith("_transient_timeout_")
    }
    state = h.snapshot(net.url, prefix)
    products = h.product_post_ids(state)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    replayed = 0
    try:
        for step in variant["steps"]:
            rows = _source_rows(step, prefix, keys)
            if not rows:
                continue
            _next_second()  # the recorded saves were seconds apart: post_modified and versions moved
            _replay(net, origin, rows, origin_post)
            report, errors = sync_fields(cfg, engine, groups, skus=[sku])
            assert not errors and not report.problems and not report.skipped
            assert {(w["blog"], w["post"]) for w in report.written} >= {(target, target_post)}
            after = h.snapshot(net.url, prefix)
            actual = h.without_tables(h.diff_snapshots(state, after), ["wc_product_attributes_lookup"])
            expected = h.normalise_expected(h.step_diff(step, prefix), products)
            problems = h.compare_diffs(actual, expected, volatile=volatile, volatile_options=volatile_options)
            assert not problems, (
                f"{scenario} {variant_name} step {step['step']} ({step['operation']}), made on blog {origin}, "
                f"copied to blog {target}:\n  " + "\n  ".join(problems)
            )
            state = after
            replayed += 1
    finally:
        engine.dispose()
    assert replayed == len([s for s in variant["steps"] if _source_rows(s, prefix, keys)]) >= 2
