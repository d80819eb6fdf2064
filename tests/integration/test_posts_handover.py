"""The apply step reads posts rows once (its lock closure) and hands them to the derived step,
which then does not read them again (:func:`syncd.derived.posts_for`). That is only right if the
rows selected from the closure are exactly the rows the derived step would have read: checked
here against the derived step's own query, on the recorded catalogue (simple, variable parents,
variations with their own stock and on their parent's, external, grouped), for every product
alone, for variations with and without their parent, and for ids that are not posts."""

from __future__ import annotations

import itertools
from typing import Any

import sqlalchemy as sa

from syncd import woo
from syncd.derived import posts_for, read_snapshot
from syncd.lock import post_closures
from syncd.network import discover


def _products(conn: sa.Connection, net: Any, blog_id: int) -> dict[int, tuple[str, int]]:
    rows = conn.execute(
        sa.text(
            f"SELECT ID, post_type, post_parent FROM {net.table(blog_id, 'posts')} "
            "WHERE post_type IN ('product', 'product_variation') ORDER BY ID"
        )
    )
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


def test_posts_from_the_lock_closure_equal_the_derived_read(wp_network):
    net = wp_network
    checked = 0
    with net.engine.connect() as conn:
        network = discover(conn, net.prefix)
        for blog_id in net.blog_ids:
            blog = network.blog(blog_id)
            products = _products(conn, net, blog_id)
            variations = [p for p, (t, _) in products.items() if t == woo.VARIATION]
            parents = sorted({parent for p, (t, parent) in products.items() if t == woo.VARIATION})
            assert variations and parents, "the recorded catalogue has variable products"
            cases: list[list[int]] = [[p] for p in products]
            cases += [[v, products[v][1]] for v in variations]  # a variation with its parent
            cases += [list(products)]  # a whole blog at once
            cases += [[max(products) + 1000], [variations[0], max(products) + 1000]]  # not posts
            cases += [list(c) for c in itertools.combinations(variations[:4], 2)]
            for ids in cases:
                # The closure is read for a superset of the ids the derived step refreshes (the
                # batch's locked products on the blog): the selection must not pick up the rest.
                for superset in (ids, sorted(set(ids) | set(parents) | set(list(products)[:3]))):
                    handed = posts_for(post_closures(conn, [(blog, superset)])[blog.blog_id], ids)
                    own, _ = read_snapshot(conn, blog, ids, lock=False)  # the derived step's own read
                    assert handed == own.posts, (blog_id, ids, superset)
                    checked += 1
            conn.rollback()
    assert checked > 50
