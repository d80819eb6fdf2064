"""Start-up checks of ``[fields]`` against the network (the daemon refuses to start on any; ``syncd
check`` lists them): a group turned on that this build does not implement, and a ``price`` group
between blogs whose currency or price display settings differ (issue 10: a price copied from a
EUR shop into a USD shop, or from prices entered with tax into one entered without, is wrong),
unless ``[fields.blogs] price`` leaves them out or ``[fields.allow_mismatch] price = true``.
"""

from __future__ import annotations

from collections.abc import Mapping

from syncd.config import Config
from syncd.network import CURRENCY_OPTIONS, Blog


def currency_mismatches(config: Config, blogs: Mapping[int, Blog]) -> list[str]:
    """One message per currency option whose value differs between the price group's blogs."""
    fields = config.fields
    if fields.modes.get("price", "off") == "off" or fields.allow_mismatch.get("price", False):
        return []
    taking = [blogs[b] for b in sorted(blogs) if fields.takes_part("price", b)]
    out = []
    for name in CURRENCY_OPTIONS:
        values = {b.blog_id: b.option(name) for b in taking}
        if len(set(values.values())) > 1:
            shown = ", ".join(f"blog {b}: {v!r}" for b, v in values.items())
            out.append(
                f"[fields] price = {fields.modes['price']!r} between blogs whose {name} differs ({shown}): "
                "leave blogs out with [fields.blogs] price = [...], or set [fields.allow_mismatch] price = true"
            )
    return out


def fields_problems(config: Config, blogs: Mapping[int, Blog]) -> list[str]:
    """Every reason the daemon refuses ``[fields]`` on this network (empty: none)."""
    from syncd.fields.registry import unavailable

    out = [f"[fields] {name} is turned on but this build has no {name} group" for name in unavailable(config)]
    return out + currency_mismatches(config, blogs)
