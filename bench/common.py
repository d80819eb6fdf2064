"""Shared pieces of the benchmarks: a private server, a network with a catalogue, a daemon subprocess,
WooCommerce-style writers, and figures (percentiles, tables, JSON).

Every benchmark starts its own throwaway MariaDB (:mod:`syncd.testnet.server`): nothing here ever
touches a system server. Timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC), which on Linux is
one clock for every process of the machine, so a writer's commit time in this process and the
daemon's commit time in its own process can be subtracted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/latency.py` as well as `python -m bench.latency`
    sys.path.insert(0, str(REPO))

from syncd.db import table, validate_prefix  # noqa: E402
from syncd.network import blog_prefix  # noqa: E402
from syncd.testnet import wordpress  # noqa: E402
from syncd.testnet.server import PrivateServer  # noqa: E402

BASE = "wp_"

# --------------------------------------------------------------------------- output


def log(msg: str) -> None:
    """Progress goes to stderr so that ``--json`` output on stdout stays machine-readable."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """mean/p50/p95/p99/max of a list of milliseconds (rounded for printing)."""
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "mean": round(statistics.fmean(values_ms), 3),
        "p50": round(percentile(values_ms, 50), 3),
        "p95": round(percentile(values_ms, 95), 3),
        "p99": round(percentile(values_ms, 99), 3),
        "max": round(max(values_ms), 3),
    }


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], title: str = "") -> None:
    """A plain fixed-width table: ``columns`` is [(key, header)]."""
    if title:
        print(f"\n{title}")
    cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h) in enumerate(columns)
    ]
    print("  ".join(h.rjust(w) for (_, h), w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return str(v)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "code": code_version(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in well under 30 s")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document on stdout")
    p.add_argument(
        "--refresh",
        choices=("auto", "stub", "real"),
        default="auto",
        help="derived-data writer in the daemon: real = syncd.derived.refresh_products, stub = no-op, "
        "auto = real when syncd.derived exists (default)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed for the write pattern")
    return p


def resolve_refresh(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import syncd.derived  # noqa: F401, PLC0415

        return "real"
    except ImportError:
        return "stub"


def quiet_logs() -> None:
    """syncd's own log lines at warning and above only (the daemon in-process would print every batch)."""
    try:
        from syncd.log import configure_logging  # noqa: PLC0415

        configure_logging("warning")
    except Exception:  # noqa: BLE001 - a benchmark runs without it
        pass


# structlog's default logger prints to stdout, which --json output needs for itself.
quiet_logs()


def code_version() -> dict[str, Any]:
    """Which syncd code is measured: the commit, and whether syncd's files differ from it."""
    snap = REPO / "BENCH_COMMIT"
    if snap.exists():
        return {"commit": snap.read_text().strip(), "dirty": False, "tree": str(REPO)}
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "syncd", "sql", "schema"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty), "tree": str(REPO)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "tree": str(REPO)}


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))


# --------------------------------------------------------------------------- server and network


