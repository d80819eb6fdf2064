"""Poll-mode capture: for database users without the TRIGGER privilege.

Every ``capture.poll_interval`` seconds each blog's watched postmeta rows are compared with
``{base}syncd_snapshot`` (their last seen values); each difference becomes a change row in
``{base}syncd_change``, exactly like a trigger would have written it, and feeds the same
plan/apply path. Deltas between two polls are summed by the comparison itself, so counters stay
exact; what poll mode cannot give is the trigger's millisecond latency, and it reads every
watched meta row of every blog per poll (cost grows with the catalogue: see the README).

The snapshot only ever advances with what was captured (or written by syncd itself), one row at
a time and compare-and-set: each snapshot row moves from the value this poller read to the new
one only if it still holds the value read (``UPDATE ... WHERE value <=> old``, ``INSERT IGNORE``,
``DELETE ... WHERE value <=> old``), and the change row is written only when it did, in the same
transaction. A second poller (a leadership hand-over, reconcile) that read the same difference
waits on the first one's snapshot row, then finds it moved and captures nothing: no difference
is queued twice, none is lost.

Own writes are not echoed. The apply transaction, in poll mode, reads the watched rows of every
product it locked (and their closure: parents, sibling variations) under lock and first queues
any difference with the snapshot (a shop write the poller has not seen yet: :func:`capture_unseen`).
After writing, it advances the snapshot with exactly its own writes (:func:`advance_snapshot`):
rows it held locked since then, and rows it inserted itself - told apart from rows a shop
inserted meanwhile by asking a second connection, which cannot see an uncommitted insert. A
row the shop inserted or changed meanwhile is never copied into the snapshot: the next poll
queues it.

Watched keys: the stock keys, plus the meta keys of the realtime field groups the blog takes part
in (issue 10; posts columns and term relationships cannot be polled, see
:func:`syncd.fields.realtime.poll_refusals`). The baseline marker records the key set the
snapshot holds; when the configured set changes, the snapshot takes the rows of the added keys as
they are (nothing queued: the values then are the baseline, as at a first poll) and drops those of
the removed keys. Every function here diffs exactly the keys the snapshot holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.capture import watched_list
from syncd.db import run_many, table
from syncd.network import Blog
from syncd.plan import WATCHED_KEYS
from syncd.schema import get_meta, set_meta

log = structlog.get_logger("syncd.poll")

#: Baseline marker value of a snapshot holding the stock keys only (as before issue 10).
_STOCK_BASELINE = "taken"

#: A watched meta row as seen: (post_id, meta_key, value); keyed by meta_id.
Row = tuple[int, str, "str | None"]
#: Which of these meta ids another connection sees committed (see :func:`committed_elsewhere`).
CommittedFn = Callable[[Blog, Sequence[int]], set[int]]


class SnapshotConflict(RuntimeError):
    """Another transaction moved a snapshot row this one meant to move: roll back, look again."""


@dataclass
class Seen:
    """One blog's watched rows of the products an apply transaction locked, as its lock step
    read them (the snapshot agrees with them once :func:`capture_unseen` returns)."""

    blog: Blog
    posts: tuple[int, ...]
    rows: dict[int, Row] = field(default_factory=dict)
    queued: int = 0
    keys: tuple[str, ...] = WATCHED_KEYS  # the keys the snapshot holds


def _marker(blog: Blog) -> str:
    return f"poll_baseline:{blog.blog_id}"


def baseline_keys(conn: sa.Connection, base_prefix: str, blog: Blog) -> tuple[str, ...] | None:
    """The meta keys this blog's snapshot holds; None before its first poll."""
    value = get_meta(conn, base_prefix, _marker(blog))
    if value is None:
        return None
    return tuple(value[len("keys:") :].split(",")) if value.startswith("keys:") else WATCHED_KEYS


def _marker_value(keys: Sequence[str]) -> str:
    return _STOCK_BASELINE if tuple(keys) == WATCHED_KEYS else "keys:" + ",".join(keys)


