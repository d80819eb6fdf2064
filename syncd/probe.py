"""The idle loop's probe: is there work? One round trip, no transaction.

While the shops are quiet the daemon asks every ``sync.idle_wait`` (10 ms) whether a change is
queued. Through the apply connection that is two round trips (the SELECT opens a transaction, a
ROLLBACK ends it) plus, every 0.1 s, the settle query and its ROLLBACK. The probe is one autocommit
statement on a connection of its own that answers both questions; only when it finds work does the
daemon fetch on the apply connection as before (the change table stays the only source of truth:
the probe decides when to look, never what to apply).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.db import table

log = structlog.get_logger("syncd.probe")


class IdleProbe:
    """A detached autocommit connection of ``engine`` that answers (changes queued, settling)."""

    def __init__(self, engine: sa.Engine, base_prefix: str) -> None:
        self.engine = engine
        self.base = base_prefix
        self._conn: Any = None  # the DBAPI connection, opened on first use

    def work(self, blogs: Collection[int]) -> tuple[bool, bool, bool]:
        """(a change of ``blogs`` is queued, a product is settling, a field pass deferred a
        member or a field write is to be checked: syncd.fields.deferred, syncd.fields.recheck).
        On any error: all True, so the caller looks the usual way (and meets the error there,
        handled as it always is)."""
        try:
            if self._conn is None:
                proxied = self.engine.raw_connection()
                proxied.detach()  # never back into the pool: it is in autocommit mode
                self._conn = proxied.dbapi_connection
                self._conn.autocommit(True)
            ids = sorted(int(b) for b in blogs) or [0]
            marks = ", ".join(["%s"] * len(ids))
            cur = self._conn.cursor()
            try:
                cur.execute(
                    f"SELECT EXISTS(SELECT 1 FROM {table(self.base, 'syncd_change')} WHERE blog_id IN ({marks})), "
                    f"EXISTS(SELECT 1 FROM {table(self.base, 'syncd_settle')}), "
                    f"EXISTS(SELECT 1 FROM {table(self.base, 'syncd_field_defer')}) "
                    f"OR EXISTS(SELECT 1 FROM {table(self.base, 'syncd_field_check')})",
                    ids,
                )
                queued, settling, fields = cur.fetchone()
            finally:
                cur.close()
            return bool(queued), bool(settling), bool(fields)
        except Exception as exc:  # noqa: BLE001 - the fetch path reports and retries
            log.debug("idle_probe_failed", error=str(exc)[:200])
            self.close()
            return True, True, True

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - gone already
                pass
            self._conn = None
