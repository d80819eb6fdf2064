"""Issue 10, realtime mode through the capture + apply pipeline: a realtime group's values are
registers in the same pipeline and transaction as stock (last captured change wins), carried to
the blogs that take part in the group, never captured again when syncd writes them, and a bad
value skips that member's group while the rest of the batch is synced.

Groups here are test-only plain meta groups (tests/integration/fields_helpers.py); the real
groups' derived rows are tested by their own golden tests."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.integration.fields_helpers import PRICE, TAX, realtime_daemon
from tests.integration.sync_helpers import archived, ids, meta, pending, qty, set_meta, woo_decrease

BLOGS = (1, 2, 3)


def prices(net: Any, post: dict[int, int], key: str = "_regular_price") -> list[str | None]:
    return [meta(net, b, post[b], key) for b in BLOGS]


def history(net: Any, key: str) -> list[tuple[str, int, str | None, str | None]]:
    with net.engine.connect() as c:
        rows = c.execute(
            sa.text(
                f"SELECT role, blog_id, new_value, note FROM {net.prefix}syncd_history "
                "WHERE meta_key = :k ORDER BY id"
            ),
            {"k": key},
        ).all()
    return [tuple(r) for r in rows]


def test_a_price_edit_reaches_every_blog_once_and_is_not_captured_back(wp_network):
    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE})
    try:
        set_meta(net, 1, mug[1], "_regular_price", "17.50")
        assert pending(net) == 1  # the trigger watches the realtime group's key
        d.apply_pending()
        assert prices(net, mug) == ["17.50"] * 3
        # syncd's own writes are not captured: nothing queued, nothing to apply (no ping-pong).
        assert pending(net) == 0 and d.apply_pending() == 0
        roles = [(r[0], r[1]) for r in history(net, "_regular_price")]
        assert sorted(roles) == [("copy", 2), ("copy", 3), ("origin", 1)]
        # Stock still syncs alongside, in the same batches.
        set_meta(net, 2, mug[2], "_regular_price", "18.00")
        woo_decrease(net, 2, mug[2], 1)
        before = qty(net, 1, mug[1])
        d.apply_pending()
        assert prices(net, mug) == ["18.00"] * 3
        assert [qty(net, b, mug[b]) for b in BLOGS] == [before - 1] * 3
    finally:
        d.close()


def test_edits_on_two_blogs_converge_to_the_last_captured(wp_network):
    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE})
    try:
        # Both captured before the batch: the later one wins everywhere, its origin included.
        set_meta(net, 3, mug[3], "_regular_price", "30.00")
        set_meta(net, 2, mug[2], "_regular_price", "20.00")
        d.apply_pending()
        assert prices(net, mug) == ["20.00"] * 3
        # One captured after the batch was fetched (between the fetch and the lock step): the
        # batch starts again with it, and the last captured still wins.
        fired: list[str] = []

        def edit_between_fetch_and_lock(step: str) -> None:
            if step == "lock" and not fired:
                fired.append(step)
                set_meta(net, 3, mug[3], "_regular_price", "33.00")

        set_meta(net, 1, mug[1], "_regular_price", "11.00")
        d.step_hook = edit_between_fetch_and_lock
        d.apply_pending()
        assert fired and pending(net) == 0
        assert prices(net, mug) == ["33.00"] * 3
    finally:
        d.close()


def test_a_bad_value_is_skipped_and_the_rest_synced(wp_network):
    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE, "tax": TAX})
    try:
        before = prices(net, mug)
        before_qty = qty(net, 1, mug[1])
        with net.engine.connect() as c:  # one save: a bad price, a tax class, a sale
            for key, value in (("_regular_price", "1,99"), ("_tax_class", "reduced-rate")):
                c.execute(
                    sa.text(
                        f"UPDATE {net.table(1, 'postmeta')} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"
                    ),
                    {"v": value, "p": mug[1], "k": key},
                )
            c.commit()
        woo_decrease(net, 1, mug[1], 2)
        d.apply_pending()
        assert prices(net, mug)[1:] == before[1:]  # the bad price reached nobody
        assert prices(net, mug, "_tax_class") == ["reduced-rate"] * 3
        assert [qty(net, b, mug[b]) for b in BLOGS] == [before_qty - 2] * 3
        skipped = [r for r in history(net, "_regular_price") if r[0] == "skipped"]
        assert sorted(r[1] for r in skipped) == [2, 3]
        assert all("not a number" in (r[3] or "") for r in skipped)
        assert pending(net) == 0
    finally:
        d.close()


def test_only_the_blogs_of_the_group_take_part(wp_network):
    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE}, blogs={"price": (1, 2)})
    try:
        before = meta(net, 3, mug[3], "_regular_price")
        set_meta(net, 1, mug[1], "_regular_price", "21.00")
        d.apply_pending()
        assert prices(net, mug) == ["21.00", "21.00", before]
        # Blog 3 does not take part: its own edit is not even captured.
        set_meta(net, 3, mug[3], "_regular_price", "99.00")
        assert pending(net) == 0
        assert prices(net, mug) == ["21.00", "21.00", "99.00"]
    finally:
        d.close()


def _title(net: Any, blog: int, post: int) -> str:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT post_title FROM {net.table(blog, 'posts')} WHERE ID = {post}"
        ).scalar_one()


def _add_category(net: Any, blog: int, post: int, slug: str, *, create: bool = True) -> int:
    t, tt, tr = (net.table(blog, x) for x in ("terms", "term_taxonomy", "term_relationships"))
    with net.engine.connect() as c:
        found = c.execute(
            sa.text(
                f"SELECT tt.term_taxonomy_id FROM {tt} tt JOIN {t} t ON t.term_id = tt.term_id "
                "WHERE tt.taxonomy = 'product_cat' AND t.slug = :s"
            ),
            {"s": slug},
        ).scalar_one_or_none()
        if found is None:
            term = c.execute(sa.text(f"INSERT INTO {t} (name, slug) VALUES (:s, :s)"), {"s": slug}).lastrowid
            found = c.exec_driver_sql(
                f"INSERT INTO {tt} (term_id, taxonomy, description) VALUES ({term}, 'product_cat', '')"
            ).lastrowid
        if post:
            c.exec_driver_sql(f"INSERT INTO {tr} (object_id, term_taxonomy_id) VALUES ({post}, {found})")
        c.commit()
    return int(found)


def test_a_title_and_a_category_travel_through_the_pipeline(wp_network):
    from tests.integration.fields_helpers import PlainCategoryGroup, PlainTitleGroup

    net = wp_network
    mug = ids(net, "MUG")
    for b in (1, 2):
        _add_category(net, b, 0, "kitchen")  # blog 3 has no such category
    d = realtime_daemon(net, {"content": PlainTitleGroup(), "taxonomy": PlainCategoryGroup()})
    try:
        with net.engine.connect() as c:
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'posts')} SET post_title = 'Mug, teal' WHERE ID = {mug[1]}"
            )
            c.commit()
        _add_category(net, 1, mug[1], "kitchen")
        assert pending(net) == 2  # post:post_title and terms:product_cat
        d.apply_pending()
        assert [_title(net, b, mug[b]) for b in BLOGS] == ["Mug, teal"] * 3
        cats = PlainCategoryGroup()
        with net.engine.connect() as c:
            from syncd.network import discover

            network = discover(c, net.prefix)
            have = [cats.read(c, network.blog(b), [mug[b]])[mug[b]]["terms:product_cat"] for b in BLOGS]
        assert "kitchen" in have[0] and "kitchen" in have[1] and "kitchen" not in have[2]
        skipped = [r for r in history(net, "terms:product_cat") if r[0] == "skipped"]
        assert [(r[1], "does not exist" in (r[3] or "")) for r in skipped] == [(3, True)]
        assert pending(net) == 0  # syncd's own posts and term writes are not captured
    finally:
        d.close()


def test_poll_mode_syncs_a_realtime_meta_group_without_echo_and_refuses_post_columns(wp_network):
    """Without triggers the realtime group's meta keys are polled like stock: an edit is queued by
    the poll, applied, and syncd's own writes advance the snapshot (the next poll queues nothing).
    A realtime group that needs post columns or terms cannot be polled: refused at start-up."""
    import pytest

    from syncd.daemon import Daemon, StartupRefused
    from tests.integration.fields_helpers import PlainTitleGroup, with_fields

    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE}, capture={"mode": "poll"})
    try:
        assert d.capture_mode == "poll"
        d.poll()  # the baseline, price keys included
        set_meta(net, 2, mug[2], "_regular_price", "12.34")
        assert d.poll() == 1
        d.apply_pending()
        assert prices(net, mug) == ["12.34"] * 3
        assert d.poll() == 0 and pending(net) == 0  # syncd's writes are not polled back
    finally:
        d.close()
    config = with_fields(d.config, {"content": "realtime"}, {})
    refused = Daemon(config, instance="test")
    refused._realtime = (config, {"content": PlainTitleGroup()})
    with pytest.raises(StartupRefused, match=r'content = "realtime" needs triggers \(post columns'):
        refused.prepare()
    refused.close()


def test_the_real_price_content_and_taxonomy_groups_in_realtime(wp_network):
    """The merged groups through the realtime pipeline: a regular price edit reaches the other
    blogs with what WooCommerce derives there (``_price``, the lookup row's prices), a title
    edit and a category given on blog 1 reach them too; the rows syncd writes are not captured."""
    from syncd.fields.content import ContentGroup
    from syncd.fields.price import PriceGroup
    from syncd.fields.terms import TaxonomyGroup

    net = wp_network
    mug = ids(net, "MUG")
    for b in BLOGS:
        _add_category(net, b, 0, "kitchen")
    groups = {"price": PriceGroup(), "content": ContentGroup(), "taxonomy": TaxonomyGroup()}
    d = realtime_daemon(net, groups)
    try:
        with net.engine.connect() as c:  # what an admin save of price and title sends
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = '23.00' "
                f"WHERE post_id = {mug[1]} AND meta_key = '_regular_price'"
            )
            c.exec_driver_sql(
                f"UPDATE {net.table(1, 'posts')} SET post_title = 'Mug, 23' WHERE ID = {mug[1]}"
            )
            c.commit()
        _add_category(net, 1, mug[1], "kitchen")
        d.apply_pending()
        assert prices(net, mug)[1:] == ["23.00"] * 2
        for b in (2, 3):
            assert meta(net, b, mug[b], "_price") in ("23", "23.00")  # derived on each blog
            with net.engine.connect() as c:
                low = c.exec_driver_sql(
                    f"SELECT min_price FROM {net.table(b, 'wc_product_meta_lookup')} WHERE product_id = {mug[b]}"
                ).scalar_one()
            assert float(low) == 23.0
        assert [_title(net, b, mug[b]) for b in BLOGS] == ["Mug, 23"] * 3
        with net.engine.connect() as c:
            from syncd.network import discover

            network = discover(c, net.prefix)
            cats = [
                TaxonomyGroup().read(c, network.blog(b), [mug[b]])[mug[b]]["terms:product_cat"] for b in BLOGS
            ]
        assert all("kitchen" in (v or ()) for v in cats), cats
        assert pending(net) == 0 and d.apply_pending() == 0  # nothing of syncd's own came back
    finally:
        d.close()


def test_realtime_price_from_the_configuration_alone(wp_network):
    """`[fields] price = "realtime"` is all it takes: the daemon builds the group through the
    registry, installs the triggers that watch its keys, and a regular price edit on blog 2
    reaches blogs 1 and 3 with the ``_price`` each derives (no group injected by the test)."""
    from tests.integration.sync_helpers import make_daemon

    net = wp_network
    mug = ids(net, "MUG")
    d = make_daemon(net, fields={"price": "realtime"})
    try:
        assert set(d.realtime_groups()) == {"price"}
        set_meta(net, 2, mug[2], "_regular_price", "31.00")
        assert pending(net) == 1
        d.apply_pending()
        assert prices(net, mug) == ["31.00"] * 3
        # Derived where syncd wrote (the origin's own _price is written by WooCommerce's save,
        # which this raw UPDATE stands in for only in part).
        assert [meta(net, b, mug[b], "_price") for b in (1, 3)] == ["31.00"] * 2
        assert pending(net) == 0 and d.apply_pending() == 0
    finally:
        d.close()


def test_a_blog_archived_during_an_edit_takes_it_when_back(wp_network):
    """A realtime field change does not reach a member whose blog is archived (nothing is written
    into a blog that is not live); once the blog is back, the member takes its group's value
    (found while fixing issue 9's archived-blog paths: with no stock change missed too, nothing
    queued its heal and the member kept the old value for good)."""
    net = wp_network
    mug = ids(net, "MUG")
    d = realtime_daemon(net, {"price": PRICE})
    try:
        archived(net, 3, True)
        set_meta(net, 1, mug[1], "_regular_price", "21.00")
        d.apply_pending()
        assert prices(net, mug)[:2] == ["21.00"] * 2 and prices(net, mug)[2] != "21.00"
        archived(net, 3, False)
        d.discover()
        d.apply_pending()
        assert prices(net, mug) == ["21.00"] * 3
    finally:
        d.close()
