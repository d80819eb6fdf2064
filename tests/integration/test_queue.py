"""The change queue (syncd.queue) on a real server, issue 9 paths 4, 5 and 10:

* path 4: one Polylang for WooCommerce statement's rows are one unit of work - in the isolation
  that follows a batch failing with a permanent error, and in reconcile's "apply pending changes
  first" step - so a fan-out sale of 2 is -2 on the other blog, never -4;
* path 5: a change whose origin blog is not live at apply time is kept (held, not fetched, other
  blogs unaffected), shown by `syncd status`, and applied once the blog is live again;
* path 10: transient errors (statement timeout 1969, table full 1114, commit failed 1180) are
  retried until they pass, never dead-lettered and never a reason to skip a member; a permanent
  error dead-letters its statement alone, and `syncd dead-letters retry` puts it back.

Faults are injected with the test's own triggers (SIGNAL with the errno), a fixed number of times
counted in a MEMORY table (non-transactional: the count survives the statement's rollback).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from syncd import cli, queue, reconcile, status
from syncd.config import load_config
from syncd.testnet import wordpress
from tests.integration.daemon_process import members, pending, quantities, write_config
from tests.integration.sync_helpers import (
    archived,
    make_daemon,
    meta,
    qty,
    set_meta,
    settled_now,
    woo_decrease,
)

# Recorded post ids (schema/wordpress/catalogue.json): BOOK in English and French on blogs 2, 3.
BOOK = {(2, "en"): 18, (2, "fr"): 19, (3, "en"): 16, (3, "fr"): 17}
SHARED = {"2": {"translations_share_stock": True}, "3": {"translations_share_stock": True}}


def books(net: Any) -> dict[tuple[int, str], Decimal | None]:
    return {k: qty(net, k[0], pid) for k, pid in BOOK.items()}


def fan_out(net: Any, blog_id: int, post_ids: list[int], n: int) -> None:
    """Polylang for WooCommerce's stock update: `post_id = X` rewritten to every translation, one statement."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = meta_value -{n}.000000 "
            f"WHERE post_id IN ({', '.join(str(int(p)) for p in post_ids)}) AND meta_key='_stock'"
        )
        c.commit()


def dead(net: Any) -> list[tuple[Any, ...]]:
    with net.engine.connect() as c:
        return c.exec_driver_sql(
            f"SELECT id, blog_id, post_id, meta_key, error_class, errno FROM {net.prefix}syncd_dead ORDER BY id"
        ).all()


@contextmanager
def fault(
    net: Any, name: str, table: str, event: str, condition: str, errno: int, times: int
) -> Iterator[Any]:
    """A trigger of the test's own on ``table`` that fails the first ``times`` matching rows
    with ``errno``; the count left is in a MEMORY table (the rollback does not undo it)."""
    counter = f"{net.prefix}test_fault_{name}"
    trigger = f"{net.prefix}test_fault_{name}_t"
    with net.engine.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE `{counter}` (n INT NOT NULL) ENGINE=MEMORY")
        c.exec_driver_sql(f"INSERT INTO `{counter}` VALUES ({int(times)})")
        c.exec_driver_sql(
            f"CREATE TRIGGER `{trigger}` BEFORE {event} ON {table} FOR EACH ROW "
            f"BEGIN IF ({condition}) AND (SELECT n FROM `{counter}`) > 0 THEN "
            f"UPDATE `{counter}` SET n = n - 1; "
            f"SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = {int(errno)}, MESSAGE_TEXT = 'injected by the test'; "
            "END IF; END"
        )
        c.commit()

    def left() -> int:
        with net.engine.connect() as c:
            return int(c.exec_driver_sql(f"SELECT n FROM `{counter}`").scalar_one())

    try:
        yield SimpleNamespace(left=left)
    finally:
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS `{trigger}`")
            c.exec_driver_sql(f"DROP TABLE IF EXISTS `{counter}`")
            c.commit()


