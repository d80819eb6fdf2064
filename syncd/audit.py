"""``syncd audit``: compare every link group across blogs, without writing anything.

What is reported (DESIGN.md step 6):

* **drift**: groups whose members differ, per field - quantity (numerically: '7' = '7.000000';
  only where the member manages stock), manage stock, backorders, low-stock amount, and the
  stock status of products whose status is set by hand (not managed, not a variable parent, not
  a variation taking its stock from its parent);
* **derived**: products whose WooCommerce derived data disagrees with their own quantity on their
  own blog (status, lookup row missing or wrong, ``outofstock`` visibility term, variable parent
  status, attribute lookup rows), as :func:`syncd.derived.check_products` sees it;
* **ambiguous** SKUs (two products of one group on one blog: neither is synced), **single-blog**
  SKUs (a group with members on one blog only), groups whose **product types** differ, and
  **unsafe** members (a quantity that is not a number, several ``_stock`` rows).

How (pt-table-checksum style, checksum first, memory flat whatever the catalogue size):

1. Link groups are numbered (``{base}syncd_member.group_id``) and split into *buckets* of ``W``
   consecutive group ids (at most ``MAX_BUCKETS`` buckets: ``W`` = 1 up to 16,384 groups;
   reconcile: ``RECONCILE_MAX_BUCKETS``, 131,072).
2. Per blog, two aggregate queries give each bucket a checksum: one over the blog's member rows
   (presence and product type), one over its stock meta rows (``COUNT`` and
   ``BIT_XOR(CRC32(CONCAT_WS('#', group, key, normalised value, ISNULL(value))))``), the latter
   as a scan of ``postmeta`` in primary-key slices joined to the member, lookup and term tables
   by primary key. The same scan carries a set-based check of the derived data of every product
   on the blog (status vs lookup row vs visibility term vs quantity): a clean network is read
   once. Each statement's per-bucket rows come back as one packed text row (:func:`packed_sql`):
   the driver parses rows in Python, ~8 us each. Two blogs are scanned at a time, each on its own
   connection.
3. Buckets whose checksums differ between the blogs that have members in them, that hold an
   ambiguous member, or that hold a product whose derived data looks wrong, are read row by row
   (members by ``group_id`` range, their meta by ``post_id``) and compared exactly in Python; the
   products of the groups that differ and of the buckets whose derived data looked wrong are
   checked with :func:`syncd.derived.check_products`.

Why not range chunks walked per blog with one aggregate each (pt-table-checksum's own shape):
WordPress's ``postmeta`` has no (post_id, meta_key) index, so reading five keys of a chunk's
products through ``post_id`` touches every meta row of every product (~18 per WooCommerce
product); measured on 100,000 SKUs x 10 blogs that was ~8x slower than one primary-key scan
per blog. The row-by-row step uses that access path, but only for the buckets that differ.

Only linked members count (state 'linked', a usable blog selected by ``[blogs]``, a SKU not
matched by ``[sync] exclude_skus``); excluded products are neither compared nor checked.
"""

from __future__ import annotations

import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from syncd import derived
from syncd.catalog import shares_stock
from syncd.components import components, drift_candidates_sql, translation_edges
from syncd.config import Config
from syncd.db import table
from syncd.exclusion import exclusion_condition
from syncd.network import Blog
from syncd.plan import BACKORDERS, LOW_STOCK, MANAGE, STATUS, STOCK, Key, StockValueError, parse_quantity
from syncd.progress import Progress, dump_json
from syncd.progress import table as print_table
from syncd.woo import manages_stock

log = structlog.get_logger("syncd.audit")

#: Exit status bits shared by audit, reconcile, sync and set-stock (README "EXIT STATUS").
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_DRIFT = 4
EXIT_SKIPPED = 8
EXIT_BAD_ARGUMENT = 16
EXIT_UNSAFE = 32

#: The stock meta keys compared across blogs (and checksummed).
STOCK_KEYS: tuple[str, ...] = (STOCK, MANAGE, BACKORDERS, LOW_STOCK, STATUS)
#: Field names as reported, and the meta key behind each.
FIELDS: dict[str, str] = {
    "quantity": STOCK,
    "manage_stock": MANAGE,
    "backorders": BACKORDERS,
    "low_stock_amount": LOW_STOCK,
    "stock_status": STATUS,
}
#: At most this many buckets for an audit (fewer when the server's max_allowed_packet cannot carry
#: 32 bytes per bucket): each scan statement returns one packed text of 32 characters per bucket
#: (:func:`packed_sql`), and a differing bucket is read row by row (W groups). Every bucket costs
#: the server ~2 us per statement (grouping, packing), so a clean audit wants few buckets:
#: 16,384 (W = 7 at 100,000 groups).
MAX_BUCKETS = 16_384
#: Reconcile's bucket cap: reconcile reads, compares, checks and rewrites every group of a drifted
#: bucket, ~2 ms of client CPU per group at 10 blogs; one bucket per group (W = 1 up to 131,072
#: groups) costs the scan ~0.4 s per blog of 100,000 groups and saves that for 6 of every 7 groups
#: read (measured at 100,000 SKUs x 10 blogs, 1% drifted: reconcile client CPU 20.9 -> 8.5 s).
RECONCILE_MAX_BUCKETS = 131_072
#: postmeta rows (by meta_id range) per scan statement: one statement per blog up to ~200,000
#: WooCommerce products; each returns up to MAX_BUCKETS rows.
SCAN_SLICE = 4_000_000
#: Blogs scanned at the same time (one connection each).
SCAN_WORKERS = 2
#: Groups read row by row per step (and written per reconcile transaction).
CHUNK_GROUPS = 200
#: SQLAlchemy's compiled-statement cache per engine: statements with IN lists of every length would
#: otherwise fill its default 500 entries (tens of MB at 100,000 SKUs); memory must stay flat.
QUERY_CACHE = 50
#: Entries kept per report list (counts stay exact).
REPORT_LIMIT = 1000


