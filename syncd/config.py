"""Configuration: one TOML file plus environment overrides, parsed into frozen dataclasses.

Where the file comes from, in order: ``--config PATH``, the environment variable ``SYNCD_CONFIG``,
then ``/etc/syncd/syncd.toml``. Secrets can stay out of the file: ``SYNCD_DATABASE_URL`` replaces
``database.url`` and ``SYNCD_DATABASE_PASSWORD`` injects only the password into it. Under systemd,
``LoadCredential=db-password:/etc/syncd/db-password`` puts the password in
``$CREDENTIALS_DIRECTORY/db-password``, which is read when ``SYNCD_DATABASE_PASSWORD`` is not set
(the password never appears on a command line or in the unit's environment).

Every value is checked here, once, so the rest of syncd can trust it. A bad value fails with a
:class:`ConfigError` that names the file, the key (``sync.batch_size``) and the form expected;
unknown sections and keys are errors too, because a misspelt key silently falling back to its
default is the kind of mistake nobody notices until stock goes wrong.

This module does no I/O besides reading the file: no logging, and no connection is opened here
(:meth:`DatabaseConfig.make_engine` only builds the engine).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, Engine, make_url

from syncd.db import PrefixError, SessionSettings, make_engine, redact_url, validate_prefix

DEFAULT_CONFIG_PATH = "/etc/syncd/syncd.toml"
ENV_CONFIG = "SYNCD_CONFIG"
ENV_DATABASE_URL = "SYNCD_DATABASE_URL"
ENV_DATABASE_PASSWORD = "SYNCD_DATABASE_PASSWORD"
ENV_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
CREDENTIAL_PASSWORD = "db-password"

CAPTURE_MODES = ("auto", "trigger", "poll", "binlog")
#: capture.poll_interval's default in binlog capture, where the full comparison is the safety net.
BINLOG_FULL_POLL_S = 60.0
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "console", "json", "journal")


class ConfigError(ValueError):
    """The configuration is missing or invalid. ``key`` is the dotted key at fault, if any."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        self.key = key
        self.source = source
        self.detail = message
        parts = [p for p in (source, key) if p]
        super().__init__(": ".join([*parts, message]))


# --------------------------------------------------------------------------- the dataclasses
@dataclass(frozen=True)
class DatabaseConfig:
    url: str = field(repr=False)  # holds the password: never in repr(), logs use Config.redacted()
    table_prefix: str = "wp_"
    lock_wait_timeout: int = 1
    connect_timeout: float = 5.0
    #: Let the apply connections send several statements per round trip (syncd.db.run_many).
    #: Off only for a proxy in front of the server that refuses multi-statements.
    multi_statements: bool = True

    def make_engine(self, *, apply_marker: bool = False, **kw: Any) -> Engine:
        """An engine for this database with syncd's session settings (see :func:`syncd.db.make_engine`).
        ``multi_statements=True`` is honoured only when ``database.multi_statements`` allows it."""
        settings = SessionSettings(lock_wait_timeout=self.lock_wait_timeout, apply_marker=apply_marker)
        connect_args = {"connect_timeout": self.connect_timeout, **kw.pop("connect_args", {})}
        kw["multi_statements"] = bool(kw.get("multi_statements", False)) and self.multi_statements
        return make_engine(self.url, settings, connect_args=connect_args, **kw)

    @property
    def sa_url(self) -> URL:
        return make_url(self.url)

    @property
    def user(self) -> str:
        return self.sa_url.username or ""

    @property
    def server(self) -> str:
        """Where the server is, for messages: host:port or the unix socket path."""
        u = self.sa_url
        sock = u.query.get("unix_socket")
        if sock:
            return str(sock if isinstance(sock, str) else sock[0])
        return f"{u.host or 'localhost'}:{u.port or 3306}"

    @property
    def database(self) -> str:
        return self.sa_url.database or ""


@dataclass(frozen=True)
class CaptureConfig:
    mode: str = "auto"
    poll_interval: float = 1.0


@dataclass(frozen=True)
class SyncConfig:
    batch_size: int = 500
    idle_wait: float = 0.01
    exclude_skus: tuple[str, ...] = ()
    discovery_interval: float = 30.0
    install_triggers: bool = True
    propagate_sku_renames: bool = True
    #: A product joins its group (and a member's unsafe copy is finished) only once no change of
    #: it has been captured for this long: WooCommerce writes a product in many statements.
    settle_seconds: float = 3.0

    def sku_excluded(self, sku: str) -> bool:
        """True when ``sku`` equals one of ``exclude_skus`` or matches one as a glob (case-sensitive)."""
        return any(sku == pat or fnmatch.fnmatchcase(sku, pat) for pat in self.exclude_skus)


