"""``syncd check``: can syncd run against this database, and what will it see?

Read-only. Three steps, kept apart so the middle one can be tested without a server:

1. :func:`gather` (I/O): server version and variables, the user's grants (``SHOW GRANTS``), the
   network (:func:`syncd.network.discover`), per-blog product counts and duplicate SKUs;
2. :func:`build_report` (pure): turns those facts into a report (plain dict, the ``--json`` output)
   with an exit status;
3. :func:`render_text` (pure): the table for people.

Exit status is a bitmask (like pt-table-checksum), so a monitor can tell the causes apart:

====  ======================================================================================
 0    syncd can run
 1    FATAL: not a multisite network under the configured prefix (nothing else checked);
      the CLI also exits 1 when the server cannot be reached or refuses the login; also
      ``[fields]`` the daemon refuses (a price group between blogs whose currency differs)
 4    a privilege syncd needs on the database is missing
 8    capture.mode = "trigger" but triggers cannot be created here; capture.mode = "binlog"
      without a ROW binary log the user may read
16    fewer than two usable WooCommerce blogs: nothing to keep in sync
32    with --strict only: warnings (blogs left alone, duplicate SKUs, unreadable options...)
====  ======================================================================================

(2 is left to usage errors, 78 to configuration errors: see :mod:`syncd.cli`.)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa

from syncd import catalog
from syncd.config import Config
from syncd.db import redact_url, server_info, table
from syncd.fields import realtime
from syncd.log import get_logger
from syncd.network import Blog, Network, NotMultisiteError, discover

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PRIVILEGES = 4
EXIT_CAPTURE = 8
EXIT_NO_BLOGS = 16
EXIT_WARNINGS = 32

#: What syncd does on the database: read and write shop rows, create/alter/drop its own tables.
REQUIRED_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "INDEX", "ALTER")
#: Needed for trigger capture only; without it syncd falls back to polling (capture.mode = auto).
TRIGGER_PRIVILEGE = "TRIGGER"
#: Trigger capture upgrades an outdated trigger under LOCK TABLES (so no write slips between DROP
#: and CREATE): without it a newer syncd keeps the old triggers and says so. Warned, not fatal.
LOCK_TABLES_PRIVILEGE = "LOCK TABLES"

#: The runtime user's privileges (``syncd run`` with ``sync.install_triggers = false``): DML only.
RUNTIME_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
#: The installer's (``syncd install``, once and after an upgrade): also DDL on syncd's own tables
#: and the capture triggers.
INSTALLER_PRIVILEGES = (*REQUIRED_PRIVILEGES, LOCK_TABLES_PRIVILEGE, TRIGGER_PRIVILEGE)
#: Read-only commands (audit, status, history, the dry runs before install: temporary tables).
READ_ONLY_PRIVILEGES = ("SELECT",)

#: The oldest servers syncd supports, and why (README "Requirements"): several triggers per table
#: and event, WEIGHT_STRING under utf8mb4 collations, a temporary table read twice in one
#: statement (the dry runs before install), DATETIME(6). Tested: MariaDB 10.11; MySQL 8.0+ not tested.
MINIMUM_VERSION = {"mariadb": (10, 4), "mysql": (8, 0)}

log = get_logger(component="check")


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.11.18-MariaDB-0+deb12u1' -> (10, 11, 18)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def too_old(flavor: str, version: str) -> str | None:
    """Why this server is older than syncd supports (None: it is not)."""
    minimum = MINIMUM_VERSION.get(flavor)
    have = version_tuple(version)
    if minimum is None or not have or have[:2] >= minimum:
        return None
    name = "MariaDB" if flavor == "mariadb" else "MySQL"
    return (
        f"{name} {version} is older than syncd supports ({name} {'.'.join(map(str, minimum))}+): syncd relies "
        "on several triggers per table and event, WEIGHT_STRING under utf8mb4 collations and multi-statement "
        "round trips as these versions have them"
    )


def roles(grants: Grants) -> dict[str, bool]:
    """Which of syncd's roles this user can play."""
    return {
        "installer": all(grants.has(p) for p in INSTALLER_PRIVILEGES),
        "runtime": all(grants.has(p) for p in RUNTIME_PRIVILEGES),
        "read_only": all(grants.has(p) for p in READ_ONLY_PRIVILEGES),
    }


