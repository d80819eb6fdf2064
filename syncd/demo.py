"""``syncd demo``: a throwaway WooCommerce multisite on a private MariaDB, with syncd pointed at it.

Steps, each a small function so the demo can grow (the live-sale part is added on top):
:func:`start_demo_server` -> :func:`build_demo_network` -> :func:`write_demo_config` ->
:func:`run_demo_check`. Nothing here touches a system database server: the server runs from a
temporary directory on its own socket and port, and is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from syncd.testnet import wordpress as wp
from syncd.testnet.factory import ProductFactory, Variation
from syncd.testnet.server import PrivateServer, ServerNotInstalled, ensure_server_installed

log = structlog.get_logger(__name__)

DEMO_DATABASE = "syncd_demo"
DEMO_PREFIX = "wp_"
DEMO_BLOGS = (1, 2, 3)
DEMO_POLYLANG_BLOGS = (3,)


@dataclass
class DemoNetwork:
    """What the demo built: ids per blog by (sku, language)."""

    url: str
    prefix: str
    products: dict[int, dict[tuple[str, str | None], int]]


#: Test hook: ``SYNCD_DEMO_PAUSE=<moment>`` makes the demo print ``demo_paused <moment>`` on stderr
#: and wait there for a signal, so the interrupt tests stop it at an exact start-up moment.
ENV_PAUSE = "SYNCD_DEMO_PAUSE"
MOMENTS = ("datadir", "initialising", "spawned", "database", "network", "daemon")


def _moment(name: str) -> None:
    if os.environ.get(ENV_PAUSE) == name:
        print(f"demo_paused {name}", file=sys.stderr, flush=True)
        while True:
            signal.pause()  # the signal handler raises: the interrupt path under test


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def start_demo_server(server: PrivateServer) -> PrivateServer:
    """Start the private server; with ``keep`` (not tied to this process) root gets a random password."""
    server.on_step = _moment
    server.start()
    if not server.die_with_parent:
        server.set_root_password(secrets.token_urlsafe(18))
    return server


def create_demo_database(server: PrivateServer, name: str = DEMO_DATABASE) -> str:
    """Create the demo database and return its URL."""
    engine = sa.create_engine(server.root_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE `{wp.validate_prefix(name)}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci"
            )
    finally:
        engine.dispose()
    return server.root_url(name)


def build_demo_network(engine: sa.Engine, prefix: str = DEMO_PREFIX) -> DemoNetwork:
    """A 3-blog WooCommerce network: shared SKUs, a variable product, one Polylang (en/fr) blog.

    * blog 1 "Main shop": TSHIRT-RED, MUG, HOODIE (S/M/L own stock), CAP (stock on the parent), BOOK
    * blog 2 "Outlet" (hides out-of-stock items): TSHIRT-RED, MUG, HOODIE, STICKER (unmanaged), POSTER (0)
    * blog 3 "Boutique" (Polylang en+fr, out-of-stock threshold 2): TSHIRT-RED, BOOK en + Livre fr
    """
    with engine.connect() as conn:
        wp.create_network(
            conn,
            prefix,
            DEMO_BLOGS,
            domain="demo.test",
            polylang_blogs=DEMO_POLYLANG_BLOGS,
            options={
                2: {"woocommerce_hide_out_of_stock_items": "yes", "blogname": "Outlet"},
                3: {"woocommerce_notify_no_stock_amount": "2", "blogname": "Boutique"},
                1: {"blogname": "Main shop"},
            },
        )
        products: dict[int, dict[tuple[str, str | None], int]] = {}
        hoodie = [
            Variation("HOODIE-S", "s", "39.00", stock=5),
            Variation("HOODIE-M", "m", "39.00", stock=3),
            Variation("HOODIE-L", "l", "42.00", stock=8),
        ]
        with ProductFactory(conn, wp.blog_prefix(prefix, 1)) as f:
            f.attribute("size", "Size", [("S", "s"), ("M", "m"), ("L", "l")])
            f.attribute("color", "Color", [("Black", "black"), ("White", "white")])
            clothing = f.category("Clothing", "clothing")
            f.simple("TSHIRT-RED", "T-shirt red", stock=10, price="19.99", categories=[clothing])
            f.simple("MUG", "Mug", stock=3, price="9.50")
            f.variable("HOODIE", "Hoodie", attribute="pa_size", variations=hoodie, categories=[clothing])
            f.variable(
                "CAP",
                "Cap",
                attribute="pa_color",
                manage_stock=True,
                stock=12,
                variations=[
                    Variation("CAP-BLACK", "black", "15.00", manage_stock=False),
                    Variation("CAP-WHITE", "white", "15.00", manage_stock=False),
                ],
            )
            f.simple("BOOK", "Book", stock=7, price="12.00")
            products[1] = f.skus
        with ProductFactory(conn, wp.blog_prefix(prefix, 2)) as f:
            f.attribute("size", "Size", [("S", "s"), ("M", "m"), ("L", "l")])
            f.simple("MUG", "Mug", stock=3, price="8.50")
            f.simple("TSHIRT-RED", "T-shirt red", stock=10, price="17.99")
            f.variable("HOODIE", "Hoodie", attribute="pa_size", variations=hoodie)
            f.simple("STICKER", "Sticker", manage_stock=False, price="1.50")
            f.simple("POSTER", "Poster", stock=0, price="5.00")
            products[2] = f.skus
        with ProductFactory(conn, wp.blog_prefix(prefix, 3)) as f:
            f.simple("TSHIRT-RED", "T-shirt red", stock=10, price="19.99", language="en")
            en = f.simple("BOOK", "Book", stock=7, price="12.00", language="en")
            fr = f.simple("BOOK", "Livre", stock=7, price="12.00", language="fr", slug="livre")
            f.link_translations({"en": en, "fr": fr})
            products[3] = f.skus
    return DemoNetwork(url=engine.url.render_as_string(hide_password=False), prefix=prefix, products=products)


def write_demo_config(path: str | os.PathLike[str], url: str, prefix: str = DEMO_PREFIX) -> Path:
    """Write a syncd configuration file for the demo network; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch(mode=0o600)
    p.chmod(0o600)  # it may hold root's password (--keep)
    p.write_text(
        "# syncd configuration written by `syncd demo` for its throwaway network.\n"
        "[database]\n"
        f'url = "{url}"\n'
        f'table_prefix = "{prefix}"\n',
        encoding="utf-8",
    )
    return p


