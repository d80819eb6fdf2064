"""Bucketed checksums for a full field pass (issue 10: 100,000 SKUs x 10 blogs, nothing to change).

The audit's machinery (:mod:`syncd.audit`: ``bucket_sql``, ``packed_sql``, ``unpack``) applied to
the stored source values of every field group (:class:`Spec`, from the group's ``checksum_keys``,
``checksum_columns`` and ``checksum_terms``: postmeta rows, ``posts`` columns, term slugs). Link
groups are split into buckets of ``width`` consecutive group ids; per blog and field group, one
aggregate statement per kind of source gives every bucket a row count and two XORs of
``CRC32(group, name, value)``: one scan of the keys' meta rows for every group's keys at once
(joined to the member by primary key), one read of the members' ``posts`` rows for the columns,
one join of the members' term relationships per group with terms; and one statement over the
member rows gives every bucket its members' count and group-id XOR. XOR is order-free, so a
product's terms are compared as a set (the slugs of one taxonomy are unique).

A bucket is *clean* for a field group when every blog taking part that has members in it shows
the same member and meta checksums: the link groups in it hold the same stored rows on every
blog, there is nothing to write (the detailed pass would find no difference). Every other bucket
is *dirty*: its link groups go through the pass as before (per-member fingerprints, then values
compared as WooCommerce reads them). A filter only: a dirty bucket costs time, never a write.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa

from syncd.audit import MAX_BUCKETS, Scope, bucket_sql, packed_sql, unpack
from syncd.db import table
from syncd.fields.group import GROUPS

#: Per bucket (bucket, n, x, f): one member row per synced member, XOR of CRC32(group id).
_ROW = "CONCAT_WS(0x1f, m.group_id, pm.meta_key, IFNULL(pm.meta_value, 0x00))"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Spec:
    """What a field group's stored source values are, for the checksums: its rows of ``keys``
    (postmeta), the ``columns`` of its products' ``posts`` rows (``column_types``: the post types
    that carry them) and, per taxonomy of ``taxonomies``, the slugs of its products' terms
    (``term_types``: the post types that carry them; ``slugs``: only these, None: every slug).
    Equal stored values give equal checksums; the pass compares exactly where they differ."""

    keys: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    column_types: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()
    term_types: tuple[str, ...] = ()
    slugs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        names = (*self.keys, *self.columns, *self.column_types, *self.taxonomies, *self.term_types)
        if not all(_NAME_RE.fullmatch(n) for n in (*names, *(self.slugs or ()))):
            raise ValueError(f"bad checksum name in {self!r}")  # they enter SQL text

    def __bool__(self) -> bool:
        return bool(self.keys or self.columns or self.taxonomies)


def spec_of(group: object) -> Spec | None:
    """A field group's :class:`Spec` (None: it offers no checksum; the pass reads it member by member)."""
    cols = tuple(getattr(group, "checksum_columns", ()) or ())
    terms = getattr(group, "checksum_terms", None)
    taxonomies, term_types, slugs = terms if terms else ((), (), None)
    spec = Spec(
        keys=tuple(getattr(group, "checksum_keys", ()) or ()),
        columns=cols,
        column_types=tuple(getattr(group, "checksum_post_types", ()) or ()) if cols else (),
        taxonomies=tuple(taxonomies),
        term_types=tuple(term_types),
        slugs=None if slugs is None else tuple(sorted(slugs)),
    )
    return spec or None


def _as_spec(spec: Spec | Sequence[str]) -> Spec:
    return spec if isinstance(spec, Spec) else Spec(keys=tuple(spec))


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _synced(excluded: str) -> str:
    return f"m.state = 'linked' AND m.group_id IS NOT NULL AND NOT {excluded}"


def member_sql(base: str, excluded: str) -> str:
    """Per bucket of one blog: synced members, XOR of CRC32 of their group ids."""
    return (
        f"SELECT {bucket_sql()} AS bucket, COUNT(*) AS n, BIT_XOR(CRC32(m.group_id)) AS x, 0 AS f "
        f"FROM {table(base, 'syncd_member')} m WHERE m.blog_id = :b AND {_synced(excluded)} "
        "GROUP BY bucket ORDER BY NULL"
    )


