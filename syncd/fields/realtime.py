"""Realtime field groups (issue 10): which groups are realtime, what each blog's capture triggers
watch for them, and what poll mode can and cannot capture.

A realtime group is captured like stock (its meta keys by the postmeta triggers, or in binlog
capture by the snapshot comparison the binary log points to; its posts columns and taxonomies by
the posts / term_relationships triggers, see :mod:`syncd.capture`) on the blogs that take part in
it (``[fields.blogs]``); everything else about it (planning, writing) goes through the apply
pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from syncd.capture import POST_KEY, STOCK_ONLY, TERMS_KEY, Watch
from syncd.fields.group import FieldGroup
from syncd.plan import WATCHED_KEYS

REALTIME = "realtime"


@dataclass(frozen=True)
class RealtimeFields:
    """What the apply step needs of the realtime groups: the groups, which blogs take part in
    each (``[fields.blogs]``), and which change key is which group's field."""

    groups: Mapping[str, FieldGroup]
    takes_part: Callable[[str, int], bool]

    def index(self) -> dict[str, tuple[str, str]]:
        """Change-row key -> (group, field name): a meta key is its own field name, a posts
        column ``post:<column>`` is ``<column>``, a taxonomy is ``terms:<taxonomy>`` both ways.
        The stock keys are never a field's (stock has its own rules)."""
        out: dict[str, tuple[str, str]] = {}
        for name, g in self.groups.items():
            out.update({k: (name, k) for k in g.meta_keys if k not in WATCHED_KEYS})
            out.update({POST_KEY + c: (name, c) for c in g.post_columns})
            out.update({TERMS_KEY + t: (name, TERMS_KEY + t) for t in g.taxonomies})
        return out


def fields_for(config: Any, groups: Mapping[str, FieldGroup]) -> RealtimeFields | None:
    """The apply step's view of the realtime groups (None: no group is realtime)."""
    if not groups:
        return None
    return RealtimeFields(dict(groups), config.fields.takes_part)


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
    """What blog ``blog_id``'s capture watches: stock, plus every realtime group the blog takes
    part in. In binlog capture the postmeta keys are polled, not triggered (``meta_triggers``)."""
    groups = realtime_groups(config) if groups is None else groups
    watch = (
        Watch.of(g for name, g in groups.items() if config.fields.takes_part(name, blog_id))
        if groups
        else STOCK_ONLY
    )
    if config.capture.mode == "binlog":
        return replace(watch, meta_triggers=False)
    return watch


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