def config_file_warning(config: Config) -> str | None:
    """A warning when the configuration file holds a password and other users may read it."""
    import os
    import stat
    import tomllib

    from sqlalchemy.engine import make_url

    if not config.source:
        return None
    try:
        mode = os.stat(config.source).st_mode
        with open(config.source, "rb") as fh:
            url = (tomllib.load(fh).get("database") or {}).get("url") or ""
        password = make_url(url).password if url else None
    except (OSError, ValueError, sa.exc.ArgumentError):
        return None
    if not password or not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    who = "every user" if mode & stat.S_IROTH else "its group"
    return (
        f"{config.source} holds the database password and {who} may read it (mode {stat.S_IMODE(mode):04o}): "
        f"chmod 600 {config.source}, or keep the password in a credential (LoadCredential=db-password)"
    )


# --------------------------------------------------------------------------- grants (pure)
_GRANT_ON_RE = re.compile(
    r"^GRANT\s+(?P<privs>.+?)\s+ON\s+(?:(?:TABLE|FUNCTION|PROCEDURE|PACKAGE\s+BODY|PACKAGE)\s+)?"
    r"(?P<db>`(?:[^`]|``)*`|\*)\.(?P<tbl>`(?:[^`]|``)*`|\*)\s+TO\s",
    re.IGNORECASE | re.DOTALL,
)
_ALL = frozenset({"ALL", "ALL PRIVILEGES"})


@dataclass(frozen=True)
class Grants:
    """Privileges that apply to the whole database (global or database-level grants)."""

    on_database: frozenset[str]
    global_: frozenset[str]
    all_on_database: bool = False
    all_global: bool = False

    def has(self, privilege: str) -> bool:
        return self.all_on_database or privilege in self.on_database

    def has_global(self, privilege: str) -> bool:
        return self.all_global or privilege in self.global_


def _split_privileges(text: str) -> list[str]:
    """'SELECT, INSERT (`a`, `b`), ALL PRIVILEGES' -> ['SELECT', 'INSERT', 'ALL PRIVILEGES']."""
    out, depth, buf = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(buf))
            buf = []
            continue
        if depth == 0 and ch not in "()":
            buf.append(ch)
    out.append("".join(buf))
    return [" ".join(p.split()).upper() for p in out if p.strip()]


def _unquote(ident: str) -> str:
    return ident[1:-1].replace("``", "`") if ident.startswith("`") else ident


def db_pattern_matches(pattern: str, database: str) -> bool:
    """Whether a database name in a grant (LIKE-style: % and _ wildcards, backslash escapes) covers ``database``."""
    rx, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            rx.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        rx.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(rx), database, re.DOTALL) is not None


def parse_grants(lines: Iterable[str], database: str) -> Grants:
    """Fold ``SHOW GRANTS`` lines into the privileges that hold on every table of ``database``.

    Table- and column-level grants are ignored: syncd creates its own tables, so it needs
    database-wide privileges. Role grant lines (``GRANT `r` TO ...``) carry no privileges by
    themselves; MariaDB lists the current role's grants separately, and gather() expands MySQL's.
    """
    on_db: set[str] = set()
    glob: set[str] = set()
    all_db = all_glob = False
    for line in lines:
        m = _GRANT_ON_RE.match(line.strip())
        if not m or m.group("tbl") != "*":  # table/column-level grant, or a role grant
            continue
        privs = set(_split_privileges(m.group("privs")))
        if "PROXY" in privs:
            continue
        db = m.group("db")
        is_all = bool(privs & _ALL)
        if db == "*":
            glob |= privs
            on_db |= privs
            all_glob = all_glob or is_all
            all_db = all_db or is_all
        elif db_pattern_matches(_unquote(db), database):
            on_db |= privs
            all_db = all_db or is_all
    return Grants(frozenset(on_db), frozenset(glob), all_db, all_glob)


# --------------------------------------------------------------------------- facts (I/O)
@dataclass(frozen=True)
class BlogStats:
    products: int = 0
    variations: int = 0
    with_sku: int = 0
    managing_stock: int = 0


