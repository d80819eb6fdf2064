"""Meta-only field groups (issue 10): ``tax``, ``identity``, ``purchase``.

Each is a set of postmeta keys WooCommerce writes with ``update_or_delete_post_meta``
(``WC_Data_Store_WP``): a value of ``''`` deletes the row, except for ``_tax_class``, which must
exist (``$must_exist_meta_keys``; fixture 17 A2 updates an existing ``''`` row); every other value
is ``update_post_meta`` (update the row, or insert it when absent: fixture 18 steps 1 and 3).
Booleans are stored as WooCommerce's ``wc_bool_to_string`` writes them ('yes'/'no'). After the
rows, what a product save derives on that blog is written by :func:`syncd.derived.refresh_products`
from the blog's own values: the lookup row (``tax_status``, ``tax_class``, ``global_unique_id``,
``virtual``, ``downloadable``), ``post_modified``, the product's transients and the version
transients (fixtures 17 A and 18 A).

Values are compared as WooCommerce reads them (:meth:`MetaGroup.canonical`: a missing row is the
prop's default, '1'/'true' is 'yes'; a variation's missing ``_tax_class`` row is read as 'parent'),
so a member is written only when a product object would differ. A variation takes
``_tax_status`` and ``_sold_individually`` from its parent: they are not part of its values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from syncd import woo
from syncd.db import table
from syncd.derived import refresh_products
from syncd.fields.group import Problem, Target, Value, Values
from syncd.network import Blog

TEXT, BOOL, CHOICE, TAX_CLASS, GTIN = "text", "bool", "choice", "tax_class", "gtin"
TAX_STATUSES = ("taxable", "shipping", "none")
_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
#: ``WC_Product::set_global_unique_id``: digits and hyphens only (anything else is refused there).
_GTIN_CHARS = frozenset("0123456789-")


@dataclass(frozen=True)
class MetaField:
    """One postmeta key of a group: how WooCommerce reads, checks and stores it."""

    key: str
    kind: str = TEXT
    default: str = ""  # the prop's value when the row is absent
    must_exist: bool = False  # WooCommerce keeps a '' row instead of deleting it


class MetaGroup:
    """A field group made of postmeta keys only (see module docstring)."""

    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()
    #: Keys a variation takes from its parent whatever its own row says (see :meth:`read`).
    parent_keys: tuple[str, ...] = ()

    def __init__(self, name: str, fields: Sequence[MetaField]) -> None:
        self.name = name
        self.fields = tuple(fields)
        self.meta_keys = tuple(f.key for f in self.fields)
        if not all(_KEY_RE.fullmatch(k) for k in self.meta_keys):
            raise ValueError(f"meta keys must be [A-Za-z0-9_]: {self.meta_keys}")  # they enter SQL text
        self._by_key = {f.key: f for f in self.fields}

    # -- read ------------------------------------------------------------------------------
    def read(self, conn: sa.Connection, blog: Blog, post_ids: Sequence[int]) -> dict[int, Values]:
        ids = sorted({int(p) for p in post_ids})
        out: dict[int, dict[str, Value]] = {p: dict.fromkeys(self.meta_keys) for p in ids}
        if not ids:
            return dict(out)
        rows = conn.exec_driver_sql(
            f"SELECT post_id, meta_key, meta_value FROM {table(blog.prefix, 'postmeta')} "
            f"WHERE post_id IN ({_marks(len(ids))}) AND meta_key IN ({_marks(len(self.meta_keys))}) "
            "ORDER BY post_id, meta_id",
            (*ids, *self.meta_keys),
        ).all()
        seen: set[tuple[int, str]] = set()
        for pid, key, value in rows:
            if (int(pid), key) not in seen:  # get_post_meta(..., true): the first row
                seen.add((int(pid), key))
                out[int(pid)][key] = value
        self._variations(conn, blog, out)
        return dict(out)

    def _variations(self, conn: sa.Connection, blog: Blog, out: dict[int, dict[str, Value]]) -> None:
        """What a variation's values mean, as ``WC_Product_Variation_Data_Store_CPT::
        read_product_data()`` reads them (source only):

        * a variation without a ``_tax_class`` row reads as ``'parent'`` (it takes its parent's
          class), never as ``''`` (standard). So a variation whose row is missing and one holding
          ``'parent'`` are equal, and ``''`` is never copied where the origin means its parent's
          class;
        * :attr:`parent_keys` (``_tax_status``, ``_sold_individually``) are set from the parent's
          rows ("no user-facing way to set" them on a variation); the variation's own row, written
          when it was created, is never read for the product (only the lookup row copies
          ``_tax_status`` from it). These fields do not apply to a variation: they are left out of
          its values, so they are neither compared nor written (the parent, a member of its own
          link group, carries them)."""
        keys = [f.key for f in self.fields if f.kind == TAX_CLASS]
        ask = sorted(
            pid for pid, vals in out.items() if self.parent_keys or any(vals.get(k) is None for k in keys)
        )
        if not ask:
            return
        variations = conn.exec_driver_sql(
            f"SELECT ID FROM {table(blog.prefix, 'posts')} WHERE ID IN ({_marks(len(ask))}) AND post_type = %s",
            (*ask, woo.VARIATION),
        ).all()
        for (pid,) in variations:
            vals = out[int(pid)]
            for k in keys:
                if vals.get(k) is None:
                    vals[k] = "parent"
            for k in self.parent_keys:
                vals.pop(k, None)

    @property
    def checksum_keys(self) -> tuple[str, ...]:
        """The group's stored values are exactly its rows of these keys (syncd.fields.checksum)."""
        return tuple(self.meta_keys)

    def fingerprint_sql(self, prefix: str, post_id: str) -> str:
        """SQL: a text that is equal for two products whose stored rows of the group's keys are
        equal (optional member of a group, used by the pass as a server-side filter: only link
        groups whose members' texts differ are read and compared). Order-free aggregates (row
        count and two 32-bit checksums, as the audit's), so no sort and no length limit."""
        keys = ", ".join(f"'{k}'" for k in self.meta_keys)  # constants of this module, checked in __init__
        row = "CONCAT_WS(0x1f, pm.meta_key, IFNULL(pm.meta_value, 0x00))"
        return (
            f"(SELECT CONCAT_WS(':', COUNT(*), BIT_XOR(CRC32({row})), SUM(CRC32(REVERSE({row})))) "
            f"FROM {table(prefix, 'postmeta')} pm WHERE pm.post_id = {post_id} AND pm.meta_key IN ({keys}))"
        )

    # -- compare and check (pure) ----------------------------------------------------------
    def canonical(self, values: Values) -> Values:
        """The values as a product object holds them (what two members are compared on). A field
        absent from ``values`` (not ``None``: absent) does not apply to that product (a
        variation's :attr:`parent_keys`) and stays absent."""
        out: dict[str, Value] = {}
        for f in self.fields:
            if f.key not in values:
                continue
            v = values.get(f.key)
            text = f.default if v is None else str(v)
            if f.kind == BOOL:
                text = "yes" if woo.wc_string_to_bool(text) else "no"
            out[f.key] = text
        return out

    def problems(self, values: Values) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for f in self.fields:
            v = values.get(f.key)
            if v is None:
                continue
            if not isinstance(v, str):
                out.append((f.key, f"not a text value: {v!r}"))
            elif f.kind == CHOICE and v not in TAX_STATUSES:
                out.append((f.key, f"{v!r} is not one of {', '.join(TAX_STATUSES)}"))
            elif f.kind == BOOL and v.strip().lower() not in ("", "yes", "no", "true", "false", "1", "0"):
                out.append((f.key, f"{v!r} is not a yes/no value"))
            elif f.kind == GTIN and not set(v) <= _GTIN_CHARS:
                out.append((f.key, f"{v!r} is not a GTIN/UPC/EAN/ISBN (digits and hyphens)"))
        return out

    # -- write -----------------------------------------------------------------------------
    def write(self, conn: sa.Connection, target: Target, current: Values, wanted: Values) -> list[Problem]:
        have, want = self.canonical(current), self.canonical(wanted)
        problems: list[Problem] = []
        writes: list[tuple[MetaField, str]] = []
        for f in self.fields:
            if f.key not in have or f.key not in want:
                continue  # does not apply to one of them (a variation's parent_keys)
            if have[f.key] == want[f.key] and not _needs_row(f, current.get(f.key), want[f.key]):
                continue
            reason = self._refused(conn, target, f, str(want[f.key]))
            if reason:
                problems.append(Problem(target.blog.blog_id, target.post_id, target.sku, f.key, reason))
            else:
                writes.append((f, str(want[f.key])))
        if writes:
            ids = _meta_ids(conn, target, [f.key for f, _ in writes])
            for f, value in writes:
                _write_meta(conn, target, f, ids.get(f.key, []), value)
            refresh_products(
                conn, target.blog, [target.post_id], now_utc=datetime.now(UTC).replace(tzinfo=None)
            )
        return problems

    def _refused(self, conn: sa.Connection, target: Target, f: MetaField, value: str) -> str | None:
        """Why ``value`` cannot be written on the target's blog (None: it can)."""
        if f.kind == TAX_CLASS and value:
            if value == "parent":
                if target.post_type == woo.VARIATION:
                    return None
                return "tax class 'parent' (the variation's parent's class) applies to variations only"
            if value not in tax_classes(conn, target.blog):
                return f"tax class {value!r} does not exist on blog {target.blog.blog_id}"
        if f.kind == GTIN and value:
            owner = conn.exec_driver_sql(
                f"SELECT product_id FROM {table(target.blog.prefix, 'wc_product_meta_lookup')} "
                "WHERE global_unique_id = %s AND product_id <> %s LIMIT 1",
                (value, target.post_id),
            ).scalar()
            if owner is not None:
                return f"GTIN {value!r} is already used by product {owner} on blog {target.blog.blog_id}"
        return None


