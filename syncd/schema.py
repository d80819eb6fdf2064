"""syncd's own tables: create (idempotently), version, drop.

All state lives in the shop's database under ``{base}syncd_*`` so that applying a batch and
acknowledging its change rows is one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from syncd.db import table, validate_prefix
from syncd.sqlfiles import schema_text, split_statements

SCHEMA_VERSION = 8
OWN_TABLES = (
    "syncd_change",
    "syncd_dead",
    "syncd_member",
    "syncd_group",
    "syncd_link",
    "syncd_snapshot",
    "syncd_history",
    "syncd_meta",
    "syncd_settle",
    "syncd_fanout",
    "syncd_register",
    "syncd_user",
    "syncd_token",
    "syncd_source",
    "syncd_change_conn",
    "syncd_field_defer",
    "syncd_field_check",
)


def schema_statements(base_prefix: str) -> list[str]:
    """The DDL of syncd's tables for ``base_prefix`` (pure; golden-tested)."""
    validate_prefix(base_prefix)
    return [s.replace("{base}", base_prefix) for s in split_statements(schema_text("syncd.sql"))]


def ensure_schema(conn: sa.Connection, base_prefix: str) -> int:
    """Create missing tables and record the schema version. Safe to run any number of times."""
    _drop_v1_members(conn, base_prefix)
    for stmt in schema_statements(base_prefix):
        conn.exec_driver_sql(stmt)
    _widen_history_role(conn, base_prefix)
    _add_history_source(conn, base_prefix)
    _add_history_field_group(conn, base_prefix)
    _add_history_hashes(conn, base_prefix)
    _add_settle_copy_values(conn, base_prefix)
    _ensure_index(conn, base_prefix, "syncd_change", "product", "(`blog_id`, `post_id`)")
    # syncd.queue: a statement's rows are found together (tables created before it lack the key).
    _ensure_index(conn, base_prefix, "syncd_change", "stmt", "(`conn_id`, `captured_at`)")
    _add_dead_letter_class(conn, base_prefix)
    _ensure_index(conn, base_prefix, "syncd_group", "sku_lang", "(`sku`, `lang`)")
    set_meta(conn, base_prefix, "schema_version", str(SCHEMA_VERSION))
    conn.commit()
    return SCHEMA_VERSION


def _drop_v1_members(conn: sa.Connection, base_prefix: str) -> None:
    """Schema 1's member table had no group ids. It is only a cache of postmeta (rebuilt by the
    next membership refresh), so it is dropped and created anew rather than altered column by
    column (MySQL has no ADD COLUMN IF NOT EXISTS). Idempotent: does nothing once upgraded."""
    old = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = DATABASE() "
            "AND t.TABLE_NAME = :t AND NOT EXISTS (SELECT 1 FROM information_schema.COLUMNS c "
            "WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME AND c.COLUMN_NAME = 'group_id')"
        ),
        {"t": base_prefix + "syncd_member"},
    ).scalar_one()
    if old:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table(base_prefix, 'syncd_member')}")


def _widen_history_role(conn: sa.Connection, base_prefix: str) -> None:
    """History tables created before reconcile existed hold ``role`` in VARCHAR(8), too short for
    'reconcile'. Widened in place (a metadata-only change); idempotent: does nothing once wide."""
    width = conn.execute(
        sa.text(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = :t AND COLUMN_NAME = 'role'"
        ),
        {"t": base_prefix + "syncd_history"},
    ).scalar_one_or_none()
    if width is not None and int(width) < 16:
        conn.exec_driver_sql(
            f"ALTER TABLE {table(base_prefix, 'syncd_history')} MODIFY `role` VARCHAR(16) NOT NULL"
        )


def _add_dead_letter_class(conn: sa.Connection, base_prefix: str) -> None:
    """Dead letters created before syncd.queue have no error class and errno: added in place, once."""
    _ensure_column(
        conn,
        base_prefix,
        "syncd_dead",
        "error_class",
        "ADD COLUMN `error_class` VARCHAR(32) NOT NULL DEFAULT 'permanent_error' AFTER `failed_at`, "
        "ADD COLUMN `errno` INT NULL AFTER `error_class`",
    )


def _add_history_source(conn: sa.Connection, base_prefix: str) -> None:
    """Schema 4 added history's ``source`` (who asked for a dashboard write): added in place, once."""
    _ensure_column(conn, base_prefix, "syncd_history", "source", "ADD COLUMN `source` VARCHAR(191) NULL")


def _add_history_field_group(conn: sa.Connection, base_prefix: str) -> None:
    """Schema 6 added history's ``field_group`` (issue 10: NULL = stock, else the field group whose
    field ``meta_key`` names): added in place, once."""
    _ensure_column(
        conn, base_prefix, "syncd_history", "field_group", "ADD COLUMN `field_group` VARCHAR(16) NULL"
    )


