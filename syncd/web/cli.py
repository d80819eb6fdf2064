"""``syncd dashboard`` and its user commands (thin: each calls one function)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any, TextIO

import structlog

from syncd import schema
from syncd.config import Config
from syncd.web import auth

log = structlog.get_logger("syncd.dashboard")


def main(config: Config, args: Any, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out = out or sys.stdout
    action = getattr(args, "dashboard_command", None)
    if action is None:
        from syncd.web.server import ListenRefused, serve

        try:
            return serve(config)
        except ListenRefused as exc:
            print(f"syncd dashboard: {exc}", file=sys.stderr)
            return 78
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    base = config.database.table_prefix
    try:
        with engine.connect() as conn:
            schema.ensure_schema(conn, base)
            return _users(conn, base, args, action, out, stdin or sys.stdin)
    except auth.AuthError as exc:
        print(f"syncd dashboard {action}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _users(conn: Any, base: str, args: Any, action: str, out: TextIO, stdin: TextIO) -> int:
    if action == "add-user":
        password = _password(args, stdin)
        user = auth.add_user(conn, base, args.name, password, read_only=args.read_only)
        conn.commit()
        log.info("dashboard_user_added", user=user.name, role=user.role)
        print(f"user {user.name} ({user.role}) saved", file=out)
    elif action == "remove-user":
        auth.remove_user(conn, base, args.name)
        conn.commit()
        log.info("dashboard_user_removed", user=args.name)
        print(f"user {args.name} removed (with its tokens and sessions)", file=out)
    elif action == "list-users":
        users = auth.list_users(conn, base)
        if getattr(args, "json", False):
            out.write(json.dumps({"users": users}, indent=2) + "\n")
        else:
            for u in users or [
                {"name": "(no users: syncd dashboard add-user NAME)", "role": "", "tokens": ""}
            ]:
                print(f"{u['name']}  {u['role']}  tokens: {u['tokens']}".rstrip(), file=out)
    elif action == "token-create":
        token = auth.create_token(conn, base, args.name)
        conn.commit()
        log.info("dashboard_token_created", user=args.name)
        print(token, file=out)
        print("(shown once; stored hashed. Send it as: Authorization: Bearer TOKEN)", file=sys.stderr)
    return 0


def _password(args: Any, stdin: TextIO) -> str:
    if args.password_stdin:
        text = stdin.readline()
        return text[:-1] if text.endswith("\n") else text
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise auth.AuthError("the two passwords differ")
    return first


def add_parser(sub: Any, command: Any) -> Any:
    """Register ``syncd dashboard ...`` on the CLI's subparsers (``command`` = cli._command)."""
    p = command(
        sub,
        "dashboard",
        "serve the web dashboard, or manage its users",
        "syncd dashboard add-user alice --password-stdin < pw.txt",
        "With no subcommand: serve the dashboard on [dashboard] listen (default 127.0.0.1:8765).\n"
        "Users are stored in syncd's tables (scrypt password hashes); tokens are for scripts.",
    )
    from syncd.cli import _global_options

    ds = p.add_subparsers(dest="dashboard_command", metavar="SUBCOMMAND")
    a = ds.add_parser("add-user", help="create a user, or change its password and role")
    a.add_argument("name", metavar="NAME")
    a.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    a.add_argument("--read-only", action="store_true", help="may see everything and change nothing")
    r = ds.add_parser("remove-user", help="delete a user with its tokens and sessions")
    r.add_argument("name", metavar="NAME")
    ls = ds.add_parser("list-users", help="list the users, their roles and token counts")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    t = ds.add_parser("token", help="bearer tokens for scripts")
    ts = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tc = ts.add_parser("create", help="create a token for NAME (shown once)")
    tc.add_argument("name", metavar="NAME")
    t.set_defaults(dashboard_command="token-create")
    for sp in (a, r, ls, tc):
        _global_options(sp, suppress=True)
    return p
