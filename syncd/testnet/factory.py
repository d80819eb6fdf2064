"""Product factory: writes products the way WooCommerce 11's CRUD (``WC_Product_*::save()``) does.

Rows and formats follow the recorded fixture (schema/wordpress/baseline.sql): one ``posts`` row,
postmeta in WooCommerce's key order and text formats (``'10'``, ``'9.50'``, SQL NULL ``_stock``
when stock is not managed), the ``product_type`` term, ``product_visibility`` terms (incl.
``outofstock``), categories, global-attribute terms, a ``wc_product_meta_lookup`` row,
``wc_product_attributes_lookup`` rows, Polylang language terms and ``post_translations`` groups,
then WordPress's term counts and WooCommerce's ``product_count_product_cat`` term meta.

Rows are buffered per table and written with multi-row INSERTs; with ``bulk=True`` the buffer is
flushed only every ``flush_every`` products (benchmarks: 100,000 SKUs x 10 blogs), otherwise after
each product. Both modes write the same rows.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd.db import table, validate_prefix
from syncd.testnet import wordpress as wp

WC_VERSION = "11.0.1"
POST_DATE = "2026-01-01 00:00:00"


def stock_status_for(stock: Any, backorders: str, notify_no_stock_amount: int) -> str:
    """WooCommerce's rule for managed stock: above the threshold instock, else onbackorder/outofstock."""
    qty = int(Decimal(str(stock))) if stock not in (None, "") else 0
    if qty > notify_no_stock_amount:
        return "instock"
    return "onbackorder" if backorders != "no" else "outofstock"


