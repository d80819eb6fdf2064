"""Table snapshots and row-level diffs in the format of the recorded WooCommerce fixtures.

Used by the derived-data golden test and meant for reuse by the end-to-end golden test:

* :func:`snapshot` reads the product-related tables of one blog as **text**, exactly as the
  fixtures render values (a raw PyMySQL connection without type conversion: ``'7'``,
  ``'9.5000'``, NULL = ``None``);
* :func:`diff_snapshots` turns two snapshots into ``{table: {"primary_key", "inserted",
  "deleted", "updated"}}`` like a transition step's ``diff``;
* :func:`compare_diffs` compares an actual diff with an expected (recorded) one as multisets of
  *facts* keyed by natural keys, so AUTO_INCREMENT ids (``meta_id``, ``option_id``) never matter,
  volatile cells are compared loosely and ``_stock`` numerically; it returns readable mismatches;
* :func:`expected_in_scope` keeps the part of a recorded diff a stock-sync tool is responsible
  for (product posts and meta, product caches in options, terms, lookup tables);
* :func:`normalise_expected` = in scope minus the documented WooCommerce/syncd differences
  (docs/woocommerce-fidelity.md): what syncd must write for a recorded step;
* :func:`remap_diff` rewrites a recorded diff of one blog for another blog (post ids by SKU,
  table prefix), for comparing propagated changes on blogs B and C.

Typical use: ``before = snapshot(url, prefix)``; do the change; ``actual = diff_snapshots(before,
snapshot(url, prefix))``; ``compare_diffs(actual, normalise_expected(step_diff(step, prefix), ids),
volatile=volatile_cells(fx, prefix), volatile_options=volatile_option_names(fx))`` must be empty.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pymysql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
TRANSITIONS_DIR = ROOT / "schema" / "wordpress" / "transitions"

#: Per-blog tables a stock change can touch, with their primary keys.
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "posts": ("ID",),
    "postmeta": ("meta_id",),
    "options": ("option_id",),
    "term_relationships": ("object_id", "term_taxonomy_id"),
    "term_taxonomy": ("term_taxonomy_id",),
    "terms": ("term_id",),
    "termmeta": ("meta_id",),
    "wc_product_meta_lookup": ("product_id",),
    "wc_product_attributes_lookup": ("product_or_parent_id", "term_id", "product_id", "taxonomy"),
}
SCOPE_TABLES: tuple[str, ...] = tuple(PRIMARY_KEYS)
#: Cells that differ from run to run whatever the software: AUTO_INCREMENT ids of new rows.
ALWAYS_VOLATILE: dict[str, set[str]] = {
    "postmeta": {"meta_id"},
    "options": {"option_id"},
    "termmeta": {"meta_id"},
}
VOLATILE = "<volatile>"

#: Options a stock change is responsible for: WooCommerce's product caches and version transients.
PRODUCT_CACHE_OPTION_RE = re.compile(
    r"^_transient_(timeout_)?("
    r"wc_products_onsale|wc_featured_products|wc_outofstock_count|wc_low_stock_count|wc_term_counts|"
    r"(wc_product_children|wc_var_prices|wc_related|wc_child_has_weight|wc_child_has_dimensions)_\d+|"
    r"product-transient-version|product_query-transient-version)$"
)
VERSION_OPTIONS = ("_transient_product-transient-version", "_transient_product_query-transient-version")

Rows = dict[tuple[str, ...], dict[str, str | None]]
Snapshot = dict[str, Rows]  # table suffix -> primary key -> row (text)
Diff = dict[str, dict[str, Any]]  # table suffix -> {"primary_key", "inserted", "deleted", "updated"}


# --------------------------------------------------------------------------- fixtures


def load_transition(name: str) -> dict[str, Any]:
    """A transition file by name or number prefix (``'02'`` or ``'02-decrease-to-zero-outofstock'``)."""
    matches = sorted(TRANSITIONS_DIR.glob(f"{name}*.json"))
    if not matches:
        raise FileNotFoundError(f"no transition {name!r} in {TRANSITIONS_DIR}")
    return json.loads(matches[0].read_text())


def volatile_cells(fixture: Mapping[str, Any], prefix: str) -> dict[str, set[str]]:
    """``{table suffix: {column, ...}}`` from a fixture's ``volatile`` list (options cells are
    handled by name: see :func:`volatile_option_names`)."""
    out: dict[str, set[str]] = {t: set(c) for t, c in ALWAYS_VOLATILE.items()}
    for v in fixture.get("volatile", ()):
        suffix = _suffix(v["table"], prefix)
        if suffix is None or suffix == "options":
            continue
        out.setdefault(suffix, set()).add(v["column"])
    return out


def volatile_option_names(fixture: Mapping[str, Any]) -> set[str]:
    names: set[str] = set(VERSION_OPTIONS)
    for v in fixture.get("volatile", ()):
        names.update(v.get("option_names") or ())
    return names


def _suffix(table_name: str, prefix: str) -> str | None:
    if not table_name.startswith(prefix):
        return None
    suffix = table_name[len(prefix) :]
    return suffix if suffix in PRIMARY_KEYS else None


def step_diff(step: Mapping[str, Any], prefix: str) -> Diff:
    """A recorded step's diff restricted to the blog's in-scope tables, keyed by table suffix."""
    out: Diff = {}
    for name, d in step.get("diff", {}).items():
        suffix = _suffix(name, prefix)
        if suffix is not None:
            out[suffix] = d
    return out


# --------------------------------------------------------------------------- snapshots


def _raw_connect(url: str) -> pymysql.connections.Connection:
    u = make_url(url)
    kw: dict[str, Any] = {
        "user": u.username or "root",
        "password": u.password or "",
        "database": u.database,
        "charset": "utf8mb4",
        "conv": {},  # no conversion: every value comes back as the server's text rendering
        "autocommit": True,
    }
    sock = u.query.get("unix_socket")
    if sock:
        kw["unix_socket"] = sock if isinstance(sock, str) else sock[0]
    else:
        kw["host"] = u.host or "127.0.0.1"
        kw["port"] = int(u.port or 3306)
    return pymysql.connect(**kw)


def snapshot(url: str, prefix: str, tables: Iterable[str] = SCOPE_TABLES) -> Snapshot:
    """Every row of the blog's in-scope tables, as text, keyed by primary key."""
    conn = _raw_connect(url)
    out: Snapshot = {}
    try:
        with conn.cursor() as cur:
            for suffix in tables:
                pk = PRIMARY_KEYS[suffix]
                cur.execute(f"SELECT * FROM `{prefix}{suffix}`")  # noqa: S608 - test helper, fixed names
                cols = [d[0] for d in cur.description]
                rows: Rows = {}
                for raw in cur.fetchall():
                    row = {
                        c: (v.decode() if isinstance(v, bytes) else v) for c, v in zip(cols, raw, strict=True)
                    }
                    rows[tuple(str(row[k]) for k in pk)] = row
                out[suffix] = rows
    finally:
        conn.close()
    return out


