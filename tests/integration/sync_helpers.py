"""Helpers for end-to-end sync tests: a prepared daemon on a test network, stock reads and writes
done the way WooCommerce does them (autocommit relative UPDATEs)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from syncd.config import config_for
from syncd.daemon import Daemon
from tests.integration.daemon_process import pending  # noqa: F401 - re-exported


def make_daemon(net: Any, refresh: Any = None, **sections: Any) -> Daemon:
    # settle_seconds 0: a product joins as soon as its creation is applied (the settle tests set it).
    sync = {"idle_wait": 0.005, "settle_seconds": 0, **sections.pop("sync", {})}
    cfg = config_for(net.url, net.prefix, sync=sync, **sections)
    d = Daemon(cfg, instance="test", refresh=refresh)
    d.prepare()
    return d


def stock(net: Any, blog_id: int, post_id: int) -> str | None:
    with net.engine.connect() as c:
        return c.execute(
            sa.text(
                f"SELECT meta_value FROM {net.table(blog_id, 'postmeta')} WHERE post_id = :p AND meta_key = '_stock'"
            ),
            {"p": post_id},
        ).scalar_one_or_none()


def meta(net: Any, blog_id: int, post_id: int, key: str) -> str | None:
    with net.engine.connect() as c:
        return c.execute(
            sa.text(
                f"SELECT meta_value FROM {net.table(blog_id, 'postmeta')} WHERE post_id = :p AND meta_key = :k"
            ),
            {"p": post_id, "k": key},
        ).scalar_one_or_none()


def qty(net: Any, blog_id: int, post_id: int) -> Decimal | None:
    v = stock(net, blog_id, post_id)
    return None if v is None else Decimal(v)


def woo_decrease(
    net: Any, blog_id: int, post_id: int, n: int | str, conn: sa.Connection | None = None
) -> None:
    """WooCommerce's checkout statement: `meta_value = meta_value -N.000000`, autocommit."""
    sql = (
        f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = meta_value -{Decimal(n):f} "
        f"WHERE post_id = {int(post_id)} AND meta_key='_stock'"
    )
    _run(net, sql, conn)


def woo_increase(
    net: Any, blog_id: int, post_id: int, n: int | str, conn: sa.Connection | None = None
) -> None:
    sql = (
        f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = meta_value +{Decimal(n):f} "
        f"WHERE post_id = {int(post_id)} AND meta_key='_stock'"
    )
    _run(net, sql, conn)


def set_meta(
    net: Any, blog_id: int, post_id: int, key: str, value: str | None, conn: sa.Connection | None = None
) -> None:
    with net.engine.connect() as c:
        c.execute(
            sa.text(
                f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"
            ),
            {"v": value, "p": post_id, "k": key},
        )
        c.commit()


def _run(net: Any, sql: str, conn: sa.Connection | None) -> None:
    if conn is not None:
        conn.exec_driver_sql(sql)
        conn.commit()
        return
    with net.engine.connect() as c:
        c.exec_driver_sql(sql)
        c.commit()


def deadlocks(net: Any) -> int:
    """InnoDB deadlocks detected by the server so far (server-wide; tests run one at a time).

    A deadlock between syncd and a shop may pick the shop's statement as its victim - a lost
    sale - so storm tests assert that none happened at all, not only that nothing was lost."""
    with net.engine.connect() as c:
        row = c.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'").first()  # MariaDB
        if row is not None:
            return int(row[1])
        return int(  # MySQL: the lock_deadlocks metric (enabled by default)
            c.exec_driver_sql(
                "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'lock_deadlocks'"
            ).scalar_one()
        )


def ids(net: Any, sku: str) -> dict[int, int]:
    """blog_id -> post id of the product with this SKU in the recorded catalogue (non-Polylang SKUs)."""
    out = {}
    with net.engine.connect() as c:
        for b in net.blog_ids:
            row = c.execute(
                sa.text(
                    f"SELECT post_id FROM {net.table(b, 'postmeta')} WHERE meta_key = '_sku' AND meta_value = :s"
                ),
                {"s": sku},
            ).all()
            if len(row) == 1:
                out[b] = row[0][0]
    return out


def archived(net: Any, blog_id: int, on: bool) -> None:
    """The network admin archives a blog (or brings it back): syncd holds its changes meanwhile."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.prefix}blogs SET archived = %s WHERE blog_id = %s", (int(on), blog_id)
        )
        c.commit()


def settled_now(net: Any) -> None:
    """Time passes: every settling product has been quiet for an hour (deterministic, no sleep)."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"UPDATE {net.prefix}syncd_settle SET last_change_at = last_change_at - INTERVAL 1 HOUR"
        )
        c.commit()