@dataclass(frozen=True)
class HistoryConfig:
    retention_days: int = 30


#: ``[reconcile] authority``: whose values reconcile writes to the other members of a group.
AUTHORITY_RE = re.compile(r"^(lowest|latest|blog:([1-9][0-9]{0,9}))$")


@dataclass(frozen=True)
class ReconcileConfig:
    """``[reconcile]``: ``authority`` is "lowest" (the member with the lowest quantity: never
    oversells, the default), "latest" (the member changed most recently) or "blog:N" (a master blog).
    Registers (manage stock, backorders, low-stock amount) follow the same member."""

    authority: str = "lowest"

    @property
    def authority_blog(self) -> int | None:
        m = AUTHORITY_RE.match(self.authority)
        return int(m.group(2)) if m and m.group(2) else None


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics] listen = "127.0.0.1:9187"``: the daemon's Prometheus endpoint ("" = off, the default)."""

    listen: str = ""


@dataclass(frozen=True)
class DashboardConfig:
    """``[dashboard]`` (``syncd dashboard``): where it listens, TLS, and whether plain HTTP may
    listen beyond loopback (refused unless TLS is set or ``allow_plain_remote = true``)."""

    listen: str = "127.0.0.1:8765"
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_plain_remote: bool = False

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def split_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8765' / '[::1]:8765' / 'localhost:8765' -> (host, port); ValueError otherwise."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([A-Za-z0-9.\-]+):([0-9]{1,5})", text)
    if not m:
        raise ValueError(text)
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class BlogSettings:
    """``[blogs.N]``: what syncd cannot read from the database about one blog."""

    language: str | None = None  # link language of a blog without Polylang (None: from its locale)
    translations_share_stock: bool | None = None  # None: on when Polylang for WooCommerce is active


@dataclass(frozen=True)
class BlogsConfig:
    include: tuple[int, ...] | None = None  # None = every blog
    exclude: tuple[int, ...] = ()
    settings: dict[int, BlogSettings] = field(default_factory=dict)  # [blogs.N] tables by blog id

    def selects(self, blog_id: int) -> bool:
        """Whether the configuration lets syncd work on ``blog_id`` (exclude wins over include)."""
        if blog_id in self.exclude:
            return False
        return self.include is None or blog_id in self.include

    def for_blog(self, blog_id: int) -> BlogSettings:
        return self.settings.get(blog_id, _NO_SETTINGS)


_NO_SETTINGS = BlogSettings()
#: A link language: a Polylang language slug ('en', 'fr', 'pt-br', 'zh-hans'); compared lowercased.
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:[-_][a-z0-9]{2,8})*$")


#: ``[fields.terms] missing``: what to do with a term slug the target blog lacks.
MISSING_TERMS = ("skip", "create")
#: ``[fields.schedule]`` defaults: every 15 minutes, the most recently modified member wins.
DEFAULT_FIELDS_CRON = "*/15 * * * *"


@dataclass(frozen=True)
class FieldsConfig:
    """``[fields]`` (product data beyond stock, issue 10): the mode of each field group (every
    group of :data:`syncd.fields.group.GROUPS` present, "off" unless named), when the scheduled
    groups run and whose values win, which blogs take part in a group (an empty tuple: every
    blog), whether a price group may span blogs whose currency settings differ, and what to do
    with a term slug missing on a target blog."""

    modes: dict[str, str] = field(default_factory=lambda: _default_modes())
    schedule_cron: str = DEFAULT_FIELDS_CRON
    authority: str = "newest"  # "newest" or a blog id as text
    blogs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    allow_mismatch: dict[str, bool] = field(default_factory=dict)
    missing_terms: str = "skip"

    @property
    def authority_blog(self) -> int | None:
        """The configured authority blog, or None for "newest"."""
        return None if self.authority == "newest" else int(self.authority)

    def groups_in(self, mode: str) -> tuple[str, ...]:
        """The groups set to ``mode``, in documented order."""
        return tuple(name for name, m in self.modes.items() if m == mode)

    def blogs_for(self, group: str) -> tuple[int, ...]:
        """The blogs that take part in ``group`` (empty: every blog)."""
        return self.blogs.get(group, ())

    def takes_part(self, group: str, blog_id: int) -> bool:
        allowed = self.blogs_for(group)
        return not allowed or blog_id in allowed


