"""Run the real daemon as a subprocess (``python -m syncd --config FILE run``) for crash, signal and
standby tests: write its TOML config, collect its JSON log lines (stderr) as they come, wait for
events such as ``daemon_ready`` or ``batch_applied``, send signals, kill it.

Until ``syncd/derived.py`` exists the daemon cannot build an applier (it imports
``syncd.derived.refresh_products``); then, and only then, this module is the entry point
(``python tests/integration/daemon_process.py ARGS``): it registers a no-op ``syncd.derived``
and calls ``syncd.cli.main(ARGS)`` exactly as ``python -m syncd ARGS`` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def derived_available() -> bool:
    return importlib.util.find_spec("syncd.derived") is not None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_config(
    directory: Path | str, net: Any, name: str = "syncd.toml", **sections: Mapping[str, Any]
) -> Path:
    """A config file for ``net`` (JSON logs, debug off); ``sections`` add or override keys, e.g.
    ``sync={"batch_size": 20}``, ``database={"lock_wait_timeout": 5}``."""
    data: dict[str, dict[str, Any]] = {
        "database": {"url": net.url, "table_prefix": net.prefix},
        "sync": {"idle_wait": 0.01, "discovery_interval": 30},
        "log": {"level": "info", "format": "json"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path = Path(directory) / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class DaemonProcess:
    """One ``syncd run`` subprocess and the structured log it writes."""

    def __init__(
        self, config_path: Path | str, *, name: str = "syncd", extra_args: Iterable[str] = ()
    ) -> None:
        self.config_path = str(config_path)
        self.name = name
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self.started_at = 0.0

    # -- process ---------------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        argv = ["--config", self.config_path, "--log-format", "json", *args]
        if derived_available():
            return [sys.executable, "-m", "syncd", *argv]
        return [sys.executable, str(Path(__file__).resolve()), *argv]

    def environment(self) -> dict[str, str]:
        """The child's environment: ours, without systemd's notify variables (subclasses add them)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        return env

    def start(self) -> DaemonProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = self.environment()
        self.events, self.raw = [], []
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command("run", *self.extra_args),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True),
        ]
        for t in self._readers:
            t.start()
        return self

    def _read(self, stream: Any) -> None:
        for line in stream:
            line = line.rstrip("\n")
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            with self._cond:
                self.raw.append(line)
                if isinstance(ev, dict):
                    self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> int:
        """``kill -9`` and reap; returns the exit status (-9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s\n{self.log_tail()}") from None
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self, timeout: float = 15.0) -> int | None:
        """Clean up: SIGTERM, then SIGKILL if it does not exit. Safe to call on an exited process."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for t in self._readers:
            t.join(5)
        return self.proc.returncode

    # -- log -------------------------------------------------------------------------------
    def named(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == event]

    def wait_for(
        self,
        event: str,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first ``event`` (at index >= ``after`` in :attr:`events`) matching ``where``.

        Fails (with the log tail) on timeout or if the process exits before it appears."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events[after:]:
                    if e.get("event") == event and (where is None or where(e)):
                        return e
                exited = self.proc is not None and self.proc.poll() is not None
                remaining = deadline - time.monotonic()
                if exited and all(not t.is_alive() for t in self._readers):
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before logging {event}\n{self._tail()}"
                    )
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no {event} within {timeout}s\n{self._tail()}")
                self._cond.wait(min(remaining, 0.2))

    def mark(self) -> int:
        """Current position in the event list, for ``wait_for(after=...)``."""
        with self._cond:
            return len(self.events)

    def _tail(self, n: int = 40) -> str:
        return "\n".join(self.raw[-n:])

    def log_tail(self, n: int = 40) -> str:
        with self._cond:
            return self._tail(n)

    def errors(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("level") in ("error", "critical")]

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(config_path: Path | str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one short ``syncd`` command (install, uninstall, check) and return its result."""
    argv = ["--config", str(config_path), "--log-format", "json", *args]
    cmd = [sys.executable, "-m", "syncd", *argv] if derived_available() else [sys.executable, __file__, *argv]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def _main(argv: list[str]) -> int:
    if not derived_available():
        import types

        stub = types.ModuleType("syncd.derived")
        stub.refresh_products = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules["syncd.derived"] = stub
    from syncd.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(_main(sys.argv[1:]))


# =========================================================================================
# Write storms and exact final-state checks shared by the robustness tests.
# =========================================================================================
import random  # noqa: E402
from collections import Counter  # noqa: E402
from decimal import Decimal  # noqa: E402

import sqlalchemy as sa  # noqa: E402

#: SKUs of the recorded network that are one linked product with managed stock on each of blogs 1-3.
STOCK_SKUS = ("TSHIRT-RED", "MUG", "NOTEBOOK", "CAP", "HOODIE-S", "HOODIE-M", "HOODIE-L", "POSTER")


def refresh_fn() -> Any:
    """The derived-data writer for in-process daemons: the real one once ``syncd.derived`` exists."""
    return None if derived_available() else (lambda *a, **k: None)


def members(net: Any, sku: str, blogs: Iterable[int] | None = None) -> dict[int, int]:
    """blog_id -> post id of the one product with this SKU on each blog (of ``blogs``)."""
    out = {}
    with net.engine.connect() as c:
        for b in net.blog_ids if blogs is None else blogs:
            rows = c.execute(
                sa.text(
                    f"SELECT post_id FROM {net.table(b, 'postmeta')} WHERE meta_key = '_sku' AND meta_value = :s"
                ),
                {"s": sku},
            ).all()
            if len(rows) == 1:
                out[b] = rows[0][0]
    return out


def quantities(net: Any, sku: str, ids: Mapping[int, int] | None = None) -> dict[int, Decimal | None]:
    ids = ids or members(net, sku)
    out: dict[int, Decimal | None] = {}
    with net.engine.connect() as c:
        for b, p in sorted(ids.items()):
            v = c.execute(
                sa.text(
                    f"SELECT meta_value FROM {net.table(b, 'postmeta')} WHERE post_id = :p AND meta_key = '_stock'"
                ),
                {"p": p},
            ).scalar_one_or_none()
            out[b] = None if v is None else Decimal(v)
    return out


def pending(net: Any) -> int:
    with net.engine.connect() as c:
        return int(c.exec_driver_sql(f"SELECT COUNT(*) FROM {net.prefix}syncd_change").scalar_one())


def joining(net: Any) -> int:
    """Products still settling before they join their group (syncd.settle); 0 before schema 3."""
    with net.engine.connect() as c:
        try:
            return int(
                c.exec_driver_sql(f"SELECT COUNT(*) FROM {net.prefix}syncd_settle WHERE kind = 'join'").scalar_one()
            )
        except sa.exc.ProgrammingError:
            return 0


def wait_drained(net: Any, timeout: float = 60.0, alive: Callable[[], bool] | None = None) -> None:
    """Until the change table is empty and no product is still joining its group. The apply
    transaction deletes the rows it applied, so an empty table (read committed) means every
    captured change is applied and committed; a new product joins its group in a transaction of
    its own after that (syncd.settle)."""
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = pending(net)
        if n == 0 and joining(net) == 0:
            return
        if alive is not None and not alive():
            raise AssertionError(f"the daemon died with {n} changes pending")
        time.sleep(0.05)
    raise AssertionError(f"{n} changes still pending after {timeout}s")


def lock_waits(net: Any) -> int:
    """Transactions waiting for a row lock right now (ours: the daemon's apply behind a held lock).

    InnoDB refreshes INNODB_TRX only when it was not read for 0.1 s: poll it more slowly than that
    (``wait_until(..., poll=0.15)``) or it never changes."""
    with net.engine.connect() as c:
        return int(
            c.exec_driver_sql(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
            ).scalar_one()
        )


def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class RowLock:
    """A shop transaction holding ``SELECT ... FOR UPDATE`` on one product's _stock row (what
    WooCommerce's stock code does) until :meth:`release`."""

    def __init__(self, net: Any, blog: int, post: int) -> None:
        self._engine = wpdb_engine(net.url, 1)
        self.conn = self._engine.connect()
        self.conn.exec_driver_sql("START TRANSACTION")
        self.value = self.conn.exec_driver_sql(
            f"SELECT meta_value FROM {net.table(blog, 'postmeta')} WHERE post_id = {int(post)} "
            "AND meta_key = '_stock' FOR UPDATE"
        ).scalar_one()
        self.taken_at = time.monotonic()

    def release(self) -> None:
        if self.conn is not None:
            self.conn.exec_driver_sql("COMMIT")
            self.conn.close()
            self._engine.dispose()
            self.conn = None

    def __enter__(self) -> RowLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Ledger:
    """What the writers did, for the exact expected end state: sum of deltas and writes per SKU."""

    def __init__(self) -> None:
        self.delta: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.sets = 0
        self._lock = threading.Lock()

    def add(self, sku: str, delta: Decimal | int) -> None:
        with self._lock:
            self.delta[sku] += Decimal(delta)
            if delta:
                self.writes[sku] += 1

    def merge(self, other: Ledger) -> Ledger:
        self.delta.update(other.delta)
        self.writes.update(other.writes)
        self.sets += other.sets
        return self

    @property
    def total_writes(self) -> int:
        with self._lock:  # read while writer threads add new SKUs
            return sum(self.writes.values())


def wpdb_engine(url: str, connections: int = 4) -> sa.Engine:
    """Connections that behave like WordPress's wpdb: autocommit, the server's default isolation
    (REPEATABLE READ), WordPress's non-strict sql_mode. A shop write that fails here (deadlock,
    lock wait timeout) is a failed checkout: the storms treat it as a test failure."""
    from syncd.db import SessionSettings, make_engine

    return make_engine(
        url,
        SessionSettings(isolation=None, lock_wait_timeout=50),
        connect_args={"autocommit": True},
        pool_size=connections,
        max_overflow=2,
    )


def relative_write(conn: sa.Connection, net: Any, blog: int, post: int, delta: int) -> None:
    """WooCommerce's checkout/restock statement (wc_update_product_stock), autocommit."""
    sign = "-" if delta < 0 else "+"
    conn.exec_driver_sql(
        f"UPDATE {net.table(blog, 'postmeta')} SET meta_value = meta_value {sign}{abs(delta)}.000000 "
        f"WHERE post_id = {int(post)} AND meta_key='_stock'"
    )


def absolute_write(conn: sa.Connection, net: Any, blog: int, post: int, value: int) -> Decimal:
    """An admin setting the stock (read under lock, then write the new value, one transaction).
    Returns the captured delta (new - old), which is what every member must receive."""
    pm = net.table(blog, "postmeta")
    conn.exec_driver_sql("START TRANSACTION")  # the connection is in autocommit mode, like wpdb's
    try:
        old = conn.execute(
            sa.text(f"SELECT meta_value FROM {pm} WHERE post_id = :p AND meta_key = '_stock' FOR UPDATE"),
            {"p": post},
        ).scalar_one()
        conn.execute(
            sa.text(f"UPDATE {pm} SET meta_value = :v WHERE post_id = :p AND meta_key = '_stock'"),
            {"v": str(value), "p": post},
        )
        conn.exec_driver_sql("COMMIT")
    except BaseException:
        conn.exec_driver_sql("ROLLBACK")
        raise
    return Decimal(value) - Decimal(old)


class Storm:
    """Writer threads, each on its own connection, doing WooCommerce-style stock writes on random
    blogs and SKUs until stopped (or until their op lists run out)."""

    def __init__(
        self,
        net: Any,
        skus: Iterable[str] = STOCK_SKUS,
        *,
        writers: int = 3,
        pause: float = 0.0,
        seed: int = 0,
        ops: list[list[tuple[int, str, str, int]]] | None = None,
        max_delta: int = 3,
    ) -> None:
        self.net = net
        self.skus = list(skus)
        self.ids = {s: members(net, s) for s in self.skus}
        for s, m in self.ids.items():
            assert set(m) == set(net.blog_ids), f"{s} is not on every blog: {m}"
        self.ledger = Ledger()
        self.pause = pause
        self.max_delta = max_delta
        self.ops = ops
        self.n = len(ops) if ops is not None else writers
        self.seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> Storm:
        self._engine = wpdb_engine(self.net.url, self.n)
        for i in range(self.n):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"writer-{i}")
            t.start()
            self._threads.append(t)
        return self

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        conn = self._engine.connect()
        try:
            script = self.ops[i] if self.ops is not None else None
            k = 0
            while not self._stop.is_set():
                if script is not None:
                    if k >= len(script):
                        return
                    blog, sku, kind, n = script[k]
                else:
                    blog, sku = rng.choice(self.net.blog_ids), rng.choice(self.skus)
                    kind, n = (
                        ("dec", rng.randint(1, self.max_delta))
                        if rng.random() < 0.7
                        else ("inc", rng.randint(1, self.max_delta))
                    )
                k += 1
                post = self.ids[sku][blog]
                if kind == "set":
                    self.ledger.add(sku, absolute_write(conn, self.net, blog, post, n))
                    with self.ledger._lock:
                        self.ledger.sets += 1
                else:
                    d = -n if kind == "dec" else n
                    relative_write(conn, self.net, blog, post, d)
                    self.ledger.add(sku, d)
                if self.pause:
                    time.sleep(rng.uniform(0, 2 * self.pause))
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)
        finally:
            conn.close()

    def stop(self) -> Ledger:
        self._stop.set()
        return self.join()

    def join(self, timeout: float = 120.0) -> Ledger:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), f"{t.name} is stuck"
        self._engine.dispose()
        if self.errors:
            raise self.errors[0]
        return self.ledger


