"""The test harness itself: a reachable server, isolated databases, the recorded and generated networks."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from syncd.db import make_engine, table
from syncd.testnet import wordpress
from syncd.testnet.harness import docker_engine_answers


def test_server_reachable(mysql_server: Any) -> None:
    engine = make_engine(mysql_server.root_url())
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
            mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar_one()
    finally:
        engine.dispose()
    assert version == mysql_server.version
    assert mysql_server.flavor in ("mariadb", "mysql")
    assert "STRICT" not in mode  # make_engine's WordPress-like session applies on this server


def test_docker_probe_is_fast() -> None:
    # The probe runs on every session start; without an engine it must fall through quickly.
    t0 = time.monotonic()
    docker_engine_answers()
    assert time.monotonic() - t0 < 2.0


def test_db_url_is_fresh_and_empty(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SHOW TABLES").fetchall() == []
            conn.exec_driver_sql("CREATE TABLE leak_check (id INT PRIMARY KEY)")
    finally:
        engine.dispose()


def test_db_url_isolation_between_tests(db_url: str) -> None:
    # Same as the test above: if databases leaked between tests, one of the two would see leak_check.
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SHOW TABLES").fetchall() == []
            conn.exec_driver_sql("CREATE TABLE leak_check (id INT PRIMARY KEY)")
    finally:
        engine.dispose()


def _count(conn: sa.Connection, prefix: str, suffix: str) -> int:
    return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table(prefix, suffix)}").scalar_one())


def test_recorded_network_loads(wp_network: Any) -> None:
    assert wp_network.prefix == "wp_"
    assert wp_network.blog_prefix(1) == "wp_" and wp_network.blog_prefix(3) == "wp_3_"
    rows = wordpress.baseline_rows()
    with wp_network.engine.connect() as conn:
        assert len(wordpress.list_tables(conn)) == 155
        blogs = conn.exec_driver_sql("SELECT blog_id, path FROM wp_blogs ORDER BY blog_id").fetchall()
        assert [tuple(b) for b in blogs] == [(1, "/"), (2, "/site2/"), (3, "/site3/")]
        # Every baseline table has exactly the baseline's rows.
        for name, trows in rows.items():
            assert int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM `{name}`").scalar_one()) == len(trows), (
                name
            )
        # The catalogue agrees with the database, product by product.
        for blog_id, blog in wp_network.catalogue["blogs"].items():
            p = wp_network.blog_prefix(int(blog_id))
            for prod in blog["products"]:
                meta = dict(
                    conn.execute(
                        sa.text(
                            f"SELECT meta_key, meta_value FROM {table(p, 'postmeta')} WHERE post_id = :id "
                            "AND meta_key IN ('_sku', '_stock', '_stock_status', '_manage_stock', '_backorders')"
                        ),
                        {"id": prod["id"]},
                    ).fetchall()
                )
                assert meta["_sku"] == prod["sku"]
                for key in ("_stock", "_stock_status", "_manage_stock", "_backorders"):
                    assert meta.get(key) == prod[key], (blog_id, prod["sku"], key)


def test_recorded_network_copies_are_isolated(wp_network: Any, network_factory: Any) -> None:
    with wp_network.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE wp_postmeta SET meta_value = '999' WHERE post_id = 11 AND meta_key = '_stock'"
        )
    other = network_factory.recorded_network()
    try:
        with other.engine.connect() as conn:
            stock = conn.exec_driver_sql(
                "SELECT meta_value FROM wp_postmeta WHERE post_id = 11 AND meta_key = '_stock'"
            ).scalar_one()
        assert stock == "10"
        assert other.database != wp_network.database
    finally:
        network_factory.release(other)


def test_recorded_network_is_cloned_from_the_template_not_rebuilt(network_factory: Any) -> None:
    """What keeps a recorded network cheap: every one after the first is a copy of one template
    database, built once per server. (Its speed is not asserted here: on a loaded machine a copy
    took 3.8 s; speed belongs in bench/, as the brief says.)"""
    network_factory.release(network_factory.recorded_network())
    template = network_factory._template
    net = network_factory.recorded_network()
    try:
        assert network_factory._template == template
        with net.engine.connect() as conn:
            products = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM wp_posts WHERE post_type = 'product'"
            ).scalar()
        assert products and products > 0
    finally:
        network_factory.release(net)


def test_make_network_shop_prefix_four_blogs(make_network: Any) -> None:
    net = make_network(
        blogs=4, prefix="shop_", polylang_blogs=(3,), options={2: {"woocommerce_notify_no_stock_amount": "2"}}
    )
    assert net.blog_ids == (1, 2, 3, 4)
    with net.engine.connect() as conn:
        tables = set(wordpress.list_tables(conn))
        for b in net.blog_ids:
            p = net.blog_prefix(b)
            for suffix in wordpress.blog_table_suffixes():
                assert p + suffix in tables
        for suffix in wordpress.NETWORK_TABLES:
            assert "shop_" + suffix in tables
        assert not any(t.startswith("wp_") for t in tables)
        blogs = conn.exec_driver_sql(
            "SELECT blog_id, path, deleted, archived FROM shop_blogs ORDER BY blog_id"
        ).fetchall()
        assert [tuple(b) for b in blogs] == [
            (1, "/", 0, 0),
            (2, "/site2/", 0, 0),
            (3, "/site3/", 0, 0),
            (4, "/site4/", 0, 0),
        ]
        opt = conn.exec_driver_sql(
            "SELECT option_value FROM shop_2_options WHERE option_name = 'woocommerce_notify_no_stock_amount'"
        ).scalar_one()
        assert opt == "2"
        plugins = conn.exec_driver_sql(
            "SELECT option_value FROM shop_3_options WHERE option_name = 'active_plugins'"
        ).scalar_one()
        assert "polylang/polylang.php" in plugins and "woocommerce/woocommerce.php" in plugins
        # WooCommerce installer terms with the ids a fresh install gives them (outofstock = 9).
        tt = dict(
            conn.exec_driver_sql(
                "SELECT t.slug, tt.term_taxonomy_id FROM shop_4_terms t JOIN shop_4_term_taxonomy tt "
                "ON tt.term_id = t.term_id WHERE tt.taxonomy = 'product_visibility'"
            ).fetchall()
        )
        assert tt["outofstock"] == 9
        langs = (
            conn.exec_driver_sql(
                "SELECT t.slug FROM shop_3_terms t JOIN shop_3_term_taxonomy tt ON tt.term_id = t.term_id "
                "WHERE tt.taxonomy = 'language' ORDER BY t.term_group"
            )
            .scalars()
            .all()
        )
        assert langs == ["en", "fr"]
        # Same column definitions and collation as the recorded WooCommerce schema.
        ddl = conn.exec_driver_sql("SHOW CREATE TABLE shop_3_postmeta").fetchone()[1]
        assert "utf8mb4_unicode_520_ci" in ddl and "`meta_value` longtext" in ddl


def test_blog_helpers(make_network: Any) -> None:
    net = make_network(blogs=3)
    with net.engine.begin() as conn:
        wordpress.mark_blog_deleted(conn, net.prefix, 2)
        wordpress.mark_blog_archived(conn, net.prefix, 3)
        flags = conn.exec_driver_sql(
            "SELECT blog_id, deleted, archived FROM wp_blogs ORDER BY blog_id"
        ).fetchall()
        assert [tuple(f) for f in flags] == [(1, 0, 0), (2, 1, 0), (3, 0, 1)]
        wordpress.drop_blog_tables(conn, net.prefix, 3)
        tables = wordpress.list_tables(conn)
        assert not any(t.startswith("wp_3_") for t in tables)
        assert "wp_2_posts" in tables and "wp_posts" in tables
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM wp_blogs").scalar_one() == 2


def test_private_server_restart_and_kill_keep_data(private_server: Any, db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE survive (id INT PRIMARY KEY)")
            conn.exec_driver_sql("INSERT INTO survive VALUES (1)")
        port, socket_path = private_server.port, private_server.socket
        private_server.kill()  # crash: no clean shutdown
        assert not private_server.running
        private_server.restart()  # same datadir, port and socket
        assert (private_server.port, private_server.socket) == (port, socket_path)
        engine.dispose()  # pooled connections died with the old process
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT id FROM survive").scalar_one() == 1
        private_server.restart()  # clean shutdown + start
        engine.dispose()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM survive").scalar_one() == 1
    finally:
        engine.dispose()
