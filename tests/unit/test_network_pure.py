"""Pure parts of network discovery: plugin lists, blog flags, option decoding, blog assessment, SQL text.

No database: discover() itself is tested against a real server in tests/integration/test_network.py.
"""

from __future__ import annotations

import re

import phpserialize
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.network import (
    CORE_TABLES,
    Blog,
    Network,
    SerializedDataError,
    SitewidePlugins,
    _absint,
    _like_prefix,
    assess_blog,
    blog_prefix,
    decode_options,
    has_plugin,
    parse_active_plugins,
    parse_sitewide_plugins,
    skip_reasons,
    sql_blog_options,
    sql_blogs,
)

WC = "woocommerce/woocommerce.php"
PLL = "polylang/polylang.php"


def php(value: object) -> bytes:
    return phpserialize.dumps(value)


def all_tables(prefix: str, *extra: str) -> set[str]:
    return {prefix + t for t in (*CORE_TABLES, "wc_product_meta_lookup", *extra)}


def row(blog_id: int = 2, **kw: object) -> dict:
    return {"blog_id": blog_id, "site_id": 1, "domain": "shop.test", "path": f"/b{blog_id}/", **kw}


# --------------------------------------------------------------------------- prefixes and flags
def test_blog_prefix_follows_get_blog_prefix() -> None:
    assert blog_prefix("wp_", 1) == "wp_"
    assert blog_prefix("wp_", 0) == "wp_"
    assert blog_prefix("wp_", 3) == "wp_3_"
    assert blog_prefix("shop_", 12) == "shop_12_"


def test_skip_reasons() -> None:
    assert skip_reasons({"deleted": 0, "archived": 0, "spam": 0}) == ()
    assert skip_reasons({"deleted": 1, "archived": 0, "spam": 1}) == ("deleted", "spam")
    assert skip_reasons({"deleted": 0, "archived": 2, "spam": 0}) == ("archived",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", 2), ("-3", 3), (" 7 ", 7), ("5abc", 5), ("abc", 0), ("", 0), ("+4", 4), ("2.9", 2)],
)
def test_absint_matches_php(text: str, expected: int) -> None:
    assert _absint(text) == expected


# --------------------------------------------------------------------------- plugin lists
def test_parse_active_plugins_recorded_value() -> None:
    raw = b'a:2:{i:0;s:21:"polylang/polylang.php";i:1;s:27:"woocommerce/woocommerce.php";}'
    assert parse_active_plugins(raw) == (PLL, WC)


@pytest.mark.parametrize("raw", [None, b"", b"  ", b"a:0:{}"])
def test_parse_active_plugins_empty(raw: bytes | None) -> None:
    assert parse_active_plugins(raw) == ()


@pytest.mark.parametrize(
    "raw",
    [
        b'a:2:{i:0;s:99:"polylang',  # truncated (a classic after a search-and-replace on serialized data)
        b"garbage",
        b'O:8:"stdClass":0:{}',
        b's:27:"woocommerce/woocommerce.php";',  # a string, not a list
        b"b:0;",
    ],
)
def test_parse_active_plugins_corrupt(raw: bytes) -> None:
    with pytest.raises(SerializedDataError):
        parse_active_plugins(raw)


def test_parse_active_plugins_counts_bytes_not_characters() -> None:
    # PHP's s:N: is a byte length; a non-ASCII folder name must still parse.
    raw = php(["plügin/plügin.php", WC])
    assert parse_active_plugins(raw) == ("plügin/plügin.php", WC)


def test_parse_sitewide_plugins_takes_keys() -> None:
    raw = php({WC: 1700000000, "akismet/akismet.php": 1})
    assert parse_sitewide_plugins(raw) == (WC, "akismet/akismet.php")
    assert parse_sitewide_plugins(b"a:0:{}") == ()
    with pytest.raises(SerializedDataError):
        parse_sitewide_plugins(b"a:1:{")


