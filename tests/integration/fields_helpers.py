"""Test-only field groups and a daemon with realtime field groups, for the realtime mode's tests
before the real groups (syncd.fields.price / meta / terms) and the registry are merged.

:class:`PlainMetaGroup` keeps to the FieldGroup contract (syncd/fields/group.py) for plain meta
keys: it reads and writes the keys as they are and derives nothing (the real groups write
WooCommerce's derived rows; they are tested with their own golden records)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from syncd.daemon import Daemon
from syncd.db import table
from syncd.fields.group import FieldGroup, Problem, Target, Values
from syncd.network import Blog
from tests.integration.sync_helpers import make_daemon

_NUMBER = re.compile(r"\d+(\.\d+)?")


@dataclass
class PlainMetaGroup:
    name: str
    meta_keys: tuple[str, ...]
    numeric: tuple[str, ...] = ()  # keys whose non-empty value must be a plain non-negative number
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        out: dict[int, dict[str, Any]] = {p: dict.fromkeys(self.meta_keys) for p in post_ids}
        if not post_ids:
            return out
        rows = conn.execute(
            sa.text(
                f"SELECT post_id, meta_key, meta_value FROM {table(blog.prefix, 'postmeta')} "
                "WHERE post_id IN :p AND meta_key IN :k ORDER BY meta_id"
            ).bindparams(sa.bindparam("p", expanding=True), sa.bindparam("k", expanding=True)),
            {"p": list(post_ids), "k": list(self.meta_keys)},
        )
        for post, key, value in rows:
            out[int(post)][key] = value
        return out

    def problems(self, values: Values) -> list[tuple[str, str]]:
        return [
            (k, f"{values[k]!r} is not a number")
            for k in self.numeric
            if values.get(k) not in (None, "") and not _NUMBER.fullmatch(str(values[k]))
        ]

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        pm = table(target.blog.prefix, "postmeta")
        for k in self.meta_keys:
            if wanted.get(k) == current.get(k):
                continue
            p = {"p": target.post_id, "k": k, "v": wanted.get(k)}
            if wanted.get(k) is None:
                conn.execute(sa.text(f"DELETE FROM {pm} WHERE post_id = :p AND meta_key = :k"), p)
            elif current.get(k) is None:
                conn.execute(
                    sa.text(f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (:p, :k, :v)"), p
                )
            else:
                conn.execute(
                    sa.text(f"UPDATE {pm} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"), p
                )
        return []


PRICE = PlainMetaGroup("price", ("_regular_price", "_sale_price"), numeric=("_regular_price", "_sale_price"))
TAX = PlainMetaGroup("tax", ("_tax_status", "_tax_class"))


@dataclass(frozen=True)
class FieldsStandIn:
    """The part of ``[fields]`` (syncd.config.FieldsConfig) the realtime mode reads."""

    modes: Mapping[str, str]
    blogs: Mapping[str, tuple[int, ...]]

    def groups_in(self, mode: str) -> tuple[str, ...]:
        return tuple(n for n, m in self.modes.items() if m == mode)

    def takes_part(self, group: str, blog_id: int) -> bool:
        allowed = self.blogs.get(group, ())
        return not allowed or blog_id in allowed


def with_fields(config: Any, modes: Mapping[str, str], blogs: Mapping[str, tuple[int, ...]]) -> Any:
    """``config`` with these ``[fields]`` modes and blogs (the real FieldsConfig once merged)."""
    if any(f.name == "fields" for f in dataclasses.fields(config)):
        from syncd.config import FieldsConfig  # type: ignore[attr-defined]

        base = dict(config.fields.modes)
        return dataclasses.replace(config, fields=FieldsConfig(modes={**base, **modes}, blogs=dict(blogs)))
    out = dataclasses.replace(config)
    object.__setattr__(out, "fields", FieldsStandIn(dict(modes), dict(blogs)))
    return out


def realtime_daemon(
    net: Any,
    groups: Mapping[str, FieldGroup],
    blogs: Mapping[str, tuple[int, ...]] | None = None,
    **sections: Any,
) -> Daemon:
    """A prepared daemon whose ``groups`` are realtime (triggers installed for them)."""
    d = make_daemon(net, **sections)
    d.config = with_fields(d.config, dict.fromkeys(groups, "realtime"), blogs or {})
    d._realtime = (d.config, dict(groups))  # the registry's groups, once merged
    d.discover()
    return d


@dataclass
class PlainTitleGroup:
    """Test-only content-like group: ``post_title`` as it is."""

    name: str = "content"
    meta_keys: tuple[str, ...] = ()
    post_columns: tuple[str, ...] = ("post_title",)
    taxonomies: tuple[str, ...] = ()

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        rows = conn.execute(
            sa.text(f"SELECT ID, post_title FROM {table(blog.prefix, 'posts')} WHERE ID IN :p").bindparams(
                sa.bindparam("p", expanding=True)
            ),
            {"p": list(post_ids)},
        )
        return {int(i): {"post_title": t} for i, t in rows}

    def problems(self, values: Values) -> list[tuple[str, str]]:
        return [] if values.get("post_title") else [("post_title", "empty title")]

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        conn.execute(
            sa.text(f"UPDATE {table(target.blog.prefix, 'posts')} SET post_title = :t WHERE ID = :p"),
            {"t": wanted["post_title"], "p": target.post_id},
        )
        return []


@dataclass
class PlainCategoryGroup:
    """Test-only taxonomy-like group: a product's ``product_cat`` slugs, matched by slug; a slug
    missing on the target blog is a problem (the field is left alone there). No term counts."""

    name: str = "taxonomy"
    meta_keys: tuple[str, ...] = ()
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ("product_cat",)
    field: str = "terms:product_cat"

    def _terms(self, conn: sa.Connection, blog: Blog) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            f"SELECT t.slug, tt.term_taxonomy_id FROM {table(blog.prefix, 'term_taxonomy')} tt "
            f"JOIN {table(blog.prefix, 'terms')} t ON t.term_id = tt.term_id WHERE tt.taxonomy = 'product_cat'"
        )
        return {str(s): int(i) for s, i in rows}

    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        out: dict[int, list[str]] = {p: [] for p in post_ids}
        by_id = {v: k for k, v in self._terms(conn, blog).items()}
        rows = conn.execute(
            sa.text(
                f"SELECT object_id, term_taxonomy_id FROM {table(blog.prefix, 'term_relationships')} "
                "WHERE object_id IN :p"
            ).bindparams(sa.bindparam("p", expanding=True)),
            {"p": list(post_ids)},
        )
        for obj, tt in rows:
            if int(tt) in by_id:
                out[int(obj)].append(by_id[int(tt)])
        return {p: {self.field: tuple(sorted(v))} for p, v in out.items()}

    def problems(self, values: Values) -> list[tuple[str, str]]:
        return []

    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        terms = self._terms(conn, target.blog)
        want, have = set(wanted[self.field] or ()), set(current[self.field] or ())
        missing = sorted(want - set(terms))
        if missing:
            why = f"term {', '.join(missing)} does not exist on blog {target.blog.blog_id}"
            return [Problem(target.blog.blog_id, target.post_id, target.sku, self.field, why)]
        tr = table(target.blog.prefix, "term_relationships")
        for slug in sorted(want - have):
            conn.exec_driver_sql(
                f"INSERT INTO {tr} (object_id, term_taxonomy_id) VALUES (%s, %s)",
                (target.post_id, terms[slug]),
            )
        for slug in sorted(have - want):
            conn.exec_driver_sql(
                f"DELETE FROM {tr} WHERE object_id = %s AND term_taxonomy_id = %s",
                (target.post_id, terms[slug]),
            )
        return []