def sanitize_title(title: str) -> str:
    """WordPress's sanitize_title() for plain titles: accents removed, lowercase, dashes."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9 _-]", "", text.lower())
    text = re.sub(r"[\s_]+", "-", text.strip())
    return re.sub(r"-+", "-", text)


def _price(value: Any) -> str:
    return "" if value in (None, "") else str(value)


@dataclass
class _Buffers:
    posts: list[dict[str, Any]] = field(default_factory=list)
    postmeta: list[dict[str, Any]] = field(default_factory=list)
    rels: list[dict[str, Any]] = field(default_factory=list)
    lookup: list[dict[str, Any]] = field(default_factory=list)
    attrs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.posts)


@dataclass(frozen=True)
class Variation:
    """One variation of a variable product: ``option`` is the attribute term slug."""

    sku: str
    option: str
    price: Any = "10.00"
    stock: Any = None
    manage_stock: bool = True
    backorders: str = "no"
    stock_status: str | None = None  # only for unmanaged variations that do not inherit
    name_suffix: str | None = None


class ProductFactory:
    """Creates products on one blog. Use as a context manager or call :meth:`finish` at the end."""

    def __init__(
        self,
        conn: sa.Connection,
        prefix: str,
        *,
        bulk: bool = False,
        flush_every: int = 2000,
        home_url: str | None = None,
    ) -> None:
        self.conn = conn
        self.prefix = validate_prefix(prefix)
        self.bulk = bulk
        self.flush_every = flush_every
        opts = dict(
            conn.execute(
                sa.text(
                    f"SELECT option_name, option_value FROM {table(prefix, 'options')} "  # noqa: S608
                    "WHERE option_name IN ('home', 'woocommerce_notify_no_stock_amount', "
                    "'woocommerce_hide_out_of_stock_items')"
                )
            ).fetchall()
        )
        self.home = (home_url or opts.get("home") or "http://shop.test").rstrip("/")
        self.notify_no_stock_amount = abs(int(opts.get("woocommerce_notify_no_stock_amount") or 0))
        self.hide_out_of_stock = opts.get("woocommerce_hide_out_of_stock_items") == "yes"
        self.terms = self._load_terms()
        self.languages = wp.polylang_languages(conn, prefix)
        next_id = conn.execute(
            sa.text(f"SELECT COALESCE(MAX(ID), 0) + 1 FROM {table(prefix, 'posts')}")
        ).scalar_one()  # noqa: S608
        self._next_post_id = int(next_id)
        self._buf = _Buffers()
        self._skus: dict[tuple[str, str | None], int] = {}
        self._info: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ terms
    def _load_terms(self) -> dict[tuple[str, str], int]:
        rows = self.conn.execute(
            sa.text(
                f"SELECT tt.taxonomy, t.slug, tt.term_taxonomy_id FROM {table(self.prefix, 'terms')} t "  # noqa: S608
                f"JOIN {table(self.prefix, 'term_taxonomy')} tt ON tt.term_id = t.term_id"
            )
        ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def term(self, taxonomy: str, slug: str) -> int:
        try:
            return self.terms[(taxonomy, slug)]
        except KeyError:
            raise KeyError(f"no term {taxonomy}:{slug} on blog prefix {self.prefix}") from None

    def attribute(self, name: str, label: str, options: Sequence[tuple[str, str]]) -> str:
        """A global attribute ``pa_<name>`` (woocommerce_attribute_taxonomies row) with its terms.

        ``options`` are (label, slug) pairs; each term gets the ``order`` term meta WooCommerce writes.
        Returns the taxonomy name.
        """
        taxonomy = "pa_" + name
        exists = self.conn.execute(
            sa.text(
                f"SELECT attribute_id FROM {table(self.prefix, 'woocommerce_attribute_taxonomies')} "  # noqa: S608
                "WHERE attribute_name = :n"
            ),
            {"n": name},
        ).first()
        if exists is None:
            self.conn.execute(
                sa.text(
                    f"INSERT INTO {table(self.prefix, 'woocommerce_attribute_taxonomies')} "  # noqa: S608
                    "(attribute_name, attribute_label, attribute_type, attribute_orderby, attribute_public) "
                    "VALUES (:n, :l, 'select', 'menu_order', 0)"
                ),
                {"n": name, "l": label},
            )
        for order, (term_label, slug) in enumerate(options):
            if (taxonomy, slug) in self.terms:
                continue
            tid = wp.insert_term(self.conn, self.prefix, term_label, slug, taxonomy)
            self.terms[(taxonomy, slug)] = tid
            self.conn.execute(
                sa.text(
                    f"INSERT INTO {table(self.prefix, 'termmeta')} (term_id, meta_key, meta_value) "  # noqa: S608
                    "VALUES (:t, 'order', :o)"
                ),
                {"t": tid, "o": str(order)},
            )
        return taxonomy

    def category(
        self,
        name: str,
        slug: str | None = None,
        *,
        language: str | None = None,
        translation_of: int | None = None,
    ) -> int:
        """A product category; on a Polylang blog with its language and term_translations group."""
        slug = slug or sanitize_title(name)
        if ("product_cat", slug) in self.terms:
            return self.terms[("product_cat", slug)]
        tid = wp.insert_term(self.conn, self.prefix, name, slug, "product_cat")
        self.terms[("product_cat", slug)] = tid
        if language:
            wp.relate(self.conn, self.prefix, tid, self.languages[language][1])
            wp._count_all_objects(self.conn, self.prefix, self.languages[language][1])
            # Polylang gives every new term its own group, then merges it into the source's group.
            own = wp.set_translation_group(self.conn, self.prefix, "term_translations", {language: tid})
            if translation_of is not None:
                found = wp.find_translation_group(self.conn, self.prefix, "term_translations", translation_of)
                wp.delete_term(self.conn, self.prefix, own)
                if found:
                    gid, members = found
                    members[language] = tid
                    wp.set_translation_group(self.conn, self.prefix, "term_translations", members, gid)
        return tid

    def link_translations(self, members: dict[str, int]) -> int:
        """pll_save_post_translations(): one post_translations group holding {lang: post_id}."""
        self.flush()
        return wp.set_translation_group(self.conn, self.prefix, "post_translations", dict(members))

    # ------------------------------------------------------------------ products
    def _alloc(self, post_id: int | None) -> int:
        if post_id is None:
            post_id = self._next_post_id
        self._next_post_id = max(self._next_post_id, post_id + 1)
        return post_id

    def _post(
        self,
        pid: int,
        title: str,
        *,
        parent: int = 0,
        variation: bool = False,
        excerpt: str = "",
        menu_order: int = 0,
        status: str = "publish",
        slug: str | None = None,
    ) -> None:
        slug = slug or sanitize_title(title)
        guid = (
            f"{self.home}/?post_type=product_variation&p={pid}"
            if variation
            else f"{self.home}/product/{slug}/"
        )
        self._buf.posts.append(
            {
                "ID": pid,
                "post_author": 1,
                "post_date": POST_DATE,
                "post_date_gmt": POST_DATE,
                "post_content": "",
                "post_title": title,
                "post_excerpt": excerpt,
                "post_status": status,
                "comment_status": "closed" if variation else "open",
                "ping_status": "closed",
                "post_password": "",
                "post_name": slug,
                "to_ping": "",
                "pinged": "",
                "post_modified": POST_DATE,
                "post_modified_gmt": POST_DATE,
                "post_content_filtered": "",
                "post_parent": parent,
                "guid": guid,
                "menu_order": menu_order,
                "post_type": "product_variation" if variation else "product",
                "post_mime_type": "",
                "comment_count": 0,
            }
        )

    def _meta(self, pid: int, pairs: Iterable[tuple[str, Any]]) -> None:
        self._buf.postmeta.extend({"p": pid, "k": k, "v": v} for k, v in pairs)

    def _rel(self, pid: int, tt_id: int) -> None:
        self._buf.rels.append({"o": pid, "t": tt_id})

    def _lookup(
        self,
        pid: int,
        sku: str,
        min_price: Any,
        max_price: Any,
        stock_qty: Any,
        status: str,
        tax_class: str = "",
    ) -> None:
        self._buf.lookup.append(
            {
                "id": pid,
                "sku": sku,
                "min": None if min_price in (None, "") else min_price,
                "max": None if max_price in (None, "") else max_price,
                "qty": stock_qty,
                "status": status,
                "tax_class": tax_class,
            }
        )

    def _stock_fields(
        self, manage: bool, stock: Any, backorders: str, status: str | None
    ) -> tuple[Any, str, Any]:
        """(_stock meta value, status, lookup stock_quantity) as WooCommerce stores them."""
        if manage:
            meta = None if stock is None else str(stock)
            qty = 0 if stock in (None, "") else int(Decimal(str(stock)))
            return meta, stock_status_for(stock, backorders, self.notify_no_stock_amount), qty
        return None, status or "instock", None

    def _common_meta(
        self, manage: bool, backorders: str, stock_meta: Any, status: str, tax_class: str = ""
    ) -> list[tuple[str, Any]]:
        return [
            ("total_sales", "0"),
            ("_tax_status", "taxable"),
            ("_tax_class", tax_class),
            ("_manage_stock", "yes" if manage else "no"),
            ("_backorders", backorders),
            ("_sold_individually", "no"),
            ("_virtual", "no"),
            ("_downloadable", "no"),
            ("_download_limit", "-1"),
            ("_download_expiry", "-1"),
            ("_stock", stock_meta),
            ("_stock_status", status),
            ("_wc_average_rating", "0"),
            ("_wc_review_count", "0"),
        ]

    def _attributes_meta(self, attributes: dict[str, Any], variation_attr: str | None) -> str:
        value = {
            tax: {
                "name": tax,
                "value": "",
                "position": pos,
                "is_visible": 1,
                "is_variation": 1 if tax == variation_attr else 0,
                "is_taxonomy": 1,
            }
            for pos, tax in enumerate(attributes)
        }
        return wp._php(value)

    def _terms_common(
        self,
        pid: int,
        product_type: str,
        status: str,
        categories: Sequence[int],
        attributes: dict[str, Sequence[str]],
        language: str | None,
        featured: bool,
    ) -> None:
        self._rel(pid, self.term("product_type", product_type))
        if featured:
            self._rel(pid, self.term("product_visibility", "featured"))
        if status == "outofstock":
            self._rel(pid, self.term("product_visibility", "outofstock"))
        for tax, slugs in attributes.items():
            for slug in slugs:
                self._rel(pid, self.term(tax, slug))
        for cat in categories or [self.term("product_cat", "uncategorized")]:
            self._rel(pid, cat)
        if language:
            self._rel(pid, self.languages[language][0])

    def _register(self, pid: int, sku: str, language: str | None, **info: Any) -> None:
        self._skus[(sku, language)] = pid
        self._info[pid] = {"sku": sku, "language": language, **info}

    def simple(
        self,
        sku: str,
        name: str | None = None,
        *,
        stock: Any = None,
        manage_stock: bool = True,
        backorders: str = "no",
        price: Any = "10.00",
        stock_status: str | None = None,
        categories: Sequence[int] = (),
        attributes: dict[str, Sequence[str]] | None = None,
        language: str | None = None,
        featured: bool = False,
        post_id: int | None = None,
        slug: str | None = None,
        sku_last: bool = False,
    ) -> int:
        """A simple product. ``attributes`` = {taxonomy: [term slugs]} (global, non-variation).

        ``sku_last``: write ``_sku`` after the other meta, as when a translation's SKU is set in a
        second save (Polylang shared-SKU creation in the fixture).
        """
        attributes = attributes or {}
        pid = self._alloc(post_id)
        stock_meta, status, qty = self._stock_fields(manage_stock, stock, backorders, stock_status)
        self._post(pid, name or sku, slug=slug)
        meta: list[tuple[str, Any]] = [("_sku", sku), ("_regular_price", _price(price))]
        meta += self._common_meta(manage_stock, backorders, stock_meta, status)
        if attributes:
            meta.append(("_product_attributes", self._attributes_meta(attributes, None)))
        meta += [("_product_version", WC_VERSION), ("_price", _price(price))]
        if sku_last:
            meta = meta[1:] + meta[:1]
        self._meta(pid, meta)
        self._terms_common(pid, "simple", status, categories, attributes, language, featured)
        self._lookup(pid, sku, price, price, qty, status)
        self._attr_lookup(pid, pid, attributes, False, status)
        self._register(pid, sku, language, type="simple", price=price, status=status)
        self._after_product()
        return pid

    def external(
        self,
        sku: str,
        name: str | None = None,
        *,
        url: str = "https://partner.example.com/",
        button_text: str = "Buy product",
        price: Any = "10.00",
        categories: Sequence[int] = (),
        language: str | None = None,
        post_id: int | None = None,
    ) -> int:
        """An external/affiliate product (stock never managed)."""
        pid = self._alloc(post_id)
        self._post(pid, name or sku)
        meta: list[tuple[str, Any]] = [("_sku", sku), ("_regular_price", _price(price))]
        meta += self._common_meta(False, "no", None, "instock")
        meta += [
            ("_product_url", url),
            ("_button_text", button_text),
            ("_product_version", WC_VERSION),
            ("_price", _price(price)),
        ]
        self._meta(pid, meta)
        self._terms_common(pid, "external", "instock", categories, {}, language, False)
        self._lookup(pid, sku, price, price, None, "instock")
        self._register(pid, sku, language, type="external", price=price, status="instock")
        self._after_product()
        return pid

    def grouped(
        self,
        sku: str,
        name: str | None = None,
        *,
        children: Sequence[int] = (),
        categories: Sequence[int] = (),
        language: str | None = None,
        post_id: int | None = None,
    ) -> int:
        """A grouped product: ``_children`` holds the child post ids; prices are the children's min/max."""
        pid = self._alloc(post_id)
        self._post(pid, name or sku)
        prices = [
            Decimal(str(self._info[c]["price"])) for c in children if self._info.get(c, {}).get("price")
        ]
        meta: list[tuple[str, Any]] = [("_children", wp._php([int(c) for c in children])), ("_sku", sku)]
        meta += self._common_meta(False, "no", None, "instock")
        meta += [("_product_version", WC_VERSION)]
        lo = hi = None
        if prices:
            lo, hi = self._fmt_price(min(prices)), self._fmt_price(max(prices))
            meta.append(("_price", lo))
            if hi != lo:
                meta.append(("_price", hi))
        self._meta(pid, meta)
        self._terms_common(pid, "grouped", "instock", categories, {}, language, False)
        self._lookup(pid, sku, lo, hi, None, "instock")
        self._register(pid, sku, language, type="grouped", price=None, status="instock")
        self._after_product()
        return pid

    def _fmt_price(self, value: Decimal) -> str:
        # Prices come back as the children's own meta text ('9.50'); keep two decimals like the input.
        for info in self._info.values():
            p = info.get("price")
            if p not in (None, "") and Decimal(str(p)) == value:
                return str(p)
        return f"{value:.2f}"

    def variable(
        self,
        sku: str,
        name: str | None = None,
        *,
        attribute: str,
        variations: Sequence[Variation],
        manage_stock: bool = False,
        stock: Any = None,
        backorders: str = "no",
        categories: Sequence[int] = (),
        language: str | None = None,
        post_id: int | None = None,
        variation_ids: Sequence[int] | None = None,
    ) -> tuple[int, list[int]]:
        """A variable product varying on the global ``attribute`` (e.g. 'pa_size'), and its variations.

        With ``manage_stock`` the parent holds the stock and variations with ``manage_stock=False``
        inherit it (their ``_stock`` is NULL, their status is the parent's). Returns (parent, variations).
        """
        parent = self._alloc(post_id)
        p_stock_meta, p_status, p_qty = self._stock_fields(manage_stock, stock, backorders, None)
        var_ids: list[int] = []
        var_rows = []
        options = [v.option for v in variations]
        title = name or sku
        for i, v in enumerate(variations):
            vid = self._alloc(variation_ids[i] if variation_ids else None)
            var_ids.append(vid)
            if v.manage_stock:
                v_stock_meta, v_status, v_qty = self._stock_fields(True, v.stock, v.backorders, None)
                own = True
            elif manage_stock:
                v_stock_meta, v_status, v_qty = None, p_status, None
                own = False
            else:
                v_stock_meta, v_status, v_qty = None, v.stock_status or "instock", None
                own = True
            var_rows.append((vid, v, v_stock_meta, v_status, v_qty, own))
        if not manage_stock:
            statuses = [r[3] for r in var_rows]
            p_status = (
                "instock"
                if "instock" in statuses or not statuses
                else "onbackorder"
                if "onbackorder" in statuses
                else "outofstock"
            )
        # Creation order as in the fixture: parent post + meta, then each variation, then the deferred
        # parent price sync (its _price rows are written last).
        self._post(parent, title)
        attrs = {attribute: options}
        meta: list[tuple[str, Any]] = [("_sku", sku)]
        meta += self._common_meta(manage_stock, backorders, p_stock_meta, p_status)
        meta += [
            ("_product_attributes", self._attributes_meta(attrs, attribute)),
            ("_product_version", WC_VERSION),
        ]
        self._meta(parent, meta)
        term_labels = self._term_labels(attribute)
        attr_label = self._attribute_label(attribute)
        for i, (vid, v, v_stock_meta, v_status, v_qty, own) in enumerate(var_rows):
            label = term_labels.get(v.option, v.option)
            self._post(
                vid,
                f"{title} - {v.name_suffix or label}",
                parent=parent,
                variation=True,
                excerpt=f"{attr_label}: {label}",
                menu_order=i,
            )
            vmeta: list[tuple[str, Any]] = [
                ("_variation_description", ""),
                ("_sku", v.sku),
                ("_regular_price", _price(v.price)),
            ]
            vmeta += self._common_meta(
                v.manage_stock, v.backorders, v_stock_meta, v_status, tax_class="parent"
            )
            vmeta += [
                (f"attribute_{attribute}", v.option),
                ("_price", _price(v.price)),
                ("_product_version", WC_VERSION),
            ]
            self._meta(vid, vmeta)
            # Own-stock variations get the outofstock visibility term; inheriting ones do not (08).
            if own and v_status == "outofstock":
                self._rel(vid, self.term("product_visibility", "outofstock"))
            self._lookup(vid, v.sku, v.price, v.price, v_qty, v_status, tax_class="parent")
            self._attr_lookup(vid, parent, {attribute: [v.option]}, True, v_status)
            self._register(vid, v.sku, None, type="variation", price=v.price, status=v_status, parent=parent)
        prices = sorted({Decimal(str(v.price)) for v in variations if v.price not in (None, "")})
        lo = hi = None
        if prices:
            lo, hi = self._fmt_price(prices[0]), self._fmt_price(prices[-1])
            self._meta(parent, [("_price", lo)] + ([("_price", hi)] if hi != lo else []))
        self._terms_common(parent, "variable", p_status, categories, attrs, language, False)
        self._lookup(parent, sku, lo, hi, p_qty, p_status)
        self._register(parent, sku, language, type="variable", price=None, status=p_status)
        self._after_product()
        return parent, var_ids

    def _term_labels(self, taxonomy: str) -> dict[str, str]:
        rows = self.conn.execute(
            sa.text(
                f"SELECT t.slug, t.name FROM {table(self.prefix, 'terms')} t "  # noqa: S608
                f"JOIN {table(self.prefix, 'term_taxonomy')} tt ON tt.term_id = t.term_id WHERE tt.taxonomy = :t"
            ),
            {"t": taxonomy},
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _attribute_label(self, taxonomy: str) -> str:
        row = self.conn.execute(
            sa.text(
                f"SELECT attribute_label FROM {table(self.prefix, 'woocommerce_attribute_taxonomies')} "  # noqa: S608
                "WHERE attribute_name = :n"
            ),
            {"n": taxonomy.removeprefix("pa_")},
        ).first()
        return row[0] if row else taxonomy

    def _attr_lookup(
        self, pid: int, parent: int, attributes: dict[str, Sequence[str]], is_var: bool, status: str
    ) -> None:
        for tax, slugs in attributes.items():
            for slug in slugs:
                self._buf.attrs.append(
                    {
                        "p": pid,
                        "pp": parent,
                        "t": tax,
                        "term": self.term(tax, slug),
                        "v": int(is_var),
                        "s": int(status != "outofstock"),
                    }
                )

    def _after_product(self) -> None:
        if not self.bulk or len(self._buf) >= self.flush_every:
            self.flush()
        if not self.bulk:
            self.recount()

    # ------------------------------------------------------------------ writing
    def flush(self) -> None:
        """Write buffered rows: one executemany per table on the DBAPI cursor.

        pymysql turns ``executemany`` of ``INSERT ... VALUES (%s, ...)`` into multi-row INSERTs (values
        still escaped by the driver, never pasted by us). Going straight to the cursor skips
        SQLAlchemy's per-row parameter processing, which dominated bulk loads (~2x slower).
        """
        b, p = self._buf, self.prefix
        self._buf = _Buffers()
        batches: list[tuple[str, list[tuple[Any, ...]]]] = []
        if b.posts:
            cols = list(b.posts[0])
            batches.append(
                (
                    f"INSERT INTO {table(p, 'posts')} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",  # noqa: S608
                    [tuple(r[c] for c in cols) for r in b.posts],
                )
            )
        if b.postmeta:
            batches.append(
                (
                    f"INSERT INTO {table(p, 'postmeta')} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",  # noqa: S608
                    [(r["p"], r["k"], r["v"]) for r in b.postmeta],
                )
            )
        if b.rels:
            batches.append(
                (
                    f"INSERT INTO {table(p, 'term_relationships')} (object_id, term_taxonomy_id, term_order) "  # noqa: S608
                    "VALUES (%s, %s, %s)",
                    [(r["o"], r["t"], 0) for r in b.rels],
                )
            )
        if b.lookup:
            # Only placeholders in VALUES: with a literal there pymysql falls back to one statement per row.
            batches.append(
                (
                    f"INSERT INTO {table(p, 'wc_product_meta_lookup')} (product_id, sku, global_unique_id, "  # noqa: S608
                    "virtual, downloadable, min_price, max_price, onsale, stock_quantity, stock_status, "
                    "rating_count, average_rating, total_sales, tax_status, tax_class) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            r["id"],
                            r["sku"],
                            "",
                            0,
                            0,
                            r["min"],
                            r["max"],
                            0,
                            r["qty"],
                            r["status"],
                            0,
                            0,
                            0,
                            "taxable",
                            r["tax_class"],
                        )
                        for r in b.lookup
                    ],
                )
            )
        if b.attrs:
            batches.append(
                (
                    f"INSERT INTO {table(p, 'wc_product_attributes_lookup')} (product_id, product_or_parent_id, "  # noqa: S608
                    "taxonomy, term_id, is_variation_attribute, in_stock) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(r["p"], r["pp"], r["t"], r["term"], r["v"], r["s"]) for r in b.attrs],
                )
            )
        if not batches:
            return
        cur = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for sql, rows in batches:
                cur.executemany(sql, rows)
        finally:
            cur.close()

    def recount(self) -> None:
        """WordPress term counts for product taxonomies and WooCommerce's product_count_product_cat meta."""
        self.flush()
        p = self.prefix
        tt, tr, posts, tm = (
            table(p, s) for s in ("term_taxonomy", "term_relationships", "posts", "termmeta")
        )
        # _update_post_term_count(): published objects of the taxonomy's post types.
        self.conn.execute(
            sa.text(
                f"UPDATE {tt} x SET count = (SELECT COUNT(*) FROM {tr} r JOIN {posts} o ON o.ID = r.object_id "  # noqa: S608
                "WHERE r.term_taxonomy_id = x.term_taxonomy_id AND o.post_status = 'publish' "
                "AND o.post_type IN ('product', 'product_variation')) "
                "WHERE x.taxonomy IN ('product_type', 'product_visibility', 'product_cat', 'product_tag') "
                "OR x.taxonomy LIKE 'pa\\_%'"
            )
        )
        # language terms also count pages and posts (anything published but variations, which have none).
        self.conn.execute(
            sa.text(
                f"UPDATE {tt} x SET count = (SELECT COUNT(*) FROM {tr} r JOIN {posts} o ON o.ID = r.object_id "  # noqa: S608
                "WHERE r.term_taxonomy_id = x.term_taxonomy_id AND o.post_status = 'publish') "
                "WHERE x.taxonomy = 'language'"
            )
        )
        # wc_term_recount(): published products per category, without out-of-stock ones when hidden.
        hide = "AND NOT EXISTS (SELECT 1 FROM {tr} h WHERE h.object_id = o.ID AND h.term_taxonomy_id = :oos)"
        counts = self.conn.execute(
            sa.text(
                f"SELECT x.term_id, (SELECT COUNT(DISTINCT o.ID) FROM {tr} r JOIN {posts} o ON o.ID = r.object_id "  # noqa: S608
                "WHERE r.term_taxonomy_id = x.term_taxonomy_id AND o.post_status = 'publish' "
                f"AND o.post_type = 'product' {hide.format(tr=tr) if self.hide_out_of_stock else ''}) "
                f"FROM {tt} x WHERE x.taxonomy = 'product_cat' AND x.count > 0"
            ),
            {"oos": self.terms.get(("product_visibility", "outofstock"), 0)},
        ).fetchall()
        for term_id, n in counts:
            updated = self.conn.execute(
                sa.text(
                    f"UPDATE {tm} SET meta_value = :v WHERE term_id = :t AND meta_key = 'product_count_product_cat'"  # noqa: S608
                ),
                {"v": str(n), "t": term_id},
            )
            if updated.rowcount == 0:
                exists = self.conn.execute(
                    sa.text(
                        f"SELECT 1 FROM {tm} WHERE term_id = :t AND meta_key = 'product_count_product_cat'"  # noqa: S608
                    ),
                    {"t": term_id},
                ).first()
                if not exists:
                    self.conn.execute(
                        sa.text(
                            f"INSERT INTO {tm} (term_id, meta_key, meta_value) "  # noqa: S608
                            "VALUES (:t, 'product_count_product_cat', :v)"
                        ),
                        {"t": term_id, "v": str(n)},
                    )

    def finish(self) -> None:
        """Flush, recount, commit."""
        self.recount()
        self.conn.commit()

    def __enter__(self) -> ProductFactory:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.finish()

    # ------------------------------------------------------------------ lookups
    @property
    def skus(self) -> dict[tuple[str, str | None], int]:
        """Post id of every product/variation created by this factory, by (sku, language)."""
        return dict(self._skus)

    def id_of(self, sku: str, language: str | None = None) -> int:
        return self._skus[(sku, language)]


