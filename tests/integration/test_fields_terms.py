"""The term and content field groups beyond the recorded steps, on the recorded network (real server).

The source is blog 2 and the target blog 1, as in test_fields_terms_golden.py. Where an
expectation comes from WooCommerce/WordPress source rather than a recording, the test names the
function it is based on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from syncd.fields.content import ContentGroup
from syncd.fields.group import Target
from syncd.fields.terms import ShippingGroup, TaxonomyGroup, VisibilityGroup
from syncd.network import discover
from tests.integration import derived_helpers as h
from tests.integration.test_fields_terms_golden import SOURCE, TARGET, _write

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
MUG_1, MUG_2 = 12, 23  # MUG on blog 1 and blog 2 (catalogue.json)
POSTER_1, POSTER_2 = 13, 21
HOODIE_S_1 = 17


def _clock() -> datetime:
    return NOW


def _target(
    net: Any, post_id: int, sku: str, post_type: str = "product", parent: int = 0, blog_id: int = TARGET
) -> Target:
    with net.engine.connect() as conn:
        blog = discover(conn, net.prefix).blog(blog_id)
    return Target(blog, post_id, sku, post_type, parent)


def _term(conn: sa.Connection, net: Any, blog: int, taxonomy: str, slug: str, **kw: Any) -> int:
    """term_taxonomy id of ``slug`` on ``blog``, created raw (name/description/parent) if missing."""
    terms, tax = net.table(blog, "terms"), net.table(blog, "term_taxonomy")
    row = conn.exec_driver_sql(
        f"SELECT tt.term_taxonomy_id FROM {tax} tt JOIN {terms} t ON t.term_id = tt.term_id "
        f"WHERE tt.taxonomy = %s AND t.slug = %s",
        (taxonomy, slug),
    ).first()
    if row:
        return int(row[0])
    term_id = conn.exec_driver_sql(
        f"INSERT INTO {terms} (name, slug, term_group) VALUES (%s, %s, 0)",
        (kw.get("name", slug.title()), slug),
    ).lastrowid
    return int(
        conn.exec_driver_sql(
            f"INSERT INTO {tax} (term_id, taxonomy, description, parent, count) VALUES (%s, %s, %s, %s, 0)",
            (term_id, taxonomy, kw.get("description", ""), kw.get("parent", 0)),
        ).lastrowid
    )


def _relate(net: Any, blog: int, post_id: int, taxonomy: str, slugs: list[str], **kw: Any) -> None:
    """Replace the post's terms of ``taxonomy`` on ``blog`` by ``slugs`` (raw, as an importer would)."""
    rel, tax = net.table(blog, "term_relationships"), net.table(blog, "term_taxonomy")
    with net.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DELETE tr FROM {rel} tr JOIN {tax} tt ON tt.term_taxonomy_id = tr.term_taxonomy_id "
            f"WHERE tr.object_id = %s AND tt.taxonomy = %s",
            (post_id, taxonomy),
        )
        for slug in slugs:
            tt = _term(conn, net, blog, taxonomy, slug, **kw.get(slug, {}))
            conn.exec_driver_sql(
                f"INSERT INTO {rel} (object_id, term_taxonomy_id) VALUES (%s, %s)", (post_id, tt)
            )


def _rows(net: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with net.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql, params)]


def _recorded(scenario: str, variant: str, step: int) -> h.Diff:
    fx = h.load_transition(scenario)
    v = next(v for v in fx["variants"] if v["variant"] == variant)
    return h.step_diff(next(s for s in v["steps"] if s["step"] == step), "wp_")


# --------------------------------------------------------------------------- missing terms


