"""``syncd dead-letters list | retry [ID...|--all] | discard ID...``: the operator's view of the
dead letters, over :mod:`syncd.queue` (no SQL needed to re-queue or drop a change).

Exit status: 0 done; 1 fatal (syncd not installed, no connection); 2 usage (retry without IDs
or --all, discard without IDs); 16 an ID that is not a dead letter (the others were handled).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import structlog

from syncd import queue, schema
from syncd.config import Config

log = structlog.get_logger("syncd.dead_letters")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_UNKNOWN_ID = 16


def main(config: Config, args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    action = args.action
    ids = [int(i) for i in getattr(args, "ids", None) or []]
    if action == "retry" and not ids and not getattr(args, "all", False):
        print("syncd dead-letters retry: give IDs or --all", file=sys.stderr)
        return EXIT_USAGE
    if action == "discard" and not ids:
        print("syncd dead-letters discard: give the IDs to discard", file=sys.stderr)
        return EXIT_USAGE
    base = config.database.table_prefix
    engine = config.database.make_engine(pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            if not schema.schema_present(conn, base):
                print("syncd: not installed here (run syncd install)", file=sys.stderr)
                return EXIT_FATAL
            if action == "list":
                letters = queue.list_dead(conn, base, ids or None)
                conn.rollback()
                _print_list(letters, out, as_json=bool(getattr(args, "json", False)))
                return EXIT_UNKNOWN_ID if ids and len(letters) < len(set(ids)) else EXIT_OK
            if action == "retry":
                done = queue.retry_dead(conn, base, ids or None)
            else:
                done = queue.discard_dead(conn, base, ids)
            conn.commit()
    finally:
        engine.dispose()
    missing = sorted(set(ids) - set(done))
    event = "dead_letters_retried" if action == "retry" else "dead_letters_discarded"
    log.info(event, changes=done, unknown=missing)
    if getattr(args, "json", False):
        print(json.dumps({"action": action, "ids": done, "unknown": missing}), file=out)
    else:
        verb = "re-queued" if action == "retry" else "discarded"
        print(f"{verb} {len(done)} change(s): {', '.join(map(str, done)) or '-'}", file=out)
        for i in missing:
            print(f"syncd dead-letters {action}: {i} is not a dead letter", file=sys.stderr)
    return EXIT_UNKNOWN_ID if missing else EXIT_OK


def _print_list(letters: list[queue.DeadLetter], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([d.document() for d in letters]), file=out)
        return
    if not letters:
        print("no dead letters", file=out)
        return
    print(
        "id       blog  post     key                  old -> new            failed at            class / error",
        file=out,
    )
    for d in letters:
        c = d.change
        change = f"{c.old_value if c.old_value is not None else 'NULL'} -> {c.new_value if c.new_value is not None else 'NULL'}"
        print(
            f"{c.id:<8} {c.blog_id:<5} {c.post_id:<8} {c.meta_key:<20} {change[:21]:<21} "
            f"{d.failed_at:%Y-%m-%d %H:%M:%S}  {d.error_class}: {d.error[:120]}",
            file=out,
        )
