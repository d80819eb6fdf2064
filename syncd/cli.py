"""Command line: argument parsing only. Each command calls one library function.

``syncd`` with no command runs the daemon (``syncd run``); ``syncd --reconcile`` runs a reconcile
pass. Modules are imported lazily so that ``syncd demo`` and ``syncd --help`` work before the
configuration exists, and so that a command whose module is not there yet says so plainly.

Exit status (all commands): 0 success; 1 fatal error (server unreachable, login refused, unknown
database, not a multisite network, unexpected error); 2 usage error or command not available;
64 an option given without the command it belongs to (``syncd --dry-run``: refused, never the
daemon); 130 interrupted (Ctrl-C, SIGTERM of a tool); 141 output closed early (``| head``);
78 configuration missing or invalid (EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a
restart loop on a bad file). ``syncd check`` adds its own bits (4, 8, 16, 32): see syncd.check;
``syncd dead-letters`` 16 (an ID that is not a dead letter): see syncd.dead_letters;
audit, reconcile, sync, set-stock and history theirs (4 drift, 8 chunk skipped, 16 bad argument,
32 left alone): see syncd.audit.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from syncd import __version__, signals
from syncd import config as config_mod
from syncd.config import Config, ConfigError
from syncd.db import errno_of
from syncd.fields.group import GROUPS as FIELD_GROUPS
from syncd.log import FORMATS, LEVELS, configure_logging, get_logger
from syncd.network import NotMultisiteError

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
EXIT_OPTION_WITHOUT_COMMAND = 64  # EX_USAGE
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # what a shell reports for a process killed by SIGPIPE

#: Commands that take --dry-run (``run`` only with --reconcile); any other refuses it (exit 64).
DRY_RUN_COMMANDS = ("reconcile", "sync", "set-stock")
#: Commands that print for people by default: their own per-member log lines stay out of stderr
#: unless --verbose (or an explicit --log-level) asks for them.
TOOL_COMMANDS = (
    "check",
    "install",
    "uninstall",
    "status",
    "link",
    "unlink",
    "links",
    "audit",
    "reconcile",
    "sync",
    "set-stock",
    "history",
    "dead-letters",
)

log = get_logger(component="cli")


class NotImplementedYet(RuntimeError):
    """The module or function behind a command is not part of this build yet."""


# --------------------------------------------------------------------------- parser
def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--config/--log-level/--log-format, accepted before or after the command."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help=f"configuration file (default: ${config_mod.ENV_CONFIG}, else {config_mod.DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--log-level", choices=tuple(LEVELS), default=default, help="overrides log.level")
    parser.add_argument("--log-format", choices=FORMATS, default=default, help="overrides log.format")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="tools: also print their per-product log lines on stderr (same as --log-level info)",
    )


def _command(
    sub: Any, name: str, help_text: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(description or help_text),
        epilog=f"Example:\n  {example}",
        formatter_class=_formatter,
    )
    _global_options(p, suppress=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keep WooCommerce stock identical across the blogs of a WordPress multisite network.",
        epilog=textwrap.dedent(
            """\
            With no command, syncd runs the daemon (same as `syncd run`).

            Example:
              syncd --config /etc/syncd/syncd.toml check
            """
        ),
        formatter_class=_formatter,
    )
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="run one reconcile pass (audit every link group, repair drift) instead of the daemon",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --reconcile: print every change it would make, write nothing",
    )
    parser.add_argument(
        "--json", action="store_true", help="with --reconcile: print the result as one JSON document"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(
        sub,
        "run",
        "run the daemon in the foreground (the default)",
        "syncd --config /etc/syncd/syncd.toml run",
        "Run the daemon in the foreground until SIGTERM: capture stock changes and apply them to the\n"
        "linked products of the other blogs. One instance per network is active; others wait.",
    )
    p.add_argument(
        "--reconcile",
        action="store_true",
        default=argparse.SUPPRESS,  # keep `syncd --reconcile run` working
        help="run one reconcile pass instead of the daemon",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS,
        help="with --reconcile: print every change it would make, write nothing",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="with --reconcile: print the result as one JSON document",
    )
    p.set_defaults(handler=cmd_run)

    p = _command(
        sub,
        "check",
        "check server, privileges and network; exit 0 when syncd can run",
        "syncd check --json | jq .blogs",
        "Read-only: server version, the privileges syncd needs, each blog's WooCommerce/Polylang\n"
        "state and product counts, and the problems that make syncd leave a blog alone.\n"
        "Exit status is a bitmask: 1 fatal, 4 missing privilege, 8 triggers impossible in\n"
        "trigger mode, 16 fewer than two usable blogs, 32 warnings (--strict only).",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument(
        "--strict", action="store_true", help="also fail (bit 32) on warnings such as duplicate SKUs"
    )
    p.set_defaults(handler=cmd_check)

    p = _command(
        sub,
        "install",
        "create syncd's tables and install or upgrade the triggers",
        "syncd install",
        "Create syncd's tables and install or upgrade the capture triggers on every usable blog.\n"
        "Idempotent. The daemon does this itself at start when sync.install_triggers = true.",
    )
    p.set_defaults(handler=cmd_install)

    p = _command(
        sub,
        "uninstall",
        "drop syncd's triggers and tables (WooCommerce data is untouched)",
        "syncd uninstall --keep-history",
    )
    p.add_argument("--keep-history", action="store_true", help="keep the history table (audit trail)")
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (scripts; required without a terminal)",
    )
    p.set_defaults(handler=cmd_uninstall)

    p = _command(
        sub,
        "status",
        "show the daemon's state: leader, backlog, last batches",
        "syncd status --json",
    )
    p.add_argument("--json", action="store_true", help="print the status as one JSON document")
    p.set_defaults(handler=cmd_status)

    p = _command(
        sub,
        "dead-letters",
        "list, re-queue or discard the changes syncd could not apply",
        "syncd dead-letters retry --all",
        "Dead letters are captured changes that failed alone, twice, with an error that is not\n"
        "transient, or whose blog no longer exists or is excluded. `retry` puts them back into the\n"
        "queue (with the rest of their statement); `discard` deletes them for good. Exit status: 0\n"
        "done, 1 fatal, 2 usage, 16 an ID that is not a dead letter.",
    )
    p.add_argument("action", choices=("list", "retry", "discard"), help="what to do")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids (change ids)")
    p.add_argument("--all", action="store_true", help="with retry: every dead letter")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=cmd_dead_letters)

    p = _command(
        sub,
        "link",
        "link products manually (overrides SKU matching; works without SKUs)",
        "syncd link 1:11 2:24 3:15",
        "Make these products (BLOG:POST = blog id and post id) one link group whatever their SKUs:\n"
        "a manual link overrides SKU matching, works for products without a SKU and for ambiguous\n"
        "SKUs. Products already linked manually in one group are extended. Refused, with the\n"
        "reason, for products that cannot share one stock: grouped/external products, a simple\n"
        "product or variation with a variable product, managed with unmanaged stock, two products\n"
        "of one blog. Stock is not copied: the command says when quantities differ.",
    )
    p.add_argument("targets", nargs="+", metavar="BLOG:POST", help="the products to link (two or more)")
    p.set_defaults(handler=cmd_link)

    p = _command(
        sub,
        "unlink",
        "remove a product from its manual link group",
        "syncd unlink 2:24",
        "Take the product out of its manual link group; it goes back to SKU matching. A group left\n"
        "with one product is dissolved.",
    )
    p.add_argument("target", metavar="BLOG:POST", help="the product to unlink")
    p.set_defaults(handler=cmd_unlink)

    p = _command(
        sub,
        "links",
        "list the manual links",
        "syncd links --json",
        "List the manual link groups: each product with its SKU, language and whether it is synced.",
    )
    p.add_argument("--json", action="store_true", help="print the links as one JSON document")
    p.set_defaults(handler=cmd_links)

    # Audit, reconcile and the operator's tools (syncd.audit, syncd.reconcile, syncd.history).
    # --json / --dry-run default to SUPPRESS so that `syncd --json audit` works as `syncd audit --json`.
    # Exit status bitmask of these five: 1 fatal, 2 usage, 4 drift found, 8 chunk skipped after
    # retries, 16 bad SKU/QTY argument, 32 a product left alone (unusable stock value, no authority).
    p = _command(
        sub,
        "audit",
        "compare every link group across blogs and report drift; writes nothing",
        "syncd audit --json | jq .counts",
        "Read-only: groups whose members differ (quantity, manage stock, backorders, low-stock\n"
        "amount, manual stock status), derived data that disagrees with the quantity on a blog\n"
        "(status, lookup row, outofstock term, parent status), unusable stock values, ambiguous SKUs,\n"
        "SKUs present on one blog only, groups whose product types differ. Checksums first, so a\n"
        "clean network is read once. Exit status: 0 clean, 4 drift found, 32 unusable values, 1 fatal.",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the report as one JSON document"
    )
    p.set_defaults(handler=cmd_audit)

    p = _command(
        sub,
        "reconcile",
        "one reconcile pass: write each group's authoritative values to its members (= syncd --reconcile)",
        "syncd reconcile --dry-run",
        "Audit every link group, then make the members of each group that differs hold the values of\n"
        "its authority ([reconcile] authority: lowest (default), latest or blog:N), and recompute\n"
        "WooCommerce's derived data where it disagrees with the quantity. One short transaction per\n"
        "chunk; pending captured changes are applied first. Exit status: 0 nothing to do, 4 drift\n"
        "found (written, or with --dry-run to be written), 8 a chunk skipped after retries (run\n"
        "again), 32 groups or products left alone, 1 fatal.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print every change it would make; write nothing",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the result as one JSON document"
    )
    p.set_defaults(handler=cmd_reconcile)

    p = _command(
        sub,
        "sync",
        "push the named SKUs' authoritative state to every member of their groups now",
        "syncd sync TSHIRT-RED MUG",
        "For each SKU (compared as WooCommerce compares SKUs), write its group authority's quantity and\n"
        "settings to every member that differs, and refresh every member's derived data. Nothing is\n"
        "written when an argument is unknown, ambiguous or excluded (exit status 16).\n"
        "With --fields GROUP[,GROUP]: copy those product data groups (tax, identity, purchase, ...;\n"
        "README 'Product data beyond stock') from each link group's authority ([fields.schedule]\n"
        "authority) to the members that differ, for the SKUs named or --all; exit status 4 when\n"
        "values were written (or would be, --dry-run), 32 when fields were left alone.",
    )
    p.add_argument("skus", nargs="*", metavar="SKU", help="SKUs to push")
    p.add_argument(
        "--fields",
        metavar="GROUP[,GROUP]",
        help="sync these field groups instead of stock (e.g. tax,identity)",
    )
    p.add_argument("--all", action="store_true", help="with --fields: every link group")
    p.add_argument("--lang", metavar="LANG", help="the language, when a SKU exists in several (Polylang)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print what it would write; write nothing",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the result as one JSON document"
    )
    p.set_defaults(handler=cmd_sync)

    p = _command(
        sub,
        "set-stock",
        "set the quantity of every member of a SKU's group, in one transaction",
        "syncd set-stock TSHIRT-RED 12",
        "Every member of the SKU's link group that manages stock gets QTY (and its derived data), in\n"
        "one transaction; changes captured before are applied first. History role 'set'.",
    )
    p.add_argument("sku", metavar="SKU", help="the product's SKU")
    p.add_argument("qty", metavar="QTY", help="the new quantity (a number; may be negative)")
    p.add_argument("--lang", metavar="LANG", help="the language, when the SKU exists in several (Polylang)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print what it would write; write nothing",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the result as one JSON document"
    )
    p.set_defaults(handler=cmd_set_stock)

    p = _command(
        sub,
        "history",
        "every stock change of a product on every blog, oldest first",
        "syncd history TSHIRT-RED --since 7d --limit 50",
        "From syncd's history table: time, blog, old -> new, delta, and the role - origin (the change\n"
        "as made on its blog), copy (written by syncd to a linked product), skipped, reconcile, set.",
    )
    p.add_argument("sku", metavar="SKU", help="the product's SKU")
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="only changes applied since WHEN: 2026-05-01, 2026-05-01T12:00, 90m, 12h, 7d",
    )
    p.add_argument(
        "--limit", type=_limit, default=200, metavar="N", help="show the newest N rows (default 200; 0: all)"
    )
    p.add_argument("--lang", metavar="LANG", help="the language, when the SKU exists in several (Polylang)")
    p.add_argument(
        "--field",
        metavar="GROUP",
        choices=("stock", *FIELD_GROUPS),
        help="only the changes of this field group (tax, price, ...; 'stock' for stock only)",
    )
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the rows as one JSON document"
    )
    p.set_defaults(handler=cmd_history)

    from syncd.web.cli import add_parser as add_dashboard

    add_dashboard(sub, _command).set_defaults(handler=cmd_dashboard)

    p = _command(
        sub,
        "demo",
        "run syncd on a throwaway demo network (private MariaDB, 3-blog WooCommerce multisite)",
        "syncd demo",
        "Start a private MariaDB server, load a 3-blog WooCommerce network, run syncd against it and\n"
        "show a sale on one blog reaching the others. Needs no configuration file. Ctrl-C or SIGTERM\n"
        "at any moment stops the server and removes its data (unless --keep).",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the server running (socket only, root with a random password) and print how to stop it",
    )
    p.add_argument(
        "--config-out", metavar="PATH", help="where to write the demo config (default: the server's dir)"
    )
    p.add_argument("--base-dir", metavar="DIR", help="parent directory of the server's temporary directory")
    p.add_argument("--check-only", action="store_true", help="stop after `syncd check` (no live sync)")
    p.set_defaults(handler=cmd_demo, needs_config=False, demo_args=[])

    return parser


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "reconcile", False):
        return _call("syncd.reconcile", "main", config, args)
    log.info("start", config=config.redacted())
    return _call("syncd.daemon", "run", config)


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from syncd.check import run_check

    return run_check(config, json_output=args.json, strict=args.strict)


def cmd_install(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.capture", "install_all", config)


def cmd_uninstall(args: argparse.Namespace, config: Config) -> int:
    if not getattr(args, "yes", False) and not _confirm_uninstall(config, args.keep_history):
        return EXIT_USAGE
    return _call("syncd.capture", "uninstall_all", config, keep_history=args.keep_history)


def _confirm_uninstall(config: Config, keep_history: bool) -> bool:
    """Ask on a terminal before dropping tables; refuse without one (scripts pass --yes)."""
    db = config.database
    what = "syncd's triggers and tables" + (
        " (the history table is kept)" if keep_history else ", history included"
    )
    if not sys.stdin.isatty():
        print(
            f"syncd uninstall: would drop {what}; not a terminal, so pass --yes to confirm", file=sys.stderr
        )
        return False
    print(
        f"This drops {what} in database {db.database!r} on {db.server} (prefix {db.table_prefix}).\n"
        "Captured changes not applied yet are lost. WooCommerce data is not touched.",
        file=sys.stderr,
    )
    try:
        answer = input("Type 'yes' to uninstall: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        print("syncd uninstall: cancelled, nothing dropped", file=sys.stderr)
        return False
    return True


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.status", "main", config, args)


def cmd_dead_letters(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.dead_letters", "main", config, args)


def cmd_link(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.links", "link_main", config, args)


def cmd_unlink(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.links", "unlink_main", config, args)


def cmd_links(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.links", "links_main", config, args)


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.audit", "main", config, args)


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.reconcile", "main", config, args)


def cmd_sync(args: argparse.Namespace, config: Config) -> int:
    fields = getattr(args, "fields", None)
    if fields is None:
        if getattr(args, "all", False) or not args.skus:
            print("syncd sync: give one or more SKUs (--all needs --fields)", file=sys.stderr)
            return EXIT_USAGE
        return _call("syncd.reconcile", "sync_main", config, args)
    if bool(args.skus) == bool(getattr(args, "all", False)):
        print("syncd sync: with --fields, give SKUs or --all (not both)", file=sys.stderr)
        return EXIT_USAGE
    return _call("syncd.fields.manual", "main", config, args)


def cmd_set_stock(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.reconcile", "set_stock_main", config, args)


def cmd_history(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.history", "main", config, args)


def cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    return _call("syncd.web.cli", "main", config, args)


def cmd_demo(args: argparse.Namespace, config: Config | None) -> int:
    argv = ["--keep"] if args.keep else []
    for flag, value in (("--config-out", args.config_out), ("--base-dir", args.base_dir)):
        if value is not None:
            argv += [flag, value]
    if args.check_only:
        argv.append("--check-only")
    args.demo_args = argv
    return _call("syncd.demo", "main", args)


def _limit(text: str) -> int:
    """--limit: a whole number >= 0 (0: all)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0: all rows), got {value}")
    return value