def _default_modes() -> dict[str, str]:
    from syncd.fields.group import GROUPS

    return dict.fromkeys(GROUPS, "off")


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    log: LogConfig = field(default_factory=LogConfig)
    blogs: BlogsConfig = field(default_factory=BlogsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    source: str | None = None  # the file this came from (None: built in code / environment only)
    #: --log-level/--log-format given on the command line (None: not given): a configuration
    #: reload (SIGHUP) re-reads the file and applies these again, so the command line keeps winning.
    log_overrides: tuple[str | None, str | None] = (None, None)

    def redacted(self) -> dict[str, Any]:
        """Everything as plain data with the database password removed: safe for the start-up log line."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "log_overrides":
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out["database"]["url"] = redact_url(self.database.url)
        for section in out.values():
            if isinstance(section, dict):
                for k, v in section.items():
                    if isinstance(v, tuple):
                        section[k] = list(v)
        return out

    def with_log(self, level: str | None = None, fmt: str | None = None) -> Config:
        """A copy with command-line log overrides applied (validated like the file's values)."""
        data = {
            "level": self.log.level if level is None else level,
            "format": self.log.format if fmt is None else fmt,
        }
        return dataclasses.replace(self, log=_parse_log(data, "log"), log_overrides=(level, fmt))


# --------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read and validate the configuration (file chosen as described in the module docstring)."""
    explicit = path if path is not None else env.get(ENV_CONFIG) or None
    file = Path(explicit) if explicit is not None else Path(DEFAULT_CONFIG_PATH)
    source = str(file)
    if not file.exists():
        if explicit is None and env.get(ENV_DATABASE_URL):
            # No file at the default place, but the environment says where the database is: run on
            # defaults (containers and quick tries need no file at all).
            return parse_config({}, env=env, source=None)
        if explicit is None:
            hint = f" (give --config PATH, set {ENV_CONFIG}, or set {ENV_DATABASE_URL} to run without a file)"
        else:
            hint = ""
        raise ConfigError(f"configuration file not found{hint}", source=source)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    return parse_config(data, env=env, source=source)


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str | None = None
) -> Config:
    """Validate an already-parsed TOML document (and the environment overrides) into a :class:`Config`."""
    env = {} if env is None else env
    try:
        unknown = sorted(set(data) - set(_SECTIONS))
        if unknown:
            raise ConfigError(
                f"unknown section [{unknown[0]}]; known sections: {', '.join(_SECTIONS)}", key=unknown[0]
            )
        sections: dict[str, Any] = {}
        for name, parser in _SECTIONS.items():
            raw = data.get(name, {})
            if not isinstance(raw, Mapping):
                raise ConfigError(f"expected a table [{name}], got {_show(raw)}", key=name)
            sections[name] = parser(raw, env) if name == "database" else parser(raw, name)
        return Config(**sections, source=source)
    except ConfigError as exc:
        if exc.source is None and source is not None:
            raise ConfigError(exc.detail, key=exc.key, source=source) from None
        raise


def config_for(url: str, table_prefix: str = "wp_", **sections: Mapping[str, Any]) -> Config:
    """A validated Config built in code (tests, demo): ``config_for(url, sync={"batch_size": 10})``."""
    data: dict[str, Any] = {name: dict(values) for name, values in sections.items()}
    data.setdefault("database", {})
    data["database"] = {"url": url, "table_prefix": table_prefix, **data["database"]}
    return parse_config(data, env={})


# --------------------------------------------------------------------------- sections
def _parse_database(raw: Mapping[str, Any], env: Mapping[str, str]) -> DatabaseConfig:
    _check_keys(
        "database", raw, ("url", "table_prefix", "lock_wait_timeout", "connect_timeout", "multi_statements")
    )
    url_text = env.get(ENV_DATABASE_URL) or raw.get("url")
    key = "database.url" if not env.get(ENV_DATABASE_URL) else ENV_DATABASE_URL
    if url_text is None:
        raise ConfigError(
            f"is required: a SQLAlchemy URL such as mysql+pymysql://syncd:PASSWORD@127.0.0.1:3306/wordpress "
            f"(or set {ENV_DATABASE_URL})",
            key="database.url",
        )
    if not isinstance(url_text, str) or not url_text.strip():
        raise ConfigError(f"expected a URL string, got {_show(url_text)}", key=key)
    url = _parse_url(url_text.strip(), key)
    password = env.get(ENV_DATABASE_PASSWORD)
    if password is None:
        password = _credential_password(env)
    if password is not None:
        url = url.set(password=password)
    prefix = raw.get("table_prefix", "wp_")
    try:
        validate_prefix(prefix)
    except PrefixError:
        raise ConfigError(
            f"expected the network's base table prefix (1-32 of A-Z a-z 0-9 _, like 'wp_'), got {_show(prefix)}",
            key="database.table_prefix",
        ) from None
    return DatabaseConfig(
        url=url.render_as_string(hide_password=False),
        table_prefix=prefix,
        lock_wait_timeout=_int(raw, "database", "lock_wait_timeout", 1, lo=1, hi=3600),
        connect_timeout=_number(raw, "database", "connect_timeout", 5.0, lo=0.1, hi=3600),
        multi_statements=_bool(raw, "database", "multi_statements", True),
    )


def _credential_password(env: Mapping[str, str]) -> str | None:
    """The password systemd passed with ``LoadCredential=db-password:...``, if any.

    One trailing newline is dropped (``echo pw > file`` writes one); nothing else is changed.
    """
    directory = env.get(ENV_CREDENTIALS_DIRECTORY)
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL_PASSWORD
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"cannot read the database password credential: {reason}", key=str(path)) from None
    return text[:-1] if text.endswith("\n") else text


