"""WordPress multisite + WooCommerce 11 schema for tests: the recorded network and generated ones.

Two sources, both shipped as package data in ``syncd.data.schema.wordpress``:

* the recorded fixture (``schema.sql`` + ``baseline.sql`` + ``catalogue.json``): the exact network a
  real WooCommerce 11.0.1 wrote, loaded by :func:`load_recorded_network`;
* templates derived from that fixture (``template_network.sql``, ``template_blog.sql``,
  ``template_blog_options.json``) with ``{base}`` / ``{prefix}`` placeholders, so tests can build a
  network of any size under any base prefix with the *same* column definitions and collations
  (:func:`create_network`, :func:`add_blog`). ``python -m syncd.testnet.wordpress`` regenerates
  the templates from the fixture.

Table names are formatted into SQL only after :func:`syncd.db.validate_prefix`; every value is a
bound parameter. The fixture dumps are executed verbatim: they are trusted data files of the repo.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import phpserialize
import sqlalchemy as sa

from syncd.db import table, validate_prefix
from syncd.network import blog_prefix

RECORDED_BASE_PREFIX = "wp_"
RECORDED_BLOG_IDS = (1, 2, 3)
DATA_PACKAGE = "syncd.data.schema.wordpress"

#: Network-wide tables of a multisite (base prefix only), as in the fixture.
NETWORK_TABLES = (
    "blogmeta",
    "blogs",
    "registration_log",
    "signups",
    "site",
    "sitemeta",
    "usermeta",
    "users",
)

WOOCOMMERCE_PLUGIN = "woocommerce/woocommerce.php"
POLYLANG_PLUGIN = "polylang/polylang.php"

#: Polylang language definitions used by generated blogs: slug -> (name, locale, flag code).
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "en": ("English", "en_US", "us"),
    "fr": ("Français", "fr_FR", "fr"),
    "de": ("Deutsch", "de_DE", "de"),
    "es": ("Español", "es_ES", "es"),
}

#: Terms WooCommerce's installer creates on activation, in its order (term ids 2..14 on a fresh blog,
#: after WordPress's own 'Uncategorized' category = 1), then the default product category (15).
WC_INSTALL_TERMS: tuple[tuple[str, str], ...] = (
    ("product_type", "simple"),
    ("product_type", "grouped"),
    ("product_type", "variable"),
    ("product_type", "external"),
    ("product_visibility", "exclude-from-search"),
    ("product_visibility", "exclude-from-catalog"),
    ("product_visibility", "featured"),
    ("product_visibility", "outofstock"),
    ("product_visibility", "rated-1"),
    ("product_visibility", "rated-2"),
    ("product_visibility", "rated-3"),
    ("product_visibility", "rated-4"),
    ("product_visibility", "rated-5"),
)

#: Options that exist only on the main site of a network (WordPress writes them at network install).
_MAIN_SITE_ONLY_OPTIONS = {"initial_db_version", "user_count"}
#: Options Polylang adds to a blog on activation (values from the recorded blog 2).
_POLYLANG_OPTIONS = (
    "polylang",
    "pll_language_from_content_available",
    "polylang_wpml_strings",
    "pll_language_taxonomies",
    "widget_polylang",
)


# --------------------------------------------------------------------------- data files
def data_path(name: str) -> Path:
    """Path of a data file of ``syncd.data.schema.wordpress`` (works from a checkout or an install)."""
    return Path(str(resources.files(DATA_PACKAGE).joinpath(name)))


def read_data(name: str) -> str:
    return data_path(name).read_text(encoding="utf-8")


@cache
def load_catalogue() -> dict[str, Any]:
    """The recorded baseline catalogue (catalogue.json), parsed."""
    return json.loads(read_data("catalogue.json"))


def transition_files() -> list[Path]:
    """The recorded transition files (transitions/NN-*.json), sorted."""
    return sorted(data_path("transitions").glob("*.json"))


def load_transition(name: str) -> dict[str, Any]:
    """One recorded transition by file name or scenario name (e.g. '02-decrease-to-zero-outofstock')."""
    fname = name if name.endswith(".json") else name + ".json"
    return json.loads((data_path("transitions") / fname).read_text(encoding="utf-8"))


def split_sql(text: str) -> list[str]:
    """Split a dump into statements on ';' outside quotes and comments; comment-only pieces dropped."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    quote: str | None = None
    while i < n:
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
        elif ch == "-" and text.startswith("-- ", i) or ch == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif ch == "/" and text.startswith("/*", i) and not text.startswith("/*!", i):
            # Plain and MariaDB-versioned (/*M!...*/) comments carry nothing we need; /*!...*/ is
            # executable and kept.
            j = text.find("*/", i)
            i = n if j < 0 else j + 2
            continue
        elif ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
        else:
            buf.append(ch)
        i += 1
    stmt = "".join(buf).strip()
    if stmt:
        out.append(stmt)
    return out