def test_missing_slug_skip_reports_and_writes_nothing(wp_network: Any) -> None:
    net = wp_network
    _relate(net, SOURCE, MUG_2, "product_cat", ["home", "kitchen"])
    before = h.snapshot(net.url, "wp_")
    problems = _write(net, TaxonomyGroup(clock=_clock), _target(net, MUG_1, "MUG"), MUG_2)
    assert [(p.blog_id, p.post_id, p.sku, p.field) for p in problems] == [
        (1, MUG_1, "MUG", "terms:product_cat")
    ]
    assert "'kitchen'" in problems[0].reason
    assert h.diff_snapshots(before, h.snapshot(net.url, "wp_")) == {}


def test_missing_category_created_as_recorded(wp_network: Any) -> None:
    """missing = "create": the rows of fixture 20 steps 2 (WooCommerce creating Kitchen) and 3
    (assigning it), written by one ``write``."""
    net = wp_network
    _relate(net, SOURCE, MUG_2, "product_cat", ["home", "kitchen"], kitchen={"name": "Kitchen"})
    assert _write(net, TaxonomyGroup(missing="create", clock=_clock), _target(net, MUG_1, "MUG"), MUG_2) == []
    created, assigned = _recorded("20", "A", 2), _recorded("20", "A", 3)
    (term,) = created["terms"]["inserted"]
    (tt,) = created["term_taxonomy"]["inserted"]
    assert _rows(net, "SELECT term_id, name, slug, term_group FROM wp_terms WHERE slug = 'kitchen'") == [
        (int(term["term_id"]), term["name"], term["slug"], int(term["term_group"]))
    ]
    (count,) = assigned["term_taxonomy"]["updated"]
    assert _rows(
        net,
        "SELECT term_id, taxonomy, description, parent, count FROM wp_term_taxonomy WHERE term_id = %s",
        term["term_id"],
    ) == [
        (int(tt["term_id"]), tt["taxonomy"], tt["description"], int(tt["parent"]), int(count["new"]["count"]))
    ]
    assert _rows(
        net, "SELECT category_tree_id, category_id FROM wp_wc_category_lookup WHERE category_id = 25"
    ) == [(25, 25)]
    (children,) = created["options"]["inserted"]
    assert _rows(
        net, "SELECT option_value, autoload FROM wp_options WHERE option_name = 'product_cat_children'"
    ) == [(children["option_value"], children["autoload"])]
    (meta,) = assigned["termmeta"]["inserted"]
    assert _rows(
        net, "SELECT meta_value FROM wp_termmeta WHERE term_id = 25 AND meta_key = %s", meta["meta_key"]
    ) == [(meta["meta_value"],)]
    assert (MUG_1, 25) in _rows(net, "SELECT object_id, term_taxonomy_id FROM wp_term_relationships")


def test_missing_shipping_class_created_with_its_description(wp_network: Any) -> None:
    """Fixture 17C step 1 (Bulky, 'Large parcels') + step 2 (assigned, count 1), from one write."""
    net = wp_network
    _relate(
        net,
        SOURCE,
        MUG_2,
        "product_shipping_class",
        ["bulky"],
        bulky={"name": "Bulky", "description": "Large parcels"},
    )
    assert _write(net, ShippingGroup(missing="create", clock=_clock), _target(net, MUG_1, "MUG"), MUG_2) == []
    (tt,) = _recorded("17", "C-shipping-class", 1)["term_taxonomy"]["inserted"]
    assert _rows(
        net,
        "SELECT t.name, t.slug, tt.description, tt.parent, tt.count FROM wp_term_taxonomy tt "
        "JOIN wp_terms t ON t.term_id = tt.term_id WHERE tt.taxonomy = 'product_shipping_class'",
    ) == [("Bulky", "bulky", tt["description"], 0, 1)]
    # Not hierarchical: no product_shipping_class_children option (clean_term_cache).
    assert _rows(net, "SELECT 1 FROM wp_options WHERE option_name = 'product_shipping_class_children'") == []


