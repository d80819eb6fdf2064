"""The operator's commands through the CLI (in-process main(), real server): audit, reconcile,
sync, set-stock, history; bad SKU arguments; and the README documents every command and option."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from syncd import cli
from tests.integration.sync_helpers import ids, make_daemon, meta, pending, qty, woo_decrease, woo_increase
from tests.integration.test_audit_reconcile import drift_sql, installed

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)


def run(
    net: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str, extra: str = ""
) -> tuple[int, str, str]:
    path = tmp_path / "syncd.toml"
    path.write_text(
        f'[database]\nurl = "{net.url}"\ntable_prefix = "{net.prefix}"\n{extra}', encoding="utf-8"
    )
    capsys.readouterr()
    code = cli.main(["--config", str(path), "--log-level", "warning", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_sku_arguments_get_clear_errors(wp_network, tmp_path, capsys):
    net = wp_network
    with net.engine.connect() as c:  # a second MUG on blog 1: MUG becomes ambiguous there
        c.execute(
            sa.text(
                f"UPDATE {net.table(1, 'postmeta')} SET meta_value = 'MUG' WHERE post_id = :p AND meta_key = '_sku'"
            ),
            {"p": ids(net, "NOTEBOOK")[1]},
        )
        c.commit()
    installed(net)
    extra = '[sync]\nexclude_skus = ["GIFT-*"]\n'
    cases = [
        (("sync", "NO-SUCH-SKU"), "unknown SKU 'NO-SUCH-SKU'"),
        (("set-stock", "MUG", "5"), "SKU 'MUG' is ambiguous (blog 1: posts"),
        (("sync", "GIFT-CARD"), "SKU 'GIFT-CARD' is excluded by sync.exclude_skus ('GIFT-*')"),
        (("history", "BOOK"), "SKU 'BOOK' names 2 link groups (languages en, fr): add --lang"),
        (("set-stock", "TSHIRT-RED", "many"), "QTY must be a number, got 'many'"),
        (("history", "TSHIRT-RED", "--since", "last week"), "--since expects an ISO date"),
        (("sync", "BUNDLE-HOME"), "is not synced (state skipped"),
    ]
    before = [qty(net, b, ids(net, "TSHIRT-RED")[b]) for b in (1, 2, 3)]
    for argv, message in cases:
        code, out, err = run(net, tmp_path, capsys, *argv, extra=extra)
        assert code == 16, (argv, code, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and out == ""
    # one bad SKU among good ones: nothing is written
    code, _out, err = run(net, tmp_path, capsys, "sync", "TSHIRT-RED", "NOPE", extra=extra)
    assert code == 16 and "unknown SKU 'NOPE'" in err
    assert [qty(net, b, ids(net, "TSHIRT-RED")[b]) for b in (1, 2, 3)] == before
    code, out, _err = run(net, tmp_path, capsys, "history", "BOOK", "--lang", "fr", "--json")
    assert code == 0 and json.loads(out)["entries"] == []


def test_history_shows_each_change_once_as_origin_and_once_per_member(wp_network, tmp_path, capsys):
    net = wp_network
    d = make_daemon(net)
    try:
        tshirt = ids(net, "TSHIRT-RED")
        sales = [(1, -2), (2, -1), (3, 4), (2, -3)]
        for blog, n in sales:
            (woo_decrease if n < 0 else woo_increase)(net, blog, tshirt[blog], abs(n))
            d.apply_pending()
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [8, 8, 8]
    finally:
        d.close()
    code, out, _err = run(net, tmp_path, capsys, "history", "tshirt-red", "--json")
    assert code == 0
    rows = [e for e in json.loads(out)["entries"] if e["key"] == "_stock"]
    changes = sorted({e["change"] for e in rows})
    assert len(changes) == len(sales)
    for change, (blog, n) in zip(changes, sales, strict=True):
        mine = [e for e in rows if e["change"] == change]
        origin = [e for e in mine if e["role"] == "origin"]
        copies = sorted(e["blog"] for e in mine if e["role"] == "copy")
        assert len(origin) == 1 and origin[0]["blog"] == blog and origin[0]["delta"] == f"{n:+d}"
        assert copies == sorted({1, 2, 3} - {blog})
        assert all(e["delta"] == f"{n:+d}" for e in mine)
    times = [e["time"] for e in rows]
    assert times == sorted(times)  # oldest first
    code, out, _err = run(net, tmp_path, capsys, "history", "TSHIRT-RED")
    assert code == 0 and "origin" in out and "copy" in out and "TIME (UTC)" in out
    code, out, _err = run(net, tmp_path, capsys, "history", "TSHIRT-RED", "--limit", "2", "--json")
    assert len(json.loads(out)["entries"]) == 2


def test_audit_and_reconcile_through_the_cli(wp_network, tmp_path, capsys):
    net = wp_network
    installed(net)
    mug = ids(net, "MUG")
    drift_sql(net, 2, mug[2], "_stock", "1")
    code, out, _err = run(net, tmp_path, capsys, "audit", "--json")
    doc = json.loads(out)
    assert code == 4 and doc["exit_status"] == 4 and doc["counts"]["drifted_groups"] == 2  # MUG, NOTEBOOK
    code, out, _err = run(net, tmp_path, capsys, "--reconcile", "--dry-run")
    assert code == 4 and "Would write" in out and "MUG" in out
    assert qty(net, 1, mug[1]) == 3
    code, out, _err = run(
        net, tmp_path, capsys, "reconcile", "--json", extra='[reconcile]\nauthority = "blog:2"\n'
    )
    assert code == 4 and json.loads(out)["reconcile"]["authority"] == "blog:2"
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [1, 1, 1]
    assert [meta(net, b, ids(net, "NOTEBOOK")[b], "_backorders") for b in (1, 2, 3)] == ["no"] * 3
    code, out, _err = run(net, tmp_path, capsys, "audit")
    assert code == 0 and "Result: no drift" in out
    code, out, _err = run(net, tmp_path, capsys, "set-stock", "MUG", "7")
    assert code == 0 and [qty(net, b, mug[b]) for b in (1, 2, 3)] == [7, 7, 7]
    code, out, _err = run(net, tmp_path, capsys, "sync", "MUG", "--json")
    assert code == 0 and json.loads(out)["counts"]["writes"] == 0
    code, out, _err = run(net, tmp_path, capsys, "history", "MUG", "--json")
    roles = {(e["role"], e["blog"]) for e in json.loads(out)["entries"]}
    assert {("reconcile", 1), ("reconcile", 3), ("set", 1), ("set", 2), ("set", 3)} <= roles
    assert pending(net) == 0


# --------------------------------------------------------------------------- README
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_readme_documents_every_command_and_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Parse `syncd [COMMAND] --help`: the command, each of its options and positionals must
    appear in the README, and the help must carry an Example."""
    text = _help([command] if command else [], capsys)
    assert "Example:" in text
    readme = README.read_text(encoding="utf-8")
    if command:
        assert re.search(rf"`syncd {re.escape(command)}\b", readme), f"README lacks `syncd {command}`"
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--help"}
    missing = sorted(o for o in options if o not in readme)
    assert not missing, f"README lacks options of `syncd {command}`: {missing}"
    usage = text.split("\n\n", 1)[0]
    positionals = [
        p for p in re.findall(r"(?<![\[\w-])([A-Z][A-Z:_]+)(?:\.\.\.)?(?!\w)", usage) if p not in ("COMMAND",)
    ]
    missing = sorted(p for p in positionals if p not in readme)
    assert not missing, f"README lacks arguments of `syncd {command}`: {missing}"
