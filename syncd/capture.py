"""Capture: per-blog triggers on ``{prefix}postmeta`` that queue every real change of a watched
meta key into ``{base}syncd_change`` inside the writer's own transaction.

Nothing committed is missed (the change row commits with the write), nothing rolled back is seen
(it rolls back with it), and syncd's own writes are never queued (its apply session sets
``@syncd_apply``). Trigger SQL is rendered by pure functions from the templates in sql/.
Installation is idempotent; an outdated trigger is replaced under a short table lock so that no
write can slip between the old trigger and the new one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from syncd.db import table, validate_prefix
from syncd.network import Blog
from syncd.plan import WATCHED_KEYS
from syncd.sqlfiles import sql_text

#: Bump when the trigger templates change; installed triggers whose body differs are replaced.
TRIGGER_VERSION = 1
EVENTS = ("insert", "update", "delete")
_EVENT_SUFFIX = {"insert": "ai", "update": "au", "delete": "ad"}


@dataclass(frozen=True)
class TriggerDef:
    name: str
    table: str  # unquoted table name
    event: str
    create_sql: str
    body: str  # from BEGIN to END, as information_schema.TRIGGERS.ACTION_STATEMENT shows it


def trigger_name(base_prefix: str, blog_id: int, event: str) -> str:
    """``{base}syncd_b{N}_{ai|au|ad}``: names carry the base prefix so two networks in one schema never clash."""
    return f"{validate_prefix(base_prefix)}syncd_b{int(blog_id)}_{_EVENT_SUFFIX[event]}"


def watched_list(keys: Sequence[str] = WATCHED_KEYS) -> str:
    for k in keys:
        if not re.fullmatch(r"_?[a-z_]+", k):
            raise ValueError(f"bad watched key {k!r}")
    return ", ".join(f"'{k}'" for k in keys)


def render_trigger(base_prefix: str, blog: Blog | tuple[int, str], event: str) -> TriggerDef:
    """The CREATE TRIGGER statement for one blog and event (pure; golden-tested)."""
    blog_id, prefix = (blog.blog_id, blog.prefix) if isinstance(blog, Blog) else blog
    validate_prefix(base_prefix)
    validate_prefix(prefix)
    name = trigger_name(base_prefix, blog_id, event)
    text = (
        sql_text(f"capture_trigger_{event}.sql")
        .replace("{version}", f"v{TRIGGER_VERSION}")
        .replace("{trigger}", name)
        .replace("{prefix}", prefix)
        .replace("{base}", base_prefix)
        .replace("{blog_id}", str(int(blog_id)))
        .replace("{watched}", watched_list())
    )
    create = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--")).strip()
    body = create[create.index("BEGIN") :]
    return TriggerDef(name, f"{prefix}postmeta", event, create, body)


def render_blog_triggers(base_prefix: str, blog: Blog | tuple[int, str]) -> list[TriggerDef]:
    return [render_trigger(base_prefix, blog, e) for e in EVENTS]


def _norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def installed_triggers(conn: sa.Connection, base_prefix: str) -> dict[str, tuple[str, str]]:
    """syncd's triggers in this schema: name -> (table, body)."""
    rows = conn.execute(
        sa.text(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE :pat"
        ),
        {"pat": validate_prefix(base_prefix).replace("_", "\\_") + "syncd\\_b%"},
    )
    return {r[0]: (r[1], r[2]) for r in rows}


@dataclass(frozen=True)
class TriggerState:
    blog_id: int
    state: str  # installed | missing | outdated | partial
    names: tuple[str, ...]


def blog_trigger_state(installed: dict[str, tuple[str, str]], base_prefix: str, blog: Blog) -> TriggerState:
    defs = render_blog_triggers(base_prefix, blog)
    present = [d for d in defs if d.name in installed]
    if not present:
        state = "missing"
    elif len(present) < len(defs):
        state = "partial"
    elif any(_norm(installed[d.name][1]) != _norm(d.body) or installed[d.name][0] != d.table for d in defs):
        state = "outdated"
    else:
        state = "installed"
    return TriggerState(blog.blog_id, state, tuple(d.name for d in defs))


