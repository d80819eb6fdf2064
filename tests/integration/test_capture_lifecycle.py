"""Capture lifecycle: `syncd install` / `uninstall` through the real CLI, trigger upgrade, triggers on
a blog created while the daemon runs, what is (not) captured, and that syncd's own writes are never
captured again (echo).
"""

from __future__ import annotations

import re
import threading
import time
from decimal import Decimal

import sqlalchemy as sa

from syncd import capture
from syncd.daemon import EXIT_OK
from syncd.testnet import wordpress
from syncd.testnet.factory import ProductFactory
from tests.integration.daemon_process import (
    Ledger,
    assert_converged,
    members,
    pending,
    quantities,
    refresh_fn,
    run_cli,
    wait_drained,
    write_config,
)
from tests.integration.sync_helpers import make_daemon, set_meta, woo_decrease


def changes(net) -> list[tuple]:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT blog_id, post_id, meta_key, op, old_value, new_value FROM {net.prefix}syncd_change ORDER BY id"
        ).all()


def triggers(net) -> dict[str, tuple]:
    """name -> (table, event, body, created) of every trigger in the network's database."""
    with net.engine.connect() as c:
        rows = c.exec_driver_sql(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_STATEMENT, CREATED "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def wordpress_checksums(net) -> dict[str, int]:
    """CHECKSUM TABLE of every table that is not syncd's own."""
    with net.engine.connect() as c:
        names = [
            r[0]
            for r in c.execute(
                sa.text(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME NOT LIKE :own ORDER BY TABLE_NAME"
                ),
                {"own": net.prefix.replace("_", "\\_") + "syncd\\_%"},
            )
        ]
        assert len(names) > 100, names  # the recorded network: 3 blogs of WordPress + WooCommerce tables
        rows = c.exec_driver_sql("CHECKSUM TABLE " + ", ".join(f"`{n}`" for n in names)).all()
    return {r[0].split(".")[-1]: r[1] for r in rows}


def own_tables(net) -> list[str]:
    with net.engine.connect() as c:
        return [
            r[0]
            for r in c.execute(
                sa.text(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME LIKE :own"
                ),
                {"own": net.prefix.replace("_", "\\_") + "syncd\\_%"},
            )
        ]


# --------------------------------------------------------------------------- install / uninstall
def test_install_is_idempotent_and_uninstall_leaves_woocommerce_data_byte_identical(wp_network, tmp_path):
    net = wp_network
    cfg = write_config(tmp_path, net)
    before = wordpress_checksums(net)
    assert triggers(net) == {}

    first = run_cli(cfg, "install")
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.findall(r"^blog (\d) \(\w+\): triggers (\w+)", first.stdout, re.M) == [
        ("1", "installed"),
        ("2", "installed"),
        ("3", "installed"),
    ], first.stdout
    installed = triggers(net)
    assert sorted(installed) == sorted(
        capture.trigger_name(net.prefix, b, e) for b in (1, 2, 3) for e in capture.EVENTS
    )
    assert wordpress_checksums(net) == before, "install changed WordPress/WooCommerce data"

    second = run_cli(cfg, "install")
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.findall(r"^blog (\d) \(\w+\): triggers (\w+)", second.stdout, re.M) == [
        ("1", "unchanged"),
        ("2", "unchanged"),
        ("3", "unchanged"),
    ], second.stdout
    assert triggers(net) == installed, "a second install re-created triggers"

    # Captured but not applied: uninstall discards it (and says so) without touching the shop's rows.
    tshirt = members(net, "TSHIRT-RED")
    woo_decrease(net, 1, tshirt[1], 2)
    assert pending(net) == 1
    with_sale = wordpress_checksums(net)
    assert with_sale != before  # the sale itself is the shop's own change

    gone = run_cli(cfg, "uninstall", "--yes")  # issue 13: no terminal here, so the script confirms
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "dropped 9 triggers" in gone.stdout
    assert "1 captured changes were still pending" in gone.stdout
    assert triggers(net) == {}
    assert own_tables(net) == []
    assert wordpress_checksums(net) == with_sale, "uninstall changed WordPress/WooCommerce data"
    # The shop keeps working without syncd.
    woo_decrease(net, 2, tshirt[2], 1)
    assert quantities(net, "TSHIRT-RED") == {1: 8, 2: 9, 3: 10}


def test_outdated_trigger_is_upgraded_in_place(wp_network, tmp_path):
    net = wp_network
    cfg = write_config(tmp_path, net)
    assert run_cli(cfg, "install").returncode == 0
    current = triggers(net)
    name = capture.trigger_name(net.prefix, 2, "update")
    good = capture.render_trigger(net.prefix, (2, net.blog_prefix(2)), "update")
    # An older release's trigger: it watched _stock only and did not skip syncd's own session.
    old_sql = (
        f"CREATE TRIGGER `{name}` AFTER UPDATE ON `{net.blog_prefix(2)}postmeta` FOR EACH ROW BEGIN "
        f"IF NEW.meta_key = '_stock' AND NOT (OLD.meta_value <=> NEW.meta_value) THEN "
        f"INSERT INTO `{net.prefix}syncd_change` (blog_id, post_id, meta_key, op, old_value, new_value, captured_at) "
        f"VALUES (2, NEW.post_id, NEW.meta_key, 'U', OLD.meta_value, NEW.meta_value, UTC_TIMESTAMP(6)); END IF; END"
    )
    with net.engine.connect() as c:
        c.exec_driver_sql(f"DROP TRIGGER `{name}`")
        c.exec_driver_sql(old_sql)
        blog2 = next(b for b in wordpress_network_blogs(c, net) if b.blog_id == 2)
        state = capture.blog_trigger_state(capture.installed_triggers(c, net.prefix), net.prefix, blog2)
    assert state.state == "outdated"

    out = run_cli(cfg, "install")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.findall(r"^blog (\d) \(\w+\): triggers (\w+)", out.stdout, re.M) == [
        ("1", "unchanged"),
        ("2", "upgraded"),
        ("3", "unchanged"),
    ], out.stdout
    now = triggers(net)
    assert " ".join(now[name][2].split()) == " ".join(good.body.split())
    assert {k: v for k, v in now.items() if k != name} == {k: v for k, v in current.items() if k != name}
    # The upgraded trigger captures a watched key the old one ignored, exactly once.
    mug = members(net, "MUG")
    set_meta(net, 2, mug[2], "_backorders", "notify")
    assert changes(net) == [(2, mug[2], "_backorders", "U", "no", "notify")]


def wordpress_network_blogs(conn, net):
    from syncd.network import discover

    return discover(conn, net.prefix).usable_blogs()


# --------------------------------------------------------------------------- what is captured
def test_only_real_changes_of_watched_keys_are_captured(wp_network):
    net = wp_network
    d = make_daemon(net, refresh=refresh_fn())
    d.close()
    notebook = members(net, "NOTEBOOK")[1]
    pm = net.table(1, "postmeta")
    with net.engine.connect() as c:
        assert (
            c.exec_driver_sql(
                f"SELECT meta_value FROM {pm} WHERE post_id = {notebook} AND meta_key = '_stock'"
            ).scalar()
            == "5"
        )
        # Re-saving the same values (what a product save without changes does).
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '5' WHERE post_id = {notebook} AND meta_key = '_stock'"
        )
        c.exec_driver_sql(f"UPDATE {pm} SET meta_value = meta_value WHERE post_id = {notebook}")
        # _price churn: WooCommerce deletes and re-inserts price rows on every save.
        price = c.exec_driver_sql(
            f"SELECT meta_value FROM {pm} WHERE post_id = {notebook} AND meta_key = '_price'"
        ).scalar()
        c.exec_driver_sql(f"DELETE FROM {pm} WHERE post_id = {notebook} AND meta_key = '_price'")
        c.exec_driver_sql(
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({notebook}, '_price', '{price}')"
        )
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '99' WHERE post_id = {notebook} AND meta_key = '_regular_price'"
        )
        # Keys nobody watches: edit locks, totals.
        c.exec_driver_sql(
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({notebook}, '_edit_lock', '1:1')"
        )
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '7' WHERE post_id = {notebook} AND meta_key = 'total_sales'"
        )
        # A case-only change is a real change (the column collation would call it equal).
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = 'NOTIFY' WHERE post_id = {notebook} AND meta_key = '_backorders'"
        )
        c.commit()
        # A rolled-back change is never seen.
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '1' WHERE post_id = {notebook} AND meta_key = '_stock'"
        )
        c.rollback()
    assert changes(net) == [(1, notebook, "_backorders", "U", "notify", "NOTIFY")]
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '4' WHERE post_id = {notebook} AND meta_key = '_stock'"
        )
        c.commit()
    assert changes(net)[1:] == [(1, notebook, "_stock", "U", "5", "4")]


