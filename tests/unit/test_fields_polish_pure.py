"""Pure parts of issue 10's polish: a field that does not apply to a member (a variation's tax
status) never differs; the field-work summary and its warning."""

from __future__ import annotations

from syncd.fields import pending
from syncd.fields.meta import TaxGroup
from syncd.fields.sync_pass import Member, differences, differing_fields

TAX = TaxGroup()
SIMPLE = {"_tax_status": "none", "_tax_class": ""}
VARIATION = {"_tax_class": "parent"}  # as TaxGroup.read gives a variation: no _tax_status


def test_a_field_absent_from_one_member_is_neither_compared_nor_wanted():
    assert TAX.canonical(VARIATION) == {"_tax_class": "parent"}
    assert TAX.canonical({"_tax_status": None, "_tax_class": None}) == {
        "_tax_status": "taxable",
        "_tax_class": "",
    }
    assert differing_fields(TAX, VARIATION, SIMPLE) == ["_tax_class"]
    assert differing_fields(TAX, SIMPLE, VARIATION) == ["_tax_class"]
    a, b = Member(1, 1, 17, "S", "product_variation", 16), Member(1, 2, 15, "S", "product_variation", 14)
    same = {a.key: VARIATION, b.key: {"_tax_class": "parent"}}
    assert differences(TAX, same, [a, b]) == []
    c = Member(1, 3, 19, "S", "product", 0)
    mixed = {**same, c.key: {"_tax_status": "none", "_tax_class": "parent"}}
    assert differences(TAX, mixed, [a, b, c]) == []  # only c has a tax status: nothing to compare it with


def test_field_work_warning_only_without_a_leader():
    work = {"deferred": {"pending": 2, "oldest_age_s": 3.1}, "checks": {"pending": 0, "oldest_age_s": None}}
    assert pending.describe(work) == "2 deferred (oldest 3.1 s), 0 price checks"
    assert pending.warning(work, leader_held=True) is None
    assert "no daemon leads" in (pending.warning(work, leader_held=False) or "")
    empty = {"deferred": {"pending": 0, "oldest_age_s": None}, "checks": {"pending": 0, "oldest_age_s": None}}
    assert pending.warning(empty, leader_held=False) is None
    assert pending.warning(None, leader_held=False) is None