@dataclass(frozen=True)
class DuplicateSku:
    sku: str
    lang: str  # '' when the blog has no Polylang
    post_ids: tuple[int, ...]


@dataclass(frozen=True)
class CheckFacts:
    url: str  # redacted
    server: dict[str, Any]
    user: str
    variables: dict[str, Any]
    grants: Grants
    network: Network | None = None
    network_error: str | None = None
    stats: dict[int, BlogStats] = field(default_factory=dict)
    duplicates: dict[int, tuple[DuplicateSku, ...]] = field(default_factory=dict)
    #: Link languages per blog (Polylang languages, else the configured or locale language).
    languages: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: Corrupt Polylang post_translations groups per blog (skipped by syncd).
    translation_problems: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: Per blog, (post, meta key, rows) of products holding a watched key more than once.
    duplicate_rows: dict[int, tuple[tuple[int, str, int], ...]] = field(default_factory=dict)
    #: What field passes left for the leading daemon (syncd.fields.pending; None: syncd not
    #: installed), and whether a daemon leads now.
    field_work: dict[str, Any] | None = None
    leader_held: bool = False


def sql_blog_stats(prefix: str) -> str:
    """Products and variations of one blog (not trashed, not auto-drafts), with SKU, managing stock."""
    posts, meta = table(prefix, "posts"), table(prefix, "postmeta")
    return (
        "SELECT p.post_type, COUNT(*) AS n, "  # noqa: S608 - validated prefix
        f"SUM(EXISTS(SELECT 1 FROM {meta} m WHERE m.post_id = p.ID AND m.meta_key = '_sku' "
        "AND m.meta_value <> '')) AS with_sku, "
        f"SUM(EXISTS(SELECT 1 FROM {meta} m WHERE m.post_id = p.ID AND m.meta_key = '_manage_stock' "
        # wc_string_to_bool() (syncd.woo.manages_stock): 'yes', 'true', '1', any case.
        "AND BINARY LOWER(m.meta_value) IN ('yes', 'true', '1'))) AS managing_stock "
        f"FROM {posts} p WHERE p.post_type IN ('product', 'product_variation') "
        "AND p.post_status NOT IN ('trash', 'auto-draft') GROUP BY p.post_type"
    )


def _language_of(prefix: str) -> str:
    return (
        "SELECT tr.object_id, MIN(t.slug) AS lang "  # noqa: S608 - validated prefix
        f"FROM {table(prefix, 'term_relationships')} tr "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        "WHERE tt.taxonomy = 'language' GROUP BY tr.object_id"
    )


def sql_duplicate_skus(prefix: str, per_language: bool) -> str:
    """SKUs held by more than one product/variation of a blog.

    Grouping is done by the server on the ``_sku`` meta_value column, so equality follows the
    column's collation (utf8mb4_unicode_520_ci: 'mug' = 'MUG', trailing spaces ignored) just as
    WooCommerce's own uniqueness check (``lookup.sku = %s``, same collation) and Polylang for
    WooCommerce's per-language check (``meta_value = %s``) compare. Trashed posts do not count,
    as in WooCommerce. On Polylang blogs the key is SKU + language; a variation without its own
    language term takes its parent's.
    """
    posts, meta = table(prefix, "posts"), table(prefix, "postmeta")
    if per_language:
        lang = "COALESCE(own.lang, par.lang, '')"
        joins = (
            f"LEFT JOIN ({_language_of(prefix)}) own ON own.object_id = p.ID "
            f"LEFT JOIN ({_language_of(prefix)}) par ON par.object_id = p.post_parent "
        )
        group = "m.meta_value, " + lang
    else:
        lang, joins, group = "''", "", "m.meta_value"
    return (
        f"SELECT MIN(m.meta_value) AS sku, {lang} AS lang, "  # noqa: S608 - validated prefix
        "GROUP_CONCAT(DISTINCT p.ID ORDER BY p.ID SEPARATOR ',') AS ids "
        f"FROM {posts} p JOIN {meta} m ON m.post_id = p.ID AND m.meta_key = '_sku' {joins}"
        "WHERE p.post_type IN ('product', 'product_variation') AND p.post_status <> 'trash' "
        f"AND m.meta_value <> '' GROUP BY {group} HAVING COUNT(DISTINCT p.ID) > 1 ORDER BY sku"
    )


