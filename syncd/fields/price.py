"""The ``price`` field group: regular price, sale price and sale dates, written as WooCommerce 11 saves them.

Source values (what members share): ``_regular_price``, ``_sale_price``, ``_sale_price_dates_from``,
``_sale_price_dates_to``. Everything else is derived on each blog from that blog's own values and
options, never copied:

* the source rows, as the product data store writes them: a changed value updates its row, a
  new one inserts it, an emptied one DELETES it (fixture 15 A step 3);
* ``_price``, the active price (:func:`syncd.fields.price_rules.active_price`, at the write time);
* for a variation, its variable parent's ``_price`` rows, recomputed from the parent's visible
  children on this blog (``sync_price``: one row per distinct child price, ascending; fixtures
  11 B, 16) - a parent's rows are never copied from another blog;
* the lookup rows (``min_price``/``max_price``/``onsale``, the parent's too), ``post_modified``,
  the transients a save deletes (``wc_products_onsale``, ``wc_var_prices_<parent>``, ...) and the
  version transients: :func:`syncd.derived.refresh_products` of the product (its variable
  parent is re-derived there as WooCommerce's deferred parent sync does);
* the scheduled-sale Action Scheduler actions (:mod:`syncd.fields.sale_actions`) when the sale
  dates change, so the copy's sale starts and ends when the origin's does.

A variable product holds no price of its own (``read_product_data()`` blanks it, ``sync_price()``
deletes the rows): as a target it is left alone; its rows follow its variations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd import derived, woo
from syncd.db import table
from syncd.fields import price_rules as rules
from syncd.fields import sale_actions
from syncd.fields.group import Problem, Target, Values
from syncd.network import Blog

log = structlog.get_logger("syncd.fields.price")


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class PriceGroup:
    """:class:`syncd.fields.group.FieldGroup` for prices (issue 10).

    ``clock``: the write time (aware or naive UTC); WooCommerce decides whether a sale runs
    "now" and stamps ``post_modified``, transient versions and Action Scheduler logs with it.
    Tests pass the recorded time; the default is the system clock.
    """

    name = "price"
    meta_keys: tuple[str, ...] = rules.SOURCE_KEYS
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()
    #: The stored source rows only (a full pass's checksums, syncd.fields.checksum); never the
    #: derived ``_price``, which each blog computes from its own values and clock.
    checksum_keys: tuple[str, ...] = rules.SOURCE_KEYS

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))

    # ------------------------------------------------------------------ read / problems

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        """First row (meta_id order) of each source key per product, ``''`` read as ``None``
        (WooCommerce treats both alike and deletes ``''`` rows on save). One statement."""
        ids = sorted({int(p) for p in post_ids})
        out: dict[int, dict[str, str | None]] = {pid: dict.fromkeys(rules.SOURCE_KEYS) for pid in ids}
        if not ids:
            return dict(out)
        seen: set[tuple[int, str]] = set()
        for post_id, key, value in conn.exec_driver_sql(
            f"SELECT post_id, meta_key, meta_value FROM {table(blog.prefix, 'postmeta')} "
            f"WHERE post_id IN ({_marks(len(ids))}) AND meta_key IN ({_marks(len(rules.SOURCE_KEYS))}) "
            "ORDER BY meta_id",
            (*ids, *rules.SOURCE_KEYS),
        ):
            if (int(post_id), str(key)) not in seen:
                seen.add((int(post_id), str(key)))
                out[int(post_id)][str(key)] = rules.normalise(value)
        return dict(out)

    def problems(self, values: Values) -> list[tuple[str, str]]:
        return rules.problems(_texts(values))

    # ------------------------------------------------------------------ write

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        blog, pid = target.blog, target.post_id
        bad = self.problems(wanted)
        if bad:
            return [Problem(blog.blog_id, pid, target.sku, f, r) for f, r in bad]
        cur, want = _texts(current), _texts(wanted)
        changed = [
            k for k in rules.SOURCE_KEYS if rules.normalise(cur.get(k)) != rules.normalise(want.get(k))
        ]
        if not changed:
            return []
        kind = _product_kind(conn, blog, pid)
        if kind is None or kind == "variable":
            # A variable product's prices are its variations'; a missing or trashed post is the
            # caller's race (membership follows it).
            log.info("price_target_skipped", blog=blog.blog_id, post=pid, sku=target.sku, kind=kind)
            return []
        dates_change = any(k in changed for k in rules.DATE_KEYS)
        if dates_change and not sale_actions.tables_present(conn, blog):
            return [
                Problem(
                    blog.blog_id,
                    pid,
                    target.sku,
                    next(k for k in rules.DATE_KEYS if k in changed),
                    "the blog has no Action Scheduler tables: its sale would not start or end on time",
                )
            ]
        now = self._clock()
        now_ts = woo.unix_time(now)
        _write_source_rows(conn, blog, pid, cur, want, changed)
        if dates_change:
            sale_actions.requeue(conn, blog, pid, cur, want, now_ts)
        _write_active_price(conn, blog, pid, rules.active_price(want, now_ts))
        parent = _variable_parent(conn, blog, pid) if kind == "variation" else None
        if parent is not None:
            sync_parent_prices(conn, blog, parent)
        derived.refresh_products(conn, blog, [pid], now_utc=now, changed=[pid])
        log.debug("price_written", blog=blog.blog_id, post=pid, sku=target.sku, fields=changed)
        return []

    # ------------------------------------------------------------------ re-derive

    def stale(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> set[int]:
        """The products whose ``_price`` rows are not the active price of their own source
        values (a plain read, two statements; :meth:`rederive` decides under locks). A variable
        or grouped product (no source values, ``_price`` rows from its children) is listed too:
        :meth:`rederive` leaves it alone."""
        ids = sorted({int(p) for p in post_ids})
        if not ids:
            return set()
        own = self.read(conn, blog, ids)
        rows: dict[int, list[str | None]] = {p: [] for p in ids}
        for pid, value in conn.exec_driver_sql(
            f"SELECT post_id, meta_value FROM {table(blog.prefix, 'postmeta')} "
            f"WHERE post_id IN ({_marks(len(ids))}) AND meta_key = %s ORDER BY meta_id",
            (*ids, rules.PRICE),
        ):
            rows[int(pid)].append(value)
        now_ts = woo.unix_time(self._clock())
        out = set()
        for pid in ids:
            values = _texts(own.get(pid, {}))
            if self.problems(values):
                continue  # rederive would leave it: WooCommerce's save is not ours to judge
            want = rules.active_price(values, now_ts)
            if not rows[pid] or any(v != want for v in rows[pid]):
                out.add(pid)
        return out

    def rederive(self, conn: sa.Connection, blog: Blog, post_id: int) -> tuple[str, str] | None:
        """``_price`` again from the product's own source values, when it differs from them:
        ``(old, new)``, else None. A WooCommerce save that loaded the product before syncd wrote
        a price value into it, and bumps ``post_modified`` only afterwards (trace 09, 48 -> 54),
        is not seen as a save in flight; its ``handle_updated_props()`` then writes the ``_price``
        it computed from the values it loaded (89) over syncd's (:mod:`syncd.fields.recheck`).
        The derived rows follow as on a write (a variation's parent rows, the lookup, transients)."""
        kind = _product_kind(conn, blog, post_id)
        if kind is None or kind == "variable" or _price_is_synced(conn, blog, post_id):
            return None  # a variable or grouped product's _price follows its children
        own = _texts(self.read(conn, blog, [post_id]).get(post_id, {}))
        if self.problems(own):
            return None  # not ours to judge: WooCommerce keeps what its save wrote
        now = self._clock()
        want = rules.active_price(own, woo.unix_time(now))
        rows = [
            r[0]
            for r in conn.exec_driver_sql(
                f"SELECT meta_value FROM {table(blog.prefix, 'postmeta')} WHERE post_id = %s AND meta_key = %s "
                "ORDER BY meta_id FOR UPDATE",
                (post_id, rules.PRICE),
            )
        ]
        if rows and all(v == want for v in rows):
            return None
        _write_active_price(conn, blog, post_id, want)
        parent = _variable_parent(conn, blog, post_id) if kind == "variation" else None
        if parent is not None:
            sync_parent_prices(conn, blog, parent)
        derived.refresh_products(conn, blog, [post_id], now_utc=now, changed=[post_id])
        return (rows[0] if rows else None) or "", want


# ---------------------------------------------------------------------- helpers


def _texts(values: Values | Mapping[str, Any]) -> dict[str, str | None]:
    """The group's values as texts (a tuple value is not a price: kept as its text)."""
    return {k: (None if v is None else v if isinstance(v, str) else str(v)) for k, v in values.items()}


def _product_kind(conn: sa.Connection, blog: Blog, post_id: int) -> str | None:
    """'variation', 'variable' or 'product' (any other product type), or None when the post is
    not a product or is in the trash (WooCommerce does not save trashed products)."""
    p = blog.prefix
    row = conn.exec_driver_sql(
        f"SELECT p.post_type, p.post_status = 'trash', EXISTS (SELECT 1 FROM {table(p, 'term_relationships')} tr "
        f"JOIN {table(p, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(p, 'terms')} t ON t.term_id = tt.term_id "
        "WHERE tr.object_id = p.ID AND tt.taxonomy = 'product_type' AND t.slug = 'variable') "
        f"FROM {table(p, 'posts')} p WHERE p.ID = %s",
        (post_id,),
    ).first()
    if row is None or row[0] not in woo.PRODUCT_POST_TYPES or int(row[1]):
        return None
    if row[0] == woo.VARIATION:
        return "variation"
    return "variable" if int(row[2]) else "product"


def _price_is_synced(conn: sa.Connection, blog: Blog, post_id: int) -> bool:
    """``handle_updated_props()``'s ``$price_is_synced``: a variable or grouped product, whose
    ``_price`` rows its children set (never its own regular and sale price)."""
    p = blog.prefix
    return bool(
        conn.exec_driver_sql(
            f"SELECT EXISTS (SELECT 1 FROM {table(p, 'term_relationships')} tr "
            f"JOIN {table(p, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
            f"JOIN {table(p, 'terms')} t ON t.term_id = tt.term_id WHERE tr.object_id = %s "
            "AND tt.taxonomy = 'product_type' AND t.slug IN ('variable', 'grouped'))",
            (post_id,),
        ).scalar()
    )


def _variable_parent(conn: sa.Connection, blog: Blog, post_id: int) -> int | None:
    row = conn.exec_driver_sql(
        f"SELECT post_parent FROM {table(blog.prefix, 'posts')} WHERE ID = %s", (post_id,)
    ).first()
    if row is None or not int(row[0]):
        return None
    parent = int(row[0])
    return parent if _product_kind(conn, blog, parent) == "variable" else None


def _write_source_rows(
    conn: sa.Connection,
    blog: Blog,
    post_id: int,
    current: Mapping[str, str | None],
    wanted: Mapping[str, str | None],
    changed: Sequence[str],
) -> None:
    """``update_or_delete_post_meta()`` per changed key, in the data store's order: an empty value
    deletes the rows, an existing row is updated (every row of the key, like ``update_post_meta``),
    a missing one inserted."""
    postmeta = table(blog.prefix, "postmeta")
    present = _present_keys(conn, blog, post_id, changed)
    for key in rules.SOURCE_KEYS:
        if key not in changed:
            continue
        value = rules.normalise(wanted.get(key))
        if value is None:
            conn.exec_driver_sql(
                f"DELETE FROM {postmeta} WHERE post_id = %s AND meta_key = %s", (post_id, key)
            )
        elif key in present:
            conn.exec_driver_sql(
                f"UPDATE {postmeta} SET meta_value = %s WHERE post_id = %s AND meta_key = %s",
                (value, post_id, key),
            )
        else:
            conn.exec_driver_sql(
                f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",
                (post_id, key, value),
            )


def _present_keys(conn: sa.Connection, blog: Blog, post_id: int, keys: Sequence[str]) -> set[str]:
    return {
        str(r[0])
        for r in conn.exec_driver_sql(
            f"SELECT DISTINCT meta_key FROM {table(blog.prefix, 'postmeta')} "
            f"WHERE post_id = %s AND meta_key IN ({_marks(len(keys))})",
            (post_id, *keys),
        )
    }


def _write_active_price(conn: sa.Connection, blog: Blog, post_id: int, price: str) -> None:
    """``update_post_meta($id, '_price', ...)``: rewrite the rows when the first differs, insert
    the row when there is none (WooCommerce keeps a ``''`` row: it is not deleted)."""
    postmeta = table(blog.prefix, "postmeta")
    rows = [
        r[0]
        for r in conn.exec_driver_sql(
            f"SELECT meta_value FROM {postmeta} WHERE post_id = %s AND meta_key = %s ORDER BY meta_id FOR UPDATE",
            (post_id, rules.PRICE),
        )
    ]
    if not rows:
        conn.exec_driver_sql(
            f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",
            (post_id, rules.PRICE, price),
        )
    elif any(v != price for v in rows):
        conn.exec_driver_sql(
            f"UPDATE {postmeta} SET meta_value = %s WHERE post_id = %s AND meta_key = %s",
            (price, post_id, rules.PRICE),
        )


def _visible_child_prices(conn: sa.Connection, blog: Blog, parent_id: int) -> list[str | None]:
    """The ``_price`` rows of the parent's visible children (``read_children()`` 'visible':
    published variations; with ``woocommerce_hide_out_of_stock_items = yes`` not those with the
    ``product_visibility`` term ``outofstock``), locked, in post then meta_id order."""
    p = blog.prefix
    hide = (
        f" AND NOT EXISTS (SELECT 1 FROM {table(p, 'term_relationships')} tr "
        f"JOIN {table(p, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(p, 'terms')} t ON t.term_id = tt.term_id "
        "WHERE tr.object_id = c.ID AND tt.taxonomy = 'product_visibility' AND t.name = 'outofstock')"
        if blog.hide_out_of_stock
        else ""
    )
    return [
        r[0]
        for r in conn.exec_driver_sql(
            f"SELECT pm.meta_value FROM {table(p, 'posts')} c JOIN {table(p, 'postmeta')} pm "
            "ON pm.post_id = c.ID AND pm.meta_key = %s "
            "WHERE c.post_parent = %s AND c.post_type = %s AND c.post_status = 'publish'" + hide + " "
            "ORDER BY c.ID, pm.meta_id FOR UPDATE",
            (rules.PRICE, parent_id, woo.VARIATION),
        )
    ]


def sync_parent_prices(conn: sa.Connection, blog: Blog, parent_id: int) -> bool:
    """``sync_price()`` of a variable parent on this blog: its ``_price`` rows become one per
    distinct visible child price, ascending (so the lookup's first/last row are min/max), and its
    own ``_regular_price``/``_sale_price`` rows go. Rewritten only when they differ (WooCommerce
    deletes and re-adds them on every variation save, with the same values: fixture 07).
    Returns whether anything was written."""
    postmeta = table(blog.prefix, "postmeta")
    stored = [
        (str(r[0]), r[1])
        for r in conn.exec_driver_sql(
            f"SELECT meta_key, meta_value FROM {postmeta} WHERE post_id = %s "
            "AND meta_key IN (%s, %s, %s) ORDER BY meta_id FOR UPDATE",
            (parent_id, rules.PRICE, rules.REGULAR, rules.SALE),
        )
    ]
    wanted = rules.parent_prices(_visible_child_prices(conn, blog, parent_id))
    if [(rules.PRICE, v) for v in wanted] == stored:
        return False
    conn.exec_driver_sql(
        f"DELETE FROM {postmeta} WHERE post_id = %s AND meta_key IN (%s, %s, %s)",
        (parent_id, rules.PRICE, rules.REGULAR, rules.SALE),
    )
    if wanted:
        params: list[Any] = []
        for value in wanted:
            params += [parent_id, rules.PRICE, value]
        conn.exec_driver_sql(
            f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(wanted)),
            tuple(params),
        )
    return True
