"""Finding a database server for tests and handing out fresh networks quickly.

Used by ``tests/conftest.py`` (fixtures), by benchmarks and by the demo. Order of preference for a
server: ``SYNCD_TEST_DATABASE_URL`` (any server where we may create databases), then a
testcontainers MariaDB 11 / MySQL 8.4 when a Docker engine answers a ping, then a private server
started from the local binaries (:mod:`syncd.testnet.server`).

A recorded network is built once per session in a template database and cloned per test with
``CREATE TABLE ... LIKE`` + ``INSERT ... SELECT`` (about 0.2 s for the 155-table fixture), which is
several times cheaper than re-running the dump.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine, make_url

from syncd.db import make_engine, redact_url, server_info, validate_prefix
from syncd.network import blog_prefix
from syncd.testnet import wordpress
from syncd.testnet.server import PrivateServer, ensure_server_installed

log = structlog.get_logger(__name__)

ENV_URL = "SYNCD_TEST_DATABASE_URL"
ENV_FLAVOR = "SYNCD_TEST_FLAVOR"  # mariadb | mysql (default: whatever is available, MariaDB first)
ENV_BACKEND = "SYNCD_TEST_BACKEND"  # auto | url | docker | private
ENV_SERVER_BINARY = "SYNCD_TEST_SERVER_BINARY"  # path of mysqld/mariadbd for the private server

DOCKER_IMAGES = {"mariadb": "mariadb:11", "mysql": "mysql:8.4"}


class ServerHandle(Protocol):
    flavor: str
    version: str

    def root_url(self, database: str | None = None) -> str: ...


# --------------------------------------------------------------------------- servers
class ExternalServer:
    """A server given by URL (env SYNCD_TEST_DATABASE_URL or a container): no restart/kill."""

    private = False

    def __init__(self, url: str, container: Any = None) -> None:
        self._url = make_url(url).set(drivername="mysql+pymysql")
        self.container = container
        engine = sa.create_engine(self._url.set(database=None), pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                info = server_info(conn)
        finally:
            engine.dispose()
        self.flavor: str = info["flavor"]
        self.version: str = info["version"]
        self.port = self._url.port
        self.socket = None

    def root_url(self, database: str | None = None) -> str:
        return self._url.set(database=database or None).render_as_string(hide_password=False)

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()

    def __repr__(self) -> str:
        return f"ExternalServer({redact_url(self._url)}, {self.flavor} {self.version})"


def docker_engine_answers(timeout: float = 1.0) -> bool:
    """True when a Docker engine answers ``GET /_ping`` quickly (a docker CLI alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    try:
        if host.startswith("unix://"):
            path = host[len("unix://") :]
            if not os.path.exists(path):
                return False
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(path)
        elif host.startswith(("tcp://", "http://")):
            u = urlparse(host)
            s = socket.create_connection((u.hostname or "localhost", u.port or 2375), timeout=timeout)
            s.settimeout(timeout)
        else:
            return False
        with s:
            s.sendall(request)
            reply = s.recv(64)
        return b" 200 " in reply
    except OSError:
        return False


def start_container(flavor: str) -> ExternalServer:
    """A testcontainers MariaDB 11 / MySQL 8.4; the root user gets rights to create databases."""
    try:  # only needed when Docker exists; the module moved in testcontainers 4.x
        from testcontainers.community.mysql import MySqlContainer  # noqa: PLC0415
    except ImportError:
        from testcontainers.mysql import MySqlContainer  # noqa: PLC0415

    image = DOCKER_IMAGES[flavor]
    container = MySqlContainer(
        image, username="root", root_password="syncd", password="syncd", dbname="syncd_test"
    )
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(3306)
    return ExternalServer(f"mysql+pymysql://root:syncd@{host}:{port}/", container=container)


def acquire_server(flavor: str | None = None, backend: str | None = None) -> Any:
    """Start or connect to a server following the documented order of preference.

    Returns an :class:`ExternalServer` or a started :class:`PrivateServer`; the caller stops it.
    """
    flavor = (flavor or os.environ.get(ENV_FLAVOR) or "").lower() or None
    backend = (backend or os.environ.get(ENV_BACKEND) or "auto").lower()
    url = os.environ.get(ENV_URL)
    if backend in ("auto", "url") and url:
        server = ExternalServer(url)
        log.info("test_server_external", url=redact_url(url), flavor=server.flavor, version=server.version)
        return server
    if backend == "url":
        raise RuntimeError(f"{ENV_BACKEND}=url but {ENV_URL} is not set")
    if backend in ("auto", "docker"):
        t0 = time.monotonic()
        answers = docker_engine_answers()
        log.debug("docker_ping", answers=answers, seconds=round(time.monotonic() - t0, 3))
        if answers:
            server = start_container(flavor or "mariadb")
            log.info("test_server_container", flavor=server.flavor, version=server.version)
            return server
        if backend == "docker":
            raise RuntimeError("SYNCD_TEST_BACKEND=docker but no Docker engine answers")
    # On a fresh machine (the README's test command) the server package may be missing: as root,
    # install it; otherwise ensure_server_installed raises with the exact install line.
    server = PrivateServer(binary=os.environ.get(ENV_SERVER_BINARY) or ensure_server_installed())
    if flavor and server.flavor != flavor:
        raise RuntimeError(
            f"flavour {flavor!r} requested but the local server binary {server.binary} is {server.flavor}; "
            f"set {ENV_SERVER_BINARY}, {ENV_URL}, or run with Docker"
        )
    return server.start()


# --------------------------------------------------------------------------- databases
_counter = itertools.count(1)


def unique_db_name(tag: str = "t") -> str:
    """A database name unique across processes and runs (servers may be shared)."""
    return f"syncd_{tag}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"


_IDENT_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def ident(name: str) -> str:
    """``name`` if it is a plain database/table identifier (the only thing formatted into SQL here)."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def create_database(server: ServerHandle, name: str) -> None:
    engine = sa.create_engine(server.root_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE `{ident(name)}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci"
            )
    finally:
        engine.dispose()


def drop_database(server: ServerHandle, name: str) -> None:
    """Drop a database, first killing sessions still using it (a daemon under test, a stuck lock)."""
    engine = sa.create_engine(server.root_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            ids = (
                conn.execute(
                    sa.text(
                        "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"
                    ),
                    {"db": name},
                )
                .scalars()
                .all()
            )
            for pid in ids:
                try:
                    conn.exec_driver_sql(f"KILL {int(pid)}")
                except sa.exc.DBAPIError:
                    pass  # the session ended on its own meanwhile
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{ident(name)}`")
    finally:
        engine.dispose()


def clone_database(
    server: ServerHandle,
    source: str,
    target: str,
    tables: Iterable[str] | None = None,
    filled: Iterable[str] | None = None,
) -> None:
    """Copy every table (structure, then rows of the non-empty ones) of ``source`` into new ``target``."""
    engine = sa.create_engine(server.root_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if tables is None:
                tables = _tables(conn, source)
            if filled is None:
                filled = tables
            conn.exec_driver_sql(
                f"CREATE DATABASE `{ident(target)}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci"
            )
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            # The template is never written to after it is built, so no locking is needed; NO_AUTO_VALUE_ON_ZERO
            # keeps explicit 0 ids (none today, but the dump session allowed them).
            cur.execute(
                "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO', foreign_key_checks = 0, unique_checks = 0"
            )
            for t in tables:
                cur.execute(f"CREATE TABLE `{ident(target)}`.`{ident(t)}` LIKE `{ident(source)}`.`{t}`")
            for t in filled:
                cur.execute(f"INSERT INTO `{target}`.`{ident(t)}` SELECT * FROM `{source}`.`{t}`")  # noqa: S608 - ident()-checked names
            conn.commit()
    finally:
        engine.dispose()


def _tables(conn: sa.Connection, schema: str) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            ),
            {"s": schema},
        ).scalars()
    )


def _filled_tables(conn: sa.Connection, schema: str, tables: list[str]) -> list[str]:
    # information_schema.table_rows is an estimate; ask each table (once per session).
    return [
        t
        for t in tables
        if conn.exec_driver_sql(f"SELECT 1 FROM `{ident(schema)}`.`{ident(t)}` LIMIT 1").first()  # noqa: S608
    ]


# --------------------------------------------------------------------------- networks
@dataclass
class Network:
    """A WordPress multisite network in its own database."""

    url: str
    database: str
    prefix: str
    engine: Engine
    blog_ids: tuple[int, ...]
    server: Any = None
    catalogue: dict[str, Any] | None = None
    polylang_blogs: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def blog_prefix(self, blog_id: int) -> str:
        """Table prefix of ``blog_id`` (base prefix for blog 1, base + N + '_' otherwise)."""
        return blog_prefix(self.prefix, blog_id)

    def table(self, blog_id: int, suffix: str) -> str:
        """Backquoted table name of a blog's table, e.g. ``table(2, 'postmeta')`` -> `wp_2_postmeta`."""
        from syncd.db import table  # noqa: PLC0415

        return table(self.blog_prefix(blog_id), suffix)

    def connect(self) -> sa.Connection:
        return self.engine.connect()

    def begin(self) -> Any:
        return self.engine.begin()

    def dispose(self) -> None:
        self.engine.dispose()


class NetworkFactory:
    """Hands out fresh databases and networks on one server; owns the recorded-network template."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self._template: str | None = None
        self._template_tables: list[str] = []
        self._template_filled: list[str] = []
        self._owned: list[str] = []

    # recorded network -----------------------------------------------------------
    def _ensure_template(self) -> str:
        if self._template is None:
            t0 = time.monotonic()
            name = unique_db_name("tpl")
            create_database(self.server, name)
            self._owned.append(name)
            engine = sa.create_engine(self.server.root_url(name), poolclass=sa.pool.NullPool)
            try:
                with engine.connect() as conn:
                    wordpress.load_recorded_network(conn)
                    self._template_tables = _tables(conn, name)
                    self._template_filled = _filled_tables(conn, name, self._template_tables)
            finally:
                engine.dispose()
            self._template = name
            log.info("recorded_template_built", database=name, seconds=round(time.monotonic() - t0, 2))
        return self._template

    def recorded_network(self, **engine_kw: Any) -> Network:
        """A fresh copy of the recorded WooCommerce 11 network (3 blogs, prefix wp_)."""
        template = self._ensure_template()
        name = unique_db_name("wp")
        clone_database(self.server, template, name, self._template_tables, self._template_filled)
        url = self.server.root_url(name)
        return Network(
            url=url,
            database=name,
            prefix=wordpress.RECORDED_BASE_PREFIX,
            engine=make_engine(url, **engine_kw),
            blog_ids=wordpress.RECORDED_BLOG_IDS,
            server=self.server,
            catalogue=copy.deepcopy(wordpress.load_catalogue()),
            polylang_blogs=(2, 3),
        )

    # generated network ----------------------------------------------------------
    def empty_database(self) -> str:
        name = unique_db_name("db")
        create_database(self.server, name)
        return name

    def generated_network(
        self,
        blogs: int | Iterable[int] = 3,
        prefix: str = "wp_",
        polylang_blogs: Iterable[int] = (),
        options: dict[Any, Any] | None = None,
        **kw: Any,
    ) -> Network:
        """An empty WooCommerce network of ``blogs`` blogs (a count, or explicit blog ids)."""
        validate_prefix(prefix)
        blog_ids = tuple(range(1, blogs + 1)) if isinstance(blogs, int) else tuple(blogs)
        poly = tuple(polylang_blogs)
        name = self.empty_database()
        url = self.server.root_url(name)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                wordpress.create_network(conn, prefix, blog_ids, polylang_blogs=poly, options=options, **kw)
        finally:
            engine.dispose()
        return Network(
            url=url,
            database=name,
            prefix=prefix,
            engine=make_engine(url),
            blog_ids=blog_ids,
            server=self.server,
            polylang_blogs=poly,
            options=json.loads(json.dumps(options or {}, default=str)),
        )

    def release(self, net_or_name: Network | str) -> None:
        """Dispose a network's engine and drop its database."""
        if isinstance(net_or_name, Network):
            net_or_name.dispose()
            name = net_or_name.database
        else:
            name = net_or_name
        drop_database(self.server, name)

    def close(self) -> None:
        for name in self._owned:
            try:
                drop_database(self.server, name)
            except sa.exc.DBAPIError as exc:
                log.warning("template_drop_failed", database=name, error=str(exc))
        self._owned.clear()
        self._template = None