def test_created_category_takes_its_parent_by_slug(wp_network: Any) -> None:
    """Source: wp_insert_term (parent), _get_term_hierarchy (option), WooCommerce CategoryLookup
    (a row per ancestor), _wc_term_recount (ancestors count their descendants' products)."""
    net = wp_network
    with net.engine.begin() as conn:
        home_2 = conn.exec_driver_sql("SELECT term_id FROM wp_2_terms WHERE slug = 'home'").scalar()
    _relate(net, SOURCE, MUG_2, "product_cat", ["mugs"], mugs={"name": "Mugs", "parent": home_2})
    assert _write(net, TaxonomyGroup(missing="create", clock=_clock), _target(net, MUG_1, "MUG"), MUG_2) == []
    ((mugs, parent),) = _rows(
        net,
        "SELECT tt.term_id, tt.parent FROM wp_term_taxonomy tt JOIN wp_terms t USING (term_id) WHERE t.slug = 'mugs'",
    )
    assert parent == 23  # Home on blog 1
    assert sorted(
        _rows(net, "SELECT category_tree_id FROM wp_wc_category_lookup WHERE category_id = %s", mugs)
    ) == [
        (23,),
        (mugs,),
    ]
    assert _rows(net, "SELECT option_value FROM wp_options WHERE option_name = 'product_cat_children'") == [
        (f"a:1:{{i:23;a:1:{{i:0;i:{mugs};}}}}",)
    ]
    # MUG left Home for its child: Home still counts it (descendants count), Mugs counts 1.
    counts = dict(
        _rows(net, "SELECT term_id, meta_value FROM wp_termmeta WHERE meta_key = 'product_count_product_cat'")
    )
    assert (counts[23], counts[mugs]) == ("5", "1")


def test_same_name_other_slug_is_a_problem(wp_network: Any) -> None:
    """wp_insert_term refuses a second term of the same name under the same parent."""
    net = wp_network
    _relate(net, SOURCE, MUG_2, "product_cat", ["home-2"], **{"home-2": {"name": "Home"}})
    before = h.snapshot(net.url, "wp_")
    problems = _write(net, TaxonomyGroup(missing="create", clock=_clock), _target(net, MUG_1, "MUG"), MUG_2)
    assert [p.field for p in problems] == ["terms:product_cat"] and "'home'" in problems[0].reason
    assert h.diff_snapshots(before, h.snapshot(net.url, "wp_")) == {}


# --------------------------------------------------------------------------- rules from the source


def test_product_without_category_gets_the_default_category(wp_network: Any) -> None:
    """WC_Post_Data::force_default_term: categories emptied -> default_product_cat (Uncategorized)."""
    net = wp_network
    _relate(net, SOURCE, MUG_2, "product_cat", [])
    assert _write(net, TaxonomyGroup(clock=_clock), _target(net, MUG_1, "MUG"), MUG_2) == []
    assert _rows(
        net,
        "SELECT t.slug FROM wp_term_relationships tr JOIN wp_term_taxonomy tt USING (term_taxonomy_id) "
        "JOIN wp_terms t ON t.term_id = tt.term_id WHERE tr.object_id = %s AND tt.taxonomy = 'product_cat'",
        MUG_1,
    ) == [("uncategorized",)]
    counts = dict(_rows(net, "SELECT term_id, count FROM wp_term_taxonomy WHERE term_id IN (15, 23)"))
    assert counts == {15: 1, 23: 4}
    meta = dict(
        _rows(net, "SELECT term_id, meta_value FROM wp_termmeta WHERE meta_key = 'product_count_product_cat'")
    )
    assert (meta[15], meta[23]) == ("1", "4")


