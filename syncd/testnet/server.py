"""A private, throwaway MariaDB/MySQL server for tests, benchmarks and the demo.

The server runs from the binaries on PATH (or /usr/sbin) with its own temporary datadir, its own
unix socket and a free TCP port on 127.0.0.1, so it never touches a system server. Durability is
switched off (no doublewrite, no flush at commit, no binlog): the data is thrown away anyway and
these settings make DDL-heavy test set-up several times faster.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pymysql
import structlog

log = structlog.get_logger(__name__)

#: Where to look for server binaries besides PATH (Debian puts mariadbd in /usr/sbin, which is
#: not on a normal user's PATH).
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin")

#: Exact command that installs a server on Debian/Ubuntu; printed when none is found.
INSTALL_LINE = "apt-get update && apt-get install -y mariadb-server"

#: Options for a throwaway server. innodb_file_per_table=OFF avoids one .ibd file create/extend/unlink
#: per table; measured on MariaDB 10.11 in /dev/shm, creating the 155-table fixture schema took
#: ~0.21-0.30 s with it OFF vs ~0.24-0.29 s ON: a small win in RAM, a larger one on a real disk.
_FAST_OPTIONS = (
    "--innodb_flush_log_at_trx_commit=0",
    "--innodb_doublewrite=0",
    "--sync_binlog=0",
    "--skip-log-bin",
    "--innodb_buffer_pool_size=64M",
    "--innodb_log_file_size=48M",
    "--innodb_file_per_table=OFF",
    "--innodb_flush_method=nosync",
    "--skip-name-resolve",
    "--performance_schema=OFF",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_520_ci",
    "--max_connections=300",
    "--default-time-zone=+00:00",
    "--innodb_lock_wait_timeout=10",
    # Every deadlock goes to the error log with both transactions' statements and locks: the one
    # diagnosis a flaky "shop statement was the deadlock victim" test needs (SYNCD_TEST_SERVER_LOG
    # keeps the log after the server is gone).
    "--innodb_print_all_deadlocks=ON",
)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server when the process that started it dies (a killed pytest, a
    crashed script), so throwaway servers never outlive their owner. Linux only; no-op elsewhere."""
    os.setsid()  # own session: a Ctrl-C in the terminal must not kill the server mid-teardown
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except OSError:
            pass


class ServerNotInstalled(RuntimeError):
    """No MariaDB/MySQL server binary could be found."""


