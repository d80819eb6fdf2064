"""Logging: structlog, configured in exactly one place.

* ``console``: coloured, aligned key=value lines for a person at a terminal;
* ``json``: one JSON object per line (what log shippers and ``jq`` want);
* ``journal``: native journald entries with structured fields (``journalctl -u syncd SYNCD_SKU=...``),
  see :mod:`syncd.journal`; JSON lines on stderr when the journal socket is missing;
* ``auto``: journal when systemd connected stderr to the journal (``JOURNAL_STREAM``), else
  console when stderr is a TTY, else json.

Every event has a UTC ISO-8601 ``timestamp`` and a ``level``. Event names are short snake_case
verbs (``apply``, ``retry_batch``); context goes in bound key/values, never into the event text.
Logs go to stderr so that stdout stays free for command output (``syncd check --json``).
Records from the standard ``logging`` module (APScheduler, SQLAlchemy) are rendered the same way.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from syncd.journal import (
    JournalHandler,
    JournalLoggerFactory,
    JournalWriter,
    as_kwargs,
    journal_stream_is_stderr,
)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("auto", "console", "json", "journal")


def resolve_format(fmt: str, stream: TextIO) -> str:
    """The concrete renderer name for ``fmt`` (``auto`` decided by whether ``stream`` is a TTY)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    if journal_stream_is_stderr(stream=stream):
        return "journal"
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def _renderer(fmt: str, stream: TextIO) -> Any:
    if fmt == "console":
        isatty = getattr(stream, "isatty", None)
        return structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))
    if fmt == "journal":
        return _journal_renderer()
    return structlog.processors.JSONRenderer(sort_keys=False, default=str)


def _journal_renderer() -> Any:
    """The journald format's last processor: it hands the event dict to
    :class:`syncd.journal.JournalLogger`, which turns it into native journal fields (``MESSAGE``,
    ``PRIORITY``, ``SYNCD_EVENT``, ``SYNCD_<KEY>`` for the bound context) and sends it."""
    return as_kwargs


#: The journal writer of the current configuration (one socket per process; replaced on reconfigure).
_journal_writer: JournalWriter | None = None


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None) -> str:
    """Configure structlog (and stdlib logging) once for the process; returns the format chosen."""
    level_name = level.lower()
    if level_name not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, out)
    renderer = _renderer(chosen, out)
    global _journal_writer
    if _journal_writer is not None:
        _journal_writer.close()
    _journal_writer = JournalWriter(fallback=out) if chosen == "journal" else None
    exc_processors: list[Any] = [] if chosen == "console" else [structlog.processors.format_exc_info]

    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *exc_processors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level_name]),
        logger_factory=(
            JournalLoggerFactory(_journal_writer)
            if _journal_writer is not None
            else structlog.PrintLoggerFactory(file=out)
        ),
        # Not cached: loggers created at import time must follow a later configure_logging() (tests,
        # the CLI reconfiguring after reading the config file).
        cache_logger_on_first_use=False,
    )

    # Third-party libraries log through the standard library; give them the same renderer and
    # keep them one level quieter than ours unless we are debugging.
    handler: logging.Handler
    if _journal_writer is not None:
        handler = JournalHandler(_journal_writer)
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *exc_processors,
                    renderer,
                ],
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_syncd", False):
            root.removeHandler(old)
    handler._syncd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(LEVELS[level_name] if level_name == "debug" else max(LEVELS[level_name], logging.WARNING))
    return chosen


def get_logger(**bind: Any) -> Any:
    """A structlog logger with ``bind`` as context (``get_logger(blog_id=3).info("apply", n=2)``).

    Lazy: a module-level ``log = get_logger(component="x")`` follows a configure_logging() that
    happens later (binding eagerly would freeze whatever configuration existed at import time).
    """
    return structlog.get_logger(**bind)
