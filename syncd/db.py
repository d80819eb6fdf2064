"""Database access: engines, session settings, error classes by errno, validated table names.

Every connection syncd opens goes through :func:`make_engine`, so every session has the same,
explicit settings (gh-ost style): a WordPress-compatible ``sql_mode``, UTC ``time_zone``,
utf8mb4, READ COMMITTED, and a short ``innodb_lock_wait_timeout`` so that when syncd and a
checkout want the same row, syncd is the one that gives up and retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pymysql
import sqlalchemy as sa
import structlog
from pymysql.constants import CLIENT
from sqlalchemy.engine import URL, Engine, make_url

log = structlog.get_logger("syncd.db")

# MySQL/MariaDB error numbers syncd reacts to. Classified by number, never by message text.
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
ER_SP_DOES_NOT_EXIST = 1305  # ROLLBACK TO an unknown savepoint
ER_NO_SUCH_TABLE = 1146
ER_BAD_DB_ERROR = 1049
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_OPTION_PREVENTS_STATEMENT = 1290  # e.g. --read-only
ER_CANT_LOCK_READ_ONLY = 1792
ER_SERVER_SHUTDOWN = 1053
ER_QUERY_INTERRUPTED = 1317
ER_CONNECTION_KILLED = 1927  # MariaDB
CR_CONN_HOST_ERROR = 2003
CR_CONNECTION_ERROR = 2002
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013
ER_CLIENT_INTERACTION_TIMEOUT = 4031  # MySQL 8: client disconnected by the server

#: A batch that failed with one of these is rolled back and retried as a whole: nothing of it
#: was applied, and its change rows are still there.
RETRY_BATCH = frozenset({ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK})
#: The connection is gone: reconnect (with capped backoff), then retry the batch.
RECONNECT = frozenset(
    {
        CR_SERVER_GONE,
        CR_SERVER_LOST,
        CR_CONN_HOST_ERROR,
        CR_CONNECTION_ERROR,
        ER_SERVER_SHUTDOWN,
        ER_QUERY_INTERRUPTED,
        ER_CONNECTION_KILLED,
        ER_CLIENT_INTERACTION_TIMEOUT,
    }
)
#: The server refuses writes for now (read-only); wait and retry, the shop is not ours to fix.
#: 1836: MySQL's ER_READ_ONLY_MODE (super_read_only / a replica being promoted).
READ_ONLY = frozenset({ER_OPTION_PREVENTS_STATEMENT, ER_CANT_LOCK_READ_ONLY, 1836})
#: Errors that say "not now", never "never": the server is short of a resource or cut a statement
#: short (statement timeout 1969 / max_execution_time 3024, table full 1114, disk full 1021,
#: out of memory 1037/1041, commit failed 1180, rollback failed 1181, FLUSH TABLES WITH READ LOCK
#: 1223, too many transactions 1637, table definition changed 1412, re-prepare 1615). A batch that
#: meets one is rolled back and retried as a whole, with capped backoff, for as long as it takes
#: (syncd.queue); it is never dead-lettered, and no member of it is skipped for it.
TRANSIENT = frozenset({1021, 1037, 1041, 1114, 1180, 1181, 1223, 1412, 1615, 1637, 1969, 3024})

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")

#: sql_mode WordPress's wpdb leaves in force: it strips the STRICT and related modes, so
#: arithmetic on a '' meta_value warns instead of failing. syncd validates values itself
#: before any arithmetic, so the mode only has to match what WordPress writes under.
WORDPRESS_SQL_MODE = "NO_ENGINE_SUBSTITUTION"


class PrefixError(ValueError):
    """A table prefix that is not a plain identifier fragment."""


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it may be pasted into a table name, else raise PrefixError.

    Table names are the only thing syncd ever formats into SQL text; they come solely from
    prefixes that pass this check (letters, digits, underscore), never from data.
    """
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise PrefixError(
            f"table prefix {prefix!r} is not valid: expected 1-32 characters of A-Z, a-z, 0-9 or _"
        )
    return prefix


