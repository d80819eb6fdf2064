"""Translation components for audit and reconcile (issue 9 path 7).

On a blog whose translations share stock (Polylang for WooCommerce, ``catalog.shares_stock``) the
daemon writes each change to its *component*: every product connected to the origin through link
groups and shared translations (``plan.py``, ``component()``). Audit and reconcile compare and
repair that same unit: the link groups of a component, merged into one.

This module holds the parts that do not know audit's types: which groups the shared
translations of some members belong to (:func:`translation_edges`), union-find over group ids
(:func:`components`), and the set-based candidate query that finds, per sharing blog, the
translation groups whose products disagree (a checksum per link group cannot see that: each
group may agree with itself).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import sqlalchemy as sa

from syncd import catalog
from syncd.db import table
from syncd.network import Blog
from syncd.plan import BACKORDERS, LOW_STOCK, MANAGE, STOCK, Key

#: The fields the daemon carries across a component that a candidate query compares (the stock
#: status is derived where stock is managed; audit's exact comparison covers the rest).
_KEYS = (STOCK, MANAGE, BACKORDERS, LOW_STOCK)


def translation_edges(
    conn: sa.Connection, base_prefix: str, blogs: Mapping[int, Blog], keys: Collection[Key]
) -> list[tuple[Key, int]]:
    """(member, group id of one of its shared translations) for ``keys`` (on sharing blogs).

    Translation groups are read and validated as the daemon reads them; only translations that
    are linked members count (an excluded or ambiguous translation is not compared)."""
    by_blog: dict[int, list[int]] = {}
    for b, p in keys:
        by_blog.setdefault(b, []).append(p)
    found: dict[Key, tuple[Key, ...]] = {}
    for blog_id, posts in sorted(by_blog.items()):
        tr, problems = catalog.translations_for(conn, blogs[blog_id], posts)
        catalog.report_translation_problems(blog_id, problems)
        for pid, group in tr.items():
            found[(blog_id, pid)] = tuple((blog_id, q) for q in group if q != pid)
    wanted = {t for ts in found.values() for t in ts}
    membership = catalog.member_groups(conn, base_prefix, wanted)
    edges = []
    for key, translations in sorted(found.items()):
        for t in translations:
            gid, state = membership.get(t, (None, ""))
            if gid is not None and state == "linked":
                edges.append((key, int(gid)))
    return edges


def components(group_ids: Iterable[int], edges: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """Connected group ids, keyed by the smallest of each component (union-find)."""
    parent: dict[int, int] = {g: g for g in group_ids}

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for a, b in edges:
        ra, rb = root(parent.setdefault(a, a)), root(parent.setdefault(b, b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, list[int]] = {}
    for g in sorted(parent):
        out.setdefault(root(g), []).append(g)
    return out


def drift_candidates_sql(base_prefix: str, prefix: str, normalised_value: str) -> str:
    """Group ids of the linked members of one blog's translation groups whose products disagree
    on a stock field (by normalised text; audit compares the candidates exactly), or where one
    translation has a field's row and another has none or several."""
    tr, tt = table(prefix, "term_relationships"), table(prefix, "term_taxonomy")
    pm, member = table(prefix, "postmeta"), table(base_prefix, "syncd_member")
    keys = ", ".join(f"'{k}'" for k in _KEYS)
    return (
        f"SELECT DISTINCT m2.group_id FROM ("
        f"SELECT tr.term_taxonomy_id AS t FROM {tr} tr "
        f"JOIN {tt} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id AND tt.taxonomy = 'post_translations' "
        f"JOIN {member} m ON m.blog_id = :b AND m.post_id = tr.object_id AND m.state = 'linked' "
        f"JOIN {pm} pm ON pm.post_id = tr.object_id AND pm.meta_key IN ({keys}) "
        f"GROUP BY tr.term_taxonomy_id "
        f"HAVING COUNT(DISTINCT pm.meta_key, {normalised_value}) <> COUNT(DISTINCT pm.meta_key) "
        f"OR COUNT(*) <> COUNT(DISTINCT tr.object_id) * COUNT(DISTINCT pm.meta_key)"
        f") d JOIN {tr} tr2 ON tr2.term_taxonomy_id = d.t "
        f"JOIN {member} m2 ON m2.blog_id = :b AND m2.post_id = tr2.object_id AND m2.group_id IS NOT NULL "
        f"ORDER BY m2.group_id"
    )
