"""Capture: per-blog triggers on ``{prefix}postmeta`` that queue every real change of a watched
meta key into ``{base}syncd_change`` inside the writer's own transaction; for the realtime field
groups (issue 10) also their meta keys, and triggers on ``{prefix}posts`` (watched columns, keyed
``post:<column>``) and ``{prefix}term_relationships`` (watched taxonomies, ``terms:<taxonomy>``).

Nothing committed is missed (the change row commits with the write), nothing rolled back is seen
(it rolls back with it), and syncd's own writes are never queued (its apply session sets
``@syncd_apply``). Trigger SQL is rendered by pure functions from the templates in sql/.
Installation is idempotent; an outdated trigger is replaced atomically (``CREATE OR REPLACE
TRIGGER`` on MariaDB), so that no write can slip between the old trigger and the new one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from syncd.db import server_info, table, validate_prefix
from syncd.network import Blog
from syncd.plan import WATCHED_KEYS
from syncd.sqlfiles import sql_text

if TYPE_CHECKING:
    from syncd.fields.group import FieldGroup

#: Bump when the trigger templates change; installed triggers whose body differs are replaced.
#: 2: the postmeta triggers test the key with FIND_IN_SET first (issue 10's trigger cost).
TRIGGER_VERSION = 2
EVENTS = ("insert", "update", "delete")
_EVENT_SUFFIX = {"insert": "ai", "update": "au", "delete": "ad"}
#: Field-group triggers: posts UPDATE, term_relationships INSERT / DELETE.
POSTS_SUFFIX = "pu"
_TERMS_SUFFIX = {"insert": "ti", "delete": "td"}
#: Every trigger name suffix syncd's capture uses on a blog (uninstall drops them all).
ALL_SUFFIXES = (*_EVENT_SUFFIX.values(), POSTS_SUFFIX, *_TERMS_SUFFIX.values())
#: Change-row key prefixes of the field triggers: ``post:post_title``, ``terms:product_cat``.
POST_KEY, TERMS_KEY = "post:", "terms:"
#: The ``{prefix}posts`` columns a field group may watch (WordPress's posts table).
POSTS_COLUMNS = frozenset(
    "post_author post_date post_date_gmt post_content post_title post_excerpt post_status comment_status "
    "ping_status post_password post_name to_ping pinged post_modified post_modified_gmt post_content_filtered "
    "post_parent guid menu_order post_type post_mime_type comment_count".split()
)
_TAXONOMY_RE = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True)
class Watch:
    """What one blog's capture triggers watch: the stock keys plus the meta keys, posts columns
    and taxonomies of the realtime field groups that blog takes part in. The default is stock only
    (exactly the triggers of before issue 10, so their bodies do not change)."""

    meta_keys: tuple[str, ...] = WATCHED_KEYS
    post_columns: tuple[str, ...] = ()
    taxonomies: tuple[str, ...] = ()
    #: The postmeta triggers are rendered. False in binlog capture (``capture.mode = "binlog"``):
    #: postmeta is compared with the poll snapshot where the binary log points (syncd.poll), and
    #: only the posts and term_relationships triggers remain, when a realtime group needs them.
    meta_triggers: bool = True

    @classmethod
    def of(cls, groups: Iterable[FieldGroup]) -> Watch:
        """Stock plus these groups' fields, each once, in a stable order (stock keys first, as
        before, then the others sorted): the same set always renders the same trigger bodies."""
        groups = list(groups)
        extra = sorted({k for g in groups for k in g.meta_keys} - set(WATCHED_KEYS))
        columns = sorted({c for g in groups for c in g.post_columns})
        taxonomies = sorted({t for g in groups for t in g.taxonomies})
        return cls((*WATCHED_KEYS, *extra), tuple(columns), tuple(taxonomies))

    @property
    def keys(self) -> frozenset[str]:
        """Every change-row key these triggers can write."""
        return frozenset(
            (
                *self.meta_keys,
                *(POST_KEY + c for c in self.post_columns),
                *(TERMS_KEY + t for t in self.taxonomies),
            )
        )


STOCK_ONLY = Watch()


@dataclass(frozen=True)
class TriggerDef:
    name: str
    table: str  # unquoted table name
    event: str
    create_sql: str
    body: str  # from BEGIN to END, as information_schema.TRIGGERS.ACTION_STATEMENT shows it


def trigger_name(base_prefix: str, blog_id: int, event: str) -> str:
    """``{base}syncd_b{N}_{ai|au|ad}``: names carry the base prefix so two networks in one schema never clash."""
    return f"{validate_prefix(base_prefix)}syncd_b{int(blog_id)}_{_EVENT_SUFFIX[event]}"


def blog_trigger_names(base_prefix: str, blog_id: int) -> tuple[str, ...]:
    """Every name a capture trigger of this blog can have (stock and field triggers)."""
    return tuple(f"{validate_prefix(base_prefix)}syncd_b{int(blog_id)}_{s}" for s in ALL_SUFFIXES)


def watched_list(keys: Sequence[str] = WATCHED_KEYS) -> str:
    for k in keys:
        if not re.fullmatch(r"_?[a-z][a-z0-9_]*", k):
            raise ValueError(f"bad watched key {k!r}")
    return ", ".join(f"'{k}'" for k in keys)


def watched_set(keys: Sequence[str] = WATCHED_KEYS) -> str:
    """The keys as one FIND_IN_SET string (validated as :func:`watched_list`: no comma, no space)."""
    watched_list(keys)
    return ",".join(keys)


def taxonomy_list(taxonomies: Sequence[str]) -> str:
    for t in taxonomies:
        if not _TAXONOMY_RE.fullmatch(t):
            raise ValueError(f"bad watched taxonomy {t!r}")
    return ", ".join(f"'{t}'" for t in taxonomies)


def _blog_of(blog: Blog | tuple[int, str]) -> tuple[int, str]:
    return (blog.blog_id, blog.prefix) if isinstance(blog, Blog) else blog


def _fill(template: str, base_prefix: str, blog: Blog | tuple[int, str], name: str, **parts: str) -> str:
    blog_id, prefix = _blog_of(blog)
    validate_prefix(base_prefix)
    validate_prefix(prefix)
    text = sql_text(template).replace("{version}", f"v{TRIGGER_VERSION}").replace("{trigger}", name)
    for key, value in parts.items():  # the parts first: they may hold {prefix}, {base}, {blog_id}
        text = text.replace("{" + key + "}", value)
    return (
        text.replace("{prefix}", prefix)
        .replace("{base}", base_prefix)
        .replace("{blog_id}", str(int(blog_id)))
    )


def _definition(name: str, table_name: str, event: str, text: str) -> TriggerDef:
    create = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("--")).strip()
    return TriggerDef(name, table_name, event, create, create[create.index("BEGIN") :])


def render_trigger(
    base_prefix: str, blog: Blog | tuple[int, str], event: str, watch: Watch = STOCK_ONLY
) -> TriggerDef:
    """The postmeta CREATE TRIGGER statement for one blog and event (pure; golden-tested)."""
    name = trigger_name(base_prefix, _blog_of(blog)[0], event)
    text = _fill(
        f"capture_trigger_{event}.sql",
        base_prefix,
        blog,
        name,
        watched=watched_list(watch.meta_keys),
        watched_set=watched_set(watch.meta_keys),
    )
    return _definition(name, f"{_blog_of(blog)[1]}postmeta", event, text)


def render_posts_trigger(
    base_prefix: str, blog: Blog | tuple[int, str], columns: Sequence[str]
) -> TriggerDef:
    """The posts AFTER UPDATE trigger watching these columns (pure)."""
    bad = [c for c in columns if c not in POSTS_COLUMNS]
    if bad or not columns:
        raise ValueError(f"bad watched posts columns {bad or columns!r}")
    column = "\n".join(
        ln for ln in sql_text("capture_trigger_posts_column.sql").splitlines() if not ln.startswith("--")
    )
    name = f"{validate_prefix(base_prefix)}syncd_b{int(_blog_of(blog)[0])}_{POSTS_SUFFIX}"
    text = _fill(
        "capture_trigger_posts.sql",
        base_prefix,
        blog,
        name,
        columns="\n".join(column.replace("{column}", c) for c in columns),
    )
    return _definition(name, f"{_blog_of(blog)[1]}posts", "update", text)


def render_terms_trigger(
    base_prefix: str, blog: Blog | tuple[int, str], event: str, taxonomies: Sequence[str]
) -> TriggerDef:
    """The term_relationships AFTER INSERT / AFTER DELETE trigger for these taxonomies (pure)."""
    if not taxonomies:
        raise ValueError("no taxonomy to watch")
    row, op, old, new = (
        ("NEW", "I", "NULL", "t.slug") if event == "insert" else ("OLD", "D", "t.slug", "NULL")
    )
    name = f"{validate_prefix(base_prefix)}syncd_b{int(_blog_of(blog)[0])}_{_TERMS_SUFFIX[event]}"
    text = _fill(
        "capture_trigger_terms.sql",
        base_prefix,
        blog,
        name,
        EVENT=event.upper(),
        ROW=row,
        op=op,
        old=old,
        new=new,
        event=event.upper(),
        taxonomies=taxonomy_list(taxonomies),
    )
    return _definition(name, f"{_blog_of(blog)[1]}term_relationships", event, text)


def render_blog_triggers(
    base_prefix: str, blog: Blog | tuple[int, str], watch: Watch = STOCK_ONLY
) -> list[TriggerDef]:
    """Every capture trigger this blog needs for ``watch``: the three postmeta triggers (unless
    binlog capture polls postmeta), the posts trigger when columns are watched, the two
    term_relationships triggers when taxonomies are."""
    defs = [render_trigger(base_prefix, blog, e, watch) for e in EVENTS] if watch.meta_triggers else []
    if watch.post_columns:
        defs.append(render_posts_trigger(base_prefix, blog, watch.post_columns))
    if watch.taxonomies:
        defs += [render_terms_trigger(base_prefix, blog, e, watch.taxonomies) for e in _TERMS_SUFFIX]
    return defs


def _norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def installed_triggers(conn: sa.Connection, base_prefix: str) -> dict[str, tuple[str, str]]:
    """syncd's triggers in this schema: name -> (table, body)."""
    rows = conn.execute(
        sa.text(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE :pat"
        ),
        {"pat": validate_prefix(base_prefix).replace("_", "\\_") + "syncd\\_b%"},
    )
    return {r[0]: (r[1], r[2]) for r in rows}