def table(prefix: str, name: str) -> str:
    """Backquoted table name ``prefix + name``; ``name`` is a constant of syncd's own code."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"bad table suffix {name!r}")
    return f"`{validate_prefix(prefix)}{name}`"


def errno_of(exc: BaseException) -> int | None:
    """The MySQL errno behind a (SQLAlchemy-wrapped) driver exception, if any."""
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def is_retryable(exc: BaseException) -> bool:
    """True when the whole batch should be rolled back and tried again."""
    code = errno_of(exc)
    return (
        code in RETRY_BATCH
        or code in RECONNECT
        or code in READ_ONLY
        or code in TRANSIENT
        or _is_disconnect(exc)
    )


def is_disconnect(exc: BaseException) -> bool:
    """True when the connection is unusable and must be replaced."""
    code = errno_of(exc)
    return code in RECONNECT or _is_disconnect(exc)


def _is_disconnect(exc: BaseException) -> bool:
    return bool(getattr(exc, "connection_invalidated", False))


@dataclass(frozen=True)
class SessionSettings:
    lock_wait_timeout: int = 1
    isolation: str = "READ COMMITTED"
    apply_marker: bool = False  # set @syncd_apply=1 so capture triggers ignore this session


def redact_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ***, for logs and messages."""
    try:
        u = make_url(url) if isinstance(url, str) else url
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        return re.sub(r"//[^@/]*@", "//***@", str(url))
    return u.render_as_string(hide_password=True)


