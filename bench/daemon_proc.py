"""The daemon as the benchmarks run it: ``syncd.daemon.Daemon.run()`` in its own process, with an
``on_batch`` hook that records when each batch committed and which change rows it consumed.

    python -m bench.daemon_proc --config FILE [--events FILE] [--refresh real|stub|auto]

Same code path as ``syncd run`` (leader lock, start-up, scheduler, loop, first SIGTERM finishes the
batch and exits 0). The hook runs right after the apply transaction's COMMIT returned (and after the
daemon's own ``batch_applied`` log call), so the recorded time is an upper bound of the commit time.
Events are kept in memory and written as JSON when the daemon stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from syncd.config import load_config  # noqa: E402
from syncd.daemon import Daemon, install_signal_handlers  # noqa: E402


def _configure_logging(cfg: object) -> None:
    try:
        from syncd.log import configure_logging  # noqa: PLC0415

        configure_logging(cfg.log.level, cfg.log.format)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - logging set-up must not stop a benchmark
        pass


def _writes(change: object) -> int:
    """How many of the benchmark's one-unit checkouts a ``_stock`` change row covers: 1 for a
    trigger's row; a poll (binlog capture) compares values, so two checkouts of one product
    between two looks are one row of -2."""
    try:
        return max(1, round(float(change.old_value) - float(change.new_value)))  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--events")
    p.add_argument("--refresh", choices=("auto", "stub", "real"), default="auto")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    _configure_logging(cfg)
    refresh = args.refresh
    if refresh == "auto":
        try:
            import syncd.derived  # noqa: F401, PLC0415

            refresh = "real"
        except ImportError:
            refresh = "stub"
    daemon = Daemon(cfg, instance="bench", refresh=(lambda *a, **k: None) if refresh == "stub" else None)
    batches: list[tuple[float, list[tuple[int, int, int]]]] = []
    if args.events:
        clock = time.monotonic

        def on_batch(result: object) -> None:
            t = clock()
            seen = {}
            for h in result.history:  # type: ignore[attr-defined]
                c = h.change
                seen[c.id] = (c.id, c.blog_id, c.post_id, _writes(c))
            batches.append((t, list(seen.values())))

        daemon.on_batch = on_batch  # type: ignore[assignment]
    install_signal_handlers(daemon)
    profile_to = os.environ.get("SYNCD_BENCH_PROFILE")  # where the daemon's cProfile stats go
    if profile_to:
        import cProfile  # noqa: PLC0415

        prof = cProfile.Profile()
        status = prof.runcall(daemon.run)
        prof.dump_stats(profile_to)
    else:
        status = daemon.run()
    if args.events:
        s = daemon.stats
        Path(args.events).write_text(
            json.dumps(
                {
                    "refresh": refresh,
                    "batches": batches,
                    "stats": {
                        "batches": s.batches,
                        "changes": s.changes,
                        "writes": s.writes,
                        "skipped": s.skipped,
                        "retries": s.retries,
                        "dead": s.dead,
                        "errors": s.errors,
                        "last_error": s.last_error,
                    },
                }
            )
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