# --------------------------------------------------------------------------- member values (pure)
@dataclass
class MemberValues:
    """One linked (or ambiguous) product of a group with its stock meta (first row per key first)."""

    blog_id: int
    post_id: int
    sku: str
    lang: str
    post_type: str
    product_type: str
    parent_id: int
    state: str = "linked"
    meta: dict[str, list[str | None]] = field(default_factory=dict)
    parent_manages: bool = False  # a variation whose parent manages stock (status follows the parent)

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)

    def value(self, meta_key: str) -> str | None:
        rows = self.meta.get(meta_key)
        return rows[0] if rows else None

    @property
    def manages(self) -> bool:
        return manages_stock(self.value(MANAGE))

    @property
    def manual_status(self) -> bool:
        """Whether ``_stock_status`` is set by hand (a register) rather than derived."""
        if self.manages or self.product_type == "variable":
            return False
        return not (self.post_type == "product_variation" and self.parent_manages)

    @property
    def type_label(self) -> str:
        return self.product_type or ("variation" if self.post_type == "product_variation" else "simple")

    def quantity(self) -> Decimal | None:
        """The quantity as a number; StockValueError when unusable (not a number, several rows)."""
        rows = self.meta.get(STOCK) or []
        if len(rows) > 1:
            raise StockValueError(f"has {len(rows)} _stock rows")
        return parse_quantity(rows[0] if rows else None)

    def field(self, name: str) -> Any:
        """The comparable value of a field (None: not applicable / not set)."""
        if name == "quantity":
            return self.quantity() if self.manages else None
        if name == "stock_status":
            return self.value(STATUS) if self.manual_status else None
        raw = self.value(FIELDS[name])
        if name == "low_stock_amount" and raw is not None and raw.strip() == "":
            return None  # '' and no row both mean "use the store default"
        return raw

    def shown(self, name: str) -> str | None:
        """The stored text of a field, for reports."""
        return self.value(FIELDS[name])


@dataclass
class FieldDiff:
    field: str
    values: dict[Key, str | None]  # stored text per member


@dataclass
class GroupState:
    group_id: int
    members: list[MemberValues]  # linked, on usable blogs, not excluded; (blog, post) order
    ambiguous: list[MemberValues] = field(default_factory=list)
    #: A translation component: the link groups merged into this one (group_id = the smallest).
    group_ids: tuple[int, ...] = ()

    @property
    def sku(self) -> str:
        first = self.members[0] if self.members else (self.ambiguous[0] if self.ambiguous else None)
        return first.sku if first else ""

    @property
    def lang(self) -> str:
        first = self.members[0] if self.members else (self.ambiguous[0] if self.ambiguous else None)
        return first.lang if first else ""

    @property
    def blogs(self) -> set[int]:
        return {m.blog_id for m in self.members}


def compare_group(group: GroupState) -> tuple[list[FieldDiff], list[tuple[MemberValues, str]]]:
    """Fields whose comparable values differ between the group's members, and unsafe members."""
    diffs: list[FieldDiff] = []
    unsafe: list[tuple[MemberValues, str]] = []
    for m in group.members:  # a second row of a watched key: skipped by the daemon (issue 9 path 0)
        for key, rows in sorted(m.meta.items()):
            if len(rows) > 1 and key != STOCK:  # _stock: reported by quantity() below
                unsafe.append((m, f"has {len(rows)} {key} rows (duplicate meta rows)"))
    if len(group.members) < 2:
        return diffs, unsafe
    for name in FIELDS:
        seen: set[Any] = set()
        applicable = False
        for m in group.members:
            try:
                v = m.field(name)
                if name == "quantity" and v is None and m.manages:
                    raise StockValueError("is SQL NULL (or missing) while stock is managed")
            except StockValueError as exc:
                unsafe.append((m, f"_stock {exc}"))
                v = ("unsafe", m.value(STOCK))
            if name in ("quantity", "stock_status") and v is None:
                continue  # not applicable to this member (does not manage stock / derived status)
            applicable = True
            seen.add(v)
        if applicable and len(seen) > 1:
            diffs.append(FieldDiff(name, {m.key: m.shown(name) for m in group.members}))
    return diffs, unsafe


def types_differ(group: GroupState) -> bool:
    return len({(m.post_type, m.product_type) for m in group.members}) > 1


# --------------------------------------------------------------------------- SQL (pure builders)
def normalised_value_sql(alias: str = "pm") -> str:
    """A quantity's text with trailing fractional zeros removed ('7.000000' -> '7'), other keys as
    stored. Equal outputs mean equal values; unequal ones are compared exactly afterwards."""
    v = f"{alias}.meta_value"
    return (
        f"IF({alias}.meta_key = '{STOCK}' AND LOCATE('.', {v}) > 0, "
        f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {v})), {v})"
    )


def _keys_sql() -> str:
    return ", ".join(f"'{k}'" for k in STOCK_KEYS)


def bucket_sql(alias: str = "m") -> str:
    return f"LEAST((CAST({alias}.group_id AS SIGNED) - :g0) DIV :w, :kmax)"


def member_checksum_sql(base_prefix: str, excluded: str) -> str:
    """Per bucket of one blog: synced members, checksum of (group, post type, product type), ambiguous members."""
    synced = f"(m.state = 'linked' AND NOT {excluded})"
    return (
        f"SELECT {bucket_sql()} AS bucket, SUM({synced}) AS n, "
        f"BIT_XOR(IF({synced}, CRC32(CONCAT_WS('#', m.group_id, m.post_type, m.product_type)), 0)) AS x, "
        f"SUM(m.state = 'ambiguous' AND NOT {excluded}) AS f "
        f"FROM {table(base_prefix, 'syncd_member')} m "
        f"WHERE m.blog_id = :b AND m.group_id IS NOT NULL GROUP BY bucket ORDER BY NULL"
    )


def derived_flag_sql() -> str:
    """1 when a meta row shows derived data that cannot agree with the product's own values (a
    candidate, confirmed by check_products): status vs lookup row vs ``outofstock`` term; quantity
    and manage stock vs the lookup row; the status rule on the lookup row's quantity and backorders."""
    q = "TRUNCATE(CAST(COALESCE(pm.meta_value, '0') AS DECIMAL(65,30)), 0)"
    rule = "IF(l.stock_quantity > :notify, 'instock', IF(pm.meta_value <> 'no', 'onbackorder', 'outofstock'))"
    return (
        "CASE pm.meta_key "
        f"WHEN '{STATUS}' THEN (l.product_id IS NULL AND m.post_id IS NOT NULL) "
        "OR (l.product_id IS NOT NULL AND NOT (l.stock_status <=> pm.meta_value)) "
        "OR (:oos > 0 AND (pm.meta_value = 'outofstock') <> (tr.object_id IS NOT NULL)) "
        f"WHEN '{STOCK}' THEN l.stock_quantity IS NOT NULL AND l.stock_quantity <> {q} "
        # get_data_for_lookup_table(): stock_quantity is set only for exactly 'yes' (not 'Yes').
        f"WHEN '{MANAGE}' THEN l.product_id IS NOT NULL "
        "AND (BINARY pm.meta_value = 'yes') <> (l.stock_quantity IS NOT NULL) "
        f"WHEN '{BACKORDERS}' THEN l.stock_quantity IS NOT NULL AND l.stock_status <> {rule} "
        "ELSE 0 END"
    )


