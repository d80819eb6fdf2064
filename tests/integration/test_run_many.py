"""syncd.db.run_many: several statements in one round trip on a multi-statement connection, one
by one elsewhere - the same results, the same effects, the same errors either way."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import syncd.db
from syncd.db import (
    SessionSettings,
    _round_trips,
    bind,
    errno_of,
    is_retryable,
    make_engine,
    multi_statements,
    run_many,
)


@pytest.fixture(params=[True, False], ids=["multi", "one-by-one"])
def engine(request, wp_network):
    eng = make_engine(wp_network.url, SessionSettings(), multi_statements=request.param)
    yield eng
    eng.dispose()


def _scratch(conn: sa.Connection, net: Any) -> str:
    name = f"{net.prefix}run_many_t"
    conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS `{name}` (id INT PRIMARY KEY, v VARCHAR(20))")
    conn.exec_driver_sql(f"DELETE FROM `{name}`")
    conn.commit()
    return f"`{name}`"


def test_results_and_effects_in_order(engine, wp_network, request):
    with engine.connect() as conn:
        assert multi_statements(conn) is (request.node.callspec.params["engine"])
        t = _scratch(conn, wp_network)
        out = run_many(
            conn,
            [
                (f"INSERT INTO {t} (id, v) VALUES (%s, %s), (%s, %s)", [1, "a;b", 2, "it's 50%"]),
                (f"SELECT id, v FROM {t} ORDER BY id", []),
                (f"UPDATE {t} SET v = %s WHERE id = %s", ["x", 2]),
                (f"SELECT v AS value FROM {t} WHERE id IN (%s, %s) ORDER BY id", [1, 2]),
            ],
        )
        assert [r.columns for r in out] == [(), ("id", "v"), (), ("value",)]
        assert out[1].rows == [(1, "a;b"), (2, "it's 50%")]  # values are bound, never pasted
        assert out[3].rows == [("a;b",), ("x",)]
        conn.rollback()  # all of it was in the caller's transaction
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar_one() == 0


def test_an_error_stops_the_rest_and_keeps_its_errno(engine, wp_network):
    with engine.connect() as conn:
        t = _scratch(conn, wp_network)
        with pytest.raises(sa.exc.DBAPIError) as err:
            run_many(
                conn,
                [
                    (f"INSERT INTO {t} (id, v) VALUES (%s, %s)", [1, "first"]),
                    (f"SELECT * FROM {wp_network.prefix}no_such_table", []),
                    (f"INSERT INTO {t} (id, v) VALUES (%s, %s)", [2, "never"]),
                ],
            )
        assert errno_of(err.value) == 1146 and not is_retryable(err.value)
        # The statement before the failure ran (in the open transaction), the one after did not,
        # and the connection is usable.
        assert conn.exec_driver_sql(f"SELECT id FROM {t} ORDER BY id").all() == [(1,)]
        conn.rollback()


def test_round_trips_stay_within_the_packet_budget():
    """Pure: consecutive groups, in order, each within the budget unless one statement alone is
    larger (then it goes alone)."""
    small = ("SELECT %s", ["x" * 10])
    big = ("SELECT %s", ["y" * 500])
    parts = _round_trips([small, small, big, small, small, small], budget=120)
    assert [len(p) for p in parts] == [2, 1, 3]
    assert [s for p in parts for s in p] == [small, small, big, small, small, small]
    assert _round_trips([small] * 5) == [[small] * 5]


def test_a_large_batch_is_split_into_several_round_trips_with_the_same_results(
    engine, wp_network, monkeypatch
):
    monkeypatch.setattr(syncd.db, "ROUND_TRIP_BYTES", 200)
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with engine.connect() as conn:
        t = _scratch(conn, wp_network)
        sent.clear()
        inserts = [(f"INSERT INTO {t} (id, v) VALUES (%s, %s)", [i, f"value {i}"]) for i in range(20)]
        out = run_many(conn, [*inserts, (f"SELECT COUNT(*), MAX(v) FROM {t}", [])])
        assert out[-1].rows == [(20, "value 9")]
        assert all(r.rowcount == 1 for r in out[:-1])
        if multi_statements(conn):
            assert 1 < len(sent) < 21  # several round trips, each with several statements
        conn.rollback()


def test_multi_statements_can_be_switched_off_and_the_daemon_syncs_the_same(wp_network):
    """``[database] multi_statements = false`` (a proxy that refuses them): the apply connection
    is opened without the flag, run_many sends one statement per round trip, and a sale still
    reaches every member with its derived data."""
    from tests.integration.daemon_process import assert_derived_consistent, members, quantities
    from tests.integration.sync_helpers import make_daemon, woo_decrease

    net = wp_network
    d = make_daemon(net, database={"multi_statements": False})
    try:
        d.apply_pending()
        assert d._apply_engine is not None
        with d._apply_engine.connect() as conn:
            assert multi_statements(conn) is False
        ids = members(net, "TSHIRT-RED")
        woo_decrease(net, 2, ids[2], 3)
        assert d.apply_pending() == 1
        assert set(quantities(net, "TSHIRT-RED").values()) == {7}
        assert_derived_consistent(net, ["TSHIRT-RED"])
    finally:
        d.close()


def test_bind_gives_the_text_pymysql_would_send(wp_network):
    """db.bind's shortcuts (int, None, a repeated naive datetime) give exactly the text of the
    driver's own binding (cursor.mogrify), and the server reads the values back unchanged."""
    values = [
        0,
        -7,
        2**70,
        True,
        False,
        None,
        "it's a \\ 'quote'",
        "ünïcødé",
        b"\x00\xff",
        Decimal("1.0"),
        Decimal("-0.000100"),
        1.5,
        date(2026, 1, 2),
        datetime(2026, 1, 2, 3, 4, 5),
        datetime(2026, 1, 2, 3, 4, 5, 7),
        datetime(2026, 1, 2, 3, 4, 5),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "100%",
        "%s",
    ]
    text = "SELECT " + ", ".join(["%s"] * len(values))
    engine = make_engine(wp_network.url, SessionSettings(), multi_statements=True)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cursor = raw.cursor()
            assert bind(raw, text, values) == cursor.mogrify(text, values)
            assert bind(raw, "SELECT 1 %% 2, %s", [3]) == cursor.mogrify("SELECT 1 %% 2, %s", [3])
            (row,) = run_many(conn, [(text, values)])[0].rows
            assert row[0] == 0 and row[2] == 2**70 and row[5] is None and row[6] == "it's a \\ 'quote'"
            assert row[7] == "ünïcødé" and row[18] == "%s"
            with pytest.raises(sa.exc.DBAPIError):
                run_many(conn, [("SELECT %s, %s", [1])])  # a parameter short: the driver's error
            conn.rollback()
    finally:
        engine.dispose()