# =========================================================================== path 4
def test_path4_isolation_keeps_a_fan_out_statement_whole(wp_network):
    """A batch holds a poisoned change (its history row is refused, errno 1644: permanent) and a
    Polylang for WooCommerce fan-out (one UPDATE, -2 on BOOK en and fr of blog 2). The batch fails;
    isolation applies statement groups, so blog 3 gets -2 once (today: the fan-out's two rows were
    applied one by one, -2 each: -4); the poisoned change alone is dead-lettered."""
    net = wp_network
    tshirt = members(net, "TSHIRT-RED")
    d = make_daemon(net, blogs=SHARED)
    condition = f"NEW.role = 'origin' AND NEW.blog_id = 1 AND NEW.post_id = {tshirt[1]}"
    try:
        d.apply_pending()
        with fault(net, "poison", f"{net.prefix}syncd_history", "INSERT", condition, 1644, 100):
            woo_decrease(net, 1, tshirt[1], 1)
            fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 2)
            assert pending(net) == 3
            assert d.apply_pending() == 3
        assert books(net) == {(2, "en"): 5, (2, "fr"): 5, (3, "en"): 5, (3, "fr"): 5}
        assert [(r[1], r[2], r[4], r[5]) for r in dead(net)] == [(1, tshirt[1], "permanent_error", 1644)]
        assert quantities(net, "TSHIRT-RED") == {1: 9, 2: 10, 3: 10}
        assert pending(net) == 0
    finally:
        d.close()


def test_path4_reconcile_pending_step_keeps_a_fan_out_statement_whole(wp_network):
    """`syncd sync BOOK --lang en` finds the English row of a fan-out pending and applies pending
    changes first: with the French row of the same statement (today it took the English row alone,
    and the daemon later applied the French one as another sale: -4 on blog 3)."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        d.apply_pending()
        fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 2)
        assert pending(net) == 2
        outcome, errors = reconcile.sync_skus(d.config, ["BOOK"], lang="en")
        assert errors == [] and outcome.pending_applied == 2
        assert pending(net) == 0
        d.apply_pending()
        assert books(net) == {(2, "en"): 5, (2, "fr"): 5, (3, "en"): 5, (3, "fr"): 5}
    finally:
        d.close()


# =========================================================================== path 5
def test_path5_change_on_an_archived_blog_is_held_then_applied(wp_network, tmp_path):
    """An edit on blog 3 while blog 3 is archived is neither applied nor dropped: it is held in the
    queue (status shows it, with the reason), other blogs' changes flow past it, and once the blog
    is live again it is applied (today it was acknowledged and lost)."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net)
    blogs_t = f"{net.prefix}blogs"
    try:
        d.apply_pending()
        with net.engine.connect() as c:
            c.exec_driver_sql(f"UPDATE {blogs_t} SET archived = 1 WHERE blog_id = 3")
            c.commit()
        with capture_logs() as logs:
            woo_decrease(net, 3, ids[3], 2)  # the archived blog's own admin still writes
            assert d.apply_pending() == 0
            assert pending(net) == 1
            woo_decrease(net, 1, ids[1], 1)  # not blocked behind the held change
            assert d.apply_pending() == 1
        assert quantities(net, "TSHIRT-RED", {1: ids[1], 2: ids[2]}) == {1: 9, 2: 9}
        assert pending(net) == 1
        held = [e for e in logs if e["event"] == "changes_held"]
        assert [e["blog"] for e in held] == [3] and "not live" in held[0]["reason"], held
        path = write_config(tmp_path, net)
        with net.engine.connect() as c:
            report = status.collect(c, net.prefix)
        assert [(h["blog_id"], h["changes"]) for h in report["held"]] == [(3, 1)]
        assert "archived" in report["held"][0]["reason"]
        assert report["backlog"]["pending"] == 0
        out = io.StringIO()
        status.main(load_config(str(path)), SimpleNamespace(json=False), out=out)
        assert "held          blog 3: 1 changes" in out.getvalue()
        # Discovery keeps holding it while the blog is archived...
        d.discover()
        assert d.apply_pending() == 0 and pending(net) == 1
        # ... and the blog live again: the held change is applied, exactly once.
        with net.engine.connect() as c:
            c.exec_driver_sql(f"UPDATE {blogs_t} SET archived = 0 WHERE blog_id = 3")
            c.commit()
        d.discover()
        assert d.apply_pending() == 1
        # Blog 3's own sale reached blogs 1 and 2; blog 1's sale, applied while blog 3 was not
        # live, skipped blog 3's member (recorded with the reason), which was queued to be healed
        # and takes the group's values now that its blog is back (syncd.settle).
        assert quantities(net, "TSHIRT-RED") == {1: 7, 2: 7, 3: 7}
        assert pending(net) == 0 and dead(net) == []
        with net.engine.connect() as c:
            skipped = c.exec_driver_sql(
                f"SELECT blog_id, post_id, note FROM {net.prefix}syncd_history WHERE role = 'skipped'"
            ).all()
        assert [(r[0], r[1]) for r in skipped] == [(3, ids[3])] and "not live" in skipped[0][2]
        outcome, errors = reconcile.sync_skus(d.config, ["TSHIRT-RED"])
        assert errors == [] and quantities(net, "TSHIRT-RED") == {1: 7, 2: 7, 3: 7}
    finally:
        d.close()


