"""Operator output helpers: a progress bar on a terminal, plain tables, JSON.

The progress bar is drawn on stderr only when stderr is a TTY, so cron, systemd and pipes get
nothing but the report on stdout (and the logs on stderr). It redraws at most ten times a second
and erases itself when done. No dependency: a carriage return and a line of text.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


class Progress:
    """``with Progress("audit", total=n) as bar: bar.advance(k)``; silent when ``stream`` is not a TTY."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        width: int = 30,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _is_tty(self.stream) and os.environ.get("TERM") != "dumb"
        self.enabled = enabled
        self.width = width
        self.detail = ""
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._draw(force=True)

    def stage(self, label: str, total: int | None = None) -> None:
        """Start another stage on the same line (counter reset)."""
        self.label, self.total, self.done, self.detail = label, total, 0, ""
        self._draw(force=True)

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        self.done += n
        if detail is not None:
            self.detail = detail
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self._started
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"{self.label} [{bar}] {self.done}/{self.total} {frac:4.0%} {elapsed:5.1f}s"
        else:
            text = f"{self.label} {self.done} {elapsed:5.1f}s"
        if self.detail:
            text += f" {self.detail}"
        self.stream.write("\r" + text[:200] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], out: TextIO, indent: str = "  ") -> None:
    """A left-aligned fixed-width table; None prints as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    print(indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def dump_json(document: Any, out: TextIO) -> None:
    json.dump(document, out, indent=2, default=str, sort_keys=False)
    print(file=out)