def _take(conn: sa.Connection, base_prefix: str, blog: Blog, keys: Sequence[str]) -> None:
    """The snapshot takes these keys' rows as they are now (nothing queued)."""
    snap, pm = table(base_prefix, "syncd_snapshot"), table(blog.prefix, "postmeta")
    conn.execute(
        sa.text(
            f"INSERT IGNORE INTO {snap} (blog_id, meta_id, post_id, meta_key, value) "
            f"SELECT :b, meta_id, post_id, meta_key, meta_value FROM {pm} WHERE meta_key IN ({watched_list(keys)})"
        ),
        {"b": blog.blog_id},
    )


def poll_blog(conn: sa.Connection, base_prefix: str, blog: Blog, keys: Sequence[str] = WATCHED_KEYS) -> int:
    """Diff one blog against its snapshot; queue the differences. Returns the changes queued.

    ``keys``: the meta keys to watch (stock first, then the realtime field groups' keys). The
    first poll of a blog only takes the snapshot (there is nothing to compare with yet); a key
    newly watched is taken the same way. Runs in the caller's transaction; the caller commits. A
    difference another poller captured first is left to it (compare-and-set, see the module
    docstring).
    """
    snap, pm = table(base_prefix, "syncd_snapshot"), table(blog.prefix, "postmeta")
    keys = tuple(keys)
    held = baseline_keys(conn, base_prefix, blog)
    if held is None:
        conn.execute(sa.text(f"DELETE FROM {snap} WHERE blog_id = :b"), {"b": blog.blog_id})
        _take(conn, base_prefix, blog, keys)
        set_meta(conn, base_prefix, _marker(blog), _marker_value(keys))
        return 0
    if set(held) != set(keys):
        _rebaseline(conn, base_prefix, blog, held, keys)
    in_keys = watched_list(keys)
    changed = conn.execute(
        sa.text(
            f"SELECT pm.meta_id, s.meta_id IS NULL, s.post_id, s.meta_key, s.value, "
            f"pm.post_id, pm.meta_key, pm.meta_value "
            f"FROM {pm} pm LEFT JOIN {snap} s ON s.blog_id = :b AND s.meta_id = pm.meta_id "
            f"WHERE pm.meta_key IN ({in_keys}) AND (s.meta_id IS NULL OR s.post_id <> pm.post_id "
            f"OR NOT (s.meta_key <=> pm.meta_key) OR NOT (BINARY s.value <=> BINARY pm.meta_value)) "
            f"ORDER BY pm.meta_id"
        ),
        {"b": blog.blog_id},
    ).all()
    gone = conn.execute(
        sa.text(
            f"SELECT s.meta_id, s.post_id, s.meta_key, s.value FROM {snap} s "
            f"LEFT JOIN {pm} pm ON pm.meta_id = s.meta_id AND pm.meta_key IN ({in_keys}) "
            f"WHERE s.blog_id = :b AND pm.meta_id IS NULL ORDER BY s.meta_id"
        ),
        {"b": blog.blog_id},
    ).all()
    diffs: list[tuple[int, Row | None, Row | None]] = [
        (m, None if is_new else (op, ok, ov), (np, nk, nv)) for m, is_new, op, ok, ov, np, nk, nv in changed
    ]
    diffs += [(m, (p, k, v), None) for m, p, k, v in gone]
    queued, lost = _capture(conn, base_prefix, blog, sorted(diffs, key=lambda d: d[0]))
    if lost:
        log.info("poll_already_captured", blog=blog.blog_id, rows=lost)
    return queued


