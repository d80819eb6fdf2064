"""``syncd history SKU``: every stock change of a product on every blog, oldest first.

Read from ``{base}syncd_history``: for each change syncd applied, one ``origin`` row (the change as
captured on its own blog), one ``copy`` row per member it was written to, ``skipped`` rows for
members left alone (with the reason), and ``reconcile`` / ``set`` rows for what reconcile, sync
and set-stock wrote. The SKU argument is resolved like every other command's (collation, language,
exclusions); rows are those of every member of its group(s), whatever SKU text each blog uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

import sqlalchemy as sa

from syncd.audit import EXIT_BAD_ARGUMENT, EXIT_FATAL, Scope, scope_for
from syncd.config import Config
from syncd.db import table
from syncd.progress import dump_json
from syncd.progress import table as print_table

#: Role order inside one change: the origin first, then what it caused.
_ROLE_ORDER = {"origin": 0, "copy": 1, "skipped": 2, "reconcile": 3, "set": 3}


@dataclass(frozen=True)
class Entry:
    applied_at: datetime
    captured_at: datetime
    change_id: int
    role: str
    blog_id: int
    post_id: int
    sku: str
    meta_key: str
    old: str | None
    new: str | None
    delta: Decimal | None
    origin: tuple[int, int]
    note: str | None
    source: str | None = None  # who asked for it: 'dashboard:NAME' (None: the daemon, the CLI)
    field_group: str | None = None  # the field group of a field row (None: stock)

    def document(self) -> dict[str, Any]:
        return {
            "time": self.captured_at.replace(tzinfo=UTC).isoformat(timespec="microseconds"),
            "applied_at": self.applied_at.replace(tzinfo=UTC).isoformat(timespec="microseconds"),
            "change": self.change_id,
            "role": self.role,
            "blog": self.blog_id,
            "post": self.post_id,
            "sku": self.sku,
            "key": self.meta_key,
            "old": self.old,
            "new": self.new,
            "delta": None if self.delta is None else _num(self.delta),
            "origin": f"{self.origin[0]}:{self.origin[1]}",
            "note": self.note,
            "source": self.source,
            "field_group": self.field_group,
        }


def _num(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text if text.startswith("-") else "+" + text


class BadArgument(ValueError):
    pass


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO date/time (UTC unless it says otherwise) or a duration back from now
    ('90m', '12h', '7d')."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    t = text.strip()
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if t[-1:] in units and t[:-1].isdigit():
        return (now - timedelta(**{units[t[-1]]: int(t[:-1])})).astimezone(UTC).replace(tzinfo=None)
    try:
        value = datetime.fromisoformat(t)
    except ValueError:
        raise BadArgument(
            f"--since expects an ISO date or time (2026-05-01, 2026-05-01T12:00) or a duration (90m, 12h, 7d), got {text!r}"
        ) from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def group_members(
    conn: sa.Connection, scope: Scope, group_ids: list[int]
) -> tuple[list[tuple[int, int]], list[str]]:
    """(blog, post) of every member (any state) of the groups, and their SKU texts."""
    names = ", ".join(f":g{i}" for i in range(len(group_ids)))
    rows = conn.execute(
        sa.text(
            f"SELECT blog_id, post_id, sku FROM {table(scope.base, 'syncd_member')} WHERE group_id IN ({names})"
        ),
        {f"g{i}": g for i, g in enumerate(group_ids)},
    ).all()
    return [(int(r[0]), int(r[1])) for r in rows], sorted({r[2] for r in rows if r[2]})


def read_history(
    conn: sa.Connection,
    scope: Scope,
    group_ids: list[int],
    *,
    since: datetime | None = None,
    limit: int = 200,
    field: str | None = None,
) -> list[Entry]:
    """History rows of the groups' members, oldest first; ``limit`` > 0 keeps the newest ``limit``.
    ``field``: only the rows of that field group ('stock': only stock rows)."""
    members, skus = group_members(conn, scope, group_ids)
    if not skus:
        return []
    wanted = set(members)
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(skus)}
    cond = f"sku IN ({', '.join(f':s{i}' for i in range(len(skus)))})"
    if since is not None:
        cond += " AND applied_at >= :since"
        params["since"] = since
    if field == "stock":
        cond += " AND field_group IS NULL"
    elif field is not None:
        cond += " AND field_group = :field"
        params["field"] = field
    out = _entries(conn, scope.base, cond, params, keep=lambda key: key in wanted)
    if limit > 0:
        out = out[-limit:]
    return out


def sources_of(conn: sa.Connection, base: str, entries: list[Entry]) -> list[str]:
    """Where each entry came from, in words (:mod:`syncd.attribution`: order, admin user, other
    writer, dashboard user, copy of ...)."""
    from syncd import attribution

    try:
        ids = sorted({e.change_id for e in entries if e.role == "origin" and e.change_id})
        found = attribution.lookup(conn, base, ids) if ids else {}
    except sa.exc.ProgrammingError:  # attribution tables not there yet (schema 2)
        conn.rollback()
        found = {}
    return [attribution.describe(e.role, e.source, e.origin, found.get(e.change_id)) for e in entries]


def render(entries: list[Entry], out: TextIO, title: str, sources: list[str] | None = None) -> None:
    print(title, file=out)
    if not entries:
        print("  (no history)", file=out)
        return
    print_table(
        [
            (
                e.captured_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                e.blog_id,
                e.post_id,
                e.meta_key if e.field_group is None else f"{e.field_group}:{e.meta_key}",
                f"{_txt(e.old)} -> {_txt(e.new)}",
                None if e.delta is None else _num(e.delta),
                e.role,
                f"{e.origin[0]}:{e.origin[1]}",
                e.note,
                src,
            )
            for e, src in zip(entries, sources or [e.source or "" for e in entries], strict=True)
        ],
        ("TIME (UTC)", "BLOG", "POST", "KEY", "OLD -> NEW", "DELTA", "ROLE", "ORIGIN", "NOTE", "SOURCE"),
        out,
    )


def _txt(v: str | None) -> str:
    return "NULL" if v is None else v


def main(config: Config, args: Any, out: TextIO | None = None) -> int:
    """``syncd history SKU [--since WHEN] [--limit N] [--lang L] [--json]``."""
    from syncd.reconcile import BadSku, resolve_sku
    from syncd.schema import schema_present

    out = out or sys.stdout
    try:
        since = parse_since(getattr(args, "since", None))
    except BadArgument as exc:
        print(f"syncd history: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENT
    limit = int(getattr(args, "limit", 200) or 0)
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            if not schema_present(conn, config.database.table_prefix):
                if not history_kept(conn, config.database.table_prefix):
                    print(
                        "syncd: syncd is not installed in this database (run: syncd install)", file=sys.stderr
                    )
                    return EXIT_FATAL
                # `syncd uninstall --keep-history`: no link groups any more, the rows by SKU text.
                entries = read_kept_history(
                    conn, config.database.table_prefix, args.sku, since=since, limit=limit
                )
                _print(args, out, args.sku, [], ["(kept after uninstall)"], entries)
                return 0
            scope = scope_for(conn, config)
            try:
                resolved = resolve_sku(conn, scope, args.sku, getattr(args, "lang", None))
            except BadSku as exc:
                print(f"syncd history: {exc}", file=sys.stderr)
                return EXIT_BAD_ARGUMENT
            entries = read_history(
                conn, scope, resolved.group_ids, since=since, limit=limit, field=getattr(args, "field", None)
            )
            sources = sources_of(conn, scope.base, entries)
    finally:
        engine.dispose()
    _print(args, out, resolved.sku, resolved.group_ids, resolved.langs, entries, sources)
    return 0


def _print(
    args: Any,
    out: TextIO,
    sku: str,
    groups: list[int],
    langs: list[str],
    entries: list[Entry],
    sources: list[str] | None = None,
) -> None:
    if getattr(args, "json", False):
        dump_json(
            {
                "sku": sku,
                "groups": groups,
                "entries": [
                    {**e.document(), "from": src}
                    for e, src in zip(entries, sources or [None] * len(entries), strict=True)
                ],
                "exit_status": 0,
            },
            out,
        )
    else:
        render(entries, out, f"History of {sku} ({', '.join(langs)}), oldest first:", sources)


def history_kept(conn: sa.Connection, base_prefix: str) -> bool:
    """True when the history table exists (it outlives ``syncd uninstall --keep-history``)."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
            ),
            {"t": base_prefix + "syncd_history"},
        ).scalar_one()
    )


