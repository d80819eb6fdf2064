"""Issue 9 path 12: a trigger upgrade interrupted at any point never leaves a blog uncaptured, and
never captures a change twice.

The installer runs on a connection that is killed (``KILL CONNECTION`` from another session, the
server's view of a crash) just before its k-th statement, for every k until an upgrade runs
through. After each interrupted upgrade the blog must still have exactly one syncd trigger per
event, and an INSERT, UPDATE and DELETE of a watched key must each be captured exactly once.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from syncd import capture
from syncd.network import discover
from tests.integration.daemon_process import members
from tests.integration.sync_helpers import make_daemon

BLOG = 2


class Crashed(Exception):
    pass


class CrashingConnection:
    """A connection whose session is killed just before its statement number ``crash_at``."""

    def __init__(self, conn: sa.Connection, killer: sa.Connection, crash_at: int) -> None:
        self._conn, self._killer, self.crash_at, self.sent = conn, killer, crash_at, 0
        self._id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        conn.rollback()

    def _step(self) -> None:
        if self.sent == self.crash_at:
            self._killer.exec_driver_sql(f"KILL CONNECTION {int(self._id)}")
            self.sent = -1  # dead from now on: every later statement fails too
        if self.sent < 0:
            raise Crashed(self.crash_at)
        self.sent += 1

    def exec_driver_sql(self, *args: Any, **kw: Any) -> Any:
        self._step()
        return self._conn.exec_driver_sql(*args, **kw)

    def execute(self, *args: Any, **kw: Any) -> Any:
        self._step()
        return self._conn.execute(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def make_outdated(net: Any) -> None:
    """Blog 2's three triggers as an older release would have them: capturing exactly as today,
    but with a body that differs (so the installer replaces all three)."""
    blog = (BLOG, net.blog_prefix(BLOG))
    with net.engine.connect() as c:
        for d in capture.render_blog_triggers(net.prefix, blog):
            old = d.create_sql.replace(
                "IF @syncd_apply IS NOT NULL THEN", "IF 1 = 0 OR @syncd_apply IS NOT NULL THEN", 1
            )
            assert old != d.create_sql, "the older body must differ from today's"
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{d.name}`")
            c.exec_driver_sql(old)
        c.commit()


def blog_triggers(net: Any) -> dict[str, str]:
    """event -> body of every trigger on blog 2's postmeta (whoever created it)."""
    with net.engine.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT EVENT_MANIPULATION, ACTION_STATEMENT FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = :t"
            ),
            {"t": net.blog_prefix(BLOG) + "postmeta"},
        ).all()
    events = [r[0].lower() for r in rows]
    assert sorted(events) == sorted(capture.EVENTS), f"blog {BLOG} triggers: {events}"
    return {r[0].lower(): r[1] for r in rows}


def captured_once_per_event(net: Any, post: int) -> list[tuple]:
    """Insert, update and delete a watched key; return the change rows they made."""
    pm, change = net.table(BLOG, "postmeta"), f"{net.prefix}syncd_change"
    with net.engine.connect() as c:
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.exec_driver_sql(f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_low_stock_amount'")
        c.commit()
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.exec_driver_sql(
            f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({post}, '_low_stock_amount', '3')"
        )
        c.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '4' WHERE post_id = {post} AND meta_key = '_low_stock_amount'"
        )
        c.exec_driver_sql(f"DELETE FROM {pm} WHERE post_id = {post} AND meta_key = '_low_stock_amount'")
        c.commit()
        rows = c.exec_driver_sql(
            f"SELECT op, old_value, new_value FROM {change} WHERE blog_id = {BLOG} AND post_id = {post} ORDER BY id"
        ).all()
        c.exec_driver_sql(f"DELETE FROM {change}")
        c.commit()
    return [tuple(r) for r in rows]


def test_trigger_upgrade_interrupted_at_every_statement_keeps_capture_exact(wp_network):
    net = wp_network
    make_daemon(net).close()  # schema, triggers, members
    post = members(net, "MUG")[BLOG]
    expected = [("I", None, "3"), ("U", "3", "4"), ("D", "4", None)]
    assert captured_once_per_event(net, post) == expected
    with net.engine.connect() as c:
        blog = next(b for b in discover(c, net.prefix).usable_blogs() if b.blog_id == BLOG)
        c.rollback()
    current = {d.event: " ".join(d.body.split()) for d in capture.render_blog_triggers(net.prefix, blog)}

    crash_at, outcomes = 0, []
    while True:
        make_outdated(net)
        engine = sa.create_engine(net.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as killer, engine.connect() as raw:
                conn = CrashingConnection(raw, killer, crash_at)
                try:
                    outcomes.append(capture.install_blog_triggers(conn, net.prefix, blog))  # type: ignore[arg-type]
                except Crashed:
                    outcomes.append(f"killed before statement {crash_at}")
                    raw.invalidate()
        finally:
            engine.dispose()
        # Whatever the moment: one trigger per event, each change captured once.
        blog_triggers(net)
        assert captured_once_per_event(net, post) == expected, outcomes[-1]
        if outcomes[-1] == "upgraded":
            break
        crash_at += 1
        assert crash_at < 50, outcomes
    # The run that went through installed today's bodies.
    assert {e: " ".join(b.split()) for e, b in blog_triggers(net).items()} == current
    assert crash_at >= 4, outcomes  # every statement of the upgrade was a crash point