def _parse_url(text: str, key: str) -> URL:
    expected = "mysql+pymysql://USER:PASSWORD@HOST:PORT/DATABASE (unix socket: ?unix_socket=/path)"
    try:
        url = make_url(text)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several types for a malformed URL
        # The text may hold a password: never echo it.
        raise ConfigError(f"is not a valid URL; expected {expected}", key=key) from None
    if url.get_backend_name() != "mysql" or url.get_driver_name() not in ("pymysql", "mysqldb"):
        raise ConfigError(f"expected {expected}, got {redact_url(url)}", key=key)
    if url.drivername != "mysql+pymysql":
        url = url.set(drivername="mysql+pymysql")
    if not url.database:
        raise ConfigError(f"names no database; expected {expected}", key=key)
    if not url.host and "unix_socket" not in url.query:
        raise ConfigError(f"names no host and no ?unix_socket=; expected {expected}", key=key)
    return url


def _parse_capture(raw: Mapping[str, Any], section: str) -> CaptureConfig:
    _check_keys(section, raw, ("mode", "poll_interval"))
    mode = _choice(raw, section, "mode", "auto", CAPTURE_MODES)
    # Binlog capture: the full comparison is only the safety net (the log names each write).
    default_interval = BINLOG_FULL_POLL_S if mode == "binlog" else 1.0
    return CaptureConfig(
        mode=mode,
        poll_interval=_number(raw, section, "poll_interval", default_interval, lo=0.01, hi=3600),
    )


def _parse_sync(raw: Mapping[str, Any], section: str) -> SyncConfig:
    _check_keys(
        section,
        raw,
        (
            "batch_size",
            "idle_wait",
            "exclude_skus",
            "discovery_interval",
            "install_triggers",
            "propagate_sku_renames",
            "settle_seconds",
        ),
    )
    skus = raw.get("exclude_skus", [])
    if not isinstance(skus, list) or not all(isinstance(s, str) and s != "" for s in skus):
        raise ConfigError(
            f"expected a list of non-empty SKU strings or glob patterns (['GIFT-*']), got {_show(skus)}",
            key=f"{section}.exclude_skus",
        )
    return SyncConfig(
        batch_size=_int(raw, section, "batch_size", 500, lo=1, hi=100_000),
        idle_wait=_number(raw, section, "idle_wait", 0.01, lo=0.0, hi=60),
        exclude_skus=tuple(skus),
        discovery_interval=_number(raw, section, "discovery_interval", 30.0, lo=1, hi=86_400),
        install_triggers=_bool(raw, section, "install_triggers", True),
        propagate_sku_renames=_bool(raw, section, "propagate_sku_renames", True),
        settle_seconds=_number(raw, section, "settle_seconds", 3.0, lo=0.0, hi=3600),
    )