class BenchServer(PrivateServer):
    """The testnet private server with a few benchmark-specific options appended (later options win)."""

    def __init__(self, extra_options: Sequence[str] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.extra_options = list(extra_options)

    def _command(self) -> list[str]:
        return super()._command() + self.extra_options


#: A server that writes a binary log in ROW format (as a primary with replicas does): the daemon
#: then follows it to wake up (syncd.wake) instead of polling.
BINLOG_OPTIONS = ("--log-bin=binlog", "--binlog-format=ROW", "--server-id=1")


def start_server(buffer_pool: str = "256M", extra: Sequence[str] = ()) -> BenchServer:
    server = BenchServer(extra_options=[f"--innodb_buffer_pool_size={buffer_pool}", *extra])
    server.start()
    log(f"private server {server.version} on 127.0.0.1:{server.port} ({server.datadir})")
    return server


@dataclass
class BenchNetwork:
    server: BenchServer
    database: str
    blog_ids: tuple[int, ...]
    prefix: str = BASE
    skus: int = 0
    engine: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    @property
    def url(self) -> str:
        """TCP URL, what the daemon uses (as a daemon on another host would)."""
        return self.server.root_url(self.database)

    def blog_prefix(self, blog_id: int) -> str:
        return blog_prefix(self.prefix, blog_id)

    def table(self, blog_id: int, suffix: str) -> str:
        return table(self.blog_prefix(blog_id), suffix)

    def raw(self, autocommit: bool = True) -> pymysql.connections.Connection:
        """A plain PyMySQL connection over the unix socket, with WordPress's session (no STRICT modes)."""
        conn = pymysql.connect(
            unix_socket=self.server.socket, user="root", database=self.database, autocommit=autocommit
        )
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = 'NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'")
        return conn

    def pending(self) -> int:
        with self.raw() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {table(self.prefix, 'syncd_change')}")
            return int(cur.fetchone()[0])

    def stock_meta_ids(self, blog_id: int) -> dict[int, int]:
        """post_id -> meta_id of the _stock row on one blog."""
        with self.raw() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT post_id, meta_id FROM {self.table(blog_id, 'postmeta')} WHERE meta_key = '_stock'"
            )
            return {int(p): int(m) for p, m in cur.fetchall()}

    def products_by_sku(self) -> dict[int, dict[int, int]]:
        """sku number -> {blog_id: post_id}, from the loader's id scheme."""
        return {n: {b: product_id(b, n) for b in self.blog_ids} for n in range(1, self.skus + 1)}


def create_network(server: BenchServer, blogs: int, name: str | None = None) -> BenchNetwork:
    """An empty WooCommerce network of ``blogs`` blogs in a new database."""
    name = name or f"bench_{blogs}b_{int(time.time() * 1000) % 10**9}"
    with pymysql.connect(unix_socket=server.socket, user="root") as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci")
    net = BenchNetwork(server, name, tuple(range(1, blogs + 1)))
    t0 = time.monotonic()
    with net.engine.connect() as conn:
        wordpress.create_network(conn, BASE, net.blog_ids)
    log(f"network {name}: {blogs} blogs created in {time.monotonic() - t0:.1f} s")
    return net


# --------------------------------------------------------------------------- catalogue loader

#: Post ids of bench products: blog-specific offsets, so that the same SKU has a different post id
#: on every blog (as on a real network, where ids never line up) and a mix-up would show.
ID_BASE = 1000


def product_id(blog_id: int, sku_n: int) -> int:
    return ID_BASE + 7 * blog_id + sku_n * 10


def sku_text(sku_n: int) -> str:
    return f"BENCH-{sku_n:07d}"


#: The postmeta rows WooCommerce 11 writes for a simple product with managed stock, in its order
#: (recorded fixture, wp_postmeta post 11, minus _product_attributes): key -> SQL value expression
#: over n (the SKU number). Prices and stock vary by n.
PRODUCT_META: tuple[tuple[str, str], ...] = (
    ("_sku", "CONCAT('BENCH-', LPAD(n, 7, '0'))"),
    ("_regular_price", "CONCAT(10 + n % 90, '.99')"),
    ("total_sales", "'0'"),
    ("_tax_status", "'taxable'"),
    ("_tax_class", "''"),
    ("_manage_stock", "'yes'"),
    ("_backorders", "'no'"),
    ("_sold_individually", "'no'"),
    ("_virtual", "'no'"),
    ("_downloadable", "'no'"),
    ("_download_limit", "'-1'"),
    ("_download_expiry", "'-1'"),
    ("_stock", "CAST(:stock AS CHAR)"),
    ("_stock_status", "'instock'"),
    ("_wc_average_rating", "'0'"),
    ("_wc_review_count", "'0'"),
    ("_product_version", "'11.0.1'"),
    ("_price", "CONCAT(10 + n % 90, '.99')"),
)