# --------------------------------------------------------------------------- echo
def test_syncd_own_writes_are_never_captured(wp_network):
    net = wp_network
    d = make_daemon(net, refresh=refresh_fn())
    try:
        mug = members(net, "MUG")
        # MUG 3 -> 0 everywhere: stock rows, and the derived writes (status, lookup, term) too.
        woo_decrease(net, 1, mug[1], 3)
        assert pending(net) == 1
        assert d.apply_pending() == 1
        assert pending(net) == 0
        assert quantities(net, "MUG") == {1: 0, 2: 0, 3: 0}
        assert d.apply_pending() == 0  # nothing came back

        # Directly: the same statement queues a change from a shop session, none from the apply
        # session, and one from the apply session once its marker is cleared (the trigger did run).
        stmt = (
            f"UPDATE {net.table(2, 'postmeta')} SET meta_value = meta_value + 1 "
            f"WHERE post_id = {mug[2]} AND meta_key = '_stock'"
        )
        with d._apply_engine.connect() as c:
            assert c.exec_driver_sql("SELECT @syncd_apply").scalar() == 1
            assert c.exec_driver_sql(stmt).rowcount == 1
            c.commit()
        assert pending(net) == 0
        with d._apply_engine.connect() as c:
            c.exec_driver_sql("SET @syncd_apply = NULL")
            c.exec_driver_sql(stmt)
            c.commit()
            c.exec_driver_sql("SET @syncd_apply = 1")
        assert [r[2:] for r in changes(net)] == [("_stock", "U", "1", "2")]
        with net.engine.connect() as c:
            c.exec_driver_sql(stmt)
            c.commit()
        assert [r[2:] for r in changes(net)] == [("_stock", "U", "1", "2"), ("_stock", "U", "2", "3")]
    finally:
        d.close()


