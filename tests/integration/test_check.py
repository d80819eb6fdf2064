"""``syncd check``: grant parsing and the verdict (pure), then the whole check on a real server.

The pure tests at the top need no server; the rest run against the recorded network, with
database users created for the test where a privilege must be missing.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from syncd.check import (
    EXIT_CAPTURE,
    EXIT_FATAL,
    EXIT_NO_BLOGS,
    EXIT_PRIVILEGES,
    EXIT_WARNINGS,
    CheckFacts,
    DuplicateSku,
    Grants,
    build_report,
    db_pattern_matches,
    parse_grants,
    render_text,
    run_check,
)
from syncd.config import Config, config_for
from syncd.network import Blog, Network

# --------------------------------------------------------------------------- grants (pure)
MARIADB_LIMITED = [
    "GRANT USAGE ON *.* TO `syncd`@`%` IDENTIFIED BY PASSWORD '*2B602296A79E0A8784ACC5C88D92E46588CCA3C3'",
    "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, TRIGGER ON `wc`.* TO `syncd`@`%`",
    "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, REFERENCES, INDEX, ALTER, CREATE TEMPORARY TABLES, "
    "LOCK TABLES, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, EVENT, TRIGGER, DELETE HISTORY ON `test\\_%`.* TO PUBLIC",
]


def test_parse_grants_database_level() -> None:
    g = parse_grants(MARIADB_LIMITED, "wc")
    assert all(
        g.has(p)
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER", "TRIGGER")
    )
    assert not g.has_global("SUPER")
    # The PUBLIC grant on `test\_%` covers test_x, not wc, and not testx (escaped underscore).
    assert parse_grants(MARIADB_LIMITED, "test_x").has("EVENT")
    assert not parse_grants(MARIADB_LIMITED, "testx").has("EVENT")


def test_parse_grants_all_privileges_global() -> None:
    g = parse_grants(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"], "anything")
    assert g.has("TRIGGER") and g.has_global("SUPER")


def test_parse_grants_wildcard_database_and_ignored_table_grants() -> None:
    lines = [
        "GRANT USAGE ON *.* TO `wild`@`%`",
        "GRANT ALL PRIVILEGES ON `w\\_%`.* TO `wild`@`%`",
        "GRANT SELECT (`option_name`), UPDATE ON `shop`.`wp_options` TO `wild`@`%`",
        "GRANT TRIGGER ON TABLE `shop`.`wp_postmeta` TO `wild`@`%`",
        "GRANT PROXY ON ''@'%' TO 'wild'@'%'",
        "GRANT `syncd_role` TO `wild`@`%`",
    ]
    assert parse_grants(lines, "w_shop").has("ALTER")
    shop = parse_grants(lines, "shop")
    assert not shop.has("SELECT") and not shop.has("TRIGGER")  # table-level grants do not count


def test_parse_grants_mysql8_style() -> None:
    lines = [
        "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON `wordpress`.* TO `syncd`@`%`",
        "GRANT SUPER ON *.* TO `syncd`@`%`",
        "GRANT BACKUP_ADMIN,SYSTEM_VARIABLES_ADMIN ON *.* TO `syncd`@`%`",
        "GRANT TRIGGER ON `word%`.* TO `syncd`@`%`",
    ]
    g = parse_grants(lines, "wordpress")
    assert g.has("TRIGGER") and g.has("ALTER") and g.has_global("SUPER") and g.has("BACKUP_ADMIN")


@pytest.mark.parametrize(
    ("pattern", "db", "expected"),
    [
        ("wc", "wc", True),
        ("wc", "wcx", False),
        ("w%", "wordpress", True),
        ("w_", "wc", True),
        ("w\\_", "wc", False),
        ("w\\_", "w_", True),
        ("shop.db", "shopxdb", False),  # '.' is not a wildcard
    ],
)
def test_db_pattern_matches(pattern: str, db: str, expected: bool) -> None:
    assert db_pattern_matches(pattern, db) is expected


# --------------------------------------------------------------------------- verdict (pure)
ALL_DB = Grants(frozenset(), frozenset(), all_on_database=True, all_global=False)
CFG = config_for("mysql+pymysql://syncd:pw@db/wc")


def facts(
    grants: Grants = ALL_DB,
    variables: dict[str, Any] | None = None,
    blogs: tuple[Blog, ...] | None = None,
    **kw: Any,
) -> CheckFacts:
    if blogs is None:
        blogs = tuple(
            Blog(blog_id=i, prefix="wp_" if i == 1 else f"wp_{i}_", woocommerce=True) for i in (1, 2)
        )
    return CheckFacts(
        url="mysql+pymysql://syncd:***@db/wc",
        server={"version": "10.11.9-MariaDB", "flavor": "mariadb", "database": "wc"},
        user="syncd@%",
        variables=variables
        or {"log_bin": False, "log_bin_trust_function_creators": False, "read_only": False},
        grants=grants,
        network=kw.pop("network", Network(base_prefix="wp_", blogs=blogs)),
        **kw,
    )


def test_report_ok() -> None:
    report = build_report(facts(), CFG)
    assert report["ok"] and report["exit_code"] == 0
    assert report["capture"]["effective"] == "trigger"
    assert render_text(report).rstrip().endswith("(exit status 0)")


def test_report_missing_privilege() -> None:
    g = Grants(frozenset({"SELECT", "INSERT", "UPDATE", "CREATE", "DROP", "INDEX", "ALTER"}), frozenset())
    report = build_report(facts(g), CFG)
    assert report["exit_code"] == EXIT_PRIVILEGES
    assert report["privileges"]["DELETE"] is False
    assert "DELETE" in report["errors"][0] and "TRIGGER" in report["errors"][0]
    assert report["capture"]["effective"] == "poll"  # auto mode falls back, with a warning
    assert any("polling" in w for w in report["warnings"])


def test_report_binlog_without_trust_or_super() -> None:
    binlog = {"log_bin": True, "log_bin_trust_function_creators": False, "read_only": False}
    auto = build_report(facts(variables=binlog), CFG)
    assert auto["exit_code"] == 0 and auto["capture"]["effective"] == "poll"
    trigger_cfg = config_for("mysql+pymysql://syncd:pw@db/wc", capture={"mode": "trigger"})
    strict_mode = build_report(facts(variables=binlog), trigger_cfg)
    assert strict_mode["exit_code"] == EXIT_CAPTURE
    assert "log_bin_trust_function_creators" in strict_mode["errors"][0]
    trusted = {**binlog, "log_bin_trust_function_creators": True}
    assert build_report(facts(variables=trusted), trigger_cfg)["exit_code"] == 0
    with_super = Grants(frozenset(), frozenset({"SUPER"}), all_on_database=True)
    assert build_report(facts(with_super, variables=binlog), trigger_cfg)["exit_code"] == 0


def test_report_poll_mode_needs_no_trigger() -> None:
    no_trigger = Grants(
        frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER"}), frozenset()
    )
    cfg = config_for("mysql+pymysql://syncd:pw@db/wc", capture={"mode": "poll"})
    report = build_report(facts(no_trigger), cfg)
    assert report["exit_code"] == 0 and report["capture"]["effective"] == "poll" and report["warnings"] == []


def test_report_not_a_network() -> None:
    report = build_report(facts(network=None, network_error="database 'wc' has no table wp_blogs"), CFG)
    assert report["exit_code"] & EXIT_FATAL and "wp_blogs" in report["errors"][0]


def test_report_fewer_than_two_usable_blogs() -> None:
    blogs = (
        Blog(blog_id=1, prefix="wp_", woocommerce=True),
        Blog(blog_id=2, prefix="wp_2_", woocommerce=True, problems=("active_plugins is not valid",)),
        Blog(blog_id=3, prefix="wp_3_"),
    )
    report = build_report(facts(blogs=blogs), CFG)
    assert report["exit_code"] == EXIT_NO_BLOGS
    assert [b["status"] for b in report["blogs"]] == ["usable", "left alone", "no WooCommerce"]


def test_report_blogs_excluded_by_configuration_do_not_count() -> None:
    cfg = config_for("mysql+pymysql://syncd:pw@db/wc", blogs={"exclude": [2]})
    report = build_report(facts(), cfg)
    assert report["exit_code"] == EXIT_NO_BLOGS
    assert report["blogs"][1]["status"] == "excluded by configuration"


def test_report_strict_turns_warnings_into_bit_32() -> None:
    f = facts(duplicates={1: (DuplicateSku("MUG", "", (12, 15)),)})
    assert build_report(f, CFG)["exit_code"] == 0
    assert build_report(f, CFG, strict=True)["exit_code"] == EXIT_WARNINGS


# --------------------------------------------------------------------------- real server
def check(config: Config, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(config, out=out, **kw)
    return code, out.getvalue()


def catalogue_counts(catalogue: dict, blog_id: int) -> dict[str, int]:
    products = catalogue["blogs"][str(blog_id)]["products"]
    return {
        "products": sum(p["post_type"] == "product" for p in products),
        "variations": sum(p["post_type"] == "product_variation" for p in products),
        "with_sku": sum(bool(p["sku"]) for p in products),
        "managing_stock": sum(p["_manage_stock"] == "yes" for p in products),
    }


def test_check_text_on_recorded_network(wp_network: Any) -> None:
    code, text = check(config_for(wp_network.url))
    assert code == 0, text
    assert "Result: OK" in text
    lines = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.startswith("  ") and line.split()[0].isdigit()
    }
    assert set(lines) == {"1", "2", "3"}
    assert "wp_2_" in lines["2"] and "/site2/" in lines["2"] and "11.0.1" in lines["2"]
    assert lines["1"].split()[4] == "no" and lines["2"].split()[4] == "yes" and lines["3"].split()[4] == "yes"
    assert all(line.rstrip().endswith("usable") for line in lines.values())


def test_check_json_on_recorded_network(wp_network: Any) -> None:
    code, text = check(config_for(wp_network.url), json_output=True)
    report = json.loads(text)
    assert code == 0 and report["ok"] and report["exit_code"] == 0
    assert report["database"]["database"] == wp_network.database
    assert report["database"]["flavor"] in ("mariadb", "mysql")
    assert "***" not in report["database"]["url"] or ":***@" in report["database"]["url"]
    assert all(report["privileges"][p] for p in ("SELECT", "DELETE", "ALTER", "TRIGGER"))
    assert report["network"] == {
        "base_prefix": "wp_",
        "live_blogs": 3,
        "skipped_blogs": 0,
        "usable_blogs": 3,
    }
    by_id = {b["blog_id"]: b for b in report["blogs"]}
    assert [by_id[i]["polylang"] for i in (1, 2, 3)] == [False, True, True]
    assert all(by_id[i]["woocommerce"] and by_id[i]["woocommerce_version"] == "11.0.1" for i in (1, 2, 3))
    assert by_id[3]["notify_no_stock_amount"] == 2 and by_id[2]["hide_out_of_stock"] is True
    for i in (1, 2, 3):
        assert by_id[i]["counts"] == catalogue_counts(wp_network.catalogue, i)
        assert by_id[i]["duplicate_skus"] == [] and by_id[i]["problems"] == []


def set_sku(net: Any, blog_id: int, post_id: int, sku: str) -> None:
    with net.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = :s WHERE post_id = :p AND meta_key = '_sku'"
            ),
            {"s": sku, "p": post_id},
        )


def test_check_finds_injected_duplicate_skus(wp_network: Any) -> None:
    set_sku(wp_network, 1, 15, "mug")  # STICKER now 'mug': equal to MUG under the column's _ci collation
    set_sku(wp_network, 2, 20, "BOOK")  # STICKER (en) now BOOK: duplicates BOOK@en, not BOOK@fr
    set_sku(wp_network, 3, 22, "MUG")  # POSTER on blog 3 takes MUG but is in the trash: not a duplicate
    with wp_network.engine.begin() as conn:
        conn.execute(sa.text("UPDATE `wp_3_posts` SET post_status = 'trash' WHERE ID = 22"))

    code, text = check(config_for(wp_network.url), json_output=True)
    report = json.loads(text)
    assert code == 0  # duplicates are warnings: syncd still runs (it leaves those SKUs unlinked)
    by_id = {b["blog_id"]: b for b in report["blogs"]}
    assert [(d["sku"].upper(), d["lang"], d["post_ids"]) for d in by_id[1]["duplicate_skus"]] == [
        ("MUG", None, [12, 15])
    ]
    assert [(d["sku"], d["lang"], d["post_ids"]) for d in by_id[2]["duplicate_skus"]] == [
        ("BOOK", "en", [18, 20])
    ]
    assert by_id[3]["duplicate_skus"] == []
    assert any("duplicate SKU" in w and "blog 1" in w for w in report["warnings"])

    strict_code, human = check(config_for(wp_network.url), strict=True)
    assert strict_code == EXIT_WARNINGS
    assert "duplicate SKU 'BOOK' (language en) on posts 18, 20" in human


def test_check_reports_products_with_duplicate_watched_meta_rows(wp_network: Any) -> None:
    """Issue 9 path 0: a product holding a watched key twice (a WooCommerce save raced by another
    writer) is unsafe: every sale would count twice. The daemon skips it; check names it."""
    with wp_network.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO `wp_2_postmeta` (post_id, meta_key, meta_value) VALUES (24, '_stock', '9')"))
    code, text = check(config_for(wp_network.url), json_output=True)
    report = json.loads(text)
    by_id = {b["blog_id"]: b for b in report["blogs"]}
    assert by_id[2]["duplicate_meta_rows"] == [{"post_id": 24, "meta_key": "_stock", "rows": 2}]
    assert by_id[1]["duplicate_meta_rows"] == by_id[3]["duplicate_meta_rows"] == []
    assert any("post 24 has 2 _stock rows" in w for w in report["warnings"])


def test_check_reports_broken_and_skipped_blogs(wp_network: Any) -> None:
    with wp_network.engine.begin() as conn:
        conn.execute(sa.text("UPDATE `wp_blogs` SET archived = 1 WHERE blog_id = 3"))
        conn.execute(
            sa.text(
                "UPDATE `wp_2_options` SET option_value = 'a:1:{i:0;s:9:\"woo' WHERE option_name = 'active_plugins'"
            )
        )
    code, text = check(config_for(wp_network.url), json_output=True)
    report = json.loads(text)
    assert code == EXIT_NO_BLOGS
    by_id = {b["blog_id"]: b for b in report["blogs"]}
    assert by_id[3]["status"] == "skipped (archived)"
    assert by_id[2]["status"] == "left alone"
    assert "active_plugins is not valid PHP-serialized data" in by_id[2]["problems"][0]
    assert any("at least two" in e for e in report["errors"])


def test_check_wrong_prefix_is_fatal(wp_network: Any) -> None:
    code, text = check(config_for(wp_network.url, "shop_"))
    assert code == EXIT_FATAL
    assert "shop_blogs" in text and "NOT OK" in text


# --------------------------------------------------------------------------- privileges on a real server
@pytest.fixture
def make_user(mysql_server: Any) -> Iterator[Any]:
    """Create database users with given grants on a database; dropped after the test."""
    root = sa.create_engine(mysql_server.root_url(), poolclass=sa.pool.NullPool)
    made: list[str] = []

    def _make(database: str, privileges: str) -> tuple[str, str]:
        name = f"syncd_t_{secrets.token_hex(4)}"
        password = "Pw-" + secrets.token_hex(8)
        with root.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text(f"GRANT {privileges} ON `{database}`.* TO '{name}'@'%'"))
        made.append(name)
        return name, password

    try:
        yield _make
    finally:
        with root.begin() as conn:
            for name in made:
                conn.execute(sa.text(f"DROP USER IF EXISTS '{name}'@'%'"))
        root.dispose()


def user_url(net: Any, user: str, password: str) -> str:
    return make_url(net.url).set(username=user, password=password).render_as_string(hide_password=False)


def test_check_user_missing_privileges(wp_network: Any, make_user: Any) -> None:
    user, password = make_user(wp_network.database, "SELECT, INSERT, UPDATE, CREATE, DROP, INDEX, ALTER")
    code, text = check(config_for(user_url(wp_network, user, password)), json_output=True)
    report = json.loads(text)
    assert code == EXIT_PRIVILEGES
    assert report["privileges"]["DELETE"] is False and report["privileges"]["TRIGGER"] is False
    assert report["privileges"]["SELECT"] is True
    assert report["capture"]["effective"] == "poll"
    assert password not in text


def test_check_user_with_exact_grants_can_run(wp_network: Any, make_user: Any) -> None:
    user, password = make_user(
        wp_network.database, "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, TRIGGER"
    )
    code, text = check(config_for(user_url(wp_network, user, password)))
    binlog_blocks = "NOT POSSIBLE" in text or "falls back to polling" in text
    assert code == 0, text
    assert "TRIGGER yes" in text
    # Whether triggers are possible also depends on the server's binary log settings.
    assert ("mode auto -> trigger" in text) != binlog_blocks


def test_check_trigger_mode_without_trigger_privilege(wp_network: Any, make_user: Any) -> None:
    user, password = make_user(
        wp_network.database, "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER"
    )
    cfg = config_for(user_url(wp_network, user, password), capture={"mode": "trigger"})
    code, text = check(cfg)
    assert code == EXIT_CAPTURE
    assert "TRIGGER privilege" in text


def test_report_poll_mode_refuses_a_realtime_group_that_needs_triggers(monkeypatch) -> None:
    """Issue 10: post columns and terms cannot be polled; `syncd check` says so as the daemon does."""
    from syncd.fields import realtime
    from tests.integration.fields_helpers import PRICE, PlainTitleGroup

    no_trigger = Grants(
        frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER"}), frozenset()
    )
    cfg = config_for("mysql+pymysql://syncd:pw@db/wc", capture={"mode": "poll"})
    monkeypatch.setattr(realtime, "realtime_groups", lambda config: {"price": PRICE})  # meta keys: polled
    assert build_report(facts(no_trigger), cfg)["exit_code"] == 0
    monkeypatch.setattr(realtime, "realtime_groups", lambda config: {"content": PlainTitleGroup()})
    report = build_report(facts(no_trigger), cfg)
    assert report["exit_code"] & 8 and report["errors"][0].startswith(
        '[fields] content = "realtime" needs triggers'
    )


def test_report_binlog_mode_needs_a_readable_row_log_and_triggers_only_for_posts_and_terms(monkeypatch) -> None:
    """capture.mode = "binlog" (issue 10's trigger cost): postmeta is compared with the snapshot where
    the binary log points, so the log must be on, in ROW format, and readable; TRIGGER is needed only
    by a realtime group with posts columns or terms."""
    from syncd.fields import realtime
    from tests.integration.fields_helpers import PRICE, PlainTitleGroup

    cfg = config_for("mysql+pymysql://syncd:pw@db/wc", capture={"mode": "binlog"})
    row_log = {"log_bin": True, "log_bin_trust_function_creators": True, "read_only": False, "binlog_row": True}
    no_trigger = Grants(
        frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER"}),
        frozenset({"REPLICATION SLAVE", "BINLOG MONITOR"}),
    )
    monkeypatch.setattr(realtime, "realtime_groups", lambda config: {"price": PRICE})
    report = build_report(facts(no_trigger, variables=row_log), cfg)
    assert report["exit_code"] == 0, report["errors"]
    assert report["capture"]["effective"] == "binlog" and "no trigger" in report["capture"]["reason"]

    off = build_report(facts(no_trigger, variables={**row_log, "log_bin": False}), cfg)
    assert off["exit_code"] & EXIT_CAPTURE and "binary log is off" in off["errors"][0]
    mixed = build_report(facts(no_trigger, variables={**row_log, "binlog_row": False}), cfg)
    assert mixed["exit_code"] & EXIT_CAPTURE and "not ROW" in mixed["errors"][0]
    unreadable = build_report(facts(variables=row_log), cfg)  # ALL on the database, nothing global
    assert unreadable["exit_code"] & EXIT_CAPTURE and "REPLICATION SLAVE" in unreadable["errors"][0]

    monkeypatch.setattr(realtime, "realtime_groups", lambda config: {"content": PlainTitleGroup()})
    needs = build_report(facts(no_trigger, variables=row_log), cfg)
    assert needs["exit_code"] & EXIT_CAPTURE and "content need posts or terms triggers" in needs["errors"][0]
    granted = Grants(frozenset(), frozenset({"REPLICATION SLAVE", "BINLOG MONITOR"}), all_on_database=True)
    ok = build_report(facts(granted, variables=row_log), cfg)
    assert ok["exit_code"] == 0 and "triggers for content" in ok["capture"]["reason"]
