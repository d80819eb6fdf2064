"""Resolve: which blogs, link groups and products one batch involves.

Between the claim of a batch (:mod:`syncd.queue`) and its lock step (:mod:`syncd.lock`), on the
apply connection, in the batch's transaction:

1. the blogs that are live and usable right now; a change whose origin blog is not is never
   acknowledged (:class:`~syncd.queue.HeldBlogs`: the queue holds that blog's changes);
2. the membership of products the batch changes in a way that may move them (SKU, trash marker)
   or that syncd does not know yet, refreshed first (:mod:`syncd.catalog`), with a warning for a
   product that stops being synced;
3. the link groups of the changed products and, on blogs whose translations share stock, their
   translation groups and those translations' groups, until closed;
4. the products joining a group in this batch (they settle first: :mod:`syncd.settle`) and the
   frozen ones (joining now or earlier);
5. for each SKU rename syncd would carry, the members whose blog already has the new SKU.

The result, a :class:`Scope`, is what the lock step locks and the planner plans over.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from syncd import catalog, settle
from syncd.config import BlogSettings
from syncd.db import errno_of, guarded, is_retryable, table
from syncd.network import Blog
from syncd.plan import MEMBERSHIP_KEYS, SKU, TRASH_MARK, Change, Key, Member, member_of
from syncd.queue import HeldBlogs

log = structlog.get_logger("syncd.resolve")


@dataclass
class Scope:
    """What one batch involves, as resolved in its transaction."""

    blogs: dict[int, Blog]  # live and usable now: the only blogs written
    origins: list[Key]  # the changed products on those blogs
    groups: dict[Key, list[Member]]  # link group of each product involved, by product
    translations: dict[Key, tuple[Key, ...]]  # translation group (sharing blogs only), by product
    joining: set[Key]  # products joining a group in this batch
    frozen: set[Key]  # joining now or earlier and not settled: neither origin nor target
    involved: set[Key]  # every product the lock step locks


class Resolver:
    """Resolves batches of one network (``blogs``: the usable blogs of the last discovery)."""

    def __init__(
        self,
        base_prefix: str,
        blogs: Callable[[], Mapping[int, Blog]],
        settings: Callable[[int], BlogSettings],
        *,
        propagate_sku_renames: bool = True,
        away: Callable[[], Mapping[int, Blog]] | None = None,
    ) -> None:
        self.base = base_prefix
        self._blogs = blogs
        #: Blogs served before and not now (syncd.daemon): read for their translations, never written.
        self._away = away or dict
        self.settings = settings
        self.propagate_sku_renames = propagate_sku_renames

    def scope(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        blogs: dict[int, Blog],
        member_rows: Sequence[Sequence],
    ) -> Scope:
        """Steps 2-4 for ``changes`` (``member_rows``: :func:`catalog.members_and_groups_sql`'s
        rows, read in the claim's round trip)."""
        origins = sorted({c.key for c in changes if c.blog_id in blogs})
        stale = {c.key for c in changes if c.meta_key in MEMBERSHIP_KEYS and c.blog_id in blogs}
        known, groups = catalog.parse_members_and_groups(member_rows)
        groups = {k: g for k, g in groups.items() if k[0] in blogs}
        refreshed = stale | (set(origins) - known)
        before = catalog.member_groups(conn, self.base, refreshed)
        if refreshed:
            self._refresh_members(conn, changes, blogs, stale, refreshed)
            groups = catalog.groups_for(conn, self.base, origins)  # membership may have moved
        translations = self.translations(conn, blogs, groups)
        joining = self.joining(changes, refreshed, before, groups)
        involved: set[Key] = set(origins)
        for members in groups.values():
            involved.update(m.key for m in members if m.blog_id in blogs)
        for tr in translations.values():
            involved.update(k for k in tr if k[0] in blogs)
        frozen = joining | settle.frozen(conn, self.base, involved)
        return Scope(blogs, origins, groups, translations, joining, frozen, involved)

    def _refresh_members(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        blogs: Mapping[int, Blog],
        stale: set[Key],
        keys: set[Key],
    ) -> None:
        """Membership first: a product whose SKU changed, that was trashed, or that syncd has not
        seen yet (created since the last discovery) is grouped before planning. A product that
        leaves its group (trashed, SKU removed) is no longer synced: say which."""
        was_member = catalog.member_skus(conn, self.base, stale)
        for blog_id, posts in by_blog(keys).items():
            guarded(
                blog_id,
                lambda b=blog_id, p=posts: catalog.refresh_members(
                    conn, self.base, blogs[b], p, settings=self.settings(b)
                ),
            )
        for key in sorted(set(was_member) - catalog.known_members(conn, self.base, was_member)):
            log.warning(
                "member_left",
                blog=key[0],
                post=key[1],
                sku=was_member[key],
                keys=sorted({c.meta_key for c in changes if c.key == key}),
                reason="no longer a linked product (trashed, deleted or SKU removed); not synced any more",
            )

    def translations(
        self, conn: sa.Connection, blogs: Mapping[int, Blog], groups: dict[Key, list[Member]]
    ) -> dict[Key, tuple[Key, ...]]:
        """On blogs whose translations share stock: the translation group of every product the
        batch involves, and the link groups of those translations (``groups`` is extended), until
        nothing new is found (a few rounds: links and translations form small components).

        Blogs not live now are read too (never written): a change reaches what it would reach if
        they were live, the members on them are left out and keep what they missed
        (``Plan.missed``), and live members linked through their translations are written."""
        readable = {**self._away(), **self._blogs(), **blogs}  # live blogs as this batch sees them
        sharing = {b for b, blog in readable.items() if catalog.shares_stock(blog, self.settings(b))}
        out: dict[Key, tuple[Key, ...]] = {}
        if not sharing:
            return out
        checked: set[Key] = set()
        todo = {k for k in groups} | {m.key for ms in groups.values() for m in ms}
        for _ in range(6):
            ask = {k for k in todo if k[0] in sharing and k not in checked}
            if not ask:
                break
            found: set[Key] = set()
            for blog_id, posts in sorted(by_blog(ask).items()):
                tr = self._translations_of(conn, readable[blog_id], posts, live=blog_id in blogs)
                for members in tr.values():
                    keys = tuple((blog_id, p) for p in members)
                    for k in keys:
                        out[k] = keys
                    found.update(keys)
            checked |= ask | found
            new = sorted(found - set(groups))
            more = catalog.groups_for(conn, self.base, new) if new else {}
            groups.update(more)
            todo = found | {m.key for ms in more.values() for m in ms}
        return out

    def _translations_of(
        self, conn: sa.Connection, blog: Blog, posts: list[int], *, live: bool
    ) -> dict[int, Sequence[int]]:
        """One blog's translation groups of ``posts``. A blog not live now that cannot be read
        (its tables dropped) has none: the batch goes on without them."""
        if live:
            tr, problems = catalog.translations_for(conn, blog, posts)
            catalog.report_translation_problems(blog.blog_id, problems)
            return tr
        try:
            with conn.begin_nested():
                tr, _problems = catalog.translations_for(conn, blog, posts)
            return tr
        except Exception as exc:  # noqa: BLE001 - an away blog's translations are optional
            if is_retryable(exc):
                raise
            log.info("away_translations_unread", blog=blog.blog_id, errno=errno_of(exc))
            return {}

    @staticmethod
    def joining(
        changes: Sequence[Change],
        refreshed: set[Key],
        before: Mapping[Key, tuple[int | None, str]],
        groups: Mapping[Key, Sequence[Member]],
    ) -> set[Key]:
        """Products that join a group in this batch: a linked product whose group is new to it
        (SKU added, changed while ambiguous, or a language change), or whose creation or untrash
        this batch applies (its ``_sku`` row inserted, its trash marker deleted: a product found by
        the start-up refresh is already a member when its creation is applied). They join once
        they have settled (:mod:`syncd.settle`), never while WooCommerce may still be writing them.
        An inserted ``_stock`` row alone is not a creation: an importer's delete + re-add."""
        created = {
            c.key
            for c in changes
            if (c.op == "I" and c.meta_key == SKU) or (c.op == "D" and c.meta_key == TRASH_MARK)
        }
        joining: set[Key] = set()
        for key in refreshed | created:
            me = member_of(groups, key)
            if me is None or me.state != "linked" or me.group_id is None:
                continue
            if key in created or before.get(key) != (me.group_id, "linked"):
                joining.add(key)
        return joining

    def sku_conflicts(
        self,
        conn: sa.Connection,
        changes: Sequence[Change],
        groups: Mapping[Key, Sequence[Member]],
        blogs: Mapping[int, Blog],
        joins: Collection[Key],
    ) -> dict[tuple[int, Key], int]:
        """For each SKU rename syncd would carry: the members whose blog already has a product with
        the new SKU (same language where Polylang for WooCommerce allows one SKU per language)."""
        out: dict[tuple[int, Key], int] = {}
        if not self.propagate_sku_renames:
            return out
        for c in changes:
            new_sku = (c.new_value or "").strip()
            if c.meta_key != SKU or c.op != "U" or not new_sku or not (c.old_value or "").strip():
                continue
            if c.key in joins:
                continue
            for m in groups.get(c.key, ()):
                if m.key == c.key or m.state != "linked" or m.kind != "sku" or m.blog_id not in blogs:
                    continue
                blog = blogs[m.blog_id]
                clash = catalog.sku_conflict(
                    conn, self.base, blog, m.post_id, new_sku, m.lang, per_language=blog.polylang_wc
                )
                if clash is not None:
                    out[(c.id, m.key)] = int(clash)
        return out

    def hold_unusable_origins(
        self, changes: Sequence[Change], blogs: Mapping[int, Blog], live: set[int]
    ) -> None:
        """A change whose origin blog is not usable right now is never acknowledged and dropped:
        the batch is abandoned (rolled back by the caller) and the queue holds that blog's
        changes until it is usable again (syncd.queue.HeldBlogs)."""
        known = self._blogs()
        held: dict[int, str] = {}
        for b in sorted({c.blog_id for c in changes} - set(blogs)):
            if b not in live:
                held[b] = "blog is not live (deleted, archived or spam)"
            elif b in known:
                held[b] = "blog is not usable: " + ("; ".join(known[b].problems) or "WooCommerce not active")
            else:
                held[b] = "blog is not served by syncd (not usable at the last discovery, or excluded)"
        if held:
            raise HeldBlogs(held)

    def live_blogs_sql(self) -> str:
        return (
            f"SELECT blog_id FROM {table(self.base, 'blogs')} WHERE deleted = 0 AND archived = 0 AND spam = 0"
        )

    def usable(self, live: set[int]) -> dict[int, Blog]:
        """Usable blogs that are still live right now (a blog deleted mid-run is never written)."""
        return {b: blog for b, blog in self._blogs().items() if b in live and blog.usable}


def by_blog(keys: Iterable[Key]) -> dict[int, list[int]]:
    """Product keys grouped by blog id (post ids in the order given)."""
    out: dict[int, list[int]] = {}
    for b, p in keys:
        out.setdefault(b, []).append(p)
    return out