def test_path5_changes_of_a_blog_deleted_for_good_are_dead_lettered_with_the_reason(wp_network):
    """A blog deleted for good (tables dropped, blogs row removed, as wpmu_delete_blog does) after
    its change was captured: nothing to hold it for; the change goes to the dead letters, with
    class origin_blog_gone, not silently away."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net)
    try:
        d.apply_pending()
        with net.engine.connect() as c:
            c.exec_driver_sql(f"UPDATE {net.prefix}blogs SET archived = 1 WHERE blog_id = 3")
            c.commit()
        woo_decrease(net, 3, ids[3], 2)
        assert d.apply_pending() == 0 and pending(net) == 1
        with net.engine.connect() as c:
            wordpress.drop_blog_tables(c, net.prefix, 3)
            c.commit()
        with capture_logs() as logs:
            d.discover()
        assert pending(net) == 0
        assert [(r[1], r[2], r[4]) for r in dead(net)] == [(3, ids[3], "origin_blog_gone")]
        assert [e["blog"] for e in logs if e["event"] == "changes_dead_lettered"] == [3]
        assert quantities(net, "TSHIRT-RED", {1: ids[1], 2: ids[2]}) == {1: 10, 2: 10}
    finally:
        d.close()


# =========================================================================== path 10
TRANSIENT_FAULTS = [
    pytest.param("postmeta", 1969, id="statement-timeout-on-a-target-write"),
    pytest.param("history", 1114, id="table-full-on-history"),
    pytest.param("history", 1180, id="commit-failed-on-history"),
]


@pytest.mark.parametrize(("where", "errno"), TRANSIENT_FAULTS)
def test_path10_transient_errors_are_retried_not_dead_lettered(wp_network, where, errno):
    net = wp_network
    ids = members(net, "MUG")
    d = make_daemon(net)
    if where == "postmeta":
        target = net.table(2, "postmeta")
        condition = f"@syncd_apply IS NOT NULL AND NEW.post_id = {ids[2]} AND NEW.meta_key = '_stock'"
        event = "UPDATE"
    else:
        target, condition, event = f"{net.prefix}syncd_history", "TRUE", "INSERT"
    try:
        d.apply_pending()
        start = quantities(net, "MUG")
        with capture_logs() as logs, fault(net, f"t{errno}", target, event, condition, errno, 3) as f:
            woo_decrease(net, 1, ids[1], 1)
            assert d.apply_pending() == 1
            assert f.left() == 0  # the fault did fire, three times
        assert quantities(net, "MUG") == {b: start[1] - 1 for b in start}
        assert dead(net) == [] and pending(net) == 0 and d.stats.dead == 0
        retries = [e for e in logs if e["event"] == "batch_retry"]
        assert len(retries) == 3 and {e["errno"] for e in retries} == {errno}, retries
        assert {e["error_class"] for e in retries} == {"transient"}
        assert not [e for e in logs if e["event"] in ("member_skipped", "change_dead_lettered")]
        assert sum(d.stats.retry_reasons.values()) == 3
    finally:
        d.close()


def test_path10_permanent_error_is_dead_lettered_and_retry_requeues_it(wp_network, tmp_path):
    """A change whose apply fails alone, twice, with a non-transient errno is dead-lettered with the
    errno; `syncd dead-letters list --json` shows it, `retry` puts it back and it applies."""
    net = wp_network
    ids = members(net, "MUG")
    d = make_daemon(net)
    path = str(write_config(tmp_path, net))
    condition = f"NEW.role = 'origin' AND NEW.post_id = {ids[1]} AND NEW.blog_id = 1"
    try:
        d.apply_pending()
        start = quantities(net, "MUG")
        with fault(net, "perm", f"{net.prefix}syncd_history", "INSERT", condition, 1644, 100) as f:
            woo_decrease(net, 1, ids[1], 1)
            assert d.apply_pending() == 1
            assert f.left() == 98  # tried twice, then dead-lettered
        assert [(r[1], r[2], r[4], r[5]) for r in dead(net)] == [(1, ids[1], "permanent_error", 1644)]
        assert quantities(net, "MUG") == {**start, 1: start[1] - 1}
        out = io.StringIO()
        with _stdout(out):
            assert cli.main(["--config", path, "dead-letters", "list", "--json"]) == 0
        listed = json.loads(out.getvalue())
        assert [(x["blog_id"], x["errno"], x["error_class"]) for x in listed] == [
            (1, 1644, "permanent_error")
        ]
        with _stdout(io.StringIO()):
            assert cli.main(["--config", path, "dead-letters", "retry"]) == 2  # IDs or --all
            assert cli.main(["--config", path, "dead-letters", "retry", str(listed[0]["id"])]) == 0
        assert dead(net) == [] and pending(net) == 1
        assert d.apply_pending() == 1
        assert quantities(net, "MUG") == {b: start[1] - 1 for b in start}
        # discard: an unknown id is reported (16), nothing else happens.
        with _stdout(io.StringIO()):
            assert cli.main(["--config", path, "dead-letters", "discard", "999999"]) == 16
    finally:
        d.close()


def test_statement_groups_never_split_by_fetch(wp_network):
    """A full batch is completed with the rest of its last statements (every key, not only _stock)."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        d.apply_pending()
        with net.engine.connect() as c:
            woo_decrease(net, 1, members(net, "MUG")[1], 1, conn=c)
            c.exec_driver_sql(
                f"UPDATE {net.table(2, 'postmeta')} SET meta_value = 'notify' "
                f"WHERE post_id IN ({BOOK[(2, 'en')]}, {BOOK[(2, 'fr')]}) AND meta_key = '_backorders'"
            )
            c.commit()
            got = queue.fetch(c, net.prefix, 2)
            c.rollback()
        assert [ch.meta_key for ch in got] == ["_stock", "_backorders", "_backorders"]
        assert len(queue.statement_groups(got)) == 2
    finally:
        d.close()


