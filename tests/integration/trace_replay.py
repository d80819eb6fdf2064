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


def new_post_ids(trace: dict[str, Any]) -> dict[str, int]:
    """Per posts table, the id the trace's first INSERT into it got (read back by WordPress with
    ``SELECT * FROM T WHERE ID = N`` right after): the recording's AUTO_INCREMENT, which a cloned
    test database does not keep (it restarts after the highest id)."""
    out: dict[str, int] = {}
    sts = trace["statements"]
    for i, st in enumerate(sts):
        m = re.match(r"INSERT INTO `?(\w*posts)`? ", st["sql"])
        if m is None or m.group(1) in out:
            continue
        for later in sts[i + 1 : i + 6]:
            found = re.search(rf"FROM {m.group(1)} WHERE ID = (\d+)", later["sql"])
            if found:
                out[m.group(1)] = int(found.group(1))
                break
    return out


class Replay:
    """A trace replayed on the test network (``net``, the recorded baseline the trace ran on)."""

    def __init__(self, net: Any, name: str) -> None:
        self.trace = load(name)
        self.todo = statements(self.trace)
        self._net = net
        self._conns: dict[int, Any] = {}
        with net.engine.connect() as c:  # new posts get the ids the trace's later statements use
            for posts, first_id in new_post_ids(self.trace).items():
                top = c.exec_driver_sql(f"SELECT COALESCE(MAX(ID), 0) FROM `{posts}`").scalar_one()
                assert top < first_id, f"{posts} already holds id {first_id}: the trace would write into it"
                c.exec_driver_sql(f"ALTER TABLE `{posts}` AUTO_INCREMENT = {int(first_id)}")

    def _conn(self, n: int) -> Any:
        if n not in self._conns:
            raw = self._net.engine.raw_connection()
            raw.driver_connection.autocommit(True)
            self._conns[n] = raw
        return self._conns[n]

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
