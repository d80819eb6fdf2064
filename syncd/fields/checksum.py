"""Bucketed checksums for a full field pass (issue 10: 100,000 SKUs x 10 blogs, nothing to change).

The audit's machinery (:mod:`syncd.audit`: ``bucket_sql``, ``packed_sql``, ``unpack``) applied to
the meta keys of the field groups that declare ``checksum_keys`` (their stored values are exactly
their rows of these keys). Link groups are split into buckets of ``width`` consecutive group ids;
per blog and field group, one aggregate statement gives every bucket a row count and two XORs of
``CRC32(group, key, value)`` (a scan of the keys' meta rows joined to the member by primary key),
and one statement over the member rows gives every bucket its members' count and group-id XOR.

A bucket is *clean* for a field group when every blog taking part that has members in it shows
the same member and meta checksums: the link groups in it hold the same stored rows on every
blog, there is nothing to write (the detailed pass would find no difference). Every other bucket
is *dirty*: its link groups go through the pass as before (per-member fingerprints, then values
compared as WooCommerce reads them). A filter only: a dirty bucket costs time, never a write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from syncd.audit import MAX_BUCKETS, Scope, bucket_sql, packed_sql, unpack
from syncd.db import table
from syncd.fields.group import GROUPS

#: Per bucket (bucket, n, x, f): one member row per synced member, XOR of CRC32(group id).
_ROW = "CONCAT_WS(0x1f, m.group_id, pm.meta_key, IFNULL(pm.meta_value, 0x00))"


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

    def dirty(self, groups: Mapping[str, tuple[Sequence[str], Sequence[int]]], workers: int = 2) -> set[int]:
        """Buckets dirty for at least one field group: ``groups`` maps a name to its
        ``checksum_keys`` and the blogs taking part."""
        return set().union(*self.dirty_by_group(groups, workers).values())

    def dirty_by_group(
        self, groups: Mapping[str, tuple[Sequence[str], Sequence[int]]], workers: int = 2
    ) -> dict[str, set[int]]:
        """Each field group's dirty buckets (as :meth:`dirty`)."""
        blogs = sorted({b for _, blog_ids in groups.values() for b in blog_ids})
        if not self.nbuckets or not blogs:
            return {name: set() for name in groups}
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blogs)))) as pool:
            scans = dict(zip(blogs, pool.map(lambda b: self._scan_blog(b, groups), blogs), strict=True))
        return {
            name: dirty_buckets(scans[b][name] for b in sorted(blog_ids))
            for name, (_, blog_ids) in groups.items()
        }

    def _scan_blog(self, blog_id: int, groups: Mapping[str, tuple[Sequence[str], Sequence[int]]]) -> dict:
        """name -> (member sums, meta sums) of one blog, for the groups taking part on it."""
        names = [n for n, (_, blog_ids) in groups.items() if blog_id in blog_ids]
        keys = [tuple(groups[n][0]) for n in names]
        flat = [k for ks in keys for k in ks]
        batches = (
            [list(range(len(names)))] if len(flat) == len(set(flat)) else [[i] for i in range(len(names))]
        )
        excluded, xparams = self.scope.excluded_sql("m.sku")
        params = {"b": blog_id, "g0": self.g0, "w": self.width, "kmax": self.nbuckets - 1, **xparams}
        prefix = self.scope.blogs[blog_id].prefix
        out: dict[str, tuple[dict, dict]] = {}
        with self.engine.connect() as conn:
            n = 32 * (self.nbuckets * max(1, len(names)) + 2)  # packed_sql: 32 characters per row
            conn.execute(sa.text("SET SESSION group_concat_max_len = :n"), {"n": n})
            members = per_bucket(conn, member_sql(self.scope.base, excluded), params)
            for batch in batches:
                sql = meta_sql(self.scope.base, prefix, [keys[i] for i in batch], excluded)
                sums = per_bucket(conn, sql, params)
                for j, i in enumerate(batch):
                    mine = {k // len(batch): v for k, v in sums.items() if k % len(batch) == j}
                    out[names[i]] = (members, mine)
            conn.rollback()
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
