"""Poll-mode capture: for database users without the TRIGGER privilege.

Every ``capture.poll_interval`` seconds each blog's watched postmeta rows are compared with
``{base}syncd_snapshot`` (their last seen values); each difference becomes a change row in
``{base}syncd_change``, exactly like a trigger would have written it, and feeds the same
plan/apply path. Deltas between two polls are summed by the comparison itself, so counters stay
exact; what poll mode cannot give is the trigger's millisecond latency, and it reads every
watched meta row of every blog per poll (cost grows with the catalogue: see the README).

Own writes are not echoed: the applier, in poll mode, first turns any difference between the
rows it locked and the snapshot into change rows (a shop write the poller has not seen yet), then
brings the snapshot up to date with what it wrote, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import sqlalchemy as sa

from syncd.db import table
from syncd.network import Blog
from syncd.plan import WATCHED_KEYS
from syncd.schema import get_meta, set_meta

_KEYS = ", ".join(f"'{k}'" for k in WATCHED_KEYS)


def poll_blog(conn: sa.Connection, base_prefix: str, blog: Blog) -> int:
    """Diff one blog against its snapshot; queue the differences. Returns the changes queued.

    The first poll of a blog only takes the snapshot (there is nothing to compare with yet).
    Runs in the caller's transaction; the caller commits.
    """
    snap, pm, change = (
        table(base_prefix, "syncd_snapshot"),
        table(blog.prefix, "postmeta"),
        table(base_prefix, "syncd_change"),
    )
    marker = f"poll_baseline:{blog.blog_id}"
    if get_meta(conn, base_prefix, marker) is None:
        conn.execute(sa.text(f"DELETE FROM {snap} WHERE blog_id = :b"), {"b": blog.blog_id})
        conn.execute(
            sa.text(
                f"INSERT INTO {snap} (blog_id, meta_id, post_id, meta_key, value) "
                f"SELECT :b, meta_id, post_id, meta_key, meta_value FROM {pm} WHERE meta_key IN ({_KEYS})"
            ),
            {"b": blog.blog_id},
        )
        set_meta(conn, base_prefix, marker, "taken")
        return 0
    changed = conn.execute(
        sa.text(
            f"SELECT pm.meta_id, pm.post_id, pm.meta_key, s.value, pm.meta_value, s.meta_id IS NULL, s.post_id, s.meta_key "
            f"FROM {pm} pm LEFT JOIN {snap} s ON s.blog_id = :b AND s.meta_id = pm.meta_id "
            f"WHERE pm.meta_key IN ({_KEYS}) AND (s.meta_id IS NULL OR s.post_id <> pm.post_id "
            f"OR NOT (s.meta_key <=> pm.meta_key) OR NOT (BINARY s.value <=> BINARY pm.meta_value)) "
            f"ORDER BY pm.meta_id"
        ),
        {"b": blog.blog_id},
    ).all()
    gone = conn.execute(
        sa.text(
            f"SELECT s.meta_id, s.post_id, s.meta_key, s.value FROM {snap} s "
            f"LEFT JOIN {pm} pm ON pm.meta_id = s.meta_id AND pm.meta_key IN ({_KEYS}) "
            f"WHERE s.blog_id = :b AND pm.meta_id IS NULL ORDER BY s.meta_id"
        ),
        {"b": blog.blog_id},
    ).all()
    rows: list[dict[str, object]] = []
    for meta_id, post_id, key, old, new, is_new, old_post, old_key in changed:
        if is_new:
            rows.append(_change(blog, post_id, key, "I", None, new))
        elif old_post != post_id or old_key != key:
            rows.append(_change(blog, old_post, old_key, "D", old, None))
            rows.append(_change(blog, post_id, key, "I", None, new))
        else:
            rows.append(_change(blog, post_id, key, "U", old, new))
        conn.execute(
            sa.text(
                f"REPLACE INTO {snap} (blog_id, meta_id, post_id, meta_key, value) VALUES (:b, :m, :p, :k, :v)"
            ),
            {"b": blog.blog_id, "m": meta_id, "p": post_id, "k": key, "v": new},
        )
    for meta_id, post_id, key, old in gone:
        rows.append(_change(blog, post_id, key, "D", old, None))
        conn.execute(
            sa.text(f"DELETE FROM {snap} WHERE blog_id = :b AND meta_id = :m"),
            {"b": blog.blog_id, "m": meta_id},
        )
    if rows:
        conn.execute(
            sa.text(
                f"INSERT INTO {change} (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) "
                "VALUES (:blog_id, :post_id, :meta_key, :op, :old_value, :new_value, UTC_TIMESTAMP(6), CONNECTION_ID())"
            ),
            rows,
        )
    return len(rows)


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


def capture_unseen(
    conn: sa.Connection, base_prefix: str, blog: Blog, locked: Iterable[tuple[int, int, str, str | None]]
) -> int:
    """Inside the apply transaction: queue shop writes on the locked rows the poller has not seen yet.

    ``locked`` holds (meta_id, post_id, meta_key, value) as read under lock. A row whose value
    differs from the snapshot was written by the shop since the last poll: it becomes a change row
    now (applied by the next batch) and the snapshot takes the locked value, so it is queued once.
    """
    locked = list(locked)
    if not locked:
        return 0
    snap, change = table(base_prefix, "syncd_snapshot"), table(base_prefix, "syncd_change")
    names = ", ".join(f":m{i}" for i in range(len(locked)))
    seen = {
        r[0]: r[1]
        for r in conn.execute(
            sa.text(f"SELECT meta_id, value FROM {snap} WHERE blog_id = :b AND meta_id IN ({names})"),
            {"b": blog.blog_id, **{f"m{i}": row[0] for i, row in enumerate(locked)}},
        )
    }
    queued = 0
    for meta_id, post_id, key, value in locked:
        if meta_id in seen and seen[meta_id] == value:
            continue
        op, old = ("U", seen[meta_id]) if meta_id in seen else ("I", None)
        conn.execute(
            sa.text(
                f"INSERT INTO {change} (blog_id, post_id, meta_key, op, old_value, new_value, captured_at, conn_id) "
                "VALUES (:b, :p, :k, :op, :old, :new, UTC_TIMESTAMP(6), CONNECTION_ID())"
            ),
            {"b": blog.blog_id, "p": post_id, "k": key, "op": op, "old": old, "new": value},
        )
        conn.execute(
            sa.text(
                f"REPLACE INTO {snap} (blog_id, meta_id, post_id, meta_key, value) VALUES (:b, :m, :p, :k, :v)"
            ),
            {"b": blog.blog_id, "m": meta_id, "p": post_id, "k": key, "v": value},
        )
        queued += 1
    return queued


def resync_snapshot(
    conn: sa.Connection, base_prefix: str, blog: Blog, post_ids: Collection[int], keys: Collection[str]
) -> None:
    """After the applier wrote: the snapshot of these products' locked keys takes their new values."""
    ids = sorted(set(post_ids))
    if not ids:
        return
    snap, pm = table(base_prefix, "syncd_snapshot"), table(blog.prefix, "postmeta")
    id_names = ", ".join(f":p{i}" for i in range(len(ids)))
    key_list = ", ".join(f"'{k}'" for k in keys if k in WATCHED_KEYS)
    params = {"b": blog.blog_id, **{f"p{i}": v for i, v in enumerate(ids)}}
    conn.execute(
        sa.text(
            f"DELETE FROM {snap} WHERE blog_id = :b AND post_id IN ({id_names}) AND meta_key IN ({key_list})"
        ),
        params,
    )
    conn.execute(
        sa.text(
            f"INSERT INTO {snap} (blog_id, meta_id, post_id, meta_key, value) SELECT :b, meta_id, post_id, meta_key, meta_value "
            f"FROM {pm} WHERE post_id IN ({id_names}) AND meta_key IN ({key_list})"
        ),
        params,
    )