def poll_posts(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    posts: Iterable[int],
    keys: Sequence[str] = WATCHED_KEYS,
) -> int:
    """Diff these products of one blog against the snapshot; queue the differences (binlog
    capture: the binary log named them, see :mod:`syncd.wake`). Returns the changes queued.

    The same compare-and-set as :func:`poll_blog`, on the named products only: a difference
    another poller captured first is left to it. Their rows are read with locks: the binary log
    may name a transaction before its commit is visible, and a locking read waits for it (it
    still holds its row locks) instead of missing it; the poll's own transaction is short. A
    blog without its baseline, or whose watched key set changed, is polled whole instead (the
    baseline comes first). A meta row that moved to a product not named here is left to the next
    full poll.
    """
    ids = tuple(sorted(set(posts)))
    keys = tuple(keys)
    held = baseline_keys(conn, base_prefix, blog)
    if held is None or set(held) != set(keys):
        return poll_blog(conn, base_prefix, blog, keys)
    if not ids:
        return 0
    diffs = _diff(
        _snapshot_rows(conn, base_prefix, blog, ids), _watched_rows(conn, blog, ids, keys, lock=True)
    )
    queued, lost = _capture(conn, base_prefix, blog, diffs)
    if lost:
        log.info("poll_already_captured", blog=blog.blog_id, rows=lost)
    return queued


def take_over_from_triggers(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    keys: Sequence[str],
    installed: Mapping[str, object] | None = None,
) -> int | None:
    """Binlog capture starts on a blog whose postmeta triggers capture: the snapshot takes over
    (:func:`take_over`), the triggers go, the rows they wrote after the snapshot leave the queue.
    Returns those rows' count (the next poll finds their writes), None when the blog had no
    postmeta trigger. Raises when the triggers cannot be dropped (the snapshot is then taken
    and harmless: the triggers still capture). ``installed``: syncd's triggers, when the caller
    read them once for every blog (else read here)."""
    from syncd.capture import drop_meta_triggers, installed_triggers, meta_trigger_names  # noqa: PLC0415

    if installed is None:
        installed = installed_triggers(conn, base_prefix)
        conn.rollback()
    if not any(n in installed for n in meta_trigger_names(base_prefix, blog.blog_id)):
        return None
    last = take_over(conn, base_prefix, blog, keys)
    drop_meta_triggers(conn, base_prefix, blog.blog_id)
    return drop_captured_after(conn, base_prefix, blog, last)


def take_over(conn: sa.Connection, base_prefix: str, blog: Blog, keys: Sequence[str]) -> int:
    """Trigger capture of this blog's postmeta is about to end: the snapshot takes its watched
    rows as they are now (any older snapshot of the blog is dropped: it would hold values from
    before the triggers). Commits. Returns the last change id at that moment: the trigger rows
    of this blog's postmeta above it were written after the snapshot, so the caller drops them
    (:func:`drop_captured_after`) once the triggers are gone, and the next poll finds them as
    differences instead. Nothing is counted twice, nothing is missed.

    Exact because the snapshot is a locking read (``INSERT ... SELECT``): it waits for every
    write in flight on those rows and holds them, and their gaps, until the commit, so a write
    whose change row is at or below the returned id is in the snapshot, and one above it is not.
    """
    conn.rollback()
    # REPEATABLE READ for this transaction: the INSERT ... SELECT then takes shared next-key locks
    # (under syncd's READ COMMITTED it would read a snapshot and lock nothing).
    conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    conn.execute(
        sa.text(f"DELETE FROM {table(base_prefix, 'syncd_snapshot')} WHERE blog_id = :b"), {"b": blog.blog_id}
    )
    _take(conn, base_prefix, blog, keys)
    set_meta(conn, base_prefix, _marker(blog), _marker_value(keys))
    last = conn.execute(
        sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {table(base_prefix, 'syncd_change')} FOR UPDATE")
    ).scalar()
    conn.commit()
    return int(last or 0)


def drop_captured_after(conn: sa.Connection, base_prefix: str, blog: Blog, last_id: int) -> int:
    """After :func:`take_over` and the drop of the blog's postmeta triggers: the postmeta change
    rows those triggers wrote after the snapshot leave the queue (the next poll finds the same
    writes as differences). Posts and term rows stay. Commits; returns the rows dropped."""
    dropped = conn.execute(
        sa.text(
            f"DELETE FROM {table(base_prefix, 'syncd_change')} WHERE blog_id = :b AND id > :last "
            f"AND meta_key NOT LIKE 'post:%' AND meta_key NOT LIKE 'terms:%'"
        ),
        {"b": blog.blog_id, "last": last_id},
    ).rowcount
    conn.commit()
    return int(dropped)