# ---------------------------------------------------------------------- the fixture catalogue
#: Static product data of the recorded catalogue that catalogue.json does not carry (names, prices).
CATALOGUE_DETAILS: dict[str, dict[str, Any]] = {
    "TSHIRT-RED": {
        "name": "T-shirt red",
        "price": "19.99",
        "cat": "clothing",
        "attributes": {"pa_color": ["red"]},
    },
    "MUG": {"name": "Mug", "price": "9.50", "cat": "home"},
    "POSTER": {"name": "Poster", "price": "5.00", "cat": "home"},
    "NOTEBOOK": {"name": "Notebook", "price": "4.50", "cat": "home"},
    "STICKER": {"name": "Sticker", "price": "1.50", "cat": "home"},
    "HOODIE": {
        "name": "Hoodie",
        "cat": "clothing",
        "attribute": "pa_size",
        "variations": {"HOODIE-S": ("s", "39.00"), "HOODIE-M": ("m", "39.00"), "HOODIE-L": ("l", "42.00")},
    },
    "CAP": {
        "name": "Cap",
        "cat": "clothing",
        "attribute": "pa_color",
        "variations": {"CAP-BLACK": ("black", "15.00"), "CAP-WHITE": ("white", "15.00")},
    },
    "EXT-BIKE": {
        "name": "Partner bike",
        "price": "499.00",
        "cat": "outdoor",
        "url": "https://partner.example.com/bike",
        "button": "Buy at partner",
    },
    "BUNDLE-HOME": {"name": "Home bundle", "cat": "home", "children": ["MUG", "POSTER"]},
    "BOOK": {
        "name": "Book",
        "price": "12.00",
        "cat": "books",
        "translations": {"fr": {"name": "Livre", "cat": "livres"}},
    },
}

