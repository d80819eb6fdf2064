"""The multisite network: live blogs, table prefixes, active plugins, per-blog stock options.

:func:`discover` reads, with a handful of statements whatever the number of blogs:

1. which tables exist under the base prefix (one ``information_schema`` query for all blogs);
2. ``{base}blogs``: live blogs (deleted=0, archived=0, spam=0); the others are reported as skipped;
3. ``{base}sitemeta`` ``active_sitewide_plugins`` for network-activated plugins;
4. each blog's options (``active_plugins``, the stock options, feature flags), in UNION ALL chunks.

Then, in pure functions, each blog gets its plugin state and the list of *problems* that make syncd
leave it alone (missing tables, unreadable ``active_plugins``, custom product tables). Nothing here
writes. Option values are read as bytes: PHP-serialized lengths count bytes, and a value that is not
UTF-8 must not stop discovery (it becomes a warning on that blog).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import phpserialize
import sqlalchemy as sa

from syncd.db import server_info, table, validate_prefix

#: Per-blog options syncd reads, with WooCommerce's defaults when the row is absent.
STOCK_OPTION_DEFAULTS: dict[str, str] = {
    "woocommerce_manage_stock": "yes",
    "woocommerce_notify_no_stock_amount": "0",
    "woocommerce_notify_low_stock_amount": "2",
    "woocommerce_hide_out_of_stock_items": "no",
    "woocommerce_hold_stock_minutes": "60",
    "woocommerce_attribute_lookup_enabled": "no",
    "woocommerce_attribute_lookup_direct_updates": "no",
    "woocommerce_product_lookup_table_is_generating": "",
    "woocommerce_version": "",
    "woocommerce_db_version": "",
    "gmt_offset": "0",
    "timezone_string": "",
    "WPLANG": "",
}

#: Currency and price display options (issue 10: a price group between blogs where they differ is
#: refused, syncd.fields.checks), with WooCommerce's defaults.
CURRENCY_OPTION_DEFAULTS: dict[str, str] = {
    "woocommerce_currency": "USD",
    "woocommerce_prices_include_tax": "no",
    "woocommerce_price_num_decimals": "2",
    "woocommerce_price_decimal_sep": ".",
    "woocommerce_price_thousand_sep": ",",
}
CURRENCY_OPTIONS: tuple[str, ...] = tuple(CURRENCY_OPTION_DEFAULTS)

#: Option that switches WooCommerce to its (experimental) custom product tables.
CUSTOM_PRODUCT_TABLES_OPTION = "woocommerce_feature_custom_product_tables_enabled"
#: Options read besides the stock options: plugin lists and flags that decide whether a blog is usable.
EXTRA_OPTIONS: tuple[str, ...] = ("active_plugins", CUSTOM_PRODUCT_TABLES_OPTION, "blogname")

#: Plugin main files, matched on the file name only so that a renamed folder
#: ("woocommerce-11.0.1/woocommerce.php", "polylang-pro/polylang.php") still counts.
WOOCOMMERCE_FILE = "woocommerce.php"
POLYLANG_FILE = "polylang.php"  # Polylang and Polylang Pro
POLYLANG_WC_FILE = "polylang-wc.php"  # Polylang for WooCommerce

#: Tables every blog has (WordPress core); without them the blog is broken or half-deleted.
CORE_TABLES: tuple[str, ...] = (
    "options",
    "posts",
    "postmeta",
    "terms",
    "term_taxonomy",
    "term_relationships",
    "termmeta",
)
#: WooCommerce tables syncd writes; required only where WooCommerce is active.
WOOCOMMERCE_TABLES: tuple[str, ...] = ("wc_product_meta_lookup",)
#: Present when WooCommerce's custom product tables were ever set up on the blog.
CUSTOM_PRODUCT_TABLE = "wc_products"

#: Blogs per UNION ALL statement when reading options: bounded statement size on big networks.
OPTIONS_CHUNK = 100

BLOG_FLAGS = ("deleted", "archived", "spam")


class NotMultisiteError(RuntimeError):
    """The base prefix has no ``{base}blogs`` table: not a multisite network (or the wrong prefix)."""


class SerializedDataError(ValueError):
    """A PHP-serialized value that cannot be read."""


def blog_prefix(base_prefix: str, blog_id: int) -> str:
    """WordPress's get_blog_prefix(): blog 0 or 1 uses the base prefix, blog N uses base + N + '_'."""
    return base_prefix if blog_id in (0, 1) else f"{base_prefix}{blog_id}_"