def diff_snapshots(before: Snapshot, after: Snapshot) -> Diff:
    """Row-level difference, in the fixtures' ``diff`` format (context: natural keys)."""
    out: Diff = {}
    for suffix in sorted(set(before) | set(after)):
        b, a = before.get(suffix, {}), after.get(suffix, {})
        inserted = [a[k] for k in sorted(set(a) - set(b))]
        deleted = [b[k] for k in sorted(set(b) - set(a))]
        updated = []
        for k in sorted(set(a) & set(b)):
            old, new = b[k], a[k]
            changed = [c for c in new if old.get(c) != new.get(c)]
            if changed:
                updated.append(
                    {
                        "key": dict(zip(PRIMARY_KEYS[suffix], k, strict=True)),
                        "context": _context(suffix, new),
                        "old": {c: old.get(c) for c in changed},
                        "new": {c: new.get(c) for c in changed},
                    }
                )
        if inserted or deleted or updated:
            out[suffix] = {
                "primary_key": list(PRIMARY_KEYS[suffix]),
                "inserted": inserted,
                "deleted": deleted,
                "updated": updated,
            }
    return out


def _context(suffix: str, row: Mapping[str, Any]) -> dict[str, Any]:
    if suffix == "postmeta":
        return {"post_id": row.get("post_id"), "meta_key": row.get("meta_key")}
    if suffix == "termmeta":
        return {"term_id": row.get("term_id"), "meta_key": row.get("meta_key")}
    if suffix == "options":
        return {"option_name": row.get("option_name")}
    if suffix == "posts":
        return {"post_type": row.get("post_type"), "post_parent": row.get("post_parent")}
    return {}


def apply_diff_in_memory(state: Snapshot, diff: Diff) -> Snapshot:
    """``state`` with a recorded diff applied (updates by primary key), for expected final states."""
    out = {t: {k: dict(r) for k, r in rows.items()} for t, rows in state.items()}
    for suffix, d in diff.items():
        rows = out.setdefault(suffix, {})
        pk = PRIMARY_KEYS[suffix]
        for r in d.get("deleted", ()):
            rows.pop(tuple(str(r[k]) for k in pk), None)
        for r in d.get("inserted", ()):
            rows[tuple(str(r[k]) for k in pk)] = dict(r)
        for u in d.get("updated", ()):
            key = tuple(str(u["key"][k]) for k in pk)
            if key in rows:
                rows[key].update(u["new"])
    return out


# --------------------------------------------------------------------------- comparison