def _parse_history(raw: Mapping[str, Any], section: str) -> HistoryConfig:
    _check_keys(section, raw, ("retention_days",))
    return HistoryConfig(retention_days=_int(raw, section, "retention_days", 30, lo=1, hi=36_500))


def _parse_reconcile(raw: Mapping[str, Any], section: str) -> ReconcileConfig:
    _check_keys(section, raw, ("authority",))
    authority = raw.get("authority", "lowest")
    if not isinstance(authority, str) or not AUTHORITY_RE.match(authority):
        raise ConfigError(
            f'expected "lowest", "latest" or "blog:N" (N a blog id), got {_show(authority)}',
            key=f"{section}.authority",
        )
    return ReconcileConfig(authority=authority)


def _parse_log(raw: Mapping[str, Any], section: str) -> LogConfig:
    _check_keys(section, raw, ("level", "format"))
    level = raw.get("level", "info")
    if isinstance(level, str):
        level = level.lower()
    return LogConfig(
        level=_choice({"level": level}, section, "level", "info", LOG_LEVELS),
        format=_choice(raw, section, "format", "auto", LOG_FORMATS),
    )


def _parse_metrics(raw: Mapping[str, Any], section: str) -> MetricsConfig:
    _check_keys(section, raw, ("listen",))
    listen = raw.get("listen", "")
    if not isinstance(listen, str):
        raise ConfigError(
            f'expected "HOST:PORT" such as "127.0.0.1:9187", got {_show(listen)}', key=f"{section}.listen"
        )
    if listen:
        from syncd.metrics import parse_listen

        try:
            parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{section}.listen") from None
    return MetricsConfig(listen=listen)


def _parse_blogs(raw: Mapping[str, Any], section: str) -> BlogsConfig:
    # [blogs.N] tables arrive as keys "N" of [blogs]: per-blog settings, validated like the rest.
    per_blog = {k: v for k, v in raw.items() if isinstance(k, str) and k.isdigit()}
    _check_keys(section, {k: v for k, v in raw.items() if k not in per_blog}, ("include", "exclude", "N"))
    include = _blog_ids(raw, section, "include") if "include" in raw else None
    exclude = _blog_ids(raw, section, "exclude") if "exclude" in raw else ()
    settings: dict[int, BlogSettings] = {}
    for key, value in per_blog.items():
        name = f"{section}.{key}"
        blog_id = int(key)
        if blog_id < 1 or key != str(blog_id):
            raise ConfigError(f"expected [{section}.N] with a blog id N >= 1, got [{name}]", key=name)
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table [{name}], got {_show(value)}", key=name)
        _check_keys(name, value, ("language", "translations_share_stock"))
        language = value.get("language")
        if language is not None:
            if not isinstance(language, str) or not LANGUAGE_RE.match(language.lower()):
                raise ConfigError(
                    f"expected a language code as Polylang spells its slugs ('en', 'fr', 'pt-br'), got {_show(language)}",
                    key=f"{name}.language",
                )
            language = language.lower()
        share = value.get("translations_share_stock")
        if share is not None:
            share = _bool(value, name, "translations_share_stock", False)
        settings[blog_id] = BlogSettings(language=language, translations_share_stock=share)
    return BlogsConfig(include=include, exclude=exclude, settings=settings)


def _parse_dashboard(raw: Mapping[str, Any], section: str) -> DashboardConfig:
    _check_keys(section, raw, ("listen", "tls_cert", "tls_key", "allow_plain_remote"))
    listen = raw.get("listen", "127.0.0.1:8765")
    try:
        split_listen(listen if isinstance(listen, str) else "")
    except ValueError:
        raise ConfigError(
            f"expected HOST:PORT ('127.0.0.1:8765', '[::1]:8765'), got {_show(listen)}",
            key=f"{section}.listen",
        ) from None
    paths = {}
    for key in ("tls_cert", "tls_key"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"expected a file path, got {_show(value)}", key=f"{section}.{key}")
        paths[key] = value
    if bool(paths["tls_cert"]) != bool(paths["tls_key"]):
        raise ConfigError("tls_cert and tls_key go together: set both or neither", key=f"{section}.tls_cert")
    return DashboardConfig(
        listen=listen,
        tls_cert=paths["tls_cert"],
        tls_key=paths["tls_key"],
        allow_plain_remote=_bool(raw, section, "allow_plain_remote", False),
    )


