"""Linking beyond SKU on a real server (issue 5), on the recorded WooCommerce 11 network: blog 1
without Polylang (links as English), blogs 2 and 3 with Polylang where BOOK exists in English and
in French (translations of each other, one SKU).

SKU + language keys, translations that share stock (both directions, exactly once), corrupt
translation data, manual links without SKUs, SKU renames carried and refused, [blogs]
include/exclude on every path, and a product created mid-run joining its group."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import structlog

from syncd import capture, check, cli, status
from syncd.config import load_config
from syncd.testnet.factory import ProductFactory
from tests.integration.sync_helpers import ids, make_daemon, meta, pending, qty, set_meta, woo_decrease

# Recorded post ids (schema/wordpress/catalogue.json).
BOOK = {(2, "en"): 18, (2, "fr"): 19, (3, "en"): 16, (3, "fr"): 17}
SHARED = {"2": {"translations_share_stock": True}, "3": {"translations_share_stock": True}}


def books(net: Any) -> dict[tuple[int, str], Decimal | None]:
    return {k: qty(net, k[0], pid) for k, pid in BOOK.items()}


def members(net: Any, where: str = "1=1") -> dict[tuple[int, int], tuple[Any, ...]]:
    with net.engine.connect() as c:
        rows = c.exec_driver_sql(
            f"SELECT blog_id, post_id, sku, lang, state, group_id, link_kind FROM {net.prefix}syncd_member WHERE {where}"
        ).all()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def history(net: Any, where: str) -> list[tuple[Any, ...]]:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT role, blog_id, post_id, meta_key, delta, note FROM {net.prefix}syncd_history WHERE {where} "
            "ORDER BY id"
        ).all()


def new_product(net: Any, blog_id: int, sku: str, stock: int, language: str | None = None, **kw: Any) -> int:
    with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(blog_id)) as f:
        return f.simple(sku, kw.pop("name", sku.title() or "No SKU"), stock=stock, language=language, **kw)


def fan_out(net: Any, blog_id: int, post_ids: list[int], n: int) -> None:
    """Polylang for WooCommerce's stock update: `post_id = X` rewritten to every translation, one statement."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = meta_value -{n}.000000 "
            f"WHERE post_id IN ({', '.join(str(int(p)) for p in post_ids)}) AND meta_key='_stock'"
        )
        c.commit()


def test_key_is_sku_and_language(wp_network):
    net = wp_network
    d = make_daemon(net, blogs={"1": {"language": "en"}})
    try:
        m = members(net)
        assert m[(2, 18)][:3] == ("BOOK", "en", "linked") and m[(2, 19)][:3] == ("BOOK", "fr", "linked")
        assert m[(2, 18)][3] == m[(3, 16)][3] != m[(2, 19)][3] == m[(3, 17)][3]  # one group per language
        tshirt, hoodie_s = ids(net, "TSHIRT-RED"), ids(net, "HOODIE-S")
        assert {m[(b, tshirt[b])][1] for b in (1, 2, 3)} == {"en"}  # blog 1 configured en
        assert m[(2, hoodie_s[2])][1] == "en"  # a variation takes its parent's language
        assert len({m[(b, tshirt[b])][3] for b in (1, 2, 3)}) == 1
        # A sale of the French book reaches only the French book elsewhere.
        woo_decrease(net, 2, BOOK[(2, "fr")], 2)
        d.apply_pending()
        assert books(net) == {(2, "en"): 7, (2, "fr"): 5, (3, "en"): 7, (3, "fr"): 5}
        woo_decrease(net, 3, BOOK[(3, "en")], 1)
        d.apply_pending()
        assert books(net) == {(2, "en"): 6, (2, "fr"): 5, (3, "en"): 6, (3, "fr"): 5}
        woo_decrease(net, 1, tshirt[1], 3)  # blog 1 (en) links with the English products
        d.apply_pending()
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [7, 7, 7]
    finally:
        d.close()
    # Configured as French, blog 1's products no longer link with the English ones.
    d = make_daemon(net, blogs={"1": {"language": "fr"}})
    try:
        assert members(net, f"blog_id = 1 AND post_id = {tshirt[1]}")[(1, tshirt[1])][1] == "fr"
        woo_decrease(net, 1, tshirt[1], 1)
        d.apply_pending()
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [6, 7, 7]
    finally:
        d.close()