class ServerError(RuntimeError):
    """The private server failed to initialise or start."""


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in _EXTRA_DIRS:
            candidate = Path(d, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def find_server_binary() -> str | None:
    """Path of mariadbd (preferred) or mysqld, or None."""
    return _which("mariadbd", "mysqld")


#: How long apt-get waits for the dpkg lock held by another apt (unattended-upgrades on a fresh
#: machine): apt's own ``DPkg::Lock::Timeout``, then one clear sentence instead of a traceback.
APT_LOCK_TIMEOUT = 600


class AptFailed(RuntimeError):
    """apt-get did not install the server; the message is one sentence naming the command run."""


def apt_install(
    packages: list[str], *, lock_timeout: int = APT_LOCK_TIMEOUT, options: tuple[str, ...] = ()
) -> None:
    """``apt-get install``, waiting up to ``lock_timeout`` s for the dpkg lock. ``options``: extra ``-o`` settings (the
    tests point apt at a private dpkg admin directory)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    base = ["apt-get", "-o", f"DPkg::Lock::Timeout={int(lock_timeout)}", *options]
    _apt([*base, "install", "-y", "--no-install-recommends", *packages], env)


def _apt(command: list[str], env: dict[str, str]) -> None:
    log.info("server_install_start", command=" ".join(command))
    res = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if res.returncode == 0:
        return
    text = res.stderr + res.stdout
    if "lock" in text.lower() and ("dpkg" in text.lower() or "frontend" in text.lower()):
        raise AptFailed(
            f"`{' '.join(command)}` gave up waiting for the dpkg lock (another apt or unattended-upgrades "
            "is running): wait for it to finish, then run the command again"
        )
    raise AptFailed(f"`{' '.join(command)}` failed (exit {res.returncode}): {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def ensure_server_installed(
    *, lock_timeout: int = APT_LOCK_TIMEOUT, apt_options: tuple[str, ...] = ()
) -> str:
    """Return a server binary path, installing MariaDB with apt-get when we are root and it is missing.

    Raises :class:`ServerNotInstalled` (one clear sentence) when it cannot: not root, no apt, the
    dpkg lock held longer than ``lock_timeout`` s, or apt failing."""
    binary = find_server_binary()
    if binary:
        return binary
    if os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            try:
                apt_install(["mariadb-server"], lock_timeout=lock_timeout, options=apt_options)
            except AptFailed as first:
                if "dpkg lock" in str(first):
                    raise
                # The package lists are probably missing or stale (fresh container): refresh, retry once.
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                _apt(
                    ["apt-get", "-o", f"DPkg::Lock::Timeout={int(lock_timeout)}", *apt_options, "update"], env
                )
                apt_install(["mariadb-server"], lock_timeout=lock_timeout, options=apt_options)
        except AptFailed as exc:
            raise ServerNotInstalled(f"could not install MariaDB: {exc}") from None
        binary = find_server_binary()
        if binary:
            return binary
    raise ServerNotInstalled(
        "no MariaDB/MySQL server binary (mariadbd or mysqld) found on PATH or in /usr/sbin.\n"
        f"Install one as root with:\n    {INSTALL_LINE}"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_base_dir() -> str:
    # /dev/shm makes InnoDB I/O free; only use it when it has room for a few networks.
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1024**3:
            return str(shm)
    except OSError:
        pass
    return tempfile.gettempdir()


class PrivateServer:
    """One private mysqld/mariadbd process with its own datadir, socket and port."""

    def __init__(
        self,
        binary: str | None = None,
        base_dir: str | None = None,
        port: int | None = None,
        *,
        die_with_parent: bool = True,
    ) -> None:
        found = binary or find_server_binary()
        if not found:
            raise ServerNotInstalled(
                "no MariaDB/MySQL server binary found; install one with:\n    " + INSTALL_LINE
            )
        self.binary: str = found
        self.version_text = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.flavor: str = "mariadb" if "mariadb" in self.version_text.lower() else "mysql"
        self.version: str = ""
        self.base_dir = base_dir or _default_base_dir()
        self.tmp: Path | None = None
        self.datadir: Path | None = None
        self.socket: str = ""
        self.port: int = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.private = True
        #: False only for servers meant to outlive this process (``syncd demo --keep``).
        self.die_with_parent = die_with_parent
        #: root's password once :meth:`set_root_password` ran (None: no password, the default).
        self.password: str | None = None
        #: Called with the name of each start-up step ("datadir", "initialising", "spawned"): the
        #: demo's interrupt tests stop there deterministically.
        self.on_step: Callable[[str], None] | None = None

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name)

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> PrivateServer:
        """Initialise a fresh datadir and start the server; returns self once it accepts connections."""
        t0 = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="syncd-mysql-", dir=self.base_dir))
        self.datadir = self.tmp / "data"
        # A unix socket path is limited to ~107 bytes; the temp dir keeps it short.
        self.socket = str(self.tmp / "mysql.sock")
        self.log_path = self.tmp / "error.log"
        self._step("datadir")
        self._initialise()
        if not self.port:
            self.port = free_port()
        self._spawn(timeout)
        log.info(
            "private_server_started",
            flavor=self.flavor,
            version=self.version,
            port=self.port,
            datadir=str(self.datadir),
            seconds=round(time.monotonic() - t0, 2),
        )
        return self

    def _initialise(self) -> None:
        assert self.datadir is not None and self.tmp is not None
        self.datadir.mkdir()
        user = ["--user=root"] if os.geteuid() == 0 else []
        if self.flavor == "mariadb":
            install = _which("mariadb-install-db", "mysql_install_db")
            if not install:
                raise ServerNotInstalled("mariadb-install-db not found; install with:\n    " + INSTALL_LINE)
            cmd = [
                install,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *user,
            ]
            basedir = self._mariadb_basedir()
            if basedir:
                cmd.append(f"--basedir={basedir}")
            cmd.extend(
                ["--innodb_file_per_table=OFF", "--innodb_doublewrite=0", "--innodb_flush_method=nosync"]
            )
        else:
            cmd = [
                self.binary,
                "--no-defaults",
                "--initialize-insecure",
                f"--datadir={self.datadir}",
                "--innodb_file_per_table=OFF",
                *user,
            ]
        # Its own process group: mariadb-install-db is a script that runs a bootstrap server; an
        # interrupt must take both down (killing the script alone orphaned a mariadbd).
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            self._step("initialising")
            output, _ = proc.communicate()
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            raise ServerError(f"initialising datadir failed ({' '.join(cmd)}):\n{output}")

    def _mariadb_basedir(self) -> str | None:
        # mariadb-install-db looks for share files relative to --basedir; Debian installs them under /usr.
        bindir = Path(self.binary).resolve().parent
        for base in (bindir.parent, Path("/usr")):
            if (base / "share" / "mysql").is_dir() or (base / "share" / "mariadb").is_dir():
                return str(base)
        return None

    def _command(self) -> list[str]:
        assert self.datadir is not None and self.tmp is not None
        cmd = [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.tmp / 'mysqld.pid'}",
            f"--log-error={self.log_path}",
            f"--tmpdir={self.tmp}",
            *_FAST_OPTIONS,
        ]
        if self.flavor == "mysql":
            cmd = [c for c in cmd if c not in ("--skip-log-bin",)] + ["--disable-log-bin", "--mysqlx=OFF"]
            cmd = [c for c in cmd if not c.startswith("--innodb_flush_method")]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        return cmd

    def _spawn(self, timeout: float) -> None:
        # PDEATHSIG fires when the *thread* that forked exits, so only tie the server to its owner when
        # started from the main thread (a fault test may restart() from a helper thread).
        tie = self.die_with_parent and threading.current_thread() is threading.main_thread()
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own session either way (a Ctrl-C in the test terminal must not kill the server mid-teardown).
            start_new_session=not tie,
            preexec_fn=_die_with_parent if tie else None,  # noqa: PLW1509
        )
        self._step("spawned")
        self._wait_ready(timeout)

    def set_root_password(self, password: str) -> None:
        """Give every root account this password (``syncd demo --keep``: a server left running
        must not accept a password-less root on its TCP port)."""
        conn = pymysql.connect(unix_socket=self.socket, user="root", password=self.password or "")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT User, Host FROM mysql.user WHERE User = 'root'")
                for user, host in cur.fetchall():
                    try:
                        cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                    except pymysql.err.OperationalError as exc:
                        # 1396: an account by host name ('root'@'myhost'), which this server started
                        # with --skip-name-resolve never matches: nobody can log in with it.
                        if exc.args[0] != 1396:
                            raise
        finally:
            conn.close()
        self.password = password

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"server exited with code {self.proc.returncode}:\n{self.error_log_tail()}")
            try:
                conn = pymysql.connect(
                    unix_socket=self.socket, user="root", password=self.password or "", connect_timeout=1
                )
            except pymysql.err.OperationalError as exc:
                last = exc
                time.sleep(0.05)
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT VERSION()")
                    row = cur.fetchone()
                    self.version = str(row[0]) if row else ""
            finally:
                conn.close()
            return
        raise ServerError(f"server not ready after {timeout}s ({last}):\n{self.error_log_tail()}")

    def error_log_tail(self, lines: int = 30) -> str:
        try:
            assert self.log_path is not None
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no error log)"

    def _terminate(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("private_server_kill_after_timeout", timeout=timeout, pid=proc.pid)
            proc.kill()
            proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (SIGTERM, SIGKILL after ``timeout``) and remove its files."""
        self._terminate(timeout)
        self.proc = None
        if self.tmp is not None:
            keep = os.environ.get("SYNCD_TEST_SERVER_LOG")
            if keep and self.log_path is not None and self.log_path.exists():
                shutil.copyfile(self.log_path, keep)
            shutil.rmtree(self.tmp, ignore_errors=True)
            log.info("private_server_stopped", port=self.port)
            self.tmp = None

    def discard(self) -> None:
        """Throw the server away at once: SIGKILL (a server still starting ignores SIGTERM) and
        remove its files. For an interrupted demo; the data is disposable anyway."""
        self.kill()
        self.stop()

    def kill(self) -> None:
        """SIGKILL the server (a crash: no clean shutdown). Datadir stays; call restart() to recover."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the process cleanly but keep the datadir (restart() brings it back)."""
        self._terminate(timeout)

    def restart(self, timeout: float = 60.0, down_for: float = 0.0) -> None:
        """Stop (cleanly, if still running) and start again on the same datadir, port and socket.

        ``down_for`` keeps the server down that many seconds, for fault tests that want a
        daemon to notice the outage.
        """
        self._terminate(30.0)
        if down_for:
            time.sleep(down_for)
        # After kill() the old socket file can remain; mysqld refuses to start on a live one only.
        self._spawn(timeout)
        log.info("private_server_restarted", port=self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ----------------------------------------------------------------- addresses
    def _root(self) -> str:
        return "root" if not self.password else f"root:{quote(self.password, safe='')}"

    def root_url(self, database: str | None = None) -> str:
        """SQLAlchemy URL for root over TCP (the daemon code path), optionally with a database."""
        return f"mysql+pymysql://{self._root()}@127.0.0.1:{self.port}/{database or ''}"

    def socket_url(self, database: str | None = None) -> str:
        """SQLAlchemy URL for root over the unix socket."""
        return f"mysql+pymysql://{self._root()}@localhost/{database or ''}?unix_socket={self.socket}"

    def __enter__(self) -> PrivateServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a child started with start_new_session and everything in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def start_private_server(**kw: object) -> PrivateServer:
    """Start a private server (see :class:`PrivateServer`) and return it."""
    return PrivateServer(**kw).start()  # type: ignore[arg-type]