#: blog_trigger_state of a blog whose capture needs no trigger (and has none).
NONE_NEEDED = "none needed"


@dataclass(frozen=True)
class TriggerState:
    blog_id: int
    state: str  # installed | missing | outdated | partial
    names: tuple[str, ...]


def blog_trigger_state(
    installed: dict[str, tuple[str, str]], base_prefix: str, blog: Blog, watch: Watch = STOCK_ONLY
) -> TriggerState:
    """``outdated`` also when the blog has a field trigger ``watch`` no longer needs;
    ``none needed`` when ``watch`` needs no trigger at all (binlog capture, no realtime posts or
    terms group) and none is installed."""
    defs = render_blog_triggers(base_prefix, blog, watch)
    present = [d for d in defs if d.name in installed]
    if not defs:  # binlog capture without a realtime posts or terms group
        state = "outdated" if _unneeded(installed, base_prefix, blog.blog_id, defs) else NONE_NEEDED
    elif not present:
        state = "missing"
    elif len(present) < len(defs):
        state = "partial"
    elif any(_norm(installed[d.name][1]) != _norm(d.body) or installed[d.name][0] != d.table for d in defs):
        state = "outdated"
    elif _unneeded(installed, base_prefix, blog.blog_id, defs):
        state = "outdated"
    else:
        state = "installed"
    return TriggerState(blog.blog_id, state, tuple(d.name for d in defs))


