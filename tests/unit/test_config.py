"""Configuration parsing: defaults, environment overrides, and one failing case per key.

Pure: no database. Each bad value must fail with a ConfigError naming the dotted key and the form
expected, because that message is all an operator sees when the daemon refuses to start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from syncd.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    config_for,
    load_config,
    parse_config,
)

URL = "mysql+pymysql://syncd:s3cret-pw@db.example:3307/wordpress"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "syncd.toml"
    p.write_text(text, encoding="utf-8")
    return p


def minimal(**extra: dict) -> dict:
    data: dict = {"database": {"url": URL}}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return data


# --------------------------------------------------------------------------- defaults and values
def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f'[database]\nurl = "{URL}"\n'), env={})
    assert cfg.source == str(tmp_path / "syncd.toml")
    assert cfg.database.table_prefix == "wp_"
    assert cfg.database.lock_wait_timeout == 1
    assert cfg.database.connect_timeout == 5.0
    assert cfg.database.multi_statements is True
    assert cfg.capture.mode == "auto"
    assert cfg.capture.poll_interval == 1.0
    assert cfg.sync.batch_size == 500
    assert cfg.sync.idle_wait == 0.01
    assert cfg.sync.exclude_skus == ()
    assert cfg.sync.discovery_interval == 30.0
    assert cfg.sync.install_triggers is True
    assert cfg.history.retention_days == 30
    assert cfg.log.level == "info"
    assert cfg.log.format == "auto"
    assert cfg.blogs.include is None
    assert cfg.blogs.exclude == ()


def test_full_file(tmp_path: Path) -> None:
    text = f"""
[database]
url = "{URL}"
table_prefix = "shop_"
lock_wait_timeout = 2
connect_timeout = 2.5

[capture]
mode = "poll"
poll_interval = 0.5

[sync]
batch_size = 50
idle_wait = 0
exclude_skus = ["GIFT-*", "SAMPLE"]
discovery_interval = 10
install_triggers = false

[history]
retention_days = 7

[log]
level = "DEBUG"
format = "json"