def ensure_numbers(conn: sa.Connection, upto: int) -> None:
    """A helper table ``bench_num(n)`` holding 1..upto (portable: MySQL has no SEQUENCE engine)."""
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS bench_num (n INT UNSIGNED NOT NULL PRIMARY KEY) ENGINE=InnoDB"
    )
    have = conn.exec_driver_sql("SELECT COALESCE(MAX(n), 0) FROM bench_num").scalar_one()
    if have == 0:
        conn.exec_driver_sql("INSERT INTO bench_num VALUES (1)")
        have = 1
    while have < upto:
        conn.exec_driver_sql(
            f"INSERT INTO bench_num SELECT n + {have} FROM bench_num WHERE n + {have} <= {upto}"
        )
        have = conn.exec_driver_sql("SELECT MAX(n) FROM bench_num").scalar_one()
    conn.commit()


def _secondary_indexes(conn: sa.Connection, table_name: str) -> list[str]:
    """``ADD KEY`` clauses that re-create the secondary indexes of ``table_name`` exactly."""
    rows = conn.execute(
        sa.text(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND INDEX_NAME <> 'PRIMARY' "
            "ORDER BY INDEX_NAME, SEQ_IN_INDEX"
        ),
        {"t": table_name},
    ).all()
    keys: dict[str, tuple[bool, list[str]]] = {}
    for name, non_unique, col, sub in rows:
        keys.setdefault(name, (not non_unique, []))[1].append(f"`{col}`" + (f"({sub})" if sub else ""))
    return [
        f"ADD {'UNIQUE ' if unique else ''}KEY `{name}` ({', '.join(cols)})"
        for name, (unique, cols) in keys.items()
    ]


def _bulk_load(conn: sa.Connection, table_name: str, fill: Callable[[], None]) -> None:
    """Run ``fill`` with the table's secondary indexes dropped, then rebuild them (by sort, in one
    ALTER): several times faster than maintaining them row by row. The table definition afterwards
    is exactly the one before (checked)."""
    before = conn.exec_driver_sql(f"SHOW CREATE TABLE `{table_name}`").one()[1]
    # Re-created in the order SHOW CREATE TABLE lists them (the order they were defined in).
    adds = sorted(
        _secondary_indexes(conn, table_name),
        key=lambda a: before.find("KEY " + a.split("KEY ", 1)[1].split(" ")[0]),
    )
    names = re.findall(r"KEY `([^`]+)`", " ".join(adds))
    if names:
        conn.exec_driver_sql(f"ALTER TABLE `{table_name}` " + ", ".join(f"DROP KEY `{n}`" for n in names))
    try:
        fill()
        conn.commit()
    finally:
        if names:
            conn.exec_driver_sql(f"ALTER TABLE `{table_name}` " + ", ".join(adds))
    after = conn.exec_driver_sql(f"SHOW CREATE TABLE `{table_name}`").one()[1]
    if re.sub(r" AUTO_INCREMENT=\d+", "", after) != re.sub(r" AUTO_INCREMENT=\d+", "", before):
        raise RuntimeError(f"bulk load changed the definition of {table_name}")