def snapshot(net: Any, skus: Iterable[str] = STOCK_SKUS) -> dict[str, dict[int, Decimal | None]]:
    return {s: quantities(net, s) for s in skus}


def assert_converged(
    net: Any, start: Mapping[str, Mapping[int, Decimal | None]], ledger: Ledger | None, *, exact: bool = True
) -> None:
    """Every member of every group holds the same quantity, start + sum of every captured delta;
    the change table is empty; derived data agrees (once syncd.derived exists)."""
    assert pending(net) == 0
    problems = []
    for sku, before in start.items():
        now = quantities(net, sku)
        values = set(now.values())
        if len(values) != 1:
            problems.append(f"{sku}: members differ: {now}")
            continue
        first = next(iter(before.values()))
        assert len(set(before.values())) == 1, f"{sku} started unequal: {before}"
        if exact and ledger is not None:
            expected = first + ledger.delta[sku]
            if values != {expected}:
                problems.append(f"{sku}: {now} but expected {expected} (start {first} + {ledger.delta[sku]})")
    assert not problems, "\n".join(problems)
    if derived_available():
        assert_derived_consistent(net, list(start))


def assert_derived_consistent(net: Any, skus: Iterable[str], blogs: Iterable[int] | None = None) -> None:
    """WooCommerce's derived stock data agrees with each member's own quantity (its blog's rule):
    _stock_status from quantity/backorders, and the lookup row's stock_quantity/stock_status."""
    problems = []
    with net.engine.connect() as c:
        for sku in skus:
            for b, p in members(net, sku, blogs).items():
                pm, lookup, opts = (
                    net.table(b, "postmeta"),
                    net.table(b, "wc_product_meta_lookup"),
                    net.table(b, "options"),
                )
                meta = dict(
                    c.execute(
                        sa.text(
                            f"SELECT meta_key, meta_value FROM {pm} WHERE post_id = :p AND meta_key IN "
                            "('_stock', '_manage_stock', '_backorders', '_stock_status')"
                        ),
                        {"p": p},
                    ).all()
                )
                if meta.get("_manage_stock") != "yes" or meta.get("_stock") is None:
                    continue
                notify = c.execute(
                    sa.text(
                        f"SELECT option_value FROM {opts} WHERE option_name = 'woocommerce_notify_no_stock_amount'"
                    )
                ).scalar_one_or_none()
                q = Decimal(meta["_stock"])
                if q > Decimal(notify or 0):
                    want = "instock"
                else:
                    want = "outofstock" if meta.get("_backorders", "no") == "no" else "onbackorder"
                if meta.get("_stock_status") != want:
                    problems.append(
                        f"{sku} blog {b} post {p}: _stock_status {meta.get('_stock_status')} for {q}, want {want}"
                    )
                row = c.execute(
                    sa.text(f"SELECT stock_quantity, stock_status FROM {lookup} WHERE product_id = :p"),
                    {"p": p},
                ).first()
                if (
                    row is None
                    or row[0] is None
                    or Decimal(row[0]) != q
                    or row[1] != meta.get("_stock_status")
                ):
                    problems.append(
                        f"{sku} blog {b} post {p}: lookup {row} vs _stock {q}/{meta.get('_stock_status')}"
                    )
    assert not problems, "\n".join(problems)