def _unneeded(
    installed: dict[str, tuple[str, str]], base_prefix: str, blog_id: int, defs: Sequence[TriggerDef]
) -> list[str]:
    """This blog's installed capture triggers that ``defs`` does not have (a field group no longer
    realtime there)."""
    wanted = {d.name for d in defs}
    return [n for n in blog_trigger_names(base_prefix, blog_id) if n in installed and n not in wanted]


def install_blog_triggers(
    conn: sa.Connection, base_prefix: str, blog: Blog, watch: Watch = STOCK_ONLY
) -> str:
    """Install or upgrade one blog's triggers for ``watch``. Returns 'unchanged', 'installed' or 'upgraded'.

    Missing triggers are simply created. A trigger whose body differs (e.g. the watched key set
    changed) is replaced in one atomic statement (:func:`replace_trigger_sql`): on MariaDB ``CREATE
    OR REPLACE TRIGGER``, so there is no moment, even if syncd dies half-way, where the blog has no
    trigger for that event, nor two. A field trigger no longer needed is dropped.
    """
    installed = installed_triggers(conn, base_prefix)
    result = "unchanged"
    stale = []
    defs = render_blog_triggers(base_prefix, blog, watch)
    for d in defs:
        have = installed.get(d.name)
        if have is None:
            conn.exec_driver_sql(d.create_sql)
            result = "installed" if result == "unchanged" else result
        elif _norm(have[1]) != _norm(d.body) or have[0] != d.table:
            stale.append(d)
    if stale:
        _replace_triggers(conn, base_prefix, blog, stale)
        result = "upgraded"
    unneeded = _unneeded(installed, base_prefix, blog.blog_id, defs)
    if unneeded:
        _drop_triggers(conn, unneeded)
        result = "upgraded"
    conn.commit()
    return result


