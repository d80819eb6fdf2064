"""``[sync] exclude_skus`` as SQL: the same matching as :meth:`syncd.config.SyncConfig.sku_excluded`
(``fnmatch.fnmatchcase``: exact SKUs and glob patterns with ``*``, ``?``, ``[seq]``, ``[!seq]``,
case-sensitive), evaluated by the server on ``{base}syncd_member.sku`` (a ``utf8mb4_bin`` column,
so comparisons are case-sensitive there too).

Pure functions: they return a condition and its bound parameters; patterns are never pasted
into SQL text. Patterns without brackets become ``LIKE`` (with ``%``/``_`` escaped); patterns
with a bracket set become ``REGEXP`` (anchored; valid for MariaDB's PCRE and MySQL 8's ICU).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ESCAPE = "|"  # the LIKE escape character (never special in a SKU pattern otherwise)


def _like(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in ("%", "_", _ESCAPE):
            out.append(_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def _regexp(pattern: str) -> str:
    """fnmatch's translation rules, written as an anchored POSIX-style regular expression."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape("["))  # no closing bracket: a literal '[' (as fnmatch)
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            items = []
            k = 0
            while k < len(body):
                c = body[k]
                if k + 2 < len(body) and body[k + 1] == "-":
                    items.append(_set_char(c) + "-" + _set_char(body[k + 2]))
                    k += 3
                    continue
                items.append(_set_char(c))
                k += 1
            if not items:
                out.append("[^\\s\\S]" if not negate else ".")
                continue
            out.append("[" + ("^" if negate else "") + "".join(items) + "]")
        else:
            out.append(re.escape(ch) if not ch.isalnum() else ch)
    out.append("$")
    return "".join(out)


def _set_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


def exclusion_condition(
    column: str, patterns: Sequence[str], prefix: str = "xs"
) -> tuple[str, dict[str, str]]:
    """``(sql, params)``: a condition true when ``column`` matches one of ``patterns``.

    ``column`` is a constant of syncd's code (e.g. ``m.sku``); with no patterns the condition is
    ``FALSE``. ``prefix`` names the bound parameters (``:xs0``, ``:xs1``...).
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", column):
        raise ValueError(f"bad column {column!r}")
    parts: list[str] = []
    params: dict[str, str] = {}
    for n, pattern in enumerate(patterns):
        name = f"{prefix}{n}"
        if "[" in pattern:
            parts.append(f"{column} REGEXP :{name}")
            params[name] = _regexp(pattern)
        else:
            parts.append(f"{column} LIKE :{name} ESCAPE '{_ESCAPE}'")
            params[name] = _like(pattern)
    if not parts:
        return "FALSE", {}
    return "(" + " OR ".join(parts) + ")", params


def matching_pattern(sku: str, patterns: Sequence[str]) -> str | None:
    """The first pattern ``sku`` matches (as :meth:`SyncConfig.sku_excluded`), for messages."""
    import fnmatch

    for pattern in patterns:
        if sku == pattern or fnmatch.fnmatchcase(sku, pattern):
            return pattern
    return None