def read_kept_history(
    conn: sa.Connection, base_prefix: str, sku: str, *, since: datetime | None = None, limit: int = 200
) -> list[Entry]:
    """History rows whose SKU is ``sku`` as WooCommerce compares SKUs (case- and accent-insensitive),
    oldest first: what is left to read once syncd's link groups are gone."""
    cond = "CONVERT(sku USING utf8mb4) COLLATE utf8mb4_unicode_520_ci = :sku"
    params: dict[str, Any] = {"sku": sku.strip()}
    if since is not None:
        cond += " AND applied_at >= :since"
        params["since"] = since
    out = _entries(conn, base_prefix, cond, params)
    return out[-limit:] if limit > 0 else out


def _entries(
    conn: sa.Connection,
    base_prefix: str,
    cond: str,
    params: dict[str, Any],
    keep: Callable[[tuple[int, int]], bool] | None = None,
) -> list[Entry]:
    """History rows matching ``cond`` (bound ``params``) whose (blog, post) ``keep`` accepts, in
    the order a reader follows a change: captured first, then the origin before what it caused."""
    rows = conn.execute(
        sa.text(
            "SELECT applied_at, captured_at, change_id, role, blog_id, post_id, sku, meta_key, old_value, new_value, "
            "delta, origin_blog_id, origin_post_id, note, source, field_group "
            f"FROM {table(base_prefix, 'syncd_history')} WHERE {cond} ORDER BY id"
        ),
        params,
    )
    out = [
        Entry(
            r[0],
            r[1],
            int(r[2]),
            r[3],
            int(r[4]),
            int(r[5]),
            r[6],
            r[7],
            r[8],
            r[9],
            r[10],
            (int(r[11]), int(r[12])),
            r[13],
            r[14],
            r[15],
        )
        for r in rows
        if keep is None or keep((int(r[4]), int(r[5])))
    ]
    out.sort(key=lambda e: (e.captured_at, e.change_id, _ROLE_ORDER.get(e.role, 9), e.blog_id, e.post_id))
    return out
