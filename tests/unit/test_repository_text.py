"""The repository's own text: no merge left half-done (a conflict block was once committed into the
README's field-pass section, and nothing noticed)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = {".md", ".py", ".toml", ".sql", ".html", ".service", ".timer", ".txt", ".lock"}
SKIP = {".git", ".venv", "node_modules", "__pycache__"}


def test_no_file_of_the_project_holds_a_merge_conflict_block():
    found = []
    for path in sorted(ROOT.rglob("*")):
        if path.suffix not in TEXT or SKIP & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        opened = [n for n, line in enumerate(lines, 1) if line.startswith("<<<<<<< ")]
        if opened and any(line.startswith(">>>>>>> ") for line in lines):
            found.append(f"{path.relative_to(ROOT)}:{opened[0]}")
    assert found == []