def execute_script(conn: sa.Connection, statements: Iterable[str]) -> None:
    """Run trusted dump statements verbatim on the DBAPI cursor (no '%' parameter interpolation)."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for stmt in statements:
            cur.execute(stmt)
    finally:
        cur.close()


def _use_dump_session(conn: sa.Connection) -> None:
    # The dumps were written under mysqldump's session: keep explicit zero ids and no STRICT, so
    # '0000-00-00 00:00:00' defaults load on MySQL 8 as they did on MariaDB.
    conn.exec_driver_sql("SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO', time_zone = '+00:00'")
    conn.exec_driver_sql("SET NAMES utf8mb4")


# --------------------------------------------------------------------------- recorded network
def load_recorded_network(conn: sa.Connection) -> None:
    """Create and fill the recorded 3-blog network (prefix wp_) in the connection's current database."""
    _use_dump_session(conn)
    execute_script(conn, split_sql(read_data("schema.sql")))
    execute_script(conn, split_sql(read_data("baseline.sql")))
    conn.commit()


# --------------------------------------------------------------------------- templates
def _template(name: str) -> list[str]:
    return split_sql(read_data(name))


@cache
def _network_template() -> tuple[str, ...]:
    return tuple(_template("template_network.sql"))


@cache
def _blog_template() -> tuple[str, ...]:
    return tuple(_template("template_blog.sql"))


@cache
def blog_table_suffixes() -> tuple[str, ...]:
    """Suffixes (after the blog prefix) of every per-blog table: posts, postmeta, ..., wc_*, actionscheduler_*."""
    return tuple(re.findall(r"CREATE TABLE `\{prefix\}([a-z0-9_]+)`", read_data("template_blog.sql")))


@cache
def _options_template() -> tuple[dict[str, list[list[str]]], ...]:
    return (json.loads(read_data("template_blog_options.json")),)


def network_table_ddl(base_prefix: str) -> list[str]:
    """CREATE TABLE statements of the network tables for ``base_prefix``."""
    base = validate_prefix(base_prefix)
    return [s.replace("{base}", base) for s in _network_template()]


def blog_table_ddl(prefix: str) -> list[str]:
    """CREATE TABLE statements of one blog's tables for the (already blog-specific) ``prefix``."""
    p = validate_prefix(prefix)
    return [s.replace("{prefix}", p) for s in _blog_template()]


def blog_table_names(base_prefix: str, blog_id: int) -> list[str]:
    """Unquoted names of every table of one blog."""
    p = blog_prefix(validate_prefix(base_prefix), blog_id)
    return [p + s for s in blog_table_suffixes()]