def assert_history_once(
    net: Any, ledger: Ledger, start: Mapping[str, Mapping[int, Decimal | None]], *, per_write: bool = True
) -> None:
    """syncd_history accounts for every unit exactly once: each origin change has one origin row,
    no change is copied twice to a member, the origin deltas of a SKU add up to what the writers did,
    every change has exactly one copy row per other member, and for every member start + its own
    origin deltas + the deltas copied to it = its quantity now.

    ``per_write=False`` (poll mode): one poll sums the writes made since the last one into one
    change, so a SKU has at most (not exactly) one origin row per write."""
    with net.engine.connect() as c:
        dup_origin = c.exec_driver_sql(
            f"SELECT change_id, COUNT(*) FROM {net.prefix}syncd_history WHERE role = 'origin' "
            "GROUP BY change_id HAVING COUNT(*) <> 1"
        ).all()
        assert dup_origin == [], f"origin changes recorded more than once: {dup_origin[:10]}"
        dup_copy = c.exec_driver_sql(
            f"SELECT change_id, blog_id, post_id, COUNT(*) FROM {net.prefix}syncd_history "
            "WHERE role = 'copy' AND meta_key = '_stock' GROUP BY change_id, blog_id, post_id HAVING COUNT(*) <> 1"
        ).all()
        assert dup_copy == [], f"changes copied twice to a member: {dup_copy[:10]}"
        self_copy = c.exec_driver_sql(
            f"SELECT change_id, blog_id, post_id FROM {net.prefix}syncd_history "
            "WHERE role = 'copy' AND blog_id = origin_blog_id AND post_id = origin_post_id"
        ).all()
        assert self_copy == [], f"changes copied back to their origin: {self_copy[:10]}"
        skipped = c.exec_driver_sql(
            f"SELECT blog_id, post_id, sku, note FROM {net.prefix}syncd_history WHERE role = 'skipped' LIMIT 5"
        ).all()
        assert skipped == [], f"members skipped: {skipped}"
        problems = []
        for sku, before in start.items():
            n, total = c.execute(
                sa.text(
                    f"SELECT COUNT(*), COALESCE(SUM(delta), 0) FROM {net.prefix}syncd_history "
                    "WHERE role = 'origin' AND meta_key = '_stock' AND sku = :s"
                ),
                {"s": sku},
            ).one()
            rows_ok = n == ledger.writes[sku] if per_write else n <= ledger.writes[sku]
            if not rows_ok or Decimal(total) != ledger.delta[sku]:
                problems.append(
                    f"{sku}: {n} origin rows summing {total} for {ledger.writes[sku]} writes summing {ledger.delta[sku]}"
                )
            copies = c.execute(
                sa.text(
                    f"SELECT COUNT(*) FROM {net.prefix}syncd_history "
                    "WHERE role = 'copy' AND meta_key = '_stock' AND sku = :s"
                ),
                {"s": sku},
            ).scalar_one()
            others = len(before) - 1
            if copies != (ledger.writes[sku] if per_write else n) * others:
                problems.append(
                    f"{sku}: {copies} copy rows for {ledger.writes[sku]} writes x {others} other members"
                )
            now = quantities(net, sku)
            for (b, p), q0 in zip(sorted(members(net, sku).items()), before.values(), strict=True):
                own, copied = c.execute(
                    sa.text(
                        f"SELECT COALESCE(SUM(IF(role = 'origin', delta, 0)), 0), COALESCE(SUM(IF(role = 'copy', delta, 0)), 0) "
                        f"FROM {net.prefix}syncd_history WHERE meta_key = '_stock' AND blog_id = :b AND post_id = :p"
                    ),
                    {"b": b, "p": p},
                ).one()
                if q0 + Decimal(own) + Decimal(copied) != now[b]:
                    problems.append(
                        f"{sku} blog {b}: start {q0} + own {own} + copied {copied} != now {now[b]}"
                    )
        assert not problems, "\n".join(problems)


@contextmanager
def running(d: Any) -> Iterator[threading.Thread]:
    """``Daemon.run()`` in a thread (leader lock, scheduler, main loop); stopped at the end, and
    required to exit 0. What the test does inside happens mid-run, after start-up."""
    from syncd.daemon import EXIT_OK

    code: list[int] = []
    t = threading.Thread(target=lambda: code.append(d.run()), name="daemon", daemon=True)
    t.start()
    try:
        wait_until(lambda: d.ready.is_set() or not t.is_alive(), 30, "the daemon to start")
        assert t.is_alive(), "the daemon died while starting"
        yield t
    finally:
        d.request_stop()
        t.join(30)
    assert not t.is_alive(), "the daemon did not stop"
    assert code == [EXIT_OK]
