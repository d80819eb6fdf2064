"""Where a history entry came from, for the product page: :mod:`syncd.attribution`'s words plus a
link to the order in that blog's wp-admin."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from syncd import attribution
from syncd.history import Entry


def attribute(
    conn: sa.Connection, base: str, entries: Sequence[Entry]
) -> tuple[dict[int, dict[str, Any]], datetime | None]:
    """(change id -> recorded source, since when attribution records) for ``entries``' origin rows."""
    ids = sorted({e.change_id for e in entries if e.role == "origin" and e.change_id})
    return (attribution.lookup(conn, base, ids) if ids else {}), attribution.recording_since(conn, base)


def describe(
    e: Entry, found: dict[str, Any] | None, since: datetime | None, siteurls: dict[int, str]
) -> dict[str, Any]:
    recorded = since is not None and e.captured_at >= since and e.meta_key == "_stock"
    text = attribution.describe(e.role, e.source, e.change_id, e.origin, found, recorded)
    url = None
    site = siteurls.get(e.blog_id)
    if found and found.get("order_id") and site and e.role == "origin" and not e.source:
        url = f"{site}/wp-admin/post.php?post={found['order_id']}&action=edit"
    return {"text": text, "url": url, "kind": (found or {}).get("kind")}