def run_demo_check(config_path: Path, out: TextIO = sys.stdout) -> int:
    """Run ``syncd check`` on the demo config: the library function if present, else the console script."""
    try:
        from syncd.check import run_check
        from syncd.config import load_config
    except ImportError:
        exe = shutil.which("syncd")
        if exe is None:
            out.write(
                "syncd check is not available yet (neither syncd.check nor a `syncd` script); skipped\n"
            )
            return 0
        return subprocess.run([exe, "--config", str(config_path), "check"], check=False).returncode
    return run_check(load_config(config_path), out=out)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="syncd demo", description="Run syncd on a throwaway demo network.")
    parser.add_argument(
        "--keep", action="store_true", help="leave the server running and print how to connect"
    )
    parser.add_argument(
        "--config-out", metavar="PATH", help="where to write the demo config (default: server dir)"
    )
    parser.add_argument("--base-dir", metavar="DIR", help="parent directory of the server's temp dir")
    parser.add_argument("--check-only", action="store_true", help="stop after `syncd check` (no live sync)")
    return parser.parse_args(list(argv or []))


def main(args: argparse.Namespace | Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Entry point of ``syncd demo``: accepts the CLI's Namespace (``demo_args``) or an argv list."""
    argv = getattr(args, "demo_args", None) if isinstance(args, argparse.Namespace) else args
    opts = _parse(argv)
    return run_demo(opts, out=out)


def run_demo(opts: Any, out: TextIO = sys.stdout) -> int:
    """The demo, stopped cleanly whatever the moment: Ctrl-C, SIGTERM and SIGHUP stop the server
    and remove its data (unless ``--keep``), then exit 130 without a traceback."""
    keep = bool(opts.keep)
    try:
        binary = ensure_server_installed()
    except ServerNotInstalled as exc:
        print(f"syncd demo: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    server = PrivateServer(binary=binary, base_dir=opts.base_dir, die_with_parent=not keep)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    interrupted = finished = False
    try:
        code = _run(server, opts, keep, out)
        finished = True
        return code
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if not (keep and finished):  # --keep keeps a demo that ran, never a broken or interrupted one
            server.discard()
        if interrupted:
            print("syncd demo: interrupted; the demo server is stopped and its data removed", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(server: PrivateServer, opts: Any, keep: bool, out: TextIO) -> int:
    start_demo_server(server)
    out.write(f"Started private {server.version} on 127.0.0.1:{server.port} (socket {server.socket})\n")
    url = create_demo_database(server)
    _moment("database")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        net = build_demo_network(engine)
    finally:
        engine.dispose()
    _moment("network")
    out.write(f"Built a 3-blog WooCommerce network in database {DEMO_DATABASE} (prefix {DEMO_PREFIX}):\n")
    for blog_id, prods in net.products.items():
        items = ", ".join(f"{sku}@{lang}" if lang else sku for sku, lang in prods)
        out.write(f"  blog {blog_id} ({wp.blog_prefix(DEMO_PREFIX, blog_id)}): {items}\n")
    assert server.tmp is not None
    config_path = write_demo_config(opts.config_out or server.tmp / "syncd-demo.toml", url)
    out.write(f"Wrote {config_path}\n\n$ syncd --config {config_path} check\n")
    out.flush()
    code = run_demo_check(config_path, out)
    out.write(f"\nsyncd check exited with status {code}\n")
    if code == 0 and not getattr(opts, "check_only", False):
        code = run_live_sync(config_path, out)
    if keep:
        pid = server.proc.pid if server.proc else "?"
        out.write(
            "\nThe demo server keeps running (root has a random password, written in the config file):\n"
            f"  mariadb --no-defaults -S {server.socket} -u root -p'{server.password}' {DEMO_DATABASE}\n"
            f"  syncd --config {config_path} check\n"
            f"  stop it: kill {pid} && while kill -0 {pid} 2>/dev/null; do sleep 0.2; done && rm -rf {server.tmp}\n"
        )
    return code


# --------------------------------------------------------------------------- live sync
DEMO_SKUS = ("TSHIRT-RED", "MUG", "HOODIE-M")


def _stock_table(
    engine: sa.Engine, skus: Sequence[str], prefix: str = DEMO_PREFIX
) -> dict[str, dict[int, tuple[str, str]]]:
    """sku -> blog -> (_stock, _stock_status) as WooCommerce would show it (SKU lookup per blog)."""
    out: dict[str, dict[int, tuple[str, str]]] = {sku: {} for sku in skus}
    with engine.connect() as conn:
        for blog_id in (1, 2, 3):
            p = wp.blog_prefix(prefix, blog_id)
            for sku in skus:
                row = conn.execute(
                    sa.text(
                        f"SELECT s.meta_value, st.meta_value FROM `{p}postmeta` k "
                        f"JOIN `{p}postmeta` s ON s.post_id = k.post_id AND s.meta_key = '_stock' "
                        f"JOIN `{p}postmeta` st ON st.post_id = k.post_id AND st.meta_key = '_stock_status' "
                        "WHERE k.meta_key = '_sku' AND k.meta_value = :sku LIMIT 1"
                    ),
                    {"sku": sku},
                ).first()
                if row is not None:
                    out[sku][blog_id] = (row[0], row[1])
    return out


def _print_table(out: TextIO, title: str, table: dict[str, dict[int, tuple[str, str]]]) -> None:
    out.write(f"\n{title}\n  {'SKU':<12}" + "".join(f"{'blog ' + str(b):<22}" for b in (1, 2, 3)) + "\n")
    for sku, per_blog in table.items():
        cells = "".join(
            f"{(per_blog[b][0] + ' ' + per_blog[b][1]) if b in per_blog else '-':<22}" for b in (1, 2, 3)
        )
        out.write(f"  {sku:<12}{cells}\n")
    out.flush()


def _woo_sale(engine: sa.Engine, blog_id: int, sku: str, qty: int, prefix: str = DEMO_PREFIX) -> None:
    """What WooCommerce's checkout does to stock: one autocommit relative UPDATE."""
    p = wp.blog_prefix(prefix, blog_id)
    with engine.connect() as conn:
        post_id = conn.execute(
            sa.text(f"SELECT post_id FROM `{p}postmeta` WHERE meta_key = '_sku' AND meta_value = :s LIMIT 1"),
            {"s": sku},
        ).scalar_one()
        conn.execute(
            sa.text(
                f"UPDATE `{p}postmeta` SET meta_value = meta_value - :q WHERE post_id = :id AND meta_key = '_stock'"
            ),
            {"q": qty, "id": post_id},
        )
        conn.commit()


def _wait_until(engine: sa.Engine, want: dict[str, str], timeout: float = 10.0) -> float:
    """Seconds until every blog shows the wanted quantity for each SKU (or the timeout)."""
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        table = _stock_table(engine, list(want))
        if all(
            len(per) > 0 and all(float(v[0]) == float(want[sku]) for v in per.values())
            for sku, per in table.items()
        ):
            return time.monotonic() - t0
        time.sleep(0.002)
    return -1.0


def run_live_sync(config_path: Path, out: TextIO = sys.stdout) -> int:
    """Start the daemon on the demo network and show sales on one blog reaching the others."""
    import threading

    from syncd.config import load_config
    from syncd.daemon import Daemon
    from syncd.history import main as history_main
    from syncd.log import configure_logging

    configure_logging("warning", "console")  # keep the demo's own output readable
    config = load_config(config_path)
    engine = config.database.make_engine()
    daemon = Daemon(config, instance="demo")
    thread = threading.Thread(target=daemon.run, name="syncd-daemon", daemon=True)
    out.write(f"\n$ syncd --config {config_path} run     (in the background)\n")
    thread.start()
    if not daemon.ready.wait(30):
        out.write("the daemon did not start within 30 s\n")
        daemon.request_stop()
        return 1
    out.write("daemon ready: triggers installed on every blog, link groups built\n")
    try:
        _moment("daemon")
        _print_table(out, "Stock before (quantity, status):", _stock_table(engine, DEMO_SKUS))
        out.write(
            "\nA customer buys 3 x TSHIRT-RED on blog 1 (WooCommerce: meta_value = meta_value - 3) ...\n"
        )
        _woo_sale(engine, 1, "TSHIRT-RED", 3)
        took = _wait_until(engine, {"TSHIRT-RED": "7"})
        out.write(f"  every blog shows 7 after {took * 1000:.1f} ms\n")
        out.write("\nTwo customers buy the last MUGs at the same time, 2 on blog 2 and 1 on blog 1 ...\n")
        both = [threading.Thread(target=_woo_sale, args=(engine, b, "MUG", q)) for b, q in ((2, 2), (1, 1))]
        for t in both:
            t.start()
        for t in both:
            t.join()
        took = _wait_until(engine, {"MUG": "0"})
        out.write(f"  both sales count: every blog shows 0, out of stock, after {took * 1000:.1f} ms\n")
        out.write("\nThe last HOODIE-M sells on blog 2 ...\n")
        _woo_sale(engine, 2, "HOODIE-M", 3)
        took = _wait_until(engine, {"HOODIE-M": "0"})
        out.write(f"  every blog shows 0 after {took * 1000:.1f} ms\n")
        _print_table(out, "Stock after (quantity, status):", _stock_table(engine, DEMO_SKUS))
        out.write("\n")
        for sku in DEMO_SKUS:
            out.write(f"$ syncd --config {config_path} history {sku}\n")
            history_main(config, argparse.Namespace(sku=sku, since=None, limit=0, lang=None, json=False), out)
        ok = all(
            _wait_until(engine, {s: v}, timeout=0.1) >= 0 for s, v in (("TSHIRT-RED", "7"), ("MUG", "0"))
        )
        return 0 if ok else 1
    finally:
        daemon.request_stop()
        thread.join(15)
        engine.dispose()
        out.write("\ndaemon stopped (SIGTERM semantics: the batch in flight finished, exit 0)\n")