def _needs_row(f: MetaField, stored: Value, value: Value) -> bool:
    """A must-exist key whose row is missing gets one even when its value equals the default."""
    return f.must_exist and stored is None and value == f.default


def _meta_ids(conn: sa.Connection, target: Target, keys: Sequence[str]) -> dict[str, list[int]]:
    """The target's rows of ``keys`` by meta_id, through the post_id index (the caller locked them
    so). Writes then go by primary key: an ``UPDATE ... WHERE post_id AND meta_key`` may scan the
    meta_key index and lock other products' rows, in the order a shop's own update takes them,
    and deadlock with it."""
    rows = conn.exec_driver_sql(
        f"SELECT meta_id, meta_key FROM {table(target.blog.prefix, 'postmeta')} FORCE INDEX (post_id) "
        f"WHERE post_id = %s AND meta_key IN ({_marks(len(keys))}) ORDER BY meta_id",
        (target.post_id, *keys),
    ).all()
    out: dict[str, list[int]] = {}
    for meta_id, key in rows:
        out.setdefault(str(key), []).append(int(meta_id))
    return out


def _write_meta(
    conn: sa.Connection, target: Target, f: MetaField, meta_ids: Sequence[int], value: str
) -> None:
    """``update_or_delete_post_meta``: '' deletes (unless the key must exist); else update every
    row of the key (``update_post_meta``), or insert one when there is none."""
    pm = table(target.blog.prefix, "postmeta")
    ids = _marks(len(meta_ids))
    if value == "" and not f.must_exist:
        if meta_ids:
            conn.exec_driver_sql(f"DELETE FROM {pm} WHERE meta_id IN ({ids})", tuple(meta_ids))
    elif not meta_ids:
        conn.exec_driver_sql(
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (%s, %s, %s)",
            (target.post_id, f.key, value),
        )
    else:
        conn.exec_driver_sql(f"UPDATE {pm} SET meta_value = %s WHERE meta_id IN ({ids})", (value, *meta_ids))


