"""Realtime field groups (issue 10): which groups are realtime, what each blog's capture triggers
watch for them, and what poll mode can and cannot capture.

A realtime group is captured like stock (its meta keys by the postmeta triggers, its posts
columns and taxonomies by the posts / term_relationships triggers, see :mod:`syncd.capture`) on
the blogs that take part in it (``[fields.blogs]``); everything else about it (planning, writing)
goes through the apply pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syncd.capture import STOCK_ONLY, Watch
from syncd.fields.group import FieldGroup

REALTIME = "realtime"


def realtime_groups(config: Any) -> dict[str, FieldGroup]:
    """The realtime groups of this configuration, by name (built by the registry)."""
    fields = getattr(config, "fields", None)  # [fields]; None only on a config from before issue 10
    names = fields.groups_in(REALTIME) if fields is not None else ()
    if not names:
        return {}
    from syncd.fields.registry import make_groups

    groups = make_groups(config)
    return {n: groups[n] for n in names if n in groups}


def watch_for(config: Any, blog_id: int, groups: Mapping[str, FieldGroup] | None = None) -> Watch:
    """What blog ``blog_id``'s capture triggers watch: stock, plus every realtime group the blog
    takes part in."""
    groups = realtime_groups(config) if groups is None else groups
    if not groups:
        return STOCK_ONLY
    return Watch.of(g for name, g in groups.items() if config.fields.takes_part(name, blog_id))


def poll_refusals(groups: Mapping[str, FieldGroup]) -> list[str]:
    """Poll mode (no TRIGGER privilege) diffs postmeta against a snapshot: meta keys only. A
    realtime group that needs posts columns or term relationships cannot be captured there; each
    such group is named with the reason (the daemon refuses to start, ``syncd check`` reports it)."""
    out = []
    for name, g in groups.items():
        what = [w for w, have in (("post columns", g.post_columns), ("taxonomy terms", g.taxonomies)) if have]
        if what:
            out.append(
                f'[fields] {name} = "realtime" needs triggers ({" and ".join(what)} are not polled): '
                f'capture is by polling here (no TRIGGER privilege or capture.mode = "poll"); '
                f'set {name} to "scheduled" or "manual", or let syncd create triggers'
            )
    return out
