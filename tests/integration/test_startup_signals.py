"""A stop signal during start-up (issue 9, "the flaky crash test"): the daemon catches SIGTERM
before any other start-up work, so a stop sent while it is still reading its configuration ends
it cleanly (exit 0) instead of killing it (exit -15).

The moment is made exact with a FIFO as the configuration file: opening its write end succeeds
exactly when the daemon opens it to read its configuration, and the daemon waits there until the
test writes the file. No sleeps, no timing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from tests.integration.daemon_process import DaemonProcess, catches, write_config


def open_writer(fifo: Path, proc: DaemonProcess, timeout: float = 30.0) -> int:
    """The FIFO's write end, opened as soon as the daemon has opened the read end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
        assert proc.alive(), f"the daemon exited before reading its configuration\n{proc.log_tail()}"
        assert time.monotonic() < deadline, "the daemon never opened its configuration"
        time.sleep(0.005)


def test_sigterm_while_the_daemon_reads_its_configuration_stops_it_cleanly(wp_network, tmp_path):
    net = wp_network
    text = write_config(tmp_path, net).read_bytes()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    proc = DaemonProcess(fifo, name="early-stop").start()
    try:
        fd = open_writer(fifo, proc)
        try:
            # The daemon is reading its configuration: start-up work has begun, and a stop
            # signal must already be handled (on main this was the default action: exit -15).
            assert catches(proc.pid, signal.SIGTERM), "SIGTERM is not handled during start-up"
            proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            os.set_blocking(fd, True)
            os.write(fd, text)
        finally:
            os.close(fd)
        assert proc.wait(30) == 0, proc.log_tail()
    finally:
        proc.stop()
    assert proc.named("stop_requested"), proc.log_tail()
    assert proc.named("leader_acquired") == [], "a daemon stopped during start-up must not start leading"
    assert proc.named("daemon_stopped"), proc.log_tail()


def test_sigterm_during_start_up_of_another_command_still_stops_it(wp_network, tmp_path):
    """Only the daemon keeps early signals for itself: `syncd check` dies of SIGTERM as before."""
    net = wp_network
    text = write_config(tmp_path, net).read_bytes()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    proc = DaemonProcess(fifo, name="check")
    proc.command = lambda *args: DaemonProcess.command(proc, "check")  # type: ignore[method-assign]
    proc.start()
    try:
        fd = open_writer(fifo, proc)
        try:
            proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            os.set_blocking(fd, True)
            os.write(fd, text)
        finally:
            os.close(fd)
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        proc.stop()