def test_visibility_never_touches_outofstock(wp_network: Any) -> None:
    """POSTER is out of stock on both blogs; featuring it keeps its outofstock term and count."""
    net = wp_network
    _relate(net, SOURCE, POSTER_2, "product_visibility", ["featured", "outofstock"])
    group = VisibilityGroup(clock=_clock)
    with net.engine.connect() as conn:
        assert group.read(conn, discover(conn, net.prefix).blog(SOURCE), [POSTER_2])[POSTER_2] == {
            "terms:product_visibility": ("featured",)
        }
    assert _write(net, group, _target(net, POSTER_1, "POSTER"), POSTER_2) == []
    assert sorted(
        _rows(net, "SELECT term_taxonomy_id FROM wp_term_relationships WHERE object_id = %s", POSTER_1)
    ) == [
        (2,),
        (8,),
        (9,),
        (23,),
    ]
    assert dict(
        _rows(net, "SELECT term_taxonomy_id, count FROM wp_term_taxonomy WHERE term_taxonomy_id IN (8, 9)")
    ) == {
        8: 1,
        9: 1,
    }
    # Unfeaturing it on the source removes featured only.
    _relate(net, SOURCE, POSTER_2, "product_visibility", ["outofstock"])
    assert _write(net, group, _target(net, POSTER_1, "POSTER"), POSTER_2) == []
    assert (POSTER_1, 9) in _rows(net, "SELECT object_id, term_taxonomy_id FROM wp_term_relationships")


def test_visibility_rejects_foreign_slugs() -> None:
    assert VisibilityGroup().problems({"terms:product_visibility": ("featured", "outofstock")}) == [
        (
            "terms:product_visibility",
            "'outofstock' is not one of ['exclude-from-catalog', 'exclude-from-search', 'featured']",
        )
    ]


def test_variation_weight_saves_the_parent_and_empty_deletes(wp_network: Any) -> None:
    """A dimension set to '' deletes the row (update_or_delete_post_meta), and the parent's child
    weight transients go with the variation's save (fixture 17B step 2 for the set)."""
    net = wp_network
    group = ShippingGroup(clock=_clock)
    target = Target(_target(net, 0, "").blog, HOODIE_S_1, "HOODIE-S", "product_variation", 16)
    with net.engine.begin() as conn:
        current = group.read(conn, target.blog, [HOODIE_S_1])[HOODIE_S_1]
        assert current == {
            "_weight": None,
            "_length": None,
            "_width": None,
            "_height": None,
            "terms:product_shipping_class": (),
        }
        assert group.write(conn, target, current, {**current, "_weight": "0.6"}) == []
    assert _rows(
        net, "SELECT meta_value FROM wp_postmeta WHERE post_id = %s AND meta_key = '_weight'", HOODIE_S_1
    ) == [("0.6",)]
    with net.engine.begin() as conn:
        current = group.read(conn, target.blog, [HOODIE_S_1])[HOODIE_S_1]
        assert group.write(conn, target, current, {**current, "_weight": ""}) == []
    assert (
        _rows(net, "SELECT 1 FROM wp_postmeta WHERE post_id = %s AND meta_key = '_weight'", HOODIE_S_1) == []
    )
    assert _rows(net, "SELECT post_modified_gmt FROM wp_posts WHERE ID = 16") == [(NOW.replace(tzinfo=None),)]


def test_content_is_for_products_only(wp_network: Any) -> None:
    """A variation's title and excerpt are generated by WooCommerce from its parent and attributes."""
    net = wp_network
    group = ContentGroup(clock=_clock)
    with net.engine.connect() as conn:
        blog = discover(conn, net.prefix).blog(TARGET)
        values = group.read(conn, blog, [HOODIE_S_1, MUG_1])
    assert values[HOODIE_S_1] == {"post_title": None, "post_excerpt": None, "post_content": None}
    assert values[MUG_1]["post_title"] == "Mug"
    before = h.snapshot(net.url, "wp_")
    target = Target(blog, HOODIE_S_1, "HOODIE-S", "product_variation", 16)
    with net.engine.begin() as conn:
        assert group.write(conn, target, values[HOODIE_S_1], {"post_title": "X"}) == []
    assert h.diff_snapshots(before, h.snapshot(net.url, "wp_")) == {}


# --------------------------------------------------------------------------- blog 2: Polylang, hide out of stock