@contextmanager
def _stdout(buf: io.StringIO) -> Iterator[None]:
    import contextlib

    with contextlib.redirect_stdout(buf):
        yield


def test_retry_dead_requeues_the_whole_statement_under_its_ids(wp_network):
    """A dead-lettered fan-out (two rows, one statement) retried by one of its ids goes back whole,
    with its own ids (capture order kept); a dead letter whose id the queue holds meanwhile for
    another change goes back under a new id."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED)
    try:
        d.apply_pending()
        fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 2)
        with net.engine.connect() as c:
            rows = queue.fetch(c, net.prefix, 10)
            assert len(rows) == 2
            assert queue.dead_letter(c, net.prefix, rows, queue.DEAD_ERROR, "test") == 2
            c.commit()
            assert pending(net) == 0
            assert queue.retry_dead(c, net.prefix, [rows[0].id]) == sorted(r.id for r in rows)
            c.commit()
            back = queue.fetch(c, net.prefix, 10)
            c.rollback()
        assert [r.id for r in back] == [r.id for r in rows] and dead(net) == []
        d.apply_pending()
        assert books(net) == {(2, "en"): 5, (2, "fr"): 5, (3, "en"): 5, (3, "fr"): 5}
        # An id taken meanwhile (an AUTO_INCREMENT reset by a restart of an old server).
        fan_out(net, 2, [BOOK[(2, "en")]], 1)
        with net.engine.connect() as c:
            (sale,) = queue.fetch(c, net.prefix, 10)
            queue.dead_letter(c, net.prefix, [sale], queue.DEAD_ERROR, "test")
            c.exec_driver_sql(
                f"INSERT INTO {net.prefix}syncd_change (id, blog_id, post_id, meta_key, op, old_value, new_value, "
                f"captured_at, conn_id) VALUES ({sale.id}, 2, 999999, '_backorders', 'U', 'no', 'no', "
                "UTC_TIMESTAMP(6), 1)"
            )
            c.commit()
            assert queue.retry_dead(c, net.prefix, None) == [sale.id]
            c.commit()
            back = queue.fetch(c, net.prefix, 10)
            c.rollback()
        assert [(r.id == sale.id, r.post_id) for r in back] == [(True, 999999), (False, sale.post_id)]
        assert dead(net) == []
    finally:
        d.close()


def test_path5_held_register_change_never_overwrites_a_newer_one(wp_network):
    """Last captured wins across a hold (issue 9): blog 3 (archived) switches backorders on; later,
    blog 1 switches them to 'notify'. When blog 3 is live again its held change is older than the
    value its group already took: it is superseded (warned, recorded), not written over the newer
    one, and blog 3's own member takes the group's value once settled. Before syncd_register, the
    held change was applied last and every blog ended with blog 3's older 'yes'."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net)
    try:
        d.apply_pending()
        archived(net, 3, True)
        set_meta(net, 3, ids[3], "_backorders", "yes")  # captured first, held
        assert d.apply_pending() == 0 and pending(net) == 1
        set_meta(net, 1, ids[1], "_backorders", "notify")  # captured later, applied now
        assert d.apply_pending() == 1
        assert meta(net, 2, ids[2], "_backorders") == "notify"
        archived(net, 3, False)
        d.discover()
        with capture_logs() as logs:
            assert d.apply_pending() == 1  # and the heal of blog 3's member (settle_seconds = 0)
        assert {b: meta(net, b, ids[b], "_backorders") for b in (1, 2, 3)} == {
            1: "notify",
            2: "notify",
            3: "notify",
        }
        skipped = [e for e in logs if e["event"] == "change_skipped"]
        assert len(skipped) == 1 and skipped[0]["blog"] == 3 and "superseded" in skipped[0]["reason"], skipped
        assert pending(net) == 0 and dead(net) == []
    finally:
        d.close()