def _load(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "the module itself is absent" means not implemented; a missing dependency inside an
        # existing module is a real error and propagates.
        if exc.name == module:
            raise NotImplementedYet(f"{module} is not implemented yet") from None
        raise


def _call(module: str, function: str, *args: Any, **kwargs: Any) -> int:
    fn: Callable[..., Any] | None = getattr(_load(module), function, None)
    if fn is None:
        raise NotImplementedYet(f"{module}.{function} is not implemented yet")
    result = fn(*args, **kwargs)
    return EXIT_OK if result is None else int(result)


# --------------------------------------------------------------------------- errors
#: What a connect-time errno means, in words for the operator.
_CONNECT_REASONS = {
    1045: "access denied: wrong user name or password",
    1044: "access denied to the database for this user",
    1049: "unknown database",
    1130: "this host is not allowed to connect",
    2002: "cannot connect through the socket (server down or wrong socket path)",
    2003: "cannot connect (server down, wrong host/port, or a firewall)",
    2005: "unknown host name",
    2013: "connection lost while connecting",
}


def describe_db_error(exc: BaseException, config: Config) -> str:
    """One line for an operator: server, user, database, the reason. Never the password."""
    code = errno_of(exc)
    orig = getattr(exc, "orig", exc)
    detail = str(orig.args[1]) if len(getattr(orig, "args", ())) > 1 else str(orig)
    password = config.database.sa_url.password
    if password:
        detail = detail.replace(str(password), "***")
    reason = _CONNECT_REASONS.get(code or -1, "database error")
    db = config.database
    return (
        f"syncd: cannot use MySQL server {db.server} as user {db.user!r}, database {db.database!r}: "
        f"{reason} (error {code}: {detail})"
    )


# --------------------------------------------------------------------------- main
def misplaced_option(args: argparse.Namespace) -> str | None:
    """Why the options do not fit the command (None: they do). A preview never starts a writer."""
    command = args.command or "run"
    reconcile = command == "reconcile" or (command == "run" and getattr(args, "reconcile", False))
    if getattr(args, "dry_run", False) and not (reconcile or command in DRY_RUN_COMMANDS):
        where = "with no command" if args.command is None else f"with `syncd {command}`"
        return f"--dry-run {where} is not an option (it belongs to --reconcile, reconcile, sync, set-stock)"
    if command == "run" and getattr(args, "json", False) and not reconcile:
        where = "with no command" if args.command is None else "with `syncd run`"
        return f"--json {where} is not an option (it belongs to --reconcile or to a command)"
    if getattr(args, "reconcile", False) and args.command not in (None, "run"):
        return f"--reconcile with `syncd {args.command}` is not an option (syncd --reconcile runs a pass)"
    return None


def _log_level(args: argparse.Namespace, configured: str) -> str:
    """--log-level wins; --verbose means info; a tool keeps its per-product lines out of stderr."""
    if args.log_level:
        return str(args.log_level)
    if getattr(args, "verbose", False):
        return "debug" if configured == "debug" else "info"
    tool = args.command in TOOL_COMMANDS or getattr(args, "reconcile", False)
    if tool and LEVELS.get(configured, 20) < LEVELS["warning"]:
        return "warning"
    return configured


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return the exit status."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # `syncd status | head -1`: the reader is gone; say nothing more, and make sure the
        # interpreter's own flush at exit does not print a traceback either.
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    wrong = misplaced_option(args)
    if wrong is not None:
        parser.print_usage(sys.stderr)
        print(f"syncd: error: {wrong}", file=sys.stderr)
        return EXIT_OPTION_WITHOUT_COMMAND
    if args.command is None:
        args.handler = cmd_run
        args.command = "run"
    if args.handler is not cmd_run or getattr(args, "reconcile", False):
        signals.release()  # only the daemon takes over the signals caught during start-up
    fmt = args.log_format or "auto"
    configure_logging(_log_level(args, "info"), fmt)

    config: Config | None = None
    try:
        if getattr(args, "needs_config", True):
            config = config_mod.load_config(args.config).with_log(args.log_level, args.log_format)
            configure_logging(_log_level(args, config.log.level), config.log.format)
        return int(args.handler(args, config))
    except ConfigError as exc:
        print(f"syncd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NotMultisiteError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except NotImplementedYet as exc:
        print(f"syncd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sa.exc.DBAPIError as exc:
        if config is None:
            raise
        print(describe_db_error(exc, config), file=sys.stderr)
        return EXIT_FATAL
