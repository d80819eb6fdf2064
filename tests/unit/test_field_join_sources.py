"""Where a joining or healed member takes each realtime field from (syncd.fields.writer.JoinSources)."""

from __future__ import annotations

from syncd.fields.writer import JoinSources

ME = (2, 20)


def test_the_member_whose_change_the_group_took_last_wins_while_linked():
    s = JoinSources((1, 10), {"_sale_price": (3, 30)}, frozenset({(1, 10), (3, 30)}))
    assert s.source_of("_sale_price", ME) == (3, 30)
    assert s.source_of("_regular_price", ME) == (1, 10)  # no register: the fallback


def test_a_member_holding_the_newest_value_itself_takes_nothing():
    s = JoinSources((1, 10), {"_sale_price": ME}, frozenset({(1, 10)}))
    assert s.source_of("_sale_price", ME) is None


def test_an_origin_no_longer_linked_falls_back():
    s = JoinSources((1, 10), {"_sale_price": (3, 30)}, frozenset({(1, 10)}))
    assert s.source_of("_sale_price", ME) == (1, 10)
    assert JoinSources(None, {}, frozenset()).source_of("_sale_price", ME) is None
