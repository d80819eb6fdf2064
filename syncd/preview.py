"""A look before any write: ``syncd audit`` and ``syncd --reconcile --dry-run`` on a network where
syncd was never installed.

Both read syncd's link groups from ``{base}syncd_member``. Where syncd's tables do not exist yet,
they are created as TEMPORARY tables under the same names, on one connection that every step of
the command shares (:func:`open_engine`), and the link groups are built into them exactly as the
daemon builds them (:func:`syncd.catalog.refresh_members`). A temporary table belongs to its
session and vanishes with it: nothing is created in the database, no trigger, no table (it needs
the CREATE TEMPORARY TABLES privilege, which read-only users usually have; without it the command
says so).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog

from syncd import catalog, schema
from syncd.config import Config

log = structlog.get_logger("syncd.preview")


class PreviewRefused(RuntimeError):
    """The session may not create temporary tables: no preview without an install."""


def temporary_statements(base_prefix: str) -> list[str]:
    """syncd's DDL as CREATE TEMPORARY TABLE statements (pure)."""
    out = []
    for stmt in schema.schema_statements(base_prefix):
        text = stmt.strip()
        lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
        body = "\n".join(lines).strip()
        if not body.upper().startswith("CREATE TABLE IF NOT EXISTS"):
            continue
        out.append("CREATE TEMPORARY TABLE" + body[len("CREATE TABLE IF NOT EXISTS") :])
    return out


def open_engine(config: Config, **kw: Any) -> tuple[sa.Engine, bool]:
    """An engine for a read-only command, and whether it runs on temporary tables.

    Installed network: ``config.database.make_engine(**kw)`` as usual. Never installed: one shared
    connection (StaticPool: every ``engine.connect()`` is the same session, so the temporary
    tables are seen by every step) with the link groups built in it."""
    engine = config.database.make_engine(**kw)
    try:
        with engine.connect() as conn:
            if schema.schema_present(conn, config.database.table_prefix):
                return engine, False
    except BaseException:
        engine.dispose()
        raise
    engine.dispose()
    kw = {k: v for k, v in kw.items() if k not in ("pool_size", "max_overflow")}
    engine = config.database.make_engine(poolclass=sa.pool.StaticPool, **kw)
    try:
        with engine.connect() as conn:
            build(conn, config)
    except BaseException:
        engine.dispose()
        raise
    return engine, True


def build(conn: sa.Connection, config: Config) -> int:
    """Temporary copies of syncd's tables in this session, and every selected usable blog's link
    groups built into them. Returns the members found."""
    from syncd.network import discover

    base = config.database.table_prefix
    try:
        for stmt in temporary_statements(base):
            conn.exec_driver_sql(stmt)
    except sa.exc.DBAPIError as exc:
        conn.rollback()
        raise PreviewRefused(
            "syncd is not installed here and this user may not create temporary tables "
            f"(error {getattr(exc.orig, 'args', [None])[0]}): GRANT CREATE TEMPORARY TABLES, "
            "or run `syncd install` first"
        ) from None
    network = discover(conn, base)
    members = 0
    for blog in network.usable_blogs():
        if not config.blogs.selects(blog.blog_id):
            continue
        catalog.refresh_members(
            conn,
            base,
            blog,
            settings=config.blogs.for_blog(blog.blog_id),
            exclude_skus=tuple(config.sync.exclude_skus),
        )
    conn.commit()
    members = conn.execute(sa.text(f"SELECT COUNT(*) FROM `{base}syncd_member`")).scalar_one()
    log.info("preview_groups_built", blogs=len(network.usable_blogs()), members=members)
    return int(members)
