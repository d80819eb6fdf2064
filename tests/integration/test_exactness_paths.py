"""Issue 9: paths that lost or doubled changes in seams between batches (1), the derived step (9)
and lock waits against a checkout (14), each on the real server, written the way WooCommerce and
Polylang for WooCommerce write (SQL on one connection, statements in the order they send them)."""

from __future__ import annotations

from typing import Any

from tests.integration.sync_helpers import make_daemon, pending, qty

# Recorded post ids (schema/wordpress/catalogue.json): BOOK en/fr, translations of each other.
BOOK = {(2, "en"): 18, (2, "fr"): 19, (3, "en"): 16, (3, "fr"): 17}
SHARED = {"2": {"translations_share_stock": True}, "3": {"translations_share_stock": True}}


def books(net: Any) -> dict[tuple[int, str], Any]:
    return {k: qty(net, k[0], pid) for k, pid in BOOK.items()}


def admin_set_with_copy(net: Any, conn: Any, blog: int, value: int, between: Any = None) -> None:
    """An admin sets BOOK (en) to ``value``; Polylang for WooCommerce then copies it to BOOK (fr)
    in a statement of its own, on the same connection (``between`` runs in between)."""
    pm = net.table(blog, "postmeta")
    for lang in ("en", "fr"):
        conn.exec_driver_sql(
            f"UPDATE {pm} SET meta_value = '{int(value)}' WHERE post_id = {BOOK[(blog, lang)]} AND meta_key = '_stock'"
        )
        conn.commit()
        if lang == "en" and between is not None:
            between()


def test_translation_copy_in_a_later_batch_counts_once(wp_network):
    """Path 1: the daemon applies the admin's edit alone, then sees the add-on's copy: +5, not +10."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        assert books(net) == {(2, "en"): 7, (2, "fr"): 7, (3, "en"): 7, (3, "fr"): 7}
        with net.engine.connect() as shop:
            admin_set_with_copy(net, shop, 2, 12, between=d.apply_pending)
            d.apply_pending()
            assert pending(net) == 0
            assert books(net) == {(2, "en"): 12, (2, "fr"): 12, (3, "en"): 12, (3, "fr"): 12}
            # Again, with the copy in the same batch, and then a sale: still exact.
            admin_set_with_copy(net, shop, 2, 10)
            d.apply_pending()
            assert books(net) == {(2, "en"): 10, (2, "fr"): 10, (3, "en"): 10, (3, "fr"): 10}
        with net.engine.connect() as c:
            left = c.exec_driver_sql(f"SELECT COUNT(*) FROM {net.prefix}syncd_fanout").scalar_one()
        assert left == 0  # every expected copy was met
    finally:
        d.close()


def test_translation_copy_after_other_batches_and_a_sale_elsewhere_counts_once(wp_network):
    net = wp_network
    d = make_daemon(net, blogs=SHARED, sync={"batch_size": 1})
    try:
        with net.engine.connect() as shop:

            def sale_elsewhere_then_apply() -> None:
                with net.engine.connect() as other:
                    other.exec_driver_sql(
                        f"UPDATE {net.table(3, 'postmeta')} SET meta_value = meta_value - 1 "
                        f"WHERE post_id IN ({BOOK[(3, 'en')]}, {BOOK[(3, 'fr')]}) AND meta_key = '_stock'"
                    )
                    other.commit()
                d.apply_pending()

            admin_set_with_copy(net, shop, 2, 12, between=sale_elsewhere_then_apply)
        d.apply_pending()
        # 7 -> 12 on blog 2 (+5 once), a sale of 1 on blog 3 (once): 11 everywhere.
        assert books(net) == {(2, "en"): 11, (2, "fr"): 11, (3, "en"): 11, (3, "fr"): 11}
    finally:
        d.close()
