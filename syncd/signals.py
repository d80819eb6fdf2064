"""Stop and reload signals caught from the first instant of the process (stdlib only).

``syncd run`` spends a second or more importing, reading its configuration and connecting before
the daemon's own handlers exist; a SIGTERM in that window used to kill the process with the
default action (exit -15, no clean stop). :func:`catch_early` is the first thing the entry point
does: it records SIGTERM, SIGINT and SIGHUP until the daemon takes them over
(:func:`syncd.daemon.install_signal_handlers` replays them) or, for any other command,
:func:`release` restores the default handling and re-delivers what arrived.
"""

from __future__ import annotations

import signal

CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_pending: list[int] = []
_catching = False


def _record(signum: int, _frame: object) -> None:
    _pending.append(signum)


def catch_early() -> None:
    """Record stop/reload signals instead of dying of them (until taken over or released)."""
    global _catching
    for sig in CAUGHT:
        signal.signal(sig, _record)
    _catching = True


def take_pending() -> list[int]:
    """Signals received since :func:`catch_early` (call after installing the real handlers)."""
    global _catching
    _catching = False
    out = list(_pending)
    _pending.clear()
    return out


def release() -> None:
    """Not the daemon: default signal handling again, and the signals that arrived meanwhile
    delivered now (a SIGTERM sent to ``syncd check`` during its imports still stops it)."""
    if not _catching:
        return  # catch_early was not called (library use, tests): leave the handlers alone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in take_pending():
        signal.raise_signal(sig)