def _load_blog(net: BenchNetwork, blog_id: int, first: int, last: int, stock: int) -> None:
    rng = {"lo": first, "hi": last, "stock": stock}
    skus = last - first + 1
    with net.engine.connect() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = 'NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'")
        conn.exec_driver_sql("SET SESSION unique_checks = 0, foreign_key_checks = 0")
        # When syncd's triggers are already installed (a catalogue grown between two runs), the
        # load is not a shop change to propagate: the daemon links the new products at start-up.
        conn.exec_driver_sql("SET @syncd_apply = 1")
        p = validate_prefix(net.blog_prefix(blog_id))
        pid = f"({ID_BASE} + 7 * {int(blog_id)} + n * 10)"
        conn.execute(
            sa.text(
                f"INSERT INTO `{p}posts` (ID, post_author, post_date, post_date_gmt, post_content, post_title, "
                "post_excerpt, post_status, comment_status, ping_status, post_password, post_name, to_ping, "
                "pinged, post_modified, post_modified_gmt, post_content_filtered, post_parent, guid, menu_order, "
                "post_type, post_mime_type, comment_count) "
                f"SELECT {pid}, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00', '', CONCAT('Product ', n), '', "
                "'publish', 'open', 'closed', '', CONCAT('product-', n), '', '', '2026-01-01 00:00:00', "
                f"'2026-01-01 00:00:00', '', 0, CONCAT('http://shop.test/site{int(blog_id)}/product/product-', n, '/'), "
                "0, 'product', '', 0 FROM bench_num WHERE n BETWEEN :lo AND :hi"
            ),
            rng,
        )
        conn.commit()
        value = (
            "CASE k.ord " + " ".join(f"WHEN {i} THEN {v}" for i, (_, v) in enumerate(PRODUCT_META)) + " END"
        )
        # Products in ascending id, each product's rows in WooCommerce's key order (meta_id order).
        _bulk_load(
            conn,
            f"{p}postmeta",
            lambda: conn.execute(
                sa.text(
                    f"INSERT INTO `{p}postmeta` (post_id, meta_key, meta_value) "
                    f"SELECT {pid}, k.k, {value} FROM bench_num JOIN bench_meta_keys k "
                    "WHERE n BETWEEN :lo AND :hi ORDER BY n, k.ord"
                ),
                rng,
            ),
        )
        tt = dict(
            conn.execute(
                sa.text(
                    f"SELECT CONCAT(tt.taxonomy, ':', t.slug), tt.term_taxonomy_id FROM `{p}term_taxonomy` tt "
                    f"JOIN `{p}terms` t ON t.term_id = tt.term_id "
                    "WHERE (tt.taxonomy = 'product_type' AND t.slug = 'simple') "
                    "OR (tt.taxonomy = 'product_cat' AND t.slug = 'uncategorized')"
                )
            ).all()
        )
        for tt_id in (tt["product_type:simple"], tt["product_cat:uncategorized"]):
            conn.execute(
                sa.text(
                    f"INSERT INTO `{p}term_relationships` (object_id, term_taxonomy_id, term_order) "
                    f"SELECT {pid}, :tt, 0 FROM bench_num WHERE n BETWEEN :lo AND :hi"
                ),
                {**rng, "tt": tt_id},
            )
            conn.execute(
                sa.text(f"UPDATE `{p}term_taxonomy` SET count = count + :c WHERE term_taxonomy_id = :tt"),
                {"c": skus, "tt": tt_id},
            )
        conn.execute(
            sa.text(
                f"INSERT INTO `{p}wc_product_meta_lookup` (product_id, sku, global_unique_id, `virtual`, "
                "downloadable, min_price, max_price, onsale, stock_quantity, stock_status, rating_count, "
                "average_rating, total_sales, tax_status, tax_class) "
                f"SELECT {pid}, CONCAT('BENCH-', LPAD(n, 7, '0')), '', 0, 0, 10 + n % 90 + 0.99, "
                "10 + n % 90 + 0.99, 0, :stock, 'instock', 0, 0.00, 0, 'taxable', '' "
                "FROM bench_num WHERE n BETWEEN :lo AND :hi"
            ),
            rng,
        )
        conn.commit()


