"""``syncd demo``: a throwaway WooCommerce multisite on a private MariaDB, with syncd pointed at it.

Steps, each a small function so the demo can grow (the live-sale part is added on top):
:func:`start_demo_server` -> :func:`build_demo_network` -> :func:`write_demo_config` ->
:func:`run_demo_check`. Nothing here touches a system database server: the server runs from a
temporary directory on its own socket and port, and is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def start_demo_server(base_dir: str | None = None, keep: bool = False) -> PrivateServer:
    """Make sure a server binary exists (installing MariaDB as root if needed) and start a private server.

    With ``keep`` the server survives this process (otherwise it dies with it, even on a crash).
    """
    binary = ensure_server_installed()
    return PrivateServer(binary=binary, base_dir=base_dir, die_with_parent=not keep).start()


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
    return parser.parse_args(list(argv or []))


def main(args: argparse.Namespace | Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Entry point of ``syncd demo``: accepts the CLI's Namespace (``demo_args``) or an argv list."""
    argv = getattr(args, "demo_args", None) if isinstance(args, argparse.Namespace) else args
    opts = _parse(argv)
    return run_demo(opts, out=out)


def run_demo(opts: Any, out: TextIO = sys.stdout) -> int:
    try:
        server = start_demo_server(opts.base_dir, keep=bool(opts.keep))
    except ServerNotInstalled as exc:
        out.write(f"{exc}\n")
        return 69  # EX_UNAVAILABLE
    keep = bool(opts.keep)
    try:
        out.write(f"Started private {server.version} on 127.0.0.1:{server.port} (socket {server.socket})\n")
        url = create_demo_database(server)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            net = build_demo_network(engine)
        finally:
            engine.dispose()
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
        if keep:
            out.write(
                "\nThe demo server keeps running:\n"
                f"  mariadb --no-defaults -S {server.socket} -u root {DEMO_DATABASE}\n"
                f"  syncd --config {config_path} check\n"
                f"  stop it: kill {server.proc.pid if server.proc else '?'} && rm -rf {server.tmp}\n"
            )
        return code
    finally:
        if not keep:
            server.stop()
