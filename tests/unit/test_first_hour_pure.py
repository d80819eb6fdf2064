"""Issue 13, the pure parts: which options fit which command, the server minimum, the metrics
listen address, set-stock's quantities, the temporary-table DDL of the preview. No database."""

from __future__ import annotations

from decimal import Decimal

import pytest

from syncd import cli
from syncd.check import too_old, version_tuple
from syncd.config import ConfigError, parse_config
from syncd.metrics import Metrics, parse_listen
from syncd.preview import temporary_statements
from syncd.reconcile import parse_qty
from syncd.schema import OWN_TABLES


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        ([], False),
        (["--dry-run"], True),
        (["--json"], True),
        (["run", "--dry-run"], True),
        (["--dry-run", "install"], True),
        (["--dry-run", "status"], True),
        (["--reconcile", "--dry-run"], False),
        (["run", "--reconcile", "--dry-run", "--json"], False),
        (["--json", "audit"], False),
        (["reconcile", "--dry-run"], False),
        (["set-stock", "A", "1", "--dry-run"], False),
        (["sync", "A", "--dry-run"], False),
        (["--reconcile", "check"], True),
    ],
)
def test_options_must_fit_their_command(argv: list[str], refused: bool) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (cli.misplaced_option(args) is not None) is refused


def test_server_minimum() -> None:
    assert version_tuple("10.11.18-MariaDB-0+deb12u1") == (10, 11, 18)
    assert too_old("mariadb", "10.11.18-MariaDB") is None
    assert too_old("mysql", "8.0.36") is None
    assert "older than syncd supports (MariaDB 10.4+)" in (too_old("mariadb", "10.3.39-MariaDB") or "")
    assert "(MySQL 8.0+)" in (too_old("mysql", "5.7.44-log") or "")


def test_metrics_listen_and_config() -> None:
    assert parse_listen("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_listen("[::1]:9187") == ("::1", 9187)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("9187x")
    cfg = parse_config(
        {"database": {"url": "mysql+pymysql://u@h/db"}, "metrics": {"listen": "127.0.0.1:9187"}}
    )
    assert cfg.metrics.listen == "127.0.0.1:9187"
    assert parse_config({"database": {"url": "mysql+pymysql://u@h/db"}}).metrics.listen == ""
    with pytest.raises(ConfigError, match="metrics.listen"):
        parse_config({"database": {"url": "mysql+pymysql://u@h/db"}, "metrics": {"listen": "nowhere"}})


def test_metrics_lag_from_capture_to_commit() -> None:
    from datetime import UTC, datetime

    m = Metrics()
    captured = datetime(2026, 1, 1, 12, 0, 0)  # naive UTC, as the capture triggers store it
    committed = captured.replace(tzinfo=UTC).timestamp() + 2.0
    m.batch_applied([captured, captured], writes=4, committed_at=committed)
    assert m.registry.get_sample_value("syncd_propagation_lag_seconds_count") == 2
    assert m.registry.get_sample_value("syncd_propagation_lag_seconds_sum") == pytest.approx(4.0)
    assert m.registry.get_sample_value("syncd_member_writes_total") == 4
    m.dead_letter("errno 1264")
    assert m.registry.get_sample_value("syncd_dead_letters_total", {"reason": "errno 1264"}) == 1


@pytest.mark.parametrize(("text", "value"), [("12", 12), ("-3", -3), ("12.0", 12), (" 7 ", 7)])
def test_set_stock_takes_whole_numbers(text: str, value: int) -> None:
    assert parse_qty(text) == Decimal(value)


@pytest.mark.parametrize(
    ("text", "why"), [("2.5", "whole number"), (str(2**60), "exact range"), ("x", "a number")]
)
def test_set_stock_refuses_what_woocommerce_would_not_store(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_qty(text)


def test_preview_tables_are_temporary_copies_of_syncd_s_tables() -> None:
    stmts = temporary_statements("wp_")
    assert len(stmts) == len(OWN_TABLES)
    assert all(s.startswith("CREATE TEMPORARY TABLE `wp_syncd_") for s in stmts)