def test_retried_dead_letter_register_change_is_superseded_by_a_newer_one(wp_network):
    """A register change dead-lettered, then retried after a newer change of its group was
    applied, is superseded: the newer value stays on every blog."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net)
    try:
        d.apply_pending()
        set_meta(net, 2, ids[2], "_backorders", "yes")
        with net.engine.connect() as c:  # to the dead letters as the daemon moves them: whole statement
            rows = queue.fetch(c, net.prefix, 100, blogs=[1, 2, 3])
            queue.dead_letter(c, net.prefix, rows, "permanent_error", "test: a failure", 1064)
            c.commit()
        assert pending(net) == 0
        set_meta(net, 1, ids[1], "_backorders", "notify")
        assert d.apply_pending() == 1
        with net.engine.connect() as c:
            assert len(queue.retry_dead(c, net.prefix)) == 1
            c.commit()
        assert d.apply_pending() == 1
        assert {b: meta(net, b, ids[b], "_backorders") for b in (1, 2, 3)} == {
            1: "notify",
            2: "notify",
            3: "notify",
        }
    finally:
        d.close()


def test_path5_held_import_set_keeps_the_sales_applied_before_it(wp_network):
    """An importer on blog 3 (archived) deletes and re-adds TSHIRT-RED's _stock as 50 (an absolute
    set, held); then a sale of 2 on blog 1 is applied. When blog 3 is live again, the import is
    older than that sale: it is sent as the change it made on its own product (+40), so every blog
    ends with 48. Applied as an absolute set (before syncd_register), every blog ended with 50:
    the sale was lost."""
    net = wp_network
    ids = members(net, "TSHIRT-RED")
    d = make_daemon(net)
    pm3 = net.table(3, "postmeta")
    try:
        d.apply_pending()
        assert quantities(net, "TSHIRT-RED") == {1: 10, 2: 10, 3: 10}
        archived(net, 3, True)
        with net.engine.connect() as c:
            c.exec_driver_sql(f"DELETE FROM {pm3} WHERE post_id = %s AND meta_key = '_stock'", (ids[3],))
            c.commit()
            c.exec_driver_sql(
                f"INSERT INTO {pm3} (post_id, meta_key, meta_value) VALUES (%s, '_stock', '50')", (ids[3],)
            )
            c.commit()
        assert d.apply_pending() == 0 and pending(net) == 2
        woo_decrease(net, 1, ids[1], 2)
        assert d.apply_pending() == 1
        archived(net, 3, False)
        d.discover()
        assert d.apply_pending() == 2  # and blog 3's member healed (settle_seconds = 0)
        assert quantities(net, "TSHIRT-RED") == {1: 48, 2: 48, 3: 48}
        assert pending(net) == 0 and dead(net) == []
    finally:
        d.close()


def test_path5_sku_rename_carried_while_a_blog_is_archived_reaches_it_when_back(wp_network):
    """A rename carried to the group while blog 2 is archived skips blog 2's member (not live);
    once blog 2 is back, the member's heal gives it the group's SKU too, so the three stay one
    group under one SKU (found by the storm with an archive step: blog 2 kept the old SKU)."""
    net = wp_network
    ids = members(net, "MUG")
    d = make_daemon(net)
    try:
        d.apply_pending()
        archived(net, 2, True)
        set_meta(net, 1, ids[1], "_sku", "MUG-R1")
        assert d.apply_pending() == 1
        assert [meta(net, b, ids[b], "_sku") for b in (1, 2, 3)] == ["MUG-R1", "MUG", "MUG-R1"]
        archived(net, 2, False)
        d.discover()
        d.apply_pending()
        assert [meta(net, b, ids[b], "_sku") for b in (1, 2, 3)] == ["MUG-R1"] * 3
        assert members(net, "MUG-R1") == ids
    finally:
        d.close()


def test_path5_sku_rename_while_every_other_blog_is_archived_reaches_them_when_back(wp_network):
    """A rename on blog 1 while blogs 2 and 3 are both archived has no live member to be written
    to; the group still takes it, and each other member takes it when its blog is back (found by
    the storm: with nothing written, no heal was queued and blogs 2 and 3 kept the old SKU)."""
    net = wp_network
    ids = members(net, "MUG")
    d = make_daemon(net)
    try:
        d.apply_pending()
        archived(net, 2, True)
        archived(net, 3, True)
        set_meta(net, 1, ids[1], "_sku", "MUG-R1")
        assert d.apply_pending() == 1
        assert [meta(net, b, ids[b], "_sku") for b in (1, 2, 3)] == ["MUG-R1", "MUG", "MUG"]
        for b in (2, 3):
            archived(net, b, False)
            d.discover()
        d.apply_pending()
        assert [meta(net, b, ids[b], "_sku") for b in (1, 2, 3)] == ["MUG-R1"] * 3
        assert members(net, "MUG-R1") == ids
    finally:
        d.close()


def test_path5_rename_on_a_blog_archived_before_it_is_applied_is_carried_when_back(wp_network):
    """A rename made on blog 3 just before blog 3 is archived is held; when blog 3 is back, the
    discovery that releases it must not regroup the renamed product on its own: the held rename
    is then carried to the group (found by the storm with an archive step)."""
    net = wp_network
    ids = members(net, "MUG")
    d = make_daemon(net)
    try:
        d.apply_pending()
        archived(net, 2, True)
        set_meta(net, 3, ids[3], "_sku", "MUG-R1")
        archived(net, 3, True)
        assert d.apply_pending() == 0 and pending(net) == 1
        for b in (2, 3):  # back one after the other, each released by discovery
            archived(net, b, False)
            d.discover()
        d.apply_pending()
        assert [meta(net, b, ids[b], "_sku") for b in (1, 2, 3)] == ["MUG-R1"] * 3
    finally:
        d.close()


def test_path5_sales_missed_on_both_sides_in_turn_all_count(wp_network):
    """Sales missed in turn by two blogs' members while each was archived are received as deltas
    when each is back (found by the storm: a heal copied another member's stock, which lacked the
    sale that member had missed in turn, and one sale was lost). Blog 1 stays archived until the
    end, so no member ever holds every sale: a copy cannot be exact, only deltas can."""
    net = wp_network
    mug = members(net, "MUG")
    d = make_daemon(net)
    try:
        d.apply_pending()
        start = qty(net, 1, mug[1])
        archived(net, 1, True)
        archived(net, 2, True)
        woo_decrease(net, 3, mug[3], 2)  # blogs 1 and 2 miss it
        d.apply_pending()
        archived(net, 3, True)  # blog 3 away before blog 2 is back: its heal has no live authority
        archived(net, 2, False)
        d.discover()
        woo_decrease(net, 2, mug[2], 1)  # blogs 1 and 3 miss it; blog 2 receives blog 3's sale
        d.apply_pending()
        assert qty(net, 2, mug[2]) == start - 3
        for b in (3, 1):
            archived(net, b, False)
            d.discover()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 3] * 3
        assert settling_rows(net) == []
    finally:
        d.close()


def test_path5_a_member_that_missed_a_setting_copies_one_that_only_missed_sales(wp_network):
    """Blogs 1 and 2 miss a setting (they must take their group's values); blog 3 misses only a
    sale (it receives it as a delta). Blog 1's heal takes its values from blog 3, not blog 2 (behind
    on the setting), plus the sale blog 3 has not received yet; then all agree."""
    net = wp_network
    mug = members(net, "MUG")
    d = make_daemon(net)
    try:
        d.apply_pending()
        start = qty(net, 1, mug[1])
        archived(net, 1, True)
        archived(net, 2, True)
        set_meta(net, 3, mug[3], "_backorders", "notify")  # blogs 1 and 2 miss a setting
        d.apply_pending()
        archived(net, 3, True)
        archived(net, 2, False)
        d.discover()
        woo_decrease(net, 2, mug[2], 1)  # blogs 1 and 3 miss a sale
        d.apply_pending()
        for b in (3, 1):
            archived(net, b, False)
            d.discover()
        d.apply_pending()
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [start - 1] * 3
        assert [meta(net, b, mug[b], "_backorders") for b in (1, 2, 3)] == ["notify"] * 3
        assert settling_rows(net) == []
    finally:
        d.close()


def settling_rows(net: Any) -> list[tuple[Any, ...]]:
    with net.engine.connect() as c:
        return [
            tuple(r)
            for r in c.exec_driver_sql(f"SELECT blog_id, post_id, kind FROM {net.prefix}syncd_settle")
        ]


def test_schema_8_upgrade_keeps_queued_heals_as_copies(wp_network):
    """An installation from before schema 8 has no ``syncd_settle.copy_values``: the upgrade adds
    it in place, and a heal queued before it keeps taking its group's values, as it did."""
    from syncd import schema

    net = wp_network
    mug = members(net, "MUG")
    settle_table = f"{net.prefix}syncd_settle"
    d = make_daemon(net)
    try:
        d.apply_pending()
        with net.engine.connect() as c:
            c.exec_driver_sql(f"ALTER TABLE {settle_table} DROP COLUMN copy_values")
            c.exec_driver_sql("SET @syncd_apply = 1")  # not captured: a member left behind, as before
            c.exec_driver_sql(  # blog 3's member is behind: 77 instead of its group's stock
                f"UPDATE {net.table(3, 'postmeta')} SET meta_value = '77' WHERE post_id = %s AND meta_key = '_stock'",
                (mug[3],),
            )
            c.exec_driver_sql("SET @syncd_apply = NULL")
            c.exec_driver_sql(
                f"INSERT INTO {settle_table} (blog_id, post_id, kind, stock_delta, last_change_at, queued_at) "
                "VALUES (3, %s, 'heal', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
                (mug[3],),
            )
            c.commit()
            schema.ensure_schema(c, net.prefix)
            schema.ensure_schema(c, net.prefix)  # idempotent
            assert c.exec_driver_sql(f"SELECT copy_values FROM {settle_table}").scalars().all() == [1]
        d.apply_pending()
        assert qty(net, 3, mug[3]) == qty(net, 1, mug[1]) != 77
        assert settling_rows(net) == []
    finally:
        d.close()