def hand_back_to_triggers(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    watch: Any,
    installed: Mapping[str, object] | None = None,
) -> int | None:
    """Trigger capture starts on a blog whose postmeta was compared with the snapshot (poll or
    binlog capture before: a baseline, no postmeta trigger): :func:`hand_to_triggers` with the
    blog's postmeta triggers for ``watch`` (a :class:`syncd.capture.Watch`). Returns the changes
    queued, None when the blog needed no hand-over. Called by the daemon and by `syncd install`;
    ``installed`` as for :func:`take_over_from_triggers`."""
    from syncd.capture import EVENTS, installed_triggers, meta_trigger_names, render_trigger  # noqa: PLC0415

    if installed is None:
        installed = installed_triggers(conn, base_prefix)
    held = baseline_keys(conn, base_prefix, blog)
    conn.rollback()
    if held is None or any(n in installed for n in meta_trigger_names(base_prefix, blog.blog_id)):
        return None
    creates = [render_trigger(base_prefix, blog, e, watch).create_sql for e in EVENTS]
    return hand_to_triggers(conn, base_prefix, blog, watch.meta_keys, creates)


def hand_to_triggers(
    conn: sa.Connection, base_prefix: str, blog: Blog, keys: Sequence[str], create_sqls: Sequence[str]
) -> int:
    """Capture of this blog's postmeta goes back from the snapshot (poll or binlog capture) to
    triggers: under ``LOCK TABLES ... WRITE`` (no shop write in between) the last differences are
    queued, as a poll would, and the postmeta triggers (``create_sqls``) are created; then the
    snapshot is dropped (a later poll or binlog capture takes its own). Writes made while no
    daemon compared are queued here, nothing written after is compared. Returns the changes queued.
    """
    snap, pm = table(base_prefix, "syncd_snapshot"), table(blog.prefix, "postmeta")
    change, meta = table(base_prefix, "syncd_change"), table(base_prefix, "syncd_meta")
    conn.commit()
    # A short metadata-lock wait: waiting would queue every shop statement on postmeta behind it.
    conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")
    try:
        conn.exec_driver_sql(
            f"LOCK TABLES {pm} WRITE, {pm} AS pm WRITE, {snap} WRITE, {snap} AS s WRITE, {change} WRITE, "
            f"{meta} WRITE"
        )
        try:
            queued = poll_blog(conn, base_prefix, blog, keys)
            conn.commit()
            for sql in create_sqls:
                conn.exec_driver_sql(sql)
        finally:
            conn.exec_driver_sql("UNLOCK TABLES")
    finally:
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")
    conn.execute(sa.text(f"DELETE FROM {snap} WHERE blog_id = :b"), {"b": blog.blog_id})
    conn.execute(sa.text(f"DELETE FROM {meta} WHERE name = :n"), {"n": _marker(blog)})
    conn.commit()
    return queued


def _rebaseline(
    conn: sa.Connection, base_prefix: str, blog: Blog, held: Sequence[str], keys: Sequence[str]
) -> None:
    """The watched key set changed (a field group turned realtime or off): added keys are taken as
    they are, removed keys leave the snapshot. Differences of the kept keys are polled as usual."""
    added = [k for k in keys if k not in held]
    removed = [k for k in held if k not in keys]
    if added:
        _take(conn, base_prefix, blog, added)
    if removed:
        conn.execute(
            sa.text(
                f"DELETE FROM {table(base_prefix, 'syncd_snapshot')} "
                f"WHERE blog_id = :b AND meta_key IN ({watched_list(removed)})"
            ),
            {"b": blog.blog_id},
        )
    set_meta(conn, base_prefix, _marker(blog), _marker_value(keys))
    log.info("poll_keys_changed", blog=blog.blog_id, added=added, removed=removed)


