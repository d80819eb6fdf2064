"""Wake the idle loop when a change row commits: follow the server's binary log.

Where the binary log is on in ROW format (replicas, point-in-time recovery), the server sends
every committed transaction to its replicas as it commits; syncd registers as one more (the way
gh-ost and Debezium see commits, python-mysql-replication) and wakes the idle loop whenever a
transaction wrote ``{base}syncd_change``. The idle loop then waits for that instead of asking
the server every ``sync.idle_wait``: no round trip at all while nothing happens.

The change table stays the only source of truth: the binary log decides *when* to look, never
*what* to apply. The loop still probes once per :data:`FALLBACK_S` (a lost stream, a missed
event); after each wake it keeps the usual ``idle_wait`` polling for :data:`AFTER_WAKE_S`
(the event may reach syncd a moment before the commit is visible to other sessions).

**Binlog capture** (``capture.mode = "binlog"``): the follower also reads the row images of
each blog's ``postmeta`` and notes which products had a watched key written
(:meth:`BinlogWake.take_touched`). The daemon then compares exactly those products with the
poll snapshot (:func:`syncd.poll.poll_posts`): the snapshot, not the log, says what changed and
by how much, so a product named twice queues nothing twice, and one named before its commit
is visible is read with a lock, which waits for that commit; and every time the stream (re)starts (:attr:`BinlogWake.resynced`) the
daemon compares everything once, which covers whatever was committed while it was not following.

Off (the idle probe every ``idle_wait``, syncd.probe) when the binary log is off, not in ROW
format (a statement-logged shop write does not show the trigger's row), or the user may not
read it (REPLICATION SLAVE / BINLOG MONITOR); the reason is logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import pymysql
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url

from syncd.db import errno_of, table

log = structlog.get_logger("syncd.wake")

#: Probe this often even without an event (a stream that died silently).
FALLBACK_S = 1.0
#: Errors that mean "this user may not follow the binary log": the loop polls, for good.
REFUSED = frozenset({1044, 1045, 1142, 1227, 1370})
#: After a wake, poll every idle_wait for this long before waiting for the binary log again.
AFTER_WAKE_S = 0.05


def unavailable(conn: sa.Connection) -> str | None:
    """Why the binary log cannot wake syncd on this server (None: it can)."""
    log_bin, fmt = conn.exec_driver_sql("SELECT @@log_bin, @@binlog_format").one()
    conn.rollback()
    if not int(log_bin):
        return "binary log off"
    if str(fmt).upper() != "ROW":
        return f"binlog_format is {fmt}, not ROW"
    return None


class _Transaction:
    """Binlog capture: what the transaction being read named, and whether it is syncd's own."""

    def __init__(self) -> None:
        self.named: dict[int, set[int]] = {}
        self.own = False


def _capture_events() -> tuple[Any, ...]:
    """The events binlog capture reads besides the table maps: rows, and transaction bounds."""
    from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent  # noqa: PLC0415
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent  # noqa: PLC0415

    return (
        WriteRowsEvent,
        UpdateRowsEvent,
        DeleteRowsEvent,
        XidEvent,
        QueryEvent,
        GtidEvent,
        MariadbGtidEvent,
    )


def _begins_transaction(ev: Any, query_event: type) -> bool:
    """A GTID event, or a ``BEGIN`` query (a ``SAVEPOINT`` inside a transaction is not one)."""
    if type(ev).__name__ in ("GtidEvent", "MariadbGtidEvent"):
        return True
    return isinstance(ev, query_event) and _query_text(ev.query) == "BEGIN"


def _query_text(query: Any) -> str:
    return (query.decode("utf-8", "replace") if isinstance(query, bytes) else str(query)).strip().upper()


def _ends_transaction(query: Any) -> bool:
    return _query_text(query) in ("COMMIT", "XA COMMIT")


