"""``python -m syncd`` and the ``syncd`` console script."""

from __future__ import annotations


def entry() -> int:
    # Before anything else (imports take a while): a stop signal during start-up is kept, not fatal.
    from syncd.signals import catch_early

    catch_early()
    from syncd.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
