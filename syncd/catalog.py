"""Link groups: which products on which blogs are "the same thing".

Membership lives in ``{base}syncd_member`` (one row per product that has a SKU or a manual link),
refreshed with set-based SQL so that memory stays flat however large the catalogue is.

Linking rules (README "Linking"; ARCHITECTURE step 2):

* **Key.** A product's link key is its language + the collation weight of its SKU. WooCommerce
  compares SKUs through the lookup column's collation ('tshirt-red' and 'TSHIRT-RED' are one SKU);
  on a Polylang blog the language is the post's ``language`` term (a variation without one takes
  its parent's), else ``[blogs.N] language``, else the blog's locale (``WPLANG``; '' = en_US -> 'en').
* **Groups** have stable ids (``{base}syncd_group``). A product without a group joins the group
  known under its key (created when there is none). A linked product whose SKU changes keeps its
  group (a rename); the rename is carried to the other members by the apply step when
  ``sync.propagate_sku_renames`` is on, and the group's key moves with it; when off, the group
  stays known under the old key. An ambiguous product whose SKU changes, or a product whose
  language changes, is regrouped by its new key.
* **Manual links** (``{base}syncd_link``, ``syncd link``) override SKU matching: the products form
  one group whatever their SKUs (none needed), and are never ambiguous.
* **Ambiguity.** Two SKU-matched products of one group on one blog are 'ambiguous': neither is
  written nor propagated until a manual link or a SKU change says which one is meant.
* **Leaving.** A product trashed or deleted, or whose SKU is removed (and that has no manual
  link), loses its member row: it leaves its group.

Translations (Polylang ``post_translations``) are read live for the products a batch involves
(:func:`translations_for`); they never span blogs. ``groups_for(conn, base, keys)`` is the API the
apply engine and reconcile use: for each origin, every member of its group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import phpserialize
import sqlalchemy as sa
import structlog

from syncd.config import BlogSettings
from syncd.db import table, validate_prefix
from syncd.network import Blog
from syncd.plan import Key, Member
from syncd.sqlfiles import sql_text

log = structlog.get_logger("syncd.catalog")

DEFAULT_COLLATION = "utf8mb4_unicode_520_ci"
DEFAULT_LANGUAGE = "en"
_COLLATION_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_NO_SETTINGS = BlogSettings()


# --------------------------------------------------------------------------- languages (pure)
def locale_language(locale: str | None) -> str:
    """Language of a WordPress locale as Polylang slugs name it: 'fr_FR' -> 'fr', '' (en_US) -> 'en'."""
    text = (locale or "").strip()
    if not text:
        return DEFAULT_LANGUAGE
    return re.split(r"[_\-.@]", text, maxsplit=1)[0].lower() or DEFAULT_LANGUAGE


def blog_language(blog: Blog, settings: BlogSettings | None = None) -> str:
    """The link language of a blog without Polylang (and the fallback on a Polylang blog for a
    product without a language term): ``[blogs.N] language``, else the blog's locale."""
    settings = settings or _NO_SETTINGS
    return settings.language or locale_language(blog.option("WPLANG"))


def shares_stock(blog: Blog, settings: BlogSettings | None = None) -> bool:
    """``[blogs.N] translations_share_stock``; by default on where Polylang for WooCommerce is active."""
    settings = settings or _NO_SETTINGS
    if settings.translations_share_stock is not None:
        return settings.translations_share_stock and blog.polylang
    return blog.polylang and blog.polylang_wc


def polylang_default_language(raw: bytes | str | None) -> str | None:
    """``default_lang`` of the PHP-serialized ``polylang`` option (None when absent or unreadable)."""
    if not raw:
        return None
    try:
        value = phpserialize.loads(raw if isinstance(raw, bytes) else raw.encode(), decode_strings=True)
    except Exception:  # noqa: BLE001 - a corrupt option only loses the fallback
        return None
    lang = value.get("default_lang") if isinstance(value, dict) else None
    return lang.lower() if isinstance(lang, str) and lang else None


