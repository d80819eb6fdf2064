"""``syncd sync --fields GROUP[,GROUP] SKU... | --all [--dry-run] [--json]``, and the library call
behind it (also used by the dashboard and the scheduled job): run the field pass
(:mod:`syncd.fields.sync_pass`) for the named groups over the named SKUs' link groups, or all.

Exit status (the bits of the other operator tools): 0 done (or nothing to do), 4 values written
(with --dry-run: to be written), 8 a chunk skipped after retries, 16 a bad argument (unknown
group or SKU; nothing written), 32 fields left alone (a bad value, a missing tax class, captured
changes waiting for the realtime path), 1 fatal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from syncd.audit import EXIT_BAD_ARGUMENT, EXIT_DRIFT, EXIT_FATAL, EXIT_SKIPPED, EXIT_UNSAFE, scope_for
from syncd.config import Config
from syncd.fields.group import GROUPS, FieldGroup
from syncd.fields.registry import make_groups
from syncd.fields.sync_pass import FieldPass, PassReport
from syncd.progress import dump_json
from syncd.progress import table as print_table

log = structlog.get_logger("syncd.fields")


class BadFields(ValueError):
    """A --fields argument naming no group this build syncs."""


def parse_groups(text: str, available: Sequence[str]) -> list[str]:
    """'tax,identity' -> ['tax', 'identity'] (documented order); unknown names are refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadFields("--fields names no group")
    for n in names:
        if n not in GROUPS:
            raise BadFields(f"unknown field group {n!r}; groups: {', '.join(GROUPS)}")
        if n not in available:
            raise BadFields(f"field group {n!r} is not available in this build")
    return [g for g in GROUPS if g in names]


def sync_fields(
    config: Config,
    engine: sa.Engine,
    groups: dict[str, FieldGroup],
    *,
    skus: Sequence[str] = (),
    lang: str | None = None,
    group_ids: Sequence[int] | None = None,
    dry_run: bool = False,
    source: str | None = None,
) -> tuple[PassReport, list[str]]:
    """Run the pass for ``groups``: over the link groups of ``skus``, the ``group_ids`` given, or
    (neither) every link group. Nothing is written when a SKU is bad (the errors are returned)."""
    from syncd.reconcile import BadSku, resolve_sku

    with engine.connect() as conn:
        scope = scope_for(conn, config)
        ids: list[int] | None = None if group_ids is None else list(group_ids)
        errors: list[str] = []
        for sku in skus:
            try:
                ids = (ids or []) + resolve_sku(conn, scope, sku, lang).group_ids
            except BadSku as exc:
                errors.append(str(exc))
        conn.rollback()
    runner = FieldPass(config, scope, engine, groups, dry_run=dry_run, source=source)
    if errors:
        return runner.report, errors
    return runner.run(ids), []


def exit_status(report: PassReport, bad_arguments: bool = False) -> int:
    code = EXIT_DRIFT if report.written else 0
    if any("link_groups" in s for s in report.skipped):
        code |= EXIT_SKIPPED
    if report.problems or any("link_group" in s for s in report.skipped):
        code |= EXIT_UNSAFE
    return code | (EXIT_BAD_ARGUMENT if bad_arguments else 0)


def render(report: PassReport, out: TextIO) -> None:
    verb = "Would write" if report.dry_run else "Wrote"
    print(
        f"{verb} {len(report.written)} field value(s) of {', '.join(report.groups)} in {report.link_groups} "
        f"link group(s) (authority: {report.authority})",
        file=out,
    )
    if report.written:
        rows = [
            (
                w["sku"],
                w["group"],
                f"{w['blog']}:{w['post']}",
                w["field"],
                _txt(w["old"]),
                _txt(w["new"]),
                w["authority"],
            )
            for w in report.written
        ]
        print_table(rows, ("SKU", "GROUP", "BLOG:POST", "FIELD", "OLD", "NEW", "AUTHORITY"), out)
    if report.problems:
        print(f"\nLeft alone: {len(report.problems)} field value(s)", file=out)
        rows = [
            (p["sku"], p["group"], f"{p['blog']}:{p['post']}", p["field"], p["reason"])
            for p in report.problems
        ]
        print_table(rows, ("SKU", "GROUP", "BLOG:POST", "FIELD", "REASON"), out)
    if report.deferred:
        print(f"\nDeferred: {len(report.deferred)} field value(s) of products being saved", file=out)
        rows = [(p["sku"], p["group"], f"{p['blog']}:{p['post']}", p["field"]) for p in report.deferred]
        print_table(rows, ("SKU", "GROUP", "BLOG:POST", "FIELD"), out)
        print("  the daemon writes them once those products have settled (sync.settle_seconds)", file=out)
    for s in report.skipped:
        what = s.get("group", "chunk")
        print(f"Skipped {what} of {s.get('sku') or s.get('link_groups')}: {s['reason']}", file=out)


def _txt(v: Any) -> str:
    if v is None:
        return "(none)"
    return v if len(v) <= 40 else v[:37] + "..."


def main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """The CLI: ``syncd sync --fields ...`` (arguments checked by :mod:`syncd.cli`)."""
    from syncd.reconcile import NotInstalled, _engine
    from syncd.reconcile import _require_schema as require_schema

    out = out or sys.stdout
    dry_run = bool(getattr(args, "dry_run", False))
    available = make_groups(config)
    try:
        names = parse_groups(args.fields, list(available))
    except BadFields as exc:
        print(f"syncd sync: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    engine, temporary = _engine(config, preview=dry_run)
    try:
        if not temporary:
            with engine.connect() as conn:
                require_schema(conn, config)
        report, errors = sync_fields(
            config,
            engine,
            {n: available[n] for n in names},
            skus=[] if args.all else args.skus,
            lang=getattr(args, "lang", None),
            dry_run=dry_run,
        )
    except NotInstalled as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        engine.dispose()
    for e in errors:
        print(f"syncd sync: {e}", file=sys.stderr)
    code = exit_status(report, bad_arguments=bool(errors))
    log.info("fields_sync_finished", groups=",".join(names), written=len(report.written), exit_status=code)
    if getattr(args, "json", False):
        dump_json({**report.document(), "errors": errors, "exit_status": code}, out)
    elif not errors:
        render(report, out)
    return code
