"""Native journald output without libsystemd (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/).

Each log event becomes one datagram on ``/run/systemd/journal/socket``: ``NAME=value`` lines, or
``NAME\\n`` + 64-bit little-endian length + raw bytes + ``\\n`` for a value holding a newline. An
entry too large for one datagram is written to a sealed memfd and the descriptor is passed with
SCM_RIGHTS, exactly as ``sd_journal_sendv`` does.

Fields of every entry:

* ``MESSAGE``: the event and its context as one readable line (``batch_applied batch=12 changes=3``),
  what ``journalctl`` shows by default;
* ``PRIORITY``: syslog priority from the level (debug 7, info 6, warning 4, error 3, critical 2),
  so ``journalctl -p warning`` works;
* ``SYSLOG_IDENTIFIER=syncd``;
* ``SYNCD_EVENT``: the event name (``journalctl SYNCD_EVENT=batch_applied``);
* every other key as ``SYNCD_<KEY>`` in upper case (``sku`` -> ``SYNCD_SKU``), with the aliases
  ``blog_id`` -> ``SYNCD_BLOG`` and ``batch_id`` -> ``SYNCD_BATCH`` so one name finds all lines
  about a blog or a batch. A list value is sent as the same field repeated (``to_blogs=[2, 3]`` ->
  ``SYNCD_TO_BLOGS=2`` and ``SYNCD_TO_BLOGS=3``), so ``journalctl SYNCD_TO_BLOGS=3`` matches.

When the socket is missing (not under systemd, journald down) the writer falls back to one JSON
line per event on its fallback stream (stderr), says so once, and tries the socket again later.
"""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

DEFAULT_SOCKET = "/run/systemd/journal/socket"
#: Tests and unusual set-ups point the writer elsewhere.
ENV_SOCKET = "SYNCD_JOURNAL_SOCKET"
IDENTIFIER = "syncd"

PRIORITIES = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}
#: Keys renamed so that one journal field means one thing across events.
ALIASES = {"blog_id": "BLOG", "batch_id": "BATCH"}
#: Keys that become journal fields of their own (or nothing) rather than SYNCD_<KEY>.
_RESERVED = {"event", "level", "timestamp"}
_FIELD_RE = re.compile(r"[^A-Z0-9_]")
_RETRY_SOCKET_AFTER = 30.0  # seconds between attempts to get back to the journal after a failure


def field_name(key: str) -> str:
    """``lag_ms`` -> ``SYNCD_LAG_MS``: upper case, only A-Z 0-9 _, at most 64 characters."""
    name = ALIASES.get(key) or _FIELD_RE.sub("_", key.upper())
    return ("SYNCD_" + name)[:64]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return str(value)


def _values(value: Any) -> Iterator[str]:
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        for v in items:
            yield _text(v) if not isinstance(v, dict | list | tuple) else json.dumps(v, default=str)
    elif isinstance(value, dict):
        yield json.dumps(value, default=str, sort_keys=True)
    else:
        yield _text(value)


def _message_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c in value for c in ' \n"=') else json.dumps(value)
    return json.dumps(value, default=str)


def message_of(event: Mapping[str, Any]) -> str:
    """The readable line: the event name, then ``key=value`` for the context, then any traceback."""
    parts = [str(event.get("event", ""))]
    for k, v in event.items():
        if k in _RESERVED or k in ("exception", "stack"):
            continue
        parts.append(f"{k}={_message_value(v)}")
    text = " ".join(parts)
    for k in ("exception", "stack"):
        if event.get(k):
            text += "\n" + str(event[k])
    return text


def fields_of(event: Mapping[str, Any], identifier: str = IDENTIFIER) -> list[tuple[str, str]]:
    """The journal fields of one structlog event dict (pure; see the module docstring)."""
    level = str(event.get("level", "info")).lower()
    out = [
        ("MESSAGE", message_of(event)),
        ("PRIORITY", str(PRIORITIES.get(level, 6))),
        ("SYSLOG_IDENTIFIER", identifier),
        ("SYNCD_EVENT", str(event.get("event", ""))),
    ]
    for key, value in event.items():
        if key in _RESERVED:
            continue
        name = field_name(str(key))
        out.extend((name, v) for v in _values(value))
    return out


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """One entry in the native protocol's wire format."""
    buf = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            buf += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            buf += name.encode() + b"=" + data + b"\n"
    return bytes(buf)