def read_grants(conn: sa.Connection, flavor: str) -> list[str]:
    """``SHOW GRANTS`` for the session, with MySQL 8's active roles expanded (MariaDB lists them itself)."""
    lines = [str(r[0]) for r in conn.exec_driver_sql("SHOW GRANTS")]
    if flavor == "mysql":
        try:
            roles = conn.exec_driver_sql("SELECT CURRENT_ROLE()").scalar_one()
            if roles and str(roles).upper() != "NONE":
                # The role list comes from the server as quoted identifiers (`r`@`%`, ...): not user data.
                lines = [
                    str(r[0]) for r in conn.exec_driver_sql(f"SHOW GRANTS FOR CURRENT_USER() USING {roles}")
                ]
        except sa.exc.DBAPIError:
            conn.rollback()
    return lines


def gather(conn: sa.Connection, config: Config) -> CheckFacts:
    """Everything check needs from the server (read-only)."""
    server = dict(server_info(conn))
    database, user = conn.exec_driver_sql("SELECT DATABASE(), CURRENT_USER()").one()
    server["database"] = database
    # SHOW VARIABLES rather than @@name: a variable a server version dropped is simply absent.
    shown = {
        str(name).lower(): str(value).upper()
        for name, value in conn.execute(
            sa.text(
                "SHOW VARIABLES WHERE Variable_name IN "
                "('log_bin', 'log_bin_trust_function_creators', 'read_only', 'binlog_format')"
            )
        )
    }
    variables = {
        k: shown.get(k) in ("ON", "1") for k in ("log_bin", "log_bin_trust_function_creators", "read_only")
    }
    variables["binlog_row"] = shown.get("binlog_format") == "ROW"
    grants = parse_grants(read_grants(conn, server["flavor"]), database or "")
    url = redact_url(config.database.url)
    try:
        network = discover(conn, config.database.table_prefix)
    except NotMultisiteError as exc:
        return CheckFacts(url, server, user, variables, grants, network_error=str(exc))

    stats: dict[int, BlogStats] = {}
    duplicates: dict[int, tuple[DuplicateSku, ...]] = {}
    languages: dict[int, tuple[str, ...]] = {}
    translation_problems: dict[int, tuple[str, ...]] = {}
    duplicate_rows: dict[int, tuple[tuple[int, str, int], ...]] = {}
    for blog in network.blogs:
        if not blog.woocommerce or _missing_any(blog, ("posts", "postmeta")):
            continue
        stats[blog.blog_id] = _blog_stats(conn, blog)
        duplicate_rows[blog.blog_id] = tuple(
            (int(p), _text(k), int(n))
            for p, k, n in conn.exec_driver_sql(catalog.duplicate_meta_sql(blog.prefix))
        )
        per_language = blog.polylang and not _missing_any(
            blog, ("term_relationships", "term_taxonomy", "terms")
        )
        duplicates[blog.blog_id] = tuple(
            DuplicateSku(
                sku=_text(sku),
                lang=_text(lang or ""),
                post_ids=tuple(int(i) for i in _text(ids).split(",") if i),
            )
            for sku, lang, ids in conn.execute(sa.text(sql_duplicate_skus(blog.prefix, per_language)))
        )
        if per_language:
            languages[blog.blog_id] = tuple(sorted(catalog.blog_language_slugs(conn, blog)))
            translation_problems[blog.blog_id] = tuple(catalog.translation_problems(conn, blog))
        else:
            languages[blog.blog_id] = (catalog.blog_language(blog, config.blogs.for_blog(blog.blog_id)),)
    work, leader = _field_work(conn, config.database.table_prefix, database or "")
    return CheckFacts(
        url,
        server,
        user,
        variables,
        grants,
        network,
        None,
        stats,
        duplicates,
        languages,
        translation_problems,
        duplicate_rows,
        work,
        leader,
    )


