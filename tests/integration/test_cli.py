"""The command line: argument parsing, dispatch, and what an operator sees when things are wrong.

Error cases run ``python -m syncd`` in a subprocess: the point is the exact stderr and exit status a
person or systemd gets (one line, no traceback, no password). Dispatch tests run main() in-process
with stand-in command modules; the database is always a real server.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import make_url

from syncd import cli
from syncd.config import DEFAULT_CONFIG_PATH

COMMANDS = ("run", "check", "install", "uninstall", "status", "demo")


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """main() configures logging for the process on the captured stderr; undo it after each test."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update(extra)
    return env


def syncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=120,
    )


def config_file(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[database]\nurl = "{url}"\n{extra}', encoding="utf-8")
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_clean_line(proc: subprocess.CompletedProcess[str], *secrets_: str) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, proc.stderr
    for secret in secrets_:
        assert secret not in proc.stderr and secret not in proc.stdout
    return err


# --------------------------------------------------------------------------- database errors
def test_unreachable_server(tmp_path: Path) -> None:
    password = "Unreach-" + secrets.token_hex(6)
    port = closed_port()
    path = config_file(tmp_path, f"mysql+pymysql://syncd:{password}@127.0.0.1:{port}/wordpress")
    proc = syncd("--config", str(path), "check")
    assert proc.returncode == 1
    line = assert_one_clean_line(proc, password)
    assert f"127.0.0.1:{port}" in line and "'syncd'" in line and "cannot connect" in line


def test_wrong_password(tmp_path: Path, wp_network: Any) -> None:
    password = "Wrong-" + secrets.token_hex(6)
    url = make_url(wp_network.url).set(password=password).render_as_string(hide_password=False)
    proc = syncd("--config", str(config_file(tmp_path, url)), "check", "--json")
    assert proc.returncode == 1
    line = assert_one_clean_line(proc, password)
    assert "access denied" in line and "error 1045" in line
    assert proc.stdout == ""  # no half-written JSON for a machine to misread


def test_wrong_password_injected_from_environment(tmp_path: Path, wp_network: Any) -> None:
    password = "EnvWrong-" + secrets.token_hex(6)
    env = clean_env(SYNCD_DATABASE_URL=wp_network.url, SYNCD_DATABASE_PASSWORD=password)
    proc = syncd("--config", str(config_file(tmp_path, "mysql+pymysql://x@h/db")), "check", env=env)
    assert proc.returncode == 1
    assert "access denied" in assert_one_clean_line(proc, password)


def test_unknown_database(tmp_path: Path, mysql_server: Any) -> None:
    url = mysql_server.root_url(f"syncd_missing_{secrets.token_hex(4)}")
    proc = syncd("--config", str(config_file(tmp_path, url)), "check")
    assert proc.returncode == 1
    line = assert_one_clean_line(proc)
    assert "unknown database" in line and "syncd_missing_" in line


def test_not_a_multisite_prefix_via_cli(tmp_path: Path, wp_network: Any) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text(f'[database]\nurl = "{wp_network.url}"\ntable_prefix = "shop_"\n', encoding="utf-8")
    proc = syncd("--config", str(path), "check")
    assert proc.returncode == 1 and "shop_blogs" in proc.stdout
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- configuration errors
def test_config_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    proc = syncd("--config", str(missing), "check")
    assert proc.returncode == cli.EXIT_CONFIG
    line = assert_one_clean_line(proc)
    assert str(missing) in line and "not found" in line


def test_config_file_from_env_missing(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    proc = syncd("check", env=clean_env(SYNCD_CONFIG=str(missing)))
    assert proc.returncode == cli.EXIT_CONFIG and str(missing) in proc.stderr


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("[sync]\nbatch_size = -5\n", "sync.batch_size", "integer from 1"),
        ("[sync]\nbatchsize = 5\n", "sync.batchsize", "unknown key"),
        ('[capture]\nmode = "sometimes"\n', "capture.mode", "'auto', 'trigger', 'poll'"),
        ("[database.extra]\nx = 1\n", "database.extra", "unknown key"),
        ("[nonsense]\n", "nonsense", "unknown section"),
    ],
)
def test_config_file_invalid(tmp_path: Path, extra: str, key: str, expected: str) -> None:
    password = "Cfg-" + secrets.token_hex(6)
    path = config_file(tmp_path, f"mysql+pymysql://syncd:{password}@127.0.0.1:1/wp", extra)
    proc = syncd("--config", str(path), "check")
    assert proc.returncode == cli.EXIT_CONFIG
    line = assert_one_clean_line(proc, password)
    assert str(path) in line and key in line and expected in line


def test_config_file_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "syncd.toml"
    path.write_text("[database]\nurl = mysql://oops\n", encoding="utf-8")
    proc = syncd("--config", str(path), "run")
    assert proc.returncode == cli.EXIT_CONFIG
    line = assert_one_clean_line(proc)
    assert str(path) in line and "not valid TOML" in line


def test_bad_log_level_is_a_usage_error() -> None:
    proc = syncd("--log-level", "loud", "check")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- check through the CLI
