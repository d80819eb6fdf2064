"""What every WooCommerce product save writes besides the changed fields, for the field groups.

A CRUD save (``$product->save()``) of any field bumps ``posts.post_modified``/``_gmt``, deletes the
product's transients (``wc_delete_product_transients``: the shop transients, ``wc_related_<id>``,
for a variation its parent's ``wc_product_children_``/``wc_var_prices_``/``wc_child_has_weight_``/
``wc_child_has_dimensions_`` ...), bumps both version transients, and re-derives the stock data
and (a variation) the variable parent (fixtures 17B, 19, 20). syncd's derived-data writer already
does exactly that for a saved product: :func:`syncd.derived.refresh_products` with the product
named in ``changed``. Content saves go through ``wp_update_post``, which also bumps the network's
``blogs.last_updated`` (fixture 19A).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from syncd import woo
from syncd.db import table
from syncd.derived import refresh_products
from syncd.network import Blog

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def save_product(conn: sa.Connection, blog: Blog, post_id: int, now_utc: datetime) -> None:
    """The side effects of WooCommerce saving ``post_id`` on ``blog`` at ``now_utc``."""
    refresh_products(conn, blog, [post_id], now_utc=now_utc, changed=[post_id])


def base_prefix(blog: Blog) -> str:
    """The network's table prefix (blog 1 uses it; blog N uses ``base + N + '_'``)."""
    suffix = f"{blog.blog_id}_"
    if blog.blog_id > 1 and blog.prefix.endswith(suffix):
        return blog.prefix[: -len(suffix)]
    return blog.prefix


def bump_blog_updated(conn: sa.Connection, blog: Blog, now_utc: datetime) -> None:
    """``wpmu_update_blogs_date()`` (``_update_blog_date_on_post_publish`` on a published public
    post's update): ``{base}blogs.last_updated`` = ``current_time('mysql', true)``."""
    _local, gmt = woo.post_modified_values(now_utc, None, 0)
    conn.exec_driver_sql(
        f"UPDATE {table(base_prefix(blog), 'blogs')} SET last_updated = %s WHERE blog_id = %s",
        (gmt, blog.blog_id),
    )
