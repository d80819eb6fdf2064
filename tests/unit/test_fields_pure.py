"""Pure parts of the field groups and the pass: comparison as WooCommerce reads values, bad
values, the authority choice, history clipping, --fields parsing and the registry."""

from __future__ import annotations

from datetime import datetime

import pytest

from syncd.config import config_for
from syncd.fields.group import GROUPS
from syncd.fields.manual import BadFields, parse_groups
from syncd.fields.meta import IdentityGroup, PurchaseGroup, TaxGroup
from syncd.fields.registry import make_groups, unavailable
from syncd.fields.sync_pass import Member, choose_authority, differing_fields, text_of, watched_names
from syncd.record import clip_field_value

URL = "mysql+pymysql://u:p@h/db"


def test_canonical_values_compare_as_woocommerce_reads_them() -> None:
    g = PurchaseGroup()
    absent = dict.fromkeys(g.meta_keys)
    stored = {"_sold_individually": "no", "_purchase_note": "", "_virtual": "0", "_downloadable": "false"}
    assert differing_fields(g, absent, stored) == []
    assert differing_fields(g, absent, {**stored, "_virtual": "1"}) == ["_virtual"]
    assert g.canonical({"_virtual": "TRUE"})["_virtual"] == "yes"
    t = TaxGroup()
    assert (
        differing_fields(
            t, {"_tax_status": None, "_tax_class": ""}, {"_tax_status": "taxable", "_tax_class": None}
        )
        == []
    )


def test_bad_values() -> None:
    assert TaxGroup().problems({"_tax_status": "vat", "_tax_class": "reduced-rate"}) == [
        ("_tax_status", "'vat' is not one of taxable, shipping, none")
    ]
    assert TaxGroup().problems({"_tax_status": None, "_tax_class": None}) == []
    assert [f for f, _ in IdentityGroup().problems({"_global_unique_id": "ABC-1"})] == ["_global_unique_id"]
    assert IdentityGroup().problems({"_global_unique_id": "978-3-16-148410-0"}) == []
    assert [f for f, _ in PurchaseGroup().problems({"_virtual": "maybe"})] == ["_virtual"]


def m(blog: int, post: int) -> Member:
    return Member(7, blog, post, "MUG", "product", 0)


def test_authority_newest_ties_to_lowest_blog_or_configured_blog() -> None:
    members = [m(1, 10), m(2, 20), m(3, 30)]
    t = datetime(2026, 1, 1)
    later = datetime(2026, 1, 2)
    assert choose_authority(members, {(1, 10): t, (2, 20): later, (3, 30): later}, None)[0] == m(2, 20)
    assert choose_authority(members, {(1, 10): t, (2, 20): t, (3, 30): None}, None)[0] == m(1, 10)
    assert choose_authority(members, {}, 3) == (m(3, 30), "blog 3")
    auth, why = choose_authority(members, {}, 4)
    assert auth is None and "blog 4 has no member" in why


def test_history_values_are_cut_at_240_characters_plus_ellipsis() -> None:
    assert clip_field_value(None) is None
    assert clip_field_value("x" * 255) == "x" * 255
    cut = clip_field_value("y" * 256)
    assert cut == "y" * 240 + "…" and len(cut) == 241
    assert text_of(("a", "b")) == "a,b" and text_of(None) is None


def test_long_field_values_are_compared_by_their_hash() -> None:
    from syncd.record import field_fingerprint, field_value_hash

    assert field_value_hash("x" * 255) is None and field_fingerprint("x" * 255) == "x" * 255
    a, b = "y" * 300, "y" * 299 + "z"
    assert clip_field_value(a) == clip_field_value(b)  # the cut text cannot tell them apart
    assert field_fingerprint(a) != field_fingerprint(b)
    assert field_fingerprint(a) == "#" + field_value_hash(a) and len(field_fingerprint(a)) == 41
    assert field_fingerprint(None) is None


def test_parse_groups_and_registry() -> None:
    assert parse_groups("purchase, tax", ["tax", "purchase"]) == ["tax", "purchase"]
    with pytest.raises(BadFields, match="unknown field group 'colour'"):
        parse_groups("colour", GROUPS)
    with pytest.raises(BadFields, match="not available"):
        parse_groups("tax", ["price"])
    groups = make_groups(config_for(URL))
    assert {"tax", "identity", "purchase"} <= set(groups)
    assert list(groups) == [g for g in GROUPS if g in groups]
    assert groups["tax"].meta_keys == ("_tax_status", "_tax_class")
    assert watched_names(groups["purchase"]) == {
        "_sold_individually",
        "_purchase_note",
        "_virtual",
        "_downloadable",
    }
    assert unavailable(config_for(URL, fields={"tax": "manual"})) == []


def test_known_values_from_the_latest_pass() -> None:
    from syncd.fields.since import HistoryFact, edited_since, known_values

    members = [m(1, 10), m(2, 20), m(3, 30)]
    facts = [
        HistoryFact(1, 100, "field", (2, 20), "_tax_status", "taxable", "none"),  # an older pass
        HistoryFact(5, 200, "field", (2, 20), "_tax_status", "none", "shipping"),  # the latest: from 1:10
        HistoryFact(6, 200, "skipped", (3, 30), "_tax_status", "taxable", "shipping"),
        HistoryFact(7, 300, "field", (9, 90), "_tax_status", "a", "b"),  # not a member
    ]
    held, bases = known_values(facts, members)
    assert held == {
        (1, 10): {"_tax_status": "shipping"},  # the authority: held the copied value
        (2, 20): {"_tax_status": "shipping"},
        (3, 30): {"_tax_status": "taxable"},  # kept its own value
    }
    assert bases == {7: {"_tax_status": "shipping"}}
    now = {
        (1, 10): {"_tax_status": "shipping"},
        (2, 20): {"_tax_status": "none"},
        (3, 30): {"_tax_status": "taxable"},
    }
    assert edited_since(held, now) == [(2, 20)]
