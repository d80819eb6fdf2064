"""Absolute `_stock` sets written in bulk (issue 12, syncd.write: one UPDATE ... CASE meta_id per
blog in the stock round trip) write what the member-by-member path wrote, and a member whose
write fails is still skipped alone.

An importer's delete + re-add of `_stock` (traces/08) is an absolute set on every linked member.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from tests.integration.daemon_process import members, pending, quantities
from tests.integration.sync_helpers import make_daemon
from tests.integration.test_faults import history


def import_stock(net: Any, blog_id: int, post_ids: list[int], value: str) -> None:
    """What an import plugin writes: delete the `_stock` rows, add them again with the new value."""
    pm = net.table(blog_id, "postmeta")
    with net.engine.connect() as c:
        for p in post_ids:
            c.exec_driver_sql(f"DELETE FROM {pm} WHERE post_id = {int(p)} AND meta_key = '_stock'")
            c.exec_driver_sql(
                f"INSERT INTO {pm} (post_id, meta_key, meta_value) VALUES ({int(p)}, '_stock', '{value}')"
            )
            c.commit()


def test_imported_quantities_reach_every_member_with_history(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        d.apply_pending()
        skus = ["MUG", "NOTEBOOK", "TSHIRT-RED"]
        ids = {s: members(net, s) for s in skus}
        import_stock(net, 1, [ids[s][1] for s in skus], "40")
        d.apply_pending()
        for s in skus:
            assert quantities(net, s) == {b: Decimal(40) for b in ids[s]}, s
        copies = {(h[1], h[2]) for h in history(net, "role = 'copy' AND meta_key = '_stock'")}
        assert copies >= {(b, p) for s in skus for b, p in ids[s].items() if b != 1}
        assert pending(net) == 0 and d.stats.errors == 0
    finally:
        d.close()


def test_a_failing_absolute_set_skips_that_member_alone(wp_network):
    """A shop's trigger refuses syncd's write of one member: the bulk round trip is undone, the
    sets are written member by member, and exactly that member is skipped (named, history)."""
    net = wp_network
    ids = members(net, "NOTEBOOK")
    d = make_daemon(net)
    trigger = f"{net.prefix}3_refuse_set"
    with net.engine.connect() as c:
        d.apply_pending()
        c.exec_driver_sql(
            f"CREATE TRIGGER `{trigger}` BEFORE UPDATE ON {net.table(3, 'postmeta')} FOR EACH ROW "
            f"BEGIN IF @syncd_apply IS NOT NULL AND NEW.post_id = {ids[3]} AND NEW.meta_key = '_stock' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a shop plugin'; END IF; END"
        )
        c.commit()
    before = quantities(net, "NOTEBOOK")
    try:
        with capture_logs() as logs:
            import_stock(net, 1, [ids[1]], "25")
            d.apply_pending()
        after = quantities(net, "NOTEBOOK")
        assert after[1] == after[2] == Decimal(25)
        assert after[3] == before[3]
        assert [e for e in logs if e.get("event") == "bulk_stock_write_failed"], logs
        skipped = [e for e in logs if e.get("event") == "member_skipped"]
        assert {(e["blog"], e["post"]) for e in skipped} == {(3, ids[3])}, skipped
        assert {(h[1], h[2]) for h in history(net, "role = 'skipped'")} == {(3, ids[3])}
        assert d.stats.dead == 0 and pending(net) == 0
    finally:
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{trigger}`")
            c.commit()
        d.close()