def _add_history_hashes(conn: sa.Connection, base_prefix: str) -> None:
    """Schema 7 added history's ``old_hash``/``new_hash`` (a field value longer than its column:
    the SHA-1 of the whole value, syncd.record.field_value_hash): added in place, once."""
    _ensure_column(
        conn,
        base_prefix,
        "syncd_history",
        "new_hash",
        "ADD COLUMN `old_hash` CHAR(40) NULL, ADD COLUMN `new_hash` CHAR(40) NULL",
    )


def _add_settle_copy_values(conn: sa.Connection, base_prefix: str) -> None:
    """Schema 8 added ``syncd_settle.copy_values`` (0: a heal that only adds the stock deltas its
    member missed, ``stock_delta``; 1: it takes its group's values). Records queued before it
    take their group's values, as they did: added in place, once, defaulting to 1."""
    _ensure_column(
        conn,
        base_prefix,
        "syncd_settle",
        "copy_values",
        "ADD COLUMN `copy_values` TINYINT(1) NOT NULL DEFAULT 1 AFTER `stock_delta`",
    )


def _ensure_column(conn: sa.Connection, base_prefix: str, name: str, column: str, alteration: str) -> None:
    """Run ``ALTER TABLE name alteration`` unless ``column`` is there already (MySQL has no ADD
    COLUMN IF NOT EXISTS): idempotent, does nothing once upgraded."""
    present = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = :t AND COLUMN_NAME = :c"
        ),
        {"t": base_prefix + name, "c": column},
    ).scalar_one()
    if not present:
        conn.exec_driver_sql(f"ALTER TABLE {table(base_prefix, name)} {alteration}")


def _ensure_index(conn: sa.Connection, base_prefix: str, name: str, index: str, columns: str) -> None:
    """Add an index to one of syncd's tables unless it is there (MySQL has no ADD INDEX IF NOT
    EXISTS). ``syncd_change.product``: the apply step's re-check and the settle step look up the
    pending changes of a few products while the queue may hold a bulk import's thousands."""
    found = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = :t AND INDEX_NAME = :i"
        ),
        {"t": base_prefix + name, "i": index},
    ).scalar_one()
    if not found:
        conn.exec_driver_sql(f"ALTER TABLE {table(base_prefix, name)} ADD KEY `{index}` {columns}")


def drop_schema(conn: sa.Connection, base_prefix: str, *, keep_history: bool = False) -> list[str]:
    """Drop syncd's tables (never a WooCommerce table). Returns the tables dropped."""
    from syncd import attribution

    attribution.uninstall(conn, base_prefix)  # triggers first: no shop write may meet a missing table
    dropped = []
    for name in OWN_TABLES:
        if keep_history and name == "syncd_history":
            continue
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table(base_prefix, name)}")
        dropped.append(base_prefix + name)
    conn.commit()
    return dropped


def set_meta(conn: sa.Connection, base_prefix: str, name: str, value: str | None) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base_prefix, 'syncd_meta')} (name, value, updated_at) "
            "VALUES (:n, :v, :t) ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)"
        ),
        {"n": name, "v": value, "t": datetime.now(UTC).replace(tzinfo=None)},
    )


def set_meta_if_lock_held(
    conn: sa.Connection, base_prefix: str, name: str, value: str, lock: str, holder: int
) -> bool:
    """:func:`set_meta`, but only while connection ``holder`` holds ``GET_LOCK(lock)`` (checked by
    the server in the same statement). Returns whether it was written."""
    n = conn.execute(
        sa.text(
            f"INSERT INTO {table(base_prefix, 'syncd_meta')} (name, value, updated_at) "
            "SELECT :n, :v, :t FROM DUAL WHERE IS_USED_LOCK(:lock) = :holder "
            "ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)"
        ),
        {"n": name, "v": value, "t": datetime.now(UTC).replace(tzinfo=None), "lock": lock, "holder": holder},
    ).rowcount
    return n > 0


def get_meta(conn: sa.Connection, base_prefix: str, name: str) -> str | None:
    return conn.execute(
        sa.text(f"SELECT value FROM {table(base_prefix, 'syncd_meta')} WHERE name = :n"), {"n": name}
    ).scalar_one_or_none()


def schema_current(conn: sa.Connection, base_prefix: str) -> bool:
    """True when syncd's tables exist at this version (what a runtime user, who may not create
    tables, needs ``syncd install`` to have done)."""
    if not schema_present(conn, base_prefix):
        return False
    return get_meta(conn, base_prefix, "schema_version") == str(SCHEMA_VERSION)


def schema_present(conn: sa.Connection, base_prefix: str) -> bool:
    n = conn.execute(
        sa.text(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
        ),
        {"t": base_prefix + "syncd_change"},
    ).scalar_one()
    return bool(n)