def meta_checksum_sql(base_prefix: str, prefix: str, excluded: str) -> str:
    """Per bucket of one blog, over one meta_id slice: checksummed rows, their BIT_XOR, derived flags.

    Rows of products that are not synced members land in bucket -1 (flags only). Joins use the
    primary keys of the member, lookup and term-relationship tables (batched key access)."""
    synced = f"(m.state = 'linked' AND NOT {excluded})"
    not_ignored = f"NOT (m.post_id IS NOT NULL AND (m.state NOT IN ('linked', 'ambiguous') OR {excluded}))"
    crc = f"CRC32(CONCAT_WS('#', m.group_id, pm.meta_key, {normalised_value_sql()}, ISNULL(pm.meta_value)))"
    return (
        f"SELECT IF({synced}, {bucket_sql()}, -1) AS bucket, SUM({synced}) AS n, "
        f"BIT_XOR(IF({synced}, {crc}, 0)) AS x, SUM({not_ignored} AND ({derived_flag_sql()})) AS f "
        f"FROM {table(prefix, 'postmeta')} pm "
        f"LEFT JOIN {table(base_prefix, 'syncd_member')} m ON m.blog_id = :b AND m.post_id = pm.post_id "
        f"AND m.group_id IS NOT NULL "
        f"LEFT JOIN {table(prefix, 'wc_product_meta_lookup')} l ON l.product_id = pm.post_id "
        f"LEFT JOIN {table(prefix, 'term_relationships')} tr ON tr.object_id = pm.post_id "
        f"AND tr.term_taxonomy_id = :oos "
        f"WHERE pm.meta_key IN ({_keys_sql()}) AND pm.meta_id >= :lo AND pm.meta_id < :hi "
        f"GROUP BY bucket ORDER BY NULL"
    )


#: Array type code of unsigned 32-bit numbers (the packed checksum values).
U32 = "I" if array("I").itemsize == 4 else "L"


def packed_sql(per_bucket: str) -> str:
    """The rows of a per-bucket aggregate (``bucket, n, x, f``) as one row: their count, and one
    text of four 8-digit hex numbers per row (bucket + 1, then n, x, f), in bucket order.

    Up to MAX_BUCKETS rows per statement, parsed one by one by the pure-Python driver, cost ~8 us
    each (a third of the audit's CPU at 20,000 SKUs x 10 blogs with 10,000 buckets); one hex text
    is turned into an array in C. Every value fits 32 bits: a bucket number (bucket -1: products
    that are not synced members), a count of rows of one bucket, an XOR of CRC32s; the server
    formats two of them at a time (two 64-bit numbers of 16 digits: fewer function calls per
    bucket). The count detects a text cut short by ``group_concat_max_len``."""
    high_low = (
        ("t.bucket + 1", "LEAST(IFNULL(t.n, 0), 4294967295)"),
        ("IFNULL(t.x, 0)", "LEAST(IFNULL(t.f, 0), 4294967295)"),
    )
    cols = ", ".join(f"LPAD(HEX((({hi}) << 32) | {lo}), 16, '0')" for hi, lo in high_low)
    return f"SELECT COUNT(*), GROUP_CONCAT({cols} ORDER BY t.bucket SEPARATOR '') FROM ({per_bucket}) t"


def unpack(row: Sequence[Any]) -> array:
    """A :func:`packed_sql` row as one flat array ``bucket + 1, n, x, f, bucket + 1, n, ...``."""
    count, text = int(row[0] or 0), row[1]
    if isinstance(text, bytes | bytearray):
        text = text.decode("ascii")
    values = array(U32, bytes.fromhex(text) if text else b"")
    if sys.byteorder == "little":
        values.byteswap()  # the hex digits are big-endian
    if len(values) != 4 * count:
        raise RuntimeError(
            f"checksum result truncated ({len(values)} values for {count} buckets): group_concat_max_len"
        )
    return values


def unlinked_flagged_sql(base_prefix: str, prefix: str, excluded: str) -> str:
    """Products of one blog that are not synced members and whose derived data looks wrong."""
    return (
        f"SELECT DISTINCT pm.post_id FROM {table(prefix, 'postmeta')} pm "
        f"LEFT JOIN {table(base_prefix, 'syncd_member')} m ON m.blog_id = :b AND m.post_id = pm.post_id "
        f"AND m.group_id IS NOT NULL "
        f"LEFT JOIN {table(prefix, 'wc_product_meta_lookup')} l ON l.product_id = pm.post_id "
        f"LEFT JOIN {table(prefix, 'term_relationships')} tr ON tr.object_id = pm.post_id "
        f"AND tr.term_taxonomy_id = :oos "
        f"WHERE pm.meta_key IN ({_keys_sql()}) "
        f"AND (m.post_id IS NULL OR (m.state = 'ambiguous' AND NOT {excluded})) "
        f"AND ({derived_flag_sql()}) ORDER BY pm.post_id"
    )


# --------------------------------------------------------------------------- scope
@dataclass
class Scope:
    """What an audit or reconcile run covers."""

    base: str
    blogs: dict[int, Blog]
    exclude_skus: tuple[str, ...] = ()
    #: Blogs whose translations share stock (catalog.shares_stock): compared as components.
    sharing: frozenset[int] = frozenset()

    def excluded_sql(self, column: str = "m.sku") -> tuple[str, dict[str, str]]:
        sql, params = exclusion_condition(column, self.exclude_skus)
        return f"({sql} OR {column.split('.')[0]}.state = 'excluded')", params

    @property
    def blog_ids(self) -> list[int]:
        return sorted(self.blogs)


def scope_for(conn: sa.Connection, config: Config) -> Scope:
    """Usable blogs selected by ``[blogs]``, and ``[sync] exclude_skus``."""
    from syncd.network import discover

    base = config.database.table_prefix
    network = discover(conn, base)
    blogs = {b.blog_id: b for b in network.usable_blogs() if config.blogs.selects(b.blog_id)}
    sharing = frozenset(b for b, blog in blogs.items() if shares_stock(blog, config.blogs.for_blog(b)))
    return Scope(base, blogs, tuple(config.sync.exclude_skus), sharing)


