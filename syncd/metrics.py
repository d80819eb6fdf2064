"""Prometheus metrics of the daemon: ``[metrics] listen = "127.0.0.1:9187"`` (off by default).

Counters and the lag histogram are fed by the daemon as batches are applied (:meth:`Metrics.
batch_applied`, :meth:`retry`, :meth:`dead_letter`); the state gauges (leader, backlog, capture
mode per blog, last successful batch) are read from the daemon at scrape time, so a scrape never
touches the database. The HTTP server is prometheus_client's own, on a daemon thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Propagation lag buckets (seconds): the 3-blog target is tens of milliseconds, a backlog minutes.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """Everything ``/metrics`` shows, on a registry of its own (tests can run several daemons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lag = Histogram(
            "syncd_propagation_lag_seconds",
            "Time from a change's capture on its blog (trigger time) to the commit that applied it",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.changes = Counter("syncd_changes_applied", "Captured changes applied", registry=r)
        self.writes = Counter("syncd_member_writes", "Values written to linked products", registry=r)
        self.batches = Counter("syncd_batches_applied", "Batches committed", registry=r)
        self.retries = Counter(
            "syncd_batch_retries", "Batches rolled back and retried", ["reason"], registry=r
        )
        self.dead = Counter(
            "syncd_dead_letters", "Changes moved to the dead-letter table", ["reason"], registry=r
        )

    def batch_applied(self, captured: Iterable[datetime | None], writes: int, committed_at: float) -> None:
        """One committed batch: the capture times (naive UTC) of its changes, the member writes."""
        n = 0
        for at in captured:
            n += 1
            if at is not None:
                self.lag.observe(max(0.0, committed_at - at.replace(tzinfo=UTC).timestamp()))
        self.changes.inc(n)
        self.writes.inc(writes)
        self.batches.inc()

    def retry(self, reason: str) -> None:
        self.retries.labels(reason=reason).inc()

    def dead_letter(self, reason: str, changes: int = 1) -> None:
        self.dead.labels(reason=reason).inc(changes)

    def watch(self, daemon: Any) -> None:
        """Report ``daemon``'s state (leader, backlog, capture mode, last batch) at every scrape."""
        self.registry.register(_DaemonState(daemon))


class _DaemonState(Collector):
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[GaugeMetricFamily]:
        d = self.daemon
        s = d.stats
        yield _gauge(
            "syncd_leader", "1 while this instance holds the leader lock", 1 if s.leader_since else 0
        )
        yield _gauge(
            "syncd_backlog_changes",
            "Captured changes waiting to be applied (at the last heartbeat; NaN before the first)",
            math.nan if s.backlog is None else s.backlog,
        )
        yield _gauge(
            "syncd_backlog_oldest_seconds",
            "Age of the oldest waiting change at the last heartbeat (0 when none)",
            s.backlog_age_s or 0.0,
        )
        yield _gauge(
            "syncd_last_batch_timestamp_seconds",
            "Unix time of the last successful batch (0: none since start)",
            s.last_apply or 0.0,
        )
        yield _gauge("syncd_start_timestamp_seconds", "Unix time this daemon started", s.started_at)
        mode = GaugeMetricFamily(
            "syncd_capture_mode",
            "1 for the capture mode of each blog syncd keeps in sync",
            labels=["blog", "mode"],
        )
        for blog_id in sorted(d.blogs()):
            mode.add_metric([str(blog_id), d.capture_mode], 1)
        yield mode
        following = d.binlog_following()
        if following is not None:
            yield _gauge(
                "syncd_binlog_following",
                "Binlog capture: 1 while the daemon follows the binary log (0: only the full comparison finds writes)",
                1.0 if following else 0.0,
            )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9187' / '[::1]:9187' -> (host, port), by the dashboard's parser. Raises ValueError."""
    from syncd.config import split_listen

    try:
        return split_listen(text)
    except ValueError:
        raise ValueError(f'expected "HOST:PORT" such as "127.0.0.1:9187", got {text!r}') from None


def serve(listen: str, daemon: Any) -> Metrics:
    """Start the endpoint for ``daemon`` (its ``metrics`` attribute is set); returns the Metrics."""
    metrics = Metrics()
    metrics.watch(daemon)
    host, port = parse_listen(listen)
    start_http_server(port, addr=host, registry=metrics.registry)
    daemon.metrics = metrics
    return metrics


def dead_letter_reason(errno: int | None, exc: BaseException) -> str:
    """A bounded label: the MySQL error number, else the exception class."""
    return f"errno {errno}" if errno is not None else type(exc).__name__