def _field_work(conn: sa.Connection, base: str, database: str) -> tuple[dict[str, Any] | None, bool]:
    """Deferred field writes and price checks waiting (syncd.fields.pending), and whether a daemon
    holds the leader lock: they are finished only while one leads."""
    from syncd import schema
    from syncd.daemon import lock_name
    from syncd.fields import pending

    if not schema.schema_present(conn, base):
        return None, False
    held = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (lock_name(database, base),)).scalar()
    return pending.field_work(conn, base), held is not None


def _missing_any(blog: Blog, suffixes: Sequence[str]) -> bool:
    return any(blog.prefix + s in blog.missing_tables for s in suffixes)


def _blog_stats(conn: sa.Connection, blog: Blog) -> BlogStats:
    counts = {"product": (0, 0, 0), "product_variation": (0, 0, 0)}
    for post_type, n, with_sku, managing in conn.execute(sa.text(sql_blog_stats(blog.prefix))):
        counts[_text(post_type)] = (int(n or 0), int(with_sku or 0), int(managing or 0))
    p, v = counts["product"], counts["product_variation"]
    return BlogStats(products=p[0], variations=v[0], with_sku=p[1] + v[1], managing_stock=p[2] + v[2])


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else str(value)


# --------------------------------------------------------------------------- report (pure)
def build_report(facts: CheckFacts, config: Config, *, strict: bool = False) -> dict[str, Any]:
    """The check's verdict as plain data (also the ``--json`` document)."""
    exit_code = EXIT_OK
    errors: list[str] = []
    warnings: list[str] = []
    database = facts.server.get("database") or ""

    privileges = {
        p: facts.grants.has(p) for p in (*REQUIRED_PRIVILEGES, LOCK_TABLES_PRIVILEGE, TRIGGER_PRIVILEGE)
    }
    installs = config.sync.install_triggers
    required = REQUIRED_PRIVILEGES if installs else RUNTIME_PRIVILEGES
    missing = [p for p in required if not privileges[p]]
    if missing:
        exit_code |= EXIT_PRIVILEGES
        grant = ", ".join(INSTALLER_PRIVILEGES if installs else RUNTIME_PRIVILEGES)
        errors.append(
            f"user {facts.user} lacks {', '.join(missing)} on database `{database}`: "
            f"GRANT {grant} ON `{database}`.* TO <user>"
        )
    old_server = too_old(str(facts.server.get("flavor") or ""), str(facts.server.get("version") or ""))
    if old_server:
        exit_code |= EXIT_FATAL
        errors.append(old_server)
    file_warning = config_file_warning(config)
    if file_warning:
        warnings.append(file_warning)

    has_super = facts.grants.has_global("SUPER")
    binlog = facts.variables.get("log_bin", False)
    trust = facts.variables.get("log_bin_trust_function_creators", False)
    if not privileges[TRIGGER_PRIVILEGE]:
        trigger_ok, trigger_why = False, f"the user lacks the TRIGGER privilege on `{database}`"
    elif binlog and not (trust or has_super):
        trigger_ok, trigger_why = (
            False,
            "binary logging is on, log_bin_trust_function_creators is OFF and the user lacks SUPER "
            "(set log_bin_trust_function_creators = ON, or grant SUPER)",
        )
    else:
        trigger_ok, trigger_why = True, "the user may create triggers"
    mode = config.capture.mode
    if mode == "binlog":
        effective, trigger_why = _binlog_capture(facts, config, trigger_ok, trigger_why, errors)
        if effective is None:
            exit_code |= EXIT_CAPTURE
    elif mode == "poll":
        effective = "poll"
    elif not installs:
        # The runtime role: the installer created the triggers (`syncd install`); this user never does.
        effective, trigger_why = (
            "trigger",
            "sync.install_triggers = false: the triggers come from `syncd install`",
        )
    elif trigger_ok:
        effective = "trigger"
    elif mode == "auto":
        effective = "poll"
        warnings.append(f"capture falls back to polling: {trigger_why}")
    else:
        effective = None
        exit_code |= EXIT_CAPTURE
        errors.append(f'capture.mode = "trigger" but triggers cannot be created: {trigger_why}')
    if effective == "poll":
        # Realtime field groups with post columns or terms need triggers: the daemon refuses them.
        refused = realtime.poll_refusals(realtime.realtime_groups(config))
        if refused:
            exit_code |= EXIT_CAPTURE
            errors.extend(refused)
    if effective == "trigger" and installs and not privileges[LOCK_TABLES_PRIVILEGE]:
        warnings.append(
            f"the user lacks LOCK TABLES on `{database}`: triggers of an older syncd cannot be upgraded "
            f"in place (GRANT LOCK TABLES ON `{database}`.* TO <user>)"
        )
    if facts.variables.get("read_only") and not has_super:
        warnings.append(
            "the server is read-only (a replica?): syncd's writes will be refused until it is not"
        )

    blogs_out: list[dict[str, Any]] = []
    usable_selected = 0
    network = facts.network
    if facts.network_error:
        exit_code |= EXIT_FATAL
        errors.append(facts.network_error)
    if network is not None:
        warnings.extend(f"network: {p}" for p in network.problems)
        for blog in network.blogs:
            entry = _blog_entry(blog, facts, config)
            if entry["status"] == "usable":
                usable_selected += 1
            blogs_out.append(entry)
            for p in blog.problems:
                warnings.append(f"blog {blog.blog_id}: {p}")
            for w in blog.warnings:
                warnings.append(f"blog {blog.blog_id}: {w}")
            for p in facts.translation_problems.get(blog.blog_id, ()):
                warnings.append(f"blog {blog.blog_id}: {p}: syncd skips this translation data")
            for post, key, n in facts.duplicate_rows.get(blog.blog_id, ()):
                warnings.append(
                    f"blog {blog.blog_id}: post {post} has {n} {key} rows: unsafe (each sale would count "
                    "twice); syncd skips it until only one is left"
                )
            for d in facts.duplicates.get(blog.blog_id, ()):
                where = f" (language {d.lang})" if d.lang else ""
                warnings.append(
                    f"blog {blog.blog_id}: duplicate SKU {d.sku!r}{where} on posts "
                    f"{', '.join(map(str, d.post_ids))}: syncd cannot tell which one to link"
                )
        for s in network.skipped:
            blogs_out.append(
                {
                    "blog_id": s.blog_id,
                    "prefix": s.prefix,
                    "site_id": s.site_id,
                    "domain": s.domain,
                    "path": s.path,
                    "status": "skipped (" + ", ".join(s.reasons) + ")",
                }
            )
        blogs_out.sort(key=lambda b: b["blog_id"])
        fields_errors = _fields_problems(network, config)
        if fields_errors:
            exit_code |= EXIT_FATAL
            errors.extend(fields_errors)
        if usable_selected < 2:
            exit_code |= EXIT_NO_BLOGS
            errors.append(
                f"{usable_selected} usable WooCommerce blog(s) under prefix {network.base_prefix!r}: "
                "syncd needs at least two to keep in sync"
            )
    field_warning = _field_work_warning(facts)
    if field_warning:
        warnings.append(f"fields: {field_warning}")
    if strict and warnings:
        exit_code |= EXIT_WARNINGS

    return {
        "ok": exit_code == EXIT_OK,
        "exit_status": exit_code,
        "exit_code": exit_code,  # the same, under its former name
        "errors": errors,
        "warnings": warnings,
        "database": {
            "url": facts.url,
            "version": facts.server.get("version"),
            "flavor": facts.server.get("flavor"),
            "database": database,
            "user": facts.user,
            "log_bin": binlog,
            "log_bin_trust_function_creators": trust,
            "read_only": bool(facts.variables.get("read_only")),
        },
        "privileges": {**privileges, "SUPER": has_super},
        "roles": roles(facts.grants),
        "capture": {
            "mode": mode,
            "effective": effective,
            "triggers_possible": trigger_ok,
            "reason": trigger_why,
        },
        "network": {
            "base_prefix": config.database.table_prefix,
            "live_blogs": len(network.blogs) if network else 0,
            "skipped_blogs": len(network.skipped) if network else 0,
            "usable_blogs": usable_selected,
        },
        "blogs": blogs_out,
        "field_work": None
        if facts.field_work is None
        else {**facts.field_work, "leader_held": facts.leader_held, "warning": field_warning},
    }


