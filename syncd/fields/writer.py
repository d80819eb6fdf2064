"""The realtime field groups' write step, inside the apply transaction (issue 10).

After the stock writes and before the derived step, for each planned
:class:`~syncd.plan.FieldWrite`: the group's values of the targets and of the origins they take
from are read with the group's own ``read`` (one call per blog and group; the lock step holds
every postmeta row of these products, so nothing can change under us), the wanted values are
the target's own with each planned field taken from its origin, a value the group calls bad
(``problems``) skips that member for that group, and ``FieldGroup.write`` writes the rest and what
WooCommerce derives from it on that blog, inside a savepoint (an error skips that member alone).
History: a ``copy`` row per field written, a ``skipped`` row per field left alone, with the reason
(``field_group`` set, so ``syncd history --field GROUP`` shows them).

Nothing is written into a product a WooCommerce save may still be writing (saved less than
``settle_seconds`` ago, not by syncd: :mod:`syncd.fields.inflight`): that member is skipped for
that group and recorded to be healed
(:mod:`syncd.settle`, kind ``heal``), which gives it the group's values once it has settled
(:meth:`FieldWriter.join`, also how a joining product takes them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import structlog

from syncd import settle
from syncd.db import errno_of, is_retryable, run_many, table
from syncd.fields import recheck
from syncd.fields.group import FieldGroup, Target, Value, Values
from syncd.fields.inflight import SaveInFlight, recent, write_settled
from syncd.fields.realtime import RealtimeFields
from syncd.lock import ProductRows
from syncd.network import Blog
from syncd.plan import Change, FieldPlan, FieldWrite, Key, Member
from syncd.record import BatchResult, HistoryRow

log = structlog.get_logger("syncd.fields")


def _canonical(group: FieldGroup, values: Values) -> Values:
    """The values as WooCommerce reads them (``FieldGroup.canonical`` when the group has it)."""
    canon = getattr(group, "canonical", None)
    return canon(values) if canon is not None else values


def text_of(value: Value) -> str | None:
    """A value as history shows it: a term set as its comma-separated slugs."""
    return ",".join(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class JoinSources:
    """Where a joining or healed member takes each realtime field from: the member whose change
    its link group took last (``newest``, by change key: :func:`syncd.record.register_origins`)
    while it is linked and settled, else ``authority`` (a linked member not itself waiting)."""

    authority: Key | None
    newest: Mapping[str, Key]
    linked: frozenset[Key]

    def source_of(self, change_key: str, me: Key) -> Key | None:
        """None: ``me`` holds the newest value itself (or there is nobody to take it from)."""
        newest = self.newest.get(change_key)
        if newest == me:
            return None
        return newest if newest in self.linked else self.authority


class FieldWriter:
    """Writes planned field values on the blogs of one network."""

    def __init__(
        self, realtime: RealtimeFields, settle_seconds: float = 0.0, base_prefix: str = "wp_"
    ) -> None:
        self.realtime = realtime
        self.base_prefix = base_prefix  # {base}syncd_history: syncd's own saves (inflight.in_flight_sql)
        #: A product saved less than this ago may have a save in flight: no field is written into it.
        self.settle_seconds = settle_seconds
        #: The products (and parents) of this write step saved within ``settle_seconds`` before it
        #: wrote anything (:func:`syncd.fields.inflight.recent`).
        self._saved: set[Key] = set()
        #: group -> the products this write step wrote whose derived rows are checked once
        #: settled (:mod:`syncd.fields.recheck`), recorded at the end of the step.
        self._checks: dict[str, set[Key]] = {}
        self.index = realtime.index()
        #: (group, field) -> the change key history records it under (``post:<column>`` etc.).
        self.keys = {v: k for k, v in self.index.items()}

    def lock_targets(self, conn: sa.Connection, plan: FieldPlan, blogs: Mapping[int, Blog]) -> None:
        """Lock the posts rows of the members that take a posts column (the lock step holds
        their postmeta rows, not these): a shop's title edit committed from now on waits for this
        transaction and is captured after it, so the re-check that follows sees every edit that
        could be overwritten, and none can slip in between. Ascending blog, then post id."""
        posts: dict[int, set[int]] = {}
        for w in plan.writes:
            if self.realtime.groups[w.group].post_columns and w.blog_id in blogs:
                posts.setdefault(w.blog_id, set()).add(w.post_id)
        _lock_posts(conn, posts, blogs)

    def _lock_joiner(self, conn: sa.Connection, me: Member, blogs: Mapping[int, Blog]) -> None:
        """A joining or healed member's posts row, before its values are read, when a group that
        takes part on its blog has posts columns (the content group): as :meth:`lock_targets`
        does for a batch, a shop's edit of its title then waits for the join and is captured
        after it, instead of committing between the join's read and its write (and being
        overwritten). Taken after the join's lock step (postmeta, then posts: the daemon's order)."""
        if me.blog_id in blogs and any(
            g.post_columns and self.realtime.takes_part(n, me.blog_id)
            for n, g in self.realtime.groups.items()
        ):
            _lock_posts(conn, {me.blog_id: {me.post_id}}, blogs)

    def write_all(
        self,
        conn: sa.Connection,
        plan: FieldPlan,
        rows: Mapping[Key, ProductRows],
        blogs: Mapping[int, Blog],
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> dict[int, set[int]]:
        """Every planned field write. Returns, per blog, the products written."""
        writes = [w for w in plan.writes if w.blog_id in blogs]
        for w in plan.writes:
            if w.blog_id not in blogs:
                self._skip(w, list(w.sources), f"blog {w.blog_id} cannot be written now", by_id, result)
        values = self._read(conn, writes, blogs)
        self._checks = {}  # not a rolled-back attempt's
        self._saved = self._recent(conn, [(w.key, rows.get(w.key)) for w in writes], blogs)
        written: dict[int, set[int]] = {}
        for w in writes:
            if self._member(conn, w, values, rows.get(w.key), blogs[w.blog_id], by_id, result):
                written.setdefault(w.blog_id, set()).add(w.post_id)
        self._record_checks(conn)
        return written

    def _record_checks(self, conn: sa.Connection) -> None:
        for name, keys in sorted(self._checks.items()):
            recheck.record(conn, self.base_prefix, name, keys)
        self._checks = {}

    def join(
        self,
        conn: sa.Connection,
        me: Member,
        sources: JoinSources,
        row: ProductRows,
        blogs: Mapping[int, Blog],
        result: BatchResult,
    ) -> bool:
        """A joining or healed member takes every realtime group's values as realtime would have
        given them (each field from :meth:`JoinSources.source_of`): the fields that differ as
        WooCommerce reads them; bad values and saves in flight skip that group as in a batch (a
        save in flight: healed again once settled). True if anything was written."""
        self._lock_joiner(conn, me, blogs)
        self._checks = {}  # not a rolled-back attempt's
        self._saved = self._recent(conn, [(me.key, row)], blogs)
        written = False
        for name, group in self.realtime.groups.items():
            if not self.realtime.takes_part(name, me.blog_id):
                continue
            w, values = self._join_write(conn, me, name, group, sources, blogs)
            if w is not None:
                written |= self._member(conn, w, values, row, blogs[me.blog_id], {}, result)
        self._record_checks(conn)
        return written

    def _join_write(
        self,
        conn: sa.Connection,
        me: Member,
        name: str,
        group: FieldGroup,
        sources: JoinSources,
        blogs: Mapping[int, Blog],
    ) -> tuple[FieldWrite | None, dict[tuple[int, str], dict[int, Values]]]:
        """The planned write of one group into a joining member, with the values it reads."""
        mine = group.read(conn, blogs[me.blog_id], [me.post_id]).get(me.post_id)
        if mine is None:
            return None, {}
        take = {f: sources.source_of(self._key(name, f), me.key) for f in mine}
        take = {f: k for f, k in take.items() if k and k[0] in blogs and self.realtime.takes_part(name, k[0])}
        values: dict[tuple[int, str], dict[int, Values]] = {(me.blog_id, name): {me.post_id: mine}}
        posts: dict[int, set[int]] = {}
        for b, p in take.values():
            posts.setdefault(b, set()).add(p)
        for b, ids in sorted(posts.items()):
            values.setdefault((b, name), {}).update(group.read(conn, blogs[b], sorted(ids)))
        have = _canonical(group, mine)
        differing = {
            f: k
            for f, k in take.items()
            if k[1] in values[(k[0], name)]
            and _canonical(group, values[(k[0], name)][k[1]]).get(f) != have.get(f)
        }
        if not differing:
            return None, values
        return FieldWrite(me.blog_id, me.post_id, me.sku, name, differing, []), values

    def _recent(
        self,
        conn: sa.Connection,
        targets: Sequence[tuple[Key, ProductRows | None]],
        blogs: Mapping[int, Blog],
    ) -> set[Key]:
        posts: dict[int, set[int]] = {}
        for (b, p), row in targets:
            posts.setdefault(b, set()).update(
                [p, row.parent_id] if row is not None and row.parent_id else [p]
            )
        return recent(conn, self.base_prefix, posts, blogs, self.settle_seconds)

    def _read(
        self, conn: sa.Connection, writes: Sequence[FieldWrite], blogs: Mapping[int, Blog]
    ) -> dict[tuple[int, str], dict[int, Values]]:
        """The group values of every target and origin, one ``read`` per blog and group."""
        need: dict[tuple[int, str], set[int]] = {}
        for w in writes:
            need.setdefault((w.blog_id, w.group), set()).add(w.post_id)
            for blog_id, post_id in w.sources.values():
                need.setdefault((blog_id, w.group), set()).add(post_id)
        return {
            (b, g): self.realtime.groups[g].read(conn, blogs[b], sorted(posts))
            for (b, g), posts in sorted(need.items())
            if b in blogs
        }

    def _member(
        self,
        conn: sa.Connection,
        w: FieldWrite,
        values: Mapping[tuple[int, str], Mapping[int, Values]],
        row: ProductRows | None,
        blog: Blog,
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> bool:
        group = self.realtime.groups[w.group]
        have = values.get((w.blog_id, w.group), {}).get(w.post_id)
        if have is None or row is None or not row.exists:
            self._skip(w, list(w.sources), "member is not readable (deleted?)", by_id, result)
            return False
        wanted = dict(have)
        for name, (blog_id, post_id) in w.sources.items():
            source = values.get((blog_id, w.group), {}).get(post_id)
            if name in have and (source is None or name in source):  # else: not a field of one of them
                wanted[name] = None if source is None else source.get(name)
        changed = [name for name in w.sources if name in have and wanted[name] != have.get(name)]
        if not changed:
            return False
        bad = group.problems(wanted)  # the target's own other fields take part (sale < regular)
        if bad:
            reason = "; ".join(f"{f}: {why}" for f, why in bad)
            self._skip(w, changed, f"bad value, not written: {reason}", by_id, result)
            return False
        left = self._write(conn, group, w, row, blog, have, wanted, by_id, result)
        if left is None:
            return False
        for name in changed:
            if name in left:
                self._skip(w, [name], left[name], by_id, result)
            else:
                result.history.append(
                    HistoryRow(
                        self._change(w, name, by_id),
                        "copy",
                        w.blog_id,
                        w.post_id,
                        w.sku,
                        self._key(w.group, name),
                        text_of(have.get(name)),
                        text_of(wanted[name]),
                        None,
                        field_group=w.group,
                    )
                )
        result.writes += 1
        return len(left) < len(changed)

    def _write(
        self,
        conn: sa.Connection,
        group: FieldGroup,
        w: FieldWrite,
        row: ProductRows,
        blog: Blog,
        have: Values,
        wanted: Values,
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> dict[str, str] | None:
        """``FieldGroup.write`` in a savepoint: the fields it left alone, with why; None if it
        failed (rolled back, every field skipped)."""
        target = Target(blog, w.post_id, w.sku, row.post_type or "product", row.parent_id)
        sp = conn.begin_nested()
        try:
            problems = write_settled(conn, group, target, have, wanted, self._saved, self.settle_seconds)
            sp.commit()
            if recheck.rederives(group):
                self._checks.setdefault(w.group, set()).add(w.key)
        except SaveInFlight as exc:
            sp.rollback()
            self._skip(w, list(w.sources), exc.reason, by_id, result)
            result.settling.append(settle.Record(w.blog_id, w.post_id, settle.HEAL, reason=exc.reason))
            return None
        except Exception as exc:
            if is_retryable(exc):
                raise
            sp.rollback()
            why = f"write failed (errno {errno_of(exc)}): {str(exc)[:150]}"
            self._skip(w, list(w.sources), why, by_id, result)
            return None
        return {p.field: p.reason for p in problems}

    def _skip(
        self,
        w: FieldWrite,
        names: Sequence[str],
        reason: str,
        by_id: Mapping[int, Change],
        result: BatchResult,
    ) -> None:
        result.skipped += 1
        for name in names:
            log.warning(
                "field_skipped",
                blog=w.blog_id,
                post=w.post_id,
                sku=w.sku,
                group=w.group,
                field=name,
                reason=reason,
            )
            c = self._change(w, name, by_id)
            result.history.append(
                HistoryRow(
                    c,
                    "skipped",
                    w.blog_id,
                    w.post_id,
                    w.sku,
                    self._key(w.group, name),
                    None,
                    None,
                    None,
                    reason[:255],
                    field_group=w.group,
                )
            )

    def _change(self, w: FieldWrite, name: str, by_id: Mapping[int, Change]) -> Change:
        """The change whose value this field takes (its group's last captured one)."""
        mine = [
            by_id[i]
            for i in w.change_ids
            if i in by_id and self.index.get(by_id[i].meta_key, ("", ""))[1] == name
        ]
        if mine:
            return max(mine, key=lambda c: c.id)
        b, p = w.sources[name]  # a join or heal: the member the value comes from
        return Change(0, b, p, self._key(w.group, name), "J", None, None, None, 0)

    def _key(self, group: str, name: str) -> str:
        """History's meta_key for a field: its change key (``post:<column>`` for a posts column)."""
        return self.keys.get((group, name), name)


def _lock_posts(conn: sa.Connection, posts: Mapping[int, set[int]], blogs: Mapping[int, Blog]) -> None:
    """``SELECT ... FOR UPDATE`` of these posts rows (blog -> post ids): ascending blog, then post id."""
    statements = [
        (
            f"SELECT ID FROM {table(blogs[b].prefix, 'posts')} WHERE ID IN ({', '.join(['%s'] * len(p))}) "
            "ORDER BY ID FOR UPDATE",
            sorted(p),
        )
        for b, p in sorted(posts.items())
        if p
    ]
    if statements:
        run_many(conn, statements)
