"""Linking beyond SKU, without a database: the planner's shared-translation rules (fan-out counted
once, changes reaching every connected product once), SKU renames, joins, Polylang translation
validation, manual-link refusals, per-blog configuration and languages."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from syncd.catalog import (
    blog_language,
    locale_language,
    parse_translations,
    polylang_default_language,
    shares_stock,
    validate_groups,
)
from syncd.config import BlogSettings, ConfigError, parse_config
from syncd.links import LinkError, Product, link_refusals, parse_target
from syncd.network import Blog
from syncd.plan import FAN_OUT_NOTE, Change, Facts, Member, plan_batch, plan_join

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456)
T1 = datetime(2026, 1, 1, 12, 0, 1, 5)

# Blog 1: no Polylang (en). Blogs 2 and 3: Polylang, BOOK en + BOOK fr, translations of each other.
B1 = (1, 10)
EN2, FR2 = (2, 18), (2, 19)
EN3, FR3 = (3, 16), (3, 17)
EN_GROUP = [
    Member(*B1, sku="BOOK", lang="en", group_id=1),
    Member(*EN2, "BOOK", lang="en", group_id=1),
    Member(*EN3, "BOOK", lang="en", group_id=1),
]
FR_GROUP = [Member(*FR2, "BOOK", lang="fr", group_id=2), Member(*FR3, "BOOK", lang="fr", group_id=2)]
GROUPS = {**{m.key: EN_GROUP for m in EN_GROUP}, **{m.key: FR_GROUP for m in FR_GROUP}}
FACTS = {k: Facts(stock="7") for k in (B1, EN2, FR2, EN3, FR3)}
LIVE = (1, 2, 3)
SHARED_2 = {EN2: (EN2, FR2), FR2: (EN2, FR2)}
SHARED_3 = {EN3: (EN3, FR3), FR3: (EN3, FR3)}


def sale(i, key, old, new, conn=7, at=T0):
    return Change(i, key[0], key[1], "_stock", "U", old, new, at, conn)


def deltas(plan):
    return {w.key: w.stock.delta for w in plan.writes if w.stock is not None}


def test_without_shared_stock_languages_stay_apart():
    plan = plan_batch([sale(1, FR2, "7", "5")], GROUPS, FACTS, LIVE)
    assert deltas(plan) == {FR3: -2}
    plan = plan_batch([sale(1, EN3, "7", "6")], GROUPS, FACTS, LIVE)
    assert deltas(plan) == {B1: -1, EN2: -1}


def test_add_on_fan_out_is_one_sale_reaching_every_connected_product_once():
    # Polylang for WooCommerce: one UPDATE ... WHERE post_id IN (18, 19): same conn, same time, same delta.
    changes = [sale(1, EN2, "7", "5"), sale(2, FR2, "7", "5")]
    plan = plan_batch(changes, GROUPS, FACTS, LIVE, translations={**SHARED_2, **SHARED_3})
    assert deltas(plan) == {B1: -2, EN3: -2, FR3: -2}
    assert [n.reason for n in plan.notes if n.change_id == 2] == [f"{FAN_OUT_NOTE} of change 1: counted once"]
    assert {c.id for c in plan.applied} == {1, 2}  # both acknowledged; the second reached nobody itself
    assert all(w.change_ids == [1] for w in plan.writes)


def test_fan_out_without_sharing_elsewhere_still_reaches_each_language_group_once():
    plan = plan_batch(
        [sale(1, EN2, "7", "5"), sale(2, FR2, "7", "5")], GROUPS, FACTS, LIVE, translations=SHARED_2
    )
    assert deltas(plan) == {B1: -2, EN3: -2, FR3: -2}


def test_change_syncd_applies_reaches_all_translations_of_a_sharing_blog_once():
    # A sale on blog 1 (no Polylang) reaches blog 2 en and its translation fr, blog 3 en and fr.
    plan = plan_batch([sale(1, B1, "7", "6")], GROUPS, FACTS, LIVE, translations={**SHARED_2, **SHARED_3})
    assert deltas(plan) == {EN2: -1, FR2: -1, EN3: -1, FR3: -1}
    assert plan.refresh == {1: {10}, 2: {18, 19}, 3: {16, 17}}  # derived data per member


def test_sharing_blog_origin_translations_are_never_written_by_syncd():
    # One row only (a writer that bypassed the add-on): the origin blog's translations are the shop's.
    plan = plan_batch([sale(1, EN2, "7", "6")], GROUPS, FACTS, LIVE, translations={**SHARED_2, **SHARED_3})
    assert deltas(plan) == {B1: -1, EN3: -1, FR3: -1}


def test_two_statements_are_two_sales():
    changes = [sale(1, EN2, "7", "5", at=T0), sale(2, FR2, "5", "3", at=T1)]  # en x2 then fr x2, two fan-outs
    plan = plan_batch(changes, GROUPS, FACTS, LIVE, translations=SHARED_2)
    assert deltas(plan) == {B1: -4, EN3: -4, FR3: -4}


def test_other_connection_or_other_delta_is_another_sale():
    changes = [sale(1, EN2, "7", "5"), sale(2, FR2, "7", "5", conn=8)]
    assert deltas(plan_batch(changes, GROUPS, FACTS, LIVE, translations=SHARED_2))[B1] == -4
    changes = [sale(1, EN2, "7", "5"), sale(2, FR2, "7", "6")]
    assert deltas(plan_batch(changes, GROUPS, FACTS, LIVE, translations=SHARED_2))[B1] == -3


def test_per_translation_copy_is_counted_once():
    # An absolute set copied to the translation by a second statement of the same connection.
    changes = [sale(1, EN2, "7", "10", at=T0), sale(2, FR2, "7", "10", at=T1)]
    plan = plan_batch(changes, GROUPS, FACTS, LIVE, translations=SHARED_2)
    assert deltas(plan) == {B1: 3, EN3: 3, FR3: 3}


def test_fan_out_rules_only_on_sharing_blogs():
    changes = [sale(1, EN2, "7", "5"), sale(2, FR2, "7", "5")]
    assert deltas(plan_batch(changes, GROUPS, FACTS, LIVE)) == {B1: -2, EN3: -2, FR3: -2}  # separate groups


def test_registers_follow_shared_translations_too():
    c = Change(1, 1, 10, "_backorders", "U", "no", "notify", T0, 3)
    plan = plan_batch([c], GROUPS, FACTS, LIVE, translations={**SHARED_2, **SHARED_3})
    assert {w.key: w.registers for w in plan.writes} == {
        k: {"_backorders": "notify"} for k in (EN2, FR2, EN3, FR3)
    }


def test_translation_without_sku_is_written_through_its_shared_stock():
    nosku = (2, 40)
    tr = {EN2: (EN2, nosku), nosku: (EN2, nosku)}
    facts = {**FACTS, nosku: Facts(stock="7")}
    plan = plan_batch([sale(1, B1, "7", "6")], GROUPS, facts, LIVE, translations=tr)
    assert deltas(plan) == {EN2: -1, nosku: -1, EN3: -1}


def test_excluded_translation_is_not_written():
    nosku = (2, 40)
    tr = {EN2: (EN2, nosku), nosku: (EN2, nosku)}
    groups = {**GROUPS, nosku: [Member(*nosku, "GIFT-1", "excluded")]}
    facts = {**FACTS, nosku: Facts(stock="7")}
    plan = plan_batch([sale(1, B1, "7", "6")], groups, facts, LIVE, translations=tr)
    assert deltas(plan) == {EN2: -1, EN3: -1}


def rename(i, key, old, new):
    return Change(i, key[0], key[1], "_sku", "U", old, new, T0, 5)


def test_rename_is_carried_to_the_other_members_unless_refused():
    plan = plan_batch(
        [rename(1, B1, "BOOK", "BOOK-2")],
        GROUPS,
        FACTS,
        LIVE,
        propagate_renames=True,
        sku_conflicts={(1, EN3): 99},
    )
    assert {w.key: w.new_sku for w in plan.writes} == {EN2: "BOOK-2"}
    refused = [n for n in plan.notes if n.level == "warning"]
    assert [(n.blog_id, n.post_id) for n in refused] == [EN3]
    assert "refused on blog 3: post 99 already has that SKU" in refused[0].reason
    assert [c.id for c in plan.renamed] == [1]
    assert plan.refresh.get(2) == {18}  # saved as WooCommerce saves a rename (lookup sku, post_modified)


def test_rename_not_carried_when_off_or_from_an_ambiguous_member():
    assert plan_batch([rename(1, B1, "BOOK", "BOOK-2")], GROUPS, FACTS, LIVE).writes == []
    amb = {
        k: [Member(m.blog_id, m.post_id, m.sku, "ambiguous" if m.key == B1 else "linked") for m in v]
        for k, v in GROUPS.items()
    }
    assert (
        plan_batch([rename(1, B1, "BOOK", "BOOK-2")], amb, FACTS, LIVE, propagate_renames=True).writes == []
    )


def test_settling_member_is_frozen_and_its_own_sales_are_kept_for_its_join():
    new = (1, 50)
    group = [*EN_GROUP, Member(*new, "BOOK", lang="en", group_id=1)]
    groups = {m.key: group for m in group}
    facts = {**FACTS, new: Facts(stock="3", backorders="notify")}
    changes = [
        Change(1, 1, 50, "_stock", "I", None, "3", T0, 9),  # creation of the new product
        sale(2, EN3, "7", "6", conn=4),  # a sale elsewhere in the same batch
        sale(3, new, "3", "1", conn=9),  # a sale of 2 on the new product before it joined
    ]
    plan = plan_batch(changes, groups, facts, LIVE, settling={new})
    w = {x.key: x for x in plan.writes}
    assert new not in w  # nothing is written into a product WooCommerce may still be writing
    assert w[EN2].stock.delta == -1 and w[B1].stock.delta == -1  # its own sale is not propagated now
    assert plan.settle_deltas == {new: Decimal(-2)}  # but kept for the join
    assert new not in plan.refresh.get(1, set())  # not even its derived data


def test_join_takes_the_authority_values_plus_its_own_sales_which_the_others_get_too():
    new = (1, 50)
    me = Member(*new, "BOOK", lang="en", group_id=1)
    facts = {**FACTS, new: Facts(stock="3", backorders="notify")}
    facts[EN2] = Facts(stock="7", backorders="no", low_stock_amount="2")
    auth = next(m for m in EN_GROUP if m.key == EN2)
    others = [m for m in EN_GROUP if m.key != new]
    joined = plan_join(me, auth, facts, others, own_delta=Decimal(-2))
    assert joined.joiner.stock.is_set and joined.joiner.stock.set_value == Decimal(5)  # 7 - 2
    assert joined.joiner.registers == {"_backorders": "no", "_low_stock_amount": "2"}
    assert joined.joiner.joined_from == EN2
    assert {w.key: w.stock.delta for w in joined.others} == {m.key: Decimal(-2) for m in others}


def test_first_member_of_a_group_keeps_its_own_values():
    me = Member(1, 50, "NEW", group_id=9)
    joined = plan_join(me, None, {(1, 50): Facts(stock="3")}, [], own_delta=Decimal(-1))
    assert joined.joiner is None and joined.others == []


def test_join_refused_while_the_product_has_duplicate_rows():
    me = Member(1, 50, "BOOK", group_id=1)
    facts = {**FACTS, (1, 50): Facts(stock="3", duplicate_keys=("_stock",))}
    joined = plan_join(me, next(m for m in EN_GROUP if m.key == EN2), facts, EN_GROUP)
    assert joined.joiner is None and joined.notes[0].level == "warning"


LANGS = {"en", "fr"}


def test_translations_parse_and_validate_like_polylang():
    assert parse_translations(b'a:2:{s:2:"en";i:18;s:2:"fr";i:19;}', LANGS) == ({"en": 18, "fr": 19}, [])
    entries, problems = parse_translations(b'a:3:{s:2:"en";i:18;s:2:"xx";i:5;s:2:"fr";i:0;}', LANGS)
    assert entries == {"en": 18}
    assert problems == ["key 'xx' is not a language of the blog", "fr: '0' is not a positive post id"]
    assert parse_translations(b"a:2:{s:2:", LANGS) == (
        {},
        ["the description is not valid PHP-serialized data"],
    )
    assert parse_translations(b's:3:"abc";', LANGS) == ({}, ["the description is not a serialized array"])
    assert parse_translations(b"", LANGS)[1] == ["the description is empty"]


def test_group_members_must_carry_their_language_and_be_listed():
    valid, problems = validate_groups(
        {39: b'a:2:{s:2:"en";i:18;s:2:"fr";i:19;}', 40: b"garbage"},
        {39: {18, 19, 20}, 40: {30}},
        LANGS,
        {18: "en", 19: "en"},
    )
    assert valid == {39: {"en": 18}, 40: {}}
    assert problems == [
        "post_translations term 39: fr: post 19 is in language 'en'",
        "post_translations term 39: post 19 is attached to the group but not listed in it",
        "post_translations term 39: post 20 is attached to the group but not listed in it",
        "post_translations term 40: the description is not valid PHP-serialized data",
        "post_translations term 40: post 30 is attached to the group but not listed in it",
    ]


def test_languages_from_locale_and_polylang_option():
    assert [locale_language(x) for x in ("", None, "fr_FR", "de_DE_formal", "pt-BR")] == [
        "en",
        "en",
        "fr",
        "de",
        "pt",
    ]
    assert polylang_default_language(b'a:2:{s:12:"default_lang";s:2:"FR";s:4:"sync";a:0:{}}') == "fr"
    assert polylang_default_language(b"corrupt") is None


def test_blog_language_and_shared_stock_defaults():
    plain = Blog(1, "wp_", woocommerce=True, options={"WPLANG": "de_DE"})
    assert blog_language(plain) == "de" and blog_language(plain, BlogSettings(language="en")) == "en"
    assert blog_language(Blog(2, "wp_2_", woocommerce=True)) == "en"  # '' = en_US
    pll = Blog(2, "wp_2_", woocommerce=True, polylang=True)
    pllwc = Blog(3, "wp_3_", woocommerce=True, polylang=True, polylang_wc=True)
    assert (shares_stock(pll), shares_stock(pllwc)) == (False, True)  # on with the add-on
    assert shares_stock(pllwc, BlogSettings(translations_share_stock=False)) is False
    assert shares_stock(pll, BlogSettings(translations_share_stock=True)) is True
    assert shares_stock(plain, BlogSettings(translations_share_stock=True)) is False  # no translations


def product(b, p, **kw):
    base = dict(
        exists=True, post_type="product", post_status="publish", product_type="simple", manage_stock="yes"
    )
    base.update(kw)
    return Product(b, p, **base)


def test_link_refusals_explain_incompatible_products():
    assert link_refusals([product(1, 11), product(2, 99, sku="")]) == []
    assert (
        link_refusals([product(1, 11), product(2, 30, post_type="product_variation", product_type="")]) == []
    )
    (msg,) = link_refusals([product(1, 11), product(2, 14, product_type="variable")])
    assert "cannot link a simple product or variation with a variable product" in msg
    (msg,) = link_refusals([product(1, 11), product(2, 20, manage_stock="no")])
    assert "manages stock with one that does not" in msg and "2:20" in msg
    msgs = link_refusals(
        [product(1, 11), product(1, 12), product(3, 5, exists=False), product(2, 7, product_type="external")]
    )
    assert any("blog 1 appears 2 times" in m for m in msgs)
    assert any("3:5: no such post" in m for m in msgs)
    assert any("external product holds no stock" in m for m in msgs)
    assert link_refusals([product(1, 11)]) == ["name at least two products (BLOG:POST BLOG:POST ...)"]


def test_link_targets():
    assert parse_target("2:24") == (2, 24) and parse_target(" 10 : 7 ") == (10, 7)
    for bad in ("2", "a:b", "0:5", "2:24:1"):
        with pytest.raises(LinkError):
            parse_target(bad)


URL = "mysql+pymysql://u:p@h/db"


def test_blog_settings_are_parsed_and_validated():
    cfg = parse_config(
        {
            "database": {"url": URL},
            "sync": {"propagate_sku_renames": False},
            "blogs": {"exclude": [4], "1": {"language": "EN"}, "2": {"translations_share_stock": True}},
        },
        env={},
    )
    assert cfg.sync.propagate_sku_renames is False
    assert cfg.blogs.for_blog(1).language == "en" and cfg.blogs.for_blog(1).translations_share_stock is None
    assert cfg.blogs.for_blog(2).translations_share_stock is True and cfg.blogs.for_blog(3).language is None
    assert parse_config({"database": {"url": URL}}, env={}).sync.propagate_sku_renames is True
    for blogs, key in (
        ({"1": {"language": "english!"}}, "blogs.1.language"),
        ({"1": {"language": 3}}, "blogs.1.language"),
        ({"2": {"translations_share_stock": "yes"}}, "blogs.2.translations_share_stock"),
        ({"2": {"langauge": "en"}}, "blogs.2.langauge"),
        ({"0": {"language": "en"}}, "blogs.0"),
        ({"2": "en"}, "blogs.2"),
        ({"inclde": [1]}, "blogs.inclde"),
    ):
        with pytest.raises(ConfigError) as exc:
            parse_config({"database": {"url": URL}, "blogs": blogs}, env={})
        assert exc.value.key == key, blogs


def test_two_renames_in_one_batch_end_at_the_last_everywhere():
    # Found by the storm: blog 2 renames BOOK -> A, then blog 1 renames it -> B. The earlier rename
    # must not be carried over blog 1's own later one (last captured change wins, as for registers).
    plan = plan_batch(
        [rename(1, EN2, "BOOK", "BOOK-A"), rename(2, B1, "BOOK", "BOOK-B")], GROUPS, FACTS, LIVE, propagate_renames=True
    )
    assert {w.key: w.new_sku for w in plan.writes} == {EN2: "BOOK-B", EN3: "BOOK-B"}
