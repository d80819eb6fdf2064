"""Pure rules of the term and content field groups (no database)."""

from __future__ import annotations

import pytest

from syncd.fields.content import ContentGroup
from syncd.fields.terms import ShippingGroup, TaxonomyGroup, VisibilityGroup
from syncd.fields.termsets import children_option_value, field_name


@pytest.mark.parametrize("value", [None, "", "0", "0.4", "10", "9.5", ".5", "12."])
def test_shipping_accepts_what_wc_format_decimal_stores(value: str | None) -> None:
    assert ShippingGroup().problems({"_weight": value, "_height": value}) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("abc", "not a number"),
        ("1,5", "not a number"),
        ("1e3", "not a number"),
    ],
)
def test_shipping_rejects_negative_and_non_numeric(value: str, reason: str) -> None:
    assert ShippingGroup().problems({"_length": value}) == [("_length", f"{value!r} is {reason}")]


def test_one_shipping_class_at_most() -> None:
    assert ShippingGroup().problems({"terms:product_shipping_class": ("bulky", "small")}) == [
        ("terms:product_shipping_class", "more than one shipping class")
    ]


def test_visibility_owns_three_slugs_only() -> None:
    ok = {"terms:product_visibility": ("exclude-from-catalog", "exclude-from-search", "featured")}
    assert VisibilityGroup().problems(ok) == []
    assert [f for f, _ in VisibilityGroup().problems({"terms:product_visibility": ("rated-5",)})] == [
        "terms:product_visibility"
    ]


def test_empty_slug_is_a_problem() -> None:
    assert TaxonomyGroup().problems({"terms:product_tag": (" ",)}) == [
        ("terms:product_tag", "empty term slug")
    ]


def test_missing_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="missing"):
        TaxonomyGroup(missing="ignore")


def test_children_option_is_wordpress_serialisation() -> None:
    """_get_term_hierarchy(): parent => [children] in term id order; fixture 20 step 2: a:0:{}."""
    assert children_option_value([(15, 0), (25, 0)]) == "a:0:{}"
    assert children_option_value([(23, 0), (25, 23), (26, 23), (27, 25)]) == (
        "a:2:{i:23;a:2:{i:0;i:25;i:1;i:26;}i:25;a:1:{i:0;i:27;}}"
    )


def test_group_shapes() -> None:
    assert field_name("product_cat") == "terms:product_cat"
    assert (ShippingGroup.name, ShippingGroup.meta_keys, ShippingGroup.taxonomies) == (
        "shipping",
        ("_weight", "_length", "_width", "_height"),
        ("product_shipping_class",),
    )
    assert (VisibilityGroup.name, VisibilityGroup.taxonomies) == ("visibility", ("product_visibility",))
    assert (TaxonomyGroup.name, TaxonomyGroup.taxonomies) == ("taxonomy", ("product_cat", "product_tag"))
    assert (ContentGroup.name, ContentGroup.post_columns) == (
        "content",
        ("post_title", "post_excerpt", "post_content"),
    )
