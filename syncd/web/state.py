"""What one dashboard process holds: configuration, engines, templates, the login limiter and the
audit job. Read queries run on ``read_engine``; every write goes through the library's functions
on ``write_engine`` (syncd's apply session, as ``syncd set-stock`` / ``sync`` / ``reconcile``)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa

from syncd import queue, schema
from syncd.audit import Scope, scope_for
from syncd.config import Config
from syncd.daemon import lock_name
from syncd.db import table
from syncd.web.auth import RateLimiter

HERE = Path(__file__).resolve().parent


@dataclass
class AuditJob:
    """The audit the Audit page started (one at a time per process)."""

    started_by: str
    started_at: float = field(default_factory=time.time)
    stage: str = "starting"
    done: int = 0
    total: int | None = None
    finished_at: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None


class Dashboard:
    def __init__(self, config: Config, *, plain_remote: bool = False) -> None:
        from syncd.reconcile import writer_engine

        self.config = config
        self.base = config.database.table_prefix
        self.plain_remote = plain_remote  # listening beyond loopback without TLS (warned on every page)
        self.read_engine = config.database.make_engine(pool_size=4, max_overflow=4)
        self.write_engine = writer_engine(config)
        self.limiter = RateLimiter()
        self.audit: AuditJob | None = None
        self.lock = threading.Lock()
        self._scope: tuple[float, Scope] | None = None
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["qty"] = _qty
        self.templates.globals["query"] = _query_builder

    @property
    def secure_cookies(self) -> bool:
        return self.config.dashboard.tls

    def scope(self, conn: sa.Connection) -> Scope:
        """The usable, selected blogs (re-discovered at most every 30 s)."""
        cached = self._scope
        if cached is None or time.monotonic() - cached[0] > 30:
            cached = (time.monotonic(), scope_for(conn, self.config))
            self._scope = cached
        return cached[1]

    def daemon_state(self, conn: sa.Connection) -> dict[str, Any]:
        """The banner on every page: is a daemon leading, its heartbeat, the backlog."""
        if not schema.schema_present(conn, self.base):
            return {"installed": False}
        database = conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
        holder = conn.exec_driver_sql(
            "SELECT IS_USED_LOCK(%s)", (lock_name(database or "", self.base),)
        ).scalar()
        raw = schema.get_meta(conn, self.base, "daemon")
        daemon = json.loads(raw) if raw else {}
        beat = daemon.get("heartbeat")
        pending, oldest = queue.backlog(conn, self.base)
        age = None
        if oldest is not None:
            now = conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar_one()
            age = round((now - oldest).total_seconds(), 1)
        dead = conn.execute(sa.text(f"SELECT COUNT(*) FROM {table(self.base, 'syncd_dead')}")).scalar_one()
        return {
            "installed": True,
            "running": holder is not None,
            "leader_connection": holder,
            "instance": daemon.get("instance"),
            "last_error": daemon.get("last_error"),
            "heartbeat_age_s": None if beat is None else round(time.time() - beat, 1),
            "backlog": pending,
            "backlog_age_s": age,
            "dead_letters": int(dead),
        }

    def close(self) -> None:
        self.read_engine.dispose()
        self.write_engine.dispose()


def _qty(value: Any) -> str:
    """'42.000000' -> '42' (WooCommerce stores quantities with or without decimals)."""
    if value is None:
        return "-"
    text = str(value)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@jinja2.pass_context
def _query_builder(context: Any, **changes: Any) -> str:
    """The current products filters with ``changes`` applied, as a query string."""
    from urllib.parse import urlencode

    f = dict(context["data"]["filters"])
    f.update(changes)
    return urlencode({k: ("1" if v is True else v) for k, v in f.items() if v not in (None, "", False)})
