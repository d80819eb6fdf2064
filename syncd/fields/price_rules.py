"""WooCommerce 11 price rules, as pure functions (no I/O): the ``price`` field group's semantics.

What :mod:`syncd.fields.price` computes before writing a price into a member, exactly as
WooCommerce computes it on a product save. Every rule names where it comes from: a recorded
fixture (``transitions/NN``, real WooCommerce 11.0.1; the fixtures win where they disagree with
the source) or a WooCommerce source location when no fixture covers it.

Values are the texts stored in postmeta (``None`` = no row). WooCommerce treats an empty text
like a missing row for these four keys (``update_or_delete_post_meta()`` deletes the row when the
value is ``''``; fixture 15 A step 3), so :func:`empty` folds both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final

REGULAR: Final = "_regular_price"
SALE: Final = "_sale_price"
DATE_FROM: Final = "_sale_price_dates_from"
DATE_TO: Final = "_sale_price_dates_to"
#: The derived active price (never a source value).
PRICE: Final = "_price"
#: Source keys in the order WooCommerce's product data store writes them
#: (``WC_Product_Data_Store_CPT::update_post_meta()``; fixture 15 A step 1: ``_sale_price``, then
#: ``_sale_price_dates_from``, then ``_sale_price_dates_to``).
SOURCE_KEYS: Final = (REGULAR, SALE, DATE_FROM, DATE_TO)
DATE_KEYS: Final = (DATE_FROM, DATE_TO)

#: Action Scheduler hooks and group of a product's scheduled sale (WooCommerce 10.5+,
#: ``wc_schedule_product_sale_events()`` in wc-product-functions.php; fixture 15).
START_HOOK: Final = "wc_product_start_scheduled_sale"
END_HOOK: Final = "wc_product_end_scheduled_sale"
SALES_GROUP: Final = "woocommerce-sales"

# What wc_format_decimal() leaves of a price typed in wp-admin: ASCII digits, one optional '.'.
_PLAIN_DECIMAL = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_UNIX_TIME = re.compile(r"^[0-9]+$")


def empty(value: str | None) -> bool:
    """No value: no row, or an empty text (WooCommerce deletes the row then)."""
    return value is None or value == ""


def normalise(value: str | None) -> str | None:
    """``''`` -> ``None``: the form :meth:`PriceGroup.read` returns and compares."""
    return None if empty(value) else value


def price_number(value: str | None) -> Decimal | None:
    """A stored price as a number; ``None`` when empty or not a plain decimal."""
    if empty(value) or not _PLAIN_DECIMAL.match(str(value)):
        return None
    return Decimal(str(value))


def _price_problem(value: str) -> str | None:
    if _PLAIN_DECIMAL.match(value):
        return None
    if value.startswith("-") and _PLAIN_DECIMAL.match(value[1:]):
        return f"negative price {value!r}"
    if "," in value:
        return f"not a number: {value[:40]!r} (decimal comma?)"
    return f"not a number: {value[:40]!r}"


def problems(values: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """``(field, reason)`` for every value that must not be written anywhere.

    Prices: a plain decimal (``'9.50'``, ``'11'``) or empty; ``'abc'``, ``'1,99'``, ``'-1'``,
    ``'1e3'`` and padded texts are refused (WooCommerce stores what ``wc_format_decimal()`` made
    of the input, so a copy never holds anything else). A sale price above the regular price is
    refused (WooCommerce would never put it on sale: ``is_on_sale()`` needs regular > sale).
    Sale dates: unix times (digits) or empty, as the data store writes them
    (``$date->getTimestamp()``; fixture 15 stores ``'1797379200'``).
    """
    out: list[tuple[str, str]] = []
    for key in (REGULAR, SALE):
        value = values.get(key)
        if not empty(value):
            reason = _price_problem(str(value))
            if reason:
                out.append((key, reason))
    for key in DATE_KEYS:
        value = values.get(key)
        if not empty(value) and not _UNIX_TIME.match(str(value)):
            out.append((key, f"malformed sale date {str(value)[:40]!r} (expected a unix time)"))
    regular, sale = price_number(values.get(REGULAR)), price_number(values.get(SALE))
    if regular is not None and sale is not None and sale > regular:
        out.append((SALE, f"sale price {values.get(SALE)} above the regular price {values.get(REGULAR)}"))
    return out


def _timestamp(value: str | None) -> int | None:
    return int(str(value)) if not empty(value) and _UNIX_TIME.match(str(value)) else None


def is_on_sale(values: Mapping[str, str | None], now_ts: int) -> bool:
    """``WC_Product::is_on_sale('update-price')`` (abstract-wc-product.php): a sale price is set,
    the regular price is above it (PHP compares two numeric strings as numbers; an empty regular
    price is never above), the 'from' date (if any) is not in the future and the 'to' date (if
    any) is not in the past. Fixture 11 A (no dates: on sale at once), 15 A (future dates: not yet;
    dates covering now: on sale)."""
    regular, sale = price_number(values.get(REGULAR)), price_number(values.get(SALE))
    if sale is None or regular is None or not regular > sale:
        return False
    start, end = _timestamp(values.get(DATE_FROM)), _timestamp(values.get(DATE_TO))
    if start is not None and start > now_ts:
        return False
    return not (end is not None and end < now_ts)


def active_price(values: Mapping[str, str | None], now_ts: int) -> str:
    """The ``_price`` WooCommerce writes on save (``WC_Product_Data_Store_CPT::handle_updated_props()``):
    the sale price text while on sale, else the regular price text (``''`` when there is none)."""
    if is_on_sale(values, now_ts):
        return str(values.get(SALE))
    regular = values.get(REGULAR)
    return "" if regular is None else str(regular)


def parent_prices(child_prices: Sequence[str | None]) -> list[str]:
    """A variable parent's ``_price`` rows, in insertion (meta_id) order.

    ``WC_Product_Variable_Data_Store_CPT::sync_price()``: the distinct ``_price`` texts of the
    visible children (``array_unique``: first occurrence wins, compared as text), sorted
    numerically (PHP ``sort(SORT_NUMERIC)``, stable), empty ones skipped. Fixture 16: children
    39.00, 36.00, 42.00 -> rows 36.00, 39.00, 42.00; fixture 11 B: 39.00, 39.00, 45.00 -> 39.00, 45.00.
    """
    seen: dict[str, None] = {}
    for text in child_prices:
        if text is not None and text not in seen:
            seen[text] = None
    distinct = [t for t in seen if t != ""]
    return sorted(distinct, key=_sort_number)


def _sort_number(text: str) -> Decimal:
    # SORT_NUMERIC compares (float) casts; a non-numeric text counts as 0.
    m = re.match(r"^\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)", text)
    return Decimal(m.group(1)) if m else Decimal(0)


def scheduled_actions(date_from: str | None, date_to: str | None, now_ts: int) -> list[tuple[str, int]]:
    """``(hook, unix time)`` of the sale actions ``wc_schedule_product_sale_events()`` queues for
    these dates: a start action only for a start in the future, an end action only for an end in
    the future (fixture 15 A step 2: the start is today 00:00:00, already past: only the end)."""
    out: list[tuple[str, int]] = []
    start, end = _timestamp(date_from), _timestamp(date_to)
    if start is not None and start > now_ts:
        out.append((START_HOOK, start))
    if end is not None and end > now_ts:
        out.append((END_HOOK, end))
    return out


def date_writes(
    current: Mapping[str, str | None], wanted: Mapping[str, str | None]
) -> list[dict[str, str | None]]:
    """The sale dates as they stand after each date meta write of a save, in write order.

    Since WooCommerce 10.5 every write of a date meta row (insert, update or delete, through any
    path) unschedules the product's pending sale actions and queues new ones from the dates stored
    at that moment (fixture 15: step 1 inserts 'from' then 'to' -> a start action queued, then
    cancelled and queued again with the end action; step 3 deletes 'from' -> the end action
    re-queued, then deletes 'to' -> cancelled). One entry per date key that changes.
    """
    state = {key: normalise(current.get(key)) for key in DATE_KEYS}
    out: list[dict[str, str | None]] = []
    for key in DATE_KEYS:
        new = normalise(wanted.get(key))
        if new != state[key]:
            state[key] = new
            out.append(dict(state))
    return out


def simple_schedule(ts: int) -> str:
    """The ``schedule`` column Action Scheduler stores for a single action at ``ts``: a PHP-serialized
    ``ActionScheduler_SimpleSchedule`` (fixture 15; private/protected property names carry NULs)."""
    protected = "\0*\0scheduled_timestamp"
    private = "\0ActionScheduler_SimpleSchedule\0timestamp"
    return (
        f'O:30:"ActionScheduler_SimpleSchedule":2:{{s:{len(protected)}:"{protected}";i:{ts};'
        f's:{len(private)}:"{private}";i:{ts};}}'
    )


def action_args(product_id: int) -> str:
    """The ``args`` column: ``wp_json_encode(array('product_id' => N))`` (fixture 15: ``{"product_id":12}``)."""
    return f'{{"product_id":{int(product_id)}}}'