# --------------------------------------------------------------------------- reading groups
def _in(name: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    names = [f"{name}{i}" for i in range(len(values))]
    return ", ".join(f":{n}" for n in names), dict(zip(names, values, strict=True))


def read_members(
    conn: sa.Connection, scope: Scope, ranges: Sequence[tuple[int, int]], *, lock: bool = False
) -> dict[int, GroupState]:
    """Member rows of the groups whose ids fall in ``ranges`` (inclusive), on the scope's blogs.

    Excluded members are left out; ambiguous ones are kept apart (reported, never written)."""
    if not ranges or not scope.blogs:
        return {}
    excl, params = scope.excluded_sql()
    conds = []
    for i, (lo, hi) in enumerate(ranges):
        conds.append(f"m.group_id BETWEEN :rlo{i} AND :rhi{i}")
        params[f"rlo{i}"], params[f"rhi{i}"] = lo, hi
    # The blogs are filtered here, not in SQL: ranges x blog ids can exceed the optimizer's index
    # dive limit, and the estimate then picked a full scan of the member table (0.7 s a call).
    rows = conn.execute(
        sa.text(
            f"SELECT m.group_id, m.blog_id, m.post_id, m.sku, m.lang, m.post_type, m.product_type, "
            f"m.parent_id, m.state FROM {table(scope.base, 'syncd_member')} m FORCE INDEX (grp) "
            f"WHERE ({' OR '.join(conds)}) "
            f"AND m.state IN ('linked', 'ambiguous') AND NOT {excl} "
            f"ORDER BY m.group_id, m.blog_id, m.post_id" + (" LOCK IN SHARE MODE" if lock else "")
        ),
        params,
    )
    groups: dict[int, GroupState] = {}
    for gid, b, p, sku, lang, ptype, prodtype, parent, state in rows:
        if int(b) not in scope.blogs:
            continue
        g = groups.setdefault(int(gid), GroupState(int(gid), []))
        mv = MemberValues(int(b), int(p), sku, lang or "", ptype, prodtype or "", int(parent or 0), state)
        (g.members if state == "linked" else g.ambiguous).append(mv)
    return groups


def close_components(
    conn: sa.Connection, scope: Scope, groups: dict[int, GroupState]
) -> dict[int, GroupState]:
    """``groups`` extended by every link group reachable through shared translations (on the
    scope's sharing blogs), and each component merged into one GroupState, as the daemon's
    planner walks it (a few rounds: links and translations form small components)."""
    if not scope.sharing:
        return groups
    every = dict(groups)
    edges: list[tuple[int, int]] = []
    checked: set[Key] = set()
    for _ in range(6):
        ask = {m.key for g in every.values() for m in g.members if m.blog_id in scope.sharing} - checked
        if not ask:
            break
        checked |= ask
        group_of = {m.key: gid for gid, g in every.items() for m in g.members}
        found = translation_edges(conn, scope.base, scope.blogs, ask)
        edges += [(group_of[k], gid) for k, gid in found]
        missing = sorted({gid for _k, gid in found} - set(every))
        if missing:
            every.update(read_members(conn, scope, [(g, g) for g in missing]))
    out: dict[int, GroupState] = {}
    for root, ids in components(every, [(a, b) for a, b in edges if b in every]).items():
        if len(ids) == 1:
            out[root] = every[root]
            continue
        parts = [every[g] for g in ids]
        out[root] = GroupState(
            root,
            sorted((m for g in parts for m in g.members), key=lambda m: m.key),
            sorted((m for g in parts for m in g.ambiguous), key=lambda m: m.key),
            tuple(ids),
        )
    return out


def read_values(conn: sa.Connection, scope: Scope, groups: Iterable[GroupState]) -> None:
    """Fill in each member's stock meta (unlocked read) and whether a variation's parent manages stock."""
    by_blog: dict[int, list[MemberValues]] = {}
    for g in groups:
        for m in (*g.members, *g.ambiguous):
            by_blog.setdefault(m.blog_id, []).append(m)
    for blog_id, members in sorted(by_blog.items()):
        blog = scope.blogs[blog_id]
        ids = sorted({m.post_id for m in members} | {m.parent_id for m in members if m.parent_id})
        meta = read_meta(conn, blog, ids, STOCK_KEYS)
        for m in members:
            m.meta = meta.get(m.post_id, {})
            if m.parent_id:
                m.parent_manages = manages_stock((meta.get(m.parent_id, {}).get(MANAGE) or [None])[0])


def read_meta(
    conn: sa.Connection, blog: Blog, post_ids: Sequence[int], keys: Sequence[str]
) -> dict[int, dict[str, list[str | None]]]:
    """``post_id -> key -> values`` in meta_id order (the first is what WooCommerce reads)."""
    out: dict[int, dict[str, list[str | None]]] = {}
    ids = sorted(set(post_ids))
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        id_in, params = _in("p", part)
        key_in, kparams = _in("k", list(keys))
        params.update(kparams)
        for pid, key, value in conn.execute(
            sa.text(
                f"SELECT post_id, meta_key, meta_value FROM {table(blog.prefix, 'postmeta')} "
                f"WHERE post_id IN ({id_in}) AND meta_key IN ({key_in}) ORDER BY post_id, meta_id"
            ),
            params,
        ):
            out.setdefault(int(pid), {}).setdefault(key, []).append(value)
    return out


# --------------------------------------------------------------------------- the report
@dataclass
class Report:
    """What an audit found. Lists hold at most REPORT_LIMIT entries; counts are exact."""

    blogs: list[int] = field(default_factory=list)
    members: dict[int, int] = field(default_factory=dict)  # blog -> synced members
    buckets: int = 0
    width: int = 1
    examined_groups: int = 0
    drift: list[dict[str, Any]] = field(default_factory=list)
    derived: list[dict[str, Any]] = field(default_factory=list)
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    single_blog: list[dict[str, Any]] = field(default_factory=list)
    type_mismatch: list[dict[str, Any]] = field(default_factory=list)
    unsafe: list[dict[str, Any]] = field(default_factory=list)
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "drifted_groups": 0,
            "in_flight": 0,
            "derived": 0,
            "ambiguous": 0,
            "single_blog": 0,
            "type_mismatch": 0,
            "unsafe": 0,
        }
    )
    field_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    seconds: float = 0.0
    #: True when syncd is not installed: link groups built in temporary tables (syncd.preview).
    preview: bool = False
    #: Synced product fields (``[fields]`` groups not "off") whose members differ (syncd.fields.audit).
    synced_fields: list[dict[str, Any]] = field(default_factory=list)
    synced_fields_count: int = 0

    def add(self, kind: str, entry: dict[str, Any]) -> None:
        self.counts[kind] += 1
        target: list[dict[str, Any]] = getattr(self, "drift" if kind == "drifted_groups" else kind)
        if len(target) < REPORT_LIMIT:
            target.append(entry)

    @property
    def drift_found(self) -> bool:
        return bool(self.counts["drifted_groups"] or self.counts["derived"] or self.synced_fields_count)

    def exit_status(self) -> int:
        code = EXIT_DRIFT if self.drift_found else 0
        if self.counts["unsafe"]:
            code |= EXIT_UNSAFE
        return code

    def document(self) -> dict[str, Any]:
        return {
            "blogs": self.blogs,
            "members": {str(b): n for b, n in sorted(self.members.items())},
            "buckets": self.buckets,
            "bucket_width": self.width,
            "examined_groups": self.examined_groups,
            "counts": self.counts,
            "field_counts": self.field_counts,
            "drift": self.drift,
            "derived": self.derived,
            "ambiguous": self.ambiguous,
            "single_blog": self.single_blog,
            "type_mismatch": self.type_mismatch,
            "unsafe": self.unsafe,
            "in_flight": self.in_flight,
            "limit": REPORT_LIMIT,
            "seconds": round(self.seconds, 3),
            "not_installed": self.preview,
            "synced_fields": {"count": self.synced_fields_count, "differing": self.synced_fields},
            "exit_status": self.exit_status(),
        }


