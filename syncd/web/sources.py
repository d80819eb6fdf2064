"""Where a history entry came from, for the product page: :mod:`syncd.attribution`'s words plus a
link to the order in that blog's wp-admin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from syncd import attribution
from syncd.history import Entry


def attribute(conn: sa.Connection, base: str, entries: Sequence[Entry]) -> dict[int, dict[str, Any]]:
    """change id -> recorded source (kind None: another writer) for ``entries``' origin rows."""
    ids = sorted({e.change_id for e in entries if e.role == "origin" and e.change_id})
    return attribution.lookup(conn, base, ids) if ids else {}


def describe(e: Entry, found: dict[str, Any] | None, siteurls: dict[int, str]) -> dict[str, Any]:
    text = attribution.describe(e.role, e.source, e.origin, found)
    url = None
    site = siteurls.get(e.blog_id)
    if found and found.get("order_id") and site and e.role == "origin" and not e.source:
        url = f"{site}/wp-admin/post.php?post={found['order_id']}&action=edit"
    return {"text": text, "url": url, "kind": (found or {}).get("kind")}