# --------------------------------------------------------------------------- membership refresh
def sku_collation(conn: sa.Connection, blog: Blog) -> str:
    """Collation of ``{prefix}wc_product_meta_lookup.sku`` (what WooCommerce's uniqueness check uses)."""
    name = conn.execute(
        sa.text(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = :t AND COLUMN_NAME = 'sku'"
        ),
        {"t": blog.prefix + "wc_product_meta_lookup"},
    ).scalar_one_or_none()
    if not name or not _COLLATION_RE.match(name) or not name.startswith("utf8mb4"):
        return DEFAULT_COLLATION
    return name


def _language_of(prefix: str, post: str) -> str:
    """Correlated sub-select: the ``language`` term slug of post ``post`` (a column expression)."""
    return (
        f"(SELECT MIN(lt.slug) FROM `{prefix}term_relationships` ltr "
        f"JOIN `{prefix}term_taxonomy` ltt ON ltt.term_taxonomy_id = ltr.term_taxonomy_id AND ltt.taxonomy = 'language' "
        f"JOIN `{prefix}terms` lt ON lt.term_id = ltt.term_id WHERE ltr.object_id = {post})"
    )


def refresh_sql(
    base_prefix: str, prefix: str, collation: str, n_ids: int | None, *, polylang: bool = False
) -> str:
    """The membership refresh statement (pure, golden-tested). Params: :blog_id, :now, :lang, :id0..."""
    validate_prefix(base_prefix)
    validate_prefix(prefix)
    if not _COLLATION_RE.match(collation):
        raise ValueError(f"bad collation {collation!r}")
    only = ""
    if n_ids is not None:
        only = "AND p.ID IN (" + ", ".join(f":id{i}" for i in range(n_ids)) + ")"
    if polylang:
        lang = f"COALESCE({_language_of(prefix, 'p.ID')}, {_language_of(prefix, 'p.post_parent')}, :lang)"
    else:
        lang = ":lang"
    text = "\n".join(
        ln for ln in sql_text("member_refresh.sql").splitlines() if not ln.lstrip().startswith("--")
    )
    return (
        text.replace("{base}", base_prefix)
        .replace("{prefix}", prefix)
        .replace("{collation}", collation)
        .replace("{lang_expr}", lang)
        .replace("{only_ids}", only)
    )


def fallback_language(conn: sa.Connection, blog: Blog, settings: BlogSettings | None = None) -> str:
    """Language of a product without a language term: the configured one, else (Polylang) the
    default language of the ``polylang`` option, else the blog's locale."""
    settings = settings or _NO_SETTINGS
    if settings.language:
        return settings.language
    if blog.polylang:
        raw = conn.execute(
            sa.text(
                f"SELECT CAST(option_value AS BINARY) FROM {table(blog.prefix, 'options')} "
                "WHERE option_name = 'polylang'"
            )
        ).scalar_one_or_none()
        lang = polylang_default_language(raw)
        if lang:
            return lang
    return blog_language(blog, settings)