def meta_sql(base: str, prefix: str, key_sets: Sequence[Sequence[str]], excluded: str) -> str:
    """Per (bucket, field group) of one blog: the synced members' rows of each group's keys, two
    XORs of their CRC32s (the text and its reverse); ``bucket`` is ``bucket * len(key_sets) +
    the group's index``. One scan of the blog's rows of every key (the key sets are disjoint),
    members found by primary key."""
    for keys in key_sets:
        for k in keys:
            if not k.replace("_", "").isalnum():
                raise ValueError(f"bad meta key {k!r}")  # they enter SQL text
    quoted = [", ".join(f"'{k}'" for k in keys) for keys in key_sets]
    which = "CASE " + " ".join(f"WHEN pm.meta_key IN ({q}) THEN {i}" for i, q in enumerate(quoted)) + " END"
    return (
        f"SELECT STRAIGHT_JOIN {bucket_sql()} * {len(key_sets)} + {which} AS bucket, COUNT(*) AS n, "
        f"BIT_XOR(CRC32({_ROW})) AS x, BIT_XOR(CRC32(REVERSE({_ROW}))) AS f "
        f"FROM {table(prefix, 'postmeta')} pm JOIN {table(base, 'syncd_member')} m "
        f"ON m.blog_id = :b AND m.post_id = pm.post_id "
        f"WHERE pm.meta_key IN ({', '.join(quoted)}) AND {_synced(excluded)} GROUP BY bucket ORDER BY NULL"
    )


def _sums(row: str) -> str:
    return f"COUNT(*) AS n, BIT_XOR(CRC32({row})) AS x, BIT_XOR(CRC32(REVERSE({row}))) AS f"


def posts_sql(base: str, prefix: str, spec: Spec, excluded: str) -> str:
    """Per bucket of one blog: the synced members' ``posts`` rows of the spec's post types,
    checksums of (group, the columns); members first, their posts rows by primary key."""
    cols = ", ".join(f"IFNULL(p.`{c}`, 0x00)" for c in spec.columns)
    return (
        f"SELECT STRAIGHT_JOIN {bucket_sql()} AS bucket, {_sums(f'CONCAT_WS(0x1f, m.group_id, {cols})')} "
        f"FROM {table(base, 'syncd_member')} m JOIN {table(prefix, 'posts')} p ON p.ID = m.post_id "
        f"WHERE m.blog_id = :b AND {_synced(excluded)} AND p.post_type IN ({_quoted(spec.column_types)}) "
        "GROUP BY bucket ORDER BY NULL"
    )


def terms_sql(base: str, prefix: str, spec: Spec, excluded: str) -> str:
    """Per bucket of one blog: the synced members' terms of the spec's taxonomies (only members
    of the spec's post types; only its slugs when it names them), checksums of (group,
    taxonomy, slug)."""
    only = f" AND t.slug IN ({_quoted(spec.slugs)})" if spec.slugs is not None else ""
    return (
        f"SELECT {bucket_sql()} AS bucket, {_sums('CONCAT_WS(0x1f, m.group_id, tt.taxonomy, t.slug)')} "
        f"FROM {table(prefix, 'term_taxonomy')} tt "
        f"JOIN {table(prefix, 'term_relationships')} tr ON tr.term_taxonomy_id = tt.term_taxonomy_id "
        f"JOIN {table(base, 'syncd_member')} m ON m.blog_id = :b AND m.post_id = tr.object_id "
        f"JOIN {table(prefix, 'posts')} p ON p.ID = m.post_id "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy IN ({_quoted(spec.taxonomies)}) AND {_synced(excluded)} "
        f"AND p.post_type IN ({_quoted(spec.term_types)}){only} GROUP BY bucket ORDER BY NULL"
    )


def per_bucket(
    conn: sa.Connection, sql: str, params: Mapping[str, object]
) -> dict[int, tuple[int, int, int]]:
    """bucket -> (n, x, f) of one per-bucket statement (one packed row, as the audit reads them)."""
    values = unpack(conn.execute(sa.text(packed_sql(sql)), dict(params)).one())
    return {values[i] - 1: (values[i + 1], values[i + 2], values[i + 3]) for i in range(0, len(values), 4)}


def dirty_buckets(sums: Iterable[tuple[Mapping[int, tuple], Mapping[int, tuple]]]) -> set[int]:
    """Buckets where the blogs with members in them disagree (pure). ``sums``: per blog taking
    part, (member sums, meta sums) by bucket; a blog without members in a bucket is not compared."""
    first: dict[int, tuple] = {}
    dirty: set[int] = set()
    for members, meta in sums:
        for bucket, m in members.items():
            seen = (m, meta.get(bucket))
            if first.setdefault(bucket, seen) != seen:
                dirty.add(bucket)
        for bucket in meta.keys() - members.keys():
            dirty.add(bucket)  # meta rows of members the member statement did not see: never clean
    return dirty


