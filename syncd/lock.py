"""The lock step: in canonical order, lock and read the stock meta rows of every product a unit
of work involves (one batch of the daemon, one join, one reconcile chunk), with the posts rows the
derived step reads with them.

Every caller locks through :func:`lock_and_read`, so syncd takes row locks in one order whoever
runs it: ascending blog id, then, per blog, one scan of ``postmeta``'s ``post_id`` index (ascending
post id, then meta_id) over the products and their variation closure. A shop's own autocommit
``UPDATE ... WHERE post_id = X AND meta_key = '_stock'`` locks in that same order, so it can wait
for syncd (whose lock wait is short) but never form a cycle with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from syncd.db import run_many, table
from syncd.derived import PostRow
from syncd.network import Blog
from syncd.plan import BACKORDERS, LOW_STOCK, MANAGE, SKU, STATUS, STOCK, Facts, Key

FACT_KEYS = (STOCK, MANAGE, BACKORDERS, LOW_STOCK, STATUS)
#: What the lock step records per product: the facts, and _sku (written by a propagated rename).
READ_KEYS = (*FACT_KEYS, SKU)
#: Above this many posts on a blog, the lock step locks with COUNT(*) and then reads only the
#: rows it needs: one more round trip, 2/3 fewer rows to parse. Below, one statement is cheaper.
_LOCK_ONLY_ABOVE = 32


@dataclass
class MetaRow:
    meta_id: int
    value: str | None


@dataclass
class ProductRows:
    """Posts row and locked stock meta rows of one product."""

    exists: bool = False
    post_status: str = ""
    post_type: str = ""
    parent_id: int = 0
    meta: dict[str, list[MetaRow]] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        rows = self.meta.get(key)
        return rows[0].value if rows else None

    def facts(self) -> Facts:
        return Facts(
            exists=self.exists,
            post_status=self.post_status,
            manage_stock=self.value(MANAGE),
            stock=self.value(STOCK),
            has_stock_row=bool(self.meta.get(STOCK)),
            backorders=self.value(BACKORDERS),
            low_stock_amount=self.value(LOW_STOCK),
            duplicate_keys=tuple(k for k in FACT_KEYS if len(self.meta.get(k, ())) > 1),
        )


def lock_and_read(
    conn: sa.Connection, jobs: Sequence[tuple[Blog, Sequence[int]]]
) -> tuple[dict[Key, ProductRows], dict[int, dict[int, PostRow]]]:
    """The lock step of several blogs (in the order given: ascending blog id): their posts
    closures, then every blog's locking read, each phase one round trip for all blogs
    (:func:`syncd.db.run_many`; the statements run in this order). Returns the locked rows of each
    product of ``jobs``, and per blog the posts rows read (the derived step's, handed over)."""
    closures = post_closures(conn, jobs)
    # Every postmeta row this transaction will lock on a blog is locked here, in ONE scan of
    # the post_id index (ascending post id, then meta_id): the products, and the variable
    # parents and sibling variations whose derived data is recomputed later. A shop's own
    # `UPDATE ... WHERE post_id = X AND meta_key = '_stock'` locks rows in that same order
    # (one post's rows by meta_id, or every '_stock' row by meta_id through the meta_key
    # index), so it can wait for syncd but never deadlock with it. Locking a product's rows
    # first and its parent's or its other keys' rows later (the derived step) inverted that
    # order, and InnoDB then killed the shop's statement (the smaller transaction): a sale
    # whose stock update was lost (found by the crash test's write storm).
    statements: list[tuple[str, Sequence[Any]]] = []
    answer: list[int] = []  # per job, the statement whose rows hold its meta
    for blog, ids in jobs:
        post_rows = closures[blog.blog_id]
        closure = sorted(set(post_rows) | set(ids))
        pm = table(blog.prefix, "postmeta")
        if len(closure) <= _LOCK_ONLY_ABOVE:
            statements.append(
                (
                    f"SELECT meta_id, post_id, meta_key, meta_value FROM {pm} FORCE INDEX (post_id) "
                    f"WHERE post_id IN ({_marks(len(closure))}) ORDER BY post_id, meta_id FOR UPDATE",
                    closure,
                )
            )
        else:
            # Same locks, same scan, same order, but one row back instead of every row of
            # every product (~18 per product: 81,000 rows for a 500-change batch on 10 blogs,
            # parsed in Python, most of them only to be dropped below); then the rows the plan
            # needs. They are all locked by us now, so this plain read sees their values.
            statements.append(
                (
                    f"SELECT COUNT(*) FROM {pm} FORCE INDEX (post_id) "
                    f"WHERE post_id IN ({_marks(len(closure))}) FOR UPDATE",
                    closure,
                )
            )
            statements.append(
                (
                    f"SELECT meta_id, post_id, meta_key, meta_value FROM {pm} FORCE INDEX (post_id) "
                    f"WHERE post_id IN ({_marks(len(ids))}) AND meta_key IN ({_marks(len(READ_KEYS))}) "
                    f"ORDER BY post_id, meta_id",
                    [*ids, *READ_KEYS],
                )
            )
        answer.append(len(statements) - 1)
    results = run_many(conn, statements)
    out: dict[Key, ProductRows] = {}
    for (blog, ids), i in zip(jobs, answer, strict=True):
        post_rows = closures[blog.blog_id]
        mine = {
            (blog.blog_id, p): ProductRows()
            if (row := post_rows.get(p)) is None
            else ProductRows(True, row.post_status, row.post_type, row.parent_id)
            for p in ids
        }
        for meta_id, pid, key, value in results[i].rows:
            if (blog.blog_id, pid) in mine and key in READ_KEYS:
                mine[(blog.blog_id, pid)].meta.setdefault(key, []).append(MetaRow(meta_id, value))
        out.update(mine)
    return out, closures


def post_closures(
    conn: sa.Connection, jobs: Sequence[tuple[Blog, Sequence[int]]]
) -> dict[int, dict[int, PostRow]]:
    """Per blog, the posts rows of ``ids`` and of what the derived step reads with them: their
    variations, the variable parents of those that are variations, and those parents'
    variations. Ids that are not posts are absent. The rows are also the lock step's posts read
    and the derived step's (:func:`syncd.derived.posts_for`). One round trip per round for all
    blogs (a second round only where variations are involved)."""
    cols = "ID, post_parent, post_type, post_status, menu_order"
    out: dict[int, dict[int, PostRow]] = {blog.blog_id: {} for blog, _ in jobs}
    found = {blog.blog_id: set(ids) for blog, ids in jobs}
    todo = {blog.blog_id: sorted(set(ids)) for blog, ids in jobs}
    for _ in range(2):  # products -> their children; variations -> parent -> its children
        asks = [blog for blog, _ in jobs if todo[blog.blog_id]]
        if not asks:
            break
        statements = []
        for blog in asks:
            posts, t = table(blog.prefix, "posts"), todo[blog.blog_id]
            statements.append(
                (
                    f"SELECT {cols} FROM {posts} WHERE ID IN ({_marks(len(t))}) "
                    f"UNION SELECT {cols} FROM {posts} "
                    f"WHERE post_parent IN ({_marks(len(t))}) AND post_type = 'product_variation'",
                    [*t, *t],
                )
            )
        for blog, result in zip(asks, run_many(conn, statements), strict=True):
            b = blog.blog_id
            rows = result.rows
            for pid, parent, ptype, status, order in rows:
                out[b][int(pid)] = PostRow(int(pid), str(ptype), str(status), int(parent), int(order))
            new = {int(r[0]) for r in rows} | {
                int(r[1]) for r in rows if r[2] == "product_variation" and r[1]
            }
            todo[b] = sorted(new - found[b])
            found[b] |= new
    return out


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)