def load_catalogue(
    net: BenchNetwork, skus: int, stock: int = 1_000_000, first: int = 1, workers: int = 2
) -> float:
    """Create SKUs ``first..first+skus-1`` as simple products on every blog; returns seconds taken.

    Rows are those WooCommerce writes for a simple product with managed stock (the recorded
    fixture's key order and formats, as :mod:`syncd.testnet.factory` writes them): a ``posts`` row,
    the 18 postmeta rows above, the ``product_type`` = simple and default ``product_cat``
    relationships (with term counts), and the ``wc_product_meta_lookup`` row. Everything is
    generated server-side with ``INSERT ... SELECT`` from a numbers table, postmeta with its
    secondary indexes rebuilt once at the end, ``workers`` blogs at a time. (The factory's bulk
    mode sends every row from Python: ~2,600 products/s here, 6+ minutes for 1M products.)
    Stock starts high so that the benchmarks' decrements never flip a product out of stock.
    """
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    t0 = time.monotonic()
    last = first + skus - 1
    with net.engine.connect() as conn:
        ensure_numbers(conn, last)
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS bench_meta_keys (ord INT NOT NULL PRIMARY KEY, k VARCHAR(64) NOT NULL)"
        )
        conn.exec_driver_sql("DELETE FROM bench_meta_keys")
        conn.execute(
            sa.text("INSERT INTO bench_meta_keys (ord, k) VALUES (:o, :k)"),
            [{"o": i, "k": k} for i, (k, _) in enumerate(PRODUCT_META)],
        )
        conn.commit()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for f in [pool.submit(_load_blog, net, b, first, last, stock) for b in net.blog_ids]:
            f.result()
    net.skus = max(net.skus, last)
    seconds = time.monotonic() - t0
    log(f"catalogue: {skus:,} SKUs x {len(net.blog_ids)} blogs loaded in {seconds:.1f} s")
    return seconds


# --------------------------------------------------------------------------- the daemon process