def make_engine(
    url: str | URL, settings: SessionSettings | None = None, *, multi_statements: bool = False, **kw: Any
) -> Engine:
    """An Engine whose every new connection gets syncd's explicit session settings.

    ``multi_statements``: the connections may send several statements in one round trip
    (:func:`run_many`); only the apply engine asks for it. Safe because no value is ever pasted
    into SQL text - values are always bound (escaped by the driver) and table names come only
    from validated prefixes - so nothing can be stacked onto a statement by data."""
    settings = settings or SessionSettings()
    u = make_url(url) if isinstance(url, str) else url
    if u.get_backend_name() != "mysql":
        raise ValueError(f"database url must be mysql+pymysql://..., got {redact_url(u)}")
    if u.drivername != "mysql+pymysql":
        u = u.set(drivername="mysql+pymysql")
    query = dict(u.query)
    query.setdefault("charset", "utf8mb4")
    u = u.set(query=query)
    connect_args: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 30,
        "write_timeout": 30,
        "autocommit": False,
    }
    if multi_statements:
        # FOUND_ROWS is what SQLAlchemy's dialect sets itself (rowcount = rows matched); an
        # explicit client_flag replaces the dialect's, so both are given.
        connect_args["client_flag"] = CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS
    connect_args.update(kw.pop("connect_args", {}))
    sizing = {"pool_size": kw.pop("pool_size", 2), "max_overflow": kw.pop("max_overflow", 4)}
    if kw.get("poolclass") is sa.pool.StaticPool:
        sizing = {}  # one shared connection (syncd.preview): no pool to size
    engine = sa.create_engine(
        u,
        connect_args=connect_args,
        pool_pre_ping=True,
        **sizing,
        pool_recycle=kw.pop("pool_recycle", 3600),
        isolation_level=settings.isolation.replace(" ", "_") if settings.isolation else None,
        **kw,
    )

    @sa.event.listens_for(engine, "connect")
    def _session_setup(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(
                "SET SESSION sql_mode = %s, time_zone = '+00:00', innodb_lock_wait_timeout = %s",
                (WORDPRESS_SQL_MODE, int(settings.lock_wait_timeout)),
            )
            if settings.apply_marker:
                cur.execute("SET @syncd_apply = 1")
        finally:
            cur.close()

    return engine


def server_info(conn: sa.Connection) -> dict[str, Any]:
    """Version and flavour of the server behind ``conn``."""
    version = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
    return {"version": version, "flavor": "mariadb" if "mariadb" in version.lower() else "mysql"}


@dataclass
class Rows:
    """One statement's result from :func:`run_many`: column names and rows (empty for writes)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    rowcount: int = -1  # rows affected (a write), as the driver reports it


def multi_statements(conn: sa.Connection) -> bool:
    """True when ``conn`` was opened with multi-statements (``make_engine(multi_statements=True)``)."""
    raw = conn.connection.dbapi_connection
    return bool(getattr(raw, "client_flag", 0) & CLIENT.MULTI_STATEMENTS)


def run_many(conn: sa.Connection, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Rows]:
    """Run driver-level statements (``%s`` placeholders, values bound) in order, in the caller's
    transaction; returns each one's rows.

    On a multi-statement connection they go to the server as ONE round trip (the server runs
    them one after the other and stops at the first error), else one by one. Same statements,
    same order, same locks either way; only the round trips differ. A failure is raised as
    SQLAlchemy's DBAPIError (errno intact, so retry and reconnect logic treats it like any
    other), and a lost connection is invalidated."""
    if not statements:
        return []
    if not multi_statements(conn):
        out = []
        for text, params in statements:
            result = conn.exec_driver_sql(text, tuple(params))
            if result.returns_rows:
                out.append(Rows(tuple(result.keys()), [tuple(r) for r in result], result.rowcount))
            else:
                out.append(Rows((), [], result.rowcount))
        return out
    if not conn.in_transaction():
        # What SQLAlchemy's autobegin would do for a statement of its own: without it the raw
        # cursor's statements would run in a server transaction SQLAlchemy does not know of, and
        # the caller's commit() or rollback() would not end it.
        conn.begin()
    raw = conn.connection.dbapi_connection
    try:
        bound = [bind(raw, text, params) for text, params in statements]
    except pymysql.err.Error as exc:  # a placeholder/parameter mismatch, as PyMySQL reports it
        joined, flat = ";\n".join(t for t, _ in statements), tuple(p for _, ps in statements for p in ps)
        raise sa.exc.DBAPIError.instance(joined, flat, exc, pymysql.err.Error) from exc
    out: list[Rows] = []
    start = 0
    for part in _round_trips(statements, sizes=[len(b) for b in bound]):
        out += _one_round_trip(conn, part, bound[start : start + len(part)])
        start += len(part)
    return out


#: Upper bound of one multi-statement round trip's text, values included. Far below the smallest
#: max_allowed_packet in use (1 MiB on old MySQL/MariaDB configurations; 16-64 MiB by default
#: today): a packet above the server's limit is not an error syncd could retry, the server
#: drops the connection (and the same batch would be sent again).
ROUND_TRIP_BYTES = 256 * 1024


def _round_trips(
    statements: Sequence[tuple[str, Sequence[Any]]],
    budget: int | None = None,
    sizes: Sequence[int] | None = None,
) -> list[list[tuple[str, Sequence[Any]]]]:
    """Consecutive groups of ``statements`` whose size stays within ``budget`` (default
    :data:`ROUND_TRIP_BYTES`; a statement larger than that goes alone, as it would without
    run_many). ``sizes``: each statement's length once bound; else an estimate."""
    budget = ROUND_TRIP_BYTES if budget is None else budget
    parts: list[list[tuple[str, Sequence[Any]]]] = []
    size = 0
    for i, (text, params) in enumerate(statements):
        if sizes is not None:
            n = sizes[i] + 2  # the ";\n" between statements
        else:  # escaped values are at most about twice their text (quotes, backslashes): a bound
            n = len(text) + sum(2 * len(str(p)) + 3 for p in params)
        if not parts or size + n > budget:
            parts.append([])
            size = 0
        parts[-1].append((text, params))
        size += n
    return parts