[blogs]
include = [1, 2, 5]
exclude = [5]
"""
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.database.table_prefix == "shop_"
    assert cfg.database.lock_wait_timeout == 2
    assert cfg.database.connect_timeout == 2.5
    assert (cfg.capture.mode, cfg.capture.poll_interval) == ("poll", 0.5)
    assert cfg.sync.batch_size == 50
    assert cfg.sync.idle_wait == 0.0
    assert cfg.sync.exclude_skus == ("GIFT-*", "SAMPLE")
    assert cfg.sync.discovery_interval == 10.0
    assert cfg.sync.install_triggers is False
    assert cfg.history.retention_days == 7
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert cfg.blogs.include == (1, 2, 5) and cfg.blogs.exclude == (5,)
    assert cfg.blogs.selects(1) and not cfg.blogs.selects(5) and not cfg.blogs.selects(3)
    # Frozen: nobody changes the configuration at run time by accident.
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sync.batch_size = 1  # type: ignore[misc]


def test_sku_exclusion_is_exact_or_glob() -> None:
    cfg = parse_config(minimal(sync={"exclude_skus": ["GIFT-*", "SAMPLE", "A[1]"]}))
    assert cfg.sync.sku_excluded("GIFT-CARD-50")
    assert cfg.sync.sku_excluded("SAMPLE")
    assert cfg.sync.sku_excluded("A[1]")  # an exact SKU that happens to look like a glob
    assert not cfg.sync.sku_excluded("SAMPLES")
    assert not cfg.sync.sku_excluded("gift-card")  # SKU comparison is case-sensitive here


def test_unix_socket_url_and_server_description() -> None:
    cfg = parse_config(
        {"database": {"url": "mysql+pymysql://syncd:pw@localhost/wp?unix_socket=/run/mysqld/mysqld.sock"}}
    )
    assert cfg.database.server == "/run/mysqld/mysqld.sock"
    assert cfg.database.user == "syncd" and cfg.database.database == "wp"
    assert config_for(URL).database.server == "db.example:3307"


def test_plain_mysql_scheme_is_normalised_to_pymysql() -> None:
    cfg = parse_config({"database": {"url": "mysql://u:p@h/db"}})
    assert cfg.database.url.startswith("mysql+pymysql://")


# --------------------------------------------------------------------------- environment
def test_env_database_url_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "mysql+pymysql://file:filepw@filehost/filedb"\n')
    cfg = load_config(path, env={"SYNCD_DATABASE_URL": URL})
    assert cfg.database.sa_url.host == "db.example"
    assert cfg.database.sa_url.password == "s3cret-pw"


def test_env_password_is_injected_with_special_characters(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "mysql+pymysql://syncd@db/wordpress"\n')
    secret = "p@ss:w/rd%?#&"
    cfg = load_config(path, env={"SYNCD_DATABASE_PASSWORD": secret})
    assert cfg.database.sa_url.password == secret
    assert cfg.database.sa_url.host == "db" and cfg.database.database == "wordpress"


def test_env_config_path_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, f'[database]\nurl = "{URL}"\n[sync]\nbatch_size = 7\n')
    assert load_config(env={"SYNCD_CONFIG": str(path)}).sync.batch_size == 7


def test_explicit_path_wins_over_env(tmp_path: Path) -> None:
    a = write(tmp_path, f'[database]\nurl = "{URL}"\n[sync]\nbatch_size = 1\n')
    other = tmp_path / "other.toml"
    other.write_text(f'[database]\nurl = "{URL}"\n[sync]\nbatch_size = 2\n', encoding="utf-8")
    assert load_config(a, env={"SYNCD_CONFIG": str(other)}).sync.batch_size == 1


def test_no_file_but_env_url_runs_on_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    cfg = load_config(env={"SYNCD_DATABASE_URL": URL})
    assert cfg.source is None and cfg.sync.batch_size == 500


# --------------------------------------------------------------------------- redaction
def test_redacted_removes_the_password_everywhere() -> None:
    cfg = parse_config(minimal(sync={"exclude_skus": ["X"]}))
    red = cfg.redacted()
    assert "s3cret-pw" not in repr(red)
    assert red["database"]["url"] == "mysql+pymysql://syncd:***@db.example:3307/wordpress"
    assert red["sync"]["exclude_skus"] == ["X"]
    # repr() of the config (exception messages, debuggers) does not show it either.
    assert "s3cret-pw" not in repr(cfg)


def test_with_log_overrides_and_validates() -> None:
    cfg = config_for(URL).with_log("debug", None)
    assert (cfg.log.level, cfg.log.format) == ("debug", "auto")
    with pytest.raises(ConfigError, match="log.format"):
        config_for(URL).with_log(None, "xml")


# --------------------------------------------------------------------------- errors: file level
def test_missing_explicit_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_config(missing, env={})
    assert str(missing) in str(exc.value) and "not found" in str(exc.value)


def test_missing_default_file_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    with pytest.raises(ConfigError) as exc:
        load_config(env={})
    msg = str(exc.value)
    assert DEFAULT_CONFIG_PATH in msg and "--config" in msg and "SYNCD_DATABASE_URL" in msg


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[database\nurl = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(path) in str(exc.value) and "not valid TOML" in str(exc.value) and "line 1" in str(exc.value)


def test_missing_url() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"sync": {}}, env={})
    assert exc.value.key == "database.url"
    assert "SYNCD_DATABASE_URL" in str(exc.value)


def test_error_message_carries_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, f'[database]\nurl = "{URL}"\n[sync]\nbatch_size = 0\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value).startswith(f"{path}: sync.batch_size: expected an integer")


# --------------------------------------------------------------------------- errors: each key
BAD_VALUES = [
    ("database", "multi_statements", "no", "expected true or false"),
    ("database", "url", "sqlite:///x.db", "mysql+pymysql://"),
    ("database", "url", "mysql+pymysql://u:p@h", "names no database"),
    ("database", "url", 42, "expected a URL string"),
    ("database", "url", "", "expected a URL string"),
    ("database", "table_prefix", "wp-", "base table prefix"),
    ("database", "table_prefix", "wp_; DROP TABLE x", "base table prefix"),
    ("database", "table_prefix", "", "base table prefix"),
    ("database", "table_prefix", 1, "base table prefix"),
    ("database", "lock_wait_timeout", 0, "integer from 1"),
    ("database", "lock_wait_timeout", 1.5, "integer from 1"),
    ("database", "lock_wait_timeout", True, "integer from 1"),
    ("database", "connect_timeout", 0, "number of seconds"),
    ("database", "connect_timeout", "5", "number of seconds"),
    ("capture", "mode", "triggers", "'auto', 'trigger', 'poll'"),
    ("capture", "poll_interval", 0, "number of seconds"),
    ("capture", "poll_interval", -1.0, "number of seconds"),
    ("sync", "batch_size", 0, "integer from 1 to 100000"),
    ("sync", "batch_size", "500", "integer from 1 to 100000"),
    ("sync", "batch_size", 10**9, "integer from 1 to 100000"),
    ("sync", "batch_size", True, "integer from 1 to 100000"),
    ("sync", "idle_wait", -0.1, "number of seconds"),
    ("sync", "idle_wait", float("nan"), "number of seconds"),
    ("sync", "exclude_skus", "GIFT-*", "list of non-empty SKU strings"),
    ("sync", "exclude_skus", ["A", 3], "list of non-empty SKU strings"),
    ("sync", "exclude_skus", [""], "list of non-empty SKU strings"),
    ("sync", "discovery_interval", 0, "number of seconds"),
    ("sync", "install_triggers", "yes", "true or false"),
    ("sync", "install_triggers", 1, "true or false"),
    ("history", "retention_days", 0, "integer from 1"),
    ("history", "retention_days", 2.5, "integer from 1"),
    ("log", "level", "verbose", "'debug', 'info'"),
    ("log", "level", 10, "'debug', 'info'"),
    ("log", "format", "xml", "'auto', 'console', 'json', 'journal'"),
    ("blogs", "include", [0], "list of distinct blog ids"),
    ("blogs", "include", "1,2", "list of distinct blog ids"),
    ("blogs", "include", [1, 1], "list of distinct blog ids"),
    ("blogs", "exclude", [True], "list of distinct blog ids"),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), BAD_VALUES)
def test_each_bad_value_names_key_and_form(section: str, key: str, value: object, expected: str) -> None:
    data = minimal()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as exc:
        parse_config(data, env={})
    assert exc.value.key == f"{section}.{key}"
    assert f"{section}.{key}" in str(exc.value)
    assert expected in str(exc.value)


def test_bad_url_never_echoes_the_password() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"database": {"url": "postgresql://u:TopSecret1@h/db"}}, env={})
    assert "TopSecret1" not in str(exc.value)


def test_bad_env_url_is_blamed_on_the_env_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(minimal(), env={"SYNCD_DATABASE_URL": "sqlite:///x"})
    assert exc.value.key == "SYNCD_DATABASE_URL"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(minimal(sync={"batchsize": 5}), env={})
    assert exc.value.key == "sync.batchsize"
    assert "batch_size" in str(exc.value)  # lists the keys it knows


def test_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**minimal(), "daemon": {"x": 1}}, env={})
    assert exc.value.key == "daemon" and "[daemon]" in str(exc.value)


def test_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**minimal(), "sync": 5}, env={})
    assert exc.value.key == "sync"


def test_config_is_a_plain_dataclass_built_in_code() -> None:
    cfg = config_for(URL, "shop_", sync={"batch_size": 3})
    assert isinstance(cfg, Config)
    assert cfg.database.table_prefix == "shop_" and cfg.sync.batch_size == 3


def test_binlog_capture_compares_everything_once_a_minute_unless_told(tmp_path: Path) -> None:
    """In binlog capture the binary log names every write; the full comparison (which reads every
    watched row) is the safety net, so its interval defaults to 60 s there and stays settable."""
    base = '[database]\nurl = "mysql+pymysql://u:p@localhost/wp"\n[capture]\nmode = "binlog"\n'
    cfg = load_config(write(tmp_path, base), env={})
    assert (cfg.capture.mode, cfg.capture.poll_interval) == ("binlog", 60.0)
    cfg = load_config(write(tmp_path, base + "poll_interval = 5\n"), env={})
    assert cfg.capture.poll_interval == 5.0