def test_check_json_via_cli(tmp_path: Path, wp_network: Any) -> None:
    proc = syncd("--config", str(config_file(tmp_path, wp_network.url)), "check", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds only the document: logs go to stderr
    assert [b["blog_id"] for b in report["blogs"]] == [1, 2, 3]
    assert [b["polylang"] for b in report["blogs"]] == [False, True, True]


def test_check_text_via_cli_with_options_after_command(tmp_path: Path, wp_network: Any) -> None:
    proc = syncd("check", "--config", str(config_file(tmp_path, wp_network.url)), "--log-level", "warning")
    assert proc.returncode == 0, proc.stderr
    assert "Result: OK" in proc.stdout and "wp_3_" in proc.stdout


def test_check_with_url_from_environment_only(wp_network: Any) -> None:
    if Path(DEFAULT_CONFIG_PATH).exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    proc = syncd("check", "--json", env=clean_env(SYNCD_DATABASE_URL=wp_network.url))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


# --------------------------------------------------------------------------- parsing and dispatch
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_has_an_example(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    assert "Example:" in capsys.readouterr().out


def test_parser_defaults_to_run_and_accepts_reconcile() -> None:
    parser = cli.build_parser()
    args = parser.parse_args([])
    assert args.command is None and args.reconcile is False
    assert parser.parse_args(["--reconcile"]).reconcile is True
    assert parser.parse_args(["--reconcile", "run"]).reconcile is True
    assert parser.parse_args(["run", "--reconcile"]).reconcile is True
    args = parser.parse_args(["check", "--config", "/x.toml", "--json"])
    assert (args.command, args.config, args.json) == ("check", "/x.toml", True)


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **functions: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for fname, fn in functions.items():
        setattr(module, fname, fn)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_reconcile_calls_reconcile_main(
    tmp_path: Path, wp_network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []
    fake_module(monkeypatch, "syncd.reconcile", main=lambda config, args: calls.append((config, args)) or 0)
    assert cli.main(["--config", str(config_file(tmp_path, wp_network.url)), "--reconcile"]) == 0
    ((config, args),) = calls
    assert config.database.table_prefix == "wp_" and args.reconcile is True


def test_run_logs_redacted_configuration_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "RunPw-" + secrets.token_hex(6)
    seen: list[Any] = []
    fake_module(monkeypatch, "syncd.daemon", run=lambda config: seen.append(config) or 0)
    path = config_file(tmp_path, f"mysql+pymysql://syncd:{password}@127.0.0.1:1/wp")
    assert cli.main(["--config", str(path), "--log-format", "json"]) == 0
    assert len(seen) == 1 and seen[0].database.sa_url.password == password
    err = capsys.readouterr().err
    assert password not in err
    starts = [json.loads(line) for line in err.splitlines() if '"start"' in line]
    assert len(starts) == 1
    assert starts[0]["config"]["database"]["url"] == "mysql+pymysql://syncd:***@127.0.0.1:1/wp"
    assert starts[0]["level"] == "info" and starts[0]["timestamp"].endswith("Z")


def test_install_and_uninstall_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.capture

    calls: list[tuple] = []
    monkeypatch.setattr(syncd.capture, "install_all", lambda config: calls.append(("install",)) or 0)
    monkeypatch.setattr(
        syncd.capture,
        "uninstall_all",
        lambda config, keep_history: calls.append(("uninstall", keep_history)) or 0,
    )
    path = str(config_file(tmp_path, "mysql+pymysql://u:p@127.0.0.1:1/wp"))
    assert cli.main(["--config", path, "install"]) == 0
    # issue 13: uninstall drops tables only when confirmed (--yes without a terminal).
    assert cli.main(["--config", path, "uninstall"]) == cli.EXIT_USAGE
    assert cli.main(["--config", path, "uninstall", "--yes"]) == 0
    assert cli.main(["--config", path, "uninstall", "--keep-history", "--yes"]) == 0
    assert calls == [("install",), ("uninstall", False), ("uninstall", True)]


def test_demo_needs_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    fake_module(monkeypatch, "syncd.demo", main=lambda args: seen.append(args) or 0)
    monkeypatch.setenv("SYNCD_CONFIG", str(tmp_path / "absent.toml"))
    assert cli.main(["demo", "--keep"]) == 0
    assert seen[0].demo_args == ["--keep"]


def test_command_whose_module_is_missing_says_not_implemented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A module that cannot be found stands for one not written yet.
    monkeypatch.setitem(sys.modules, "syncd.status", None)
    path = str(config_file(tmp_path, "mysql+pymysql://u:p@127.0.0.1:1/wp"))
    assert cli.main(["--config", path, "status"]) == cli.EXIT_USAGE
    assert "not implemented yet" in capsys.readouterr().err


def test_missing_function_says_not_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "syncd.status")
    with pytest.raises(cli.NotImplementedYet, match=r"syncd.status.main"):
        cli._call("syncd.status", "main")


def test_missing_dependency_inside_a_module_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_import(name: str, *a: Any, **k: Any) -> Any:
        raise ModuleNotFoundError("No module named 'somedep'", name="somedep")

    monkeypatch.setattr(cli.importlib, "import_module", broken_import)
    with pytest.raises(ModuleNotFoundError):
        cli._call("syncd.status", "main")


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--bogus"])
    assert exc.value.code == 2 and "--bogus" in capsys.readouterr().err