def decode(payload: bytes) -> list[tuple[str, str]]:
    """Inverse of :func:`encode` (what journald does with a datagram); used by tests and tools."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(payload):
        nl = payload.index(b"\n", i)
        line = payload[i:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            out.append((name.decode(), value.decode("utf-8", errors="replace")))
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", payload[nl + 1 : nl + 9])
            start = nl + 9
            out.append((line.decode(), payload[start : start + size].decode("utf-8", errors="replace")))
            i = start + size + 1
    return out


def journal_stream_is_stderr(env: Mapping[str, str] = os.environ, stream: Any = None) -> bool:
    """True when systemd connected our stderr to the journal (``JOURNAL_STREAM=dev:inode`` matches fd 2).

    The check on the device and inode is what systemd.exec(5) asks for: a child process that
    inherited the variable but not the descriptor must not switch to native output.
    """
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        fd = (stream if stream is not None else sys.stderr).fileno()
        st = os.fstat(fd)
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class JournalWriter:
    """Sends entries to journald; falls back to JSON lines on ``fallback`` when it cannot."""

    def __init__(
        self,
        path: str | None = None,
        fallback: TextIO | None = None,
        identifier: str = IDENTIFIER,
    ) -> None:
        self.path = path or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
        self.fallback = fallback if fallback is not None else sys.stderr
        self.identifier = identifier
        self._sock: socket.socket | None = None
        # Reentrant: a signal handler may log while the main thread is inside write().
        self._lock = threading.RLock()
        self._down_since: float | None = None
        self.sent = 0
        self.fell_back = 0

    # -- sending -----------------------------------------------------------------------------
    def write(self, event: Mapping[str, Any]) -> None:
        """Send one structlog event dict (never raises: logging must not take the daemon down)."""
        payload = encode(fields_of(event, self.identifier))
        with self._lock:
            if self._down_since is not None and time.monotonic() - self._down_since < _RETRY_SOCKET_AFTER:
                self._fall_back(event, None)
                return
            try:
                self._send(payload)
                self.sent += 1
                if self._down_since is not None:
                    self._down_since = None
            except OSError as exc:
                self._fall_back(event, exc)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        return self._sock

    def _send(self, payload: bytes) -> None:
        sock = self._socket()
        try:
            sock.sendto(payload, self.path)
        except OSError as exc:
            if exc.errno != 90:  # EMSGSIZE: too big for one datagram, pass a sealed memfd instead
                raise
            self._send_memfd(sock, payload)

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> None:
        fd = os.memfd_create("syncd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            # (socket.send_fds ignores its address argument before Python 3.12: sendmsg directly.)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            sock.sendmsg([b""], rights, 0, self.path)
        finally:
            os.close(fd)

    def _fall_back(self, event: Mapping[str, Any], exc: OSError | None) -> None:
        self.fell_back += 1
        if exc is not None and self._down_since is None:
            self._down_since = time.monotonic()
            note = {
                "event": "journal_unavailable",
                "level": "warning",
                "socket": self.path,
                "error": exc.strerror or str(exc),
                "fallback": "json lines on stderr",
            }
            self._print(note)
        elif exc is not None:
            self._down_since = time.monotonic()
        self._print(event)

    def _print(self, event: Mapping[str, Any]) -> None:
        try:
            print(json.dumps(dict(event), default=str), file=self.fallback, flush=True)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class JournalLogger:
    """The structlog logger behind ``log.format = "journal"``: the last processor hands it the
    event dict (see :func:`as_kwargs`), every method sends it."""

    def __init__(self, writer: JournalWriter) -> None:
        self._writer = writer

    def msg(self, **event: Any) -> None:
        self._writer.write(event)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class JournalLoggerFactory:
    def __init__(self, writer: JournalWriter) -> None:
        self.writer = writer

    def __call__(self, *args: Any) -> JournalLogger:
        return JournalLogger(self.writer)


def as_kwargs(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Last processor: hand the whole event dict to :class:`JournalLogger` (structlog passes a
    dict returned by the last processor as keyword arguments)."""
    return event


class JournalHandler(logging.Handler):
    """Standard-library records (APScheduler, SQLAlchemy) as journal entries, same fields."""

    def __init__(self, writer: JournalWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: dict[str, Any] = {
                "event": record.getMessage(),
                "level": record.levelname.lower(),
                "logger": record.name,
            }
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            self.writer.write(event)
        except Exception:  # noqa: BLE001 - logging.Handler contract
            self.handleError(record)