def test_shared_translation_stock_both_directions_exactly_once(wp_network):
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        # A BOOK on blog 1 (no Polylang, en): it joins the English group and takes its stock (7).
        b1 = new_product(net, 1, "BOOK", 3)
        d.apply_pending()
        assert qty(net, 1, b1) == 7
        # (b) The add-on sells 2 x BOOK (en) on blog 2: one statement on en and fr. One sale.
        fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 2)
        assert pending(net) == 2
        d.apply_pending()
        assert books(net) == {(2, "en"): 5, (2, "fr"): 5, (3, "en"): 5, (3, "fr"): 5}
        assert qty(net, 1, b1) == 5
        copies = history(net, "role = 'copy' AND meta_key = '_stock'")
        assert [(h[1], h[2], h[5]) for h in copies if h[4] is None] == [
            (1, b1, "joined its group: stock of blog 2 post 18")
        ]
        assert sorted((h[1], h[2], h[4]) for h in copies if h[4] is not None) == [
            (1, b1, -2),
            (3, 16, -2),
            (3, 17, -2),
        ]
        with net.engine.connect() as c:
            first = c.exec_driver_sql(
                f"SELECT MIN(change_id) FROM {net.prefix}syncd_history WHERE role = 'origin' AND blog_id = 2"
            ).scalar_one()
        origins = history(net, "role = 'origin' AND blog_id = 2")
        assert [h[5] for h in origins] == [
            None,
            f"translation fan-out (shared stock) of change {first}: counted once",
        ]
        # (a) A sale on blog 1 that syncd applies: every translation on blogs 2 and 3, once each.
        woo_decrease(net, 1, b1, 1)
        d.apply_pending()
        assert books(net) == {(2, "en"): 4, (2, "fr"): 4, (3, "en"): 4, (3, "fr"): 4}
        assert qty(net, 1, b1) == 4
        # Derived data per member: the French book's own lookup row follows its own quantity.
        with net.engine.connect() as c:
            lookup = c.exec_driver_sql(
                f"SELECT product_id, stock_quantity FROM {net.table(2, 'wc_product_meta_lookup')} WHERE product_id IN (18, 19)"
            ).all()
        assert sorted((r[0], Decimal(r[1])) for r in lookup) == [(18, 4), (19, 4)]
        assert pending(net) == 0
    finally:
        d.close()


def test_corrupt_translation_groups_are_reported_and_skipped(wp_network, tmp_path):
    net = wp_network
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f'UPDATE {net.table(2, "term_taxonomy")} SET description = \'a:2:{{s:2:"en";i:18;s:2:"fr";\' '
            "WHERE taxonomy = 'post_translations'"
        )
        c.exec_driver_sql(
            f'UPDATE {net.table(3, "term_taxonomy")} SET description = \'a:2:{{s:2:"en";i:16;s:2:"xx";i:17;}}\' '
            "WHERE taxonomy = 'post_translations'"
        )
        c.commit()
    with structlog.testing.capture_logs() as logs:
        d = make_daemon(net, blogs=SHARED)
        try:
            fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 2)
            d.apply_pending()
        finally:
            d.close()
    # Skipped: without valid translation data each language is its own product (nothing crashed).
    assert books(net) == {(2, "en"): 5, (2, "fr"): 5, (3, "en"): 5, (3, "fr"): 5}
    skipped = [e for e in logs if e["event"] == "translation_group_skipped"]
    assert {(e["blog"], "not valid PHP-serialized data" in e["problem"]) for e in skipped} >= {(2, True)}
    assert any(e["blog"] == 3 and "key 'xx' is not a language of the blog" in e["problem"] for e in skipped)
    # syncd check lists them, with each blog's languages.
    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[database]\nurl = "{net.url}"\n')
    out = io.StringIO()
    assert check.run_check(load_config(str(cfg), env={}), json_output=True, out=out) == 0
    report = json.loads(out.getvalue())
    blogs = {b["blog_id"]: b for b in report["blogs"]}
    assert [blogs[b]["languages"] for b in (1, 2, 3)] == [["en"], ["en", "fr"], ["en", "fr"]]
    assert any("not valid PHP-serialized data" in p for p in blogs[2]["translation_problems"])
    assert any(
        "post 17 is attached to the group but not listed in it" in p for p in blogs[3]["translation_problems"]
    )
    assert any(w.startswith("blog 3: post_translations term") for w in report["warnings"])


