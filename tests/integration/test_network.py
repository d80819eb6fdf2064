"""discover() against a real server: the recorded network, generated networks, and broken blogs.

Every broken state here is one a real network can be in (a blog deleted in the admin, a blog row
whose tables were dropped by hand, active_plugins mangled by a naive search-and-replace, a latin1
options table from an old install...). Discovery must describe it and never crash.
"""

from __future__ import annotations

from typing import Any

import phpserialize
import pytest
import sqlalchemy as sa

from syncd.network import Network, NotMultisiteError, discover

WC = "woocommerce/woocommerce.php"
PLL = "polylang/polylang.php"


def run_discover(net: Any, prefix: str | None = None, **kw: Any) -> Network:
    with net.engine.connect() as conn:
        return discover(conn, prefix or net.prefix, **kw)


def execute(net: Any, sql: str, params: dict | None = None) -> None:
    with net.engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})


def set_option(net: Any, blog_id: int, name: str, value: str | bytes) -> None:
    options = net.table(blog_id, "options")
    execute(
        net,
        f"INSERT INTO {options} (option_name, option_value, autoload) VALUES (:n, :v, 'on') "
        "ON DUPLICATE KEY UPDATE option_value = VALUES(option_value)",
        {"n": name, "v": value},
    )


# --------------------------------------------------------------------------- the recorded network
def test_recorded_network(wp_network: Any) -> None:
    net = run_discover(wp_network)
    assert net.base_prefix == "wp_"
    assert net.server["database"] == wp_network.database
    assert net.server["flavor"] in ("mariadb", "mysql") and net.server["version"]
    assert [b.blog_id for b in net.blogs] == [1, 2, 3]
    assert [b.prefix for b in net.blogs] == ["wp_", "wp_2_", "wp_3_"]
    assert [b.path for b in net.blogs] == ["/", "/site2/", "/site3/"]
    assert net.skipped == () and net.problems == ()
    assert [b.blog_id for b in net.usable_blogs()] == [1, 2, 3]

    b1, b2, b3 = net.blog(1), net.blog(2), net.blog(3)
    assert all(b.woocommerce and b.usable and not b.problems and not b.warnings for b in (b1, b2, b3))
    assert (b1.polylang, b2.polylang, b3.polylang) == (False, True, True)
    assert not any(b.polylang_wc for b in (b1, b2, b3))
    assert b1.woocommerce_version == "11.0.1"

    # Per-blog stock options as recorded (README "Baseline network").
    assert (b1.notify_no_stock_amount, b2.notify_no_stock_amount, b3.notify_no_stock_amount) == (0, 0, 2)
    assert (b1.hide_out_of_stock, b2.hide_out_of_stock, b3.hide_out_of_stock) == (False, True, False)
    for b in (b1, b2, b3):
        assert b.option("woocommerce_manage_stock") == "yes"
        assert b.option("woocommerce_notify_low_stock_amount") == "2"
        assert b.option("woocommerce_hold_stock_minutes") == "60"

    # The options discovery read agree with the recorded catalogue.
    for bid, blog in zip((1, 2, 3), (b1, b2, b3), strict=True):
        recorded = wp_network.catalogue["blogs"][str(bid)]["options"]
        for name in ("woocommerce_notify_no_stock_amount", "woocommerce_hide_out_of_stock_items"):
            assert blog.option(name) == recorded[name]


def test_absent_option_falls_back_to_woocommerce_default(wp_network: Any) -> None:
    execute(wp_network, "DELETE FROM `wp_3_options` WHERE option_name = 'woocommerce_notify_no_stock_amount'")
    assert run_discover(wp_network).blog(3).notify_no_stock_amount == 0


def test_unknown_blog_raises_key_error(wp_network: Any) -> None:
    with pytest.raises(KeyError, match="blog 9"):
        run_discover(wp_network).blog(9)


# --------------------------------------------------------------------------- prefixes
def test_other_base_prefix_four_blogs(make_network: Any) -> None:
    shop = make_network(prefix="shop_", blogs=4)
    net = run_discover(shop)
    assert net.base_prefix == "shop_"
    assert [b.prefix for b in net.blogs] == ["shop_", "shop_2_", "shop_3_", "shop_4_"]
    assert [b.blog_id for b in net.usable_blogs()] == [1, 2, 3, 4]