def _drop_triggers(conn: sa.Connection, names: Sequence[str]) -> None:
    conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")  # as _replace_triggers: never queue the shop
    try:
        for name in names:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
    finally:
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")


def replace_trigger_sql(d: TriggerDef) -> str:
    """MariaDB (10.1.4+): replace a trigger in one atomic statement (pure)."""
    if not d.create_sql.startswith("CREATE TRIGGER "):
        raise ValueError(f"unexpected trigger DDL for {d.name}")
    return "CREATE OR REPLACE TRIGGER " + d.create_sql[len("CREATE TRIGGER ") :]


def _replace_triggers(conn: sa.Connection, base_prefix: str, blog: Blog, stale: Sequence[TriggerDef]) -> None:
    # Short metadata-lock wait: a DDL waiting for the lock would queue every shop statement on
    # postmeta behind it; if the shop is busy, give up and retry at the next discovery.
    conn.exec_driver_sql("SET SESSION lock_wait_timeout = 5")
    try:
        if server_info(conn)["flavor"] == "mariadb":
            for d in stale:
                conn.exec_driver_sql(replace_trigger_sql(d))
        else:
            _replace_triggers_mysql(conn, base_prefix, blog, stale)
    finally:
        conn.exec_driver_sql("SET SESSION lock_wait_timeout = DEFAULT")


def _replace_triggers_mysql(
    conn: sa.Connection, base_prefix: str, blog: Blog, stale: Sequence[TriggerDef]
) -> None:
    """MySQL 8 has no CREATE OR REPLACE TRIGGER. UNTESTED (no MySQL server in the test harness).

    DROP + CREATE under ``LOCK TABLES ... WRITE``: no shop write runs between them, and never two
    triggers for one event (two would capture every change twice). A crash of syncd's connection
    between the two statements releases the lock and leaves that event without a trigger until
    the next discovery or start (which finds the blog 'partial' and creates it): the one window
    this server cannot close without a second trigger. See ARCHITECTURE.md, deviations.
    """
    tables = sorted({f"`{d.table}`" for d in stale})  # postmeta, and posts / term_relationships
    conn.exec_driver_sql(
        f"LOCK TABLES {', '.join(f'{t} WRITE' for t in tables)}, {table(base_prefix, 'syncd_change')} WRITE"
    )
    try:
        for d in stale:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{d.name}`")
            conn.exec_driver_sql(d.create_sql)
    finally:
        conn.exec_driver_sql("UNLOCK TABLES")


def meta_trigger_names(base_prefix: str, blog_id: int) -> tuple[str, ...]:
    """The names of one blog's three postmeta capture triggers."""
    return tuple(trigger_name(base_prefix, blog_id, e) for e in EVENTS)


def drop_meta_triggers(conn: sa.Connection, base_prefix: str, blog_id: int) -> None:
    """Drop one blog's postmeta capture triggers (capture hands postmeta to the poll snapshot)."""
    _drop_triggers(conn, meta_trigger_names(base_prefix, blog_id))
    conn.commit()


def uninstall_blog_triggers(conn: sa.Connection, base_prefix: str, blog_id: int) -> list[str]:
    dropped = []
    for name in blog_trigger_names(base_prefix, blog_id):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
        dropped.append(name)
    conn.commit()
    return dropped


def uninstall_all_triggers(conn: sa.Connection, base_prefix: str) -> list[str]:
    """Drop every syncd trigger of this network, including those of blogs that no longer exist."""
    names = sorted(installed_triggers(conn, base_prefix))
    for name in names:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{name}`")
    conn.commit()
    return names


