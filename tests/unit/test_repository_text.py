"""The repository's own text: no merge left half-done (a conflict block was once committed into the
README's field-pass section, and nothing noticed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ("<<<<<<< ", ">>>>>>> ", "=======\n")


def test_no_tracked_file_holds_a_merge_conflict_block():
    tracked = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.toml", "*.sql", "*.html", "*.service", "*.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked, "not a git checkout"
    found = []
    for name in tracked:
        lines = (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        opened = [n for n, line in enumerate(lines, 1) if line.startswith(MARKERS[0])]
        closed = [n for n, line in enumerate(lines, 1) if line.startswith(MARKERS[1])]
        if opened and closed:
            found.append(f"{name}:{opened[0]}")
    assert found == []