def test_created_category_on_polylang_blog_takes_the_product_language(wp_network: Any) -> None:
    """Polylang (its ``polylang`` option translates product_cat on blog 2): the new term gets the
    product's language (term_language pll_en) and a one-entry translation group, like Home there."""
    net = wp_network
    _relate(net, TARGET, MUG_1, "product_cat", ["home", "kitchen"], kitchen={"name": "Kitchen"})
    group = TaxonomyGroup(missing="create", clock=_clock)
    assert _write(net, group, _target(net, MUG_2, "MUG", blog_id=SOURCE), MUG_1, source=TARGET) == []
    ((kitchen,),) = _rows(net, "SELECT term_id FROM wp_2_terms WHERE slug = 'kitchen'")
    languages = _rows(
        net,
        "SELECT t.slug FROM wp_2_term_relationships tr JOIN wp_2_term_taxonomy tt USING (term_taxonomy_id) "
        "JOIN wp_2_terms t ON t.term_id = tt.term_id WHERE tr.object_id = %s AND tt.taxonomy = 'term_language'",
        kitchen,
    )
    assert languages == [("pll_en",)]
    assert _rows(net, "SELECT count FROM wp_2_term_taxonomy WHERE term_taxonomy_id = 17") == [(6,)]  # was 5
    groups = _rows(
        net,
        "SELECT t.name = t.slug, t.slug LIKE 'pll\\_%%', tt.description, tt.count FROM wp_2_term_relationships tr "
        "JOIN wp_2_term_taxonomy tt USING (term_taxonomy_id) JOIN wp_2_terms t ON t.term_id = tt.term_id "
        "WHERE tr.object_id = %s AND tt.taxonomy = 'term_translations'",
        kitchen,
    )
    assert groups == [(1, 1, f'a:1:{{s:2:"en";i:{kitchen};}}', 1)]


def test_hidden_out_of_stock_product_is_not_in_the_catalog_count(wp_network: Any) -> None:
    """Blog 2 hides out-of-stock items: POSTER (outofstock) joining Outdoor raises the term's
    count (_update_post_term_count) but not product_count_product_cat (_wc_term_recount)."""
    net = wp_network
    _relate(net, TARGET, POSTER_1, "product_cat", ["home", "outdoor"])
    assert (
        _write(
            net,
            TaxonomyGroup(clock=_clock),
            _target(net, POSTER_2, "POSTER", blog_id=SOURCE),
            POSTER_1,
            source=TARGET,
        )
        == []
    )
    ((outdoor,),) = _rows(net, "SELECT term_id FROM wp_2_terms WHERE slug = 'outdoor'")
    assert _rows(net, "SELECT count FROM wp_2_term_taxonomy WHERE term_id = %s", outdoor) == [(2,)]
    assert _rows(
        net,
        "SELECT meta_value FROM wp_2_termmeta WHERE term_id = %s AND meta_key = 'product_count_product_cat'",
        outdoor,
    ) == [("1",)]


def test_bad_dimension_is_reported_and_the_rest_written(wp_network: Any) -> None:
    """Issue 10 "bad values": a negative or non-numeric weight/dimension is a Problem with blog,
    post, SKU and field; that field is left alone, the member's other fields are written."""
    net = wp_network
    group = ShippingGroup(clock=_clock)
    target = _target(net, MUG_1, "MUG")
    with net.engine.begin() as conn:
        current = group.read(conn, target.blog, [MUG_1])[MUG_1]
        problems = group.write(
            conn, target, current, {**current, "_weight": "-1", "_width": "abc", "_length": "10"}
        )
    assert [(p.blog_id, p.post_id, p.sku, p.field, p.reason) for p in problems] == [
        (1, MUG_1, "MUG", "_weight", "'-1' is negative"),
        (1, MUG_1, "MUG", "_width", "'abc' is not a number"),
    ]
    assert _rows(
        net,
        "SELECT meta_key, meta_value FROM wp_postmeta WHERE post_id = %s AND meta_key IN ('_weight', '_width', '_length')",
        MUG_1,
    ) == [("_length", "10")]