def test_two_networks_in_one_database_do_not_mix(make_network: Any) -> None:
    """'wp_' is a LIKE wildcard pattern: wpx tables of another network must not be mistaken for wp_ ones."""
    net = make_network(prefix="wp_", blogs=2)
    with net.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE `wpxblogs` LIKE `wp_blogs`")
        conn.exec_driver_sql("CREATE TABLE `wpx2_options` LIKE `wp_options`")
    found = run_discover(net)
    assert [b.blog_id for b in found.blogs] == [1, 2]
    with pytest.raises(NotMultisiteError):
        run_discover(net, "wpx_")


# --------------------------------------------------------------------------- skipped blogs
def test_deleted_archived_and_spam_blogs_are_skipped(make_network: Any) -> None:
    net = make_network(blogs=5)
    blogs = net.table(1, "blogs")
    execute(net, f"UPDATE {blogs} SET deleted = 1 WHERE blog_id = 2")
    execute(net, f"UPDATE {blogs} SET archived = 1 WHERE blog_id = 3")
    execute(net, f"UPDATE {blogs} SET spam = 1, deleted = 1 WHERE blog_id = 4")
    found = run_discover(net)
    assert [b.blog_id for b in found.blogs] == [1, 5]
    assert {(s.blog_id, s.reasons) for s in found.skipped} == {
        (2, ("deleted",)),
        (3, ("archived",)),
        (4, ("deleted", "spam")),
    }
    assert {s.prefix for s in found.skipped} == {"wp_2_", "wp_3_", "wp_4_"}


def test_site_id_filter(wp_network: Any) -> None:
    execute(
        wp_network,
        "INSERT INTO `wp_blogs` (blog_id, site_id, domain, path, registered, last_updated) "
        "VALUES (7, 2, 'other.test', '/', NOW(), NOW())",
    )
    assert [b.blog_id for b in run_discover(wp_network, site_id=1).blogs] == [1, 2, 3]
    everything = run_discover(wp_network)
    assert [b.blog_id for b in everything.blogs] == [1, 2, 3, 7]
    assert not everything.blog(7).usable  # a row without tables


# --------------------------------------------------------------------------- broken blogs
def test_blog_row_whose_tables_are_missing(wp_network: Any) -> None:
    execute(
        wp_network,
        "INSERT INTO `wp_blogs` (blog_id, site_id, domain, path, registered, last_updated) "
        "VALUES (4, 1, '127.0.0.1:8480', '/site4/', NOW(), NOW())",
    )
    net = run_discover(wp_network)
    b4 = net.blog(4)
    assert not b4.usable and not b4.woocommerce
    assert len(b4.problems) == 1 and "tables are missing" in b4.problems[0]
    assert "wp_4_posts" in b4.missing_tables
    assert [b.blog_id for b in net.usable_blogs()] == [1, 2, 3]


def test_blog_whose_tables_were_dropped(make_network: Any) -> None:
    net = make_network(blogs=3)
    with net.engine.begin() as conn:
        names = conn.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name LIKE 'wp!_3!_%' ESCAPE '!'"
            )
        ).scalars()
        for name in list(names):
            conn.exec_driver_sql(f"DROP TABLE `{name}`")
    found = run_discover(net)
    assert [b.blog_id for b in found.usable_blogs()] == [1, 2]
    assert "tables are missing" in found.blog(3).problems[0]


def test_woocommerce_lookup_table_missing(wp_network: Any) -> None:
    execute(wp_network, "DROP TABLE `wp_2_wc_product_meta_lookup`")
    b2 = run_discover(wp_network).blog(2)
    assert b2.woocommerce and not b2.usable
    assert "wp_2_wc_product_meta_lookup" in b2.problems[0]


def test_corrupt_active_plugins(wp_network: Any) -> None:
    # Typical damage: a search-and-replace changed a path without fixing the s:N: length.
    set_option(
        wp_network,
        2,
        "active_plugins",
        'a:2:{i:0;s:21:"polylang/polylang.php";i:1;s:27:"woo/woocommerce.php";}',
    )
    net = run_discover(wp_network)
    b2 = net.blog(2)
    assert not b2.usable
    assert any("active_plugins is not valid PHP-serialized data" in p for p in b2.problems)
    assert [b.blog_id for b in net.usable_blogs()] == [1, 3]


