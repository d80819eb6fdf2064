"""WooCommerce semantics, as pure functions (no I/O).

Everything syncd must compute exactly as WooCommerce 11 computes it lives here: PHP number
parsing and ``(int)`` casts, the stock-status rule, the variable-parent rule, the
``wc_product_meta_lookup`` row, which transients a product save deletes and which version
transients it bumps, the ``product_visibility`` / ``outofstock`` rule, and the hide-out-of-stock
category recount. :mod:`syncd.derived` reads the database, calls these, and writes the result.

Every rule names where it comes from: a recorded fixture (``schema/wordpress/transitions/NN``,
recorded from real WooCommerce 11.0.1; the fixtures win where they disagree with the source) or a
WooCommerce/WordPress source location (``plugins/woocommerce/includes/...``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phpserialize

# --------------------------------------------------------------------------- constants

IN_STOCK: Final = "instock"
OUT_OF_STOCK: Final = "outofstock"
ON_BACKORDER: Final = "onbackorder"
#: wc_get_product_stock_status_options(): anything else is coerced to instock by set_stock_status().
STOCK_STATUSES: Final = (IN_STOCK, OUT_OF_STOCK, ON_BACKORDER)

PRODUCT: Final = "product"
VARIATION: Final = "product_variation"
PRODUCT_POST_TYPES: Final = (PRODUCT, VARIATION)
#: WC_Product_Variable_Data_Store_CPT::read_children(): the "all" children list.
CHILD_POST_STATUSES: Final = ("publish", "private")

#: PHP's INT range on the 64-bit builds WordPress runs on.
PHP_INT_MAX: Final = 2**63 - 1
PHP_INT_MIN: Final = -(2**63)

# --------------------------------------------------------------------------- PHP numbers

# PHP 8 numeric string (Zend/zend_operators.c _is_numeric_string_ex): optional leading and
# (since PHP 8.0) trailing whitespace, a sign, digits with an optional fraction, an exponent.
_WS = " \t\n\r\v\f"
# ASCII digits only: Python's ``\d`` also matches other scripts' digits, which neither PHP nor
# the server's string-to-number conversion read as digits.
_NUMERIC_BODY = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMERIC_RE = re.compile(rf"^[{_WS}]*({_NUMERIC_BODY})[{_WS}]*$")
_LEADING_NUMERIC_RE = re.compile(rf"^[{_WS}]*({_NUMERIC_BODY})")
_INTEGER_RE = re.compile(r"^[+-]?[0-9]+$")


#: Largest magnitude a quantity may have. Shops change ``_stock`` with SQL arithmetic on the text
#: column (``meta_value - 2``: the server converts the text to a DOUBLE), and syncd's relative
#: writes do the same; beyond 10^15 a DOUBLE no longer holds every integer and unit exactly.
MAX_QUANTITY: Final = Decimal(10) ** 15


class UnparseableStock(ValueError):
    """A ``_stock`` (or other quantity) text that is neither SQL NULL nor a safe number.

    WooCommerce would silently read it as 0 (``intval('abc')``) and the shop's SQL arithmetic as
    its leading number or 0; syncd refuses to derive or propagate anything from it, because
    writing "out of stock" (or a delta) from garbage is worse than leaving the product alone.
    """

    def __init__(self, reason: str, text: str | None = None) -> None:
        super().__init__(reason)
        self.text = text if text is not None else reason  # the stored text, when there is one


def is_php_numeric(text: str) -> bool:
    """PHP 8 ``is_numeric()`` for a string."""
    return bool(_NUMERIC_RE.match(text))


def parse_stock(text: str | bytes | None) -> Decimal | None:
    """THE quantity parser of syncd (planning, derived data, audit, reconcile, set-stock, links).

    ``None`` for SQL NULL (WooCommerce stores NULL for unmanaged products and reads it as 0 when
    managed: fixture 09C). Otherwise the text must be a whole numeric string - ASCII whitespace
    around an optional sign, digits with an optional fraction, an optional exponent: ``'5'``,
    ``'5.000000'``, ``'-2'``, ``' 7 '``, ``'1e3'`` - with a magnitude of at most 10^15. Those are
    exactly the texts on which the three readers agree: PHP's ``is_numeric()`` (so
    ``wc_stock_amount()`` reads the same number), and the server's conversion in
    ``meta_value - N`` under WordPress's non-strict sql_mode, which reads them whole, without a
    truncation warning (trailing whitespace: a warning, but the same number), and exactly (a
    DOUBLE holds every integer up to 2^53). tests/integration/test_stock_semantics.py holds
    this contract against the real server.

    Everything else raises :class:`UnparseableStock` and the caller skips the product with that
    reason: ``''`` (SQL arithmetic makes it 0 with a warning, inventing stock), ``'abc'`` (0),
    ``'5abc'`` (the server takes 5, PHP 8 warns), ``'NaN'``, ``'1_000'`` and non-ASCII digits
    (Python's ``Decimal`` would accept those; the server reads 1 and 0), and magnitudes beyond
    10^15.
    """
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    m = _NUMERIC_RE.match(text)
    if not m:
        raise UnparseableStock(f"not a number: {text[:40]!r}", text)
    try:
        value = Decimal(m.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid literals
        raise UnparseableStock(f"not a number: {text[:40]!r}", text) from exc
    if abs(value) > MAX_QUANTITY:
        raise UnparseableStock(f"beyond the exact range of SQL arithmetic (10^15): {text[:40]!r}", text)
    return value


def _cap_float_to_int(value: float) -> int:
    # zend_dval_to_lval_cap(): used for numeric strings; NaN/Inf -> 0, out of range saturates.
    if math.isnan(value) or math.isinf(value):
        return 0
    if value >= 2.0**63:
        return PHP_INT_MAX
    if value < -(2.0**63):
        return PHP_INT_MIN
    return int(value)  # truncation toward zero, like a C cast


def php_int(value: Any) -> int:
    """PHP ``(int)`` / ``intval()`` of a scalar, as PHP 8 computes it.

    ``None`` -> 0; ``True``/``False`` -> 1/0; floats and Decimals truncate toward zero;
    strings take their leading numeric part (``'12abc'`` -> 12, ``'abc'`` -> 0, ``'2.9'`` -> 2,
    ``'1e3'`` -> 1000) and integer-like strings beyond the 64-bit range saturate.
    This is ``wc_stock_amount()`` (filter ``woocommerce_stock_amount`` = ``intval`` in
    wc-core-functions.php) and the ``(int)`` in ``WC_Product::validate_props()``.
    """
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return max(PHP_INT_MIN, min(PHP_INT_MAX, value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            return 0
        return _cap_float_to_int(float(value)) if abs(value) >= 2**63 else int(value)
    if isinstance(value, float):
        return _cap_float_to_int(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    m = _LEADING_NUMERIC_RE.match(text)
    if not m:
        return 0
    literal = m.group(1)
    if _INTEGER_RE.match(literal):
        return max(PHP_INT_MIN, min(PHP_INT_MAX, int(literal)))
    return _cap_float_to_int(float(literal))


def php_truthy(value: Any) -> bool:
    """PHP boolean conversion: ``''``, ``'0'``, ``0``, ``0.0``, ``None``, ``[]`` are false."""
    if value is None:
        return False
    if isinstance(value, str):
        return value not in ("", "0")
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return bool(value)


def wc_string_to_bool(value: Any) -> bool:
    """``wc_string_to_bool()`` (wc-formatting-functions.php): 'yes', 'true', '1' (any case) or 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value == 1:  # PHP `1 === $string`: the integer only
        return True
    if value is None:
        return False
    text = str(value)
    return text.lower() in ("yes", "true") or text == "1"


def wc_format_decimal(value: Any, decimal_separator: str = ".") -> str:
    """``wc_format_decimal($number)`` with ``$dp = false`` and no trimming, for strings.

    Replaces the decimal separator by '.', drops everything but digits, dots and '-', and keeps
    only the last dot (wc-formatting-functions.php). Used by the lookup row's ``onsale`` rule.
    """
    if value is None or value is False:
        return ""
    text = str(value).strip()
    for sep in {decimal_separator, "."}:
        text = text.replace(sep, ".")
    return re.sub(r"\.(?![^.]+$)|[^0-9.-]", "", text)


def maybe_unserialize(value: str | None) -> Any:
    """WordPress ``maybe_unserialize()``: PHP-serialized text becomes a value, anything else stays."""
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    # is_serialized() (wp-includes/functions.php): 'N;' or 'x:...;' / 'x:...}' with a known type.
    looks_serialized = stripped == "N;" or (
        len(stripped) >= 4 and stripped[1] == ":" and stripped[0] in "aOsibdE" and stripped[-1] in ";}"
    )
    if not looks_serialized:
        return value
    try:
        return phpserialize.loads(stripped.encode("utf-8"), decode_strings=True)
    except Exception:  # noqa: BLE001 - WordPress returns the raw string when unserialize fails
        return value


# --------------------------------------------------------------------------- stock status


def manages_stock(manage_meta: str | None) -> bool:
    """THE "manages stock" predicate of syncd: ``_manage_stock`` as WooCommerce reads it
    (``WC_Product::set_manage_stock()`` -> ``wc_string_to_bool``), so 'yes', 'Yes', 'TRUE' and '1'
    from an import all manage stock, and a checkout decrements their ``_stock``.

    Planning, apply, audit, reconcile, links and the derived step all ask this. The one exception
    is :func:`lookup_row`, which copies ``get_data_for_lookup_table()``'s own ``'yes' ===`` test
    (WooCommerce writes ``stock_quantity`` NULL for ``'Yes'``; the lookup row mirrors that).
    """
    return wc_string_to_bool(manage_meta)


def managed_stock_status(
    quantity: Decimal | int | str | None, backorders: str | None, notify_no_stock_amount: int
) -> str:
    """``WC_Product::validate_props()`` for a product that manages stock (abstract-wc-product.php).

    ``instock`` when ``(int) quantity > absint(woocommerce_notify_no_stock_amount)`` (strictly
    greater: fixture 06, blog 3 with threshold 2, MUG 3 -> 2 became outofstock); otherwise
    ``onbackorder`` when backorders are not 'no' ('notify' and 'yes' both count: fixtures 05, 09A),
    else ``outofstock`` (fixture 02). A NULL quantity is 0 (fixture 09C: manage stock switched on
    without a quantity -> outofstock). A missing/NULL ``_backorders`` keeps the prop default 'no'
    (WC_Data::set_props() skips null values).
    """
    q = php_int(quantity)
    if q > int(notify_no_stock_amount):
        return IN_STOCK
    if (backorders if backorders is not None else "no") != "no":
        return ON_BACKORDER
    return OUT_OF_STOCK


def variable_parent_status(child_lookup_statuses: Iterable[str | None]) -> str:
    """``WC_Product_Variable_Data_Store_CPT::sync_stock_status()`` for a parent that does not manage stock.

    ``instock`` if any child's **lookup row** says instock (``child_has_stock_status`` counts rows
    of ``wc_product_meta_lookup``), else ``onbackorder`` if any says onbackorder, else
    ``outofstock`` - also when there are no children. Children are the variations with post_status
    publish or private (``read_children``). Fixture 07: the parent stays instock until the last
    variation is out.
    """
    statuses = set(child_lookup_statuses)
    if IN_STOCK in statuses:
        return IN_STOCK
    if ON_BACKORDER in statuses:
        return ON_BACKORDER
    return OUT_OF_STOCK


def coerce_stock_status(value: str | None) -> str:
    """``WC_Product::set_stock_status()``: an unknown value becomes instock."""
    return value if value in STOCK_STATUSES else IN_STOCK


def visibility_wants_outofstock(status: str) -> bool:
    """``update_visibility()``: the ``product_visibility`` term ``outofstock`` iff status is outofstock.

    onbackorder carries no term (fixtures 05, 09A: switching backorders on at stock 0 removes it).
    """
    return status == OUT_OF_STOCK


def attribute_lookup_in_stock(status: str) -> int:
    """``wc_product_attributes_lookup.in_stock`` = ``$product->is_in_stock()`` = status != outofstock.

    Written by the Action Scheduler job ``woocommerce_run_product_attribute_lookup_update_callback``
    (fixture 07 step 4: ``UPDATE ... SET in_stock = 0 WHERE product_id = N``).
    """
    return 0 if status == OUT_OF_STOCK else 1


# --------------------------------------------------------------------------- meta access


MetaValues = Mapping[str, Sequence[str | None]]


def meta_single(meta: MetaValues, key: str) -> str:
    """``get_post_meta($id, $key, true)``: the first row (meta_id order); missing or NULL -> ''.

    WordPress 5.5+ ``get_metadata()`` returns the default '' when the raw value is null.
    """
    values = meta.get(key) or ()
    if not values or values[0] is None:
        return ""
    return values[0]


def meta_single_raw(meta: MetaValues, key: str) -> str | None:
    """The first row's value as stored (None when the row is missing or SQL NULL)."""
    values = meta.get(key) or ()
    return values[0] if values else None


def meta_has(meta: MetaValues, key: str) -> bool:
    return bool(meta.get(key))


# --------------------------------------------------------------------------- lookup row

#: Columns of ``wc_product_meta_lookup`` in the order WooCommerce 11 writes them (fixture 02
#: ``REPLACE INTO wp_wc_product_meta_lookup (...)``); ``global_unique_id`` only where the table has it
#: (``woocommerce_schema_version >= 920``).
LOOKUP_COLUMNS: Final = (
    "product_id",
    "sku",
    "virtual",
    "downloadable",
    "min_price",
    "max_price",
    "onsale",
    "stock_quantity",
    "stock_status",
    "rating_count",
    "average_rating",
    "total_sales",
    "tax_status",
    "tax_class",
    "global_unique_id",
)

#: How MariaDB/MySQL store each column: used to tell whether a computed row differs from the
#: stored one before writing anything.
LOOKUP_COLUMN_KIND: Final[dict[str, str]] = {
    "product_id": "int",
    "sku": "str100",
    "global_unique_id": "str100",
    "virtual": "int",
    "downloadable": "int",
    "min_price": "dec19_4",
    "max_price": "dec19_4",
    "onsale": "int",
    "stock_quantity": "double",
    "stock_status": "str100",
    "rating_count": "int",
    "average_rating": "dec3_2",
    "total_sales": "int",
    "tax_status": "str100",
    "tax_class": "str100",
}

#: Meta keys ``get_data_for_lookup_table()`` reads.
LOOKUP_META_KEYS: Final = (
    "_price",
    "_manage_stock",
    "_stock",
    "_sale_price",
    "_sku",
    "_virtual",
    "_downloadable",
    "_stock_status",
    "_wc_rating_count",
    "_wc_average_rating",
    "total_sales",
    "_tax_status",
    "_tax_class",
    "_global_unique_id",
)


def lookup_row(
    product_id: int,
    meta: MetaValues,
    *,
    stock_status: str | None = None,
    include_global_unique_id: bool = True,
    decimal_separator: str = ".",
) -> dict[str, Any]:
    """The ``wc_product_meta_lookup`` row WooCommerce computes for a product.

    ``WC_Product_Data_Store_CPT::get_data_for_lookup_table()`` (class-wc-product-data-store-cpt.php),
    written with ``$wpdb->replace()`` where every value is a '%s' string and PHP null is SQL NULL.
    Values are returned as WooCommerce passes them (strings, ints or None); the database converts
    them to the column types, exactly as it does for WooCommerce's REPLACE:

    * ``min_price``/``max_price``: the first/last ``_price`` row in meta_id order (a variable
      parent has one row per distinct child price); no ``_price`` row -> PHP false -> ''.
    * ``onsale``: 1 when ``wc_format_decimal(_sale_price)`` is truthy and equals the formatted
      ``_price`` (fixture 11A step 2).
    * ``stock_quantity``: ``wc_stock_amount(_stock)`` (intval, NULL -> 0: fixture 09C) only when
      ``_manage_stock`` is exactly 'yes', else NULL (fixture 09E; inheriting variations: 08B).
    * ``rating_count``: sum of the unserialized ``_wc_rating_count`` array.
    * the rest are the raw meta values ('' when missing).

    ``stock_status`` overrides ``_stock_status`` (the value about to be written).
    """
    prices = list(meta.get("_price") or ())
    manage = meta_single(meta, "_manage_stock")
    stock = php_int(meta_single(meta, "_stock")) if manage == "yes" else None
    price = wc_format_decimal(meta_single(meta, "_price"), decimal_separator)
    sale_price = wc_format_decimal(meta_single(meta, "_sale_price"), decimal_separator)
    ratings = maybe_unserialize(meta_single(meta, "_wc_rating_count"))
    if isinstance(ratings, dict):
        rating_values: list[Any] = list(ratings.values())
    elif isinstance(ratings, (list, tuple)):
        rating_values = list(ratings)
    elif ratings is None:
        rating_values = []
    else:
        rating_values = [ratings]  # PHP (array) of a scalar
    row: dict[str, Any] = {
        "product_id": int(product_id),
        "sku": meta_single(meta, "_sku"),
        "virtual": 1 if meta_single(meta, "_virtual") == "yes" else 0,
        "downloadable": 1 if meta_single(meta, "_downloadable") == "yes" else 0,
        "min_price": prices[0] if prices else "",
        "max_price": prices[-1] if prices else "",
        "onsale": 1 if php_truthy(sale_price) and price == sale_price else 0,
        "stock_quantity": stock,
        "stock_status": stock_status if stock_status is not None else meta_single(meta, "_stock_status"),
        "rating_count": sum(php_int(v) for v in rating_values),
        "average_rating": meta_single(meta, "_wc_average_rating"),
        "total_sales": meta_single(meta, "total_sales"),
        "tax_status": meta_single(meta, "_tax_status"),
        "tax_class": meta_single(meta, "_tax_class"),
    }
    if include_global_unique_id:
        row["global_unique_id"] = meta_single(meta, "_global_unique_id")
    return row


class _Unknown:
    """A value whose stored form syncd does not predict; treated as "differs" (write it, the
    server converts it exactly as it converts WooCommerce's own REPLACE)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()

_DEC4 = Decimal("0.0001")
_DEC2 = Decimal("0.01")


def _clean_decimal(value: Any) -> Decimal | _Unknown:
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    text = str(value)
    if text == "":
        return Decimal(0)  # non-strict sql_mode: '' -> 0 with a warning (checked on MariaDB 10.11)
    m = _NUMERIC_RE.match(text)
    if not m:
        return UNKNOWN
    return Decimal(m.group(1))


#: :func:`stored_lookup_value` of text values (prices, ratings, sales as postmeta holds them),
#: memoised: the derived step of a 500-change batch on 10 blogs asks for the same few prices
#: thousands of times, each a Decimal parse and quantize. Pure (column kind + text), bounded.
_STORED_TEXT: dict[tuple[str, str], Any] = {}
_STORED_TEXT_MAX = 10_000
_MISS = object()


def stored_lookup_value(column: str, value: Any) -> Any:
    """What the server stores for ``value`` in ``column`` (Python types as PyMySQL returns them),
    or :data:`UNKNOWN` when that is not predictable here."""
    if type(value) is not str:
        return _stored_lookup_value(column, value)
    hit = _STORED_TEXT.get((column, value), _MISS)
    if hit is _MISS:
        hit = _stored_lookup_value(column, value)
        if len(_STORED_TEXT) >= _STORED_TEXT_MAX:
            _STORED_TEXT.clear()
        _STORED_TEXT[(column, value)] = hit
    return hit


def _stored_lookup_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    kind = LOOKUP_COLUMN_KIND.get(column)
    if kind is None:
        return UNKNOWN
    if kind == "str100":
        text = str(value)
        return text if len(text) <= 100 else UNKNOWN
    if type(value) is int:  # the common case (flags, quantities): no Decimal round trip
        return (
            float(value) if kind == "double" else value if kind == "int" else _quantize(kind, Decimal(value))
        )
    if kind == "int" and type(value) is str and value.isdigit():
        return int(value)  # plain digits ('0', '12'): what total_sales usually holds
    number = _clean_decimal(value)
    if isinstance(number, _Unknown):
        return UNKNOWN
    if kind == "int":
        return int(number.to_integral_value(rounding=ROUND_HALF_UP))
    if kind == "double":
        return float(number)
    return _quantize(kind, number)


def _quantize(kind: str, number: Decimal) -> Any:
    quantum, digits = (_DEC4, 15) if kind == "dec19_4" else (_DEC2, 1)
    q = number.quantize(quantum, rounding=ROUND_HALF_UP)
    if q.adjusted() >= digits:
        return UNKNOWN  # out of range: the server clips it
    return q


def lookup_differences(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> list[str]:
    """Columns of ``desired`` whose stored value would differ from ``current`` (all when no row)."""
    if current is None:
        return list(desired)
    out = []
    for column, value in desired.items():
        expected = stored_lookup_value(column, value)
        if expected is UNKNOWN:
            out.append(column)
            continue
        actual = current.get(column)
        if isinstance(actual, float) or isinstance(expected, float):
            same = actual is not None and expected is not None and float(actual) == float(expected)
        elif isinstance(expected, Decimal):
            same = actual is not None and Decimal(actual) == expected
        else:
            same = actual == expected
        if not same:
            out.append(column)
    return out


# --------------------------------------------------------------------------- transients

#: Fixed-name transients every product save deletes (``wc_delete_product_transients()``,
#: wc-product-functions.php; fixture 02 deletes all four).
FIXED_PRODUCT_TRANSIENTS: Final = (
    "wc_products_onsale",
    "wc_featured_products",
    "wc_outofstock_count",
    "wc_low_stock_count",
)
#: Per-product transients, deleted for the saved product and, for a variation, for its parent
#: (``ProductUtil::delete_product_specific_transients``; fixture 07 deletes ``*_16`` when HOODIE-M
#: is saved; fixture 08B deletes ``*_20`` for CAP).
PER_PRODUCT_TRANSIENT_PREFIXES: Final = (
    "wc_product_children_",
    "wc_var_prices_",
    "wc_related_",
    "wc_child_has_weight_",
    "wc_child_has_dimensions_",
)
#: ``_wc_term_recount()`` deletes it after rewriting ``product_count_*`` (fixture 12).
TERM_COUNTS_TRANSIENT: Final = "wc_term_counts"
#: Version transients (``WC_Cache_Helper::get_transient_version($group, true)``): no expiry, value
#: = unix time of the invalidation, created with autoload 'on' when missing (WordPress 6.6+ set_transient).
PRODUCT_VERSION_TRANSIENT: Final = "product-transient-version"
PRODUCT_QUERY_VERSION_TRANSIENT: Final = "product_query-transient-version"
VERSION_TRANSIENTS: Final = (PRODUCT_QUERY_VERSION_TRANSIENT, PRODUCT_VERSION_TRANSIENT)


def transient_option_names(name: str) -> tuple[str, str]:
    """The options rows behind a transient: ``_transient_<name>`` and ``_transient_timeout_<name>``."""
    return f"_transient_{name}", f"_transient_timeout_{name}"


def transient_names_to_delete(product_id: int, parent_id: int | None = None) -> tuple[str, ...]:
    """Transient names a save of ``product_id`` deletes (``wc_delete_product_transients``).

    The fixed names, then the per-product names of the product and of its parent (a variation's
    variable product). WordPress ``delete_transient()`` deletes the ``_transient_timeout_`` row
    only when the ``_transient_`` row existed.
    """
    ids = [int(product_id)]
    if parent_id:
        ids.append(int(parent_id))
    names = list(FIXED_PRODUCT_TRANSIENTS)
    for pid in dict.fromkeys(ids):
        names.extend(f"{prefix}{pid}" for prefix in PER_PRODUCT_TRANSIENT_PREFIXES)
    return tuple(names)


def version_transients_bumped(*, product_saved: bool) -> tuple[str, ...]:
    """Which version transients WooCommerce 11.0.1 bumps: **both, on every product save**.

    Fixtures: 02 (status changed), 04A (``wc_update_product_stock`` 'set', status unchanged, no
    term change) and 09B (only ``_low_stock_amount`` inserted) all update both
    ``_transient_product_query-transient-version`` and ``_transient_product-transient-version``
    to the current unix time. ``product_query`` is bumped by ``WC_Post_Data`` on the save itself,
    not only on a stock-status or term change; ``product`` by ``wc_delete_product_transients()``.
    Nothing is bumped when no product is saved.
    """
    return VERSION_TRANSIENTS if product_saved else ()


# --------------------------------------------------------------------------- term counts

#: ``_update_post_term_count()`` (wp-includes/taxonomy.php), the default for ``product_visibility``
#: (registered for product and product_variation with no ``update_count_callback``,
#: class-wc-post-types.php): objects attached whose post is published, of those post types.
#: Fixture 07 step 3: HOODIE and HOODIE-L both get the term, count 3 -> 5 (variations count).
VISIBILITY_COUNT_POST_STATUSES: Final = ("publish",)
VISIBILITY_COUNT_POST_TYPES: Final = PRODUCT_POST_TYPES

#: ``_wc_term_recount()`` counts published ``product`` posts (not variations).
RECOUNT_TAXONOMIES: Final = ("product_cat", "product_tag")
HIERARCHICAL_TAXONOMIES: Final = frozenset({"product_cat"})


def recount_needed(*, hide_out_of_stock: bool, post_type: str, status_changed: bool) -> bool:
    """``wc_recount_after_stock_change()`` runs on ``woocommerce_product_set_stock_status`` (fired for
    products, not variations, when ``_stock_status`` was written) and only when
    ``woocommerce_hide_out_of_stock_items`` is 'yes' (fixture 12; on blog 1, hide = no, the category
    count does not change)."""
    return hide_out_of_stock and post_type == PRODUCT and status_changed


def term_ancestors(term_id: int, parents: Mapping[int, int]) -> list[int]:
    """``get_ancestors()`` within one taxonomy: parent, grandparent, ... (cycle-safe)."""
    out: list[int] = []
    seen = {term_id}
    current = parents.get(term_id, 0)
    while current and current not in seen:
        out.append(current)
        seen.add(current)
        current = parents.get(current, 0)
    return out


def term_descendants(term_id: int, parents: Mapping[int, int]) -> set[int]:
    """``get_term_children()``: every descendant of ``term_id`` in one taxonomy."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out: set[int] = set()
    stack = list(children.get(term_id, ()))
    while stack:
        t = stack.pop()
        if t in out or t == term_id:
            continue
        out.add(t)
        stack.extend(children.get(t, ()))
    return out


def terms_to_recount(
    product_terms: Iterable[int], parents: Mapping[int, int], *, hierarchical: bool
) -> list[int]:
    """``_wc_recount_terms_by_product()`` -> ``_wc_term_recount()``: the product's terms, plus their
    ancestors in a hierarchical taxonomy (product_cat), each counted over itself and its descendants."""
    ordered: dict[int, None] = {}
    for t in product_terms:
        ordered[int(t)] = None
    if hierarchical:
        for t in list(ordered):
            for a in term_ancestors(t, parents):
                ordered.setdefault(a, None)
    return list(ordered)


def term_count_meta_key(taxonomy: str) -> str:
    return f"product_count_{taxonomy}"


# --------------------------------------------------------------------------- time


def _as_utc(now_utc: datetime) -> datetime:
    return now_utc.replace(tzinfo=UTC) if now_utc.tzinfo is None else now_utc.astimezone(UTC)


def wp_timezone(timezone_string: str | None, gmt_offset: str | float | None) -> timezone | ZoneInfo:
    """``wp_timezone()``: the ``timezone_string`` option when set, else the ``gmt_offset`` hours
    (``wp_timezone_string()`` turns e.g. 5.5 into +05:30). An unknown zone name falls back to the offset."""
    if timezone_string:
        try:
            return ZoneInfo(timezone_string)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        hours = float(gmt_offset or 0)
    except ValueError:
        hours = 0.0
    if math.isnan(hours) or math.isinf(hours):
        hours = 0.0
    whole = int(hours)
    minutes = int(round(abs(hours - whole) * 60))
    delta = timedelta(hours=abs(whole), minutes=minutes)
    return timezone(-delta if hours < 0 else delta)


def mysql_datetime(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def post_modified_values(
    now_utc: datetime, timezone_string: str | None, gmt_offset: str | float | None
) -> tuple[str, str]:
    """``(post_modified, post_modified_gmt)`` as ``current_time('mysql')`` / ``current_time('mysql', 1)``
    write them on every product save (fixture 02: both bumped; blog 1 has gmt_offset 0)."""
    utc = _as_utc(now_utc)
    local = utc.astimezone(wp_timezone(timezone_string, gmt_offset))
    return mysql_datetime(local), mysql_datetime(utc)


def unix_time(now_utc: datetime) -> int:
    """PHP ``time()`` for the version transients."""
    return int(_as_utc(now_utc).timestamp())


# --------------------------------------------------------------------------- variations


@dataclass(frozen=True)
class StockSource:
    """Where a product's stock-status rule takes its inputs from.

    ``mode``: 'own' (manages its own stock), 'parent' (a variation with ``_manage_stock`` off whose
    parent manages stock: ``WC_Product_Variation::get_manage_stock()`` returns 'parent' and the
    quantity and backorders are the parent's), 'children' (a variable product that does not manage
    stock), 'manual' (no rule: WooCommerce leaves the stored status alone).
    """

    mode: str
    holder_id: int | None = None


def stock_source(
    *,
    product_id: int,
    post_type: str,
    product_type: str | None,
    manage_meta: str | None,
    parent_id: int | None = None,
    parent_manage_meta: str | None = None,
) -> StockSource:
    if manages_stock(manage_meta):
        return StockSource("own", product_id)
    if post_type == VARIATION and parent_id and manages_stock(parent_manage_meta):
        return StockSource("parent", parent_id)
    if post_type == PRODUCT and product_type == "variable":
        return StockSource("children")
    return StockSource("manual")


def pushes_status_to_child(child_manage_meta: str | None) -> bool:
    """``sync_managed_variation_stock_status()`` selects children with
    ``meta_key = '_manage_stock' AND meta_value != 'yes'``: the row must exist and not be 'yes'
    (the comparison is case-insensitive and ignores trailing spaces, as the column collation does).
    Those children get the parent's status in ``_stock_status`` and their lookup row, but no
    visibility term and no attribute-lookup update (fixture 08B)."""
    if child_manage_meta is None:
        return False
    return child_manage_meta.rstrip(" ").lower() != "yes"