def test_path5_translations_that_missed_sales_on_both_sides_keep_them(wp_network):
    """Blogs 2 and 3 share stock between BOOK (en) and BOOK (fr). Blog 3 sets BOOK to 0 while it is
    archived (held; the add-on copies it to the French BOOK), blog 2 sells one meanwhile (blog 3's
    translations miss it); then blog 3 is back and blog 2 archived (blog 2's translations miss
    blog 3's set). Each translation receives what it missed as deltas: -1 everywhere. Before,
    the English BOOK's heal queued a copy of the French one, which copied a member behind too
    (found by the storm)."""
    net = wp_network
    d = make_daemon(net, blogs=SHARED, sync={"settle_seconds": 3600})
    try:
        d.apply_pending()
        archived(net, 3, True)
        with net.engine.connect() as c:  # the admin's edit, then the add-on's copy: one connection
            for lang in ("en", "fr"):
                c.exec_driver_sql(
                    f"UPDATE {net.table(3, 'postmeta')} SET meta_value = '0' WHERE post_id = %s AND meta_key = '_stock'",
                    (BOOK[(3, lang)],),
                )
                c.commit()
        fan_out(net, 2, [BOOK[(2, "en")], BOOK[(2, "fr")]], 1)
        d.apply_pending()
        archived(net, 3, False)
        archived(net, 2, True)
        d.discover()
        d.apply_pending()
        settled_now(net)
        d.apply_pending()
        archived(net, 2, False)
        d.discover()
        d.apply_pending()
        settled_now(net)
        d.apply_pending()
        assert books(net) == {k: Decimal(-1) for k in BOOK}
        assert settling_rows(net) == []
    finally:
        d.close()