def bind(raw: Any, text: str, params: Sequence[Any]) -> str:
    """``text`` with its ``%s`` placeholders bound to ``params``, exactly as PyMySQL's
    ``cursor.execute(text, params)`` binds them (``text % tuple(map(conn.escape, params))``),
    faster for the values syncd sends most: ``int`` is ``str(value)`` and ``None`` is ``NULL``
    (PyMySQL's ``escape_int`` and ``escape_None``), and a naive ``datetime`` is escaped once per
    distinct value (history repeats the batch's time on every row; PyMySQL's ``escape_datetime``
    depends only on the value). A 500-change batch on 10 blogs binds ~170,000 values."""
    escape = raw.escape
    times: dict[datetime, str] = {}

    def literal(p: Any) -> str:
        if p is None:
            return "NULL"
        if type(p) is datetime and p.tzinfo is None:
            out = times.get(p)
            if out is None:
                out = times[p] = escape(p)
            return out
        return escape(p)

    try:
        return text % tuple(str(p) if type(p) is int else literal(p) for p in params)
    except TypeError as exc:  # what PyMySQL raises for a placeholder/parameter mismatch
        raise pymysql.err.ProgrammingError(str(exc)) from exc


def _one_round_trip(
    conn: sa.Connection, statements: Sequence[tuple[str, Sequence[Any]]], bound: Sequence[str]
) -> list[Rows]:
    """``statements`` (``bound``: each one's text with its values bound) as one round trip."""
    joined = ";\n".join(text for text, _ in statements)
    flat = tuple(p for _, params in statements for p in params)
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor()
    if conn.dispatch.before_cursor_execute:
        # Listeners (statement counters in bench/, SQL logging) see the round trip as one
        # execution of the joined text.
        conn.dispatch.before_cursor_execute(conn, cursor, joined, flat, None, False)
    out = []
    try:
        cursor.execute(";\n".join(bound))  # no args: PyMySQL sends the text as it is
        while True:
            if cursor.description:
                out.append(
                    Rows(tuple(d[0] for d in cursor.description), list(cursor.fetchall()), cursor.rowcount)
                )
            else:
                out.append(Rows((), [], cursor.rowcount))
            if not cursor.nextset():
                break
    except pymysql.err.Error as exc:
        wrapped = sa.exc.DBAPIError.instance(joined, flat, exc, pymysql.err.Error)
        if is_disconnect(wrapped):
            conn.invalidate()
        raise wrapped from exc
    finally:
        try:
            cursor.close()
        except pymysql.err.Error:
            pass  # the error itself was raised above; a dead connection has nothing to drain
    if len(out) != len(statements):  # pragma: no cover - the server answers every statement or errs
        raise RuntimeError(f"{len(statements)} statements sent, {len(out)} results received")
    return out


def keys_where(keys: Iterable[tuple[int, int]]) -> tuple[str, list[Any]]:
    """``(blog_id = %s AND post_id IN (%s, ...)) OR ...`` for (blog, post) keys, with its
    parameters (driver-level ``%s``; 'FALSE' for none): the look-ups of syncd's own tables by
    product (syncd_change's ``product`` index, syncd_settle and syncd_fanout primary keys)."""
    by_blog: dict[int, list[int]] = {}
    for blog_id, post_id in sorted(set(keys)):
        by_blog.setdefault(blog_id, []).append(post_id)
    parts, params = [], []
    for blog_id, posts in sorted(by_blog.items()):
        parts.append(f"(blog_id = %s AND post_id IN ({', '.join(['%s'] * len(posts))}))")
        params += [blog_id, *posts]
    return " OR ".join(parts) or "FALSE", params


def guarded(blog_id: int, fn: Callable[[], object], savepoint: sa.Connection | None = None) -> object:
    """Run one blog's step; a non-retryable failure is logged and leaves the other blogs alone."""
    sp = savepoint.begin_nested() if savepoint is not None else None
    try:
        out = fn()
        if sp is not None:
            sp.commit()
        return out
    except Exception as exc:
        if is_retryable(exc):
            raise
        if sp is not None:
            sp.rollback()
        log.error("blog_step_failed", blog=blog_id, error=str(exc)[:300], errno=errno_of(exc))
        return None
