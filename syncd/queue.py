"""The change queue: the whole life of a captured change, from ``{base}syncd_change`` to applied,
held, or dead-lettered in ``{base}syncd_dead``.

* **Statement groups.** The capture triggers write one row per changed meta row; the rows that
  one statement wrote carry the same ``conn_id`` and ``captured_at`` (the statement's start), on
  one blog. A group is the unit of work everywhere: :func:`fetch` never splits one between two
  batches, isolation after a failed batch applies group by group (:func:`statement_groups`), and
  reconcile's "apply pending changes first" step takes whole groups (:func:`pending_for`). A
  Polylang for WooCommerce fan-out (one UPDATE on every translation) is then always seen whole
  and counted once (syncd.plan). Rows without a connection id (0) are groups of one.
* **Held changes.** Only rows of blogs syncd serves right now are fetched (``blogs``); the rows
  of a blog that is archived, deleted, spam or not usable stay queued, without blocking the other
  blogs, until it is usable again (:class:`HeldBlogs` is raised by the apply step when it finds
  one at apply time). Rows of a blog that no longer exists or that the configuration excludes
  are moved to the dead letters with that reason (:func:`dead_letter_blogs`).
* **Acknowledge.** The apply transaction deletes exactly its rows by id
  (:func:`acknowledge_sql`); a row already gone means someone else applied it
  (:class:`BatchConflict`, the batch is abandoned).
* **Retry policy by error class** (:func:`error_class`): ``connection`` (reconnect, then retry),
  ``transient`` (lock waits, deadlocks, read-only, statement timeouts, full tables or disk, failed
  commits: :data:`syncd.db.TRANSIENT`; retried with capped backoff for as long as it takes, never
  dead-lettered), ``permanent`` (anything else: the batch is split into statement groups, and a
  group that fails alone :data:`PERMANENT_ATTEMPTS` times is dead-lettered with its errno).
* **Dead letters**: :func:`dead_letter`, :func:`list_dead`, :func:`retry_dead` (back into the
  queue, whole statement groups, under their own ids), :func:`discard_dead`.

Every function runs in the caller's transaction; the caller commits.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from syncd.db import (
    ER_LOCK_DEADLOCK,
    ER_LOCK_WAIT_TIMEOUT,
    READ_ONLY,
    errno_of,
    is_disconnect,
    is_retryable,
    table,
)
from syncd.plan import Change, Key

COLS = "id, blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id"
#: A statement group that fails alone with a permanent-looking error is tried this many times
#: (with backoff) before it is dead-lettered.
PERMANENT_ATTEMPTS = 2

TRANSIENT = "transient"
CONNECTION = "connection"
PERMANENT = "permanent"

#: error_class values of dead letters.
DEAD_ERROR = "permanent_error"
DEAD_BLOG_GONE = "origin_blog_gone"
DEAD_BLOG_EXCLUDED = "origin_blog_excluded"

_REASONS = {
    ER_LOCK_WAIT_TIMEOUT: "lock wait timeout",
    ER_LOCK_DEADLOCK: "deadlock",
    1969: "statement timeout",
    3024: "statement timeout",
    1114: "table full",
    1021: "disk full",
    1037: "out of memory",
    1041: "out of memory",
    1180: "commit failed",
    1181: "rollback failed",
    1223: "global read lock",
    1412: "table definition changed",
    1615: "statement must be re-prepared",
    1637: "too many active transactions",
}


class BatchConflict(RuntimeError):
    """Some change rows of the batch were already acknowledged by someone else."""


class HeldBlogs(RuntimeError):
    """Changes of the batch come from blogs that are not usable now: they stay queued (held)."""

    def __init__(self, blogs: Mapping[int, str]) -> None:
        super().__init__("; ".join(f"blog {b}: {r}" for b, r in sorted(blogs.items())))
        self.blogs = dict(blogs)


# --------------------------------------------------------------------------- statement groups
def statement_key(c: Change) -> tuple[Any, ...]:
    """Rows of one statement share blog, connection and capture time; conn_id 0 (unknown) is alone."""
    return (c.blog_id, c.conn_id, c.captured_at) if c.conn_id else (c.blog_id, 0, c.id)


def statement_groups(changes: Iterable[Change]) -> list[list[Change]]:
    """The changes by statement, each group in capture order, groups in order of their first row."""
    groups: dict[tuple[Any, ...], list[Change]] = {}
    for c in sorted(changes, key=lambda c: c.id):
        groups.setdefault(statement_key(c), []).append(c)
    return list(groups.values())


def _blog_filter(blogs: Collection[int] | None) -> tuple[str, list[int]]:
    if blogs is None:
        return "", []
    ids = sorted({int(b) for b in blogs})
    if not ids:
        return " AND FALSE", []
    return f" AND blog_id IN ({_marks(len(ids))})", ids


def fetch(
    conn: sa.Connection, base_prefix: str, limit: int, blogs: Collection[int] | None = None
) -> list[Change]:
    """The oldest committed change rows of ``blogs`` (None: all), in capture order, by whole
    statement groups (read, not removed: the apply step acknowledges them).

    A full batch is completed with the rows of its statements that lie beyond it (one indexed
    query); a batch that is not full holds every visible row, and a statement's rows commit together.
    """
    where, params = _blog_filter(blogs)
    # Driver level: this runs every idle_wait (10 ms) while the shops are quiet, on the apply
    # engine, which has no compiled-statement cache (see Daemon._make_engines).
    changes = [
        Change(*r)
        for r in conn.exec_driver_sql(
            f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE TRUE{where} ORDER BY id LIMIT %s",
            (*params, int(limit)),
        )
    ]
    if len(changes) < int(limit):
        return changes
    return complete(conn, base_prefix, changes)


# --------------------------------------------------------------------------- sales ahead of bulk
#: A connection with more rows than this in one fetch window is *bulk*: an import, as one large
#: statement or a run of autocommit statements from one connection. A WooCommerce order of 30 lines
#: writes ~60 rows; an import thousands.
BULK_ROWS = 100
#: Rows that change which products are linked: a batch is never fetched ahead of them.
MEMBERSHIP_KEYS = ("_sku", "_wp_trash_meta_status")
#: Rows of a batch taken from the head of the queue while it holds bulk work (completed to whole
#: statements): a sale committed while it is applied waits for that batch only.
BULK_BATCH = 100


@dataclass(frozen=True)
class Fetched:
    """A batch and, when it was fetched ahead of older bulk rows, the connections it passed.

    ``passed`` non-empty: the batch holds rows captured after queued rows of those bulk
    connections. The caller must then, under the apply step's locks, make sure that no product the
    batch wrote or originated has an older queued row outside the batch (:func:`passed_rows`), and
    otherwise apply the batch again with those rows (capture order per product kept)."""

    changes: list[Change]
    passed: tuple[tuple[int, int], ...] = ()


def fetch_lanes(
    conn: sa.Connection,
    base_prefix: str,
    limit: int,
    blogs: Collection[int] | None = None,
    *,
    ahead: bool = True,
    short: bool = False,
    bulk_rows: int = BULK_ROWS,
    bulk_batch: int = BULK_BATCH,
) -> Fetched:
    """Like :func:`fetch`, but small statement groups (sales) are not queued behind an import.

    When the oldest ``limit`` rows hold a bulk connection (more than ``bulk_rows`` rows), the
    batch is the oldest rows of the other connections instead (``ahead``; a connection is taken
    whole or not at all, so each connection's order is kept; statement groups are never split).
    Otherwise, while sales are waiting or just went ahead (``short``), the oldest ``bulk_batch``
    rows completed to whole statements (a sale committed meanwhile waits for that short batch
    only), and when every queued connection is bulk (an import alone, or writers on persistent
    connections), the usual full batch. Never ahead of a queued row that changes membership
    (``_sku``, trash marker): which products are linked must be as capture order says.
    Per-product order is checked by the caller (``passed``)."""
    where, params = _blog_filter(blogs)
    head = _oldest(conn, base_prefix, where, params, limit)
    bulk = _bulk_connections(head, bulk_rows)
    if bulk:
        small = _small_rows(conn, base_prefix, where, params, limit, bulk)
        passed = tuple(sorted(bulk | _bulk_connections(small, bulk_rows)))
        small = [c for c in small if (c.blog_id, c.conn_id) not in passed]
        if ahead and small and not _membership_passed(conn, base_prefix, passed, max(c.id for c in small)):
            return Fetched(complete(conn, base_prefix, small), passed)
        if small or short:
            return Fetched(complete(conn, base_prefix, head[: max(1, int(bulk_batch))]))
    return Fetched(head if len(head) < int(limit) else complete(conn, base_prefix, head))


def passed_rows(
    conn: sa.Connection, base_prefix: str, changes: Sequence[Change], keys: Iterable[Key]
) -> list[int]:
    """Queued rows of ``keys`` captured before the newest row of ``changes`` and not in it: the
    rows a batch fetched ahead of bulk work must take with it (run under the apply step's locks)."""
    keys = sorted({(int(b), int(p)) for b, p in keys})
    if not changes or not keys:
        return []
    batch = {c.id for c in changes}
    terms = " OR ".join(["(blog_id = %s AND post_id = %s)"] * len(keys))
    rows = conn.exec_driver_sql(
        f"SELECT id FROM {table(base_prefix, 'syncd_change')} WHERE id < %s AND ({terms}) ORDER BY id",
        (max(batch), *[v for k in keys for v in k]),
    )
    return [int(i) for (i,) in rows if int(i) not in batch]


def _oldest(conn: sa.Connection, base_prefix: str, where: str, params: list[int], limit: int) -> list[Change]:
    rows = conn.exec_driver_sql(
        f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE TRUE{where} ORDER BY id LIMIT %s",
        (*params, int(limit)),
    )
    return [Change(*r) for r in rows]


def _bulk_connections(changes: Sequence[Change], bulk_rows: int) -> set[tuple[int, int]]:
    """(blog, conn_id) with more than ``bulk_rows`` rows among ``changes`` (conn_id 0: unknown
    connection, its rows are groups of one and never bulk)."""
    counts: dict[tuple[int, int], int] = {}
    for c in changes:
        if c.conn_id:
            counts[(c.blog_id, c.conn_id)] = counts.get((c.blog_id, c.conn_id), 0) + 1
    return {k for k, n in counts.items() if n > bulk_rows}


def _small_rows(
    conn: sa.Connection,
    base_prefix: str,
    where: str,
    params: list[int],
    limit: int,
    bulk: set[tuple[int, int]],
) -> list[Change]:
    """The oldest ``limit`` rows of the connections that are not ``bulk``."""
    pairs = sorted(bulk)
    marks = ", ".join(["(%s, %s)"] * len(pairs))
    rows = conn.exec_driver_sql(
        f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE TRUE{where} "
        f"AND (blog_id, conn_id) NOT IN ({marks}) ORDER BY id LIMIT %s",
        (*params, *[v for p in pairs for v in p], int(limit)),
    )
    return [Change(*r) for r in rows]


def _membership_passed(
    conn: sa.Connection, base_prefix: str, passed: Sequence[tuple[int, int]], before: int
) -> bool:
    """Whether a queued row of the ``passed`` connections older than ``before`` changes membership."""
    marks = ", ".join(["(%s, %s)"] * len(passed))
    keys = ", ".join(["%s"] * len(MEMBERSHIP_KEYS))
    row = conn.exec_driver_sql(
        f"SELECT 1 FROM {table(base_prefix, 'syncd_change')} WHERE id < %s "
        f"AND (blog_id, conn_id) IN ({marks}) AND meta_key IN ({keys}) LIMIT 1",
        (int(before), *[v for p in passed for v in p], *MEMBERSHIP_KEYS),
    ).first()
    return row is not None


def complete(conn: sa.Connection, base_prefix: str, changes: Sequence[Change]) -> list[Change]:
    """``changes`` plus the other queued rows of their statements, in capture order."""
    keys = sorted({statement_key(c) for c in changes if c.conn_id}, key=lambda k: (k[0], k[1], str(k[2])))
    if not keys:
        return sorted(changes, key=lambda c: c.id)
    terms = " OR ".join(["(conn_id = %s AND captured_at = %s AND blog_id = %s)"] * len(keys))
    params = [v for b, conn_id, at in keys for v in (conn_id, at, b)]
    have = {c.id: c for c in changes}
    for r in conn.exec_driver_sql(
        f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE {terms} ORDER BY id", tuple(params)
    ):
        have.setdefault(int(r[0]), Change(*r))
    return sorted(have.values(), key=lambda c: c.id)


def fetch_ids(conn: sa.Connection, base_prefix: str, ids: Collection[int]) -> list[Change]:
    """These change rows (those still queued), in capture order."""
    if not ids:
        return []
    return [
        Change(*r)
        for r in conn.exec_driver_sql(
            f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE id IN ({_marks(len(ids))}) ORDER BY id",
            tuple(sorted(int(i) for i in ids)),
        )
    ]


def pending_for(conn: sa.Connection, base_prefix: str, keys: Iterable[Key]) -> list[Change]:
    """Queued change rows of these products, completed to whole statement groups (capture order)."""
    by_blog: dict[int, set[int]] = {}
    for b, p in keys:
        by_blog.setdefault(int(b), set()).add(int(p))
    if not by_blog:
        return []
    parts, params = [], []
    for b, posts in sorted(by_blog.items()):
        parts.append(f"(blog_id = %s AND post_id IN ({_marks(len(posts))}))")
        params += [b, *sorted(posts)]
    rows = conn.exec_driver_sql(
        f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE {' OR '.join(parts)} ORDER BY id",
        tuple(params),
    )
    found = [Change(*r) for r in rows]
    return complete(conn, base_prefix, found) if found else []


# --------------------------------------------------------------------------- acknowledge
def acknowledge_sql(base_prefix: str, changes: Sequence[Change]) -> tuple[str, list[int]]:
    """The statement that deletes exactly these change rows (never "all ids up to N": a change
    committed late with a lower id must not be skipped)."""
    ids = sorted(c.id for c in changes)
    return f"DELETE FROM {table(base_prefix, 'syncd_change')} WHERE id IN ({_marks(len(ids))})", ids


def check_acknowledged(changes: Sequence[Change], deleted: int) -> None:
    if deleted != len(changes):
        raise BatchConflict(
            f"{len(changes) - deleted} of {len(changes)} change rows were already acknowledged"
        )


# --------------------------------------------------------------------------- backlog, held
def queued_by_blog(conn: sa.Connection, base_prefix: str) -> dict[int, tuple[int, datetime | None]]:
    """Per blog: queued change rows and the capture time of the oldest."""
    rows = conn.exec_driver_sql(
        f"SELECT blog_id, COUNT(*), MIN(captured_at) FROM {table(base_prefix, 'syncd_change')} GROUP BY blog_id"
    )
    return {int(b): (int(n), oldest) for b, n, oldest in rows}


def backlog(
    conn: sa.Connection, base_prefix: str, blogs: Collection[int] | None = None
) -> tuple[int, datetime | None]:
    """(queued change rows of ``blogs``, capture time of the oldest); None: every blog."""
    queued = queued_by_blog(conn, base_prefix)
    mine = [v for b, v in queued.items() if blogs is None or b in blogs]
    oldest = [o for _, o in mine if o is not None]
    return sum(n for n, _ in mine), min(oldest) if oldest else None


def held(conn: sa.Connection, base_prefix: str, blogs: Collection[int]) -> dict[int, int]:
    """Queued change rows of blogs outside ``blogs`` (the blogs served now), per blog."""
    return {b: n for b, (n, _) in queued_by_blog(conn, base_prefix).items() if b not in blogs}


# --------------------------------------------------------------------------- retry policy
def error_class(exc: BaseException) -> str:
    """connection | transient | permanent, by errno (never by message text)."""
    if is_disconnect(exc):
        return CONNECTION
    if is_retryable(exc):
        return TRANSIENT
    return PERMANENT


def reason(exc: BaseException) -> str:
    """The class of a database error in words, for log lines and STATUS."""
    code = errno_of(exc)
    if code in _REASONS:
        return _REASONS[code]  # type: ignore[index]
    if code in READ_ONLY:
        return "server read-only"
    if is_disconnect(exc):
        return "connection lost"
    return "error"


# --------------------------------------------------------------------------- dead letters
@dataclass(frozen=True)
class DeadLetter:
    change: Change
    failed_at: datetime
    error_class: str
    errno: int | None
    error: str

    def document(self) -> dict[str, Any]:
        c = self.change
        return {
            "id": c.id,
            "blog_id": c.blog_id,
            "post_id": c.post_id,
            "meta_key": c.meta_key,
            "op": c.op,
            "old_value": c.old_value,
            "new_value": c.new_value,
            "captured_at": c.captured_at.isoformat() if c.captured_at else None,
            "conn_id": c.conn_id,
            "failed_at": self.failed_at.isoformat(),
            "error_class": self.error_class,
            "errno": self.errno,
            "error": self.error,
        }


def dead_letter(
    conn: sa.Connection,
    base_prefix: str,
    changes: Sequence[Change],
    error_class: str,
    reason: str,
    errno: int | None = None,
) -> int:
    """Move these change rows to the dead letters with why. Returns the rows moved."""
    if not changes:
        return 0
    ids = sorted(c.id for c in changes)
    change_t, dead_t = table(base_prefix, "syncd_change"), table(base_prefix, "syncd_dead")
    conn.exec_driver_sql(
        f"INSERT IGNORE INTO {dead_t} ({COLS}, failed_at, error_class, errno, error) "
        f"SELECT {COLS}, UTC_TIMESTAMP(6), %s, %s, %s FROM {change_t} WHERE id IN ({_marks(len(ids))})",
        (error_class, errno, reason[:2000], *ids),
    )
    return conn.exec_driver_sql(
        f"DELETE FROM {change_t} WHERE id IN ({_marks(len(ids))})", tuple(ids)
    ).rowcount


def dead_letter_blogs(
    conn: sa.Connection, base_prefix: str, blogs: Mapping[int, tuple[str, str]]
) -> dict[int, int]:
    """Dead-letter every queued row of these blogs: blog -> (error_class, reason). Returns rows per blog."""
    out = {}
    for b, (cls, why) in sorted(blogs.items()):
        rows = [
            Change(*r)
            for r in conn.exec_driver_sql(
                f"SELECT {COLS} FROM {table(base_prefix, 'syncd_change')} WHERE blog_id = %s ORDER BY id",
                (b,),
            )
        ]
        out[b] = dead_letter(conn, base_prefix, rows, cls, why)
    return out


def list_dead(conn: sa.Connection, base_prefix: str, ids: Collection[int] | None = None) -> list[DeadLetter]:
    """Dead letters in capture order (``ids``: only those)."""
    where, params = "", ()
    if ids is not None:
        if not ids:
            return []
        where, params = f" WHERE id IN ({_marks(len(ids))})", tuple(sorted(ids))
    rows = conn.exec_driver_sql(
        f"SELECT {COLS}, failed_at, error_class, errno, error FROM {table(base_prefix, 'syncd_dead')}{where} "
        "ORDER BY id",
        params,
    )
    return [DeadLetter(Change(*r[:9]), r[9], r[10], r[11], r[12]) for r in rows]


def dead_by_class(conn: sa.Connection, base_prefix: str) -> dict[str, int]:
    rows = conn.exec_driver_sql(
        f"SELECT error_class, COUNT(*) FROM {table(base_prefix, 'syncd_dead')} GROUP BY error_class"
    )
    return {str(c): int(n) for c, n in rows}


def retry_dead(conn: sa.Connection, base_prefix: str, ids: Collection[int] | None = None) -> list[int]:
    """Put dead letters back into the queue (``ids``, None: all), each with the rest of its
    statement group (a group is never split), under their own ids so they keep their place in
    capture order; a row whose id the queue reuses meanwhile gets a new id. Returns the ids moved."""
    letters = list_dead(conn, base_prefix)
    if ids is not None:
        wanted = {statement_key(d.change) for d in letters if d.change.id in set(ids)}
        letters = [d for d in letters if statement_key(d.change) in wanted]
    if not letters:
        return []
    change_t, dead_t = table(base_prefix, "syncd_change"), table(base_prefix, "syncd_dead")
    moved = sorted(d.change.id for d in letters)
    marks = _marks(len(moved))
    conn.exec_driver_sql(
        f"INSERT INTO {change_t} ({COLS}) SELECT {COLS} FROM {dead_t} d WHERE d.id IN ({marks}) "
        f"AND NOT EXISTS (SELECT 1 FROM {change_t} c WHERE c.id = d.id) ORDER BY d.id",
        tuple(moved),
    )
    rest = COLS.replace("id, ", "", 1)
    conn.exec_driver_sql(
        f"INSERT INTO {change_t} ({rest}) SELECT {rest} FROM {dead_t} d WHERE d.id IN ({marks}) "
        f"AND EXISTS (SELECT 1 FROM {change_t} c WHERE c.id = d.id AND NOT (c.captured_at <=> d.captured_at "
        "AND c.conn_id <=> d.conn_id AND c.blog_id <=> d.blog_id AND c.post_id <=> d.post_id "
        "AND c.meta_key <=> d.meta_key)) ORDER BY d.id",
        tuple(moved),
    )
    conn.exec_driver_sql(f"DELETE FROM {dead_t} WHERE id IN ({marks})", tuple(moved))
    return moved


def discard_dead(conn: sa.Connection, base_prefix: str, ids: Collection[int]) -> list[int]:
    """Delete these dead letters for good. Returns the ids that existed."""
    found = sorted(d.change.id for d in list_dead(conn, base_prefix, ids))
    if found:
        conn.exec_driver_sql(
            f"DELETE FROM {table(base_prefix, 'syncd_dead')} WHERE id IN ({_marks(len(found))})", tuple(found)
        )
    return found


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)
