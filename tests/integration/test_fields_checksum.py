"""The full field pass's bucketed checksums (syncd.fields.checksum, issue 10's speed target): a
full pass finds exactly what a pass over every link group id (no checksums) finds, whatever the
bucket width, and a network in step has no dirty bucket at one link group per bucket."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_fields_pass import mug, put_meta  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("mug")


def _linked(net: Any) -> dict[int, dict[int, int]]:
    """group id -> {blog: post} of the linked members."""
    with net.engine.connect() as c:
        rows = c.exec_driver_sql(
            f"SELECT group_id, blog_id, post_id FROM {net.prefix}syncd_member "
            "WHERE state = 'linked' AND group_id IS NOT NULL ORDER BY group_id, blog_id"
        ).all()
    out: dict[int, dict[int, int]] = {}
    for g, b, p in rows:
        out.setdefault(int(g), {})[int(b)] = int(p)
    return out


def _pass(net: Any, group_ids: list[int] | None = None, max_buckets: int | None = None) -> Any:
    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.meta import IdentityGroup, PurchaseGroup, TaxGroup
    from syncd.fields.sync_pass import FieldPass

    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        groups = {"tax": TaxGroup(), "identity": IdentityGroup(), "purchase": PurchaseGroup()}
        runner = FieldPass(cfg, scope, engine, groups, dry_run=True)
        if max_buckets is not None:
            runner.max_buckets = max_buckets
        return runner.run(group_ids), runner
    finally:
        engine.dispose()


def _key(w: dict[str, Any]) -> tuple[Any, ...]:
    return (w["group"], w["link_group"], w["blog"], w["post"], w["field"], w["old"], w["new"])


def test_a_network_in_step_has_no_dirty_bucket(mug) -> None:  # noqa: F811
    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.meta import IdentityGroup, PurchaseGroup, TaxGroup
    from syncd.fields.sync_pass import FieldPass

    net, _ = mug
    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        groups = {"tax": TaxGroup(), "identity": IdentityGroup(), "purchase": PurchaseGroup()}
        for width in (None, 2):
            runner = FieldPass(cfg, scope, engine, groups, dry_run=True)
            if width:
                runner.max_buckets = max(1, len(_linked(net)) // width)
            if not width:
                # One link group per bucket: equal stored rows on the blogs that have it. (Wider
                # buckets mixing link groups present on different blogs are dirty by design.)
                assert runner._dirty_ranges() == []
            report = runner.run()
            assert report.written == [] and report.link_groups == len(_linked(net))
    finally:
        engine.dispose()


@pytest.mark.parametrize("max_buckets", [None, 3, 1])
def test_the_checksums_find_what_every_link_group_finds(mug, max_buckets) -> None:  # noqa: F811
    net, _ = mug
    linked = {g: m for g, m in _linked(net).items() if len(m) >= 2}
    assert len(linked) >= 4
    first, second, third, *_, last = sorted(linked)
    b1, b2 = sorted(linked[first])[:2]
    put_meta(net, b2, linked[first][b2], "_tax_status", "shipping")  # a changed value
    put_meta(
        net,
        sorted(linked[second])[0],
        linked[second][sorted(linked[second])[0]],
        "_global_unique_id",
        "4006381333931",
    )  # a row only one member has
    bl = sorted(linked[last])[-1]
    put_meta(net, bl, linked[last][bl], "_purchase_note", "Thanks!")  # the last bucket (clamped)
    with net.engine.connect() as c:  # a row removed: one member falls back to the default
        c.exec_driver_sql(
            f"DELETE FROM {net.table(b1, 'postmeta')} WHERE post_id = %s AND meta_key = '_tax_class'",
            (linked[third][b1],),
        )
        c.commit()

    everything, _ = _pass(net, sorted(_linked(net)))  # no checksums: every link group id given
    checked, runner = _pass(net, None, max_buckets)
    assert everything.written, "the planted differences must show"
    assert sorted(map(_key, checked.written)) == sorted(map(_key, everything.written))
    assert checked.problems == everything.problems
    assert checked.link_groups == len(_linked(net))
    groups = {w["link_group"] for w in everything.written}
    assert {first, second, last} <= groups


def test_groups_scanned_together_or_apart_give_the_same_buckets(mug) -> None:  # noqa: F811
    """Disjoint key sets share one scan per blog (a CASE names each row's group); overlapping
    ones are scanned apart: either way, each group's dirty buckets are its own."""
    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.checksum import BucketChecksums

    net, _ = mug
    linked = {g: m for g, m in _linked(net).items() if len(m) >= 2}
    one, two = sorted(linked)[:2]
    b = sorted(linked[one])[-1]
    put_meta(net, b, linked[one][b], "_tax_status", "none")
    b = sorted(linked[two])[-1]
    put_meta(net, b, linked[two][b], "_purchase_note", "changed")
    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine()
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        sums = BucketChecksums(engine, scope)
        blogs = scope.blog_ids
        tax, note = ("_tax_status", "_tax_class"), ("_purchase_note",)
        alone = {name: sums.dirty({name: (keys, blogs)}) for name, keys in (("tax", tax), ("note", note))}
        assert alone["tax"] and alone["note"] and alone["tax"] != alone["note"]
        together = sums.dirty_by_group({"tax": (tax, blogs), "note": (note, blogs)})
        overlapping = sums.dirty_by_group({"tax": (tax, blogs), "both": ((*tax, *note), blogs)})
        assert sums.dirty({"tax": (tax, blogs), "note": (note, blogs)}) == alone["tax"] | alone["note"]
    finally:
        engine.dispose()
    assert together == alone
    assert overlapping == {"tax": alone["tax"], "both": alone["tax"] | alone["note"]}


def _all_groups_pass(net: Any, group_ids: list[int] | None, max_buckets: int | None) -> Any:
    """A dry-run pass of every field group (price, terms, content included)."""
    from syncd.audit import scope_for
    from syncd.config import config_for
    from syncd.fields.registry import make_groups
    from syncd.fields.sync_pass import FieldPass

    cfg = config_for(net.url, net.prefix)
    engine = cfg.database.make_engine(apply_marker=True, multi_statements=True)
    try:
        with engine.connect() as c:
            scope = scope_for(c, cfg)
        runner = FieldPass(cfg, scope, engine, make_groups(cfg), dry_run=True)
        if max_buckets is not None:
            runner.max_buckets = max_buckets
        ranges = runner._dirty_ranges() if group_ids is None else None
        return runner.run(group_ids), ranges
    finally:
        engine.dispose()


def _plant(net: Any, group: str, blog: int, post: int) -> None:
    """One stored difference of ``group`` on one member."""
    from tests.integration.test_fields_terms import _relate

    if group == "price":
        put_meta(net, blog, post, "_regular_price", "123.45")
    elif group == "shipping":
        put_meta(net, blog, post, "_weight", "9.5")
    elif group == "shipping_class_variation":
        _relate(net, blog, post, "product_shipping_class", ["checksum-bulky"])
    elif group == "shipping_class":
        _relate(net, blog, post, "product_shipping_class", ["checksum-bulky"])
    elif group == "visibility":
        _relate(net, blog, post, "product_visibility", ["featured"])
    elif group == "taxonomy":
        _relate(net, blog, post, "product_tag", ["checksum-tag"])
    elif group == "content":
        with net.engine.begin() as c:
            c.exec_driver_sql(
                f"UPDATE {net.table(blog, 'posts')} SET post_excerpt = 'checksum' WHERE ID = %s", (post,)
            )


def _found(report: Any) -> set[tuple[Any, ...]]:
    return {(w["group"], w["link_group"]) for w in report.written} | {
        (p["group"], p["link_group"]) for p in report.problems
    }


@pytest.mark.parametrize("max_buckets", [None, 2])
@pytest.mark.parametrize(
    "group",
    ["price", "shipping", "shipping_class", "shipping_class_variation", "visibility", "taxonomy", "content"],
)
def test_every_group_has_a_checksum_that_finds_a_difference(mug, group, max_buckets) -> None:  # noqa: F811
    """With every group in the pass (price, terms and content too) the checksums decide which
    link groups are read; one planted difference of any group's stored values is still found,
    and the pass finds exactly what a pass over every link group id finds."""
    net, where = mug
    if group.endswith("_variation"):  # shipping classes are synced on variations too
        from tests.integration.sync_helpers import ids

        where = ids(net, "HOODIE-S")
        assert len(where) >= 2
    blog = max(where)
    gid = next(g for g, m in _linked(net).items() if m.get(blog) == where[blog])
    before, ranges = _all_groups_pass(net, None, None)
    assert ranges is not None, "every group must offer a checksum"
    assert not any(lo <= gid <= hi for lo, hi in ranges), "its bucket is clean before"
    _plant(net, group, blog, where[blog])
    _, ranges = _all_groups_pass(net, None, None)
    assert any(lo <= gid <= hi for lo, hi in ranges), "the checksums see the planted difference"
    checked, _ = _all_groups_pass(net, None, max_buckets)
    everything, _ = _all_groups_pass(net, sorted(_linked(net)), None)
    name = "shipping" if group.startswith("shipping") else group
    assert (name, gid) in _found(everything) - _found(before), "the planted difference must show"
    assert sorted(map(_key, checked.written)) == sorted(map(_key, everything.written))
    assert checked.problems == everything.problems
    assert checked.link_groups == len(_linked(net))
