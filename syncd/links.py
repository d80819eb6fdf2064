"""Manual links: ``syncd link``, ``syncd unlink``, ``syncd links``.

A manual link says "these products are the same thing" whatever their SKUs: it overrides SKU
matching (a linked product leaves its SKU group), works for products without a SKU and resolves
an ambiguous SKU. Links live in ``{base}syncd_link`` (one row per product, with the id of its
'manual' group in ``{base}syncd_group``); the membership refresh (:mod:`syncd.catalog`) turns them
into member rows, so the daemon, audit and reconcile see one kind of group.

Linking is refused, with the reason, when the products cannot share one stock: a product that
holds no stock (grouped, external), a simple product or variation with a variable product, a
product that manages stock with one that does not, two products of one blog, a trashed or missing
product, a blog syncd does not work on. Linking does not copy stock: the products keep their
quantities until a change on one of them, or a reconcile, brings them together (the command says
when they differ).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from syncd import catalog, schema
from syncd.config import BlogSettings, Config
from syncd.db import table
from syncd.network import Blog, discover
from syncd.plan import Key, StockValueError, parse_quantity
from syncd.woo import manages_stock

log = structlog.get_logger("syncd.links")

_TARGET_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
NO_STOCK_TYPES = ("grouped", "external")


class LinkError(ValueError):
    """A link or unlink that is refused; the message says why."""


def parse_target(text: str) -> Key:
    """'BLOG:POST' -> (blog_id, post_id)."""
    m = _TARGET_RE.match(text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise LinkError(f"expected BLOG:POST (blog id and post id, like 2:24), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Product:
    """What linking needs to know about one product."""

    blog_id: int
    post_id: int
    exists: bool = False
    post_type: str = ""
    post_status: str = ""
    product_type: str = ""  # simple | variable | grouped | external | '' (a variation)
    parent_id: int = 0
    manage_stock: str | None = None
    stock: str | None = None
    sku: str = ""
    lang: str = ""
    title: str = ""

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)

    @property
    def name(self) -> str:
        return f"{self.blog_id}:{self.post_id}"

    @property
    def kind(self) -> str:
        """'variable' (a variable product), 'item' (a simple product or a variation), or the type."""
        if self.post_type == "product_variation":
            return "item"
        if self.product_type in ("simple", ""):
            return "item"
        return self.product_type

    @property
    def describe(self) -> str:
        what = (
            "variation"
            if self.post_type == "product_variation"
            else f"{self.product_type or 'simple'} product"
        )
        return f"{self.name} ({what}{f' {self.sku!r}' if self.sku else ''})"


def link_refusals(products: Sequence[Product]) -> list[str]:
    """Why these products cannot form one link group (pure; empty when they can)."""
    out: list[str] = []
    if len(products) < 2:
        out.append("name at least two products (BLOG:POST BLOG:POST ...)")
    by_blog: dict[int, list[Product]] = {}
    for p in products:
        by_blog.setdefault(p.blog_id, []).append(p)
    for blog_id, ps in sorted(by_blog.items()):
        if len(ps) > 1:
            out.append(
                f"blog {blog_id} appears {len(ps)} times ({', '.join(p.name for p in ps)}): a link group holds "
                "one product per blog"
            )
    usable: list[Product] = []
    for p in products:
        if not p.exists:
            out.append(f"{p.name}: no such post on blog {p.blog_id}")
        elif p.post_type not in ("product", "product_variation"):
            out.append(f"{p.name}: is not a product (post type {p.post_type!r})")
        elif p.post_status in ("trash", "auto-draft"):
            out.append(f"{p.name}: is {'trashed' if p.post_status == 'trash' else 'an auto-draft'}")
        elif p.product_type in NO_STOCK_TYPES:
            out.append(f"{p.describe}: a {p.product_type} product holds no stock of its own")
        else:
            usable.append(p)
    kinds = {p.kind for p in usable}
    if len(kinds) > 1:
        variable = [p.describe for p in usable if p.kind == "variable"]
        items = [p.describe for p in usable if p.kind != "variable"]
        out.append(
            "cannot link a simple product or variation with a variable product: "
            f"{', '.join(items)} {'is' if len(items) == 1 else 'are'} one item, {', '.join(variable)} "
            f"{'is' if len(variable) == 1 else 'are'} the parent of variations (link its variations instead)"
        )
    managed = [p for p in usable if manages_stock(p.manage_stock)]
    unmanaged = [p for p in usable if not manages_stock(p.manage_stock)]
    if managed and unmanaged:
        out.append(
            "cannot link a product that manages stock with one that does not: "
            f"{', '.join(p.describe for p in managed)} "
            f"manage{'s' if len(managed) == 1 else ''} stock, "
            f"{', '.join(p.describe for p in unmanaged)} "
            f"do{'es' if len(unmanaged) == 1 else ''} not (turn stock management on or off first)"
        )
    return out


def read_products(
    conn: sa.Connection, blog: Blog, post_ids: Sequence[int], settings: BlogSettings | None = None
) -> dict[Key, Product]:
    """The products ``post_ids`` of ``blog`` (absent ones with ``exists=False``)."""
    ids = sorted(set(post_ids))
    out = {(blog.blog_id, p): Product(blog.blog_id, p) for p in ids}
    if not ids:
        return out
    posts, meta = table(blog.prefix, "posts"), table(blog.prefix, "postmeta")
    terms = (
        f"FROM {table(blog.prefix, 'term_relationships')} tr JOIN {table(blog.prefix, 'term_taxonomy')} tt "
        "ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.taxonomy = 'product_type' "
        f"JOIN {table(blog.prefix, 'terms')} t ON t.term_id = tt.term_id WHERE tr.object_id = p.ID"
    )
    if blog.polylang:
        lang = f"COALESCE({catalog._language_of(blog.prefix, 'p.ID')}, {catalog._language_of(blog.prefix, 'p.post_parent')}, :lang)"
    else:
        lang = ":lang"

    def meta_value(key: str) -> str:
        return f"(SELECT m.meta_value FROM {meta} m WHERE m.post_id = p.ID AND m.meta_key = '{key}' ORDER BY m.meta_id LIMIT 1)"

    names = ", ".join(f":p{n}" for n in range(len(ids)))
    rows = conn.execute(
        sa.text(
            f"SELECT p.ID, p.post_type, p.post_status, p.post_parent, p.post_title, (SELECT MIN(t.slug) {terms}), "
            f"{meta_value('_manage_stock')}, {meta_value('_stock')}, {meta_value('_sku')}, LOWER({lang}) "
            f"FROM {posts} p WHERE p.ID IN ({names})"
        ),
        {"lang": catalog.fallback_language(conn, blog, settings), **{f"p{n}": v for n, v in enumerate(ids)}},
    )
    for pid, ptype, status, parent, title, product_type, manage, stock, sku, language in rows:
        out[(blog.blog_id, int(pid))] = Product(
            blog.blog_id,
            int(pid),
            True,
            _text(ptype),
            _text(status),
            _text(product_type or ""),
            int(parent or 0),
            None if manage is None else _text(manage),
            None if stock is None else _text(stock),
            _text(sku or "").strip(),
            _text(language or ""),
            _text(title or ""),
        )
    return out


def _manual_groups(conn: sa.Connection, base: str, keys: Sequence[Key]) -> dict[Key, int]:
    if not keys:
        return {}
    cond, params = catalog._key_condition("l", keys)
    return {
        (int(r[0]), int(r[1])): int(r[2])
        for r in conn.execute(
            sa.text(
                f"SELECT l.blog_id, l.post_id, l.group_id FROM {table(base, 'syncd_link')} l WHERE {cond}"
            ),
            params,
        )
    }


def _group_links(conn: sa.Connection, base: str, group_id: int) -> list[Key]:
    return [
        (int(r[0]), int(r[1]))
        for r in conn.execute(
            sa.text(
                f"SELECT blog_id, post_id FROM {table(base, 'syncd_link')} WHERE group_id = :g ORDER BY blog_id"
            ),
            {"g": group_id},
        )
    ]


def _blog_or_refuse(blogs: Mapping[int, Blog], key: Key) -> Blog:
    blog = blogs.get(key[0])
    if blog is None:
        raise LinkError(
            f"{key[0]}:{key[1]}: blog {key[0]} is not a live WooCommerce blog that syncd works on "
            "(see syncd check: deleted, archived, spam, left alone, or excluded by [blogs])"
        )
    return blog


def create_link(
    conn: sa.Connection,
    base: str,
    blogs: Mapping[int, Blog],
    keys: Sequence[Key],
    settings: Callable[[int], BlogSettings] = lambda _b: BlogSettings(),
) -> tuple[int, list[Product]]:
    """Link ``keys`` (validated) into one manual group, in the caller's transaction.

    Products already linked manually: when all of them are in one group, the others join it;
    in several groups, refused. Returns the group id and every product of the group.
    """
    if len(set(keys)) != len(keys):
        raise LinkError("a product is named twice")
    for k in keys:
        _blog_or_refuse(blogs, k)
    existing = _manual_groups(conn, base, keys)
    groups = sorted(set(existing.values()))
    if len(groups) > 1:
        where = ", ".join(f"{b}:{p} in group {g}" for (b, p), g in sorted(existing.items()))
        raise LinkError(
            f"these products are already in different manual groups ({where}): run syncd unlink first"
        )
    all_keys = list(keys)
    if groups:
        all_keys += [k for k in _group_links(conn, base, groups[0]) if k not in keys]
    products: dict[Key, Product] = {}
    by_blog: dict[int, list[int]] = {}
    for b, p in all_keys:
        by_blog.setdefault(b, []).append(p)
    for b, posts in sorted(by_blog.items()):
        products.update(read_products(conn, _blog_or_refuse(blogs, (b, posts[0])), posts, settings(b)))
    members = [products[k] for k in all_keys]
    refusals = link_refusals(members)
    if refusals:
        raise LinkError("; ".join(refusals))
    now = datetime.now(UTC).replace(tzinfo=None)
    if groups:
        group_id = groups[0]
    else:
        first = members[0]
        group_id = int(
            conn.execute(
                sa.text(
                    f"INSERT INTO {table(base, 'syncd_group')} (kind, key_hash, link_key, sku, lang, created_at) "
                    "VALUES ('manual', NULL, NULL, :sku, :lang, :now)"
                ),
                {"sku": first.sku[:255], "lang": first.lang[:32], "now": now},
            ).lastrowid
        )
    new = [k for k in keys if k not in existing]
    if new:
        conn.execute(
            sa.text(
                f"INSERT INTO {table(base, 'syncd_link')} (blog_id, post_id, group_id, created_at) VALUES (:b, :p, :g, :now)"
            ),
            [{"b": b, "p": p, "g": group_id, "now": now} for b, p in new],
        )
    for b, posts in sorted(_by_blog(new).items()):
        catalog.refresh_members(conn, base, blogs[b], posts, settings=settings(b))
    return group_id, sorted(members, key=lambda m: m.key)


def remove_link(
    conn: sa.Connection,
    base: str,
    blogs: Mapping[int, Blog],
    key: Key,
    settings: Callable[[int], BlogSettings] = lambda _b: BlogSettings(),
) -> tuple[int, list[Key]]:
    """Take ``key`` out of its manual group (and the last remaining product with it: a group of one
    links nothing). Those products go back to SKU matching. Returns the group and the keys unlinked."""
    found = _manual_groups(conn, base, [key])
    if key not in found:
        raise LinkError(f"{key[0]}:{key[1]} is not linked manually (syncd links lists the manual links)")
    group_id = found[key]
    remaining = [k for k in _group_links(conn, base, group_id) if k != key]
    gone = [key] + (remaining if len(remaining) == 1 else [])
    cond, params = catalog._key_condition("l", gone)
    conn.execute(sa.text(f"DELETE l FROM {table(base, 'syncd_link')} l WHERE {cond}"), params)
    if len(remaining) <= 1:
        conn.execute(
            sa.text(f"DELETE FROM {table(base, 'syncd_group')} WHERE group_id = :g AND kind = 'manual'"),
            {"g": group_id},
        )
    for b, posts in sorted(_by_blog(gone).items()):
        if b in blogs:
            catalog.refresh_members(conn, base, blogs[b], posts, settings=settings(b))
        else:
            # A blog syncd does not work on holds no member rows to refresh: forget the row, if any.
            cond, params = catalog._key_condition("m", [(b, p) for p in posts])
            conn.execute(sa.text(f"DELETE m FROM {table(base, 'syncd_member')} m WHERE {cond}"), params)
    return group_id, gone


def list_links(conn: sa.Connection, base: str) -> list[dict[str, Any]]:
    """Every manual group with its products: sku, language and state as the member table has them."""
    rows = conn.execute(
        sa.text(
            f"SELECT l.group_id, l.blog_id, l.post_id, l.created_at, m.sku, m.lang, m.state "
            f"FROM {table(base, 'syncd_link')} l LEFT JOIN {table(base, 'syncd_member')} m "
            "ON m.blog_id = l.blog_id AND m.post_id = l.post_id ORDER BY l.group_id, l.blog_id, l.post_id"
        )
    )
    out: dict[int, dict[str, Any]] = {}
    for gid, b, p, created, sku, lang, state in rows:
        g = out.setdefault(
            int(gid), {"group_id": int(gid), "created_at": created.isoformat(sep=" "), "members": []}
        )
        g["members"].append(
            {
                "blog_id": int(b),
                "post_id": int(p),
                "sku": sku or "",
                "lang": lang or "",
                "state": state or "not synced (trashed, deleted, or its blog is not synced)",
            }
        )
    return list(out.values())


# --------------------------------------------------------------------------- commands
def _network(conn: sa.Connection, config: Config) -> dict[int, Blog]:
    network = discover(conn, config.database.table_prefix)
    conn.rollback()
    return {b.blog_id: b for b in network.usable_blogs() if config.blogs.selects(b.blog_id)}


def link_main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd link BLOG:POST BLOG:POST ...``: exit 0 linked, 2 refused (the reason on stderr)."""
    out = out or sys.stdout
    base = config.database.table_prefix
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        keys = [parse_target(t) for t in args.targets]
        with engine.connect() as conn:
            schema.ensure_schema(conn, base)
            blogs = _network(conn, config)
            group_id, members = create_link(conn, base, blogs, keys, config.blogs.for_blog)
            conn.commit()
    except LinkError as exc:
        print(f"syncd link: refused: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    log.info("products_linked", group=group_id, products=[m.name for m in members])
    print(f"linked in group {group_id}: " + ", ".join(m.describe for m in members), file=out)
    quantities = {m.name: m.stock for m in members if manages_stock(m.manage_stock)}
    if _differ(quantities.values()):
        print(
            "stock differs (" + ", ".join(f"{k}: {v}" for k, v in quantities.items()) + "): linking copies "
            "nothing; the next change on one of them is applied to the others as a delta, so bring them "
            "to one quantity first (e.g. set it in WooCommerce on each blog, or reconcile)",
            file=out,
        )
    return 0


def _differ(values: Any) -> bool:
    try:
        return len({parse_quantity(v) for v in values}) > 1
    except StockValueError:
        return True


def unlink_main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd unlink BLOG:POST``: exit 0 unlinked, 2 refused."""
    out = out or sys.stdout
    base = config.database.table_prefix
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        key = parse_target(args.target)
        with engine.connect() as conn:
            schema.ensure_schema(conn, base)
            blogs = _network(conn, config)
            group_id, gone = remove_link(conn, base, blogs, key, config.blogs.for_blog)
            conn.commit()
    except LinkError as exc:
        print(f"syncd unlink: refused: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    log.info("products_unlinked", group=group_id, products=[f"{b}:{p}" for b, p in gone])
    names = ", ".join(f"{b}:{p}" for b, p in gone)
    print(f"unlinked from group {group_id}: {names} (back to SKU matching)", file=out)
    if len(gone) > 1:
        print("the group had one product left, which was unlinked too", file=out)
    return 0


def links_main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd links [--json]``: the manual links."""
    out = out or sys.stdout
    base = config.database.table_prefix
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            groups = list_links(conn, base) if schema.schema_present(conn, base) else []
    finally:
        engine.dispose()
    if getattr(args, "json", False):
        out.write(json.dumps({"groups": groups, "exit_status": 0}, indent=2) + "\n")
        return 0
    if not groups:
        print("no manual links (syncd link BLOG:POST BLOG:POST ... creates one)", file=out)
        return 0
    rows = [("GROUP", "BLOG:POST", "SKU", "LANG", "STATE")]
    for g in groups:
        for m in g["members"]:
            rows.append(
                (
                    str(g["group_id"]),
                    f"{m['blog_id']}:{m['post_id']}",
                    m["sku"] or "-",
                    m["lang"] or "-",
                    m["state"],
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    return 0


def _by_blog(keys: Sequence[Key]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for b, p in keys:
        out.setdefault(b, []).append(p)
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else str(value)