#: Binlog capture: ``{prefix}postmeta`` table name -> (blog id, the meta keys watched there).
MetaTables = Mapping[str, "tuple[int, frozenset[str]]"]
#: A named "product" meaning the whole blog: a row image without its post id or key
#: (``binlog_row_image = MINIMAL``, a server's or a session's) cannot say which product it wrote.
WHOLE_BLOG = -1


class BinlogWake:
    """A thread that follows the binary log and sets :attr:`event` when ``{base}syncd_change``
    was written by a committed transaction, or (binlog capture: ``meta_tables``) a watched
    postmeta row of a blog."""

    def __init__(
        self,
        url: str,
        base_prefix: str,
        *,
        mariadb: bool = True,
        meta_tables: Callable[[], MetaTables] | None = None,
    ) -> None:
        u = make_url(url)
        self.mariadb = mariadb
        self.settings: dict[str, Any] = {
            "host": u.host or "localhost",
            "port": int(u.port or 3306),
            "user": u.username or "",
            "password": u.password or "",
        }
        if u.query.get("unix_socket"):
            self.settings["unix_socket"] = u.query["unix_socket"]
        self.schema = u.database or ""
        self.table = table(base_prefix, "syncd_change").strip("`")
        self.history = table(base_prefix, "syncd_history").strip("`")
        # A replica id of its own (two daemons, a standby, must not share one).
        self.server_id = 1_000_000 + zlib.crc32(f"{os.getpid()}:{time.time_ns()}".encode()) % 1_000_000_000
        self.event = threading.Event()
        self.wakes = 0  # committed transactions seen that wrote the change table
        self.following = threading.Event()  # the stream is connected
        self._closed = threading.Event()
        self._stream: Any = None
        self.meta_tables = meta_tables
        #: Set each time the stream starts: what committed before it was not seen here.
        self.resynced = threading.Event()
        self._touched: dict[int, set[int]] = {}
        self._touched_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="syncd-binlog-wake", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following. The thread is blocked reading the socket: shutting the socket down
        ends that read (closing the connection from this thread would wait for it)."""
        self._closed.set()
        self.event.set()
        sock = getattr(getattr(self._stream, "_stream_connection", None), "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(2.0)

    def take_touched(self) -> dict[int, set[int]]:
        """Blog id -> products with a watched postmeta row written since the last call."""
        with self._touched_lock:
            touched, self._touched = self._touched, {}
        return touched

    def name_again(self, blog_id: int, posts: set[int]) -> None:
        """Products whose comparison failed (a deadlock with a shop write): compared at the next look."""
        with self._touched_lock:
            self._touched.setdefault(blog_id, set()).update(posts)

    def has_touched(self) -> bool:
        with self._touched_lock:
            return bool(self._touched)

    def _note_rows(self, ev: Any, tables: MetaTables, named: dict[int, set[int]]) -> None:
        """A rows event of a blog's postmeta table: note the products whose watched rows it wrote
        (before and after images: a row moved to another product or key names both)."""
        blog_id, keys = tables[ev.table]
        for row in ev.rows:
            for image in (row.get("values"), row.get("before_values"), row.get("after_values")):
                if image:
                    post_id, meta_key = _post_and_key(image)
                    if post_id is None or meta_key is None:
                        named.setdefault(blog_id, set()).add(WHOLE_BLOG)
                    elif meta_key in keys:
                        named.setdefault(blog_id, set()).add(post_id)

    def _on_event(self, ev: Any, txn: _Transaction) -> None:
        from pymysqlreplication.event import QueryEvent, XidEvent  # noqa: PLC0415
        from pymysqlreplication.row_event import RowsEvent, TableMapEvent  # noqa: PLC0415

        if isinstance(ev, TableMapEvent):
            if ev.schema == self.schema and ev.table == self.table:
                self.wakes += 1
                self.event.set()
            elif ev.schema == self.schema and ev.table == self.history:
                txn.own = True
        elif isinstance(ev, XidEvent) or (isinstance(ev, QueryEvent) and _ends_transaction(ev.query)):
            self._committed(txn)
        elif _begins_transaction(ev, QueryEvent):
            if txn.named:  # a new transaction began without a commit seen: compare what it named
                self._committed(txn)
            txn.own = False
        elif isinstance(ev, RowsEvent) and ev.schema == self.schema and self.meta_tables is not None:
            tables = self.meta_tables()
            if ev.table in tables:
                self._note_rows(ev, tables, txn.named)

    def _committed(self, txn: _Transaction) -> None:
        """A transaction's commit: what it named is compared, unless it is syncd's own (it wrote
        syncd's history: an apply, a reconcile, whose writes the snapshot took already)."""
        if txn.named and not txn.own:
            with self._touched_lock:
                for blog_id, posts in txn.named.items():
                    self._touched.setdefault(blog_id, set()).update(posts)
            self.event.set()
        txn.named, txn.own = {}, False

    def wait(self, timeout: float) -> bool:
        """Until a change row committed (True), or ``timeout``."""
        return self.event.wait(timeout)

    def _run(self) -> None:
        # The library warns at every start that it maps columns without BINLOG_ROW_METADATA=FULL;
        # syncd reads no row data from the log (only which table a transaction wrote).
        logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)
        delay = 0.5
        while not self._closed.is_set():
            try:
                self._follow()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - reconnect; meanwhile the loop polls
                if self._closed.is_set():
                    return
                if errno_of(exc) in REFUSED:
                    # Binlog capture then finds writes only by its full comparison: an error.
                    (log.error if self.meta_tables else log.info)(
                        "binlog_capture_off" if self.meta_tables else "binlog_wake_off",
                        reason="the user may not read the binary log",
                        errno=errno_of(exc),
                    )
                    self.following.clear()
                    return
                log.warning("binlog_wake_lost", error=str(exc)[:200], retry_in=delay)
            self.following.clear()
            self.event.set()
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def _gtid_position(self) -> str:
        conn = pymysql.connect(**self.settings, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                return str(cur.fetchone()[0] or "")
        finally:
            conn.close()

    def _follow(self) -> None:
        from pymysqlreplication import BinLogStreamReader  # noqa: PLC0415 - only where the log is on
        from pymysqlreplication.event import FormatDescriptionEvent, RotateEvent  # noqa: PLC0415
        from pymysqlreplication.row_event import TableMapEvent  # noqa: PLC0415

        where: dict[str, Any] = {}
        if self.mariadb:
            # From now on: without a GTID position the library starts MariaDB's dump at the
            # beginning of the oldest binary log (every event of it parsed at each start).
            where["auto_position"] = self._gtid_position()
        self._stream = BinLogStreamReader(
            **where,
            connection_settings=self.settings,
            server_id=self.server_id,
            blocking=True,
            resume_stream=True,
            # Rotate / format description: sent as the stream starts (the follower is connected).
            only_events=[
                TableMapEvent,
                RotateEvent,
                FormatDescriptionEvent,
                *(_capture_events() if self.meta_tables else ()),
            ],
            is_mariadb=self.mariadb,
            enable_logging=False,
            slave_heartbeat=30,
        )
        log.info("binlog_wake_following", server_id=self.server_id, capture=self.meta_tables is not None)
        txn = _Transaction()
        try:
            for ev in self._stream:
                if not self.following.is_set():
                    if self.meta_tables is not None:
                        # Binlog capture: what committed before the stream is compared in full
                        # now (set before `following`, so whoever sees that sees this too).
                        self.resynced.set()
                        self.event.set()
                    self.following.set()
                if self._closed.is_set():
                    return
                self._on_event(ev, txn)
        finally:
            self.following.clear()
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - a socket shut down by close()
                pass


def _post_and_key(image: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """(post_id, meta_key) of a postmeta row image: its 2nd and 3rd columns (meta_id, post_id,
    meta_key, meta_value), by position (column names need the server's optional metadata). None
    for a column the image leaves out (``binlog_row_image = MINIMAL``)."""
    values = [*image.values(), None, None, None]
    post, key = values[1], values[2]
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return (None if post is None else int(post)), (None if key is None else str(key))