@pytest.mark.parametrize(
    ("plugins", "file", "expected"),
    [
        ([WC], "woocommerce.php", True),
        (["woocommerce-11.0.1/woocommerce.php"], "woocommerce.php", True),  # renamed folder
        (["woocommerce-subscriptions/woocommerce-subscriptions.php"], "woocommerce.php", False),
        (["my-woocommerce.php"], "woocommerce.php", False),
        ([PLL], "polylang.php", True),
        (["polylang-pro/polylang.php"], "polylang.php", True),
        (["polylang-wc/polylang-wc.php"], "polylang-wc.php", True),
        (["polylang-wc/polylang-wc.php"], "polylang.php", False),
        ([], "woocommerce.php", False),
    ],
)
def test_has_plugin_matches_file_name(plugins: list[str], file: str, expected: bool) -> None:
    assert has_plugin(plugins, file) is expected


# --------------------------------------------------------------------------- options
def test_decode_options_reports_non_utf8() -> None:
    text, warnings = decode_options({"blogname": "Café".encode("latin-1"), "WPLANG": b"fr_FR", "x": None})
    assert text["WPLANG"] == "fr_FR"
    assert text["blogname"] == "Caf\ufffd"
    assert "x" not in text
    assert len(warnings) == 1 and "blogname" in warnings[0] and "UTF-8" in warnings[0]


@given(st.binary(max_size=64))
def test_decode_options_never_raises(raw: bytes) -> None:
    text, _ = decode_options({"woocommerce_notify_no_stock_amount": raw})
    assert isinstance(text["woocommerce_notify_no_stock_amount"], str)


@given(st.binary(max_size=64))
def test_parse_active_plugins_only_raises_serialized_data_error(raw: bytes) -> None:
    try:
        parse_active_plugins(raw)
    except SerializedDataError:
        pass


# --------------------------------------------------------------------------- assess_blog
def test_assess_usable_woocommerce_blog_with_polylang() -> None:
    blog = assess_blog(
        row(3),
        "wp_",
        all_tables("wp_3_"),
        {
            "active_plugins": php([PLL, WC]),
            "woocommerce_notify_no_stock_amount": b"2",
            "woocommerce_hide_out_of_stock_items": b"yes",
        },
        SitewidePlugins(),
    )
    assert blog.prefix == "wp_3_" and blog.usable
    assert blog.woocommerce and blog.polylang and not blog.polylang_wc
    assert blog.notify_no_stock_amount == 2 and blog.hide_out_of_stock
    assert blog.option("woocommerce_manage_stock") == "yes"  # default when the row is absent
    assert blog.problems == () and blog.missing_tables == ()


def test_assess_network_activated_woocommerce() -> None:
    blog = assess_blog(
        row(2), "wp_", all_tables("wp_2_"), {"active_plugins": b"a:0:{}"}, SitewidePlugins((WC,))
    )
    assert blog.woocommerce and blog.usable and blog.plugins == (WC,)


def test_assess_blog_without_woocommerce_is_not_usable_but_has_no_problem() -> None:
    blog = assess_blog(row(2), "wp_", all_tables("wp_2_"), {"active_plugins": php([PLL])}, SitewidePlugins())
    assert not blog.woocommerce and not blog.usable and blog.problems == ()


def test_assess_corrupt_active_plugins() -> None:
    blog = assess_blog(
        row(2), "wp_", all_tables("wp_2_"), {"active_plugins": b'a:1:{i:0;s:50:"woo'}, SitewidePlugins()
    )
    assert not blog.usable
    assert any("active_plugins is not valid PHP-serialized data" in p for p in blog.problems)


def test_assess_corrupt_active_plugins_leaves_blog_alone_even_with_network_woocommerce() -> None:
    blog = assess_blog(
        row(2), "wp_", all_tables("wp_2_"), {"active_plugins": b"junk"}, SitewidePlugins((WC,))
    )
    assert blog.woocommerce and not blog.usable


def test_assess_unreadable_sitewide_plugins() -> None:
    bad = SitewidePlugins(
        error="network option active_sitewide_plugins of site 1 is not valid PHP-serialized data"
    )
    blog = assess_blog(row(2), "wp_", all_tables("wp_2_"), {"active_plugins": php([WC])}, bad)
    assert not blog.usable and bad.error in blog.problems