def refresh_members(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    post_ids: Collection[int] | None = None,
    *,
    collation: str | None = None,
    settings: BlogSettings | None = None,
    exclude_skus: Sequence[str] | None = None,
) -> None:
    """Re-read membership of ``blog``'s products (all, or only ``post_ids``) inside the caller's transaction.

    Products that no longer qualify (SKU removed without a manual link, trashed, deleted) leave;
    products without a group get the group of their key; products whose SKU matches
    ``[sync] exclude_skus`` (``exclude_skus``, default: the patterns the daemon stored with
    :func:`store_exclusions`) are 'excluded' (never written nor propagated); ambiguity is recomputed.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    ids = sorted(set(post_ids)) if post_ids is not None else None
    if ids is not None and not ids:
        return
    id_params = {f"id{i}": v for i, v in enumerate(ids)} if ids is not None else {}
    params: dict[str, object] = {
        "blog_id": blog.blog_id,
        "now": now,
        "lang": fallback_language(conn, blog, settings),
        **id_params,
    }
    coll = collation or sku_collation(conn, blog)
    conn.execute(
        sa.text(
            refresh_sql(
                base_prefix, blog.prefix, coll, len(ids) if ids is not None else None, polylang=blog.polylang
            )
        ),
        params,
    )
    member = table(base_prefix, "syncd_member")
    only = ""
    if ids is not None:
        only = " AND post_id IN (" + ", ".join(f":id{i}" for i in range(len(ids))) + ")"
    conn.execute(
        sa.text(f"DELETE FROM {member} WHERE blog_id = :b AND refreshed_at < :now{only}"),
        {"b": blog.blog_id, "now": now, **id_params},
    )
    assign_groups(conn, base_prefix, blog.blog_id, ids, now=now)
    patterns = stored_exclusions(conn, base_prefix) if exclude_skus is None else tuple(exclude_skus)
    mark_excluded(conn, base_prefix, blog.blog_id, ids, patterns)
    recompute_ambiguity(conn, base_prefix, blog.blog_id)


# --------------------------------------------------------------------------- exclusions
EXCLUSIONS_META = "exclude_skus"


def stored_exclusions(conn: sa.Connection, base_prefix: str) -> tuple[str, ...]:
    """The ``[sync] exclude_skus`` patterns the daemon runs with (stored in ``{base}syncd_meta``), so
    that every membership refresh - the daemon's, ``syncd install``'s, ``syncd link``'s - marks the
    same products excluded."""
    from syncd.schema import get_meta

    raw = get_meta(conn, base_prefix, EXCLUSIONS_META)
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return ()
    return tuple(v for v in value if isinstance(v, str) and v) if isinstance(value, list) else ()


def store_exclusions(conn: sa.Connection, base_prefix: str, patterns: Sequence[str]) -> bool:
    """Record the configured patterns; True when they changed (memberships must be refreshed)."""
    from syncd.schema import set_meta

    if stored_exclusions(conn, base_prefix) == tuple(patterns):
        return False
    set_meta(conn, base_prefix, EXCLUSIONS_META, json.dumps(list(patterns)))
    return True


def mark_excluded(
    conn: sa.Connection, base_prefix: str, blog_id: int, post_ids: Sequence[int] | None, patterns: Sequence[str]
) -> int:
    """State 'excluded' for members of ``blog_id`` (or of ``post_ids``) whose SKU matches a pattern."""
    if not patterns:
        return 0
    from syncd.exclusion import exclusion_condition

    cond, params = exclusion_condition("sku", patterns)
    only = ""
    if post_ids is not None:
        only = " AND post_id IN (" + ", ".join(f":id{i}" for i in range(len(post_ids))) + ")"
        params.update({f"id{i}": v for i, v in enumerate(post_ids)})
    return conn.execute(
        sa.text(
            f"UPDATE {table(base_prefix, 'syncd_member')} SET state = 'excluded' "
            f"WHERE blog_id = :b AND state IN ('linked', 'ambiguous') AND {cond}{only}"
        ),
        {"b": blog_id, **params},
    ).rowcount


def assign_groups(
    conn: sa.Connection,
    base_prefix: str,
    blog_id: int,
    post_ids: Sequence[int] | None = None,
    *,
    now: datetime | None = None,
) -> None:
    """Give every member of ``blog_id`` (or of ``post_ids``) without a group its group: the manual
    group of its link, else the group known under its key (created when there is none)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    member, group, link = (
        table(base_prefix, "syncd_member"),
        table(base_prefix, "syncd_group"),
        table(base_prefix, "syncd_link"),
    )
    only, params = "", {"b": blog_id, "now": now}
    if post_ids is not None:
        only = " AND m.post_id IN (" + ", ".join(f":id{i}" for i in range(len(post_ids))) + ")"
        params.update({f"id{i}": v for i, v in enumerate(post_ids)})
    conn.execute(
        sa.text(
            f"UPDATE {member} m JOIN {link} l ON l.blog_id = m.blog_id AND l.post_id = m.post_id "
            f"SET m.group_id = l.group_id WHERE m.blog_id = :b AND m.link_kind = 'manual' "
            f"AND NOT (m.group_id <=> l.group_id){only}"
        ),
        params,
    )
    # One group per key: INSERT of the missing ones (the unique key_hash makes a concurrent
    # refresh of another blog wait, then skip), then every group-less member takes its key's group.
    conn.execute(
        sa.text(
            f"INSERT INTO {group} (kind, key_hash, link_key, sku, lang, created_at) "
            f"SELECT 'sku', UNHEX(SHA2(m.link_key, 256)), m.link_key, MIN(m.sku), MIN(m.lang), :now "
            f"FROM {member} m WHERE m.blog_id = :b AND m.group_id IS NULL AND m.link_kind = 'sku' "
            f"AND m.link_key <> ''{only} GROUP BY m.link_key "
            f"ON DUPLICATE KEY UPDATE key_hash = key_hash"
        ),
        params,
    )
    # STRAIGHT_JOIN: members first, then each one's group by the unique key_hash (eq_ref). Left to
    # itself the optimizer, misled by the stats of a syncd_group that was just filled, scans every
    # group for every member: 2,000 SKUs took 6.5 s instead of 0.04 s, quadratic in the catalogue.
    conn.execute(
        sa.text(
            f"UPDATE {member} m STRAIGHT_JOIN {group} g ON g.key_hash = UNHEX(SHA2(m.link_key, 256)) "
            f"SET m.group_id = g.group_id WHERE m.blog_id = :b AND m.group_id IS NULL "
            f"AND m.link_kind = 'sku' AND m.link_key <> ''{only}"
        ),
        {k: v for k, v in params.items() if k != "now"},
    )


