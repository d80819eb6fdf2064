"""syncd.fields.checksum's pure parts: which buckets are dirty, their group-id ranges."""

from __future__ import annotations

from syncd.fields.checksum import BucketChecksums, dirty_buckets


def test_only_blogs_with_members_in_a_bucket_are_compared() -> None:
    m = {0: (1, 11, 0), 1: (2, 22, 0), 2: (1, 33, 0)}
    meta = {0: (3, 5, 6), 1: (6, 7, 8)}
    same = (m, meta)
    assert dirty_buckets([same, same]) == set()
    assert dirty_buckets([same, ({0: m[0], 1: m[1]}, meta)]) == set()  # no member in bucket 2: not compared
    assert dirty_buckets([same, (m, {0: (3, 5, 6), 1: (6, 7, 9)})]) == {1}  # a value differs
    assert dirty_buckets([same, (m, {0: (3, 5, 6)})]) == {1}  # rows on one blog, none on the other
    assert dirty_buckets([same, ({**m, 1: (2, 23, 0)}, meta)]) == {1}  # other link groups
    assert dirty_buckets([same, ({0: m[0]}, meta)]) == {1}  # meta rows the members do not explain


def test_ranges_merge_adjacent_buckets_and_the_last_is_open() -> None:
    sums = BucketChecksums.__new__(BucketChecksums)
    sums.g0, sums.width, sums.nbuckets = 10, 5, 4
    assert sums.ranges([]) == []
    assert sums.ranges([2, 0, 1]) == [(10, 24)]
    assert sums.ranges([0, 3]) == [(10, 14), (25, 2**63 - 1)]


def test_every_group_states_its_source_values_for_the_checksums() -> None:
    """A full pass takes the checksum path only when every group has a spec; each spec names
    exactly what the group's read compares (price: its source keys, never the derived _price)."""
    import pytest

    from syncd.fields.checksum import Spec, spec_of
    from syncd.fields.content import ContentGroup
    from syncd.fields.group import GROUPS
    from syncd.fields.meta import IdentityGroup, PurchaseGroup, TaxGroup
    from syncd.fields.price import PriceGroup
    from syncd.fields.terms import ShippingGroup, TaxonomyGroup, VisibilityGroup

    groups = {
        "price": PriceGroup(),
        "tax": TaxGroup(),
        "shipping": ShippingGroup(),
        "identity": IdentityGroup(),
        "purchase": PurchaseGroup(),
        "content": ContentGroup(),
        "visibility": VisibilityGroup(),
        "taxonomy": TaxonomyGroup(),
    }
    assert set(groups) == set(GROUPS)
    specs = {name: spec_of(g) for name, g in groups.items()}
    assert all(specs.values())
    assert specs["price"] == Spec(
        keys=("_regular_price", "_sale_price", "_sale_price_dates_from", "_sale_price_dates_to")
    )
    assert specs["content"] == Spec(
        columns=("post_title", "post_excerpt", "post_content"), column_types=("product",)
    )
    assert specs["shipping"] == Spec(
        keys=("_weight", "_length", "_width", "_height"),
        taxonomies=("product_shipping_class",),
        term_types=("product", "product_variation"),
    )
    assert specs["visibility"] == Spec(
        taxonomies=("product_visibility",),
        term_types=("product",),
        slugs=("exclude-from-catalog", "exclude-from-search", "featured"),
    )
    assert specs["taxonomy"] == Spec(taxonomies=("product_cat", "product_tag"), term_types=("product",))
    assert spec_of(object()) is None
    with pytest.raises(ValueError):
        Spec(keys=("_x' OR 1",))  # names enter SQL text