def capture_unseen(conn: sa.Connection, base_prefix: str, blog: Blog, posts: Iterable[int]) -> Seen:
    """Inside the apply transaction, right after its lock step: queue the shop writes on these
    products (the locked ones and their closure) that the poller has not seen yet.

    Their watched rows are read ``FOR UPDATE`` (the lock step holds them already; a row inserted
    since is locked now, in the same post id order), every difference with the snapshot becomes a
    change row (applied by the next batch) and moves the snapshot, compare-and-set. Raises
    :class:`SnapshotConflict` when another poller got there first (the caller rolls back).
    """
    ids = tuple(sorted(set(posts)))
    keys = baseline_keys(conn, base_prefix, blog) if ids else None
    if keys is None:
        # No baseline yet (a blog discovered since the last poll): its first poll takes the
        # snapshot as it is then, syncd's writes included; there is nothing to compare with now.
        return Seen(blog, ())
    seen = Seen(blog, ids, keys=keys)
    seen.rows = _watched_rows(conn, blog, ids, keys, lock=True)
    before = _snapshot_rows(conn, base_prefix, blog, ids)
    diffs = _diff(before, seen.rows)
    seen.queued, lost = _capture(conn, base_prefix, blog, diffs)
    if lost:
        raise SnapshotConflict(f"blog {blog.blog_id}: {lost} snapshot rows were captured by another poller")
    return seen


def advance_snapshot(conn: sa.Connection, base_prefix: str, seen: Seen, committed: CommittedFn) -> int:
    """After the apply transaction wrote: the snapshot takes syncd's own writes, and only those.

    A row of ``seen`` was held locked by this transaction since the lock step: whatever it holds
    now, syncd wrote. A row that is new since then was inserted either by syncd (uncommitted:
    another connection cannot see it) or by a shop (committed): ``committed`` tells them apart,
    and the shop's rows are left for the next poll. Returns the snapshot rows moved.
    """
    if not seen.posts:
        return 0
    now = _watched_rows(conn, seen.blog, seen.posts, seen.keys, lock=False)
    new_ids = sorted(set(now) - set(seen.rows))
    theirs = committed(seen.blog, new_ids) if new_ids else set()
    mine = {m: r for m, r in now.items() if m not in theirs}
    diffs = _diff(seen.rows, mine)
    for (meta_id, _, _), held in zip(diffs, _moves(conn, base_prefix, seen.blog, diffs), strict=True):
        if not held:
            raise SnapshotConflict(
                f"blog {seen.blog.blog_id}: snapshot row {meta_id} moved under syncd's write"
            )
    return len(diffs)


def committed_elsewhere(engine: sa.Engine) -> CommittedFn:
    """Which of these meta ids exist for a connection other than the apply transaction's (read
    committed, non-locking: it never waits on anyone and never sees an uncommitted insert)."""

    def ask(blog: Blog, meta_ids: Sequence[int]) -> set[int]:
        pm = table(blog.prefix, "postmeta")
        names = ", ".join(f":m{i}" for i in range(len(meta_ids)))
        with engine.connect() as other:
            found = other.execute(
                sa.text(f"SELECT meta_id FROM {pm} WHERE meta_id IN ({names})"),
                {f"m{i}": m for i, m in enumerate(meta_ids)},
            )
            out = {int(r[0]) for r in found}
            other.rollback()
        return out

    return ask


# --------------------------------------------------------------------------- internals


def _watched_rows(
    conn: sa.Connection, blog: Blog, posts: Sequence[int], keys: Sequence[str], *, lock: bool
) -> dict[int, Row]:
    pm = table(blog.prefix, "postmeta")
    names = ", ".join(f":p{i}" for i in range(len(posts)))
    rows = conn.execute(
        sa.text(
            f"SELECT meta_id, post_id, meta_key, meta_value FROM {pm} FORCE INDEX (post_id) "
            f"WHERE post_id IN ({names}) AND meta_key IN ({watched_list(keys)}) ORDER BY post_id, meta_id"
            + (" FOR UPDATE" if lock else "")
        ),
        {f"p{i}": p for i, p in enumerate(posts)},
    )
    return {int(m): (int(p), k, v) for m, p, k, v in rows}