@dataclass(frozen=True)
class Blog:
    blog_id: int
    prefix: str
    site_id: int = 1
    domain: str = ""
    path: str = "/"
    woocommerce: bool = False  # WooCommerce plugin active (per-blog or network-wide)
    polylang: bool = False  # Polylang or Polylang Pro active
    polylang_wc: bool = False  # Polylang for WooCommerce add-on active
    options: dict[str, str] = field(
        default_factory=dict
    )  # options read (STOCK_OPTION_DEFAULTS keys...), raw strings
    problems: tuple[
        str, ...
    ] = ()  # why syncd leaves this blog alone (empty = usable when WooCommerce is active)
    warnings: tuple[str, ...] = ()  # worth telling the operator, but the blog is still synced
    plugins: tuple[str, ...] = ()  # active plugin basenames (per-blog then network-wide), as text
    missing_tables: tuple[str, ...] = ()  # tables syncd needs on this blog that do not exist

    @property
    def usable(self) -> bool:
        return self.woocommerce and not self.problems

    def option(self, name: str) -> str:
        return self.options.get(name, STOCK_OPTION_DEFAULTS.get(name, CURRENCY_OPTION_DEFAULTS.get(name, "")))

    @property
    def notify_no_stock_amount(self) -> int:
        """absint(woocommerce_notify_no_stock_amount), as WooCommerce's validate_props reads it."""
        return _absint(self.option("woocommerce_notify_no_stock_amount"))

    @property
    def hide_out_of_stock(self) -> bool:
        return self.option("woocommerce_hide_out_of_stock_items") == "yes"

    @property
    def woocommerce_version(self) -> str:
        return self.option("woocommerce_version")

    @property
    def name(self) -> str:
        return self.options.get("blogname", "")


@dataclass(frozen=True)
class SkippedBlog:
    """A row of ``{base}blogs`` that WordPress itself no longer serves (deleted, archived or spam)."""

    blog_id: int
    prefix: str
    site_id: int
    domain: str
    path: str
    reasons: tuple[str, ...]  # subset of BLOG_FLAGS


@dataclass(frozen=True)
class Network:
    base_prefix: str
    blogs: tuple[Blog, ...]  # live blogs, usable or not, by blog_id
    skipped: tuple[SkippedBlog, ...] = ()
    server: dict[str, Any] = field(default_factory=dict)  # version, flavor, database
    problems: tuple[str, ...] = ()  # network-wide findings (e.g. unreadable active_sitewide_plugins)

    def usable_blogs(self) -> tuple[Blog, ...]:
        return tuple(b for b in self.blogs if b.usable)

    def blog(self, blog_id: int) -> Blog:
        for b in self.blogs:
            if b.blog_id == blog_id:
                return b
        raise KeyError(
            f"blog {blog_id} is not a live blog of the network with base prefix {self.base_prefix!r}"
        )

    @property
    def database(self) -> str:
        return str(self.server.get("database", ""))


# --------------------------------------------------------------------------- pure helpers
def _absint(text: str) -> int:
    """PHP absint(): leading integer part of the string, absolute value, 0 when none."""
    text = (text or "").strip()
    sign = 1
    digits = ""
    for i, ch in enumerate(text):
        if i == 0 and ch in "+-":
            sign = -1 if ch == "-" else 1
            continue
        if ch.isdigit():
            digits += ch
        else:
            break
    return abs(sign * int(digits)) if digits else 0


def skip_reasons(row: Mapping[str, Any]) -> tuple[str, ...]:
    """Which of deleted/archived/spam are set on a ``{base}blogs`` row (empty = live)."""
    return tuple(flag for flag in BLOG_FLAGS if int(row.get(flag) or 0) != 0)


def _php_loads(raw: bytes) -> Any:
    try:
        return phpserialize.loads(raw, decode_strings=False)
    except Exception as exc:  # noqa: BLE001 - phpserialize raises ValueError, but also others on odd input
        raise SerializedDataError(str(exc)) from None


