"""Issue 10, realtime field groups, capture: the triggers watch the meta keys, posts columns and
taxonomies of the realtime groups, write exactly one change row per real change in the encoding
documented in ARCHITECTURE step 3, never for syncd's own session, never for other posts or
taxonomies; the trigger set follows the watched set (replaced when it changes, dropped when a
group stops being realtime)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from syncd import capture, schema
from syncd.network import Blog, discover
from tests.integration.daemon_process import members

BLOG = 2


@dataclass
class _Group:
    """The watched part of a field group (what capture reads from the FieldGroup contract)."""

    name: str
    meta_keys: tuple[str, ...] = ()
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()


PRICE = _Group("price", meta_keys=("_regular_price", "_sale_price"))
CONTENT = _Group("content", post_columns=("post_title", "post_excerpt", "post_content"))
TAXONOMY = _Group("taxonomy", taxonomies=("product_cat", "product_tag"))
WATCH = capture.Watch.of([PRICE, CONTENT, TAXONOMY])


def _blog(net: Any) -> Blog:
    with net.engine.connect() as c:
        blog = discover(c, net.prefix).blog(BLOG)
        c.rollback()
    return blog


def _install(net: Any, watch: capture.Watch) -> str:
    with net.engine.connect() as c:
        schema.ensure_schema(c, net.prefix)
        return capture.install_blog_triggers(c, net.prefix, _blog(net), watch)


def _run(net: Any, statements: Sequence[str], *, apply_session: bool = False) -> list[tuple]:
    """Run the statements (each autocommit, as WordPress does) on a fresh change table; return the
    change rows they made: (post, key, op, old, new, conn_id, captured_at)."""
    change = f"{net.prefix}syncd_change"
    with net.engine.connect() as c:
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.commit()
        if apply_session:
            c.exec_driver_sql("SET @syncd_apply = 1")
        for sql in statements:
            c.exec_driver_sql(sql)
            c.commit()
        c.exec_driver_sql("SET @syncd_apply = NULL")
        rows = c.exec_driver_sql(
            f"SELECT post_id, meta_key, op, old_value, new_value, conn_id, captured_at FROM {change} "
            f"WHERE blog_id = {BLOG} ORDER BY id"
        ).all()
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.commit()
    return [tuple(r) for r in rows]


def _short(rows: list[tuple]) -> list[tuple]:
    return [r[:5] for r in rows]


def _post(net: Any) -> int:
    return members(net, "MUG")[BLOG]


def _title(net: Any, post: int) -> str:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT post_title FROM {net.table(BLOG, 'posts')} WHERE ID = {post}"
        ).scalar_one()


def _term(net: Any, taxonomy: str, slug: str) -> int:
    """The term_taxonomy_id of a term (created when missing)."""
    t, tt = net.table(BLOG, "terms"), net.table(BLOG, "term_taxonomy")
    with net.engine.connect() as c:
        found = c.execute(
            sa.text(
                f"SELECT tt.term_taxonomy_id FROM {tt} tt JOIN {t} t ON t.term_id = tt.term_id WHERE tt.taxonomy = :x AND t.slug = :s"
            ),
            {"x": taxonomy, "s": slug},
        ).scalar_one_or_none()
        if found is None:
            term_id = c.execute(
                sa.text(f"INSERT INTO {t} (name, slug, term_group) VALUES (:s, :s, 0)"), {"s": slug}
            ).lastrowid
            found = c.execute(
                sa.text(
                    f"INSERT INTO {tt} (term_id, taxonomy, description, parent, count) VALUES (:t, :x, '', 0, 0)"
                ),
                {"t": term_id, "x": taxonomy},
            ).lastrowid
        c.commit()
    return int(found)


def test_a_price_meta_write_is_one_change_row(wp_network):
    net = wp_network
    _install(net, WATCH)
    post, pm = _post(net), net.table(BLOG, "postmeta")
    _run(net, [f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key IN ('_regular_price', '_sale_price')"])
    rows = _run(
        net,
        [
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_regular_price', '10.00')",
            f"UPDATE {pm} SET meta_value = '12.50' WHERE post_id = {post} AND meta_key = '_regular_price'",
            f"UPDATE {pm} SET meta_value = '12.50' WHERE post_id = {post} AND meta_key = '_regular_price'",  # same
            f"UPDATE {pm} SET meta_value = '9.99' WHERE post_id = {post} AND meta_key = '_price'",  # not watched
        ],
    )
    assert _short(rows) == [
        (post, "_regular_price", "I", None, "10.00"),
        (post, "_regular_price", "U", "10.00", "12.50"),
    ]
    # The stock keys are still watched exactly as before.
    stock = _run(
        net, [f"UPDATE {pm} SET meta_value = meta_value - 1 WHERE post_id = {post} AND meta_key = '_stock'"]
    )
    assert [r[1:3] for r in stock] == [("_stock", "U")]


def test_a_title_update_is_one_change_row_and_other_posts_none(wp_network):
    net = wp_network
    _install(net, WATCH)
    post, posts = _post(net), net.table(BLOG, "posts")
    old = _title(net, post)
    rows = _run(
        net,
        [
            f"UPDATE {posts} SET post_title = 'Mug, blue', post_modified = NOW() WHERE ID = {post}",
            f"UPDATE {posts} SET post_title = 'Mug, blue' WHERE ID = {post}",  # unchanged
            f"UPDATE {posts} SET post_modified = NOW(), post_name = 'mug-blue' WHERE ID = {post}",  # not watched
        ],
    )
    assert _short(rows) == [(post, "post:post_title", "U", old, "Mug, blue")]
    # Byte comparison: a change of case only is a change.
    assert _short(_run(net, [f"UPDATE {posts} SET post_title = 'MUG, BLUE' WHERE ID = {post}"])) == [
        (post, "post:post_title", "U", "Mug, blue", "MUG, BLUE")
    ]
    # Two columns in one statement: two rows, one statement group (same connection, same time).
    both = _run(net, [f"UPDATE {posts} SET post_excerpt = 'Short', post_content = 'Long' WHERE ID = {post}"])
    assert sorted(r[1] for r in both) == ["post:post_content", "post:post_excerpt"]
    assert len({(r[5], r[6]) for r in both}) == 1
    # Not a product: nothing.
    with net.engine.connect() as c:
        page = c.exec_driver_sql(
            f"INSERT INTO {posts} (post_author, post_date, post_date_gmt, post_content, post_title, post_excerpt, "
            "post_status, post_name, to_ping, pinged, post_modified, post_modified_gmt, post_content_filtered, "
            "post_type) VALUES (1, NOW(), NOW(), '', 'About', '', 'publish', 'about', '', '', NOW(), NOW(), '', 'page')"
        ).lastrowid
        c.commit()
    assert _run(net, [f"UPDATE {posts} SET post_title = 'About us' WHERE ID = {page}"]) == []


def test_a_category_add_and_remove_are_one_change_row_each(wp_network):
    net = wp_network
    _install(net, WATCH)
    post, tr = _post(net), net.table(BLOG, "term_relationships")
    cat = _term(net, "product_cat", "kitchen")
    other = _term(net, "pa_color", "teal")  # not a watched taxonomy
    rows = _run(
        net,
        [
            f"INSERT INTO {tr} (object_id, term_taxonomy_id, term_order) VALUES ({post}, {cat}, 0)",
            f"INSERT INTO {tr} (object_id, term_taxonomy_id, term_order) VALUES ({post}, {other}, 0)",
            f"DELETE FROM {tr} WHERE object_id = {post} AND term_taxonomy_id IN ({cat}, {other})",
        ],
    )
    assert _short(rows) == [
        (post, "terms:product_cat", "I", None, "kitchen"),
        (post, "terms:product_cat", "D", "kitchen", None),
    ]
    # Several terms removed by one statement (wp_remove_object_terms): one statement group.
    tag = _term(net, "product_tag", "gift")
    _run(net, [f"INSERT INTO {tr} (object_id, term_taxonomy_id) VALUES ({post}, {cat}), ({post}, {tag})"])
    removed = _run(net, [f"DELETE FROM {tr} WHERE object_id = {post} AND term_taxonomy_id IN ({cat}, {tag})"])
    assert sorted(_short(removed)) == [
        (post, "terms:product_cat", "D", "kitchen", None),
        (post, "terms:product_tag", "D", "gift", None),
    ]
    assert len({(r[5], r[6]) for r in removed}) == 1


def test_syncd_own_session_writes_are_not_captured(wp_network):
    net = wp_network
    _install(net, WATCH)
    post = _post(net)
    pm, posts, tr = (
        net.table(BLOG, "postmeta"),
        net.table(BLOG, "posts"),
        net.table(BLOG, "term_relationships"),
    )
    cat = _term(net, "product_cat", "kitchen")
    statements = [
        f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_sale_price', '5')",
        f"UPDATE {pm} SET meta_value = '6' WHERE post_id = {post} AND meta_key = '_sale_price'",
        f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_sale_price'",
        f"UPDATE {posts} SET post_title = 'Written by syncd' WHERE ID = {post}",
        f"INSERT INTO {tr} (object_id, term_taxonomy_id) VALUES ({post}, {cat})",
        f"DELETE FROM {tr} WHERE object_id = {post} AND term_taxonomy_id = {cat}",
    ]
    assert _run(net, statements, apply_session=True) == []
    # The same statements from a shop are each captured (the title differs from syncd's now).
    statements[3] = statements[3].replace("Written by syncd", "Written by the shop")
    assert len(_run(net, statements)) == 6


def test_the_trigger_set_follows_the_watched_set(wp_network):
    net = wp_network
    blog = _blog(net)

    def state(watch: capture.Watch) -> str:
        with net.engine.connect() as c:
            return capture.blog_trigger_state(
                capture.installed_triggers(c, net.prefix), net.prefix, blog, watch
            ).state

    def tables() -> list[str]:
        with net.engine.connect() as c:
            names = capture.installed_triggers(c, net.prefix)
        return sorted(t for n, (t, _) in names.items() if n in capture.blog_trigger_names(net.prefix, BLOG))

    assert _install(net, capture.STOCK_ONLY) == "installed"
    assert tables() == [f"{net.blog_prefix(BLOG)}postmeta"] * 3
    assert state(WATCH) == "partial"
    assert _install(net, WATCH) == "upgraded"  # postmeta replaced (more keys), posts/terms created
    assert state(WATCH) == "installed" and state(capture.STOCK_ONLY) == "outdated"
    assert _install(net, WATCH) == "unchanged"
    assert len(tables()) == 6
    price_only = capture.Watch.of([PRICE])
    assert _install(net, price_only) == "upgraded"  # content and taxonomy off: their triggers dropped
    assert tables() == [f"{net.blog_prefix(BLOG)}postmeta"] * 3
    assert state(price_only) == "installed"
    # The postmeta triggers of a price-only watch still capture the price (and nothing else new).
    post, posts = _post(net), net.table(BLOG, "posts")
    assert _run(net, [f"UPDATE {posts} SET post_title = 'Not watched now' WHERE ID = {post}"]) == []
    with net.engine.connect() as c:
        assert capture.uninstall_blog_triggers(c, net.prefix, BLOG)
        assert not set(capture.installed_triggers(c, net.prefix)) & set(
            capture.blog_trigger_names(net.prefix, BLOG)
        )


@pytest.mark.parametrize(
    "group",
    [
        _Group("x", post_columns=("post_title; DROP TABLE x",)),
        _Group("x", post_columns=("ID",)),
        _Group("x", taxonomies=("product_cat'",)),
        _Group("x", meta_keys=("_price' OR 1",)),
    ],
)
def test_watched_names_are_validated(group):
    with pytest.raises(ValueError):
        capture.render_blog_triggers("wp_", (2, "wp_2_"), capture.Watch.of([group]))


def test_poll_mode_watches_the_realtime_meta_keys_from_a_new_baseline(wp_network):
    """Without triggers: the snapshot takes a newly watched key as it is (nothing queued), then
    each real change of it is one change row, exactly like the trigger's; a key no longer watched
    leaves the snapshot. Posts columns and terms are refused (see test_poll_refusals_name_the_group)."""
    from syncd import poll

    net = wp_network
    blog, post, pm = _blog(net), _post(net), net.table(BLOG, "postmeta")
    with_price = capture.Watch.of([PRICE]).meta_keys

    def polled(keys: tuple[str, ...], *statements: str) -> list[tuple]:
        with net.engine.connect() as c:
            schema.ensure_schema(c, net.prefix)
            c.commit()
            for sql in statements:
                c.exec_driver_sql(sql)
                c.commit()
            c.exec_driver_sql(f"DELETE FROM {net.prefix}syncd_change")
            poll.poll_blog(c, net.prefix, blog, keys)
            rows = c.exec_driver_sql(
                f"SELECT post_id, meta_key, op, old_value, new_value FROM {net.prefix}syncd_change ORDER BY id"
            ).all()
            c.exec_driver_sql(f"DELETE FROM {net.prefix}syncd_change")
            c.commit()
            return [tuple(r) for r in rows]

    with net.engine.connect() as c:
        schema.ensure_schema(c, net.prefix)  # syncd's tables, no trigger
    set_price = f"UPDATE {pm} SET meta_value = '{{}}' WHERE post_id = {post} AND meta_key = '_regular_price'"
    _run(net, [f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_regular_price'"])
    _run(net, [f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_regular_price', '10')"])
    assert polled(capture.STOCK_ONLY.meta_keys) == []  # first poll: the baseline, stock keys only
    assert polled(capture.STOCK_ONLY.meta_keys, set_price.format("11")) == []  # not watched
    assert polled(with_price) == []  # newly watched: taken as it is, nothing queued
    assert polled(with_price, set_price.format("12")) == [(post, "_regular_price", "U", "11", "12")]
    with net.engine.connect() as c:
        assert poll.baseline_keys(c, net.prefix, blog) == with_price
        # The apply step's look at unseen writes diffs the keys the snapshot holds.
        c.exec_driver_sql(set_price.format("13"))
        seen = poll.capture_unseen(c, net.prefix, blog, [post])
        assert seen.keys == with_price and seen.queued == 1
        c.rollback()
    assert polled(capture.STOCK_ONLY.meta_keys) == []  # price off: its rows leave the snapshot
    with net.engine.connect() as c:
        left = c.exec_driver_sql(
            f"SELECT COUNT(*) FROM {net.prefix}syncd_snapshot WHERE meta_key = '_regular_price'"
        ).scalar_one()
        assert left == 0 and poll.baseline_keys(c, net.prefix, blog) == capture.STOCK_ONLY.meta_keys


def test_status_judges_each_blogs_triggers_against_its_watch(wp_network):
    from syncd import status

    net = wp_network
    with net.engine.connect() as c:
        schema.ensure_schema(c, net.prefix)
        network = discover(c, net.prefix)
        for blog in network.usable_blogs():
            capture.install_blog_triggers(
                c, net.prefix, blog, WATCH if blog.blog_id == BLOG else capture.STOCK_ONLY
            )
        c.commit()

        def states(watch_for: Any) -> dict[int, str]:
            report = status.collect(c, net.prefix, None, watch_for)
            c.rollback()
            return {b["blog_id"]: b["triggers"] for b in report["blogs"] if "triggers" in b}

        assert states(lambda b: WATCH if b == BLOG else capture.STOCK_ONLY) == dict.fromkeys(
            net.blog_ids, "installed"
        )
        assert states(None)[BLOG] == "outdated"  # as configured without the field groups