def _parse_fields(raw: Mapping[str, Any], section: str) -> FieldsConfig:
    from syncd.fields.group import GROUPS, MODES

    tables = ("schedule", "blogs", "allow_mismatch", "terms")
    _check_keys(section, raw, (*GROUPS, *tables))
    modes = _default_modes()
    for name in GROUPS:
        if name in raw:
            modes[name] = _choice(raw, section, name, "off", MODES)
    sub = {}
    for name in tables:
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"expected a table [{section}.{name}], got {_show(value)}", key=f"{section}.{name}"
            )
        sub[name] = value
    cron, authority = _parse_fields_schedule(sub["schedule"], f"{section}.schedule")
    blogs_key = f"{section}.blogs"
    _check_keys(blogs_key, sub["blogs"], GROUPS)
    mismatch_key = f"{section}.allow_mismatch"
    _check_keys(mismatch_key, sub["allow_mismatch"], GROUPS)
    _check_keys(f"{section}.terms", sub["terms"], ("missing",))
    return FieldsConfig(
        modes=modes,
        schedule_cron=cron,
        authority=authority,
        blogs={name: _blog_ids(sub["blogs"], blogs_key, name) for name in sub["blogs"]},
        allow_mismatch={
            name: _bool(sub["allow_mismatch"], mismatch_key, name, False) for name in sub["allow_mismatch"]
        },
        missing_terms=_choice(sub["terms"], f"{section}.terms", "missing", "skip", MISSING_TERMS),
    )


def _parse_fields_schedule(raw: Mapping[str, Any], section: str) -> tuple[str, str]:
    _check_keys(section, raw, ("cron", "authority"))
    cron = raw.get("cron", DEFAULT_FIELDS_CRON)
    if not isinstance(cron, str):
        raise ConfigError(
            f'expected a crontab string such as "*/15 * * * *", got {_show(cron)}', key=f"{section}.cron"
        )
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(cron)
    except ValueError as exc:
        raise ConfigError(
            f'expected a crontab string such as "*/15 * * * *" (minute hour day month weekday), got {_show(cron)}: {exc}',
            key=f"{section}.cron",
        ) from None
    authority = raw.get("authority", "newest")
    if isinstance(authority, int) and not isinstance(authority, bool) and authority >= 1:
        authority = str(authority)
    if not isinstance(authority, str) or not (
        authority == "newest" or re.fullmatch(r"[1-9][0-9]{0,9}", authority)
    ):
        raise ConfigError(
            f'expected "newest" or a blog id (an integer >= 1), got {_show(authority)}',
            key=f"{section}.authority",
        )
    return cron, authority


_SECTIONS = {
    "database": _parse_database,
    "capture": _parse_capture,
    "sync": _parse_sync,
    "history": _parse_history,
    "reconcile": _parse_reconcile,
    "log": _parse_log,
    "blogs": _parse_blogs,
    "metrics": _parse_metrics,
    "dashboard": _parse_dashboard,
    "fields": _parse_fields,
}


# --------------------------------------------------------------------------- value checks
def _check_keys(section: str, raw: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key; [{section}] knows: {', '.join(known)}", key=f"{section}.{key}")


def _int(raw: Mapping[str, Any], section: str, key: str, default: int, *, lo: int, hi: int) -> int:
    value = raw.get(key, default)
    # bool is an int subclass in Python: `batch_size = true` must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"expected an integer from {lo} to {hi}, got {_show(value)}", key=f"{section}.{key}"
        )
    return value


def _number(raw: Mapping[str, Any], section: str, key: str, default: float, *, lo: float, hi: float) -> float:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ConfigError(
            f"expected a number of seconds from {lo:g} to {hi:g}, got {_show(value)}", key=f"{section}.{key}"
        )
    return float(value)


def _bool(raw: Mapping[str, Any], section: str, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_show(value)}", key=f"{section}.{key}")
    return value


def _choice(raw: Mapping[str, Any], section: str, key: str, default: str, choices: tuple[str, ...]) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise ConfigError(
            f"expected one of {', '.join(repr(c) for c in choices)}, got {_show(value)}",
            key=f"{section}.{key}",
        )
    return value


def _blog_ids(raw: Mapping[str, Any], section: str, key: str) -> tuple[int, ...]:
    value = raw[key]
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    )
    if not ok or len(set(value)) != len(value):
        raise ConfigError(
            f"expected a list of distinct blog ids (integers >= 1, like [1, 3]), got {_show(value)}",
            key=f"{section}.{key}",
        )
    return tuple(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