# --------------------------------------------------------------------------- new blog
def test_blog_created_while_running_gets_triggers_and_syncs(wp_network):
    net = wp_network
    interval = 1.0
    d = make_daemon(net, refresh=refresh_fn(), sync={"discovery_interval": interval})
    exit_code: list[int] = []
    runner = threading.Thread(target=lambda: exit_code.append(d.run()), name="daemon")
    runner.start()
    try:
        start = {"MUG": quantities(net, "MUG")}
        with net.engine.connect() as c:
            wordpress.add_blog(c, net.prefix, 4)
            c.commit()
        net.blog_ids = (1, 2, 3, 4)
        names = {capture.trigger_name(net.prefix, 4, e) for e in capture.EVENTS}
        t0 = time.monotonic()
        while not names <= set(triggers(net)):
            assert time.monotonic() - t0 < 5 * interval + 10, "blog 4 got no triggers"
            assert runner.is_alive()
            time.sleep(0.05)
        assert {triggers(net)[n][0] for n in names} == {"wp_4_postmeta"}

        # The shop creates the product on the new blog (same SKU, same stock), then sells it there.
        with net.engine.connect() as c:
            with ProductFactory(c, net.blog_prefix(4)) as f:
                mug4 = f.simple("MUG", stock=3)
            c.commit()
        wait_drained(net, timeout=30, alive=runner.is_alive)
        woo_decrease(net, 4, mug4, 1)
        wait_drained(net, timeout=30, alive=runner.is_alive)
        assert quantities(net, "MUG") == {1: 2, 2: 2, 3: 2, 4: 2}
        # A sale on an old blog reaches the new one.
        woo_decrease(net, 1, members(net, "MUG")[1], 2)
        wait_drained(net, timeout=30, alive=runner.is_alive)
        assert quantities(net, "MUG") == {1: 0, 2: 0, 3: 0, 4: 0}
    finally:
        d.request_stop()
        runner.join(30)
    assert exit_code == [EXIT_OK]
    start["MUG"][4] = Decimal(3)
    ledger = Ledger()
    ledger.add("MUG", -1)
    ledger.add("MUG", -2)
    assert_converged(net, start, ledger)
