"""The field groups by name: one instance of each, built with its settings from ``[fields]``.

``make_groups(config)`` is the only place that knows which class implements which group. The
groups are built by several modules (price, meta, terms, content); a module that is not part of
this build is left out (its groups are then unavailable, and :func:`unavailable` names those the
configuration turns on, so start-up and ``syncd check`` can refuse them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from syncd.config import Config
from syncd.fields.group import GROUPS, FieldGroup

#: group -> (module, class name, settings it takes from the configuration)
_CLASSES: dict[str, tuple[str, str, Callable[[Config], dict[str, Any]]]] = {
    "price": ("syncd.fields.price", "PriceGroup", lambda c: {}),
    "tax": ("syncd.fields.meta", "TaxGroup", lambda c: {}),
    "identity": ("syncd.fields.meta", "IdentityGroup", lambda c: {}),
    "purchase": ("syncd.fields.meta", "PurchaseGroup", lambda c: {}),
    "shipping": ("syncd.fields.terms", "ShippingGroup", lambda c: {"missing": c.fields.missing_terms}),
    "visibility": ("syncd.fields.terms", "VisibilityGroup", lambda c: {}),
    "taxonomy": ("syncd.fields.terms", "TaxonomyGroup", lambda c: {"missing": c.fields.missing_terms}),
    "content": ("syncd.fields.content", "ContentGroup", lambda c: {}),
}


def make_groups(config: Config) -> dict[str, FieldGroup]:
    """Every available group, by name, in documented order."""
    out: dict[str, FieldGroup] = {}
    for name in GROUPS:
        cls = _class(name)
        if cls is not None:
            out[name] = _build(cls, _CLASSES[name][2](config))
    return out


def groups_in_mode(config: Config, mode: str) -> dict[str, FieldGroup]:
    """The available groups ``[fields]`` sets to ``mode``."""
    wanted = set(config.fields.groups_in(mode))
    return {n: g for n, g in make_groups(config).items() if n in wanted}


def unavailable(config: Config) -> list[str]:
    """Groups the configuration turns on that this build does not implement."""
    return [n for n in GROUPS if config.fields.modes.get(n, "off") != "off" and _class(n) is None]


def _class(name: str) -> type | None:
    module_name, class_name, _ = _CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # a real import error inside the module: never hide it
        return None
    return getattr(module, class_name, None)


def _build(cls: type, settings: dict[str, Any]) -> Any:
    return cls(**settings)