def write_config(
    net: BenchNetwork,
    path: Path,
    *,
    fields: dict[str, str] | None = None,
    capture: dict[str, Any] | None = None,
    **sync: Any,
) -> Path:
    lines = [
        "[database]",
        f'url = "{net.url}"',
        f'table_prefix = "{net.prefix}"',
        "",
        "[log]",
        'level = "warning"',
        'format = "json"',
    ]
    if sync:
        lines += ["", "[sync]"] + [f"{k} = {json.dumps(v)}" for k, v in sync.items()]
    if capture:  # [capture], e.g. {"mode": "binlog"}
        lines += ["", "[capture]"] + [f"{k} = {json.dumps(v)}" for k, v in capture.items()]
    if fields:  # [fields] group modes (issue 10), e.g. {"price": "realtime"}
        lines += ["", "[fields]"] + [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """syncd's daemon in its own process (``python -m bench.daemon_proc`` or ``python -m syncd run``).

    A separate process, so that the benchmark's writer threads and the daemon do not share one GIL:
    in one process, a writer thread waking up would delay the daemon's loop (and the reverse), which
    would measure the benchmark, not syncd.
    """

    def __init__(
        self,
        net: BenchNetwork,
        refresh: str = "stub",
        *,
        use_cli: bool = False,
        sync: dict[str, Any] | None = None,
        record: bool = True,
        fields: dict[str, str] | None = None,
        capture: dict[str, Any] | None = None,
    ) -> None:
        self.net = net
        self.dir = Path(tempfile.mkdtemp(prefix="syncd-bench-"))
        self.config = write_config(
            net, self.dir / "syncd.toml", fields=fields, capture=capture, **(sync or {})
        )
        self.events_path = self.dir / "events.json"
        self.stderr_path = self.dir / "daemon.log"
        if use_cli:
            cmd = [sys.executable, "-m", "syncd", "run", "--config", str(self.config)]
        else:
            cmd = [
                sys.executable,
                "-m",
                "bench.daemon_proc",
                "--config",
                str(self.config),
                "--refresh",
                refresh,
            ]
            if record:
                cmd += ["--events", str(self.events_path)]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self, timeout: float = 300.0) -> DaemonProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb")
        )
        self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float) -> float:
        """Until the daemon published its first heartbeat (it does so right after start-up: leader lock,
        schema, discovery, triggers, link groups). Returns the seconds it took."""
        deadline = time.monotonic() + timeout
        meta = table(self.net.prefix, "syncd_meta")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with self.net.raw() as conn, conn.cursor() as cur:
                    cur.execute(f"SELECT value FROM {meta} WHERE name = 'daemon'")
                    row = cur.fetchone()
                if row and json.loads(row[0]).get("pid") == self.proc.pid:
                    return time.monotonic() - self.started
            except pymysql.err.ProgrammingError:
                pass  # syncd_meta not created yet
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.log_tail()}")

    def rss(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the daemon process, in kB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
        return out

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM (finish the batch in flight, exit 0) and return the recorded events, if any."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.returncode not in (0, None):
            log(f"daemon exited with status {self.proc.returncode}; log tail:\n{self.log_tail()}")
        if self.events_path.exists():
            return json.loads(self.events_path.read_text())
        return {}

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def errors(self) -> list[str]:
        """Error-level log lines of the daemon (the benchmark reports them: figures with errors are suspect)."""
        out = []
        try:
            for line in self.stderr_path.read_text(errors="replace").splitlines():
                if '"level": "error"' in line or '"level":"error"' in line:
                    out.append(line[:300])
        except OSError:
            pass
        return out


# --------------------------------------------------------------------------- writers


def woo_decrease_sql(net: BenchNetwork, blog_id: int, post_id: int, qty: int = 1) -> str:
    """WooCommerce's checkout statement (wc_update_product_stock 'decrease', WP prepare of %+f)."""
    return (
        f"UPDATE {net.table(blog_id, 'postmeta')} SET meta_value = meta_value -{qty:.6f} "
        f"WHERE post_id = {int(post_id)} AND meta_key='_stock'"
    )


@dataclass
class Write:
    blog_id: int
    post_id: int
    scheduled: float  # monotonic time the write was due
    committed: float  # monotonic time the autocommit UPDATE returned
    tag: Any = None  # which phase of a benchmark it belongs to


class PacedWriters:
    """Open-loop writers: write i is due at ``t0 + i / rate`` whatever happened to write i-1.

    ``threads`` connections share the schedule round-robin. Each thread owns the SKUs with
    ``sku % threads == k``, so no two threads ever write the same product: per product, the order
    of the writes is the order of their change rows, which is how commits are matched to the
    daemon's batches.
    """

    def __init__(
        self,
        net: BenchNetwork,
        rate: float,
        duration: float,
        threads: int,
        skus: int,
        blogs: Sequence[int],
        seed: int = 1,
        tag: Any = None,
        first_sku: int = 1,
    ) -> None:
        """SKUs ``first_sku .. first_sku + skus - 1``."""
        import random

        self.net, self.rate, self.duration, self.tag = net, rate, duration, tag
        self.threads = max(1, threads)
        self.total = max(1, int(rate * duration))
        rnd = random.Random(seed)
        # The whole schedule is drawn up front (no RNG work on the hot path).
        self.plan: list[list[tuple[int, int, int]]] = [[] for _ in range(self.threads)]
        for i in range(self.total):
            k = i % self.threads
            sku = rnd.randrange(1, skus // self.threads + 1) * self.threads - k
            if sku < 1:
                sku += self.threads
            sku += first_sku - 1
            blog = rnd.choice(list(blogs))
            self.plan[k].append((i, blog, product_id(blog, sku)))
        self.writes: list[list[Write]] = [[] for _ in range(self.threads)]
        self.errors: list[str] = []
        self.late = 0

    def run(self) -> list[Write]:
        conns = [self.net.raw() for _ in range(self.threads)]
        sql = {}
        for k in range(self.threads):
            for _, blog, post in self.plan[k]:
                sql.setdefault((blog, post), woo_decrease_sql(self.net, blog, post))
        t0 = time.monotonic() + 0.2
        late = [0] * self.threads

        def worker(k: int) -> None:
            cur = conns[k].cursor()
            out = self.writes[k]
            for i, blog, post in self.plan[k]:
                due = t0 + i / self.rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.01:
                    late[k] += 1
                try:
                    cur.execute(sql[(blog, post)])
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    self.errors.append(f"{blog}/{post}: {exc}")
                    continue
                out.append(Write(blog, post, due, time.monotonic(), self.tag))

        ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for c in conns:
            c.close()
        self.late = sum(late)
        self.elapsed = max((w.committed for ws in self.writes for w in ws), default=t0) - t0
        return [w for ws in self.writes for w in ws]


def match_latencies(writes: Iterable[Write], events: dict[str, Any]) -> tuple[list[tuple[Write, float]], int]:
    """Pair every write with the commit time of the daemon batch that applied it.

    The daemon's events are ``[t_commit, [[change_id, blog, post, writes], ...]]`` per batch
    (``writes``: how many one-unit checkouts the row covers, 1 for a trigger's row; a poll's row
    can cover several, see bench.daemon_proc). Per product, the writes in commit order (one
    thread per product at a time) are the change rows in id order, each row taking as many
    writes as it covers. Returns ([(write, t_applied)], writes with no applied change).
    """
    applied: dict[tuple[int, int], list[tuple[int, float, int]]] = {}
    for t, changes in events.get("batches", []):
        for cid, blog, post, *n in changes:
            applied.setdefault((blog, post), []).append((cid, t, n[0] if n else 1))
    for v in applied.values():
        v.sort()
    by_key: dict[tuple[int, int], list[Write]] = {}
    for w in writes:
        by_key.setdefault((w.blog_id, w.post_id), []).append(w)
    pairs: list[tuple[Write, float]] = []
    unmatched = 0
    for key, ws in by_key.items():
        ws.sort(key=lambda w: w.committed)
        times = [t for _, t, n in applied.get(key, []) for _ in range(n)]
        for i, w in enumerate(ws):
            if i >= len(times):
                unmatched += 1
                continue
            pairs.append((w, times[i]))
    return pairs, unmatched


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process ``pid`` (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU seconds used by the daemon and by the server between start() and stop().

    On a machine shared with other work, wall-clock figures stretch with the load; CPU time per
    change much less so. It is reported next to every rate: capacity on an idle machine is about
    1 / (daemon CPU per change) while the daemon is the bottleneck (one thread, one core).
    """

    def __init__(self, daemon_pid: int, server_pid: int | None) -> None:
        self.pids = {"daemon": daemon_pid, "server": server_pid}
        self.t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self.t0 = {k: cpu_seconds(p) for k, p in self.pids.items() if p}
        return self

    def stop(self) -> dict[str, float]:
        self.used = {k: cpu_seconds(self.pids[k]) - v for k, v in self.t0.items()}
        return self.used

    def per_change_ms(self, changes: int) -> dict[str, float | None]:
        if not changes:
            return {f"{k}_cpu_ms_per_change": None for k in self.used}
        return {f"{k}_cpu_ms_per_change": round(v * 1000 / changes, 3) for k, v in self.used.items()}


def wait_drained(net: BenchNetwork, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if net.pending() == 0:
            return True
        time.sleep(poll)
    return False


def wait_captured(net: BenchNetwork, timeout: float, poll: float = 0.05) -> bool:
    """Binlog (or poll) capture: until no change row is queued and every blog's ``_stock`` rows
    equal the poll snapshot (every write was captured and applied). An empty queue alone says
    nothing there: the daemon writes the change rows when it compares."""
    deadline = time.monotonic() + timeout
    snap = table(net.prefix, "syncd_snapshot")
    differ = " + ".join(
        f"(SELECT COUNT(*) FROM {net.table(b, 'postmeta')} pm JOIN {snap} s ON s.blog_id = {b} "
        "AND s.meta_id = pm.meta_id WHERE pm.meta_key = '_stock' AND NOT (BINARY s.value <=> BINARY pm.meta_value))"
        for b in net.blog_ids
    )
    while time.monotonic() < deadline:
        if net.pending() == 0:
            with net.raw() as conn, conn.cursor() as cur:
                cur.execute(f"SELECT {differ}")
                if int(cur.fetchone()[0]) == 0 and net.pending() == 0:
                    return True
        time.sleep(poll)
    return False


def server_version(net: BenchNetwork) -> str:
    with net.raw() as conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return str(cur.fetchone()[0])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
