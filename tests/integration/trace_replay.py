"""Replay what real WooCommerce 11 sent to MariaDB (tests/fixtures/woocommerce-11/traces, copied
from shared/fixtures: the recorder, the format and every dangerous window are in its README),
statement by statement, on one connection per recorded connection, with autocommit as PHP had it,
so that syncd can act between any two statements.

The statements are replayed exactly as logged: WooCommerce's decisions (INSERT because its check
found no row, UPDATE of every row of a key) are those of the recording. So a replay with syncd
acting in a window is stricter than the real thing: if syncd inserted a row WooCommerce had
checked for, the replayed INSERT makes the duplicate that real WooCommerce would have made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "woocommerce-11" / "traces"


@dataclass(frozen=True)
class Statement:
    index: int  # index into the trace's `statements`
    conn: int
    kind: str
    sql: str


def load(name: str) -> dict[str, Any]:
    return json.loads((TRACES / f"{name}.json").read_text())


def statements(trace: dict[str, Any]) -> list[Statement]:
    """The statements a replay sends (the handshake's Connect/Init DB/Quit are not SQL)."""
    return [
        Statement(i, int(s["conn"]), s["kind"], s["sql"])
        for i, s in enumerate(trace["statements"])
        if s["command"] in ("Query", "Execute")
    ]


def windows(trace: dict[str, Any], watched_only: bool = True) -> list[tuple[str, int, int, str]]:
    """Every marked window: (type, after, before, meta_key) - a foreign write after statement
    ``after`` and before ``before`` is the dangerous one."""
    out = []
    for w in trace["summary"]:
        if watched_only and not w.get("watched"):
            continue
        for field in ("window", "overwrite_window"):
            win = w.get(field)
            if win and "after" in win and "before" in win:
                out.append((win.get("type", field), int(win["after"]), int(win["before"]), w.get("meta_key", "")))
    for d in trace.get("conditional_deletes", []):
        if "after" in d and "before" in d:
            out.append(("delete", int(d["after"]), int(d["before"]), d.get("meta_key", "")))
    return out


def new_post_ids(trace: dict[str, Any]) -> dict[int, int]:
    """Statement index -> the id WordPress's INSERT into a posts table got in the recording (read
    back with ``SELECT * FROM T WHERE ID = N`` right after it)."""
    out: dict[int, int] = {}
    sts = trace["statements"]
    for i, st in enumerate(sts):
        m = re.match(r"INSERT INTO `?(\w*posts)`? ", st["sql"])
        if m is None:
            continue
        for later in sts[i + 1 : i + 6]:
            found = re.search(rf"FROM {m.group(1)} WHERE ID = (\d+)", later["sql"])
            if found:
                out[i] = int(found.group(1))
                break
    return out


def with_post_id(sql: str, post_id: int) -> str:
    """The INSERT with its ID given: the test database's AUTO_INCREMENT is not the recording's."""
    head, _, rest = sql.partition("(")
    values_at = rest.index("VALUES (") + len("VALUES (")
    return f"{head}(`ID`, {rest[:values_at]}{int(post_id)}, {rest[values_at:]}"


#: A save's ``UPDATE posts SET post_modified = '...', post_modified_gmt = '...'`` (as logged).
_MODIFIED = re.compile(r"(`post_modified(?:_gmt)?` = )'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d'")


def saved_now(sql: str) -> str:
    """The statement with the save's modification time as the server's now (the recording's own
    time is hours old: a replayed save must look as recent as it was when WooCommerce sent it;
    the test network's blogs run on UTC, as the recording's did)."""
    return _MODIFIED.sub(r"\1UTC_TIMESTAMP()", sql) if sql.startswith("UPDATE") else sql


class Replay:
    """A trace replayed on the test network (``net``, the recorded baseline the trace ran on).
    ``now``: a save's ``post_modified`` is sent as the server's current time (:func:`saved_now`)."""

    def __init__(self, net: Any, name: str, *, now: bool = False) -> None:
        self.trace = load(name)
        self.todo = statements(self.trace)
        self._net = net
        self._conns: dict[int, Any] = {}
        ids = new_post_ids(self.trace)  # new posts get the ids the trace's later statements use
        self.todo = [Statement(s.index, s.conn, s.kind, with_post_id(s.sql, ids[s.index])) if s.index in ids else s for s in self.todo]
        if now:
            self.todo = [Statement(s.index, s.conn, s.kind, saved_now(s.sql)) for s in self.todo]

    def _conn(self, n: int) -> Any:
        if n not in self._conns:
            raw = self._net.engine.raw_connection()
            raw.driver_connection.autocommit(True)
            cur = raw.cursor()  # a PHP request's session: MariaDB's defaults, not the test engine's
            # (wpdb sets no lock wait: 50 s, the server default; the test server's global is 10 s)
            cur.execute("SET SESSION innodb_lock_wait_timeout = 50")
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the server default
            cur.close()
            self._conns[n] = raw
        return self._conns[n]

    def connection_id(self, n: int) -> int:
        """The server's CONNECTION_ID() of recorded connection ``n`` (opened if needed)."""
        cur = self._conn(n).cursor()
        try:
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchone()[0])
        finally:
            cur.close()

    def run(self, until: int | None = None, between: Callable[[Statement], None] | None = None) -> None:
        """Send the statements with index <= ``until`` (all when None) not sent yet; call
        ``between(statement)`` after each one."""
        while self.todo and (until is None or self.todo[0].index <= until):
            st = self.todo.pop(0)
            cur = self._conn(st.conn).cursor()
            try:
                cur.execute(st.sql)  # no parameters: the driver sends the text as logged
                if cur.description is not None:
                    cur.fetchall()
            finally:
                cur.close()
            if between is not None:
                between(st)

    def close(self) -> None:
        for raw in self._conns.values():
            raw.close()
        self._conns.clear()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