def run_cli(tmp_path: Any, net: Any, *args: str) -> tuple[int, str, str]:
    import contextlib

    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[database]\nurl = "{net.url}"\ntable_prefix = "{net.prefix}"\n')
    out, err = io.StringIO(), io.StringIO()
    saved = structlog.get_config()  # cli.main configures logging for the process: put it back after
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["--config", str(cfg), "--log-level", "error", *args])
    finally:
        structlog.configure(**saved)
    return code, out.getvalue(), err.getvalue()


def test_manual_links_without_sku_override_sku_matching(wp_network, tmp_path):
    net = wp_network
    d = make_daemon(net)
    try:
        a, b = (
            new_product(net, 1, "", 5, name="Gift box"),
            new_product(net, 2, "", 5, language="en", name="Gift box"),
        )
        d.apply_pending()
        assert members(net, "sku = ''") == {}  # no SKU: not linked
        code, out, _ = run_cli(tmp_path, net, "link", f"1:{a}", f"2:{b}")
        assert code == 0 and "linked in group" in out
        woo_decrease(net, 1, a, 2)
        d.apply_pending()
        assert qty(net, 2, b) == 3
        # Refused, with the reason: a simple product with a variable product, managed with unmanaged.
        hoodie, sticker, tshirt, mug = (
            ids(net, "HOODIE"),
            ids(net, "STICKER"),
            ids(net, "TSHIRT-RED"),
            ids(net, "MUG"),
        )
        code, _, err = run_cli(tmp_path, net, "link", f"1:{tshirt[1]}", f"2:{hoodie[2]}")
        assert code == 2 and "cannot link a simple product or variation with a variable product" in err
        code, _, err = run_cli(tmp_path, net, "link", f"1:{tshirt[1]}", f"3:{sticker[3]}")
        assert code == 2 and "manages stock with one that does not" in err
        # A manual link overrides SKU matching: blog 1's T-shirt now goes with blog 3's mug only.
        code, out, _ = run_cli(tmp_path, net, "link", f"1:{tshirt[1]}", f"3:{mug[3]}")
        assert code == 0 and "stock differs" in out
        woo_decrease(net, 1, tshirt[1], 1)
        d.apply_pending()
        assert (qty(net, 2, tshirt[2]), qty(net, 3, tshirt[3]), qty(net, 3, mug[3])) == (10, 10, 2)
        code, out, _ = run_cli(tmp_path, net, "links", "--json")
        groups = json.loads(out)["groups"]
        assert [[(m["blog_id"], m["post_id"], m["sku"]) for m in g["members"]] for g in groups] == [
            [(1, a, ""), (2, b, "")],
            [(1, tshirt[1], "TSHIRT-RED"), (3, mug[3], "MUG")],
        ]
        assert {m["state"] for g in groups for m in g["members"]} == {"linked"}
        code, out, _ = run_cli(tmp_path, net, "unlink", f"3:{mug[3]}")
        assert code == 0 and "one product left" in out
        assert (
            members(net, f"blog_id = 1 AND post_id = {tshirt[1]}")[(1, tshirt[1])][4] == "sku"
        )  # back to SKU
        woo_decrease(net, 1, tshirt[1], 1)
        d.apply_pending()
        assert (qty(net, 2, tshirt[2]), qty(net, 3, mug[3])) == (9, 2)
        code, _, err = run_cli(tmp_path, net, "unlink", f"3:{mug[3]}")
        assert code == 2 and "not linked manually" in err
    finally:
        d.close()