def drift_entry(group: GroupState, diffs: Sequence[FieldDiff]) -> dict[str, Any]:
    return {
        "group": group.group_id,
        "sku": group.sku,
        "lang": group.lang,
        "fields": {
            d.field: [{"blog": k[0], "post": k[1], "value": v} for k, v in sorted(d.values.items())]
            for d in diffs
        },
    }


def single_entry(g: GroupState) -> dict[str, Any]:
    m = g.members[0]
    return {"group": g.group_id, "sku": m.sku, "lang": m.lang, "blog": m.blog_id, "post": m.post_id}


def disagreement_entry(d: derived.Disagreement, sku: str = "") -> dict[str, Any]:
    return {
        "blog": d.blog_id,
        "post": d.product_id,
        "sku": sku,
        "field": d.field,
        "expected": d.expected,
        "actual": d.actual,
    }


# --------------------------------------------------------------------------- the auditor
@dataclass
class Chunk:
    """Groups examined row by row together, with what was found in them."""

    groups: list[GroupState]
    drifted: dict[int, list[FieldDiff]] = field(default_factory=dict)  # group id -> differing fields
    pending: dict[int, int] = field(
        default_factory=dict
    )  # drifted group id -> captured changes not yet applied
    disagreements: list[derived.Disagreement] = field(default_factory=list)
    unsafe: list[tuple[MemberValues, str]] = field(default_factory=list)


@dataclass
class _BlogScan:
    blog_id: int
    n_m: array  # per bucket: synced members
    x_m: array  # per bucket: checksum of (group, post type, product type)
    n_v: array  # per bucket: stock meta rows of synced members
    x_v: array  # per bucket: their checksum
    members: int = 0
    examine: set[int] = field(default_factory=set)  # buckets with an ambiguous member or a derived flag
    flagged: set[int] = field(default_factory=set)  # buckets with a derived flag on this blog
    flagged_unlinked: bool = False  # a product outside the groups looks wrong


def _spread(packed: array, n: array, x: array, ordinal: array, *, first: bool) -> list[tuple[int, int]]:
    """Add one statement's packed ``(bucket + 1, n, x, f)`` values into the per-bucket arrays (n
    summed, x XORed; ``first``: the arrays are still zero). Returns the (bucket, f) pairs with a
    non-zero f, bucket -1 included. ``ordinal`` is ``1..k``: a result with every bucket in order
    (the usual case: every group has a member on the blog) is copied in C."""
    buckets, ns, xs, fs = packed[0::4], packed[1::4], packed[2::4], packed[3::4]
    flags = [(buckets[j] - 1, f) for j, f in enumerate(fs) if f] if any(fs) else []
    if buckets and buckets[0] == 0:  # bucket -1 (first): products that are not synced members
        buckets, ns, xs = buckets[1:], ns[1:], xs[1:]
    if first and buckets == ordinal:
        n[:] = ns
        x[:] = xs
        return flags
    for b, nv, xv in zip(buckets, ns, xs, strict=True):
        if b:  # never bucket -1 (only first, in bucket order; but never into the last bucket)
            n[b - 1] += nv
            x[b - 1] ^= xv
    return flags


#: bytearray.translate table for the per-bucket count of blogs with members (0, 1, 2 = several): + 1
_ONE_MORE_BLOG = bytes([1, 2] + [2] * 254)