def tax_classes(conn: sa.Connection, blog: Blog) -> set[str]:
    """Slugs of the blog's tax classes ('' = standard always exists): ``wc_tax_rate_classes``."""
    rows = conn.exec_driver_sql(f"SELECT slug FROM {table(blog.prefix, 'wc_tax_rate_classes')}").all()
    return {""} | {str(r[0]) for r in rows}


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class TaxGroup(MetaGroup):
    """``tax``: ``_tax_status`` (taxable/shipping/none) and ``_tax_class`` (a class slug that exists
    on the target blog; '' = standard; a variation's 'parent'). A variation's tax status is its
    parent's (:meth:`MetaGroup._variations`): only its ``_tax_class`` is compared and written."""

    parent_keys = ("_tax_status",)

    def __init__(self) -> None:
        super().__init__(
            "tax",
            (
                MetaField("_tax_status", CHOICE, default="taxable"),
                MetaField("_tax_class", TAX_CLASS, must_exist=True),
            ),
        )


class IdentityGroup(MetaGroup):
    """``identity``: ``_global_unique_id`` (GTIN/UPC/EAN/ISBN; unique per blog, as WooCommerce checks)."""

    def __init__(self) -> None:
        super().__init__("identity", (MetaField("_global_unique_id", GTIN),))


class PurchaseGroup(MetaGroup):
    """``purchase``: sold individually, purchase note, virtual, downloadable. A variation is sold
    individually when its parent is (:meth:`MetaGroup._variations`): its own row is left alone."""

    parent_keys = ("_sold_individually",)

    def __init__(self) -> None:
        super().__init__(
            "purchase",
            (
                MetaField("_sold_individually", BOOL, default="no"),
                MetaField("_purchase_note"),
                MetaField("_virtual", BOOL, default="no"),
                MetaField("_downloadable", BOOL, default="no"),
            ),
        )