def regenerate_templates(out_dir: Path | None = None) -> None:
    """Derive the template files from schema.sql/baseline.sql (run after updating the fixture)."""
    out = out_dir or data_path("")
    schema = read_data("schema.sql")
    ddl = {
        name: stmt
        for stmt, name in re.findall(r"(CREATE TABLE `([a-z0-9_]+)` \(.*?\n\) ENGINE=[^;]*;)", schema, re.S)
    }
    header = (
        "-- Generated by `python -m syncd.testnet.wordpress` from schema.sql (WooCommerce 11.0.1 fixture).\n"
        "-- Do not edit: regenerate. Placeholder: {ph}.\n"
    )
    blog_suffixes = sorted(t[len("wp_2_") :] for t in ddl if t.startswith("wp_2_"))
    with open(Path(out) / "template_blog.sql", "w", encoding="utf-8") as f:
        f.write(header.format(ph="{prefix} = the blog's table prefix (wp_ for blog 1, wp_N_ for blog N)"))
        for s in blog_suffixes:
            f.write(ddl["wp_2_" + s].replace("`wp_2_", "`{prefix}") + "\n\n")
    with open(Path(out) / "template_network.sql", "w", encoding="utf-8") as f:
        f.write(header.format(ph="{base} = the network's base prefix"))
        for s in NETWORK_TABLES:
            f.write(ddl["wp_" + s].replace("`wp_", "`{base}") + "\n\n")
    # Options: blog 1's recorded options without transients (caches, not settings), without the
    # main-site-only rows; the blog-specific ones become placeholders filled in by add_blog().
    options = _parse_inserts(read_data("baseline.sql"), "wp_options")
    keep = []
    for row in options:
        name = row["option_name"]
        if name.startswith(("_transient", "_site_transient")) or name in _MAIN_SITE_ONLY_OPTIONS:
            continue
        keep.append([name, row["option_value"], row["autoload"]])
    polylang = [
        [r["option_name"], r["option_value"], r["autoload"]]
        for r in _parse_inserts(read_data("baseline.sql"), "wp_2_options")
        if r["option_name"] in _POLYLANG_OPTIONS
    ]
    with open(Path(out) / "template_blog_options.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "note": "Generated from baseline.sql blog 1 options (transients dropped) and blog 2's Polylang "
                "options by `python -m syncd.testnet.wordpress`. Rows: [option_name, option_value, autoload].",
                "options": keep,
                "polylang_options": polylang,
            },
            f,
            ensure_ascii=False,
            indent=0,
        )
        f.write("\n")


_INSERT_RE = re.compile(r"INSERT INTO `([a-z0-9_]+)` \(([^)]*)\) VALUES \((.*)\)$", re.S)


def _parse_value_list(text: str) -> list[Any]:
    vals: list[Any] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "'":
            j = i + 1
            buf = []
            while text[j] != "'":
                if text[j] == "\\":
                    nxt = text[j + 1]
                    buf.append({"n": "\n", "r": "\r", "t": "\t", "0": "\0", "Z": "\x1a"}.get(nxt, nxt))
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            vals.append("".join(buf))
            i = j + 1
        else:
            j = text.find(",", i)
            j = n if j < 0 else j
            tok = text[i:j].strip()
            vals.append(None if tok == "NULL" else tok)
            i = j
        while i < n and text[i] in ", ":
            i += 1
    return vals


def _parse_inserts(dump: str, table_name: str) -> list[dict[str, Any]]:
    """Rows of ``table_name`` from a one-row-per-INSERT dump, values as text (NULL -> None)."""
    rows = []
    for stmt in split_sql(dump):
        m = _INSERT_RE.match(stmt)
        if not m or m.group(1) != table_name:
            continue
        cols = [c.strip(" `") for c in m.group(2).split(",")]
        rows.append(dict(zip(cols, _parse_value_list(m.group(3)), strict=True)))
    return rows


