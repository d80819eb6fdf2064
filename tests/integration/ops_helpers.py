"""Helpers for the operations tests: the real daemon as a subprocess with a systemd-like environment
(NOTIFY_SOCKET, WATCHDOG_USEC, CREDENTIALS_DIRECTORY, the journal socket), listeners for the
datagrams it sends, and database users with exactly the README's grants.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from syncd import journal
from tests.integration.daemon_process import DaemonProcess, lock_waits, wait_until  # noqa: F401 - re-exported

#: The README's grants (section "Least privilege"), database-wide. Kept in one place: the tests
#: check the README shows exactly this statement.
README_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, LOCK TABLES, TRIGGER"


class OpsDaemon(DaemonProcess):
    """``syncd run`` as a subprocess with extra environment (what systemd would set) and a chosen
    log format (None: the configuration file decides, as under systemd)."""

    def __init__(
        self,
        config_path: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        log_format: str | None = "json",
        **kw: Any,
    ) -> None:
        super().__init__(config_path, **kw)
        self.env = dict(env or {})
        self.log_format = log_format

    def command(self, *args: str) -> list[str]:
        fmt = ["--log-format", self.log_format] if self.log_format else []
        return [sys.executable, "-m", "syncd", "--config", self.config_path, *fmt, *args]

    def environment(self) -> dict[str, str]:
        # As DaemonProcess's, but a test's self.env may set what systemd would (NOTIFY_SOCKET,
        # WATCHDOG_USEC, CREDENTIALS_DIRECTORY, JOURNAL_STREAM); nothing leaks in from ours.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "CREDENTIALS_DIRECTORY",
        ):
            env.pop(k, None)
        env.update(self.env)
        return env


class DatagramListener:
    """A bound AF_UNIX datagram socket that collects what is sent to it, in a thread."""

    def __init__(self, path: Path | str, parse: Callable[[bytes], Any]) -> None:
        self.path = str(path)
        self._parse = parse
        self.items: list[tuple[float, Any]] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.items.append((time.monotonic(), self._parse(data)))
                self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return [item for _, item in self.items]

    def wait_for(self, pred: Callable[[Any], bool], timeout: float = 30.0, after: int = 0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, item in self.items[after:]:
                    if pred(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = [i for _, i in self.items[-15:]]
                    raise AssertionError(f"nothing matching within {timeout}s on {self.path}; last: {tail}")
                self._cond.wait(min(remaining, 0.2))

    def mark(self) -> int:
        with self._cond:
            return len(self.items)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def parse_notify(data: bytes) -> dict[str, str]:
    """``READY=1\\nSTATUS=...`` -> {"READY": "1", "STATUS": "..."}"""
    out = {}
    for line in data.decode().split("\n"):
        k, _, v = line.partition("=")
        out[k] = v
    return out


def parse_journal(data: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in journal.decode(data):
        out.setdefault(k, []).append(v)
    return out


# --------------------------------------------------------------------------- database users
class Users:
    """Database users created for a test (dropped afterwards)."""

    def __init__(self, root_url: str) -> None:
        self.root = sa.create_engine(root_url, poolclass=sa.pool.NullPool)
        self.made: list[str] = []

    def create(self, database: str, privileges: str = README_PRIVILEGES) -> tuple[str, str]:
        name = f"syncd_o_{secrets.token_hex(4)}"
        password = "Pw-" + secrets.token_hex(8)
        with self.root.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"))
            conn.execute(sa.text(f"GRANT {privileges} ON `{database}`.* TO '{name}'@'%'"))
        self.made.append(name)
        return name, password

    def close(self) -> None:
        with self.root.begin() as conn:
            for name in self.made:
                conn.execute(sa.text(f"DROP USER IF EXISTS '{name}'@'%'"))
        self.root.dispose()


def user_url(net: Any, user: str, password: str | None = None) -> str:
    """``net``'s URL for another user (without a password: it then comes from a credential)."""
    return make_url(net.url).set(username=user, password=password).render_as_string(hide_password=False)


def credentials_dir(tmp_path: Path, password: str) -> dict[str, str]:
    """What systemd's ``LoadCredential=db-password:...`` provides: a directory with the file."""
    d = tmp_path / "credentials"
    d.mkdir(exist_ok=True)
    (d / "db-password").write_text(password + "\n")
    (d / "db-password").chmod(0o400)
    return {"CREDENTIALS_DIRECTORY": str(d)}


def root_exec(net: Any, *statements: str) -> None:
    with net.engine.connect() as c:
        for stmt in statements:
            c.exec_driver_sql(stmt)
        c.commit()


def iter_events(events: list[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    return (e for e in events if e.get("event") == name)