def _field_work_warning(facts: CheckFacts) -> str | None:
    from syncd.fields import pending

    return pending.warning(facts.field_work, facts.leader_held)


def _fields_problems(network: Network, config: Config) -> list[str]:
    """``[fields]`` the daemon would refuse at start-up (syncd.fields.checks)."""
    from syncd.fields.checks import fields_problems

    usable = {b.blog_id: b for b in network.usable_blogs() if config.blogs.selects(b.blog_id)}
    return fields_problems(config, usable)


def _blog_entry(blog: Blog, facts: CheckFacts, config: Config) -> dict[str, Any]:
    if not config.blogs.selects(blog.blog_id):
        status = "excluded by configuration"
    elif blog.problems:
        status = "left alone"
    elif not blog.woocommerce:
        status = "no WooCommerce"
    else:
        status = "usable"
    stats = facts.stats.get(blog.blog_id)
    return {
        "blog_id": blog.blog_id,
        "prefix": blog.prefix,
        "site_id": blog.site_id,
        "domain": blog.domain,
        "path": blog.path,
        "name": blog.name,
        "status": status,
        "woocommerce": blog.woocommerce,
        "woocommerce_version": blog.woocommerce_version or None,
        "polylang": blog.polylang,
        "polylang_wc": blog.polylang_wc,
        "languages": list(facts.languages.get(blog.blog_id, ())),
        "translations_share_stock": catalog.shares_stock(blog, config.blogs.for_blog(blog.blog_id)),
        "translation_problems": list(facts.translation_problems.get(blog.blog_id, ())),
        "notify_no_stock_amount": blog.notify_no_stock_amount,
        "hide_out_of_stock": blog.hide_out_of_stock,
        "counts": None
        if stats is None
        else {
            "products": stats.products,
            "variations": stats.variations,
            "with_sku": stats.with_sku,
            "managing_stock": stats.managing_stock,
        },
        "duplicate_skus": [
            {"sku": d.sku, "lang": d.lang or None, "post_ids": list(d.post_ids)}
            for d in facts.duplicates.get(blog.blog_id, ())
        ],
        "duplicate_meta_rows": [
            {"post_id": p, "meta_key": k, "rows": n} for p, k, n in facts.duplicate_rows.get(blog.blog_id, ())
        ],
        "problems": list(blog.problems),
        "warnings": list(blog.warnings),
    }


