"""syncd.queue's pure parts: statement groups and the error classes (by errno, never by text)."""

from __future__ import annotations

from datetime import datetime

import pymysql
import pytest
import sqlalchemy as sa

from syncd import queue
from syncd.plan import Change

T1 = datetime(2026, 12, 6, 10, 0, 0, 1)
T2 = datetime(2026, 12, 6, 10, 0, 0, 2)


def ch(
    i: int, blog: int = 2, post: int = 18, conn: int = 7, at: datetime = T1, key: str = "_stock"
) -> Change:
    return Change(i, blog, post, key, "U", "7", "5", at, conn)


def test_rows_of_one_statement_are_one_group_whatever_their_ids():
    # Another connection's row (id 2) lies between the two rows of connection 7's statement.
    changes = [ch(3, post=19), ch(1), ch(2, blog=1, post=11, conn=8), ch(4, at=T2)]
    groups = queue.statement_groups(changes)
    assert [[c.id for c in g] for g in groups] == [[1, 3], [2], [4]]


def test_rows_without_a_connection_id_are_groups_of_one():
    assert [[c.id for c in g] for g in queue.statement_groups([ch(1, conn=0), ch(2, conn=0)])] == [[1], [2]]


def test_same_connection_and_time_on_two_blogs_are_two_statements():
    assert len(queue.statement_groups([ch(1, blog=2), ch(2, blog=3)])) == 2


def _db_error(errno: int) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError.instance(
        "SELECT 1", (), pymysql.err.OperationalError(errno, "x"), pymysql.err.Error
    )


@pytest.mark.parametrize(
    ("errno", "kind", "reason"),
    [
        (1205, queue.TRANSIENT, "lock wait timeout"),
        (1213, queue.TRANSIENT, "deadlock"),
        (1969, queue.TRANSIENT, "statement timeout"),
        (3024, queue.TRANSIENT, "statement timeout"),
        (1114, queue.TRANSIENT, "table full"),
        (1021, queue.TRANSIENT, "disk full"),
        (1180, queue.TRANSIENT, "commit failed"),
        (1290, queue.TRANSIENT, "server read-only"),
        (1836, queue.TRANSIENT, "server read-only"),
        (2006, queue.CONNECTION, "connection lost"),
        (2013, queue.CONNECTION, "connection lost"),
        (4031, queue.CONNECTION, "connection lost"),
        (1644, queue.PERMANENT, "error"),
        (1146, queue.PERMANENT, "error"),
    ],
)
def test_error_classes_by_errno(errno, kind, reason):
    exc = _db_error(errno)
    assert queue.error_class(exc) == kind
    assert queue.reason(exc) == reason