def parse_active_plugins(raw: bytes | None) -> tuple[str, ...]:
    """The per-blog ``active_plugins`` option (PHP-serialized list of basenames) as text basenames.

    Missing or empty means none. Raises SerializedDataError when the value cannot be read.
    """
    if raw is None or raw.strip() == b"":
        return ()
    value = _php_loads(raw)
    if not isinstance(value, dict):
        raise SerializedDataError("not a serialized array")
    return tuple(_text(v) for v in value.values() if isinstance(v, bytes | str))


def parse_sitewide_plugins(raw: bytes | None) -> tuple[str, ...]:
    """The network option ``active_sitewide_plugins`` (array basename => timestamp): its keys."""
    if raw is None or raw.strip() == b"":
        return ()
    value = _php_loads(raw)
    if not isinstance(value, dict):
        raise SerializedDataError("not a serialized array")
    return tuple(_text(k) for k in value if isinstance(k, bytes | str))


def has_plugin(basenames: Iterable[str], filename: str) -> bool:
    """Whether one basename's file part is ``filename`` (what pll_is_plugin_active does, minus the folder)."""
    return any(b.rsplit("/", 1)[-1] == filename for b in basenames)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def decode_options(raw: Mapping[str, bytes | None]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Option bytes -> text; values that are not UTF-8 are kept (with U+FFFD) and reported."""
    out: dict[str, str] = {}
    warnings: list[str] = []
    for name, value in raw.items():
        if value is None:
            continue
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = value.decode("utf-8", errors="replace")
            warnings.append(
                f"option {name} holds bytes that are not valid UTF-8; read with replacement characters"
            )
    return out, tuple(warnings)


@dataclass(frozen=True)
class SitewidePlugins:
    """Network-activated plugins of one site (network), or why they could not be read."""

    plugins: tuple[str, ...] = ()
    error: str | None = None


def assess_blog(
    row: Mapping[str, Any],
    base_prefix: str,
    tables: frozenset[str] | set[str],
    raw_options: Mapping[str, bytes | None],
    sitewide: SitewidePlugins,
) -> Blog:
    """Build one live blog's :class:`Blog` from what discovery read (pure: no I/O).

    ``tables`` holds the names (normalised the way the caller compares them) of every table under
    the base prefix; ``raw_options`` the blog's option bytes by name (absent = no row).
    """
    blog_id = int(row["blog_id"])
    prefix = blog_prefix(base_prefix, blog_id)
    problems: list[str] = []
    warnings: list[str] = []

    missing_core = [prefix + t for t in CORE_TABLES if prefix + t not in tables]
    if len(missing_core) == len(CORE_TABLES):
        problems.append(
            f"the blog's tables are missing (no {prefix}options, {prefix}posts, ...): "
            "the blog row exists but its tables were dropped or never created"
        )
    elif missing_core:
        problems.append(f"tables missing: {', '.join(missing_core)}")

    text_options, option_warnings = decode_options(
        {k: v for k, v in raw_options.items() if k != "active_plugins"}
    )
    warnings.extend(option_warnings)

    blog_plugins: tuple[str, ...] = ()
    try:
        blog_plugins = parse_active_plugins(raw_options.get("active_plugins"))
    except SerializedDataError:
        problems.append(
            "active_plugins is not valid PHP-serialized data: cannot tell which plugins are active, "
            "so syncd leaves this blog alone"
        )
    if sitewide.error:
        problems.append(sitewide.error)
    plugins = blog_plugins + tuple(p for p in sitewide.plugins if p not in blog_plugins)

    woocommerce = has_plugin(plugins, WOOCOMMERCE_FILE)
    polylang = has_plugin(plugins, POLYLANG_FILE)
    polylang_wc = has_plugin(plugins, POLYLANG_WC_FILE)

    missing_wc = [prefix + t for t in WOOCOMMERCE_TABLES if prefix + t not in tables] if woocommerce else []
    if missing_wc and not missing_core:
        problems.append(
            f"WooCommerce is active but {', '.join(missing_wc)} is missing "
            "(WooCommerce not installed on this blog yet?)"
        )
    if prefix + CUSTOM_PRODUCT_TABLE in tables:
        problems.append(
            f"WooCommerce custom product tables are present ({prefix}{CUSTOM_PRODUCT_TABLE}): syncd only "
            "handles products stored in posts/postmeta"
        )
    elif text_options.get(CUSTOM_PRODUCT_TABLES_OPTION) == "yes":
        problems.append(
            f"WooCommerce custom product tables are enabled ({CUSTOM_PRODUCT_TABLES_OPTION} = yes): syncd only "
            "handles products stored in posts/postmeta"
        )

    return Blog(
        blog_id=blog_id,
        prefix=prefix,
        site_id=int(row.get("site_id") or 0),
        domain=_text(row.get("domain") or ""),
        path=_text(row.get("path") or ""),
        woocommerce=woocommerce,
        polylang=polylang,
        polylang_wc=polylang_wc,
        options=text_options,
        problems=tuple(problems),
        warnings=tuple(warnings),
        plugins=plugins,
        missing_tables=(*missing_core, *missing_wc),
    )


# --------------------------------------------------------------------------- SQL builders
def _like_prefix(prefix: str) -> str:
    """LIKE pattern matching names that start with ``prefix`` ('_' is a LIKE wildcard: escape it)."""
    return prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def sql_tables_with_prefix() -> str:
    """Every table of the current database whose name starts with :pattern (see _like_prefix)."""
    return (
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name LIKE :pattern ESCAPE '!'"
    )


def sql_blogs(base_prefix: str, site_id: int | None) -> str:
    where = " WHERE site_id = :site_id" if site_id is not None else ""
    return (
        "SELECT blog_id, site_id, domain, path, deleted, archived, spam "  # noqa: S608 - validated prefix
        f"FROM {table(base_prefix, 'blogs')}{where} ORDER BY blog_id"
    )


def sql_sitewide_plugins(base_prefix: str, site_id: int | None) -> str:
    where = " AND site_id = :site_id" if site_id is not None else ""
    return (
        "SELECT site_id, CAST(meta_value AS BINARY) AS meta_value "  # noqa: S608 - validated prefix
        f"FROM {table(base_prefix, 'sitemeta')} WHERE meta_key = 'active_sitewide_plugins'{where} "
        "ORDER BY meta_id"
    )


def sql_blog_options(prefixes: Sequence[tuple[int, str]], n_names: int) -> str:
    """One UNION ALL over the blogs' option tables; params :b0.. (blog ids) and :n0.. (option names).

    Names and values are cast to BINARY: the bytes as stored (PHP serialization counts bytes), and
    no "illegal mix of collations" when blogs' tables were created with different collations.
    """
    names = ", ".join(f":n{i}" for i in range(n_names))
    parts = [
        f"SELECT :b{i} AS blog_id, CAST(option_name AS BINARY) AS option_name, "  # noqa: S608
        f"CAST(option_value AS BINARY) AS option_value FROM {table(prefix, 'options')} "
        f"WHERE option_name IN ({names})"
        for i, (_blog_id, prefix) in enumerate(prefixes)
    ]
    return " UNION ALL ".join(parts)


# --------------------------------------------------------------------------- discovery (I/O)
def option_names() -> tuple[str, ...]:
    return (*STOCK_OPTION_DEFAULTS, *CURRENCY_OPTIONS, *EXTRA_OPTIONS)


def discover(conn: sa.Connection, base_prefix: str, site_id: int | None = None) -> Network:
    """Read the network behind ``conn`` whose base table prefix is ``base_prefix``.

    ``site_id`` limits discovery to one network of a multi-network install (default: every blog
    in ``{base}blogs``). Raises NotMultisiteError when ``{base}blogs`` does not exist.
    """
    base = validate_prefix(base_prefix)
    server = dict(server_info(conn))
    database, lctn = conn.exec_driver_sql("SELECT DATABASE(), @@lower_case_table_names").one()
    server["database"] = database
    fold = (lambda s: s.lower()) if int(lctn or 0) else (lambda s: s)  # noqa: E731

    tables = {
        fold(_text(name))
        for (name,) in conn.execute(sa.text(sql_tables_with_prefix()), {"pattern": _like_prefix(base)})
    }
    if fold(base + "blogs") not in tables:
        raise NotMultisiteError(_not_multisite_message(conn, base, database))

    params = {"site_id": site_id} if site_id is not None else {}
    rows = [dict(r._mapping) for r in conn.execute(sa.text(sql_blogs(base, site_id)), params)]
    skipped: list[SkippedBlog] = []
    live: list[dict[str, Any]] = []
    for row in rows:
        reasons = skip_reasons(row)
        if reasons:
            bid = int(row["blog_id"])
            skipped.append(
                SkippedBlog(
                    blog_id=bid,
                    prefix=blog_prefix(base, bid),
                    site_id=int(row["site_id"] or 0),
                    domain=_text(row["domain"] or ""),
                    path=_text(row["path"] or ""),
                    reasons=reasons,
                )
            )
        else:
            live.append(row)

    network_problems: list[str] = []
    sitewide: dict[int, SitewidePlugins] = {}
    if fold(base + "sitemeta") in tables:
        for sid, raw in conn.execute(sa.text(sql_sitewide_plugins(base, site_id)), params):
            try:
                sitewide[int(sid)] = SitewidePlugins(parse_sitewide_plugins(raw))
            except SerializedDataError:
                msg = (
                    f"network option active_sitewide_plugins of site {int(sid)} is not valid PHP-serialized data: "
                    "cannot tell which plugins are network-activated"
                )
                sitewide[int(sid)] = SitewidePlugins(error=msg)
                network_problems.append(msg)
    else:
        network_problems.append(f"table {base}sitemeta is missing: network-activated plugins cannot be seen")

    readable = [
        (int(r["blog_id"]), blog_prefix(base, int(r["blog_id"])))
        for r in live
        if fold(blog_prefix(base, int(r["blog_id"])) + "options") in tables
    ]
    raw_options = read_options(conn, readable)
    blogs = []
    for row in live:
        bid = int(row["blog_id"])
        blogs.append(
            assess_blog(
                row,
                base,
                _present_tables(tables, blog_prefix(base, bid), fold),
                raw_options.get(bid, {}),
                sitewide.get(int(row["site_id"] or 0), SitewidePlugins()),
            )
        )
    return Network(
        base_prefix=base,
        blogs=tuple(blogs),
        skipped=tuple(skipped),
        server=server,
        problems=tuple(network_problems),
    )


def _present_tables(tables: set[str], prefix: str, fold: Any) -> frozenset[str]:
    """The table names assess_blog looks for (spelled prefix + suffix) that exist, whatever the server's
    lower_case_table_names setting did to the names information_schema returned."""
    wanted = [prefix + t for t in (*CORE_TABLES, *WOOCOMMERCE_TABLES, CUSTOM_PRODUCT_TABLE)]
    return frozenset(name for name in wanted if fold(name) in tables)


def read_options(
    conn: sa.Connection, blogs: Sequence[tuple[int, str]], names: Sequence[str] | None = None
) -> dict[int, dict[str, bytes | None]]:
    """Raw option bytes per blog id for ``names`` (default: every option discovery needs)."""
    wanted = tuple(names) if names is not None else option_names()
    by_name = {n.lower(): n for n in wanted}
    out: dict[int, dict[str, bytes | None]] = {bid: {} for bid, _ in blogs}
    for start in range(0, len(blogs), OPTIONS_CHUNK):
        chunk = blogs[start : start + OPTIONS_CHUNK]
        params: dict[str, Any] = {f"n{i}": n for i, n in enumerate(wanted)}
        params.update({f"b{i}": bid for i, (bid, _p) in enumerate(chunk)})
        for bid, name, value in conn.execute(sa.text(sql_blog_options(chunk, len(wanted))), params):
            # option_name compares case-insensitively in WordPress's collation: map back to our spelling.
            key = by_name.get(_text(name).lower(), _text(name))
            out[int(bid)][key] = value
    return out


def _not_multisite_message(conn: sa.Connection, base: str, database: str) -> str:
    candidates = [
        _text(name)[: -len("blogs")]
        for (name,) in conn.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name LIKE '%blogs' ORDER BY table_name"
            )
        )
    ]
    hint = (
        f"; tables that look like a network's blogs table exist for prefix {', '.join(repr(c) for c in candidates)}"
        if candidates
        else ""
    )
    return (
        f"database {database!r} has no table {base}blogs: table prefix {base!r} is not the base prefix of a "
        f"WordPress multisite network (a single-site install has no blogs table; check database.table_prefix)"
        f"{hint}"
    )
