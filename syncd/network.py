"""The multisite network: live blogs, table prefixes, active plugins, per-blog stock options.

(Stub of the shared data model; discovery is implemented in this module by the foundation work.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Per-blog options syncd reads, with WooCommerce's defaults when the row is absent.
STOCK_OPTION_DEFAULTS: dict[str, str] = {
    "woocommerce_manage_stock": "yes",
    "woocommerce_notify_no_stock_amount": "0",
    "woocommerce_notify_low_stock_amount": "2",
    "woocommerce_hide_out_of_stock_items": "no",
    "woocommerce_hold_stock_minutes": "60",
    "woocommerce_attribute_lookup_enabled": "no",
    "woocommerce_attribute_lookup_direct_updates": "no",
    "woocommerce_product_lookup_table_is_generating": "",
    "woocommerce_version": "",
    "woocommerce_db_version": "",
    "gmt_offset": "0",
    "timezone_string": "",
    "WPLANG": "",
}


def blog_prefix(base_prefix: str, blog_id: int) -> str:
    """WordPress's get_blog_prefix(): blog 0 or 1 uses the base prefix, blog N uses base + N + '_'."""
    return base_prefix if blog_id in (0, 1) else f"{base_prefix}{blog_id}_"


@dataclass(frozen=True)
class Blog:
    blog_id: int
    prefix: str
    site_id: int = 1
    domain: str = ""
    path: str = "/"
    woocommerce: bool = False  # WooCommerce active (per-blog or network-wide) and its tables present
    polylang: bool = False
    polylang_wc: bool = False  # Polylang for WooCommerce add-on active
    options: dict[str, str] = field(default_factory=dict)  # STOCK_OPTION_DEFAULTS keys, raw strings
    problems: tuple[str, ...] = ()  # why syncd leaves this blog alone (empty = usable)

    @property
    def usable(self) -> bool:
        return self.woocommerce and not self.problems

    def option(self, name: str) -> str:
        return self.options.get(name, STOCK_OPTION_DEFAULTS.get(name, ""))

    @property
    def notify_no_stock_amount(self) -> int:
        """absint(woocommerce_notify_no_stock_amount), as WooCommerce's validate_props reads it."""
        return _absint(self.option("woocommerce_notify_no_stock_amount"))

    @property
    def hide_out_of_stock(self) -> bool:
        return self.option("woocommerce_hide_out_of_stock_items") == "yes"


def _absint(text: str) -> int:
    """PHP absint(): leading integer part of the string, absolute value, 0 when none."""
    text = (text or "").strip()
    sign = 1
    digits = ""
    for i, ch in enumerate(text):
        if i == 0 and ch in "+-":
            sign = -1 if ch == "-" else 1
            continue
        if ch.isdigit():
            digits += ch
        else:
            break
    return abs(sign * int(digits)) if digits else 0