@cache
def baseline_rows() -> dict[str, list[dict[str, Any]]]:
    """Every row of baseline.sql by table, values as MariaDB's text rendering (NULL -> None)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for stmt in split_sql(read_data("baseline.sql")):
        m = _INSERT_RE.match(stmt)
        if m:
            cols = [c.strip(" `") for c in m.group(2).split(",")]
            out.setdefault(m.group(1), []).append(dict(zip(cols, _parse_value_list(m.group(3)), strict=True)))
    return out


# --------------------------------------------------------------------------- generated networks
@dataclass(frozen=True)
class BlogSpec:
    blog_id: int
    path: str
    woocommerce: bool = True
    polylang: bool = False


def _php(value: Any) -> str:
    return phpserialize.dumps(value).decode("utf-8")


def _site_url(domain: str, path: str) -> str:
    return f"http://{domain}{path.rstrip('/')}"


def create_network(
    conn: sa.Connection,
    base_prefix: str = "wp_",
    blog_ids: Sequence[int] = (1, 2, 3),
    *,
    domain: str = "shop.test",
    polylang_blogs: Iterable[int] = (),
    woocommerce_blogs: Iterable[int] | None = None,
    options: dict[int, dict[str, str]] | dict[str, str] | None = None,
    languages: Sequence[str] = ("en", "fr"),
    network_plugins: Sequence[str] = (),
) -> None:
    """Create an empty multisite network with WooCommerce blogs in the current database.

    ``options`` is either one dict applied to every blog or ``{blog_id: {...}}``; ``woocommerce_blogs``
    defaults to all blogs. ``network_plugins`` go to ``active_sitewide_plugins``.
    """
    base = validate_prefix(base_prefix)
    polylang_set = set(polylang_blogs)
    wc_set = set(blog_ids if woocommerce_blogs is None else woocommerce_blogs)
    _use_dump_session(conn)
    execute_script(conn, network_table_ddl(base))
    conn.execute(
        sa.text(f"INSERT INTO {table(base, 'site')} (id, domain, path) VALUES (1, :d, '/')"),  # noqa: S608
        {"d": domain},
    )
    sitemeta = [
        ("site_name", "syncd test network"),
        ("admin_email", "admin@example.com"),
        ("admin_user_id", "1"),
        ("registration", "none"),
        ("site_admins", _php(["admin"])),
        ("siteurl", f"http://{domain}/"),
        ("subdomain_install", ""),
        ("active_sitewide_plugins", _php({p: 0 for p in network_plugins})),
        ("WPLANG", "en_US"),
        ("main_site", str(min(blog_ids) if blog_ids else 1)),
        ("blog_count", str(len(blog_ids))),
        ("site_meta_supported", "1"),
    ]
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'sitemeta')} (site_id, meta_key, meta_value) VALUES (1, :k, :v)"  # noqa: S608
        ),
        [{"k": k, "v": v} for k, v in sitemeta],
    )
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'users')} (ID, user_login, user_pass, user_nicename, user_email, "  # noqa: S608
            "user_url, user_registered, user_activation_key, user_status, display_name) "
            "VALUES (1, 'admin', '', 'admin', 'admin@example.com', '', '2026-01-01 00:00:00', '', 0, 'admin')"
        )
    )
    for blog_id in blog_ids:
        per_blog: dict[str, str] | None
        if options and all(isinstance(k, int) for k in options):
            per_blog = options.get(blog_id)  # type: ignore[call-overload]
        else:
            per_blog = options  # type: ignore[assignment]
        add_blog(
            conn,
            base,
            blog_id,
            domain=domain,
            woocommerce=blog_id in wc_set,
            polylang=blog_id in polylang_set,
            options=per_blog,
            languages=languages,
        )
    conn.commit()


def add_blog(
    conn: sa.Connection,
    base_prefix: str,
    blog_id: int,
    *,
    domain: str = "shop.test",
    path: str | None = None,
    woocommerce: bool = True,
    polylang: bool = False,
    options: dict[str, str] | None = None,
    languages: Sequence[str] = ("en", "fr"),
    blogname: str | None = None,
    create_tables: bool = True,
) -> None:
    """Add one blog: its tables, options (WooCommerce defaults), installer terms, and a ``blogs`` row.

    Without ``woocommerce`` the WooCommerce plugin is not in ``active_plugins`` (the tables still
    exist, as after a deactivation). With ``polylang`` the Polylang plugin is active and the
    ``languages`` exist (the first is the default), as Polylang's wizard leaves them.
    """
    base = validate_prefix(base_prefix)
    prefix = blog_prefix(base, blog_id)
    path = path if path is not None else ("/" if blog_id == 1 else f"/site{blog_id}/")
    if create_tables:
        execute_script(conn, blog_table_ddl(prefix))
    tmpl = _options_template()[0]
    url = _site_url(domain, path)
    plugins = ([POLYLANG_PLUGIN] if polylang else []) + ([WOOCOMMERCE_PLUGIN] if woocommerce else [])
    overrides: dict[str, str] = {
        "siteurl": url,
        "home": url,
        "blogname": blogname or f"Shop {blog_id}",
        "active_plugins": _php(plugins),
    }
    rows = [[n, v, a] for n, v, a in tmpl["options"]]
    if polylang:
        for n, v, a in tmpl["polylang_options"]:
            if n == "polylang":
                settings = phpserialize.loads(v.encode(), decode_strings=True)
                settings["default_lang"] = languages[0]
                v = _php(settings)
            rows.append([n, v, a])
    if options:
        overrides.update(options)
    known = {r[0] for r in rows}
    for r in rows:
        if r[0] in overrides:
            r[1] = overrides[r[0]]
    rows.extend([n, v, "auto"] for n, v in overrides.items() if n not in known)
    conn.execute(
        sa.text(
            f"INSERT INTO {table(prefix, 'options')} (option_name, option_value, autoload) "  # noqa: S608
            "VALUES (:n, :v, :a)"
        ),
        [{"n": n, "v": v, "a": a} for n, v, a in rows],
    )
    # WordPress core's default category is term 1; WooCommerce's installer then adds its terms and
    # the default product category 'Uncategorized' (term 15 = option default_product_cat).
    insert_term(conn, prefix, "Uncategorized", "uncategorized", "category", term_id=1)
    for taxonomy, slug in WC_INSTALL_TERMS:
        insert_term(conn, prefix, slug, slug, taxonomy)
    cat_id = insert_term(conn, prefix, "Uncategorized", "uncategorized", "product_cat")
    conn.execute(
        sa.text(
            f"UPDATE {table(prefix, 'options')} SET option_value = :v WHERE option_name = 'default_product_cat'"
        ),  # noqa: S608
        {"v": str(cat_id)},
    )
    if polylang:
        setup_polylang(conn, prefix, languages)
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'blogs')} (blog_id, site_id, domain, path, registered, last_updated, "  # noqa: S608
            "public, archived, mature, spam, deleted, lang_id) "
            "VALUES (:id, 1, :d, :p, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1, 0, 0, 0, 0, 0)"
        ),
        {"id": blog_id, "d": domain, "p": path},
    )


def insert_term(
    conn: sa.Connection,
    prefix: str,
    name: str,
    slug: str,
    taxonomy: str,
    *,
    term_id: int | None = None,
    description: str = "",
    term_group: int = 0,
    parent: int = 0,
) -> int:
    """Insert a term + its term_taxonomy row (same id, as on a blog where ids never diverged)."""
    res = conn.execute(
        sa.text(
            f"INSERT INTO {table(prefix, 'terms')} (term_id, name, slug, term_group) "  # noqa: S608
            "VALUES (:id, :n, :s, :g)"
        ),
        {"id": term_id, "n": name, "s": slug, "g": term_group},
    )
    tid = int(term_id or res.lastrowid)
    conn.execute(
        sa.text(
            f"INSERT INTO {table(prefix, 'term_taxonomy')} "  # noqa: S608
            "(term_taxonomy_id, term_id, taxonomy, description, parent, count) VALUES (:id, :id, :t, :d, :p, 0)"
        ),
        {"id": tid, "t": taxonomy, "d": description, "p": parent},
    )
    return tid


#: Name/slug Polylang gives the default category's translation when a language is added.
_DEFAULT_CATEGORY_NAMES = {
    "fr": ("Non classé", "non-classe"),
    "de": ("Allgemein", "allgemein"),
    "es": ("Sin categoría", "sin-categoria"),
}

_uniq_last = [0]


def pll_uniqid() -> str:
    """A Polylang translation-group term name: 'pll_' + PHP uniqid() (8 hex seconds + 5 hex microseconds)."""
    now = max(int(time.time() * 1_000_000), _uniq_last[0] + 1)
    _uniq_last[0] = now
    return f"pll_{now // 1_000_000:08x}{now % 1_000_000:05x}"


def relate(conn: sa.Connection, prefix: str, object_id: int, term_taxonomy_id: int) -> None:
    """wp_set_object_terms() for one term, without the recount (callers recount)."""
    conn.execute(
        sa.text(
            f"INSERT IGNORE INTO {table(prefix, 'term_relationships')} "  # noqa: S608
            "(object_id, term_taxonomy_id, term_order) VALUES (:o, :t, 0)"
        ),
        {"o": object_id, "t": term_taxonomy_id},
    )


def delete_term(conn: sa.Connection, prefix: str, term_id: int) -> None:
    """wp_delete_term() of a term whose term_taxonomy_id equals its term_id."""
    for suffix, col in (
        ("term_relationships", "term_taxonomy_id"),
        ("term_taxonomy", "term_id"),
        ("terms", "term_id"),
    ):
        conn.execute(sa.text(f"DELETE FROM {table(prefix, suffix)} WHERE {col} = :id"), {"id": term_id})  # noqa: S608


def set_translation_group(
    conn: sa.Connection, prefix: str, taxonomy: str, members: dict[str, int], group_id: int | None = None
) -> int:
    """Create (or rewrite) a Polylang translation group term (post_translations / term_translations)."""
    desc = _php(members)
    if group_id is None:
        name = pll_uniqid()
        group_id = insert_term(conn, prefix, name, name, taxonomy, description=desc)
    else:
        conn.execute(
            sa.text(
                f"UPDATE {table(prefix, 'term_taxonomy')} SET description = :d WHERE term_taxonomy_id = :id"
            ),  # noqa: S608
            {"d": desc, "id": group_id},
        )
    for obj in members.values():
        relate(conn, prefix, obj, group_id)
    _count_all_objects(conn, prefix, group_id)
    return group_id


def _count_all_objects(conn: sa.Connection, prefix: str, tt_id: int) -> None:
    # _update_generic_term_count(): taxonomies whose objects are terms or groups count every relationship.
    conn.execute(
        sa.text(
            f"UPDATE {table(prefix, 'term_taxonomy')} SET count = (SELECT COUNT(*) FROM "  # noqa: S608
            f"{table(prefix, 'term_relationships')} WHERE term_taxonomy_id = :id) WHERE term_taxonomy_id = :id"
        ),
        {"id": tt_id},
    )


def find_translation_group(
    conn: sa.Connection, prefix: str, taxonomy: str, object_id: int
) -> tuple[int, dict[str, int]] | None:
    row = conn.execute(
        sa.text(
            f"SELECT tt.term_taxonomy_id, tt.description FROM {table(prefix, 'term_taxonomy')} tt "  # noqa: S608
            f"JOIN {table(prefix, 'term_relationships')} tr ON tr.term_taxonomy_id = tt.term_taxonomy_id "
            "WHERE tt.taxonomy = :t AND tr.object_id = :o"
        ),
        {"t": taxonomy, "o": object_id},
    ).first()
    if row is None:
        return None
    members = phpserialize.loads(row[1].encode(), decode_strings=True)
    return int(row[0]), {str(k): int(v) for k, v in members.items()}


def polylang_languages(conn: sa.Connection, prefix: str) -> dict[str, tuple[int, int]]:
    """slug -> (language term_taxonomy_id, term_language term_taxonomy_id) of a Polylang blog."""
    rows = conn.execute(
        sa.text(
            f"SELECT t.slug, tt.term_taxonomy_id, tt.taxonomy FROM {table(prefix, 'terms')} t "  # noqa: S608
            f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_id = t.term_id "
            "WHERE tt.taxonomy IN ('language', 'term_language') ORDER BY t.term_group, t.term_id"
        )
    ).fetchall()
    langs: dict[str, list[int]] = {}
    for slug, tt_id, taxonomy in rows:
        key = slug[4:] if taxonomy == "term_language" else slug
        langs.setdefault(key, [0, 0])[0 if taxonomy == "language" else 1] = int(tt_id)
    return {k: (v[0], v[1]) for k, v in langs.items()}


def setup_polylang(conn: sa.Connection, prefix: str, languages: Sequence[str]) -> None:
    """Add Polylang languages the way Polylang's wizard leaves them (term ids 16-22 for en+fr, as recorded).

    Each language is a ``language`` term plus a ``term_language`` term; the default category (term 1)
    joins the first language, every further language gets a translated default category, and all of
    them form one ``term_translations`` group (recreated on each addition: hence recorded id gaps).
    """
    group: tuple[int, dict[str, int]] | None = None
    for i, slug in enumerate(languages):
        name, locale, flag = LANGUAGES[slug]
        insert_term(
            conn,
            prefix,
            name,
            slug,
            "language",
            term_group=i,
            description=_php({"locale": locale, "rtl": False, "flag_code": flag}),
        )
        tl = insert_term(conn, prefix, name, "pll_" + slug, "term_language")
        if i == 0:
            cat = 1
        else:
            cname, cslug = _DEFAULT_CATEGORY_NAMES.get(
                slug, (f"Uncategorized ({slug})", f"uncategorized-{slug}")
            )
            cat = insert_term(conn, prefix, cname, cslug, "category")
        relate(conn, prefix, cat, tl)
        _count_all_objects(conn, prefix, tl)
        members = {slug: cat}
        if group is not None:
            delete_term(conn, prefix, group[0])
            members.update(group[1])
        group = (set_translation_group(conn, prefix, "term_translations", members), members)


def set_blog_flags(
    conn: sa.Connection,
    base_prefix: str,
    blog_id: int,
    *,
    deleted: bool | None = None,
    archived: bool | None = None,
    spam: bool | None = None,
    public: bool | None = None,
) -> None:
    """Set the status flags of a ``blogs`` row (what Network Admin's deactivate/archive/spam do)."""
    sets = {
        k: int(v)
        for k, v in {"deleted": deleted, "archived": archived, "spam": spam, "public": public}.items()
        if v is not None
    }
    if not sets:
        return
    assignments = ", ".join(f"{k} = :{k}" for k in sets)  # keys are the fixed column names above
    conn.execute(
        sa.text(f"UPDATE {table(base_prefix, 'blogs')} SET {assignments} WHERE blog_id = :id"),  # noqa: S608
        {**sets, "id": blog_id},
    )


def mark_blog_deleted(conn: sa.Connection, base_prefix: str, blog_id: int, deleted: bool = True) -> None:
    set_blog_flags(conn, base_prefix, blog_id, deleted=deleted)


def mark_blog_archived(conn: sa.Connection, base_prefix: str, blog_id: int, archived: bool = True) -> None:
    set_blog_flags(conn, base_prefix, blog_id, archived=archived)


def drop_blog_tables(conn: sa.Connection, base_prefix: str, blog_id: int, *, remove_row: bool = True) -> None:
    """Drop every table of a blog (what wpmu_delete_blog(drop=true) does) and, by default, its blogs row."""
    for name in blog_table_names(base_prefix, blog_id):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
    if remove_row:
        conn.execute(
            sa.text(f"DELETE FROM {table(base_prefix, 'blogs')} WHERE blog_id = :id"), {"id": blog_id}
        )  # noqa: S608


def set_option(conn: sa.Connection, prefix: str, name: str, value: str, autoload: str = "auto") -> None:
    """update_option(): insert or replace one option of the blog with table prefix ``prefix``."""
    conn.execute(
        sa.text(
            f"INSERT INTO {table(prefix, 'options')} (option_name, option_value, autoload) "  # noqa: S608
            "VALUES (:n, :v, :a) ON DUPLICATE KEY UPDATE option_value = VALUES(option_value)"
        ),
        {"n": name, "v": value, "a": autoload},
    )


def set_active_plugins(conn: sa.Connection, prefix: str, plugins: Sequence[str]) -> None:
    """Write ``active_plugins`` PHP-serialized, as WordPress does."""
    set_option(conn, prefix, "active_plugins", _php(list(plugins)), "on")


def list_tables(conn: sa.Connection) -> list[str]:
    return [r[0] for r in conn.exec_driver_sql("SHOW TABLES")]


def iter_blog_prefixes(base_prefix: str, blog_ids: Iterable[int]) -> Iterator[str]:
    for b in blog_ids:
        yield blog_prefix(base_prefix, b)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    target = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[2] / "schema" / "wordpress"
    )
    regenerate_templates(target)
    print(f"templates written to {target}")
