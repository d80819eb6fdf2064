"""``syncd audit``'s view of the synced fields (issue 10): per link group, the fields of every
group that is not "off" whose members differ as WooCommerce reads them. Read-only, chunked over
the link groups like the pass (no locks: an audit is a report, not a decision)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from syncd.audit import Scope
from syncd.config import Config
from syncd.fields.group import FieldGroup
from syncd.fields.registry import make_groups
from syncd.fields.sync_pass import CHUNK, Member, differences, link_groups, read_members, read_values, text_of


def synced_groups(config: Config) -> dict[str, FieldGroup]:
    """The available groups the configuration syncs (any mode but "off")."""
    return {n: g for n, g in make_groups(config).items() if config.fields.modes.get(n, "off") != "off"}


def field_drift(
    engine: sa.Engine, config: Config, scope: Scope, limit: int = 1000
) -> tuple[int, list[dict[str, Any]]]:
    """(how many differing fields, the first ``limit`` of them as report entries)."""
    groups = synced_groups(config)
    count, out = 0, []
    if not groups:
        return 0, []
    after = 0
    with engine.connect() as conn:
        while ids := link_groups(conn, scope, after, CHUNK):
            members = read_members(conn, scope, ids)
            for name, group in groups.items():
                for entry in _differing(conn, config, scope, name, group, members):
                    count += 1
                    if len(out) < limit:
                        out.append(entry)
            after = ids[-1]
        conn.rollback()
    return count, out


def _differing(
    conn: sa.Connection, config: Config, scope: Scope, name: str, group: FieldGroup, members: list[Member]
) -> list[dict[str, Any]]:
    taking = [m for m in members if config.fields.takes_part(name, m.blog_id)]
    values = read_values(conn, scope, group, taking)
    return [
        {
            "group": name,
            "link_group": gid,
            "sku": ms[0].sku,
            "field": fld,
            "values": [
                {"blog": m.blog_id, "post": m.post_id, "value": text_of(values[m.key].get(fld))} for m in ms
            ],
        }
        for gid, ms, fld in differences(group, values, taking)
    ]