SIZES = [("S", "s"), ("M", "m"), ("L", "l")]
COLORS = [("Red", "red"), ("Black", "black"), ("White", "white")]


def build_catalogue_blog(conn: sa.Connection, prefix: str, blog: dict[str, Any]) -> ProductFactory:
    """Recreate one blog of catalogue.json with the factory, in the recorded creation order and ids."""
    f = ProductFactory(conn, prefix)
    poly = bool(f.languages)
    lang = "en" if poly else None
    f.attribute("size", "Size", SIZES)
    f.attribute("color", "Color", COLORS)
    cats = {}
    for slug, name in (("clothing", "Clothing"), ("home", "Home"), ("outdoor", "Outdoor")):
        cats[slug] = f.category(name, slug, language=lang)
    if poly:
        cats["books"] = f.category("Books", "books", language="en")
        cats["livres"] = f.category("Livres", "livres", language="fr", translation_of=cats["books"])
    products = blog["products"]
    for p in sorted(products, key=lambda x: x["id"]):
        if p["post_type"] == "product_variation":
            continue  # created with their parent
        d = CATALOGUE_DETAILS[p["sku"]]
        plang = p["language"]
        cat = [cats[d["cat"]]]
        if plang == "fr" and "translations" in d:
            tr = d["translations"]["fr"]
            f.simple(
                p["sku"],
                tr["name"],
                stock=p["_stock"],
                manage_stock=p["_manage_stock"] == "yes",
                backorders=p["_backorders"],
                price=d["price"],
                categories=[cats[tr["cat"]]],
                language="fr",
                post_id=p["id"],
                sku_last=True,
            )
            f.link_translations({"en": f.id_of(p["sku"], "en"), "fr": p["id"]})
            continue
        if p["product_type"] == "simple":
            f.simple(
                p["sku"],
                d["name"],
                stock=p["_stock"],
                manage_stock=p["_manage_stock"] == "yes",
                backorders=p["_backorders"],
                price=d["price"],
                categories=cat,
                attributes=d.get("attributes"),
                language=plang,
                post_id=p["id"],
                stock_status=p["_stock_status"],
            )
        elif p["product_type"] == "external":
            f.external(
                p["sku"],
                d["name"],
                url=d["url"],
                button_text=d["button"],
                price=d["price"],
                categories=cat,
                language=plang,
                post_id=p["id"],
            )
        elif p["product_type"] == "grouped":
            f.grouped(
                p["sku"],
                d["name"],
                children=[f.id_of(c, plang) for c in d["children"]],
                categories=cat,
                language=plang,
                post_id=p["id"],
            )
        elif p["product_type"] == "variable":
            children = sorted((c for c in products if c["parent"] == p["id"]), key=lambda c: c["id"])
            variations = [
                Variation(
                    c["sku"],
                    d["variations"][c["sku"]][0],
                    d["variations"][c["sku"]][1],
                    stock=c["_stock"],
                    manage_stock=c["_manage_stock"] == "yes",
                    backorders=c["_backorders"],
                )
                for c in children
            ]
            f.variable(
                p["sku"],
                d["name"],
                attribute=d["attribute"],
                variations=variations,
                manage_stock=p["_manage_stock"] == "yes",
                stock=p["_stock"],
                backorders=p["_backorders"],
                categories=cat,
                language=plang,
                post_id=p["id"],
                variation_ids=[c["id"] for c in children],
            )
    f.finish()
    return f
