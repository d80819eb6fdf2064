"""The ``content`` field group: title, short description and description (issue 10).

The values are ``posts`` columns (``post_title``, ``post_excerpt``, ``post_content``) of products.
WooCommerce writes them through ``wp_update_post()`` (``WC_Product_Data_Store_CPT::update``), which
leaves ``post_name`` alone, bumps ``post_modified``/``_gmt`` and, for a published product, the
network's ``blogs.last_updated`` (fixture 19A); the product save around it deletes the product's
transients and bumps the version transients as for every save.

Variations are not part of the group: WooCommerce generates a variation's title and excerpt from
its parent and attributes (its description is the ``_variation_description`` meta), so they read
as ``None`` on every blog. Text is copied only between members of the same language: the link
key is SKU + language, so members of one link group already share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from syncd import woo
from syncd.db import table
from syncd.fields.group import Problem, Target, Values
from syncd.fields.product_save import Clock, bump_blog_updated, save_product, utc_now
from syncd.network import Blog

CONTENT_COLUMNS: tuple[str, ...] = ("post_title", "post_excerpt", "post_content")


class ContentGroup:
    """Title, short description and description of products."""

    name = "content"
    meta_keys: tuple[str, ...] = ()
    post_columns: tuple[str, ...] = CONTENT_COLUMNS
    taxonomies: tuple[str, ...] = ()
    #: A full pass's checksums (syncd.fields.checksum): the columns of products (variations read None).
    checksum_columns: tuple[str, ...] = CONTENT_COLUMNS
    checksum_post_types: tuple[str, ...] = (woo.PRODUCT,)

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        ids = sorted({int(p) for p in post_ids})
        if not ids:
            return {}
        out: dict[int, Values] = {pid: dict.fromkeys(CONTENT_COLUMNS) for pid in ids}
        cols = ", ".join(CONTENT_COLUMNS)
        for pid, post_type, *values in conn.exec_driver_sql(
            f"SELECT ID, post_type, {cols} FROM {table(blog.prefix, 'posts')} "
            f"WHERE ID IN ({', '.join(['%s'] * len(ids))})",
            tuple(ids),
        ):
            if post_type == woo.PRODUCT:
                out[int(pid)] = {
                    c: (None if v is None else str(v)) for c, v in zip(CONTENT_COLUMNS, values, strict=True)
                }
        return out

    def problems(self, values: Values) -> list[tuple[str, str]]:
        """Any text is a valid value (WordPress stored it); only a product without the columns is not."""
        return [
            (c, "not a text")
            for c in CONTENT_COLUMNS
            if values.get(c) is not None and not isinstance(values.get(c), str)
        ]

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        if target.post_type != woo.PRODUCT:
            return []
        changed = [
            c for c in CONTENT_COLUMNS if wanted.get(c) is not None and wanted.get(c) != current.get(c)
        ]
        if not changed:
            return []
        posts = table(target.blog.prefix, "posts")
        conn.exec_driver_sql(
            f"UPDATE {posts} SET {', '.join(f'{c} = %s' for c in changed)} WHERE ID = %s",
            (*(wanted[c] for c in changed), target.post_id),
        )
        now = self.clock()
        save_product(conn, target.blog, target.post_id, now)
        status = conn.exec_driver_sql(
            f"SELECT post_status FROM {posts} WHERE ID = %s", (target.post_id,)
        ).scalar()
        if status == "publish":
            bump_blog_updated(conn, target.blog, now)
        return []
