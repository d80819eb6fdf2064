"""Polylang's rows for a term syncd creates on a Polylang blog (``missing = "create"``).

Polylang (free, 3.x) gives every term of a translated taxonomy (the ``taxonomies`` list of the
blog's ``polylang`` option; baseline blog 2: ``product_cat``, ``product_tag``) a language - a
``term_relationships`` row from the term to the ``term_language`` term ``pll_<lang>`` - and a
translation group - a ``term_translations`` term named ``pll_<uniqid>`` whose description is the
PHP-serialized ``{lang: term_id}`` (baseline.sql: Home, Outdoor, Books/Livres on blog 2). A term
made from a product takes that product's language (``PLL_Admin_Filters_Term`` on a term created
from a post). Without them, Polylang would treat the new category as having no language.
"""

from __future__ import annotations

import time

import phpserialize
import sqlalchemy as sa

from syncd.db import table


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def translated_taxonomies(conn: sa.Connection, prefix: str) -> frozenset[str]:
    """The custom taxonomies Polylang translates on this blog (its ``polylang`` option)."""
    raw = conn.exec_driver_sql(
        f"SELECT option_value FROM {table(prefix, 'options')} WHERE option_name = 'polylang'"
    ).scalar()
    if raw is None:
        return frozenset()
    try:
        value = phpserialize.loads(raw if isinstance(raw, bytes) else raw.encode(), decode_strings=True)
    except Exception:  # noqa: BLE001 - phpserialize raises several types on odd input
        return frozenset()
    taxonomies = value.get("taxonomies") if isinstance(value, dict) else None
    return frozenset(str(t) for t in taxonomies.values()) if isinstance(taxonomies, dict) else frozenset()


def post_language(conn: sa.Connection, prefix: str, post_id: int) -> str | None:
    """The ``language`` term slug of the post, else of its parent (a variation)."""
    row = conn.exec_driver_sql(
        f"SELECT t.slug FROM {table(prefix, 'posts')} p "
        f"JOIN {table(prefix, 'term_relationships')} tr ON tr.object_id IN (p.ID, p.post_parent) "
        f"JOIN {table(prefix, 'term_taxonomy')} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
        f"AND tt.taxonomy = 'language' JOIN {table(prefix, 'terms')} t ON t.term_id = tt.term_id "
        f"WHERE p.ID = %s ORDER BY tr.object_id = p.ID DESC LIMIT 1",
        (post_id,),
    ).first()
    return _text(row[0]) if row else None


def uniqid(prefix: str = "pll_") -> str:
    """PHP ``uniqid($prefix)``: seconds and microseconds as 8 + 5 hex digits."""
    now = time.time()
    seconds = int(now)
    return f"{prefix}{seconds:08x}{int((now - seconds) * 1_000_000):05x}"


def set_term_language(
    conn: sa.Connection, prefix: str, term_id: int, post_id: int, taxonomy: str
) -> str | None:
    """Give a new term of a translated taxonomy the product's language and a translation group.
    Returns the language slug, or None when the taxonomy is not translated or the product has none."""
    if taxonomy not in translated_taxonomies(conn, prefix):
        return None
    lang = post_language(conn, prefix, post_id)
    if lang is None:
        return None
    tax, rel, terms = (
        table(prefix, "term_taxonomy"),
        table(prefix, "term_relationships"),
        table(prefix, "terms"),
    )
    language_tt = conn.exec_driver_sql(
        f"SELECT tt.term_taxonomy_id FROM {tax} tt JOIN {terms} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = 'term_language' AND t.slug = %s",
        (f"pll_{lang}",),
    ).scalar()
    if language_tt is None:
        return None
    group = uniqid()
    group_term = conn.exec_driver_sql(
        f"INSERT INTO {terms} (name, slug, term_group) VALUES (%s, %s, 0)", (group, group)
    ).lastrowid
    group_tt = conn.exec_driver_sql(
        f"INSERT INTO {tax} (term_id, taxonomy, description, parent, count) VALUES (%s, 'term_translations', %s, 0, 1)",
        (group_term, phpserialize.dumps({lang: term_id}).decode()),
    ).lastrowid
    conn.exec_driver_sql(
        f"INSERT INTO {rel} (object_id, term_taxonomy_id, term_order) VALUES (%s, %s, 0), (%s, %s, 0)",
        (term_id, int(language_tt), term_id, int(group_tt)),
    )
    # term_language counts its terms (_update_generic_term_count: every relationship).
    conn.exec_driver_sql(
        f"UPDATE {tax} SET count = (SELECT COUNT(*) FROM {rel} WHERE term_taxonomy_id = %s) WHERE term_taxonomy_id = %s",
        (int(language_tt), int(language_tt)),
    )
    return lang