def recompute_ambiguity(conn: sa.Connection, base_prefix: str, blog_id: int) -> None:
    member = table(base_prefix, "syncd_member")
    conn.execute(
        sa.text(f"UPDATE {member} SET state = 'linked' WHERE blog_id = :blog_id AND state = 'ambiguous'"),
        {"blog_id": blog_id},
    )
    conn.execute(
        sa.text(sql_text("member_ambiguity.sql").replace("{base}", validate_prefix(base_prefix))),
        {"blog_id": blog_id},
    )


def drop_blog_members(conn: sa.Connection, base_prefix: str, keep_blogs: Iterable[int]) -> int:
    """Forget members of blogs that are no longer live, usable or selected."""
    keep = sorted(set(keep_blogs))
    member = table(base_prefix, "syncd_member")
    if not keep:
        return conn.execute(sa.text(f"DELETE FROM {member}")).rowcount
    in_list = ", ".join(f":b{i}" for i in range(len(keep)))
    return conn.execute(
        sa.text(f"DELETE FROM {member} WHERE blog_id NOT IN ({in_list})"),
        {f"b{i}": b for i, b in enumerate(keep)},
    ).rowcount


# --------------------------------------------------------------------------- group queries
def known_members(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> set[Key]:
    if not keys:
        return set()
    cond, params = _key_condition("m", keys)
    rows = conn.execute(
        sa.text(f"SELECT m.blog_id, m.post_id FROM {table(base_prefix, 'syncd_member')} m WHERE {cond}"),
        params,
    )
    return {(r[0], r[1]) for r in rows}


def member_skus(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> dict[Key, str]:
    """The members among ``keys``, with their SKU."""
    if not keys:
        return {}
    cond, params = _key_condition("m", keys)
    rows = conn.execute(
        sa.text(
            f"SELECT m.blog_id, m.post_id, m.sku FROM {table(base_prefix, 'syncd_member')} m WHERE {cond}"
        ),
        params,
    )
    return {(r[0], r[1]): r[2] for r in rows}


def member_groups(
    conn: sa.Connection, base_prefix: str, keys: Collection[Key]
) -> dict[Key, tuple[int | None, str]]:
    """The members among ``keys``: (group id, state)."""
    if not keys:
        return {}
    cond, params = _key_condition("m", keys)
    rows = conn.execute(
        sa.text(
            f"SELECT m.blog_id, m.post_id, m.group_id, m.state FROM {table(base_prefix, 'syncd_member')} m "
            f"WHERE {cond}"
        ),
        params,
    )
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def groups_for(conn: sa.Connection, base_prefix: str, keys: Collection[Key]) -> dict[Key, list[Member]]:
    """For each origin product in ``keys`` that is a member: every member of its group (itself included)."""
    if not keys:
        return {}
    member = table(base_prefix, "syncd_member")
    cond, params = _key_condition("o", keys)
    rows = conn.execute(
        sa.text(
            f"SELECT o.blog_id, o.post_id, m.blog_id, m.post_id, m.sku, m.state, m.lang, m.group_id, m.link_kind "
            f"FROM {member} o JOIN {member} m ON m.group_id = o.group_id "
            f"WHERE {cond} ORDER BY m.blog_id, m.post_id"
        ),
        params,
    )
    out: dict[Key, list[Member]] = {}
    for ob, op, mb, mp, sku, state, lang, gid, kind in rows:
        out.setdefault((ob, op), []).append(Member(mb, mp, sku, state, lang, gid, kind))
    return out


def members_and_groups_sql(base_prefix: str, keys: Collection[Key]) -> tuple[str, list[int]]:
    """For the changed products ``keys``: :func:`known_members` and :func:`groups_for` in one
    driver-level statement (``%s``; a LEFT JOIN: a member without a group is known but has no
    group), sent by the apply step with others in one round trip; read by
    :func:`parse_members_and_groups`."""
    member = table(base_prefix, "syncd_member")
    by_blog: dict[int, set[int]] = {}
    for b, p in keys:
        by_blog.setdefault(b, set()).add(p)
    parts, params = [], []
    for b, posts in sorted(by_blog.items()):
        parts.append(f"(o.blog_id = %s AND o.post_id IN ({', '.join(['%s'] * len(posts))}))")
        params += [b, *sorted(posts)]
    return (
        f"SELECT o.blog_id, o.post_id, m.blog_id, m.post_id, m.sku, m.state, m.lang, m.group_id, m.link_kind "
        f"FROM {member} o LEFT JOIN {member} m ON m.group_id = o.group_id "
        f"WHERE {' OR '.join(parts) or '0'} ORDER BY o.blog_id, o.post_id, m.blog_id, m.post_id",
        params,
    )


def parse_members_and_groups(rows: Iterable[Sequence[Any]]) -> tuple[set[Key], dict[Key, list[Member]]]:
    known: set[Key] = set()
    groups: dict[Key, list[Member]] = {}
    for ob, op, mb, mp, sku, state, lang, gid, kind in rows:
        known.add((ob, op))
        if mb is not None:
            groups.setdefault((ob, op), []).append(Member(mb, mp, sku, state, lang, gid, kind))
    return known, groups


def _key_condition(alias: str, keys: Collection[Key]) -> tuple[str, dict[str, int]]:
    by_blog: dict[int, list[int]] = {}
    for b, p in keys:
        by_blog.setdefault(b, []).append(p)
    parts = []
    params: dict[str, int] = {}
    for i, (b, posts) in enumerate(sorted(by_blog.items())):
        params[f"kb{i}"] = b
        names = []
        for j, p in enumerate(sorted(set(posts))):
            params[f"kp{i}_{j}"] = p
            names.append(f":kp{i}_{j}")
        parts.append(f"({alias}.blog_id = :kb{i} AND {alias}.post_id IN ({', '.join(names)}))")
    return " OR ".join(parts), params


# --------------------------------------------------------------------------- SKU renames
def sku_conflict(
    conn: sa.Connection,
    base_prefix: str,
    blog: Blog,
    post_id: int,
    new_sku: str,
    lang: str,
    *,
    per_language: bool,
    collation: str | None = None,
) -> int | None:
    """Another live product of ``blog`` that already has ``new_sku`` (compared like WooCommerce:
    by the lookup column's collation; per language where Polylang for WooCommerce allows one SKU
    per language), or None. Read from the member table, which holds every live product with a SKU."""
    coll = collation or sku_collation(conn, blog)
    if not _COLLATION_RE.match(coll):
        raise ValueError(f"bad collation {coll!r}")
    lang_cond = " AND lang = :lang" if per_language else ""
    return conn.execute(
        sa.text(
            f"SELECT MIN(post_id) FROM {table(base_prefix, 'syncd_member')} WHERE blog_id = :b AND post_id <> :p "
            f"AND sku_key = WEIGHT_STRING(CONVERT(TRIM(TRAILING ' ' FROM :sku) USING utf8mb4) COLLATE {coll})"
            f"{lang_cond}"
        ),
        {"b": blog.blog_id, "p": post_id, "sku": new_sku, "lang": lang},
    ).scalar_one_or_none()


def move_group_key(conn: sa.Connection, base_prefix: str, blog_id: int, post_id: int) -> bool:
    """After a propagated rename: the group of (blog_id, post_id) becomes known under that
    member's (new) key, so products created later with the new SKU join it. A group already known
    under that key keeps it (UPDATE IGNORE skips the duplicate): the renamed group stays as it is."""
    group, member = table(base_prefix, "syncd_group"), table(base_prefix, "syncd_member")
    return bool(
        conn.execute(
            sa.text(
                f"UPDATE IGNORE {group} g JOIN {member} m ON m.group_id = g.group_id "
                f"SET g.key_hash = UNHEX(SHA2(m.link_key, 256)), g.link_key = m.link_key, g.sku = m.sku "
                f"WHERE m.blog_id = :b AND m.post_id = :p AND g.kind = 'sku' AND m.link_key <> '' "
                f"AND NOT (g.link_key <=> m.link_key)"
            ),
            {"b": blog_id, "p": post_id},
        ).rowcount
    )


# --------------------------------------------------------------------------- Polylang translations
def parse_translations(
    raw: bytes | str | None, languages: Collection[str]
) -> tuple[dict[str, int], list[str]]:
    """A ``post_translations`` description -> {language slug: post id}, validated as Polylang's
    ``validate_translations`` does: the value must unserialize to an array; keys that are not
    existing language slugs and ids that are not positive integers are dropped. Returns the valid
    entries and what was wrong (pure)."""
    problems: list[str] = []
    if raw is None or (isinstance(raw, bytes | str) and not raw.strip()):
        return {}, ["the description is empty"]
    try:
        value = phpserialize.loads(
            raw if isinstance(raw, bytes) else raw.encode("utf-8"), decode_strings=False
        )
    except Exception:  # noqa: BLE001 - phpserialize raises several types on odd input
        return {}, ["the description is not valid PHP-serialized data"]
    if not isinstance(value, dict):
        return {}, ["the description is not a serialized array"]
    known = set(languages)
    out: dict[str, int] = {}
    for k, v in value.items():
        slug = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        if slug not in known:
            problems.append(f"key {slug[:32]!r} is not a language of the blog")
            continue
        if isinstance(v, bytes) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            problems.append(f"{slug}: {str(v)[:32]!r} is not a positive post id")
            continue
        out[slug] = v
    return out, problems


def blog_language_slugs(conn: sa.Connection, blog: Blog) -> set[str]:
    """Slugs of the blog's Polylang languages (``language`` terms)."""
    return {
        _text(r[0]).lower()
        for r in conn.execute(
            sa.text(
                f"SELECT t.slug FROM {table(blog.prefix, 'terms')} t JOIN {table(blog.prefix, 'term_taxonomy')} tt "
                "ON tt.term_id = t.term_id WHERE tt.taxonomy = 'language'"
            )
        )
    }


def _post_languages(conn: sa.Connection, blog: Blog, ids: Collection[int]) -> dict[int, str]:
    if not ids:
        return {}
    ordered = sorted(set(ids))
    names = ", ".join(f":i{n}" for n in range(len(ordered)))
    return {
        int(r[0]): _text(r[1]).lower()
        for r in conn.execute(
            sa.text(
                f"SELECT tr.object_id, MIN(t.slug) FROM {table(blog.prefix, 'term_relationships')} tr "
                f"JOIN {table(blog.prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
                f"AND tt.taxonomy = 'language' JOIN {table(blog.prefix, 'terms')} t ON t.term_id = tt.term_id "
                f"WHERE tr.object_id IN ({names}) GROUP BY tr.object_id"
            ),
            {f"i{n}": v for n, v in enumerate(ordered)},
        )
    }


def validate_groups(
    descriptions: Mapping[int, bytes | str | None],
    attached: Mapping[int, Collection[int]],
    languages: Collection[str],
    post_language: Mapping[int, str],
) -> tuple[dict[int, dict[str, int]], list[str]]:
    """Validate translation groups (pure): per ``post_translations`` term_taxonomy_id, its valid
    {language: post id} entries (each post must carry that language) and the problems found,
    including posts attached to a group that does not list them."""
    valid: dict[int, dict[str, int]] = {}
    problems: list[str] = []
    for tt_id in sorted(descriptions):
        entries, errs = parse_translations(descriptions[tt_id], languages)
        for slug, pid in list(entries.items()):
            have = post_language.get(pid)
            if have != slug:
                errs.append(
                    f"{slug}: post {pid} "
                    + ("has no language term" if have is None else f"is in language {have!r}")
                )
                del entries[slug]
        for pid in sorted(set(attached.get(tt_id, ())) - set(entries.values())):
            errs.append(f"post {pid} is attached to the group but not listed in it")
        problems.extend(f"post_translations term {tt_id}: {e}" for e in errs)
        valid[tt_id] = entries
    return valid, problems


def _groups_of(
    conn: sa.Connection, blog: Blog, where: str, params: Mapping[str, Any]
) -> tuple[dict[int, bytes | None], dict[int, set[int]]]:
    rows = conn.execute(
        sa.text(
            f"SELECT tt.term_taxonomy_id, CAST(tt.description AS BINARY), tr.object_id "
            f"FROM {table(blog.prefix, 'term_taxonomy')} tt "
            f"LEFT JOIN {table(blog.prefix, 'term_relationships')} tr ON tr.term_taxonomy_id = tt.term_taxonomy_id "
            f"WHERE tt.taxonomy = 'post_translations' AND {where}"
        ),
        dict(params),
    )
    desc: dict[int, bytes | None] = {}
    attached: dict[int, set[int]] = {}
    for tt_id, d, obj in rows:
        desc[int(tt_id)] = d
        if obj is not None:
            attached.setdefault(int(tt_id), set()).add(int(obj))
    return desc, attached


def translations_for(
    conn: sa.Connection, blog: Blog, post_ids: Collection[int]
) -> tuple[dict[int, tuple[int, ...]], list[str]]:
    """The translations of ``post_ids`` on ``blog`` (each -> every post of its translation group,
    itself included, sorted), from the ``post_translations`` groups they are attached to, validated
    as Polylang does. Posts without a valid group of two or more are left out. Also returns the
    problems found (corrupt data is reported and skipped, never fatal)."""
    ids = sorted(set(post_ids))
    if not ids or not blog.polylang:
        return {}, []
    names = ", ".join(f":p{n}" for n in range(len(ids)))
    desc, attached = _groups_of(
        conn,
        blog,
        f"tt.term_taxonomy_id IN (SELECT r.term_taxonomy_id FROM {table(blog.prefix, 'term_relationships')} r "
        f"WHERE r.object_id IN ({names}))",
        {f"p{n}": v for n, v in enumerate(ids)},
    )
    if not desc:
        return {}, []
    languages = blog_language_slugs(conn, blog)
    listed: set[int] = set()
    for d in desc.values():
        entries, _ = parse_translations(d, languages)
        listed.update(entries.values())
    post_language = _post_languages(conn, blog, listed)
    valid, problems = validate_groups(desc, attached, languages, post_language)
    out: dict[int, tuple[int, ...]] = {}
    wanted = set(ids)
    for entries in valid.values():
        members = tuple(sorted(set(entries.values())))
        if len(members) < 2:
            continue
        for pid in members:
            if pid in wanted:
                out[pid] = members
    return out, problems


def translation_problems(conn: sa.Connection, blog: Blog, *, chunk: int = 500, limit: int = 200) -> list[str]:
    """Every problem of the blog's ``post_translations`` groups (read-only; chunked by term id so
    that memory stays flat on a large catalogue). At most ``limit`` are returned, then a count."""
    if not blog.polylang:
        return []
    languages = blog_language_slugs(conn, blog)
    problems: list[str] = []
    extra = 0
    last = 0
    while True:
        ids = [
            int(r[0])
            for r in conn.execute(
                sa.text(
                    f"SELECT term_taxonomy_id FROM {table(blog.prefix, 'term_taxonomy')} WHERE taxonomy = 'post_translations' "
                    "AND term_taxonomy_id > :last ORDER BY term_taxonomy_id LIMIT :n"
                ),
                {"last": last, "n": chunk},
            )
        ]
        if not ids:
            break
        last = ids[-1]
        names = ", ".join(f":t{n}" for n in range(len(ids)))
        desc, attached = _groups_of(
            conn, blog, f"tt.term_taxonomy_id IN ({names})", {f"t{n}": v for n, v in enumerate(ids)}
        )
        listed: set[int] = set()
        for d in desc.values():
            listed.update(parse_translations(d, languages)[0].values())
        for objs in attached.values():
            listed.update(objs)
        _, found = validate_groups(desc, attached, languages, _post_languages(conn, blog, listed))
        for p in found:
            if len(problems) < limit:
                problems.append(p)
            else:
                extra += 1
    if extra:
        problems.append(f"... and {extra} more post_translations problems")
    return problems


_reported: set[tuple[int, str]] = set()


def report_translation_problems(blog_id: int, problems: Iterable[str]) -> None:
    """Log each problem once per process (a corrupt group met by every batch must not flood the log)."""
    for p in problems:
        if (blog_id, p) in _reported:
            continue
        if len(_reported) > 10_000:
            _reported.clear()
        _reported.add((blog_id, p))
        log.warning("translation_group_skipped", blog=blog_id, problem=p)


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else str(value)


#: Keys a product must hold at most one row of: with two, each sale decrements both and is
#: captured twice (issue 9 path 0). syncd skips such a product; `syncd check` and `audit` list it.
SINGLE_ROW_KEYS = ("_stock", "_manage_stock", "_backorders", "_low_stock_amount", "_stock_status", "_sku")


def duplicate_meta_sql(prefix: str, limit: int = 100) -> str:
    """(post_id, meta_key, rows) for every product of a blog holding a watched key twice or more."""
    keys = ", ".join(f"'{k}'" for k in SINGLE_ROW_KEYS)
    return (
        f"SELECT post_id, meta_key, COUNT(*) FROM {table(validate_prefix(prefix), 'postmeta')} "
        f"WHERE meta_key IN ({keys}) GROUP BY post_id, meta_key HAVING COUNT(*) > 1 "
        f"ORDER BY post_id, meta_key LIMIT {int(limit)}"
    )
