"""``syncd dashboard``: check where it may listen, then serve the app with uvicorn.

Listening on anything but loopback is refused unless ``[dashboard] tls_cert``/``tls_key`` are
set, or ``allow_plain_remote = true`` (then a warning in the log and on every page).
"""

from __future__ import annotations

import ipaddress
import socket

import sqlalchemy as sa
import structlog

from syncd import attribution, schema
from syncd.config import Config
from syncd.web.state import Dashboard

log = structlog.get_logger("syncd.dashboard")


class ListenRefused(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_listen(config: Config) -> bool:
    """True when plain HTTP listens beyond loopback (allowed, warned); ListenRefused when not allowed."""
    d = config.dashboard
    if is_loopback(d.host) or d.tls:
        return False
    if not d.allow_plain_remote:
        raise ListenRefused(
            f"refusing to listen on {d.listen} without TLS: set [dashboard] tls_cert and tls_key, put it behind "
            "a TLS reverse proxy on 127.0.0.1, or set allow_plain_remote = true (passwords then cross the network in clear)"
        )
    log.warning("dashboard_plain_remote", listen=d.listen)
    return True


def prepare(config: Config) -> Dashboard:
    """Tables (idempotent) and attribution triggers, then the process state."""
    plain = check_listen(config)
    dashboard = Dashboard(config, plain_remote=plain)
    with dashboard.write_engine.connect() as conn:
        schema.ensure_schema(conn, config.database.table_prefix)
        if config.capture.mode in ("poll", "binlog"):
            _drop_attribution(conn, config)
            return dashboard
        try:
            created = attribution.install(
                conn, config.database.table_prefix, dashboard.scope(conn).blogs.values()
            )
            if created:
                log.info("attribution_triggers_installed", triggers=created)
        except Exception as exc:  # noqa: BLE001 - no TRIGGER privilege: the dashboard works, sources say "not recorded"
            conn.rollback()
            log.warning("attribution_triggers_not_installed", error=type(exc).__name__)
    return dashboard


def _drop_attribution(conn: sa.Connection, config: Config) -> None:
    """Poll and binlog capture write change rows on syncd's own connection: attribution could match
    none of them (sources say "not recorded"), and its triggers would only cost every shop write
    on postmeta and order item meta some time. Dropped when they exist."""
    try:
        dropped = attribution.uninstall(conn, config.database.table_prefix)
        conn.commit()
    except Exception as exc:  # noqa: BLE001 - no TRIGGER privilege: left, and said
        conn.rollback()
        log.warning("attribution_triggers_not_removed", error=type(exc).__name__)
        return
    if dropped:
        log.info("attribution_triggers_removed", triggers=dropped, capture=config.capture.mode)


def serve(config: Config) -> int:
    import uvicorn

    from syncd.web.app import build_app

    dashboard = prepare(config)
    d = config.dashboard
    log.info("dashboard_start", listen=d.listen, tls=d.tls)
    try:
        uvicorn.run(
            build_app(dashboard),
            host=d.host,
            port=d.port,
            ssl_certfile=d.tls_cert,
            ssl_keyfile=d.tls_key,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            h11_max_incomplete_event_size=16 * 1024,
        )
    finally:
        dashboard.close()
    return 0
