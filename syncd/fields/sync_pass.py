"""The field pass (issue 10): make every member of the link groups hold its authority's values of
the chosen field groups. Used by the manual sync (``syncd sync --fields``, the dashboard) and by
the scheduled groups (the daemon's cron job).

Chunked like reconcile: a chunk of link groups is one short transaction that

1. reads the chunk's linked members (blogs allowed by ``[blogs]`` and ``[fields.blogs]``);
2. leaves alone, per field group, the link groups whose members have captured, unapplied changes
   of that group's fields (the realtime path owns them; reported);
3. locks in the daemon's order (:func:`syncd.lock.lock_and_read`: blog by blog, every postmeta row
   of the products and their variation closure in post id order), then the posts rows
   ``FOR UPDATE``: a WooCommerce save starts with ``UPDATE posts SET post_modified``, so a shop save
   during the chunk waits for it, and the values read below are the latest committed ones
   (READ COMMITTED): an older value never overwrites a newer one;
4. per field group: reads every member's values (``FieldGroup.read``), chooses the authority
   ("newest": greatest ``post_modified_gmt``, ties to the lowest blog id; or the configured blog),
   skips the link group when the authority's values have ``problems()``, writes each member whose
   values differ as WooCommerce reads them (``FieldGroup.write``), and records history
   (``field_group`` set; role ``field`` per field written, ``skipped`` per field left alone);
   a member WooCommerce saved less than ``sync.settle_seconds`` ago is not written
   (:mod:`syncd.fields.inflight`): it is reported *deferred* and recorded, and the daemon writes
   the pass's values into it once it has settled, unless it was edited meanwhile
   (:mod:`syncd.fields.deferred`); an authority WooCommerce is saving (its values may be half
   written) is not copied from: the link group is deferred for that field group, and the daemon
   gives each other member the authority's values once both have settled;
5. commits, or with ``dry_run`` rolls back: the preview is what a real run writes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import structlog

from syncd.audit import MAX_BUCKETS, Scope
from syncd.config import Config
from syncd.db import errno_of, is_disconnect, is_retryable, table
from syncd.fields import deferred as deferrals
from syncd.fields import recheck
from syncd.fields.checksum import BucketChecksums, spec_of
from syncd.fields.deferred import Deferral
from syncd.fields.group import FieldGroup, Problem, Target, Value, Values
from syncd.fields.inflight import SaveInFlight, recent, write_settled
from syncd.fields.since import edited_since, known_values, read_facts
from syncd.record import FieldHistoryRow, field_fingerprint, write_field_history

log = structlog.get_logger("syncd.fields")

#: Link groups per write transaction (reconcile's order of size); link groups looked at per
#: unlocked scan (only those whose members differ are then locked and written).
CHUNK = 100
SCAN = 1000
ATTEMPTS = 5
_batch_ids = itertools.count(int(datetime.now(UTC).timestamp() * 1000) + 7)

Key = tuple[int, int]
#: Why a pass defers a link group whose authority is itself being saved.
SAVING_AUTHORITY = (
    "the authority is being saved and its values may be half written: "
    "they are taken from it once it has settled"
)


@dataclass(frozen=True)
class Member:
    group_id: int
    blog_id: int
    post_id: int
    sku: str
    post_type: str
    parent_id: int

    @property
    def key(self) -> Key:
        return (self.blog_id, self.post_id)


@dataclass
class PassReport:
    """What a pass wrote (or would write, ``dry_run``), what it left alone and why."""

    groups: tuple[str, ...]
    authority: str
    dry_run: bool = False
    link_groups: int = 0
    written: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Fields of members being saved: left for the daemon to write once settled (syncd.fields.deferred).
    deferred: list[dict[str, Any]] = field(default_factory=list)
    #: The records of a chunk's deferred members (written in its transaction; not in the document).
    deferrals: list[Deferral] = field(default_factory=list, repr=False)
    #: (group, member) written by a group whose derived rows are checked once settled (syncd.fields.recheck).
    checks: list[tuple[str, Key]] = field(default_factory=list, repr=False)

    def document(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "authority": self.authority,
            "dry_run": self.dry_run,
            "link_groups": self.link_groups,
            "counts": {
                "written": len(self.written),
                "problems": len(self.problems),
                "skipped": len(self.skipped),
                "deferred": len(self.deferred),
            },
            "written": self.written,
            "problems": self.problems,
            "skipped": self.skipped,
            "deferred": self.deferred,
        }


# --------------------------------------------------------------------------- pure decisions
def choose_authority(
    members: Sequence[Member], modified: Mapping[Key, datetime | None], authority_blog: int | None
) -> tuple[Member | None, str]:
    """The member whose values win, and why (or None and the reason there is none)."""
    if authority_blog is not None:
        on_blog = sorted((m for m in members if m.blog_id == authority_blog), key=lambda m: m.post_id)
        if not on_blog:
            return None, f"the authority blog {authority_blog} has no member in this link group"
        return on_blog[0], f"blog {authority_blog}"
    oldest = datetime.min
    best = min(members, key=lambda m: (-_stamp(modified.get(m.key) or oldest), m.blog_id, m.post_id))
    return best, "newest"


def _stamp(value: datetime) -> float:
    return (value - datetime.min).total_seconds()


def canonical(group: FieldGroup, values: Values) -> Values:
    """The values as WooCommerce reads them, when the group says (optional ``canonical``)."""
    fn = getattr(group, "canonical", None)
    return fn(values) if fn is not None else values


def differing_fields(group: FieldGroup, current: Values, wanted: Values) -> list[str]:
    """The fields whose values differ as WooCommerce reads them; a field one of the two lacks
    does not apply to it (a variation's tax status: syncd.fields.meta) and never differs."""
    have, want = canonical(group, current), canonical(group, wanted)
    return [k for k in want if k in have and have.get(k) != want.get(k)]


def differences(
    group: FieldGroup, values: Mapping[Key, Values], members: Sequence[Member]
) -> list[tuple[int, list[Member], str]]:
    """(link group, its members with values, field) for every field whose members' values differ
    as WooCommerce reads them (pure; ``members`` in any order)."""
    by_group: dict[int, list[Member]] = {}
    for m in members:
        if m.key in values:
            by_group.setdefault(m.group_id, []).append(m)
    out = []
    for gid, ms in sorted(by_group.items()):
        if len(ms) < 2:
            continue
        canon = {m.key: canonical(group, values[m.key]) for m in ms}
        names = dict.fromkeys(f for m in ms for f in canon[m.key])  # a field may apply to some only
        for fld in names:
            if len({canon[m.key][fld] for m in ms if fld in canon[m.key]}) > 1:
                out.append((gid, ms, fld))
    return out


def edited_members(
    group: FieldGroup,
    members: Sequence[Member],
    values: Mapping[Key, Values],
    known: Mapping[Key, Mapping[str, str | None]],
) -> list[Member]:
    """The members whose values differ from what they held after the last pass (syncd.fields.since),
    compared as WooCommerce reads them, by :func:`syncd.record.field_fingerprint` (history cuts a
    long value at 240 characters and keeps its hash)."""

    def shown(vals: Values) -> dict[str, str | None]:
        return {f: field_fingerprint(text_of(v)) for f, v in canonical(group, vals).items()}

    current = {m.key: shown(values[m.key]) for m in members}
    held = {}
    for m in members:
        if known.get(m.key):
            was = shown({**values[m.key], **known[m.key]})
            held[m.key] = {f: was.get(f) for f in known[m.key] if f in current[m.key]}
    keys = set(edited_since(held, current))
    return [m for m in members if m.key in keys]


def members_holding(
    group: FieldGroup, members: Sequence[Member], values: Mapping[Key, Values], base: Mapping[str, str | None]
) -> list[Member]:
    """The members holding the value the last pass copied, in every field it copied."""
    if not base:
        return []
    out = []
    for m in members:
        now = {f: field_fingerprint(text_of(v)) for f, v in canonical(group, values[m.key]).items()}
        was = {
            f: field_fingerprint(text_of(v)) for f, v in canonical(group, {**values[m.key], **base}).items()
        }
        if all(now.get(f) == was.get(f) for f in base if f in now):
            out.append(m)
    return out


def text_of(value: Value) -> str | None:
    """A value as history and reports show it (a term list as comma-separated slugs)."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(value)


def watched_names(group: FieldGroup) -> set[str]:
    """The change-row ``meta_key`` names of a group's fields (meta keys, ``post:``, ``terms:``)."""
    return (
        set(group.meta_keys)
        | {f"post:{c}" for c in group.post_columns}
        | {f"terms:{t}" for t in group.taxonomies}
    )


# --------------------------------------------------------------------------- reads
def link_groups(conn: sa.Connection, scope: Scope, after: int, limit: int) -> list[int]:
    """Ids of link groups with a linked member, ascending, after ``after`` (one range of the
    ``grp`` index: the scan stops at ``limit`` ids; groups with one member on the scope's blogs
    are dropped later, when the chunk reads its members)."""
    if not scope.blogs:
        return []
    rows = conn.exec_driver_sql(
        f"SELECT DISTINCT group_id FROM {table(scope.base, 'syncd_member')} "
        "WHERE group_id > %s AND state = 'linked' ORDER BY group_id LIMIT %s",
        (after, limit),
    ).all()
    return [int(r[0]) for r in rows]


def count_link_groups(conn: sa.Connection, scope: Scope) -> int:
    """How many link groups :func:`link_groups` walks in a full pass."""
    if not scope.blogs:
        return 0
    return int(
        conn.exec_driver_sql(
            f"SELECT COUNT(DISTINCT group_id) FROM {table(scope.base, 'syncd_member')} "
            "WHERE group_id > 0 AND state = 'linked'"
        ).scalar_one()
    )


def read_members(conn: sa.Connection, scope: Scope, group_ids: Sequence[int]) -> list[Member]:
    """Linked, not excluded members of the groups on the scope's blogs, in lock order."""
    if not group_ids or not scope.blogs:
        return []
    excluded, params = scope.excluded_sql("m.sku")
    gids = ", ".join(str(int(g)) for g in group_ids)
    blogs = ", ".join(str(int(b)) for b in scope.blog_ids)
    rows = conn.execute(
        sa.text(
            f"SELECT m.group_id, m.blog_id, m.post_id, m.sku, m.post_type, m.parent_id "
            f"FROM {table(scope.base, 'syncd_member')} m WHERE m.group_id IN ({gids}) AND m.blog_id IN ({blogs}) "
            f"AND m.state = 'linked' AND NOT {excluded} ORDER BY m.blog_id, m.post_id"
        ),
        params,
    ).all()
    return [Member(int(r[0]), int(r[1]), int(r[2]), r[3], r[4], int(r[5])) for r in rows]


def member_rows(conn: sa.Connection, base: str, keys: Sequence[Key]) -> list[Member]:
    """The linked members with these (blog, post) keys, in lock order."""
    if not keys:
        return []
    rows = conn.exec_driver_sql(
        f"SELECT group_id, blog_id, post_id, sku, post_type, parent_id FROM {table(base, 'syncd_member')} "
        f"WHERE (blog_id, post_id) IN ({', '.join(['(%s, %s)'] * len(keys))}) AND state = 'linked' "
        "ORDER BY blog_id, post_id",
        tuple(v for k in keys for v in k),
    ).all()
    return [Member(int(r[0]), int(r[1]), int(r[2]), r[3], r[4], int(r[5])) for r in rows]


def queued_fields(conn: sa.Connection, base: str, members: Iterable[Member]) -> dict[Key, set[str]]:
    """Per product, the keys of its captured changes not applied yet (a plain read: change rows
    are taken before product rows, never after: the lock-order rule shared with the daemon)."""
    keys = sorted({m.key for m in members})
    if not keys:
        return {}
    pairs = ", ".join(["(%s, %s)"] * len(keys))
    rows = conn.exec_driver_sql(
        f"SELECT DISTINCT blog_id, post_id, meta_key FROM {table(base, 'syncd_change')} "
        f"WHERE (blog_id, post_id) IN ({pairs})",
        tuple(v for k in keys for v in k),
    ).all()
    out: dict[Key, set[str]] = {}
    for b, p, k in rows:
        out.setdefault((int(b), int(p)), set()).add(str(k))
    return out


def lock_members(conn: sa.Connection, scope: Scope, members: Sequence[Member]) -> dict[Key, datetime | None]:
    """Lock the members' rows in the daemon's order; their ``post_modified_gmt`` (absent: gone)."""
    from syncd.lock import lock_and_read

    by_blog: dict[int, list[int]] = {}
    for m in members:
        by_blog.setdefault(m.blog_id, []).append(m.post_id)
    jobs = [(scope.blogs[b], sorted(set(ids))) for b, ids in sorted(by_blog.items())]
    lock_and_read(conn, jobs)
    out: dict[Key, datetime | None] = {}
    for blog, ids in jobs:
        rows = conn.exec_driver_sql(
            f"SELECT ID, post_modified_gmt FROM {table(blog.prefix, 'posts')} "
            f"WHERE ID IN ({', '.join(['%s'] * len(ids))}) ORDER BY ID FOR UPDATE",
            tuple(ids),
        ).all()
        out.update({(blog.blog_id, int(r[0])): r[1] for r in rows})
    return out


def read_values(
    conn: sa.Connection, scope: Scope, group: FieldGroup, members: Sequence[Member]
) -> dict[Key, Values]:
    """The group's values of these members (``FieldGroup.read``, one call per blog)."""
    by_blog: dict[int, list[int]] = {}
    for m in members:
        by_blog.setdefault(m.blog_id, []).append(m.post_id)
    out: dict[Key, Values] = {}
    for b, ids in sorted(by_blog.items()):
        for pid, vals in group.read(conn, scope.blogs[b], ids).items():
            out[(b, int(pid))] = vals
    return out


# --------------------------------------------------------------------------- the pass
class FieldPass:
    """Runs the pass over chunks of link groups (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        scope: Scope,
        engine: sa.Engine,
        groups: Mapping[str, FieldGroup],
        *,
        dry_run: bool = False,
        source: str | None = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.engine = engine
        self.groups = dict(groups)
        self.source = source
        self.report = PassReport(tuple(self.groups), config.fields.authority, dry_run)
        #: tests: called with "locked" once a chunk holds its locks (races made deterministic).
        self.step_hook: Callable[[str], None] | None = None
        #: Buckets of the full pass's checksums (syncd.fields.checksum; tests make them wider).
        self.max_buckets = MAX_BUCKETS

    def run(self, group_ids: Sequence[int] | None = None, chunk: int = CHUNK) -> PassReport:
        """Every link group (``group_ids`` None) or the ones given: looked at SCAN link groups at
        a time without locks, then the ones whose members differ in transactions of ``chunk``."""
        if group_ids is not None:
            ids = sorted(set(group_ids))
            for i in range(0, len(ids), SCAN):
                self._write_differing(self._scan(ids[i : i + SCAN]), chunk)
            return self.report
        ranges = self._dirty_ranges()
        if ranges is not None:
            return self._run_ranges(ranges, chunk)
        after = 0
        while True:
            with self.engine.connect() as conn:
                ids = link_groups(conn, self.scope, after, SCAN)
                conn.rollback()
            if not ids:
                return self.report
            self._write_differing(self._scan(ids), chunk)
            after = ids[-1]

    def _dirty_ranges(self) -> list[tuple[int, int]] | None:
        """With a checksum for every group (syncd.fields.checksum.spec_of): the group-id ranges
        of the buckets whose checksums differ between blogs; None: look at every link group."""
        specs = {name: spec_of(group) for name, group in self.groups.items()}
        if not self.scope.blogs or not all(specs.values()):
            return None
        sums = BucketChecksums(self.engine, self.scope, self.max_buckets)
        dirty = sums.dirty(
            {
                name: (spec, [b for b in self.scope.blog_ids if self.config.fields.takes_part(name, b)])
                for name, spec in specs.items()
            }
        )
        log.info("field_pass_checksums", buckets=sums.nbuckets, width=sums.width, dirty=len(dirty))
        return sums.ranges(dirty)

    def _run_ranges(self, ranges: Sequence[tuple[int, int]], chunk: int) -> PassReport:
        """The link groups of these ranges as the full pass looks at them; ``link_groups`` still
        counts every link group (those of clean buckets were compared by checksum)."""
        with self.engine.connect() as conn:
            total = count_link_groups(conn, self.scope)
            conn.rollback()
        for lo, hi in ranges:
            after = lo - 1
            while True:
                with self.engine.connect() as conn:
                    ids = [g for g in link_groups(conn, self.scope, after, SCAN) if g <= hi]
                    conn.rollback()
                if not ids:
                    break
                self._write_differing(self._scan(ids), chunk)
                after = ids[-1]
        self.report.link_groups = total
        return self.report

    def _scan(self, group_ids: Sequence[int]) -> list[int]:
        """The link groups among ``group_ids`` whose members differ (plain reads, no lock). A group
        with ``fingerprint_sql`` is first narrowed on the server to the link groups whose stored
        values differ at all; only those are read and compared as WooCommerce reads them."""
        self.report.link_groups += len(group_ids)
        with self.engine.connect() as conn:
            narrowed: dict[str, set[int]] = {}
            for name, group in self.groups.items():
                if getattr(group, "fingerprint_sql", None) is not None:
                    narrowed[name] = self._fingerprint_differing(conn, name, group, group_ids)
            if len(narrowed) == len(self.groups):
                group_ids = sorted(set().union(*narrowed.values()))
            members = read_members(conn, self.scope, group_ids)
            differing = self._differing(conn, members, narrowed)
            conn.rollback()
        return sorted(differing)

    def _fingerprint_differing(
        self, conn: sa.Connection, name: str, group: Any, group_ids: Sequence[int]
    ) -> set[int]:
        blogs = [self.scope.blogs[b] for b in self.scope.blog_ids if self.config.fields.takes_part(name, b)]
        if not blogs or not group_ids:
            return set()
        excluded, params = self.scope.excluded_sql("m.sku")
        gids = ", ".join(str(int(g)) for g in group_ids)
        member = table(self.scope.base, "syncd_member")
        parts = [
            f"SELECT m.group_id, COALESCE({group.fingerprint_sql(blog.prefix, 'm.post_id')}, '') AS fp "
            f"FROM {member} m WHERE m.blog_id = {int(blog.blog_id)} AND m.group_id IN ({gids}) "
            f"AND m.state = 'linked' AND NOT {excluded}"
            for blog in blogs
        ]
        rows = conn.execute(
            sa.text(
                f"SELECT group_id FROM ({' UNION ALL '.join(parts)}) t GROUP BY group_id HAVING COUNT(DISTINCT fp) > 1"
            ),
            params,
        ).all()
        return {int(r[0]) for r in rows}

    def _differing(
        self, conn: sa.Connection, members: Sequence[Member], narrowed: Mapping[str, set[int]] | None = None
    ) -> set[int]:
        out: set[int] = set()
        for name, group in self.groups.items():
            only = (narrowed or {}).get(name)
            taking_part = [
                m
                for m in members
                if self.config.fields.takes_part(name, m.blog_id) and (only is None or m.group_id in only)
            ]
            values = read_values(conn, self.scope, group, taking_part)
            out |= {gid for gid, _, _ in differences(group, values, taking_part)}
        return out

    def _write_differing(self, ids: Sequence[int], chunk: int) -> None:
        for i in range(0, len(ids), chunk):
            self.run_chunk(ids[i : i + chunk])

    def run_chunk(self, group_ids: Sequence[int]) -> bool:
        """One chunk in its own transaction, retried on lock waits, deadlocks and lost connections."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                staged = self._transaction(group_ids)
            except Exception as exc:
                if not (is_retryable(exc) or is_disconnect(exc)):
                    raise
                reason = f"errno {errno_of(exc)}: {str(getattr(exc, 'orig', exc))[:160]}"
                log.warning("field_chunk_retry", groups=len(group_ids), attempt=attempt, reason=reason)
                time.sleep(0.05 * attempt)  # backoff between attempts, not synchronisation
                continue
            self._publish(staged)
            return True
        self.report.skipped.append(
            {"link_groups": list(group_ids)[:50], "reason": f"chunk skipped: {reason}"}
        )
        log.error("field_chunk_skipped", groups=len(group_ids), reason=reason)
        return False

    def _transaction(self, group_ids: Sequence[int]) -> PassReport:
        staged = PassReport(self.report.groups, self.report.authority, self.report.dry_run)
        with self.engine.connect() as conn:
            try:
                self._chunk(conn, group_ids, staged)
                if self.report.dry_run:
                    conn.rollback()
                else:
                    conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return staged

    def _publish(self, staged: PassReport) -> None:
        self.report.written += staged.written
        self.report.problems += staged.problems
        self.report.skipped += staged.skipped
        self.report.deferred += staged.deferred
        for w in staged.written:
            log.info("field_synced", **{k: w[k] for k in ("group", "blog", "post", "sku", "field")})
        for p in staged.problems:
            log.warning(
                "field_skipped", **{k: p[k] for k in ("group", "blog", "post", "sku", "field", "reason")}
            )
        for p in staged.deferred:
            log.info(
                "field_deferred", **{k: p[k] for k in ("group", "blog", "post", "sku", "field", "reason")}
            )

    def _chunk(self, conn: sa.Connection, group_ids: Sequence[int], staged: PassReport) -> None:
        members = read_members(conn, self.scope, group_ids)
        # An unlocked look first (again: things move): only the link groups whose members differ
        # are locked and decided under their locks.
        differing = self._differing(conn, members)
        members = [m for m in members if m.group_id in differing]
        if not members:
            return
        queued = queued_fields(conn, self.scope.base, members)
        modified = lock_members(conn, self.scope, members) if members else {}
        if self.step_hook is not None:
            self.step_hook("locked")
        members = [m for m in members if m.key in modified]  # a post deleted meanwhile
        by_group: dict[int, list[Member]] = {}
        for m in members:
            by_group.setdefault(m.group_id, []).append(m)
        history: list[FieldHistoryRow] = []
        saved = self._saved(conn, members)
        for name, group in self.groups.items():
            taking_part = [m for m in members if self.config.fields.takes_part(name, m.blog_id)]
            values = read_values(conn, self.scope, group, taking_part)
            known: tuple[dict[Key, dict[str, str | None]], dict[int, dict[str, str | None]]] = ({}, {})
            if self.config.fields.authority_blog is None:
                known = known_values(read_facts(conn, self.scope.base, name, taking_part), taking_part)
            for gid, group_members in sorted(by_group.items()):
                mine = [m for m in group_members if m.key in values]
                if len(mine) < 2:
                    continue
                busy = watched_names(group)
                if any(queued.get(m.key, set()) & busy for m in mine):
                    staged.skipped.append(
                        {
                            "group": name,
                            "link_group": gid,
                            "sku": mine[0].sku,
                            "reason": "captured changes of these fields wait for the realtime path",
                        }
                    )
                    continue
                history += self._sync_one(
                    conn, name, group, gid, mine, values, (modified, saved), staged, known
                )
        batch = next(_batch_ids)
        write_field_history(
            conn, self.scope.base, batch, history, datetime.now(UTC).replace(tzinfo=None), self.source
        )
        written = {(w["group"], w["blog"], w["post"]) for w in staged.written}
        deferrals.forget(conn, self.scope.base, sorted(written))  # an older deferral is done with
        later = [replace(d, batch_id=batch, source=self.source) for d in staged.deferrals]
        deferrals.record(conn, self.scope.base, later)
        for name in sorted({g for g, _ in staged.checks}):
            recheck.record(conn, self.scope.base, name, [k for g, k in staged.checks if g == name])

    def _saved(self, conn: sa.Connection, members: Sequence[Member]) -> set[Key]:
        """The members (and parents) saved within ``sync.settle_seconds``, read before the chunk
        writes (each group's write saves the member, as WooCommerce does)."""
        posts: dict[int, set[int]] = {}
        for m in members:
            posts.setdefault(m.blog_id, set()).update(
                [m.post_id, m.parent_id] if m.parent_id else [m.post_id]
            )
        return recent(conn, self.scope.base, posts, self.scope.blogs, self.config.sync.settle_seconds)

    def _sync_one(
        self,
        conn: sa.Connection,
        name: str,
        group: FieldGroup,
        gid: int,
        members: Sequence[Member],
        values: Mapping[Key, Values],
        times: tuple[Mapping[Key, datetime | None], Collection[Key]],
        staged: PassReport,
        known: tuple[Mapping[Key, Mapping[str, str | None]], Mapping[int, Mapping[str, str | None]]],
    ) -> list[FieldHistoryRow]:
        """One link group of one field group. ``times``: every member's ``post_modified_gmt``, and
        the products saved within ``sync.settle_seconds`` before the chunk wrote anything."""
        modified, saved = times
        held, bases = known
        edited = edited_members(group, members, values, held)
        # Nobody edited since the last pass: its value is the one to keep (a member it could not
        # write, e.g. a tax class its blog lacks, must not become the authority by being newer).
        in_step = [] if edited else members_holding(group, members, values, bases.get(gid, {}))
        auth, why = choose_authority(
            edited or in_step or members, modified, self.config.fields.authority_blog
        )
        if auth is not None and (edited or in_step):
            why = "newest edited since the last pass" if edited else "the last pass's value"
        if auth is None:
            staged.skipped.append({"group": name, "link_group": gid, "sku": members[0].sku, "reason": why})
            return []
        wanted = values[auth.key]
        if any((auth.blog_id, p) in saved for p in (auth.post_id, auth.parent_id) if p):
            return self._defer_group(name, gid, auth, members, values, staged, group)
        bad = group.problems(wanted)
        if bad:
            for fld, reason in bad:
                staged.problems.append(
                    _problem_entry(name, gid, auth, fld, f"authority value refused: {reason}")
                )
            return []
        rows: list[FieldHistoryRow] = []
        for m in members:
            if m is auth:
                continue
            current = values[m.key]
            fields = differing_fields(group, current, wanted)
            if not fields:
                continue
            target = Target(self.scope.blogs[m.blog_id], m.post_id, m.sku, m.post_type, m.parent_id)
            try:
                problems = write_settled(
                    conn, group, target, current, wanted, saved, self.config.sync.settle_seconds
                )
            except SaveInFlight as exc:  # the daemon writes it once settled (syncd.fields.deferred)
                rows += self._defer(name, gid, auth, m, fields, (current, wanted), exc.reason, staged, group)
                continue
            if recheck.rederives(group):
                staged.checks.append((name, m.key))
            rows += self._record(name, gid, auth, why, m, fields, current, wanted, problems, staged)
        return rows

    def _defer(
        self,
        name: str,
        gid: int,
        auth: Member,
        m: Member,
        fields: Sequence[str],
        values: tuple[Values, Values],
        reason: str,
        staged: PassReport,
        group: FieldGroup,
    ) -> list[FieldHistoryRow]:
        """A member being saved: reported deferred, recorded to be written once settled; history
        says it kept its value (the pass's merge base, syncd.fields.since)."""
        current, wanted = values
        have = canonical(group, current)
        held = {f: text_of(have.get(f)) for f in fields}
        staged.deferrals.append(
            Deferral(
                m.blog_id,
                m.post_id,
                name,
                gid,
                m.sku,
                auth.key,
                0,
                held,
                {f: wanted.get(f) for f in fields},
                reason=reason,
            )
        )
        note = f"deferred: {reason}"
        for fld in fields:
            staged.deferred.append(
                {**_problem_entry(name, gid, m, fld, note), "authority": f"{auth.blog_id}:{auth.post_id}"}
            )
        return [
            FieldHistoryRow(
                "skipped",
                name,
                m.blog_id,
                m.post_id,
                m.sku,
                fld,
                text_of(current.get(fld)),
                text_of(wanted.get(fld)),
                auth.key,
                note,
            )  # fmt: skip
            for fld in fields
        ]

    def _defer_group(
        self,
        name: str,
        gid: int,
        auth: Member,
        members: Sequence[Member],
        values: Mapping[Key, Values],
        staged: PassReport,
        group: FieldGroup,
    ) -> list[FieldHistoryRow]:
        """The authority is being saved (:mod:`syncd.fields.inflight`): its values may be half
        written, so nothing is copied. When some member differs from it, every other member is
        deferred for the whole group: a record without ``wanted`` (:mod:`syncd.fields.deferred`),
        holding all its fields, takes the authority's values once both have settled. The report
        names the fields that differ now (``*`` for a member that does not differ yet); history
        says those kept their value."""
        wanted = values[auth.key]
        others = [(m, differing_fields(group, values[m.key], wanted)) for m in members if m is not auth]
        if not any(fields for _, fields in others):
            return []
        reason = SAVING_AUTHORITY
        rows: list[FieldHistoryRow] = []
        for m, fields in others:
            held = {f: text_of(v) for f, v in canonical(group, values[m.key]).items()}
            staged.deferrals.append(
                Deferral(m.blog_id, m.post_id, name, gid, m.sku, auth.key, 0, held, {}, reason=reason)
            )
            note = f"deferred: {reason}"
            for fld in fields or ["*"]:
                staged.deferred.append(
                    {**_problem_entry(name, gid, m, fld, note), "authority": f"{auth.blog_id}:{auth.post_id}"}
                )
            rows += [
                FieldHistoryRow(
                    "skipped",
                    name,
                    m.blog_id,
                    m.post_id,
                    m.sku,
                    fld,
                    text_of(values[m.key].get(fld)),
                    text_of(wanted.get(fld)),
                    auth.key,
                    note,
                )
                for fld in fields
            ]
        return rows

    def _record(
        self,
        name: str,
        gid: int,
        auth: Member,
        why: str,
        m: Member,
        fields: Sequence[str],
        current: Values,
        wanted: Values,
        problems: Sequence[Problem],
        staged: PassReport,
    ) -> list[FieldHistoryRow]:
        refused = {p.field: p.reason for p in problems}
        rows = []
        for fld in fields:
            old, new = text_of(current.get(fld)), text_of(wanted.get(fld))
            if fld in refused:
                staged.problems.append(_problem_entry(name, gid, m, fld, refused[fld]))
                rows.append(
                    FieldHistoryRow(
                        "skipped", name, m.blog_id, m.post_id, m.sku, fld, old, new, auth.key, refused[fld]
                    )
                )
                continue
            staged.written.append(
                {
                    "group": name,
                    "link_group": gid,
                    "blog": m.blog_id,
                    "post": m.post_id,
                    "sku": m.sku,
                    "field": fld,
                    "old": old,
                    "new": new,
                    "authority": f"{auth.blog_id}:{auth.post_id} ({why})",
                }
            )
            rows.append(
                FieldHistoryRow(
                    "field",
                    name,
                    m.blog_id,
                    m.post_id,
                    m.sku,
                    fld,
                    old,
                    new,
                    auth.key,
                    f"{name} pass, authority {why}",
                )
            )
        return rows


def _problem_entry(name: str, gid: int, m: Member, fld: str, reason: str) -> dict[str, Any]:
    return {
        "group": name,
        "link_group": gid,
        "blog": m.blog_id,
        "post": m.post_id,
        "sku": m.sku,
        "field": fld,
        "reason": reason,
    }