def _merged(parts: Sequence[Mapping[int, tuple]]) -> dict[int, tuple]:
    """One group's sums by bucket from its kinds of source: a tuple of each kind's sums (None
    where a kind has no row in the bucket)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {k: tuple(p.get(k) for p in parts) for k in set().union(*parts)}


class BucketChecksums:
    """Which link groups a full pass must look at (see the module docstring). Blogs are scanned
    two at a time, each on its own connection (as the audit's checksums)."""

    def __init__(self, engine: sa.Engine, scope: Scope, max_buckets: int = MAX_BUCKETS) -> None:
        self.engine, self.scope = engine, scope
        with engine.connect() as conn:
            lo, hi, packet = conn.exec_driver_sql(
                f"SELECT MIN(group_id), MAX(group_id), @@max_allowed_packet FROM {table(scope.base, 'syncd_member')} "
                "WHERE group_id IS NOT NULL AND state = 'linked'"
            ).one()
            conn.rollback()
        # packed_sql: 32 characters per bucket and group in one result row (as the audit caps it).
        max_buckets = min(max_buckets, max(64, (int(packet or 0) - 65536) // (32 * len(GROUPS))))
        self.g0 = int(lo or 0)
        span = int(hi) - self.g0 + 1 if hi is not None else 0
        self.width = max(1, math.ceil(span / max_buckets)) if span else 1
        self.nbuckets = math.ceil(span / self.width) if span else 0

    def dirty(
        self, groups: Mapping[str, tuple[Spec | Sequence[str], Sequence[int]]], workers: int = 2
    ) -> set[int]:
        """Buckets dirty for at least one field group: ``groups`` maps a name to its :class:`Spec`
        (or just its ``checksum_keys``) and the blogs taking part."""
        return set().union(*self.dirty_by_group(groups, workers).values())

    def dirty_by_group(
        self, groups: Mapping[str, tuple[Spec | Sequence[str], Sequence[int]]], workers: int = 2
    ) -> dict[str, set[int]]:
        """Each field group's dirty buckets (as :meth:`dirty`)."""
        specs = {name: (_as_spec(spec), blog_ids) for name, (spec, blog_ids) in groups.items()}
        blogs = sorted({b for _, blog_ids in specs.values() for b in blog_ids})
        if not self.nbuckets or not blogs:
            return {name: set() for name in specs}
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blogs)))) as pool:
            scans = dict(zip(blogs, pool.map(lambda b: self._scan_blog(b, specs), blogs), strict=True))
        return {
            name: dirty_buckets(scans[b][name] for b in sorted(blog_ids))
            for name, (_, blog_ids) in specs.items()
        }

    def _scan_blog(self, blog_id: int, groups: Mapping[str, tuple[Spec, Sequence[int]]]) -> dict:
        """name -> (member sums, source sums) of one blog, for the groups taking part on it; a
        group's source sums per bucket are one (n, x, f) or None per kind of source it has."""
        specs = {n: spec for n, (spec, blog_ids) in groups.items() if blog_id in blog_ids}
        excluded, xparams = self.scope.excluded_sql("m.sku")
        params = {"b": blog_id, "g0": self.g0, "w": self.width, "kmax": self.nbuckets - 1, **xparams}
        prefix, base = self.scope.blogs[blog_id].prefix, self.scope.base
        parts: dict[str, list[dict]] = {n: [] for n in specs}
        with self.engine.connect() as conn:
            n = 32 * (self.nbuckets * max(1, len(specs)) + 2)  # packed_sql: 32 characters per row
            conn.execute(sa.text("SET SESSION group_concat_max_len = :n"), {"n": n})
            members = per_bucket(conn, member_sql(base, excluded), params)
            for name, sums in self._meta_sums(conn, prefix, specs, excluded, params).items():
                parts[name].append(sums)
            for name, spec in specs.items():
                if spec.columns:
                    parts[name].append(per_bucket(conn, posts_sql(base, prefix, spec, excluded), params))
                if spec.taxonomies:
                    parts[name].append(per_bucket(conn, terms_sql(base, prefix, spec, excluded), params))
            conn.rollback()
        return {name: (members, _merged(p)) for name, p in parts.items()}

    def _meta_sums(
        self, conn: sa.Connection, prefix: str, specs: Mapping[str, Spec], excluded: str, params: dict
    ) -> dict[str, dict]:
        """name -> meta sums by bucket, for the groups with keys: one scan for all of them when
        their key sets are disjoint (a CASE names each row's group), else one per group."""
        names = [n for n, spec in specs.items() if spec.keys]
        keys = [specs[n].keys for n in names]
        flat = [k for ks in keys for k in ks]
        batches = (
            [list(range(len(names)))] if len(flat) == len(set(flat)) else [[i] for i in range(len(names))]
        )
        out: dict[str, dict] = {}
        for batch in batches:
            if not batch:
                continue
            sums = per_bucket(
                conn, meta_sql(self.scope.base, prefix, [keys[i] for i in batch], excluded), params
            )
            for j, i in enumerate(batch):
                out[names[i]] = {k // len(batch): v for k, v in sums.items() if k % len(batch) == j}
        return out

    def ranges(self, buckets: Iterable[int]) -> list[tuple[int, int]]:
        """Inclusive group-id ranges of these buckets, adjacent ones merged, in order (the last
        bucket holds every group id beyond it, as ``bucket_sql`` clamps)."""
        out: list[tuple[int, int]] = []
        for k in sorted(buckets):
            lo = self.g0 + k * self.width
            hi = self.g0 + (k + 1) * self.width - 1 if k < self.nbuckets - 1 else 2**63 - 1
            if out and out[-1][1] + 1 == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return out