def _numeric(text: Any) -> Any:
    if text is None:
        return None
    try:
        return str(Decimal(str(text)).normalize())
    except InvalidOperation:
        return text


def _norm(
    suffix: str, row: Mapping[str, Any], column: str, value: Any, volatile: Mapping[str, set[str]]
) -> Any:
    if column in volatile.get(suffix, set()):
        return VOLATILE
    if suffix == "postmeta" and column == "meta_value" and row.get("meta_key") in ("_stock", "total_sales"):
        return _numeric(value)  # '42.000000' and '42' are the same quantity
    return value


def _natural_key(suffix: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
    if suffix == "options":
        return (row.get("option_name"),)
    if suffix == "postmeta":
        return (row.get("post_id"), row.get("meta_key"))
    if suffix == "termmeta":
        return (row.get("term_id"), row.get("meta_key"))
    return tuple(row.get(k) for k in PRIMARY_KEYS[suffix])


def facts(
    diff: Diff,
    *,
    volatile: Mapping[str, set[str]] | None = None,
    volatile_options: Iterable[str] = (),
) -> Counter[tuple[Any, ...]]:
    """A diff as a multiset of comparable facts (natural keys, volatile cells blurred)."""
    vol = {t: set(c) for t, c in (volatile or {}).items()}
    for t, cols in ALWAYS_VOLATILE.items():
        vol.setdefault(t, set()).update(cols)
    vol_opts = set(volatile_options)
    out: Counter[tuple[Any, ...]] = Counter()
    for suffix, d in diff.items():
        for r in d.get("deleted", ()):
            key = _natural_key(suffix, r)
            if suffix in ("postmeta", "termmeta"):
                key = (*key, _norm(suffix, r, "meta_value", r.get("meta_value"), vol))
            out[(suffix, "deleted", key)] += 1
        for r in d.get("inserted", ()):
            cells = []
            for c, v in sorted(r.items()):
                if suffix == "options" and c == "option_value" and r.get("option_name") in vol_opts:
                    v = VOLATILE
                cells.append((c, _norm(suffix, r, c, v, vol)))
            out[(suffix, "inserted", tuple(cells))] += 1
        for u in d.get("updated", ()):
            row = {**u.get("key", {}), **u.get("context", {}), **u.get("old", {})}
            key = _natural_key(suffix, row)
            for c, v in sorted(u.get("new", {}).items()):
                if suffix == "options" and c == "option_value" and row.get("option_name") in vol_opts:
                    v = VOLATILE
                ctx = {**row, **u.get("new", {})}
                out[(suffix, "updated", key, c, _norm(suffix, ctx, c, v, vol))] += 1
    return out


def compare_diffs(
    actual: Diff,
    expected: Diff,
    *,
    volatile: Mapping[str, set[str]] | None = None,
    volatile_options: Iterable[str] = (),
) -> list[str]:
    """Readable differences between two diffs; empty when they agree."""
    vol_opts = tuple(volatile_options)
    a = facts(actual, volatile=volatile, volatile_options=vol_opts)
    e = facts(expected, volatile=volatile, volatile_options=vol_opts)
    problems = [
        f"missing (WooCommerce wrote it, we did not): {f}" for f in sorted((e - a).elements(), key=repr)
    ]
    problems += [
        f"extra (we wrote it, WooCommerce did not): {f}" for f in sorted((a - e).elements(), key=repr)
    ]
    return problems


# --------------------------------------------------------------------------- scope


def expected_in_scope(diff: Diff, product_ids: Iterable[int]) -> Diff:
    """The part of a recorded diff a stock-sync tool answers for.

    Kept: rows of product/variation posts and their meta, options that are WooCommerce product
    caches or version transients, terms and term counts, termmeta, both lookup tables.
    Dropped: order placeholder posts and their meta, order/session/batch options, anything else.
    """
    ids = {str(p) for p in product_ids}
    out: Diff = {}
    for suffix, d in diff.items():
        keep: Callable[[Mapping[str, Any]], bool]
        if suffix == "posts":
            keep = lambda r: str(r.get("ID")) in ids  # noqa: E731
        elif suffix == "postmeta":
            keep = lambda r: str(r.get("post_id")) in ids  # noqa: E731
        elif suffix == "options":
            keep = lambda r: bool(PRODUCT_CACHE_OPTION_RE.match(str(r.get("option_name"))))  # noqa: E731
        else:
            keep = lambda r: True  # noqa: E731
        kept = {
            "primary_key": d.get("primary_key", list(PRIMARY_KEYS[suffix])),
            "inserted": [r for r in d.get("inserted", ()) if keep(r)],
            "deleted": [r for r in d.get("deleted", ()) if keep(r)],
            "updated": [
                u for u in d.get("updated", ()) if keep({**u.get("key", {}), **u.get("context", {})})
            ],
        }
        if kept["inserted"] or kept["deleted"] or kept["updated"]:
            out[suffix] = kept
    return out


def normalise_expected(expected: Diff, product_ids: Iterable[int]) -> Diff:
    """A recorded step diff, in scope (:func:`expected_in_scope`) and without the differences
    docs/woocommerce-fidelity.md documents, i.e. what syncd is expected to write:

    * ``wc_product_attributes_lookup`` dropped (WooCommerce changes it in the async step; compare
      it once against the final state);
    * ``_thumbnail_id = '0'`` inserts dropped (a variation's first CRUD save, fixture 07);
    * ``_price`` rows deleted and re-added with the same values netted out, and leftover ``_price``
      deletes dropped (variable parent price sync, fixture 07);
    * inserted product-cache transients dropped (cache refills after the deletion: 08, 12).
    """
    out = without_tables(expected_in_scope(expected, product_ids), ["wc_product_attributes_lookup"])
    pm = out.get("postmeta")
    if pm:
        inserted = [
            r
            for r in pm["inserted"]
            if not (r.get("meta_key") == "_thumbnail_id" and r.get("meta_value") == "0")
        ]
        # _price rows deleted and re-added with the same values: net them out.
        deleted = list(pm["deleted"])
        kept_inserts = []
        for r in inserted:
            twin = next(
                (
                    d
                    for d in deleted
                    if r.get("meta_key") == "_price"
                    and d.get("meta_key") == "_price"
                    and d.get("post_id") == r.get("post_id")
                    and d.get("meta_value") == r.get("meta_value")
                ),
                None,
            )
            if twin is not None:
                deleted.remove(twin)
            else:
                kept_inserts.append(r)
        # _price rows of baseline ids deleted in an earlier WooCommerce step are not ours to delete.
        deleted = [d for d in deleted if d.get("meta_key") != "_price"]
        pm.update(inserted=kept_inserts, deleted=deleted)
    opts = out.get("options")
    if opts:
        # Cache refills after the deletion: syncd deletes, the next reader refills.
        opts["inserted"] = [
            r for r in opts["inserted"] if not PRODUCT_CACHE_OPTION_RE.match(r["option_name"])
        ]
    return {t: d for t, d in out.items() if d.get("inserted") or d.get("deleted") or d.get("updated")}


def without_tables(diff: Diff, tables: Iterable[str]) -> Diff:
    drop = set(tables)
    return {t: d for t, d in diff.items() if t not in drop}


# --------------------------------------------------------------------------- other blogs

_ID_COLUMNS = ("ID", "post_id", "object_id", "product_id", "product_or_parent_id", "post_parent")
_PER_ID_OPTION_RE = re.compile(r"^(_transient_(?:timeout_)?[a-z_]+_)(\d+)$")


def remap_diff(diff: Diff, post_ids: Mapping[int, int]) -> Diff:
    """A diff recorded on one blog, rewritten for another: post ids (``ID``, ``post_id``,
    ``object_id``, ``product_id``, ``post_parent``, per-product transient names) mapped through
    ``post_ids`` (build it from ``catalogue.json`` by SKU, and SKU@lang on Polylang blogs).
    Keys are table suffixes, so the prefix needs no rewriting. Ids not in the map are kept;
    term ids, meta ids and option ids are blog-specific and are not translated (compare facts,
    which ignore meta/option ids)."""

    def m(value: Any) -> Any:
        if value is None:
            return value
        try:
            return str(post_ids.get(int(value), int(value)))
        except (TypeError, ValueError):
            return value

    def row(r: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(r)
        for c in _ID_COLUMNS:
            if c in out:
                out[c] = m(out[c])
        name = out.get("option_name")
        if isinstance(name, str):
            hit = _PER_ID_OPTION_RE.match(name)
            if hit:
                out["option_name"] = hit.group(1) + m(hit.group(2))
        return out

    result: Diff = {}
    for suffix, d in diff.items():
        result[suffix] = {
            "primary_key": d.get("primary_key"),
            "inserted": [row(r) for r in d.get("inserted", ())],
            "deleted": [row(r) for r in d.get("deleted", ())],
            "updated": [
                {
                    "key": row(u.get("key", {})),
                    "context": row(u.get("context", {})),
                    "old": u.get("old", {}),
                    "new": u.get("new", {}),
                }
                for u in d.get("updated", ())
            ],
        }
    return result


def product_post_ids(state: Snapshot) -> set[int]:
    """Ids of product and variation posts in a snapshot."""
    return {
        int(r["ID"])
        for r in state.get("posts", {}).values()
        if r.get("post_type") in ("product", "product_variation")
    }


def rows_of(diff: Diff, suffix: str, kind: str) -> Sequence[Mapping[str, Any]]:
    return diff.get(suffix, {}).get(kind, ())