def _binlog_capture(
    facts: CheckFacts, config: Config, trigger_ok: bool, trigger_why: str, errors: list[str]
) -> tuple[str | None, str]:
    """capture.mode = "binlog": the binary log on in ROW format and readable by this user; triggers
    only for realtime groups with posts columns or terms. Returns (effective mode or None, reason)."""
    problems = []
    if not facts.variables.get("log_bin"):
        problems.append("the binary log is off (log_bin)")
    elif not facts.variables.get("binlog_row"):
        problems.append("binlog_format is not ROW")
    if not facts.grants.has_global("REPLICATION SLAVE"):
        problems.append(
            "the user may not read the binary log (GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* on MariaDB; "
            "REPLICATION SLAVE, REPLICATION CLIENT on MySQL)"
        )
    needs = sorted(
        name for name, g in realtime.realtime_groups(config).items() if g.post_columns or g.taxonomies
    )
    if needs and not trigger_ok and config.sync.install_triggers:
        problems.append(f"realtime {', '.join(needs)} need posts or terms triggers, and {trigger_why}")
    for p in problems:
        errors.append(f'capture.mode = "binlog": {p}')
    if problems:
        return None, "; ".join(problems)
    why = "postmeta compared where the binary log points"
    return "binlog", why + (f"; triggers for {', '.join(needs)}" if needs else "; no trigger")