def test_assess_all_tables_missing() -> None:
    blog = assess_blog(row(7), "wp_", set(), {}, SitewidePlugins((WC,)))
    assert not blog.usable
    assert len(blog.problems) == 1 and "tables are missing" in blog.problems[0]
    assert "wp_7_options" in blog.missing_tables and "wp_7_postmeta" in blog.missing_tables


def test_assess_some_tables_missing() -> None:
    tables = all_tables("wp_2_") - {"wp_2_postmeta"}
    blog = assess_blog(row(2), "wp_", tables, {"active_plugins": php([WC])}, SitewidePlugins())
    assert blog.problems == ("tables missing: wp_2_postmeta",)


def test_assess_woocommerce_lookup_table_missing() -> None:
    tables = all_tables("wp_2_") - {"wp_2_wc_product_meta_lookup"}
    blog = assess_blog(row(2), "wp_", tables, {"active_plugins": php([WC])}, SitewidePlugins())
    assert not blog.usable and "wp_2_wc_product_meta_lookup" in blog.problems[0]
    # Without WooCommerce active, the lookup table is not needed.
    plain = assess_blog(row(2), "wp_", tables, {"active_plugins": php([])}, SitewidePlugins())
    assert plain.problems == ()


def test_assess_custom_product_tables() -> None:
    by_table = assess_blog(
        row(2), "wp_", all_tables("wp_2_", "wc_products"), {"active_plugins": php([WC])}, SitewidePlugins()
    )
    assert not by_table.usable and "wp_2_wc_products" in by_table.problems[0]
    by_option = assess_blog(
        row(2),
        "wp_",
        all_tables("wp_2_"),
        {"active_plugins": php([WC]), "woocommerce_feature_custom_product_tables_enabled": b"yes"},
        SitewidePlugins(),
    )
    assert not by_option.usable and "custom product tables" in by_option.problems[0]


def test_assess_non_utf8_option_is_a_warning_not_a_problem() -> None:
    blog = assess_blog(
        row(2),
        "wp_",
        all_tables("wp_2_"),
        {"active_plugins": php([WC]), "WPLANG": b"\xff\xfe"},
        SitewidePlugins(),
    )
    assert blog.usable and blog.warnings and "WPLANG" in blog.warnings[0]


def test_network_helpers() -> None:
    a = Blog(blog_id=1, prefix="wp_", woocommerce=True)
    b = Blog(blog_id=2, prefix="wp_2_", woocommerce=True, problems=("x",))
    c = Blog(blog_id=3, prefix="wp_3_")
    net = Network(base_prefix="wp_", blogs=(a, b, c))
    assert net.usable_blogs() == (a,)
    assert net.blog(2) is b
    with pytest.raises(KeyError):
        net.blog(9)


# --------------------------------------------------------------------------- SQL text
def norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_like_prefix_escapes_wildcards() -> None:
    assert _like_prefix("wp_") == "wp!_%"
    assert _like_prefix("a!b%") == "a!!b!%%"


def test_sql_blogs() -> None:
    assert norm(sql_blogs("wp_", None)) == (
        "SELECT blog_id, site_id, domain, path, deleted, archived, spam FROM `wp_blogs` ORDER BY blog_id"
    )
    assert "WHERE site_id = :site_id" in sql_blogs("wp_", 1)


def test_sql_blog_options_binds_every_value() -> None:
    sql = norm(sql_blog_options([(1, "wp_"), (3, "wp_3_")], 2))
    assert sql == (
        "SELECT :b0 AS blog_id, CAST(option_name AS BINARY) AS option_name, "
        "CAST(option_value AS BINARY) AS option_value FROM `wp_options` WHERE option_name IN (:n0, :n1) "
        "UNION ALL "
        "SELECT :b1 AS blog_id, CAST(option_name AS BINARY) AS option_name, "
        "CAST(option_value AS BINARY) AS option_value FROM `wp_3_options` WHERE option_name IN (:n0, :n1)"
    )


def test_sql_builders_refuse_bad_prefixes() -> None:
    with pytest.raises(ValueError):
        sql_blogs("wp`; DROP TABLE x; --", None)
