"""Shared fixtures: a real MariaDB/MySQL server, fresh databases, WordPress networks.

Where the server comes from (first that applies):
1. ``SYNCD_TEST_DATABASE_URL`` - any server URL with rights to create and drop databases;
2. a testcontainers MariaDB 11 / MySQL 8.4, when a Docker engine answers a ping (< 1 s check);
3. a private server started from the local ``mariadbd``/``mysqld`` (syncd.testnet.server).

Flavour: ``--db-flavor=mariadb|mysql`` or ``SYNCD_TEST_FLAVOR``; backend: ``SYNCD_TEST_BACKEND``
(auto|url|docker|private). Tests never use SQLite or mocked databases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from syncd.testnet.harness import Network, NetworkFactory, acquire_server


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("syncd database")
    group.addoption(
        "--db-flavor",
        choices=("mariadb", "mysql"),
        default=None,
        help="server flavour for integration tests (default: env SYNCD_TEST_FLAVOR, else what is available)",
    )
    group.addoption(
        "--db-backend",
        choices=("auto", "url", "docker", "private"),
        default=None,
        help="where the test server comes from (default: env SYNCD_TEST_BACKEND, else auto)",
    )


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """A test that runs a command's main() configures logging for the process (e.g. level
    'warning' from its config file); the next test's capture_logs would then miss info events.
    Every test starts from the configuration the one before it found."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def mysql_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The session's server: ``.root_url(database=None)``, ``.flavor``, ``.version``, ``.private``;
    when private also ``.restart()``, ``.kill()``, ``.shutdown()``, ``.socket``, ``.port``."""
    server = acquire_server(
        flavor=request.config.getoption("--db-flavor"),
        backend=request.config.getoption("--db-backend"),
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def network_factory(mysql_server: Any) -> Iterator[NetworkFactory]:
    factory = NetworkFactory(mysql_server)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def private_server(mysql_server: Any) -> Any:
    """The session server, or skip when it cannot be restarted/killed (URL or container backends)."""
    if not getattr(mysql_server, "private", False):
        pytest.skip("needs the private test server (restart/kill); not available with this backend")
    yield mysql_server
    # A fault test may leave the server down; bring it back for the tests after it.
    if not mysql_server.running:
        mysql_server.restart()


@pytest.fixture
def db_url(network_factory: NetworkFactory) -> Iterator[str]:
    """URL of a fresh, empty, uniquely named database (dropped after the test)."""
    name = network_factory.empty_database()
    try:
        yield network_factory.server.root_url(name)
    finally:
        network_factory.release(name)


@pytest.fixture
def db_engine(db_url: str) -> Iterator[sa.Engine]:
    """A syncd engine (syncd.db.make_engine) on the fresh database of ``db_url``."""
    from syncd.db import make_engine

    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def wp_network(network_factory: NetworkFactory) -> Iterator[Network]:
    """A fresh copy of the recorded WooCommerce 11 network (3 blogs, prefix wp_, baseline catalogue):
    ``.url``, ``.prefix``, ``.engine``, ``.blog_prefix(id)``, ``.catalogue``, ``.blog_ids``, ``.database``."""
    net = network_factory.recorded_network()
    try:
        yield net
    finally:
        network_factory.release(net)


@pytest.fixture
def make_network(network_factory: NetworkFactory) -> Iterator[Callable[..., Network]]:
    """Factory ``make_network(blogs=3, prefix='wp_', polylang_blogs=(), options=None)`` -> Network.

    An empty WooCommerce network (no products) generated from the templates; ``options`` is one
    dict for every blog or ``{blog_id: {...}}``. Every network made is dropped after the test.
    """
    made: list[Network] = []

    def _make(
        blogs: int = 3,
        prefix: str = "wp_",
        polylang_blogs: tuple[int, ...] | list[int] = (),
        options: dict[Any, Any] | None = None,
        **kw: Any,
    ) -> Network:
        net = network_factory.generated_network(blogs, prefix, polylang_blogs, options, **kw)
        made.append(net)
        return net

    try:
        yield _make
    finally:
        for net in made:
            network_factory.release(net)


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("SYNCD_TEST_DATABASE_URL")
    where = "SYNCD_TEST_DATABASE_URL" if url else "docker if an engine answers, else private local server"
    return f"syncd test database: {where}"