def test_network_activated_woocommerce(wp_network: Any) -> None:
    execute(
        wp_network,
        "UPDATE `wp_sitemeta` SET meta_value = :v WHERE meta_key = 'active_sitewide_plugins'",
        {"v": phpserialize.dumps({WC: 1700000000}).decode()},
    )
    set_option(wp_network, 1, "active_plugins", "a:0:{}")
    b1 = run_discover(wp_network).blog(1)
    assert b1.woocommerce and b1.usable and WC in b1.plugins


def test_corrupt_sitewide_plugins(wp_network: Any) -> None:
    execute(
        wp_network,
        "UPDATE `wp_sitemeta` SET meta_value = 'a:1:{s:27:\"woo' WHERE meta_key = 'active_sitewide_plugins'",
    )
    net = run_discover(wp_network)
    assert net.problems and "active_sitewide_plugins" in net.problems[0]
    assert net.usable_blogs() == ()


def test_renamed_plugin_folder_still_counts(wp_network: Any) -> None:
    set_option(
        wp_network, 1, "active_plugins", phpserialize.dumps(["woocommerce-11.0.1/woocommerce.php"]).decode()
    )
    assert run_discover(wp_network).blog(1).usable


def test_non_utf8_bytes_in_option_value(wp_network: Any) -> None:
    """An old latin1 options table returns bytes that are not UTF-8: a warning, never a crash."""
    execute(
        wp_network, "ALTER TABLE `wp_3_options` MODIFY option_value LONGTEXT CHARACTER SET latin1 NOT NULL"
    )
    execute(
        wp_network,
        "UPDATE `wp_3_options` SET option_value = UNHEX('436166E9') WHERE option_name = 'blogname'",
    )
    execute(wp_network, "UPDATE `wp_3_options` SET option_value = UNHEX('FF') WHERE option_name = 'WPLANG'")
    b3 = run_discover(wp_network).blog(3)
    assert b3.usable  # the stock options are plain ASCII and still read correctly
    assert b3.notify_no_stock_amount == 2
    assert b3.name == "Caf\ufffd"
    assert any("blogname" in w and "UTF-8" in w for w in b3.warnings)


def test_binary_option_column(wp_network: Any) -> None:
    execute(wp_network, "ALTER TABLE `wp_2_options` MODIFY option_value LONGBLOB NOT NULL")
    execute(
        wp_network, "UPDATE `wp_2_options` SET option_value = UNHEX('C328') WHERE option_name = 'blogname'"
    )
    b2 = run_discover(wp_network).blog(2)
    assert b2.usable and b2.hide_out_of_stock and b2.warnings


def test_custom_product_table_present(wp_network: Any) -> None:
    execute(
        wp_network,
        "CREATE TABLE `wp_3_wc_products` (product_id BIGINT UNSIGNED PRIMARY KEY, sku VARCHAR(100))",
    )
    net = run_discover(wp_network)
    assert not net.blog(3).usable
    assert "wp_3_wc_products" in net.blog(3).problems[0]
    assert [b.blog_id for b in net.usable_blogs()] == [1, 2]


def test_custom_product_tables_option(wp_network: Any) -> None:
    set_option(wp_network, 1, "woocommerce_feature_custom_product_tables_enabled", "yes")
    b1 = run_discover(wp_network).blog(1)
    assert not b1.usable and "custom product tables" in b1.problems[0]


def test_blog_without_woocommerce(make_network: Any) -> None:
    net = make_network(blogs=3, woocommerce_blogs=(1, 2))
    found = run_discover(net)
    assert not found.blog(3).woocommerce and found.blog(3).problems == ()
    assert [b.blog_id for b in found.usable_blogs()] == [1, 2]


# --------------------------------------------------------------------------- not a network
def test_base_prefix_without_blogs_table(wp_network: Any) -> None:
    with pytest.raises(NotMultisiteError) as exc:
        run_discover(wp_network, "shop_")
    msg = str(exc.value)
    assert "shop_blogs" in msg and "database.table_prefix" in msg
    assert "'wp_'" in msg  # points at the prefix that does have a blogs table


def test_empty_database_is_not_a_network(db_engine: sa.Engine) -> None:
    with db_engine.connect() as conn, pytest.raises(NotMultisiteError, match="wp_blogs"):
        discover(conn, "wp_")


def test_invalid_prefix_is_refused_before_any_sql(wp_network: Any) -> None:
    with pytest.raises(ValueError, match="not valid"):
        run_discover(wp_network, "wp_`; DROP TABLE wp_blogs; -- ")