# --------------------------------------------------------------------------- text (pure)
def render_text(report: dict[str, Any]) -> str:
    """The report as a page for people."""
    db = report["database"]
    lines = [
        f"Server:     {db['flavor'] or '?'} {db['version'] or '?'}  ({db['url']})",
        f"Database:   {db['database']}   user {db['user']}",
        "Binary log: "
        + (
            "on, log_bin_trust_function_creators="
            + ("ON" if db["log_bin_trust_function_creators"] else "OFF")
            if db["log_bin"]
            else "off"
        )
        + ("   READ-ONLY" if db["read_only"] else ""),
        "",
        "Privileges on the database:",
    ]
    privs = report["privileges"]
    lines.append(
        "  "
        + "  ".join(
            f"{p} {'yes' if privs[p] else 'NO'}"
            for p in (*REQUIRED_PRIVILEGES, LOCK_TABLES_PRIVILEGE, TRIGGER_PRIVILEGE)
        )
    )
    if db["log_bin"]:
        lines.append(
            f"  SUPER {'yes' if privs['SUPER'] else 'no'} (needed for triggers while binary logging is on)"
        )
    lines.append("Roles:      " + describe_roles(report["roles"]))
    cap = report["capture"]
    lines += [
        "",
        f"Capture:    mode {cap['mode']} -> {cap['effective'] or 'NOT POSSIBLE'} ({cap['reason']})",
        "",
    ]
    net = report["network"]
    lines.append(
        f"Network (base prefix {net['base_prefix']}): {net['live_blogs']} live blog(s), "
        f"{net['usable_blogs']} usable, {net['skipped_blogs']} skipped"
    )
    if report["blogs"]:
        header = (
            "BLOG",
            "PREFIX",
            "SITE",
            "WOOCOMMERCE",
            "POLYLANG",
            "LANGUAGES",
            "PRODUCTS",
            "VARIATIONS",
            "SKU",
            "MANAGED",
            "STATUS",
        )
        rows = [header]
        for b in report["blogs"]:
            counts = b.get("counts") or {}
            wc = b.get("woocommerce")
            poly = b.get("polylang")
            rows.append(
                (
                    str(b["blog_id"]),
                    b["prefix"],
                    f"{b['domain']}{b['path']}",
                    "-" if wc is None else (b.get("woocommerce_version") or "active") if wc else "no",
                    "-" if poly is None else ("yes+wc" if b.get("polylang_wc") else "yes") if poly else "no",
                    ",".join(b.get("languages") or ())
                    + (" (shared stock)" if b.get("translations_share_stock") else "")
                    or "-",
                    str(counts.get("products", "")),
                    str(counts.get("variations", "")),
                    str(counts.get("with_sku", "")),
                    str(counts.get("managing_stock", "")),
                    b["status"],
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    fw = report.get("field_work")
    if fw and (fw["deferred"]["pending"] or fw["checks"]["pending"]):
        from syncd.fields import pending

        leads = "a daemon leads" if fw["leader_held"] else "NO daemon leads"
        lines += ["", f"Field work: {pending.describe(fw)} ({leads})"]
    if report["errors"]:
        lines += ["", "Errors (syncd cannot run):"] + [f"  - {e}" for e in report["errors"]]
    if report["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in report["warnings"]]
    lines += [
        "",
        f"Result: {'OK, syncd can run' if report['ok'] else 'NOT OK'} (exit status {report['exit_code']})",
    ]
    return "\n".join(lines) + "\n"


def describe_roles(r: dict[str, bool]) -> str:
    can = []
    if r["installer"]:
        can.append("installer (syncd install)")
    if r["runtime"]:
        can.append("runtime (syncd run with sync.install_triggers = false)")
    if r["read_only"]:
        can.append("read-only (audit, status, history, dry runs)")
    return "this user can be " + ", ".join(can) if can else "this user can play none of syncd's roles"


# --------------------------------------------------------------------------- entry point
def run_check(
    config: Config, *, json_output: bool = False, out: TextIO = sys.stdout, strict: bool = False
) -> int:
    """Connect, check, print the report (text or JSON) to ``out``; return the exit status bitmask.

    Connection failures (unreachable server, wrong password, unknown database) are raised as the
    driver's error for the caller to report: there is nothing else to check without a connection.
    """
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            facts = gather(conn, config)
    finally:
        engine.dispose()
    report = build_report(facts, config, strict=strict)
    log.debug("check", exit_status=report["exit_code"], blogs=len(report["blogs"]))
    if json_output:
        out.write(json.dumps(report, indent=2, sort_keys=False) + "\n")
    else:
        out.write(render_text(report))
    return int(report["exit_code"])