def install_all(config: object, *, out: object = None) -> int:
    """``syncd install``: create syncd's tables and install or upgrade the triggers of every usable blog.

    Idempotent: running it again changes nothing. Exit status 0 when every usable blog has current
    triggers, 1 otherwise (the reasons are printed and logged).
    """
    import sys

    from syncd import catalog, poll, schema
    from syncd.fields import realtime
    from syncd.network import discover

    out = out or sys.stdout
    base = config.database.table_prefix  # type: ignore[attr-defined]
    engine = config.database.make_engine()  # type: ignore[attr-defined]
    failed = 0
    try:
        with engine.connect() as conn:
            schema.ensure_schema(conn, base)
            # [sync] exclude_skus, for this and every later membership refresh (catalog.mark_excluded).
            catalog.store_exclusions(conn, base, config.sync.exclude_skus)  # type: ignore[attr-defined]
            conn.commit()
            network = discover(conn, base)
            conn.rollback()
            selection = config.blogs  # type: ignore[attr-defined]
            groups = realtime.realtime_groups(config)
            installed = installed_triggers(conn, base)  # each blog's hand-over reads its own entries
            conn.rollback()
            for blog in network.blogs:
                if not selection.selects(blog.blog_id):
                    # [blogs] include/exclude: never read or written, and no trigger of ours there.
                    uninstall_blog_triggers(conn, base, blog.blog_id)
                    print(f"blog {blog.blog_id} ({blog.prefix}): excluded by configuration", file=out)
                    continue
                if not blog.usable:
                    print(
                        f"blog {blog.blog_id} ({blog.prefix}): left alone: {'; '.join(blog.problems) or 'WooCommerce not active'}",
                        file=out,
                    )
                    continue
                try:
                    watch = realtime.watch_for(config, blog.blog_id, groups)
                    if not watch.meta_triggers:  # binlog capture: the poll snapshot takes over, exactly
                        found = poll.take_over_from_triggers(conn, base, blog, watch.meta_keys, installed)
                        if found is not None:
                            print(
                                f"blog {blog.blog_id} ({blog.prefix}): postmeta now compared by binlog capture",
                                file=out,
                            )
                    elif (
                        poll.hand_back_to_triggers(conn, base, blog, watch, installed) is not None
                    ):  # after poll/binlog
                        print(
                            f"blog {blog.blog_id} ({blog.prefix}): postmeta captured by triggers again",
                            file=out,
                        )
                    outcome = install_blog_triggers(conn, base, blog, watch)
                    catalog.refresh_members(conn, base, blog, settings=selection.for_blog(blog.blog_id))
                    conn.commit()
                    print(
                        f"blog {blog.blog_id} ({blog.prefix}): triggers {outcome} (v{TRIGGER_VERSION})",
                        file=out,
                    )
                except Exception as exc:  # noqa: BLE001 - report every blog, then fail
                    conn.rollback()
                    failed += 1
                    print(f"blog {blog.blog_id} ({blog.prefix}): FAILED: {exc}", file=out)
    finally:
        engine.dispose()
    return 1 if failed else 0


def uninstall_all(config: object, *, keep_history: bool = False, out: object = None) -> int:
    """``syncd uninstall``: drop every syncd trigger, then syncd's tables. WooCommerce data is untouched.

    Triggers go first so that no shop write ever meets a trigger whose change table is gone.
    Pending changes not yet applied are lost with the change table: the count is printed.
    """
    import sys

    from syncd import queue, schema

    out = out or sys.stdout
    base = config.database.table_prefix  # type: ignore[attr-defined]
    engine = config.database.make_engine()  # type: ignore[attr-defined]
    try:
        with engine.connect() as conn:
            names = uninstall_all_triggers(conn, base)
            print(f"dropped {len(names)} triggers", file=out)
            if schema.schema_present(conn, base):
                n, _ = queue.backlog(conn, base)
                if n:
                    print(f"warning: {n} captured changes were still pending and are discarded", file=out)
            dropped = schema.drop_schema(conn, base, keep_history=keep_history)
            print(f"dropped tables: {', '.join(dropped)}", file=out)
    finally:
        engine.dispose()
    return 0
