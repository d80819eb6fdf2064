"""Load SQL templates shipped in sql/ and schema/.

In a checkout (editable install, tests, CI) they are read from the repository's top-level sql/ and
schema/ folders; an installed wheel carries the same files as package data ``syncd.data.sql`` and
``syncd.data.schema`` (see pyproject's package-dir). Nothing is ever read from outside the project.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def data_path(folder: str, name: str) -> Path | resources.abc.Traversable:
    """Where ``<folder>/<name>`` lives: the checkout's folder, else the installed package data."""
    local = _REPO / folder / name
    if local.exists():
        return local
    package = "syncd.data." + folder.replace("/", ".")
    return resources.files(package).joinpath(name)


@cache
def sql_text(name: str) -> str:
    """The text of ``sql/<name>``."""
    return data_path("sql", name).read_text(encoding="utf-8")


@cache
def schema_text(name: str) -> str:
    """The text of ``schema/<name>``."""
    return data_path("schema", name).read_text(encoding="utf-8")


def split_statements(text: str) -> list[str]:
    """Split a schema file on lines holding only ``-- ;`` (bodies may contain semicolons)."""
    parts: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "-- ;":
            parts.append("\n".join(current))
            current = []
        else:
            current.append(line)
    parts.append("\n".join(current))
    out = []
    for part in parts:
        body = "\n".join(ln for ln in part.splitlines() if not ln.strip().startswith("--")).strip()
        if body:
            out.append(body)
    return out
