"""Write: the planned values into the rows the lock step holds (one batch's transaction).

The apply step (:mod:`syncd.apply`) hands over the planner's :class:`~syncd.plan.MemberWrite` list
and the locked rows (:mod:`syncd.lock`); this module writes them and nothing else:

* relative ``_stock`` deltas in bulk (``meta_value = meta_value + d`` on the locked rows, one
  statement per blog and delta, one round trip for every blog), as WooCommerce's checkout writes;
* every other member inside its own savepoint: registers, a manual ``_stock_status``, absolute
  stock sets, so that one unsafe member (non-numeric ``_stock``, tables gone, a row WooCommerce is
  still creating) is skipped and logged while the others are written;
* carried SKU renames;
* the ``skipped`` history of members on blogs that cannot be written now.

syncd never inserts a row every WooCommerce product has (:data:`ALWAYS_PRESENT`), nor a missing
register into a product WooCommerce saved moments ago: such a member is skipped and queued to be
healed once it has settled (:mod:`syncd.settle`). Each write adds its history rows to the batch's
:class:`~syncd.record.BatchResult`; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog

from syncd import settle
from syncd.db import errno_of, is_retryable, multi_statements, run_many, table
from syncd.lock import MetaRow, ProductRows
from syncd.network import Blog
from syncd.plan import (
    BACKORDERS,
    MANAGE,
    SKU,
    STATUS,
    STOCK,
    Change,
    Key,
    MemberWrite,
    Missed,
    StockValueError,
    format_quantity,
    parse_quantity,
)
from syncd.record import BatchResult, HistoryRow
from syncd.woo import manages_stock

log = structlog.get_logger("syncd.write")

#: Rows every WooCommerce product has from its creation on: syncd never inserts one. A product
#: that lacks one is being created or imported (delete + add) by a request still running, which
#: checked for the row and will insert it: a second row would follow (syncd.settle).
ALWAYS_PRESENT = (STOCK, MANAGE, BACKORDERS, STATUS)
#: Seconds a ``post_modified_gmt`` ahead of the server's clock may be and still be a save now.
FUTURE_SAVE = 3600
#: The savepoint around the one-round-trip stock writes (a name SQLAlchemy never uses).
_BULK_SAVEPOINT = "syncd_bulk_stock"


class MemberWriter:
    """Writes planned members on the blogs of one network (prefixes from ``blogs``)."""

    def __init__(self, blogs: Callable[[], Mapping[int, Blog]], settle_seconds: float = 3.0) -> None:
        self._blogs = blogs
        #: A product saved less than this ago may have a save in flight: no row is inserted into it.
        self.settle_seconds = settle_seconds

    def write_all(
        self,
        conn: sa.Connection,
        writes: Sequence[MemberWrite],
        rows: Mapping[Key, ProductRows],
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> set[Key]:
        """Every planned write: relative deltas in bulk, the rest member by member. Returns the
        members written (a skipped member is not written and not saved)."""
        written: set[Key] = set()
        bulk = self.stock_deltas(conn, writes, rows)
        for w in writes:
            if w.key in bulk:
                result.writes += 1
                result.history.extend(self.stock_history(w, by_id, bulk[w.key]))
                written.add(w.key)
            elif self.member(conn, w, rows[w.key], by_id, result):
                written.add(w.key)
        return written

    def renames(
        self,
        conn: sa.Connection,
        writes: Sequence[MemberWrite],
        rows: Mapping[Key, ProductRows],
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> set[Key]:
        """Write each propagated SKU rename (``_sku``; the lookup row's ``sku`` is rewritten by the
        derived refresh, as WooCommerce's save does: fixture 10). Returns the members renamed."""
        done: set[Key] = set()
        for w in writes:
            if w.new_sku is None or w.key not in rows:
                continue
            blog = self._blogs()[w.blog_id]
            origin = next(by_id[i] for i in w.change_ids if by_id[i].meta_key == SKU)
            old = rows[w.key].value(SKU)
            sp = conn.begin_nested()
            try:
                changed = self.set_meta(conn, blog, w.post_id, rows[w.key], SKU, w.new_sku)
                sp.commit()
            except Exception as exc:
                if is_retryable(exc):
                    raise
                sp.rollback()
                self._skip(result, w, by_id, f"database error {errno_of(exc)}: {str(exc)[:160]}")
                continue
            if changed:
                done.add(w.key)
                result.history.append(
                    HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, SKU, old, w.new_sku, None)
                )
                log.info(
                    "sku_renamed",
                    blog=w.blog_id,
                    post=w.post_id,
                    old_sku=old,
                    sku=w.new_sku,
                    origin_blog=origin.blog_id,
                )
        return done

    def skip_unreachable(
        self,
        missed: Mapping[Key, Missed],
        by_id: Mapping[int, Change],
        unreadable: Mapping[int, str],
        result: BatchResult,
    ) -> None:
        """Linked members on a blog that is deleted, archived, spam, unusable or unreadable now are
        not written (the planner leaves them out, :attr:`syncd.plan.Plan.missed`); log and record
        each, with blog, post and SKU, and queue each to be healed (syncd.settle) once its blog is
        usable again: with the sales it missed as deltas, or, if it missed anything else (an
        absolute set, a setting, a carried SKU rename), by taking its group's values."""
        for key, miss in missed.items():
            m = miss.member
            reason = unreachable_reason(m.blog_id, unreadable)
            result.skipped += 1
            log.warning(
                "member_skipped",
                blog=m.blog_id,
                post=m.post_id,
                sku=m.sku,
                changes=miss.change_ids,
                missed_sales=None if miss.copy else format_quantity(miss.delta),
                reason=reason,
            )
            for cid in miss.change_ids:
                c = by_id[cid]
                result.history.append(
                    HistoryRow(
                        c, "skipped", m.blog_id, m.post_id, m.sku, c.meta_key, None, None, None, reason[:255]
                    )
                )
            result.settling.append(
                settle.Record(key[0], key[1], settle.HEAL, miss.delta, reason=reason, copy_values=miss.copy)
            )

    def member(
        self,
        conn: sa.Connection,
        w: MemberWrite,
        rows: ProductRows,
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> bool:
        blog = self._blogs()[w.blog_id]
        origin = by_id[w.change_ids[-1]]
        pending: list[HistoryRow] = []
        sp = conn.begin_nested()
        try:
            for key, value in w.registers.items():
                old = rows.value(key)
                if self.set_meta(conn, blog, w.post_id, rows, key, value):
                    pending.append(
                        HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, key, old, value, None)
                    )
            if w.status_register is not None and not manages_stock(rows.value(MANAGE)):
                old = rows.value(STATUS)
                if self.set_meta(conn, blog, w.post_id, rows, STATUS, w.status_register):
                    pending.append(
                        HistoryRow(
                            origin, "copy", w.blog_id, w.post_id, w.sku, STATUS, old, w.status_register, None
                        )
                    )
            if w.stock is not None:
                row = self._write_stock(conn, blog, w, rows)
                if row is not None and w.joined_from is not None:
                    note = f"joined its group: stock of blog {w.joined_from[0]} post {w.joined_from[1]}"
                    pending.append(
                        HistoryRow(origin, "copy", w.blog_id, w.post_id, w.sku, STOCK, *row, None, note)
                    )
                elif row is not None:
                    pending.extend(self.stock_history(w, by_id, row))
            sp.commit()
        except MemberSkipped as skip:
            sp.rollback()
            self._skip(result, w, by_id, skip.reason)
            if skip.heal:
                result.settling.append(settle.Record(w.blog_id, w.post_id, settle.HEAL, reason=skip.reason))
            return False
        except Exception as exc:
            if is_retryable(exc):
                raise
            sp.rollback()
            self._skip(result, w, by_id, f"database error {errno_of(exc)}: {str(exc)[:160]}")
            return False
        result.writes += 1
        result.history.extend(pending)
        return True

    def stock_deltas(
        self, conn: sa.Connection, writes: Sequence[MemberWrite], rows: Mapping[Key, ProductRows]
    ) -> dict[Key, tuple[str | None, str | None]]:
        """The common case in bulk: members that only receive a relative ``_stock`` delta.

        Same checks and same statement as :meth:`_write_stock` (``meta_value = meta_value + d`` on
        the locked row), but one UPDATE per (blog, delta) and one re-read per blog instead of
        SAVEPOINT, UPDATE, SELECT and RELEASE per member: 4 round trips per member were ~80% of a
        10-blog batch (bench/profile_batch.py). No savepoint is needed: each UPDATE is one
        statement, which InnoDB rolls back on its own if it fails. Members that fail a check, and
        every member of a statement that failed (not retryable), are left to :meth:`member`,
        which skips or writes them exactly as before. Returns (old text, new text) per member written.
        """
        todo: dict[int, list[tuple[MemberWrite, MetaRow]]] = {}
        seen: set[Key] = set()
        sets = _absolute_sets(writes, rows)
        for w in writes:
            op = w.stock
            if w.registers or w.status_register is not None or op is None or op.is_set or op.is_noop:
                continue
            if getattr(w, "joined_from", None) is not None:  # a joining member: its own history note
                continue
            meta = rows[w.key].meta.get(STOCK)
            if not meta or len(meta) != 1 or w.key in seen:
                continue
            try:
                if parse_quantity(meta[0].value) is None:
                    continue
            except StockValueError:
                continue
            seen.add(w.key)
            todo.setdefault(w.blog_id, []).append((w, meta[0]))
        if (todo or sets) and multi_statements(conn):
            try:
                return self._write_stock_deltas_at_once(conn, todo, rows, sets)
            except Exception as exc:
                if is_retryable(exc):
                    raise
                log.warning("bulk_stock_write_failed", blogs=sorted(todo), errno=errno_of(exc))
                conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_BULK_SAVEPOINT}")
                conn.exec_driver_sql(f"RELEASE SAVEPOINT {_BULK_SAVEPOINT}")
                # Nothing of it was applied: again statement by statement, to find the one.
        done: dict[Key, tuple[str | None, str | None]] = {}
        for blog_id, items in sorted(todo.items()):
            pm = table(self._blogs()[blog_id].prefix, "postmeta")
            written: list[tuple[MemberWrite, MetaRow]] = []
            for (text, params), group in _delta_updates(pm, items):
                try:
                    conn.exec_driver_sql(text, tuple(params))
                except Exception as exc:
                    if is_retryable(exc):
                        raise
                    log.warning(
                        "bulk_stock_write_failed", blog=blog_id, members=len(group), errno=errno_of(exc)
                    )
                    continue  # nothing of this statement was applied: one by one in _write_member
                written.extend(group)
            if written:
                text, params = _reread(pm, written)
                _record_rereads(written, dict(conn.exec_driver_sql(text, tuple(params)).all()), rows, done)
        return done

    def _write_stock_deltas_at_once(
        self,
        conn: sa.Connection,
        todo: Mapping[int, list[tuple[MemberWrite, MetaRow]]],
        rows: Mapping[Key, ProductRows],
        sets: Mapping[int, list[tuple[MemberWrite, MetaRow, str]]] | None = None,
    ) -> dict[Key, tuple[str | None, str | None]]:
        """:meth:`stock_deltas` for every blog in ONE round trip: per blog its UPDATEs
        (one per delta) and the re-read, and the absolute sets (:func:`_absolute_sets`, one
        UPDATE per blog), under a savepoint, so that a failure (not retryable) can be undone as a
        whole and the caller can go statement by statement (the sets then member by member)."""
        sets = sets or {}
        statements: list[tuple[str, Sequence[Any]]] = [(f"SAVEPOINT {_BULK_SAVEPOINT}", ())]
        reread: list[tuple[int, int]] = []  # (blog id, index of its re-read)
        for blog_id in sorted({*todo, *sets}):
            pm = table(self._blogs()[blog_id].prefix, "postmeta")
            if blog_id in sets:
                statements += _set_updates(pm, sets[blog_id])
            if blog_id in todo:
                statements += [statement for statement, _ in _delta_updates(pm, todo[blog_id])]
                statements.append(_reread(pm, todo[blog_id]))
                reread.append((blog_id, len(statements) - 1))
        statements.append((f"RELEASE SAVEPOINT {_BULK_SAVEPOINT}", ()))
        results = run_many(conn, statements)
        done: dict[Key, tuple[str | None, str | None]] = {}
        for blog_id, i in reread:
            _record_rereads(todo[blog_id], dict(results[i].rows), rows, done)
        for items in sets.values():
            for w, m, target in items:
                rows[w.key].meta[STOCK] = [MetaRow(m.meta_id, target)]
                done[w.key] = (m.value, target)
        return done

    def _skip(self, result: BatchResult, w: MemberWrite, by_id: Mapping[int, Change], reason: str) -> None:
        result.skipped += 1
        log.warning(
            "member_skipped", blog=w.blog_id, post=w.post_id, sku=w.sku, changes=w.change_ids, reason=reason
        )
        for cid in w.change_ids:
            c = by_id[cid]
            result.history.append(
                HistoryRow(
                    c, "skipped", w.blog_id, w.post_id, w.sku, c.meta_key, None, None, None, reason[:255]
                )
            )

    def _write_stock(
        self, conn: sa.Connection, blog: Blog, w: MemberWrite, rows: ProductRows
    ) -> tuple[str | None, str | None] | None:
        op = w.stock
        assert op is not None
        meta = rows.meta.get(STOCK)
        pm = table(blog.prefix, "postmeta")
        if op.is_noop:
            current_text = rows.value(STOCK)
            return (current_text, current_text)
        if op.is_set:
            target = None if op.set_value is None else format_quantity(op.set_value + op.delta)
            old = rows.value(STOCK)
            self.set_meta(conn, blog, w.post_id, rows, STOCK, target)
            return (old, target)
        if not meta:
            raise MemberSkipped(
                "has no _stock row while it manages stock (being created or imported)", heal=True
            )
        if len(meta) > 1:
            raise MemberSkipped(f"has {len(meta)} _stock rows")
        try:
            current = parse_quantity(meta[0].value)
        except StockValueError as exc:
            raise MemberSkipped(f"_stock {exc}") from None
        if current is None:
            raise MemberSkipped("_stock is SQL NULL while it manages stock")
        # Relative update, as WooCommerce's own checkout writes it (meta_value = meta_value - 2):
        # the row is locked and its value validated, so the server's arithmetic is exact.
        conn.execute(
            sa.text(f"UPDATE {pm} SET meta_value = meta_value + :d WHERE meta_id = :id"),
            {"d": op.delta, "id": meta[0].meta_id},
        )
        new = conn.execute(
            sa.text(f"SELECT meta_value FROM {pm} WHERE meta_id = :id"), {"id": meta[0].meta_id}
        ).scalar_one()
        old_text = meta[0].value
        meta[0] = MetaRow(meta[0].meta_id, new)
        return (old_text, new)

    def stock_history(
        self, w: MemberWrite, by_id: Mapping[int, Change], row: tuple[str | None, str | None]
    ) -> list[HistoryRow]:
        """One 'copy' row per originating stock change, so history shows each sale once per member."""
        out = []
        stock_changes = [by_id[c] for c in w.change_ids if by_id[c].meta_key == STOCK]
        old, new = row
        for i, c in enumerate(stock_changes):
            out.append(
                HistoryRow(
                    c,
                    "copy",
                    w.blog_id,
                    w.post_id,
                    w.sku,
                    STOCK,
                    old if i == 0 else None,
                    new if i == len(stock_changes) - 1 else None,
                    delta_of(c),
                    w.history_note,
                )
            )
        return out

    def set_meta(
        self, conn: sa.Connection, blog: Blog, post_id: int, rows: ProductRows, key: str, value: str | None
    ) -> bool:
        """Make ``key`` hold ``value`` (None: delete the row, as WooCommerce does for ''). True if written.

        Existing rows are addressed by the meta_ids locked in :meth:`lock`: a statement
        ``WHERE post_id = ? AND meta_key = ?`` may be run through the meta_key index, scanning (and
        waiting on) every row of that key on the blog; a shop's checkout statement scanning the
        same index then forms a lock cycle with syncd, and InnoDB kills the smaller transaction -
        the checkout (found by reconcile's write-storm test)."""
        pm = table(blog.prefix, "postmeta")
        existing = rows.meta.get(key, [])
        ids = {f"m{i}": r.meta_id for i, r in enumerate(existing)}
        in_ids = ", ".join(f":{n}" for n in ids)
        if value is None and key != STOCK:
            if not existing:
                return False
            conn.execute(sa.text(f"DELETE FROM {pm} WHERE meta_id IN ({in_ids})"), ids)
            rows.meta[key] = []
            return True
        if existing:
            if existing[0].value == value and len(existing) == 1:
                return False
            conn.execute(
                sa.text(f"UPDATE {pm} SET meta_value = :v WHERE meta_id IN ({in_ids})"), {"v": value, **ids}
            )
            rows.meta[key] = [MetaRow(r.meta_id, value) for r in existing]
            return True
        if key in ALWAYS_PRESENT:
            raise MemberSkipped(
                f"has no {key} row (WooCommerce is still creating or importing it); "
                "it takes the group's values once it settles",
                heal=True,
            )
        if self._saved_recently(conn, blog, post_id):
            raise MemberSkipped(
                f"was saved by WooCommerce less than {self.settle_seconds:g} s ago and lacks {key}: a save "
                "in flight would delete the row; it takes the group's values once it settles",
                heal=True,
            )
        res = conn.execute(
            sa.text(f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES (:p, :k, :v)"),
            {"p": post_id, "k": key, "v": value},
        )
        rows.meta[key] = [MetaRow(res.lastrowid, value)]
        return True

    def _saved_recently(self, conn: sa.Connection, blog: Blog, post_id: int) -> bool:
        return saved_recently(conn, blog, [post_id], self.settle_seconds)


def unreachable_reason(blog_id: int, unreadable: Mapping[int, str]) -> str:
    """Why a member on ``blog_id`` is not written in this batch (the lock step's reason if its
    blog could not be read)."""
    return unreadable.get(blog_id) or f"blog {blog_id} is not live (deleted, archived or spam) or not usable"


def saved_recently(conn: sa.Connection, blog: Blog, post_ids: Sequence[int], settle_seconds: float) -> bool:
    """WooCommerce saved one of the products within ``settle_seconds`` (``post_modified_gmt``,
    which a save bumps before it checks and inserts meta rows): a save may still be in flight.
    The one rule for every writer (stock here, the field groups in :mod:`syncd.fields.inflight`)."""
    return bool(recently_saved(conn, blog, post_ids, settle_seconds))


def recently_saved(
    conn: sa.Connection, blog: Blog, post_ids: Sequence[int], settle_seconds: float
) -> set[int]:
    """Which of ``post_ids`` were saved within ``settle_seconds`` (see :func:`saved_recently`)."""
    if settle_seconds <= 0 or not post_ids:
        return set()
    return {int(r[0]) for r in conn.exec_driver_sql(*recently_saved_sql(blog, post_ids, settle_seconds))}


def recently_saved_sql(
    blog: Blog, post_ids: Sequence[int], settle_seconds: float
) -> tuple[str, tuple[Any, ...]]:
    """``SELECT ID`` of the ``post_ids`` saved within ``settle_seconds``. ``post_modified_gmt`` is
    PHP's clock: a few seconds ahead of the server's still counts as now; more than
    :data:`FUTURE_SAVE` ahead is a misconfigured clock or imported data, not a save."""
    return (
        f"SELECT ID FROM {table(blog.prefix, 'posts')} WHERE ID IN ({_marks(len(post_ids))}) "
        "AND post_modified_gmt > UTC_TIMESTAMP() - INTERVAL %s MICROSECOND "
        "AND post_modified_gmt < UTC_TIMESTAMP() + INTERVAL %s SECOND",
        (*post_ids, int(settle_seconds * 1_000_000), FUTURE_SAVE),
    )


class MemberSkipped(Exception):
    def __init__(self, reason: str, heal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.heal = heal  # finished later by syncd.settle (kind 'heal') instead of left as is


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _delta_updates(
    pm: str, items: Sequence[tuple[MemberWrite, MetaRow]]
) -> list[tuple[tuple[str, list[Any]], list[tuple[MemberWrite, MetaRow]]]]:
    """The relative stock writes of one blog: one ``UPDATE ... meta_value + d`` per delta, by the
    locked rows' meta_id; each with the members it writes."""
    by_delta: dict[Decimal, list[tuple[MemberWrite, MetaRow]]] = {}
    for w, m in items:
        assert w.stock is not None
        by_delta.setdefault(w.stock.delta, []).append((w, m))
    return [
        (
            (
                f"UPDATE {pm} SET meta_value = meta_value + %s WHERE meta_id IN ({_marks(len(group))})",
                [delta, *sorted(m.meta_id for _, m in group)],
            ),
            group,
        )
        for delta, group in sorted(by_delta.items())
    ]


def _absolute_sets(
    writes: Sequence[MemberWrite], rows: Mapping[Key, ProductRows]
) -> dict[int, list[tuple[MemberWrite, MetaRow, str]]]:
    """Members that only receive an absolute ``_stock`` set (an importer's delete + re-add
    propagated) into their one ``_stock`` row, per blog: (write, row, new text). Exactly what
    :meth:`MemberWriter.member` writes for them (``set_meta``), in one UPDATE per blog instead of
    SAVEPOINT, UPDATE, RELEASE per member (an import of 400 products on 10 blogs: 10,800 round
    trips). Anything else (no row, several rows, registers, a join) stays member by member."""
    out: dict[int, list[tuple[MemberWrite, MetaRow, str]]] = {}
    seen: set[Key] = set()
    for w in writes:
        op = w.stock
        if w.registers or w.status_register is not None or w.new_sku is not None or w.joined_from is not None:
            continue
        if op is None or not op.is_set or op.set_value is None or w.key in seen:
            continue
        meta = rows[w.key].meta.get(STOCK)
        if not meta or len(meta) != 1:
            continue
        seen.add(w.key)
        out.setdefault(w.blog_id, []).append((w, meta[0], format_quantity(op.set_value + op.delta)))
    return out


def _set_updates(pm: str, items: Sequence[tuple[MemberWrite, MetaRow, str]]) -> list[tuple[str, list[Any]]]:
    """One ``UPDATE ... CASE meta_id`` for the absolute sets of one blog (rows already holding
    the value are left alone, as ``set_meta`` does)."""
    change = sorted((m.meta_id, target) for _, m, target in items if m.value != target)
    if not change:
        return []
    cases = " ".join(["WHEN %s THEN %s"] * len(change))
    return [
        (
            f"UPDATE {pm} SET meta_value = CASE meta_id {cases} END WHERE meta_id IN ({_marks(len(change))})",
            [*[v for pair in change for v in pair], *[i for i, _ in change]],
        )
    ]


def _reread(pm: str, items: Sequence[tuple[MemberWrite, MetaRow]]) -> tuple[str, list[int]]:
    """The values the server wrote (its own text of ``meta_value + d``), for history."""
    ids = sorted(m.meta_id for _, m in items)
    return f"SELECT meta_id, meta_value FROM {pm} WHERE meta_id IN ({_marks(len(ids))})", ids


def _record_rereads(
    items: Sequence[tuple[MemberWrite, MetaRow]],
    new: Mapping[int, str | None],
    rows: Mapping[Key, ProductRows],
    done: dict[Key, tuple[str | None, str | None]],
) -> None:
    for w, m in items:
        rows[w.key].meta[STOCK][0] = MetaRow(m.meta_id, new[m.meta_id])
        done[w.key] = (m.value, new[m.meta_id])


def delta_of(c: Change) -> Decimal | None:
    try:
        old, new = parse_quantity(c.old_value), parse_quantity(c.new_value)
    except StockValueError:
        return None
    if old is None or new is None:
        return None
    return new - old