def test_sku_rename_carried_and_refused(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        tshirt, mug = ids(net, "TSHIRT-RED"), ids(net, "MUG")
        group = members(net, f"blog_id = 1 AND post_id = {tshirt[1]}")[(1, tshirt[1])][3]
        set_meta(net, 1, tshirt[1], "_sku", "TSHIRT-RED-2024")
        d.apply_pending()
        with net.engine.connect() as c:
            for b in (2, 3):
                assert meta(net, b, tshirt[b], "_sku") == "TSHIRT-RED-2024"
                assert (
                    c.exec_driver_sql(
                        f"SELECT sku FROM {net.table(b, 'wc_product_meta_lookup')} WHERE product_id = {tshirt[b]}"
                    ).scalar_one()
                    == "TSHIRT-RED-2024"
                )
            assert c.exec_driver_sql(
                f"SELECT sku FROM {net.prefix}syncd_group WHERE group_id = {group}"
            ).scalar_one() == ("TSHIRT-RED-2024")
        assert {v[3] for v in members(net, "sku = 'TSHIRT-RED-2024'").values()} == {group}  # stable group id
        assert pending(net) == 0  # syncd's own writes are not captured again
        # Refused on blog 3, where a product already has the new SKU; carried to blog 2.
        other = new_product(net, 3, "MUG-2", 9, language="en")
        d.apply_pending()
        with structlog.testing.capture_logs() as logs:
            set_meta(net, 1, mug[1], "_sku", "MUG-2")
            d.apply_pending()
        assert (meta(net, 2, mug[2], "_sku"), meta(net, 3, mug[3], "_sku")) == ("MUG-2", "MUG")
        refusal = [e for e in logs if e["event"] == "change_skipped"]
        assert refusal and f"refused on blog 3: post {other} already has that SKU" in refusal[0]["reason"]
        assert history(net, "role = 'skipped' AND meta_key = '_sku'")[0][1:3] == (3, mug[3])
        # The refused member stays in its group: stock still syncs.
        woo_decrease(net, 1, mug[1], 1)
        d.apply_pending()
        assert (qty(net, 2, mug[2]), qty(net, 3, mug[3]), qty(net, 3, other)) == (2, 2, 9)
    finally:
        d.close()


def test_rename_not_carried_when_off_group_stays_under_old_key(wp_network):
    net = wp_network
    d = make_daemon(net, sync={"propagate_sku_renames": False})
    try:
        notebook = ids(net, "NOTEBOOK")
        set_meta(net, 2, notebook[2], "_sku", "NOTEBOOK-A5")
        d.apply_pending()
        assert (meta(net, 1, notebook[1], "_sku"), meta(net, 3, notebook[3], "_sku")) == (
            "NOTEBOOK",
            "NOTEBOOK",
        )
        woo_decrease(net, 2, notebook[2], 2)
        d.apply_pending()
        assert [qty(net, b, notebook[b]) for b in (1, 2, 3)] == [3, 3, 3]
        # A new product with the old SKU joins the group (still known under the old key).
        newer = new_product(net, 2, "NOTEBOOK", 1)
        d.apply_pending()
        state = members(net, f"blog_id = 2 AND post_id IN ({notebook[2]}, {newer})")
        assert {v[2] for v in state.values()} == {"ambiguous"}  # two of one group on blog 2: ambiguous
    finally:
        d.close()


def test_blog_include_exclude_on_every_path(wp_network):
    net = wp_network
    make_daemon(net).close()  # triggers on every blog, members of every blog
    d = make_daemon(net, blogs={"exclude": [3]})
    try:
        with net.engine.connect() as c:
            installed = capture.installed_triggers(c, net.prefix)
        assert {n.split("_b")[1][0] for n in installed} == {"1", "2"}  # blog 3's triggers removed
        assert {k[0] for k in members(net)} == {1, 2}
        out = io.StringIO()
        code = status.main(d.config, SimpleNamespace(json=True), out=out)
        report = {b["blog_id"]: b for b in json.loads(out.getvalue())["blogs"]}
        assert report[3]["triggers"] == "excluded by configuration" and not code & status.EXIT_TRIGGERS
        tshirt = ids(net, "TSHIRT-RED")
        woo_decrease(net, 3, tshirt[3], 4)  # not captured
        assert pending(net) == 0
        woo_decrease(net, 1, tshirt[1], 1)
        d.apply_pending()
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [9, 9, 6]
    finally:
        d.close()
    d = make_daemon(net, blogs={"include": [1, 3]}, capture={"mode": "poll"})
    try:
        assert {k[0] for k in members(net)} == {1, 3}
        d.poll()  # baselines
        woo_decrease(net, 2, tshirt[2], 2)  # blog 2 is not read
        assert d.poll() == 0
        woo_decrease(net, 3, tshirt[3], 1)
        assert d.poll() == 1
        d.apply_pending()
        assert [qty(net, b, tshirt[b]) for b in (1, 2, 3)] == [8, 7, 5]
    finally:
        d.close()


def test_membership_changes_join_and_leave(wp_network):
    net = wp_network
    d = make_daemon(net)
    try:
        # Created mid-run with the English book's SKU on blog 1: joins, takes the group's stock.
        with structlog.testing.capture_logs() as logs:
            b1 = new_product(net, 1, "book", 2, name="Book")  # 'book' = 'BOOK' for WooCommerce
            d.apply_pending()
        assert qty(net, 1, b1) == 7
        (joined,) = [e for e in logs if e["event"] == "member_joined"]
        assert (joined["blog"], joined["post"], joined["authority_blog"], joined["stock"]) == (1, b1, 2, "7")
        woo_decrease(net, 1, b1, 1)
        d.apply_pending()
        assert books(net) == {(2, "en"): 6, (2, "fr"): 7, (3, "en"): 6, (3, "fr"): 7}
        # Trashed: leaves its group.
        with net.engine.connect() as c:
            c.exec_driver_sql(f"UPDATE {net.table(1, 'posts')} SET post_status = 'trash' WHERE ID = {b1}")
            c.exec_driver_sql(
                f"INSERT INTO {net.table(1, 'postmeta')} (post_id, meta_key, meta_value) VALUES ({b1}, '_wp_trash_meta_status', 'publish')"
            )
            c.commit()
        d.apply_pending()
        assert (1, b1) not in members(net)
        woo_decrease(net, 2, BOOK[(2, "en")], 1)
        d.apply_pending()
        assert (qty(net, 1, b1), qty(net, 3, BOOK[(3, "en")])) == (6, 5)
        # SKU removed: leaves its group.
        poster = ids(net, "POSTER")
        set_meta(net, 2, poster[2], "_sku", "")
        d.apply_pending()
        assert (2, poster[2]) not in members(net)
        woo_decrease(net, 2, poster[2], -3)
        d.apply_pending()
        assert (qty(net, 1, poster[1]), qty(net, 3, poster[3])) == (0, 0)
    finally:
        d.close()
    # Created while the daemon is stopped (the triggers queue its creation): joins at the next start.
    again = new_product(net, 1, "BOOK", 1, name="Book again")
    d = make_daemon(net)
    try:
        d.apply_pending()
        assert qty(net, 1, again) == qty(net, 2, BOOK[(2, "en")]) == 5
    finally:
        d.close()