class Auditor:
    """Checksum pass then row-by-row examination; shared by audit and reconcile (read-only)."""

    def __init__(
        self,
        engine: sa.Engine,
        scope: Scope,
        *,
        progress: Progress | None = None,
        chunk_groups: int = CHUNK_GROUPS,
        max_buckets: int = MAX_BUCKETS,
        slice_rows: int = SCAN_SLICE,
        workers: int = SCAN_WORKERS,
    ) -> None:
        self.engine = engine
        self.scope = scope
        self.progress = progress or Progress("audit", enabled=False)
        self.chunk_groups = chunk_groups
        self.max_buckets = max_buckets
        self.slice_rows = slice_rows
        self.workers = workers
        self.report = Report(blogs=scope.blog_ids)
        self.g0 = 0
        self.width = 1
        self.nbuckets = 0
        self._flagged_unlinked: dict[int, bool] = {}
        self._flagged: dict[
            int, set[int]
        ] = {}  # bucket -> blogs where the set-based derived check found something
        self._lone = bytearray(0)
        self._ordinal = array(U32)
        self._components_seen: set[int] = set()

    # -- pass 1: checksums ------------------------------------------------------------------
    def checksum(self) -> list[int]:
        """Buckets to examine row by row (sorted)."""
        scope = self.scope
        member = table(scope.base, "syncd_member")
        with self.engine.connect() as conn:
            lo, hi, packet = conn.execute(
                sa.text(
                    f"SELECT MIN(group_id), MAX(group_id), @@max_allowed_packet FROM {member} "
                    "WHERE group_id IS NOT NULL"
                )
            ).one()
            conn.rollback()
        if lo is None or not scope.blogs:
            return []
        self.g0 = int(lo)
        span = int(hi) - int(lo) + 1
        max_buckets = min(self.max_buckets, max(1024, (int(packet or 0) - 65536) // 32))
        self.width = max(1, math.ceil(span / max_buckets))
        self.nbuckets = math.ceil(span / self.width)
        self.report.buckets, self.report.width = self.nbuckets, self.width
        k = self.nbuckets
        self._ordinal = array(U32, range(1, k + 1))
        # n_m, x_m, n_v, x_v of the first blog (by id) with members in the bucket
        ref = [array(U32, bytes(4 * k)) for _ in range(4)]
        have = bytearray(k)  # 1: ref is set
        n_have = 0
        examine = bytearray(k)
        self._lone = bytearray(k)  # 1: members on exactly one blog (so far), 2: on several
        self.progress.stage("audit: checksums", len(scope.blogs))
        # Blogs are scanned in parallel (each on its own connection), compared in blog id order.
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(scope.blogs)))) as pool:
            for scan in pool.map(self._scan_blog, scope.blog_ids):
                self.progress.advance(1, f"blog {scan.blog_id}")
                self.report.members[scan.blog_id] = scan.members
                if scan.flagged_unlinked:
                    self._flagged_unlinked[scan.blog_id] = True
                for i in scan.examine:
                    examine[i] = 1
                for i in scan.flagged:
                    self._flagged.setdefault(i, set()).add(scan.blog_id)
                cols = (scan.n_m, scan.x_m, scan.n_v, scan.x_v)
                if n_have in (0, k) and 0 not in scan.n_m:
                    # The usual case, in C: this blog has members in every bucket, and so far
                    # either no blog or every bucket has a reference.
                    self._lone = self._lone.translate(_ONE_MORE_BLOG)
                    if n_have == 0:
                        for r, c in zip(ref, cols, strict=True):
                            r[:] = c
                        have, n_have = bytearray(b"\x01") * k, k
                        continue
                    for r, c in zip(ref, cols, strict=True):
                        if r != c:
                            for i in [i for i, (a, b) in enumerate(zip(r, c, strict=True)) if a != b]:
                                examine[i] = 1
                    continue
                nm, xm, nv, xv = cols
                rnm, rxm, rnv, rxv = ref
                lone = self._lone
                for i in range(k):
                    if not nm[i] and not nv[i]:
                        continue  # no member of this blog in the bucket
                    if nm[i]:
                        lone[i] = min(2, lone[i] + 1)
                    if not have[i]:
                        rnm[i], rxm[i], rnv[i], rxv[i] = nm[i], xm[i], nv[i], xv[i]
                        have[i] = 1
                        n_have += 1
                    elif rnm[i] != nm[i] or rxm[i] != xm[i] or rnv[i] != nv[i] or rxv[i] != xv[i]:
                        examine[i] = 1
        for gid in self.translation_candidates():
            examine[min((gid - self.g0) // self.width, k - 1)] = 1
        return [i for i in range(k) if examine[i]]

    def translation_candidates(self) -> list[int]:
        """Groups with a translation on a sharing blog that disagrees with it: per-group
        checksums cannot see drift between two groups that each agree with themselves."""
        out: list[int] = []
        with self.engine.connect() as conn:
            for blog_id in sorted(self.scope.sharing):
                sql = drift_candidates_sql(
                    self.scope.base, self.scope.blogs[blog_id].prefix, normalised_value_sql()
                )
                out += [int(r[0]) for r in conn.execute(sa.text(sql), {"b": blog_id}) if r[0] is not None]
            conn.rollback()
        return out

    def _scan_blog(self, blog_id: int) -> _BlogScan:
        """One blog's bucket checksums: its member rows, then its stock meta (one statement per slice)."""
        scope = self.scope
        blog = scope.blogs[blog_id]
        k = self.nbuckets
        excl, xparams = scope.excluded_sql()
        scan = _BlogScan(blog_id, *(array(U32, bytes(4 * k)) for _ in range(4)))
        base_params = {"b": blog_id, "g0": self.g0, "w": self.width, "kmax": k - 1, **xparams}
        with self.engine.connect() as conn:
            # packed_sql: 32 characters per bucket (k + 1 rows at most per statement)
            conn.execute(sa.text("SET SESSION group_concat_max_len = :n"), {"n": 32 * (k + 2)})
            row = conn.execute(sa.text(packed_sql(member_checksum_sql(scope.base, excl))), base_params).one()
            for i, _amb in _spread(unpack(row), scan.n_m, scan.x_m, self._ordinal, first=True):
                scan.examine.add(i)
            scan.members = sum(scan.n_m)
            oos = _outofstock_tt(conn, blog)
            sql = sa.text(packed_sql(meta_checksum_sql(scope.base, blog.prefix, excl)))
            for n_slice, (lo_id, hi_id) in enumerate(self._meta_bounds(conn, blog)):
                params = {
                    **base_params,
                    "lo": lo_id,
                    "hi": hi_id,
                    "notify": blog.notify_no_stock_amount,
                    "oos": oos,
                }
                packed = unpack(conn.execute(sql, params).one())
                for i, _flags in _spread(packed, scan.n_v, scan.x_v, self._ordinal, first=n_slice == 0):
                    if i < 0:
                        scan.flagged_unlinked = True
                    else:
                        scan.examine.add(i)
                        scan.flagged.add(i)
            conn.rollback()
        return scan

    def _meta_bounds(self, conn: sa.Connection, blog: Blog) -> list[tuple[int, int]]:
        lo, hi = conn.execute(
            sa.text(f"SELECT MIN(meta_id), MAX(meta_id) FROM {table(blog.prefix, 'postmeta')}")
        ).one()
        if lo is None:
            return []
        out = []
        start = int(lo)
        while start <= int(hi):
            out.append((start, start + self.slice_rows))
            start += self.slice_rows
        return out

    # -- pass 2: row by row -------------------------------------------------------------------
    def bucket_ranges(self, buckets: Sequence[int]) -> Iterator[list[tuple[int, int]]]:
        """Group-id ranges of the buckets, ``chunk_groups`` groups (at least one bucket) per chunk."""
        per_chunk = max(1, self.chunk_groups // self.width)
        for start in range(0, len(buckets), per_chunk):
            ranges: list[tuple[int, int]] = []
            for b in buckets[start : start + per_chunk]:
                lo = self.g0 + b * self.width
                hi = lo + self.width - 1 if b < self.nbuckets - 1 else 2**63 - 1
                if ranges and ranges[-1][1] + 1 == lo:
                    ranges[-1] = (ranges[-1][0], hi)
                else:
                    ranges.append((lo, hi))
            yield ranges

    def examine(
        self, conn: sa.Connection, ranges: Sequence[tuple[int, int]], *, check_drifted: bool = True
    ) -> Chunk:
        """Read the groups in ``ranges`` row by row, compare, and check their derived data (that of
        drifted groups only with ``check_drifted``: reconcile rewrites and refreshes those anyway)."""
        groups = close_components(conn, self.scope, read_members(conn, self.scope, ranges))
        for gid in [gid for gid, g in groups.items() if g.group_ids]:
            if gid in self._components_seen:  # a component reached from an earlier chunk too
                del groups[gid]
            self._components_seen.add(gid)
        read_values(conn, self.scope, groups.values())
        chunk = Chunk(groups=[groups[g] for g in sorted(groups)])
        for g in chunk.groups:
            diffs, unsafe = compare_group(g)
            if diffs:
                chunk.drifted[g.group_id] = diffs
            chunk.unsafe.extend(unsafe)
        by_blog: dict[int, set[int]] = {}
        for g in chunk.groups:
            bucket = min((g.group_id - self.g0) // self.width, self.nbuckets - 1) if self.nbuckets else -1
            drifted = g.group_id in chunk.drifted and check_drifted
            flagged = self._flagged.get(bucket, set())
            for m in (*g.members, *g.ambiguous):
                # the members of a drifted group; elsewhere only where the scan saw a suspect product
                if drifted or m.blog_id in flagged:
                    by_blog.setdefault(m.blog_id, set()).add(m.post_id)
        for blog_id, ids in sorted(by_blog.items()):
            chunk.disagreements.extend(_check(conn, self.scope.blogs[blog_id], ids))
        # Captured changes not applied yet, of every group that looks wrong in any way: such a
        # group is in flight (the daemon is on its way), not drift, in every section.
        suspect = {(d.blog_id, d.product_id) for d in chunk.disagreements}
        looked = [
            g
            for g in chunk.groups
            if g.group_id in chunk.drifted or any(m.key in suspect for m in (*g.members, *g.ambiguous))
        ]
        if looked:
            chunk.pending = pending_changes(conn, self.scope.base, looked)
        return chunk

    def unlinked_disagreements(self, conn: sa.Connection) -> Iterator[tuple[int, list[derived.Disagreement]]]:
        """Derived disagreements of products that are not synced members, per flagged blog."""
        excl, xparams = self.scope.excluded_sql()
        for blog_id in sorted(self._flagged_unlinked):
            blog = self.scope.blogs[blog_id]
            params = {
                "b": blog_id,
                "notify": blog.notify_no_stock_amount,
                "oos": _outofstock_tt(conn, blog),
                **xparams,
            }
            ids = [
                int(r[0])
                for r in conn.execute(
                    sa.text(unlinked_flagged_sql(self.scope.base, blog.prefix, excl)), params
                )
            ]
            for start in range(0, len(ids), 500):
                found = _check(conn, blog, ids[start : start + 500])
                if found:
                    yield blog_id, found

    def single_blog_groups(self, conn: sa.Connection, examined: Sequence[int]) -> Iterator[dict[str, Any]]:
        """Groups whose synced members are all on one blog: those of the buckets with members on one
        blog only (which checksums cannot tell apart), read from the member table; those of the
        examined buckets are found by :meth:`record`."""
        seen = set(examined)
        lone = [i for i in range(len(self._lone)) if self._lone[i] == 1 and i not in seen]
        for ranges in self.bucket_ranges(lone):
            for g in read_members(conn, self.scope, ranges).values():
                if g.members and len(g.blogs) == 1:
                    yield single_entry(g)

    # -- the whole audit ----------------------------------------------------------------------
    def run(self, on_chunk: Callable[[Chunk], None] | None = None) -> Report:
        started = time.monotonic()
        buckets = self.checksum()
        report = self.report
        chunks = list(self.bucket_ranges(buckets))
        self.progress.stage("audit: examining", len(chunks))
        with self.engine.connect() as conn:
            for ranges in chunks:
                chunk = self.examine(conn, ranges)
                conn.rollback()
                self.record(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
                self.progress.advance(1)
            for _blog_id, found in self.unlinked_disagreements(conn):
                for d in found:
                    report.add("derived", disagreement_entry(d))
            for entry in self.single_blog_groups(conn, buckets):
                report.add("single_blog", entry)
            conn.rollback()
        report.seconds = time.monotonic() - started
        return report

    def record(self, chunk: Chunk) -> None:
        report = self.report
        report.examined_groups += len(chunk.groups)
        skus = {m.key: m.sku for g in chunk.groups for m in (*g.members, *g.ambiguous)}
        for g in chunk.groups:
            diffs = chunk.drifted.get(g.group_id)
            if diffs and chunk.pending.get(g.group_id):
                # Captured changes not applied yet: the daemon is on its way (or stopped: syncd status).
                entry = drift_entry(g, diffs)
                entry["pending_changes"] = chunk.pending[g.group_id]
                report.add("in_flight", entry)
            elif diffs:
                report.add("drifted_groups", drift_entry(g, diffs))
                for d in diffs:
                    report.field_counts[d.field] += 1
            if g.ambiguous:
                by_blog: dict[int, list[int]] = {}
                for m in g.ambiguous:
                    by_blog.setdefault(m.blog_id, []).append(m.post_id)
                for blog_id, posts in sorted(by_blog.items()):
                    report.add(
                        "ambiguous",
                        {
                            "group": g.group_id,
                            "sku": g.ambiguous[0].sku,
                            "lang": g.lang,
                            "blog": blog_id,
                            "posts": posts,
                        },
                    )
            if g.members and len(g.blogs) == 1:
                report.add("single_blog", single_entry(g))
            if types_differ(g):
                report.add(
                    "type_mismatch",
                    {
                        "group": g.group_id,
                        "sku": g.sku,
                        "lang": g.lang,
                        "members": [
                            {"blog": m.blog_id, "post": m.post_id, "type": m.type_label} for m in g.members
                        ],
                    },
                )
        for m, reason in chunk.unsafe:
            report.add("unsafe", {"blog": m.blog_id, "post": m.post_id, "sku": m.sku, "reason": reason})
        in_flight = {
            m.key for g in chunk.groups if chunk.pending.get(g.group_id) for m in (*g.members, *g.ambiguous)
        }
        for d in chunk.disagreements:
            if (d.blog_id, d.product_id) in in_flight:
                continue  # its group's captured changes will rewrite it (reported under in_flight)
            report.add("derived", disagreement_entry(d, skus.get((d.blog_id, d.product_id), "")))


def pending_changes(conn: sa.Connection, base_prefix: str, groups: Sequence[GroupState]) -> dict[int, int]:
    """Per group: captured change rows of its members that no daemon has applied yet."""
    owner: dict[Key, int] = {m.key: g.group_id for g in groups for m in (*g.members, *g.ambiguous)}
    if not owner:
        return {}
    by_blog: dict[int, list[int]] = {}
    for b, p in owner:
        by_blog.setdefault(b, []).append(p)
    parts, params = [], {}
    for i, (b, posts) in enumerate(sorted(by_blog.items())):
        names, pp = _in(f"pc{i}_", sorted(posts))
        params.update(pp)
        params[f"pb{i}"] = b
        parts.append(f"(blog_id = :pb{i} AND post_id IN ({names}))")
    out: dict[int, int] = {}
    for b, p, n in conn.execute(
        sa.text(
            f"SELECT blog_id, post_id, COUNT(*) FROM {table(base_prefix, 'syncd_change')} "
            f"WHERE {' OR '.join(parts)} GROUP BY blog_id, post_id"
        ),
        params,
    ):
        gid = owner[(int(b), int(p))]
        out[gid] = out.get(gid, 0) + int(n)
    return out


def _outofstock_tt(conn: sa.Connection, blog: Blog) -> int:
    tt = conn.execute(
        sa.text(
            f"SELECT tt.term_taxonomy_id FROM {table(blog.prefix, 'term_taxonomy')} tt "
            f"JOIN {table(blog.prefix, 'terms')} t ON t.term_id = tt.term_id "
            "WHERE tt.taxonomy = 'product_visibility' AND t.name = 'outofstock' ORDER BY tt.term_taxonomy_id LIMIT 1"
        )
    ).scalar_one_or_none()
    return int(tt or 0)


def _check(conn: sa.Connection, blog: Blog, ids: Iterable[int]) -> list[derived.Disagreement]:
    """check_products, minus what is not drift (products it must skip: trashed, not a product)."""
    out = []
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), 500):
        for d in derived.check_products(conn, blog, ordered[start : start + 500]):
            if d.field != "skipped":
                out.append(d)
    return out


# --------------------------------------------------------------------------- rendering
def render(report: Report, out: TextIO) -> None:
    doc = report.document()
    members = ", ".join(f"blog {b}: {n}" for b, n in sorted(report.members.items()))
    print(f"Audited blogs {', '.join(map(str, report.blogs)) or '-'} ({members or 'no members'})", file=out)
    if report.preview:
        print("  syncd is not installed: link groups built for this audit only, nothing created", file=out)
    elif not any(report.members.values()):
        print("  no link groups yet: run `syncd install` (or start the daemon) to build them", file=out)
    print(
        f"  {report.buckets} buckets of {report.width} group id(s); {report.examined_groups} groups read row by row; "
        f"{doc['seconds']} s",
        file=out,
    )
    c = report.counts
    if report.drift:
        print(f"\nGroups whose members differ: {c['drifted_groups']}", file=out)
        rows = []
        for g in report.drift:
            for name, values in g["fields"].items():
                shown = "  ".join(f"{v['blog']}:{v['post']}={_show(v['value'])}" for v in values)
                rows.append((g["sku"], g["lang"], name, shown))
        print_table(rows, ("SKU", "LANG", "FIELD", "BLOG:POST=VALUE"), out)
    if report.synced_fields:
        print(f"\nSynced product fields that differ: {report.synced_fields_count}", file=out)
        rows = [
            (
                f["sku"],
                f["group"],
                f["field"],
                "  ".join(f"{v['blog']}:{v['post']}={_show(v['value'])}" for v in f["values"]),
            )
            for f in report.synced_fields
        ]
        print_table(rows, ("SKU", "GROUP", "FIELD", "BLOG:POST=VALUE"), out)
    if report.derived:
        print(f"\nDerived data that disagrees with the quantity: {c['derived']}", file=out)
        print_table(
            [
                (d["blog"], d["post"] or "-", d["sku"], d["field"], _show(d["expected"]), _show(d["actual"]))
                for d in report.derived
            ],
            ("BLOG", "POST", "SKU", "FIELD", "EXPECTED", "ACTUAL"),
            out,
        )
    if report.in_flight:
        print(
            f"\nGroups that differ while captured changes wait to be applied (not counted as drift): {c['in_flight']}",
            file=out,
        )
        rows = []
        for g in report.in_flight:
            for name, values in g["fields"].items():
                shown = "  ".join(f"{v['blog']}:{v['post']}={_show(v['value'])}" for v in values)
                rows.append((g["sku"], g["lang"], name, g["pending_changes"], shown))
        print_table(rows, ("SKU", "LANG", "FIELD", "PENDING", "BLOG:POST=VALUE"), out)
    if report.unsafe:
        print(f"\nMembers with unusable stock values (left alone): {c['unsafe']}", file=out)
        print_table(
            [(u["blog"], u["post"], u["sku"], u["reason"]) for u in report.unsafe],
            ("BLOG", "POST", "SKU", "REASON"),
            out,
        )
    if report.ambiguous:
        print(f"\nAmbiguous SKUs (not synced on that blog): {c['ambiguous']}", file=out)
        print_table(
            [(a["sku"], a["lang"], a["blog"], " ".join(map(str, a["posts"]))) for a in report.ambiguous],
            ("SKU", "LANG", "BLOG", "POSTS"),
            out,
        )
    if report.type_mismatch:
        print(f"\nGroups whose product types differ: {c['type_mismatch']}", file=out)
        print_table(
            [
                (t["sku"], t["lang"], "  ".join(f"{m['blog']}:{m['post']}={m['type']}" for m in t["members"]))
                for t in report.type_mismatch
            ],
            ("SKU", "LANG", "BLOG:POST=TYPE"),
            out,
        )
    if report.single_blog:
        print(f"\nSKUs present on one blog only: {c['single_blog']}", file=out)
        print_table(
            [(s["sku"], s["lang"], s["blog"], s["post"]) for s in report.single_blog],
            ("SKU", "LANG", "BLOG", "POST"),
            out,
        )
    truncated = [k for k, n in c.items() if n > REPORT_LIMIT]
    if truncated:
        print(f"\n(lists show the first {REPORT_LIMIT} entries: {', '.join(truncated)})", file=out)
    verdict = "DRIFT FOUND" if report.drift_found else "no drift"
    print(f"\nResult: {verdict} (exit status {report.exit_status()})", file=out)


def _show(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --------------------------------------------------------------------------- entry point
def main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd audit [--json]``: report drift without writing. Exit status: see module EXIT_*.

    Works before ``syncd install`` too: the link groups are then built in temporary tables
    (:mod:`syncd.preview`) and nothing is created in the database."""
    from syncd.preview import PreviewRefused, open_engine

    out = out or sys.stdout
    try:
        engine, temporary = open_engine(
            config,
            pool_size=1,
            max_overflow=2,
            query_cache_size=QUERY_CACHE,
            connect_args={"read_timeout": 3600},
        )
    except PreviewRefused as exc:
        print(f"syncd audit: {exc}", file=sys.stderr)
        return EXIT_FATAL
    try:
        with engine.connect() as conn:
            scope = scope_for(conn, config)
        with Progress("audit") as bar:
            report = Auditor(engine, scope, progress=bar, workers=1 if temporary else SCAN_WORKERS).run()
        from syncd.fields.audit import field_drift

        report.synced_fields_count, report.synced_fields = field_drift(engine, config, scope, REPORT_LIMIT)
    finally:
        engine.dispose()
    report.preview = temporary
    log.info(
        "audit_finished",
        blogs=report.blogs,
        drifted_groups=report.counts["drifted_groups"],
        derived=report.counts["derived"],
        seconds=round(report.seconds, 2),
    )
    if getattr(args, "json", False):
        dump_json(report.document(), out)
    else:
        render(report, out)
    return report.exit_status()
