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
