"""Native journald output: the wire format, the fields, the memfd path for large entries, the
fallback to stderr, and structlog configured with ``log.format = "journal"`` end to end.

Every test binds its own AF_UNIX datagram socket and points the writer at it, then parses the
datagrams the way journald does (``syncd.journal.decode`` is checked against hand-built bytes).
"""

from __future__ import annotations

import array
import io
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import journal
from syncd.log import configure_logging, get_logger, resolve_format


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield path, sock
    finally:
        sock.close()


def receive(sock: socket.socket) -> list[tuple[str, str]]:
    """One entry as journald reads it: the datagram, or the memfd passed with an empty payload."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    if fds:
        assert data == b"", "the native protocol forbids payload and descriptor together"
        fd = fds[0]
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
    return journal.decode(data)


def as_dict(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in fields:
        out.setdefault(k, []).append(v)
    return out


# --------------------------------------------------------------------------- pure
def test_wire_format_simple_and_binary_safe_fields() -> None:
    raw = journal.encode([("MESSAGE", "hello"), ("SYNCD_ERROR", "line one\nline two")])
    value = b"line one\nline two"
    assert raw == b"MESSAGE=hello\n" + b"SYNCD_ERROR\n" + struct.pack("<Q", len(value)) + value + b"\n"
    assert journal.decode(raw) == [("MESSAGE", "hello"), ("SYNCD_ERROR", "line one\nline two")]


def test_fields_of_an_event() -> None:
    event = {
        "event": "change_synced",
        "sku": "TSHIRT-RED",
        "blog": 3,
        "batch_id": 17,
        "lag_ms": 4.5,
        "to_blogs": [1, 2],
        "ok": True,
        "nothing": None,
        "level": "warning",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    f = as_dict(journal.fields_of(event))
    assert f["PRIORITY"] == ["4"] and f["SYSLOG_IDENTIFIER"] == ["syncd"]
    assert f["SYNCD_EVENT"] == ["change_synced"]
    assert f["SYNCD_SKU"] == ["TSHIRT-RED"] and f["SYNCD_BLOG"] == ["3"]
    assert f["SYNCD_BATCH"] == ["17"], "batch_id is an alias of SYNCD_BATCH"
    assert f["SYNCD_LAG_MS"] == ["4.5"] and f["SYNCD_OK"] == ["true"] and f["SYNCD_NOTHING"] == ["null"]
    assert f["SYNCD_TO_BLOGS"] == ["1", "2"], "a list is the field repeated, so each value matches"
    assert "SYNCD_TIMESTAMP" not in f and "SYNCD_LEVEL" not in f
    assert f["MESSAGE"] == [
        "change_synced sku=TSHIRT-RED blog=3 batch_id=17 lag_ms=4.5 to_blogs=[1, 2] ok=true nothing=null"
    ]


@pytest.mark.parametrize(
    ("level", "priority"),
    [("debug", "7"), ("info", "6"), ("warning", "4"), ("error", "3"), ("critical", "2")],
)
def test_priority_from_level(level: str, priority: str) -> None:
    assert as_dict(journal.fields_of({"event": "x", "level": level}))["PRIORITY"] == [priority]


def test_field_names_are_valid_journal_names() -> None:
    assert journal.field_name("lag_ms") == "SYNCD_LAG_MS"
    assert journal.field_name("weird-key.x") == "SYNCD_WEIRD_KEY_X"
    assert len(journal.field_name("k" * 100)) == 64


def test_resolve_format_auto_picks_journal_only_when_stderr_is_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = (tmp_path / "stderr").open("w")
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert resolve_format("auto", f) == "journal"
    # A child that inherited the variable but not the descriptor must not switch.
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert resolve_format("auto", f) == "json"
    monkeypatch.delenv("JOURNAL_STREAM")
    assert resolve_format("auto", f) == "json"
    f.close()


# --------------------------------------------------------------------------- writer
def test_writer_sends_one_datagram_per_event(journal_socket) -> None:
    path, sock = journal_socket
    w = journal.JournalWriter(path, fallback=io.StringIO())
    w.write({"event": "batch_applied", "level": "info", "batch": 5, "changes": 2})
    f = as_dict(receive(sock))
    assert f["SYNCD_EVENT"] == ["batch_applied"] and f["SYNCD_BATCH"] == ["5"] and f["PRIORITY"] == ["6"]
    assert w.sent == 1 and w.fell_back == 0


def test_large_entry_goes_through_a_sealed_memfd(journal_socket) -> None:
    path, sock = journal_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    w = journal.JournalWriter(path, fallback=io.StringIO())
    big = "x" * 400_000  # larger than any default datagram limit (net.core.wmem_max)
    w.write({"event": "big", "level": "error", "error": big})
    f = as_dict(receive(sock))
    assert f["SYNCD_ERROR"] == [big] and f["PRIORITY"] == ["3"]


def test_falls_back_to_json_on_stderr_when_the_socket_is_missing(tmp_path: Path) -> None:
    err = io.StringIO()
    w = journal.JournalWriter(str(tmp_path / "no-such.sock"), fallback=err)
    w.write({"event": "batch_applied", "level": "info", "batch": 1})
    w.write({"event": "batch_applied", "level": "info", "batch": 2})
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["journal_unavailable", "batch_applied", "batch_applied"]
    assert lines[0]["socket"].endswith("no-such.sock")
    assert [e.get("batch") for e in lines[1:]] == [1, 2]
    assert w.fell_back == 2 and w.sent == 0


def test_configure_logging_journal_end_to_end(journal_socket, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = journal_socket
    monkeypatch.setenv(journal.ENV_SOCKET, path)
    err = io.StringIO()
    try:
        assert configure_logging("info", "journal", stream=err) == "journal"
        log = get_logger(component="test").bind(blog=3)
        log.info("change_synced", sku="MUG", to_blogs=[1, 2])
        log.debug("not_sent")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("apply_failed", batch=9)
        logging.getLogger("apscheduler.scheduler").warning("job %s missed", "heartbeat")
        first = as_dict(receive(sock))
        assert first["SYNCD_EVENT"] == ["change_synced"] and first["SYNCD_SKU"] == ["MUG"]
        assert first["SYNCD_BLOG"] == ["3"] and first["SYNCD_COMPONENT"] == ["test"]
        assert first["SYNCD_TO_BLOGS"] == ["1", "2"] and first["PRIORITY"] == ["6"]
        second = as_dict(receive(sock))
        assert second["SYNCD_EVENT"] == ["apply_failed"] and second["PRIORITY"] == ["3"]
        assert "ValueError: boom" in second["SYNCD_EXCEPTION"][0]
        assert "ValueError: boom" in second["MESSAGE"][0]
        third = as_dict(receive(sock))
        assert third["MESSAGE"] == ["job heartbeat missed logger=apscheduler.scheduler"]
        assert third["PRIORITY"] == ["4"] and third["SYNCD_LOGGER"] == ["apscheduler.scheduler"]
        assert err.getvalue() == "", "nothing goes to stderr while the journal answers"
    finally:
        configure_logging("info", "json", stream=io.StringIO())