def _snapshot_rows(conn: sa.Connection, base_prefix: str, blog: Blog, posts: Sequence[int]) -> dict[int, Row]:
    snap = table(base_prefix, "syncd_snapshot")
    names = ", ".join(f":p{i}" for i in range(len(posts)))
    rows = conn.execute(
        sa.text(
            f"SELECT meta_id, post_id, meta_key, value FROM {snap} WHERE blog_id = :b AND post_id IN ({names})"
        ),
        {"b": blog.blog_id, **{f"p{i}": p for i, p in enumerate(posts)}},
    )
    return {int(m): (int(p), k, v) for m, p, k, v in rows}


def _diff(before: Mapping[int, Row], after: Mapping[int, Row]) -> list[tuple[int, Row | None, Row | None]]:
    """(meta_id, old, new) for every row that differs; None: no such row on that side."""
    out = []
    for meta_id in sorted(set(before) | set(after)):
        old, new = before.get(meta_id), after.get(meta_id)
        if old != new:
            out.append((meta_id, old, new))
    return out


def _capture(
    conn: sa.Connection, base_prefix: str, blog: Blog, diffs: Sequence[tuple[int, Row | None, Row | None]]
) -> tuple[int, int]:
    """Move the snapshot row of each difference (compare-and-set) and queue its change rows.
    Returns (change rows queued, differences someone else had moved first)."""
    rows: list[dict[str, object]] = []
    lost = 0
    for (_, old, new), held in zip(diffs, _moves(conn, base_prefix, blog, diffs), strict=True):
        if not held:
            lost += 1
            continue
        if old is None:
            rows.append(_change(blog, new[0], new[1], "I", None, new[2]))  # type: ignore[index]
        elif new is None:
            rows.append(_change(blog, old[0], old[1], "D", old[2], None))
        elif old[:2] != new[:2]:  # the row moved to another product or key
            rows.append(_change(blog, old[0], old[1], "D", old[2], None))
            rows.append(_change(blog, new[0], new[1], "I", None, new[2]))
        else:
            rows.append(_change(blog, new[0], new[1], "U", old[2], new[2]))
    if rows:
        conn.execute(
            sa.text(
                f"INSERT INTO {table(base_prefix, 'syncd_change')} "
                "(blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) "
                "VALUES (:blog_id, :post_id, :meta_key, :op, :old_value, :new_value, UTC_TIMESTAMP(6), CONNECTION_ID())"
            ),
            rows,
        )
    return len(rows), lost


def _moves(
    conn: sa.Connection, base_prefix: str, blog: Blog, diffs: Sequence[tuple[int, Row | None, Row | None]]
) -> list[bool]:
    """Compare-and-set the snapshot row of each difference, in order, in one round trip where the
    connection allows it (syncd.db.run_many; an apply batch moves one row per member written).
    Each: True when it moved, False when the row no longer held the old value (another
    transaction moved it; ours waited for it to commit)."""
    done = run_many(conn, [_move_sql(base_prefix, blog, meta_id, old, new) for meta_id, old, new in diffs])
    return [r.rowcount == 1 for r in done]


def _move_sql(
    base_prefix: str, blog: Blog, meta_id: int, old: Row | None, new: Row | None
) -> tuple[str, list[object]]:
    """The compare-and-set of one snapshot row from ``old`` to ``new`` (None: absent)."""
    snap = table(base_prefix, "syncd_snapshot")
    if old is None:
        assert new is not None
        sql = f"INSERT IGNORE INTO {snap} (blog_id, meta_id, post_id, meta_key, value) VALUES (%s, %s, %s, %s, %s)"
        return sql, [blog.blog_id, meta_id, *new]
    was = "blog_id = %s AND meta_id = %s AND post_id = %s AND meta_key = %s AND value <=> %s"
    key = [blog.blog_id, meta_id, *old]
    if new is None:
        return f"DELETE FROM {snap} WHERE {was}", key
    return f"UPDATE {snap} SET post_id = %s, meta_key = %s, value = %s WHERE {was}", [*new, *key]


def _change(
    blog: Blog, post_id: int, key: str, op: str, old: str | None, new: str | None
) -> dict[str, object]:
    return {
        "blog_id": blog.blog_id,
        "post_id": post_id,
        "meta_key": key,
        "op": op,
        "old_value": old,
        "new_value": new,
    }