def test_path5_a_translation_linked_only_through_an_archived_blog_catches_up(wp_network):
    """Blog 3 shares stock between SOLO (en) and SOLO (fr); blog 2 sells SOLO in English only, blog
    1 in French only, so blog 1's SOLO is the same stock as blog 2's only through blog 3's
    translations. Blog 2 sells SOLO while blog 3 is archived: the batch still reads the archived
    blog's translations, so blog 1 receives the sale at once, and both of blog 3's translations
    receive it once blog 3 is back. Before, blog 1 and blog 3's French SOLO kept their stock."""
    from syncd.testnet.factory import ProductFactory

    net = wp_network
    d = make_daemon(net, blogs={**SHARED, "1": {"language": "fr"}})  # blog 1 (no Polylang) sells in French
    try:
        d.apply_pending()
        with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(3)) as f:
            en3, fr3 = f.simple("SOLO", stock=9, language="en"), f.simple("SOLO", stock=9, language="fr")
            f.link_translations({"en": en3, "fr": fr3})
        with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(2)) as f:
            en2 = f.simple("SOLO", stock=9, language="en")
        with net.engine.connect() as c, ProductFactory(c, net.blog_prefix(1)) as f:
            fr1 = f.simple("SOLO", stock=9)
        d.apply_pending()
        solo = ((2, en2), (3, en3), (3, fr3), (1, fr1))
        assert [qty(net, b, p) for b, p in solo] == [9, 9, 9, 9]
        archived(net, 3, True)
        woo_decrease(net, 2, en2, 2)  # blog 1's French SOLO is the same stock, through blog 3
        d.apply_pending()
        assert qty(net, 1, fr1) == 7
        archived(net, 3, False)
        d.discover()
        d.apply_pending()
        assert [qty(net, b, p) for b, p in solo] == [7, 7, 7, 7]
        assert settling_rows(net) == []
    finally:
        d.close()
