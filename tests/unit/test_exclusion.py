"""exclude_skus as SQL: the same matches as SyncConfig.sku_excluded (fnmatchcase), pure part.

The LIKE translation is checked by evaluating it with a small LIKE interpreter, the REGEXP one
with Python's re (same syntax subset); the server-side evaluation is covered by the integration
tests (test_operator_tools.py)."""

from __future__ import annotations

import fnmatch
import re

import pytest

from syncd.config import SyncConfig
from syncd.exclusion import _like, _regexp, exclusion_condition, matching_pattern

SKUS = [
    "GIFT-1",
    "gift-1",
    "GIFT-",
    "GIFT-12",
    "SAMPLE",
    "SAMPLE-A",
    "SAMPLE-AB",
    "50%OFF",
    "A_B",
    "AxB",
    "x[1]",
    "CARD-7",
    "CARD-x",
    "CARD-b",
    "CARD-]",
    "G|X",
    "G-X",
]
PATTERNS = [
    "GIFT-*",
    "SAMPLE",
    "SAMPLE-?",
    "50%OFF",
    "A_B",
    "x[1]",
    "CARD-[0-9]",
    "CARD-[!0-9a]",
    "G|X",
    "CARD-[]]",
    "*",
]


def like_match(value: str, pattern: str, escape: str = "|") -> bool:
    rx, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == escape:
            rx.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        rx.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.fullmatch("".join(rx), value, re.S) is not None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_translation_matches_fnmatchcase(pattern: str) -> None:
    for sku in SKUS:
        expected = fnmatch.fnmatchcase(sku, pattern)
        if "[" in pattern:
            got = re.search(_regexp(pattern), sku) is not None
        else:
            got = like_match(sku, _like(pattern))
        assert got == expected, (sku, pattern)


def test_condition_binds_every_pattern_and_never_pastes_it() -> None:
    sql, params = exclusion_condition("m.sku", ["GIFT-*", "x[1]"])
    assert sql == "(m.sku LIKE :xs0 ESCAPE '|' OR m.sku REGEXP :xs1)"
    assert params == {"xs0": "GIFT-%", "xs1": "^x[1]$"}
    assert exclusion_condition("m.sku", []) == ("FALSE", {})
    with pytest.raises(ValueError):
        exclusion_condition("m.sku; DROP", ["x"])


def test_matching_pattern_agrees_with_config() -> None:
    cfg = SyncConfig(exclude_skus=tuple(PATTERNS[:-1]))
    for sku in SKUS:
        assert (matching_pattern(sku, cfg.exclude_skus) is not None) == cfg.sku_excluded(sku)
