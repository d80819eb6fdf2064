"""Dashboard users, bearer tokens and login sessions, stored in syncd's own tables.

Passwords: scrypt (hashlib) with a random 16-byte salt, stored as ``scrypt$n$r$p$salt$hash``.
Tokens and session ids: 32 random bytes; only their SHA-256 is stored, so a copy of the database
lets nobody in. Nothing here logs a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from syncd.db import table

ROLES = ("admin", "read-only")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SESSION_HOURS = 12
MIN_PASSWORD = 10


class AuthError(ValueError):
    """A refused user-management request (bad name, unknown user, short password...)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


# --------------------------------------------------------------------------- hashing (pure)
def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * n * r * 2, dklen=32
    )


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


# --------------------------------------------------------------------------- users
def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise AuthError("a user name is 1-64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)")
    return name


def add_user(conn: sa.Connection, base: str, name: str, password: str, *, read_only: bool = False) -> User:
    """Create the user, or replace its password and role (the caller commits)."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"the password must have at least {MIN_PASSWORD} characters")
    role = "read-only" if read_only else "admin"
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'syncd_user')} (name, password_hash, role, created_at) VALUES (:n, :h, :r, :t) "
            "ON DUPLICATE KEY UPDATE password_hash = VALUES(password_hash), role = VALUES(role)"
        ),
        {"n": name, "h": hash_password(password), "r": role, "t": _now()},
    )
    return User(name, role)


def remove_user(conn: sa.Connection, base: str, name: str) -> None:
    """Delete the user with its tokens and sessions (the caller commits)."""
    gone = conn.execute(
        sa.text(f"DELETE FROM {table(base, 'syncd_user')} WHERE name = :n"), {"n": name}
    ).rowcount
    if not gone:
        raise AuthError(f"no dashboard user {name!r}")
    conn.execute(sa.text(f"DELETE FROM {table(base, 'syncd_token')} WHERE user_name = :n"), {"n": name})


def list_users(conn: sa.Connection, base: str) -> list[dict[str, object]]:
    rows = conn.execute(
        sa.text(
            f"SELECT u.name, u.role, u.created_at, (SELECT COUNT(*) FROM {table(base, 'syncd_token')} t "
            f"WHERE t.user_name = u.name AND t.kind = 'api') FROM {table(base, 'syncd_user')} u ORDER BY u.name"
        )
    )
    return [
        {"name": n, "role": r, "created_at": c.isoformat(sep=" ", timespec="seconds"), "tokens": int(k)}
        for n, r, c, k in rows
    ]


def get_user(conn: sa.Connection, base: str, name: str) -> tuple[User, str] | None:
    row = conn.execute(
        sa.text(f"SELECT name, role, password_hash FROM {table(base, 'syncd_user')} WHERE name = :n"),
        {"n": name},
    ).first()
    return None if row is None else (User(row[0], row[1]), row[2])


# --------------------------------------------------------------------------- tokens, sessions
def create_token(conn: sa.Connection, base: str, name: str) -> str:
    """A bearer token for scripts; returned once, stored hashed (the caller commits)."""
    if get_user(conn, base, name) is None:
        raise AuthError(f"no dashboard user {name!r} (syncd dashboard add-user {name})")
    token = "sdt_" + secrets.token_urlsafe(32)
    _insert(conn, base, token, "api", name, "", None)
    return token


def create_session(conn: sa.Connection, base: str, user: User) -> tuple[str, str]:
    """(session id for the cookie, CSRF token for the forms); the session expires in SESSION_HOURS."""
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    _insert(conn, base, sid, "session", user.name, csrf, _now() + timedelta(hours=SESSION_HOURS))
    return sid, csrf


def _insert(
    conn: sa.Connection, base: str, secret: str, kind: str, name: str, csrf: str, expires: datetime | None
) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO {table(base, 'syncd_token')} (token_hash, kind, user_name, csrf, created_at, expires_at) "
            "VALUES (:h, :k, :n, :c, :t, :e)"
        ),
        {"h": secret_hash(secret), "k": kind, "n": name, "c": csrf, "t": _now(), "e": expires},
    )


def lookup(conn: sa.Connection, base: str, secret: str, kind: str) -> tuple[User, str] | None:
    """(user, csrf) of a live token or session; None when unknown, expired or its user is gone."""
    row = conn.execute(
        sa.text(
            f"SELECT u.name, u.role, t.csrf FROM {table(base, 'syncd_token')} t JOIN {table(base, 'syncd_user')} u "
            "ON u.name = t.user_name WHERE t.token_hash = :h AND t.kind = :k AND (t.expires_at IS NULL OR t.expires_at > :now)"
        ),
        {"h": secret_hash(secret), "k": kind, "now": _now()},
    ).first()
    return None if row is None else (User(row[0], row[1]), row[2])


def end_session(conn: sa.Connection, base: str, sid: str) -> None:
    conn.execute(
        sa.text(f"DELETE FROM {table(base, 'syncd_token')} WHERE token_hash = :h AND kind = 'session'"),
        {"h": secret_hash(sid)},
    )
    conn.execute(
        sa.text(f"DELETE FROM {table(base, 'syncd_token')} WHERE kind = 'session' AND expires_at < :now"),
        {"now": _now()},
    )


# --------------------------------------------------------------------------- login rate limit
class RateLimiter:
    """At most ``limit`` failed logins per ``window`` seconds per client address and per user name."""

    def __init__(self, limit: int = 5, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q