def install_blog_triggers(conn: sa.Connection, base_prefix: str, blog: Blog) -> str:
    """Install or upgrade one blog's triggers. Returns 'unchanged', 'installed' or 'upgraded'.

    Missing triggers are simply created. A trigger whose body differs is replaced while the
    postmeta table is write-locked, so no write can happen between DROP and CREATE (a write
    then would be neither captured by the old trigger nor by the new one).
    """
    installed = installed_triggers(conn, base_prefix)
    result = "unchanged"
    stale = []
    for d in render_blog_triggers(base_prefix, blog):
        have = installed.get(d.name)
        if have is None:
            conn.exec_driver_sql(d.create_sql)
            result = "installed" if result == "unchanged" else result
        elif _norm(have[1]) != _norm(d.body) or have[0] != d.table:
            stale.append(d)
    if stale:
        # Short metadata-lock wait: if the shop is busy, give up and retry at the next discovery.
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")
        conn.exec_driver_sql(
            f"LOCK TABLES {table(blog.prefix, 'postmeta')} WRITE, {table(base_prefix, 'syncd_change')} WRITE"
        )
        try:
            for d in stale:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{d.name}`")
                conn.exec_driver_sql(d.create_sql)
        finally:
            conn.exec_driver_sql("UNLOCK TABLES")
            conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")
        result = "upgraded"
    conn.commit()
    return result


def uninstall_blog_triggers(conn: sa.Connection, base_prefix: str, blog_id: int) -> list[str]:
    dropped = []
    for event in EVENTS:
        name = trigger_name(base_prefix, blog_id, event)
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
        dropped.append(name)
    conn.commit()
    return dropped


def uninstall_all_triggers(conn: sa.Connection, base_prefix: str) -> list[str]:
    """Drop every syncd trigger of this network, including those of blogs that no longer exist."""
    names = sorted(installed_triggers(conn, base_prefix))
    for name in names:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
    conn.commit()
    return names


def install_all(config: object, *, out: object = None) -> int:
    """``syncd install``: create syncd's tables and install or upgrade the triggers of every usable blog.

    Idempotent: running it again changes nothing. Exit status 0 when every usable blog has current
    triggers, 1 otherwise (the reasons are printed and logged).
    """
    import sys

    from syncd import catalog, schema
    from syncd.network import discover

    out = out or sys.stdout
    base = config.database.table_prefix  # type: ignore[attr-defined]
    engine = config.database.make_engine()  # type: ignore[attr-defined]
    failed = 0
    try:
        with engine.connect() as conn:
            schema.ensure_schema(conn, base)
            # [sync] exclude_skus, for this and every later membership refresh (catalog.mark_excluded).
            catalog.store_exclusions(conn, base, config.sync.exclude_skus)  # type: ignore[attr-defined]
            conn.commit()
            network = discover(conn, base)
            conn.rollback()
            selection = config.blogs  # type: ignore[attr-defined]
            for blog in network.blogs:
                if not selection.selects(blog.blog_id):
                    # [blogs] include/exclude: never read or written, and no trigger of ours there.
                    uninstall_blog_triggers(conn, base, blog.blog_id)
                    print(f"blog {blog.blog_id} ({blog.prefix}): excluded by configuration", file=out)
                    continue
                if not blog.usable:
                    print(
                        f"blog {blog.blog_id} ({blog.prefix}): left alone: {'; '.join(blog.problems) or 'WooCommerce not active'}",
                        file=out,
                    )
                    continue
                try:
                    outcome = install_blog_triggers(conn, base, blog)
                    catalog.refresh_members(conn, base, blog, settings=selection.for_blog(blog.blog_id))
                    conn.commit()
                    print(
                        f"blog {blog.blog_id} ({blog.prefix}): triggers {outcome} (v{TRIGGER_VERSION})",
                        file=out,
                    )
                except Exception as exc:  # noqa: BLE001 - report every blog, then fail
                    conn.rollback()
                    failed += 1
                    print(f"blog {blog.blog_id} ({blog.prefix}): FAILED: {exc}", file=out)
    finally:
        engine.dispose()
    return 1 if failed else 0


def uninstall_all(config: object, *, keep_history: bool = False, out: object = None) -> int:
    """``syncd uninstall``: drop every syncd trigger, then syncd's tables. WooCommerce data is untouched.

    Triggers go first so that no shop write ever meets a trigger whose change table is gone.
    Pending changes not yet applied are lost with the change table: the count is printed.
    """
    import sys

    from syncd import queue, schema

    out = out or sys.stdout
    base = config.database.table_prefix  # type: ignore[attr-defined]
    engine = config.database.make_engine()  # type: ignore[attr-defined]
    try:
        with engine.connect() as conn:
            names = uninstall_all_triggers(conn, base)
            print(f"dropped {len(names)} triggers", file=out)
            if schema.schema_present(conn, base):
                n, _ = queue.backlog(conn, base)
                if n:
                    print(f"warning: {n} captured changes were still pending and are discarded", file=out)
            dropped = schema.drop_schema(conn, base, keep_history=keep_history)
            print(f"dropped tables: {', '.join(dropped)}", file=out)
    finally:
        engine.dispose()
    return 0
