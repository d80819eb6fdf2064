"""The daemon: one active instance per network, a main loop that applies captured changes, and
periodic work on a scheduler.

Process model (DESIGN.md section 4):

* The leader holds ``GET_LOCK('syncd:<schema>:<prefix>')`` on a dedicated connection. Another
  instance waits as a hot standby and takes over as soon as the lock frees (the leader stopped,
  died, or lost its connection).
* The main loop reads the oldest change rows, plans and applies them in one transaction, and
  between empty polls waits on the stop event (``sync.idle_wait``), so shutdown is prompt.
* Errors are handled by class (:mod:`syncd.queue`): a lost connection reconnects and retries;
  transient errors (deadlocks, lock-wait timeouts, a read-only server, statement timeouts, a full
  table or disk, a failed commit) roll the batch back and retry it with capped backoff for as long
  as they last; nothing of it was applied, its change rows are still there. Any other error splits
  the batch into statement groups, each applied alone; a group that still fails, twice, is moved
  to ``{base}syncd_dead`` with the error, so one poisoned statement never stops the shop's sync.
  Changes of a blog that is not usable are held in the queue until it is.
* SIGHUP: re-read the configuration file and apply what can change while running (log level and
  format, sync, capture.poll_interval, history, blogs) without dropping the leader lock;
  ``[database]`` and ``capture.mode`` changes are reported as needing a restart. A file that no
  longer validates is reported and the running configuration is kept.
* First SIGTERM/SIGINT: finish the batch in flight and exit 0. Second: abort (the open
  transaction is rolled back by the server when the connection closes) and exit 3.
* Exit status is chosen for systemd's ``Restart=on-failure`` + ``RestartPreventExitStatus=78``:
  0 stopped on request (no restart); 1 unexpected error (restart); 3 aborted (restart unless
  systemd itself is stopping it); 78 what a restart cannot fix: the database refuses this
  configuration at start-up (access denied, unknown database, no such network). A server that is
  down at start-up is waited for with capped backoff, not exited on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from syncd import capture, catalog, fanout, poll, queue, record, schema, settle, wake
from syncd import signals as early_signals
from syncd.apply import Applier, BatchConflict, BatchExtend, BatchResult
from syncd.config import Config, ConfigError, load_config
from syncd.db import errno_of, is_disconnect, is_retryable, server_info, table
from syncd.fields import realtime, recheck
from syncd.fields.group import FieldGroup
from syncd.network import Blog, NotMultisiteError
from syncd.notify import notify, watchdog_interval
from syncd.plan import Change, format_quantity
from syncd.probe import IdleProbe

log = structlog.get_logger("syncd.daemon")

#: Refusals that mean "this user may not create triggers" (1419: binary logging needs SUPER or
#: log_bin_trust_function_creators), and nothing else: other errors are real errors.
PRIVILEGE_ERRORS = frozenset({1044, 1142, 1227, 1419, 1370})
#: How often an idle loop looks for settled products to join (syncd.settle): a cheap indexed read.
SETTLE_EVERY = 0.1
#: Bulk work goes on in short batches for this long after sales last went ahead of it.
SALES_RECENT_S = 2.0

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_ABORTED = 3
EXIT_CONFIG = 78  # same as syncd.cli.EXIT_CONFIG (EX_CONFIG): systemd does not restart on it

#: Errors at start-up that mean "this configuration will never work here": access denied (1044,
#: 1045, 1142, 1227, 1698), host not allowed (1130), unknown database (1049).
REFUSED_AT_START = frozenset({1044, 1045, 1049, 1130, 1142, 1227, 1698})


class HardStop(BaseException):
    """Raised in the main thread by the second stop signal; ``in_batch`` is taken at the signal
    (by the time run() catches it, the batch's ``finally`` has already reset the flag)."""

    def __init__(self, in_batch: bool = False) -> None:
        super().__init__(in_batch)
        self.in_batch = in_batch


#: Binlog capture: products compared per transaction (their rows are read with locks).
NAMED_CHUNK = 200


class StartupRefused(RuntimeError):
    """The database refuses this configuration at start-up; restarting will not help."""


@dataclass
class Stats:
    started_at: float = field(default_factory=time.time)
    leader_since: float | None = None
    batches: int = 0
    changes: int = 0
    writes: int = 0
    skipped: int = 0
    retries: int = 0
    dead: int = 0
    errors: int = 0
    reconnects: int = 0
    last_apply: float | None = None
    last_capture: float | None = None
    last_lag_ms: float | None = None
    last_error: str | None = None
    connection: str = "starting"
    backlog: int | None = None  # pending change rows at the last heartbeat
    backlog_age_s: float | None = None  # age of the oldest of them
    apply_connection_id: int | None = None  # CONNECTION_ID() of the apply connection (for status)
    starts: int | None = None  # daemon starts recorded in {base}syncd_meta, this one included
    retry_reasons: dict[str, int] = field(default_factory=dict)  # batch retries by error class
    held: dict[int, str] = field(default_factory=dict)  # blog -> why its changes are held


def lock_name(database: str, base_prefix: str) -> str:
    """GET_LOCK name for this network; MySQL limits lock names to 64 characters."""
    name = f"syncd:{database}:{base_prefix}"
    if len(name) <= 64:
        return name
    return "syncd:" + hashlib.sha1(name.encode()).hexdigest()


class Daemon:
    def __init__(
        self, config: Config, *, instance: str | None = None, refresh: Callable[..., object] | None = None
    ) -> None:
        self.config = config
        self._refresh = refresh  # derived-data writer; None = syncd.derived.refresh_many (all blogs at once)
        self.base = config.database.table_prefix
        self.stop = threading.Event()
        #: Tests: called with a pipeline step's name before it runs (syncd.apply.Applier.step).
        self.step_hook: Callable[[str], None] | None = None
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.stats = Stats()
        self._blogs: dict[int, Blog] = {}
        #: Blogs served before and not now (archived, spam, flagged deleted, WooCommerce off)
        #: whose tables are still there: read for their translation groups (syncd.resolve), and in
        #: poll mode still polled, so that their writes are queued (and held) in the order they
        #: happen, as the triggers of trigger mode queue them.
        self._blogs_away: dict[int, Blog] = {}
        self._blogs_lock = threading.Lock()
        self._apply_engine: sa.Engine | None = None
        self._admin_engine: sa.Engine | None = None
        self._lock_conn: sa.Connection | None = None
        self._lock_name = ""
        self._lock_conn_id: int | None = None  # CONNECTION_ID() that holds the leader lock
        # Set while this instance leads: the periodic leader-only work (heartbeat, discovery, full
        # member refresh, pruning) runs only then; cleared on demotion, set again on promotion.
        self._leading = threading.Event()
        self._demoted = threading.Event()  # set between a demotion and the next promotion
        self._scheduler: Any = None
        self._in_batch = False
        self.capture_mode = "trigger"
        self.on_batch: Callable[[BatchResult], None] | None = None  # test/bench hook
        self.ready = threading.Event()  # set once this instance leads and has started up
        self._watchdog_every = watchdog_interval()  # None outside systemd / without WatchdogSec
        self._last_ping = 0.0
        self._reload = threading.Event()  # set by SIGHUP, served by the main or standby loop
        self._probe: IdleProbe | None = None  # the idle loop's one-round-trip probe
        self._wake: wake.BinlogWake | None = None  # wakes the idle loop from the binary log
        self._poll_until = 0.0  # after a wake: poll every idle_wait until then
        self._meta_tables: dict[str, tuple[int, frozenset[str]]] | None = None  # see meta_tables
        self._awaiting_take_over: set[int] = set()  # see _without_postmeta_triggers
        self._hand_back_failed: set[int] = set()  # see discover: not served until handed to triggers
        self._went_ahead = False  # the last batch was fetched ahead of bulk work (queue.fetch_lanes)
        self._ahead_at = -1e9  # when a batch last went ahead of bulk work
        self.metrics: Any = None  # syncd.metrics.Metrics when [metrics] listen is set
        self._realtime: tuple[Config, dict[str, FieldGroup]] | None = None  # see realtime_groups
        self._fields_due_at = 0.0  # monotonic: the earliest field deferral or price check is due

    # -- lifecycle -------------------------------------------------------------------------

    def _make_engines(self) -> None:
        if self._apply_engine is None:
            # query_cache_size=0: the apply statements carry IN lists of every size (one SQL text
            # per list length), so SQLAlchemy's compiled cache keeps hundreds of large one-off
            # entries: +15 MB RSS per 500-change batch with 10 blogs, 57 -> 223 MB after 12 batches
            # (bench/). Compiling a text() statement again costs microseconds.
            # multi_statements: the derived step sends its reads, then its writes, as one round
            # trip each (syncd.db.run_many); latency is round trips.
            self._apply_engine = self.config.database.make_engine(
                apply_marker=True, pool_size=1, max_overflow=1, query_cache_size=0, multi_statements=True
            )
        if self._admin_engine is None:
            self._admin_engine = self.config.database.make_engine(pool_size=2, max_overflow=2)

    def prepare(self) -> None:
        """Engines, own tables, discovery and triggers, without leadership or the loop (tests, tools)."""
        self._make_engines()
        assert self._admin_engine is not None
        with self._admin_engine.connect() as conn:
            schema.ensure_schema(conn, self.base)
        self.discover(initial=True)

    def apply_pending(self, max_batches: int = 1000) -> int:
        """Apply every pending change now (one-shot, like rq's burst mode). Returns changes consumed."""
        self._make_engines()
        assert self._apply_engine is not None
        total = 0
        with self._apply_engine.connect() as conn:
            for _ in range(max_batches):
                n = self.process_once(conn)
                if not n:
                    if self.settle_due(conn):
                        continue
                    n = self.process_once(conn)  # changes a postponed join waits for
                    if not n:
                        break
                total += n
        return total

    def settle_due(self, conn: sa.Connection, limit: int = 50) -> int:
        """Join or heal the products that have settled (syncd.settle), each in a transaction of
        its own. Returns how many were done (joined, healed or dropped; postponed ones are not)."""
        conn.rollback()
        items = settle.due(conn, self.base, self.config.sync.settle_seconds, limit)
        conn.rollback()
        done = self._each_in_its_own_transaction(
            conn,
            items,
            lambda item: self._applier().settle(conn, item),
            "settle_failed",
            lambda item: {"blog": item.blog_id, "post": item.post_id, "kind": item.kind},
        )
        return done + self.finish_deferred(conn, limit)

    def _each_in_its_own_transaction(
        self,
        conn: sa.Connection,
        items: Sequence[Any],
        work: Callable[[Any], str],
        error_event: str,
        context: Callable[[Any], dict[str, Any]],
    ) -> int:
        """``work`` on each item, each committed on its own: one that fails is rolled back and
        logged (``error_event`` with ``context(item)``) and the others go on; a lost connection
        ends the round. Returns how many were done (any outcome but 'postponed')."""
        done = 0
        for item in items:
            try:
                outcome = work(item)
                conn.commit()
            except Exception as exc:
                _safe_rollback(conn)
                if is_disconnect(exc):
                    raise
                self._note_error(error_event, exc, **context(item))
                continue
            done += outcome != "postponed"
        return done

    def finish_deferred(self, conn: sa.Connection, limit: int = 50) -> int:
        """Write what a field pass deferred into members that have settled (syncd.fields.deferred),
        then derive again the rows of written products a save may have overwritten
        (syncd.fields.recheck), each in a transaction of its own. Returns how many were done."""
        from syncd.fields import deferred
        from syncd.fields.registry import make_groups

        items = deferred.due(conn, self.base, self.config.sync.settle_seconds, limit)
        checks = recheck.due(conn, self.base, self.config.sync.settle_seconds, limit)
        conn.rollback()
        if not items and not checks:
            self._note_fields_due(conn)
            return 0
        # every available group: a manual sync may run a group whose mode is "off"
        groups, settle_s = make_groups(self.config), self.config.sync.settle_seconds
        ctx = deferred.Context(self.base, self.blogs(), groups, settle_s, self.config.fields.takes_part)
        done = self._each_in_its_own_transaction(
            conn,
            items,
            lambda item: deferred.finish(conn, ctx, item),
            "field_deferral_failed",
            lambda item: {"blog": item.blog_id, "post": item.post_id, "group": item.group},
        )
        done += self._finish_checks(conn, ctx, checks)
        self._note_fields_due(conn)
        return done

    def _note_fields_due(self, conn: sa.Connection) -> None:
        """When the idle loop next needs to look for field work: when the earliest deferral or
        price check is due (syncd.fields.pending.next_due_in); now if none waits (the probe
        says when one appears) or one is due already."""
        from syncd.fields import pending

        due_in = pending.next_due_in(conn, self.base, self.config.sync.settle_seconds)
        conn.rollback()
        self._fields_due_at = time.monotonic() + max(0.0, due_in or 0.0)

    def _finish_checks(self, conn: sa.Connection, ctx: Any, checks: Sequence[Any]) -> int:
        """Derive again what a WooCommerce save may have overwritten after a field write
        (syncd.fields.recheck): most in one unlocked look, the rest each in a transaction of its own."""
        if not checks:
            return 0
        try:
            todo, done = recheck.triage(conn, ctx.base, ctx.blogs, ctx.groups, ctx.settle_seconds, checks)
            conn.commit()
        except Exception as exc:
            _safe_rollback(conn)
            if is_disconnect(exc):
                raise
            self._note_error("field_check_failed", exc, checks=len(checks))
            return 0
        return done + self._each_in_its_own_transaction(
            conn,
            todo,
            lambda c: recheck.finish(conn, ctx.base, ctx.blogs, ctx.groups, ctx.settle_seconds, c),
            "field_check_failed",
            lambda c: {"blog": c.blog_id, "post": c.post_id, "group": c.group},
        )

    def _applier(self) -> Applier:
        return Applier(
            self.base,
            self.blogs,
            self._refresh,
            poll_mode=self.polls_meta,
            blog_settings=self.config.blogs.for_blog,
            propagate_sku_renames=self.config.sync.propagate_sku_renames,
            settle_seconds=self.config.sync.settle_seconds,
            step_hook=self.step_hook,
            fields=realtime.fields_for(self.config, self.realtime_groups()),
            blogs_away=self.blogs_away,
        )

    def close(self) -> None:
        self._shutdown()

    def run(self) -> int:
        """Run until stopped. Returns the process exit status."""
        clean = False
        try:
            self._make_engines()
            if not self._become_leader():
                return EXIT_OK  # stopped while standing by
            self._start_up()
            notify("READY=1", "STATUS=leader, applying changes")
            self.ready.set()
            log.info(
                "daemon_ready", instance=self.instance, blogs=sorted(self._blogs), capture=self.capture_mode
            )
            self._loop()
            clean = True
            return EXIT_OK
        except HardStop as stop:
            log.warning("daemon_aborted", instance=self.instance, in_batch=stop.in_batch)
            return EXIT_ABORTED
        except (StartupRefused, NotMultisiteError) as exc:
            cause = exc.__cause__ or exc
            log.error(
                "startup_refused",
                errno=errno_of(cause),
                error=str(cause)[:300],
                exit_status=EXIT_CONFIG,
                hint="fix the configuration or the grants (syncd check), then start again",
            )
            return EXIT_CONFIG
        finally:
            notify("STOPPING=1")
            self._shutdown(clean=clean)

    def request_stop(self) -> None:
        if not self.stop.is_set():
            notify("STOPPING=1", "STATUS=stopping: finishing the batch in flight")
        self.stop.set()
        if self._wake is not None:
            self._wake.event.set()  # end an idle wait at once

    def request_reload(self) -> None:
        """Ask the running loop to re-read the configuration (the SIGHUP handler calls this)."""
        self._reload.set()

    def _serve_reload(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self.reload_config()

    def reload_config(self) -> bool:
        """Re-read the configuration file and apply what can change without a restart.

        Returns True when a valid configuration was read (even if some of it needs a restart).
        """
        notify("RELOADING=1", "STATUS=reloading the configuration")
        try:
            try:
                new = load_config(self.config.source) if self.config.source else load_config()
                new = new.with_log(*self.config.log_overrides)
            except ConfigError as exc:
                log.error("config_reload_failed", error=str(exc), kept="the running configuration")
                return False
            old = self.config
            changed = _changed_keys(old, new)
            needs_restart = [
                k for k in changed if k.startswith("database.") or k in ("capture.mode", "metrics.listen")
            ]
            # The connections, the leader lock and the capture mode stay as they are until a restart.
            new = dataclasses.replace(
                new,
                database=old.database,
                capture=dataclasses.replace(new.capture, mode=old.capture.mode),
            )
            new = self._reloaded_fields(old, new)
            self.config = new
            self._meta_tables = None  # the watched keys may have changed
            if new.log != old.log:
                from syncd.log import configure_logging

                configure_logging(new.log.level, new.log.format)
            if new.sync.discovery_interval != old.sync.discovery_interval and self._scheduler is not None:
                self._scheduler.reschedule_job(
                    "discovery", trigger="interval", seconds=new.sync.discovery_interval
                )
            log.info(
                "config_reloaded",
                source=new.source,
                changed=[k for k in changed if k not in needs_restart],
                needs_restart=needs_restart,
            )
            if needs_restart:
                log.warning(
                    "config_change_needs_restart", keys=needs_restart, command="systemctl restart syncd"
                )
            if self.capture_mode == "poll" and realtime.poll_refusals(self.realtime_groups()):
                # Refused at start-up; after a reload the groups' meta keys are polled, the rest not.
                log.error("fields_not_polled", reasons=realtime.poll_refusals(self.realtime_groups()))
            if new.blogs != old.blogs and self.stats.leader_since is not None:
                self.discover()  # blogs.include / exclude take effect now
            return True
        finally:
            notify("READY=1", self._status_line())

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 (with the current STATUS) every WatchdogSec/2. Called only from the loops
        that do the work (main loop, retry loop, standby loop): if one of them is stuck, the
        pings stop and systemd restarts the daemon."""
        if self._watchdog_every is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_every:
            notify("WATCHDOG=1", self._status_line())
            self._last_ping = now

    def _shutdown(self, clean: bool = False) -> None:
        if self._scheduler is not None:
            try:
                self._scheduler.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            if clean and self.stats.leader_since is not None and self._lock_conn is not None:
                try:
                    self.heartbeat(stopped=True)  # still the leader: record the clean stop
                except Exception:  # noqa: BLE001 - the next start then counts it as unclean
                    pass
        if self._lock_conn is not None:
            try:
                self._lock_conn.exec_driver_sql("DO RELEASE_LOCK(%s)", (self._lock_name,))
                self._lock_conn.close()
            except Exception:  # noqa: BLE001 - the server releases it when the connection closes anyway
                pass
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        for engine in (self._apply_engine, self._admin_engine):
            if engine is not None:
                engine.dispose()
        log.info(
            "daemon_stopped", instance=self.instance, batches=self.stats.batches, changes=self.stats.changes
        )

    # -- leadership ------------------------------------------------------------------------

    def _become_leader(self) -> bool:
        """Block (as a hot standby) until this instance holds the network's lock, or stop is set."""
        assert self._admin_engine is not None
        waited = False
        backoff = _Backoff(first=0.5, cap=10.0)
        while not self.stop.is_set():
            self._ping_watchdog()
            self._serve_reload()
            try:
                if self._lock_conn is None:
                    self._lock_conn = self._admin_engine.connect()
                    database = self._lock_conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
                    self._lock_name = lock_name(database or "", self.base)
                got = self._lock_conn.exec_driver_sql(
                    "SELECT GET_LOCK(%s, 1)", (self._lock_name,)
                ).scalar_one()
                self._lock_conn.commit()
                backoff.reset()
                if got == 1:
                    holder = self._lock_conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
                    self._lock_conn_id = int(holder)
                    self._lock_conn.commit()
                    self.stats.leader_since = time.time()
                    log.info("leader_acquired", lock=self._lock_name, instance=self.instance, waited=waited)
                    return True
                if not waited:
                    holder = self._lock_conn.exec_driver_sql(
                        "SELECT IS_USED_LOCK(%s)", (self._lock_name,)
                    ).scalar()
                    log.info("standby_waiting", lock=self._lock_name, leader_connection=holder)
                    # A standby has started up as far as it can: tell systemd (Type=notify would
                    # otherwise kill it at TimeoutStartSec), then keep the watchdog fed while waiting.
                    notify(
                        "READY=1",
                        f"STATUS=standby: waiting for the leader lock (held by connection {holder})",
                    )
                    waited = True
            except Exception as exc:  # noqa: BLE001 - a standby rides out any database fault
                self._drop_lock_conn()
                if self.stats.leader_since is None and errno_of(exc) in REFUSED_AT_START:
                    raise StartupRefused(str(exc)) from exc  # wrong password etc.: waiting will not help
                delay = backoff.next()
                self.stats.connection = "waiting for the server"
                self._note_error("leader_lock_failed", exc, retry_in=delay)
                self.stop.wait(delay)
        return False

    def _stop_leading(self) -> None:
        """Demoted: no leader-only work from now on (jobs check the flag, the scheduler pauses)."""
        self._leading.clear()
        self._demoted.set()
        self.stats.leader_since = None
        self._lock_conn_id = None
        if self._scheduler is not None:
            self._scheduler.pause()
        log.warning("leader_work_stopped", instance=self.instance)

    def _resume_leading(self) -> None:
        """Promoted again: catch up on what another leader may have changed, then resume the jobs."""
        try:
            self.discover()
        except Exception as exc:  # noqa: BLE001 - the scheduled discovery tries again
            self._note_error("discovery_failed", exc)
        self._leading.set()
        self._demoted.clear()
        if self._scheduler is not None:
            self._scheduler.resume()
        self._heartbeat_now()
        log.info("leader_work_resumed", instance=self.instance)

    def leads(self) -> bool:
        """This instance holds the leader lock right now (asked of the server, on its own connection)."""
        if not self._leading.is_set() or self._lock_conn_id is None or self._admin_engine is None:
            return False
        with self._admin_engine.connect() as conn:
            holder = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (self._lock_name,)).scalar()
            conn.rollback()
        return holder is not None and int(holder) == self._lock_conn_id

    def _drop_lock_conn(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.invalidate()
                self._lock_conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._lock_conn = None

    def _still_leader(self) -> bool:
        """The lock is tied to its connection: if that connection died, another instance may lead."""
        if self._lock_conn is None:
            return False
        try:
            holder = self._lock_conn.exec_driver_sql(
                "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self._lock_name,)
            ).scalar()
            self._lock_conn.commit()
            return holder == 1
        except Exception as exc:  # noqa: BLE001
            self._note_error("leader_check_failed", exc)
            self._drop_lock_conn()
            return False

    # -- start-up and periodic work ----------------------------------------------------------

    def _start_up(self) -> None:
        assert self._admin_engine is not None
        try:
            with self._admin_engine.connect() as conn:
                if self.config.sync.install_triggers:
                    schema.ensure_schema(conn, self.base)
                elif not schema.schema_current(conn, self.base):
                    # The runtime role may not create tables: the installer runs `syncd install`.
                    raise StartupRefused(
                        "syncd's tables are missing or outdated and sync.install_triggers = false: "
                        "run `syncd install` as the installer user first"
                    )
                self._record_start(conn)
            self.discover(initial=True)
            self._check_fields()
            if self.polls_meta:
                # Take the poll baselines before READY: a change made after READY must be seen,
                # and a first poll only records the baseline.
                self.poll()
        except sa.exc.DBAPIError as exc:
            if errno_of(exc) in REFUSED_AT_START:
                raise StartupRefused(str(exc)) from exc
            raise
        self._leading.set()
        self._start_scheduler()

    def _record_start(self, conn: sa.Connection) -> None:
        """Count this start in {base}syncd_meta ('daemon_starts', for `syncd status`), and whether
        the previous leader stopped cleanly (its last heartbeat says so) or died / lost its lock."""
        previous = schema.get_meta(conn, self.base, "daemon")
        raw = schema.get_meta(conn, self.base, "daemon_starts")
        starts = json.loads(raw) if raw else {"starts": 0, "unclean": 0}
        prev = json.loads(previous) if previous else None
        unclean = prev is not None and not prev.get("stopped_at")
        now = time.time()
        starts["starts"] = int(starts.get("starts", 0)) + 1
        starts["last_start_at"] = now
        if unclean:
            starts["unclean"] = int(starts.get("unclean", 0)) + 1
            starts["last_unclean_at"] = now
        schema.set_meta(conn, self.base, "daemon_starts", json.dumps(starts))
        conn.commit()
        self.stats.starts = starts["starts"]
        log.info(
            "daemon_started",
            instance=self.instance,
            starts=starts["starts"],
            previous=None if prev is None else ("unclean" if unclean else "clean"),
            previous_instance=None if prev is None else prev.get("instance"),
        )

    def blogs(self) -> Mapping[int, Blog]:
        with self._blogs_lock:
            return self._blogs

    def blogs_away(self) -> Mapping[int, Blog]:
        """Blogs served before and not now whose tables are still there (``_blogs_away``)."""
        with self._blogs_lock:
            return self._blogs_away

    def discover(self, initial: bool = False) -> None:
        """Refresh the blog list, install triggers on new blogs, refresh link groups."""
        from syncd.network import discover

        assert self._admin_engine is not None
        with self._admin_engine.connect() as conn:
            network = discover(conn, self.base)
            conn.rollback()
            usable = {b.blog_id: b for b in network.usable_blogs() if self._blog_selected(b.blog_id)}
            added = sorted(set(usable) - set(self._blogs))
            gone = sorted(set(self._blogs) - set(usable))
            for b in network.blogs:
                if b.problems:
                    log.warning("blog_left_alone", blog=b.blog_id, prefix=b.prefix, problems=list(b.problems))
            if initial:
                self._choose_capture_mode(conn, usable)
                self._refuse_unpollable_fields()
            elif self.capture_mode == "binlog":
                usable = self._without_postmeta_triggers(conn, usable)
            if self.capture_mode == "trigger" and self.config.sync.install_triggers:
                # A blog whose hand-over to triggers failed is not served until it succeeds (a
                # later discovery): nothing captures it meanwhile, and syncd's own writes into it
                # would be found as the shop's by the hand-over's comparison.
                self._hand_back_failed = self._hand_to_triggers(conn, usable)
                usable = {b: blog for b, blog in usable.items() if b not in self._hand_back_failed}
            if self.capture_mode in ("trigger", "binlog") and self.config.sync.install_triggers:
                for blog_id in sorted(usable):
                    try:
                        outcome = capture.install_blog_triggers(
                            conn, self.base, usable[blog_id], self.watch_for(blog_id)
                        )
                        if outcome != "unchanged":
                            log.info(
                                "triggers_installed",
                                blog=blog_id,
                                outcome=outcome,
                                version=capture.TRIGGER_VERSION,
                            )
                    except Exception as exc:  # noqa: BLE001 - leave this blog, keep the others
                        conn.rollback()
                        self._note_error("trigger_install_failed", exc, blog=blog_id)
            self._drop_excluded_triggers(conn, network.usable_blogs())
            # [sync] exclude_skus: stored for every membership refresh; changed (or at start) means
            # every blog's members are refreshed so that the 'excluded' marks follow the file.
            exclusions_changed = catalog.store_exclusions(conn, self.base, self.config.sync.exclude_skus)
            conn.commit()
            # (not a blog waiting for a restart to hand over: `added` was taken before it was set aside)
            for blog_id in (
                sorted(usable) if initial or exclusions_changed else [b for b in added if b in usable]
            ):
                try:
                    self._refresh_blog_members(conn, usable[blog_id], at_start=initial)
                    self._report_translations(conn, usable[blog_id])
                except Exception as exc:  # noqa: BLE001
                    conn.rollback()
                    self._note_error("members_refresh_failed", exc, blog=blog_id)
            if gone or initial:
                # At start too: members of a blog excluded (or gone) since the last run are forgotten.
                # A blog that is only not served now (archived, spam, flagged deleted, WooCommerce
                # off) keeps its members: its changes are held meanwhile, and a product it renamed
                # or sold must find its group again when it is back, not join as a new product.
                present = {b.blog_id for b in network.blogs} | {b.blog_id for b in network.skipped}
                catalog.drop_blog_members(conn, self.base, {b for b in present if self._blog_selected(b)})
                conn.commit()
            self._settle_queue(conn, network, usable)
            if gone:
                log.warning("blogs_gone", blogs=gone)
            if added and not initial:
                log.info("blogs_added", blogs=added)
        present = {b.blog_id for b in network.skipped} | {b.blog_id for b in network.blogs}
        away = {
            b: blog
            for b, blog in {**self._blogs_away, **self._blogs}.items()
            if b not in usable and b in present and b not in self._awaiting_take_over  # its triggers capture
        }
        with self._blogs_lock:
            self._blogs = usable
            self._blogs_away = away
            self._meta_tables = None  # binlog capture: rebuilt for the new blog list

    def _settle_queue(self, conn: sa.Connection, network: Any, usable: Mapping[int, Blog]) -> None:
        """Which blogs' changes the queue holds (not usable now: kept until they are), and the
        dead letters for changes of blogs that no longer exist or that the configuration excludes."""
        reasons = {b.blog_id: "blog is not live: " + ", ".join(b.reasons) for b in network.skipped}
        reasons.update(
            {
                b.blog_id: "blog is not usable: " + ("; ".join(b.problems) or "WooCommerce not active")
                for b in network.blogs
                if not b.usable
            }
        )
        reasons.update(
            {
                b: "its postmeta triggers wait for a restart to hand over to binlog capture"
                for b in self._awaiting_take_over
            }
        )
        reasons.update(
            {b: "its hand-over to trigger capture failed (retried)" for b in self._hand_back_failed}
        )
        queued = queue.queued_by_blog(conn, self.base)
        settle: dict[int, tuple[str, str]] = {}
        held: dict[int, str] = {}
        for b in sorted(set(queued) - set(usable)):
            if not self._blog_selected(b):
                settle[b] = (queue.DEAD_BLOG_EXCLUDED, f"blog {b} is excluded by the configuration ([blogs])")
            elif b not in reasons:
                settle[b] = (queue.DEAD_BLOG_GONE, f"blog {b} no longer exists in the network")
            else:
                held[b] = reasons[b]
        if settle:
            moved = queue.dead_letter_blogs(conn, self.base, settle)
            conn.commit()
            for b, n in moved.items():
                self.stats.dead += n
                log.error(
                    "changes_dead_lettered", blog=b, changes=n, reason=settle[b][1], error_class=settle[b][0]
                )
        conn.rollback()
        for b in sorted(set(held) - set(self.stats.held)):
            log.warning("changes_held", blog=b, changes=queued[b][0], reason=held[b])
        for b in sorted(set(self.stats.held) - set(held)):
            log.info("changes_released", blog=b)
        self.stats.held = held

    def _choose_capture_mode(self, conn: sa.Connection, usable: Mapping[int, Blog]) -> None:
        """trigger or poll. ``auto`` tries triggers and falls back to polling when the user may not create them."""
        mode = self.config.capture.mode
        installed = capture.installed_triggers(conn, self.base)
        if mode == "binlog":
            why = wake.unavailable(conn)
            if why is not None:
                raise StartupRefused(f'capture.mode = "binlog" needs the binary log on in ROW format: {why}')
            image = str(conn.exec_driver_sql("SELECT @@binlog_row_image").scalar()).upper()
            if image != "FULL":  # an UPDATE's images then lack the post id: its blog is compared whole
                log.warning(
                    "binlog_row_image_not_full", binlog_row_image=image, compared="whole blog per write"
                )
            self.capture_mode = "binlog"
            self._take_over_postmeta(conn, usable, installed)
            return
        if mode == "poll":
            if installed:
                # Triggers and polling together would capture every change twice. Each blog's
                # snapshot takes over from its postmeta triggers exactly (an older snapshot, from
                # an earlier poll-mode run, would find the sales the triggers queued again).
                self._take_over_postmeta(conn, usable, installed)
                capture.uninstall_all_triggers(conn, self.base)
                log.warning("triggers_removed_for_poll_mode", triggers=sorted(installed))
            self.capture_mode = "poll"
            return
        if mode == "trigger" or not usable or not self.config.sync.install_triggers:
            # install_triggers = false: the installer put the triggers in place (`syncd install`).
            self.capture_mode = "trigger"
            return
        probe = usable[min(usable)]
        try:
            self._hand_blog_to_triggers(conn, probe, installed)  # after poll or binlog capture (a snapshot)
            capture.install_blog_triggers(conn, self.base, probe, self.watch_for(probe.blog_id))
            self.capture_mode = "trigger"
        except Exception as exc:  # noqa: BLE001 - classified: only a privilege refusal selects polling
            conn.rollback()
            if errno_of(exc) in PRIVILEGE_ERRORS:
                self.capture_mode = "poll"
                log.warning(
                    "capture_falls_back_to_poll",
                    reason="the database user may not create triggers",
                    errno=errno_of(exc),
                    poll_interval=self.config.capture.poll_interval,
                )
            else:
                raise

    def _hand_to_triggers(self, conn: sa.Connection, usable: Mapping[int, Blog]) -> set[int]:
        """Trigger capture after poll or binlog capture: a blog whose postmeta was compared with
        the snapshot (a baseline, no postmeta trigger) gets its triggers with the differences made
        since the last comparison queued, in one step (syncd.poll.hand_to_triggers). Returns the
        blogs where that failed: they get no trigger now, their snapshot stays, and the next
        discovery tries again (its comparison then covers the time between)."""
        failed: set[int] = set()
        installed = capture.installed_triggers(conn, self.base)  # once per discovery, not per blog
        conn.rollback()
        for blog_id, blog in sorted(usable.items()):
            try:
                self._hand_blog_to_triggers(conn, blog, installed)
            except Exception as exc:  # noqa: BLE001 - this blog keeps its snapshot, retried later
                _safe_rollback(conn)
                self._note_error("capture_hand_over_failed", exc, blog=blog_id)
                failed.add(blog_id)
        return failed

    def _hand_blog_to_triggers(
        self, conn: sa.Connection, blog: Blog, installed: Mapping[str, object] | None = None
    ) -> None:
        """One blog's hand-over to triggers (see _hand_to_triggers), when it needs one."""
        queued = poll.hand_back_to_triggers(conn, self.base, blog, self.watch_for(blog.blog_id), installed)
        if queued is not None:
            log.info("capture_handed_to_triggers", blog=blog.blog_id, queued=queued)

    def binlog_following(self) -> bool | None:
        """Binlog capture: whether the binary log is followed now (None in the other modes)."""
        if self.capture_mode != "binlog":
            return None
        return self._wake is not None and self._wake.following.is_set()

    @property
    def polls_meta(self) -> bool:
        """postmeta is captured by comparing it with the poll snapshot (poll and binlog capture)."""
        return self.capture_mode in ("poll", "binlog")

    def _take_over_postmeta(
        self, conn: sa.Connection, usable: Mapping[int, Blog], installed: Mapping[str, object]
    ) -> None:
        """Poll or binlog capture starts where postmeta triggers capture: per blog, the poll
        snapshot takes over exactly (syncd.poll.take_over_from_triggers). A user who may not drop
        the triggers (they come from `syncd install`) is refused: both would capture every write."""
        for blog_id, blog in sorted(usable.items()):
            try:
                found = poll.take_over_from_triggers(
                    conn, self.base, blog, self.watch_for(blog_id).meta_keys, installed
                )
            except sa.exc.DBAPIError as exc:
                conn.rollback()
                raise StartupRefused(
                    f"blog {blog_id}: its postmeta capture triggers cannot be dropped ({str(exc)[:120]}): "
                    "run `syncd install` as the installer user with this capture.mode"
                ) from exc
            if found is not None:
                log.info(
                    "capture_taken_over",
                    blog=blog_id,
                    capture=self.config.capture.mode,
                    found_by_next_poll=found,
                )

    def _without_postmeta_triggers(self, conn: sa.Connection, usable: Mapping[int, Blog]) -> dict[int, Blog]:
        """Binlog capture, a later discovery: a blog that still has postmeta triggers (archived
        across a switch from trigger capture, say) is not served. Handing it over here, beside a
        running batch, could count a write twice; its triggers keep queueing its writes (held,
        nothing lost) until a restart hands it over (`capture_taken_over`)."""
        installed = capture.installed_triggers(conn, self.base)
        conn.rollback()
        waiting = {b for b in usable if any(n in installed for n in capture.meta_trigger_names(self.base, b))}
        for blog_id in sorted(waiting - self._awaiting_take_over):
            log.error("capture_take_over_needs_restart", blog=blog_id, command="systemctl restart syncd")
        self._awaiting_take_over = waiting
        return {b: blog for b, blog in usable.items() if b not in waiting}

    def _refuse_unpollable_fields(self) -> None:
        """Poll mode captures meta keys only: a realtime field group that needs posts columns or
        term relationships is refused at start-up, with the reason (syncd.fields.realtime)."""
        if self.capture_mode == "poll":
            refusals = realtime.poll_refusals(self.realtime_groups())
            if refusals:
                raise StartupRefused("; ".join(refusals))

    def realtime_groups(self) -> dict[str, FieldGroup]:
        """The realtime field groups of the running configuration (rebuilt after a reload)."""
        if self._realtime is None or self._realtime[0] is not self.config:
            self._realtime = (self.config, realtime.realtime_groups(self.config))
        return self._realtime[1]

    def watch_for(self, blog_id: int) -> capture.Watch:
        """What the capture of this blog watches: stock and its realtime field groups."""
        return realtime.watch_for(self.config, blog_id, self.realtime_groups())

    def poll(self) -> int:
        """Poll mode: diff every blog against the snapshot and queue the differences (blogs not
        served now included: their changes are held in the queue, in the order they happened)."""
        from syncd.poll import poll_blog

        assert self._apply_engine is not None
        total = 0
        with self._blogs_lock:
            polled = [*self._blogs.values(), *self._blogs_away.values()]
        with self._apply_engine.connect() as conn:
            for blog in polled:
                try:
                    total += poll_blog(conn, self.base, blog, self.watch_for(blog.blog_id).meta_keys)
                    conn.commit()
                except Exception as exc:  # noqa: BLE001 - one blog's failure leaves the others polled
                    conn.rollback()
                    if is_disconnect(exc):
                        raise
                    if blog.blog_id in self._blogs_away:  # its tables went with it: not polled again
                        with self._blogs_lock:
                            self._blogs_away.pop(blog.blog_id, None)
                            self._meta_tables = None
                        log.warning("poll_away_blog_dropped", blog=blog.blog_id, errno=errno_of(exc))
                        continue
                    self._note_error("poll_failed", exc, blog=blog.blog_id)
        return total

    def _blog_selected(self, blog_id: int) -> bool:
        sel = self.config.blogs
        if sel.include is not None and blog_id not in sel.include:
            return False
        return blog_id not in sel.exclude

    def _drop_excluded_triggers(self, conn: sa.Connection, blogs: Sequence[Blog]) -> None:
        """[blogs] include/exclude: a blog syncd must not read keeps no capture trigger of syncd's
        (installed before it was excluded), so its writes are not even queued."""
        if self.capture_mode not in ("trigger", "binlog") or not self.config.sync.install_triggers:
            return
        installed = capture.installed_triggers(conn, self.base)
        for blog in blogs:
            if self._blog_selected(blog.blog_id):
                continue
            if any(name in installed for name in capture.blog_trigger_names(self.base, blog.blog_id)):
                try:
                    capture.uninstall_blog_triggers(conn, self.base, blog.blog_id)
                    log.info("triggers_removed", blog=blog.blog_id, reason="excluded by configuration")
                except Exception as exc:  # noqa: BLE001 - retried at the next discovery
                    conn.rollback()
                    self._note_error("trigger_uninstall_failed", exc, blog=blog.blog_id)

    def _report_translations(self, conn: sa.Connection, blog: Blog) -> None:
        """Corrupt Polylang translation groups are logged (once per process) and skipped."""
        if blog.polylang:
            catalog.report_translation_problems(blog.blog_id, catalog.translation_problems(conn, blog))
            conn.rollback()

    def _refresh_blog_members(self, conn: sa.Connection, blog: Blog, *, at_start: bool = False) -> None:
        """A blog's full membership refresh. While batches may be applied, in short chunks (no apply
        waits for it); at start-up, before the main loop, in one transaction (faster: ~1/3)."""
        settings = self.config.blogs.for_blog(blog.blog_id)
        if at_start:
            catalog.refresh_members(conn, self.base, blog, settings=settings)
            conn.commit()
        else:
            catalog.refresh_members_in_chunks(
                conn, self.base, blog, settings=settings, keep_going=self._may_work
            )

    def _may_work(self) -> bool:
        """Long leader-only work goes on: not stopping, not demoted meanwhile."""
        return not self.stop.is_set() and not self._demoted.is_set()

    def refresh_all_members(self) -> None:
        """The periodic full membership refresh: every blog, in short transactions of a chunk of
        posts each (catalog.refresh_members_in_chunks), so that apply batches never wait for it."""
        assert self._admin_engine is not None
        with self._admin_engine.connect() as conn:
            for blog in self.blogs().values():
                if not self._may_work():
                    return  # stopping, or demoted meanwhile: the new leader refreshes
                try:
                    self._refresh_blog_members(conn, blog)
                    self._report_translations(conn, blog)
                except Exception as exc:  # noqa: BLE001
                    conn.rollback()
                    self._note_error("members_refresh_failed", exc, blog=blog.blog_id)

    def prune_history(self) -> int:
        assert self._admin_engine is not None
        total = 0
        horizon = datetime.now(UTC) - timedelta(days=self.config.history.retention_days)
        with self._admin_engine.connect() as conn:
            # Before deleting: syncd.record.late_sets must know history may no longer be whole.
            schema.set_meta(
                conn, self.base, record.HISTORY_PRUNED_BEFORE, horizon.strftime("%Y-%m-%d %H:%M:%S.%f")
            )
            conn.commit()
            while self._may_work():
                n = conn.execute(
                    sa.text(
                        f"DELETE FROM {table(self.base, 'syncd_history')} "
                        "WHERE applied_at < UTC_TIMESTAMP(6) - INTERVAL :d DAY LIMIT 5000"
                    ),
                    {"d": self.config.history.retention_days},
                ).rowcount
                conn.commit()
                total += n
                if n < 5000:
                    break
            fanout.prune(conn, self.base)
            conn.commit()
        if total:
            log.info("history_pruned", rows=total, retention_days=self.config.history.retention_days)
        return total

    def heartbeat(self, stopped: bool = False) -> None:
        """Publish this daemon's state in {base}syncd_meta for `syncd status` (``stopped``: the
        last one, written on a clean stop, so the next start knows it was not a crash)."""
        assert self._admin_engine is not None
        s = self.stats
        with self._admin_engine.connect() as conn:
            pending, oldest = queue.backlog(conn, self.base, set(self.blogs()) - set(s.held))
            utc_now = conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)").scalar_one()
            conn.rollback()
        s.backlog = pending
        s.backlog_age_s = None if oldest is None else round((utc_now - oldest).total_seconds(), 3)
        notify(self._status_line())
        payload = {
            "instance": self.instance,
            "pid": os.getpid(),
            "started_at": s.started_at,
            "leader_since": s.leader_since,
            "capture": self.capture_mode,
            # Binlog capture: False means only the full comparison finds writes (poll_interval).
            "binlog_following": self.binlog_following(),
            "batches": s.batches,
            "changes": s.changes,
            "writes": s.writes,
            "skipped": s.skipped,
            "retries": s.retries,
            "dead": s.dead,
            "errors": s.errors,
            "reconnects": s.reconnects,
            "last_apply": s.last_apply,
            "last_capture": s.last_capture,
            "last_lag_ms": s.last_lag_ms,
            "last_error": s.last_error,
            "connection": s.connection,
            "backlog": s.backlog,
            "backlog_age_s": s.backlog_age_s,
            "apply_connection_id": s.apply_connection_id,
            "starts": s.starts,
            "retry_reasons": dict(s.retry_reasons),
            "held": {str(b): why for b, why in sorted(s.held.items())},
            "heartbeat": time.time(),
        }
        if stopped:
            payload["stopped_at"] = payload["heartbeat"]
            payload["connection"] = "closed"
        if self._lock_conn_id is None:
            return  # not the leader: the heartbeat row is the leader's
        with self._admin_engine.connect() as conn:
            # Written only if the lock is still ours at that instant: a demoted leader that has
            # not noticed yet never names itself in place of the new one (`syncd status`).
            schema.set_meta_if_lock_held(
                conn, self.base, "daemon", json.dumps(payload), self._lock_name, self._lock_conn_id
            )
            conn.commit()

    def _heartbeat_now(self) -> None:
        try:
            self.heartbeat()
        except Exception as exc:  # noqa: BLE001 - the scheduled heartbeat tries again in 5 s
            self._note_error("heartbeat_failed", exc)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})

        def guarded(name: str, fn: Callable[[], object]) -> Callable[[], None]:
            def job() -> None:
                try:
                    if not self.leads():
                        return  # leader-only work; a demoted instance's paused jobs may still fire once
                    fn()
                except Exception as exc:  # noqa: BLE001 - periodic work must never kill the daemon
                    self._note_error(name, exc)

            return job

        sched.add_job(
            guarded("discovery_failed", self.discover),
            "interval",
            seconds=self.config.sync.discovery_interval,
            id="discovery",  # rescheduled when a reload changes sync.discovery_interval
        )
        sched.add_job(guarded("members_refresh_failed", self.refresh_all_members), "interval", minutes=10)
        sched.add_job(guarded("history_prune_failed", self.prune_history), "interval", hours=1)
        sched.add_job(guarded("heartbeat_failed", self.heartbeat), "interval", seconds=5)
        self._schedule_fields(sched)
        sched.start()
        self._scheduler = sched
        guarded("heartbeat_failed", self.heartbeat)()

    # -- product data beyond stock (issue 10) -------------------------------------------------

    def _check_fields(self) -> None:
        """Refuse ``[fields]`` that cannot work on this network (exit 78: a restart will not help)."""
        from syncd.fields.checks import fields_problems

        problems = fields_problems(self.config, self.blogs())
        if problems:
            raise StartupRefused("; ".join(problems))

    def _reloaded_fields(self, old: Config, new: Config) -> Config:
        """``[fields]`` of a reloaded file: refused (the running ones kept, logged) when the daemon
        would refuse them at start-up; else the scheduled groups' jobs follow."""
        if new.fields == old.fields:
            return new
        from syncd.fields.checks import fields_problems

        problems = fields_problems(new, self.blogs())
        if problems:
            log.error("config_reload_fields_refused", problems=problems, kept="the running [fields]")
            return dataclasses.replace(new, fields=old.fields)
        if self._scheduler is not None:
            for job in self._scheduler.get_jobs():
                if job.id.startswith("fields:"):
                    job.remove()
            self.config = new
            self._meta_tables = None  # the watched keys may have changed
            self._schedule_fields(self._scheduler)
        return new

    def _schedule_fields(self, sched: Any) -> None:
        """One cron job per scheduled field group (``[fields.schedule] cron``), leader-only."""
        from apscheduler.triggers.cron import CronTrigger

        for name in self.config.fields.groups_in("scheduled"):

            def job(name: str = name) -> None:
                try:
                    self.run_field_pass([name])
                except Exception as exc:  # noqa: BLE001 - periodic work must never kill the daemon
                    self._note_error("fields_pass_failed", exc, group=name)

            trigger = CronTrigger.from_crontab(self.config.fields.schedule_cron, timezone="UTC")
            sched.add_job(job, trigger, id=f"fields:{name}")

    def run_field_pass(self, names: Sequence[str]) -> Any:
        """The scheduled pass of these field groups over every link group (None when not leading)."""
        from syncd.fields.manual import sync_fields
        from syncd.fields.registry import groups_in_mode

        if not self.leads():
            log.info("fields_pass_skipped", groups=",".join(names), reason="not leading")
            return None
        groups = {n: g for n, g in groups_in_mode(self.config, "scheduled").items() if n in names}
        engine = self.config.database.make_engine(apply_marker=True, multi_statements=True, pool_size=1)
        try:
            report, _ = sync_fields(self.config, engine, groups)
        finally:
            engine.dispose()
        log.info(
            "fields_pass_done",
            groups=",".join(names),
            link_groups=report.link_groups,
            written=len(report.written),
            problems=len(report.problems),
            skipped=len(report.skipped),
            deferred=len(report.deferred),
        )
        return report

    # -- the main loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._apply_engine is not None
        last_leader_check = time.monotonic()
        last_poll = 0.0
        last_settle = 0.0
        conn: sa.Connection | None = None
        backoff = _Backoff()
        lost_at: float | None = None  # when the apply connection was lost (None: not lost)
        idle = False  # the last look found nothing: the next one is the one-round-trip probe
        self._start_wake()
        while not self.stop.is_set():
            now = time.monotonic()
            self._ping_watchdog()
            self._serve_reload()
            if now - last_leader_check > 2.0:
                last_leader_check = now
                if not self._still_leader():
                    log.warning("leadership_lost", lock=self._lock_name)
                    self._stop_leading()
                    if conn is not None:
                        _discard(conn)
                        conn = None
                    if not self._become_leader():
                        return
                    self._resume_leading()
            try:
                if self.polls_meta and (
                    now - last_poll >= self.config.capture.poll_interval or self._resynced()
                ):
                    # Same thread as the applier: a poll and a batch never interleave (see syncd.poll).
                    last_poll = now
                    self.poll()
                elif self.capture_mode == "binlog":
                    self.poll_named()
                if conn is None:
                    conn = self._apply_engine.connect()
                    self.stats.apply_connection_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
                    conn.rollback()
                    self.stats.connection = "connected"
                    if lost_at is not None:
                        log.info("reconnected", down_s=round(time.monotonic() - lost_at, 3))
                        lost_at = None
                    self._heartbeat_now()  # `syncd status` sees the new connection at once
                settle_time = now - last_settle >= SETTLE_EVERY
                if idle and self._wake is not None:
                    self._wake.event.clear()  # before looking: a commit from now on wakes the wait
                if idle and not self._work_waiting(settle_time):
                    applied = 0  # one autocommit round trip found nothing (syncd.probe)
                else:
                    applied = self.process_once(conn)
                    if not applied and settle_time:
                        last_settle = now
                        applied = self.settle_due(conn)
                idle = not applied
                backoff.reset()
                if not applied:
                    self._wait_idle()
            except Exception as exc:  # noqa: BLE001 - classified below; the daemon stays up
                if conn is not None and (is_disconnect(exc) or not is_retryable(exc)):
                    _discard(conn)
                    conn = None
                delay = backoff.next()
                if is_disconnect(exc):
                    self.stats.connection = "reconnecting"
                    self.stats.reconnects += 1
                    lost_at = lost_at if lost_at is not None else time.monotonic()
                self._note_error("loop_error", exc, retry_in=delay, reason=_reason(exc))
                self.stop.wait(delay)
        if conn is not None:
            conn.close()

    def _resynced(self) -> bool:
        """Binlog capture: the log's stream (re)started, so what committed before it is compared
        in full now (syncd.wake)."""
        if self.capture_mode != "binlog" or self._wake is None or not self._wake.resynced.is_set():
            return False
        self._wake.resynced.clear()
        return True

    def poll_named(self) -> int:
        """Binlog capture: compare the products the binary log named with the snapshot. The
        comparison reads them with locks (syncd.poll.poll_posts), so a transaction the log shows
        before its commit is visible is waited for, not missed."""
        named = self._wake.take_touched() if self._wake is not None else {}
        return self._poll_products(named) if named else 0

    def _poll_products(self, named: Mapping[int, set[int]]) -> int:
        assert self._apply_engine is not None
        total = 0
        with self._blogs_lock:
            blogs = {**self._blogs_away, **self._blogs}
        with self._apply_engine.connect() as conn:
            for blog_id, posts in sorted(named.items()):
                blog = blogs.get(blog_id)
                if blog is None:
                    continue
                try:
                    ids, keys = sorted(posts), self.watch_for(blog_id).meta_keys
                    if wake.WHOLE_BLOG in posts:  # the log could not say which product (syncd.wake)
                        total += poll.poll_blog(conn, self.base, blog, keys)
                        conn.commit()
                        continue
                    for start in range(0, len(ids), NAMED_CHUNK):  # an import names thousands at once
                        total += poll.poll_posts(
                            conn, self.base, blog, ids[start : start + NAMED_CHUNK], keys
                        )
                        conn.commit()
                except Exception as exc:  # noqa: BLE001 - compared again: at the next look, or the next full poll
                    conn.rollback()
                    if not is_retryable(exc):  # the next full poll compares them
                        self._note_error("poll_failed", exc, blog=blog_id)
                        continue
                    if self._wake is not None:  # a deadlock with a shop write, a lost connection
                        self._wake.name_again(blog_id, posts)
                    if is_disconnect(exc):
                        raise
                    log.info("poll_retried", blog=blog_id, errno=errno_of(exc))
        return total

    def meta_tables(self) -> dict[str, tuple[int, frozenset[str]]]:
        """Binlog capture: each polled blog's postmeta table -> (blog id, its watched keys); read
        by the binary-log thread, rebuilt after a discovery or a reload."""
        tables = self._meta_tables
        if tables is None:
            with self._blogs_lock:
                blogs = [*self._blogs_away.values(), *self._blogs.values()]
            tables = {
                f"{b.prefix}postmeta": (b.blog_id, frozenset(self.watch_for(b.blog_id).meta_keys))
                for b in blogs
            }
            self._meta_tables = tables
        return tables

    def _start_wake(self) -> None:
        """Follow the binary log to wake the idle loop where it can (syncd.wake); else poll.
        Binlog capture also learns from it which products to compare with the snapshot."""
        if self._wake is not None or self.capture_mode == "poll":
            return
        assert self._admin_engine is not None
        try:
            with self._admin_engine.connect() as conn:
                why = wake.unavailable(conn)
                flavor = server_info(conn)["flavor"]
        except sa.exc.DBAPIError as exc:
            why = f"cannot tell: {str(exc)[:100]}"
        if why is not None and self.capture_mode == "binlog":
            log.error("binlog_capture_off", reason=why, poll_interval=self.config.capture.poll_interval)
            return
        if why is not None:
            log.info("binlog_wake_off", reason=why, idle_wait=self.config.sync.idle_wait)
            return
        self._wake = wake.BinlogWake(
            self.config.database.url,
            self.base,
            mariadb=flavor == "mariadb",
            meta_tables=self.meta_tables if self.capture_mode == "binlog" else None,
        )
        self._wake.start()

    def _wait_idle(self) -> None:
        """Nothing to do: wait for a commit of a change row (binary log), else ``idle_wait``."""
        w = self._wake
        if self.stop.is_set():  # request_stop's wake-up may have been cleared by this look
            return
        if self.capture_mode == "binlog" and w is not None and w.following.is_set():
            # Woken by a named product or a change row; else in time for the full poll.
            if not w.has_touched():
                w.wait(min(wake.FALLBACK_S, self.config.capture.poll_interval))
        elif self.polls_meta:
            self.stop.wait(max(self.config.sync.idle_wait, min(0.1, self.config.capture.poll_interval)))
        elif w is None or not w.following.is_set() or time.monotonic() < self._poll_until:
            self.stop.wait(self.config.sync.idle_wait)
        elif w.wait(wake.FALLBACK_S):
            self._poll_until = time.monotonic() + wake.AFTER_WAKE_S

    def _work_waiting(self, settle_time: bool) -> bool:
        """The idle probe (syncd.probe): a change of a served blog is queued, or it is time to
        look at settling products and some exist, or field work exists and is due (not before:
        a deferral or price check waits ``settle_seconds``, see :meth:`_note_fields_due`)."""
        if self._probe is None:
            assert self._admin_engine is not None
            self._probe = IdleProbe(self._admin_engine, self.base)
        queued, settling, fields = self._probe.work(set(self.blogs()) - set(self.stats.held))
        due = fields and time.monotonic() >= self._fields_due_at
        return queued or (settle_time and (settling or due))

    def process_once(self, conn: sa.Connection) -> int:
        """Fetch one batch and apply it (retrying as documented). Returns the changes consumed."""
        conn.rollback()
        serving = set(self.blogs()) - set(self.stats.held)
        # Sales go ahead of bulk work every other batch at most, so an import always progresses;
        # while sales went ahead lately, the import goes on in short batches (more are coming).
        fetched = queue.fetch_lanes(
            conn,
            self.base,
            self.config.sync.batch_size,
            blogs=serving,
            ahead=not self._went_ahead,
            short=time.monotonic() - self._ahead_at < SALES_RECENT_S,
        )
        if not fetched.changes:
            conn.rollback()
            return 0
        self._went_ahead = bool(fetched.passed)
        if self._went_ahead:
            self._ahead_at = time.monotonic()
        return self.apply_with_retry(conn, fetched.changes, ahead=self._went_ahead)

    def apply_with_retry(self, conn: sa.Connection, changes: Sequence[Change], *, ahead: bool = False) -> int:
        """Apply one unit of work, retrying by error class (syncd.queue). Returns the changes
        consumed (applied or dead-lettered); 0 when someone else applied them or they are held.
        ``ahead``: the batch was fetched ahead of older bulk rows (queue.fetch_lanes)."""
        applier = self._applier()
        backoff = _Backoff()
        attempt = permanent = 0
        while True:
            attempt += 1
            self._in_batch = True
            try:
                result = applier.apply(conn, changes)
                if ahead:
                    _check_ahead(conn, self.base, changes, result)
                conn.commit()
            except BatchConflict as exc:
                conn.rollback()
                log.warning("batch_conflict", reason=str(exc))
                return 0
            except queue.HeldBlogs as exc:
                conn.rollback()
                self._hold(exc.blogs)
                return 0
            except BatchExtend as extend:
                conn.rollback()
                # With the rest of their statements: a statement group is never split (syncd.queue).
                extra = queue.complete(conn, self.base, queue.fetch_ids(conn, self.base, extend.ids))
                conn.rollback()
                log.info("batch_extended", changes=len(changes), added=len(extra), reason=str(extend))
                changes = sorted({c.id: c for c in [*changes, *extra]}.values(), key=lambda c: c.id)
                continue
            except Exception as exc:
                _safe_rollback(conn)
                kind = queue.error_class(exc)
                if kind == queue.CONNECTION:
                    raise  # the loop reconnects and fetches again; the rows are still there
                if kind == queue.PERMANENT:
                    groups = queue.statement_groups(changes)
                    if len(groups) > 1:
                        return self._isolate(conn, groups, exc, ahead=ahead)
                    permanent += 1
                    if permanent >= queue.PERMANENT_ATTEMPTS:
                        self._dead_letter(conn, changes, exc)
                        return len(changes)
                self._wait_to_retry(exc, kind, attempt, len(changes), backoff)
                continue
            finally:
                self._in_batch = False
            self.stats.connection = "connected"
            self._account(result, changes, attempts=attempt)
            return len(changes)

    def _wait_to_retry(self, exc: Exception, kind: str, attempt: int, n: int, backoff: _Backoff) -> None:
        """Log, count (by reason, for `syncd status`) and wait before trying a batch again; a stop
        request ends the wait by raising the error (the loop then exits, nothing was applied)."""
        self._ping_watchdog()  # waiting out a read-only server is not a stuck loop
        why = queue.reason(exc)
        self.stats.retries += 1
        self.stats.retry_reasons[why] = self.stats.retry_reasons.get(why, 0) + 1
        if self.metrics is not None:
            self.metrics.retry(why)
        delay = backoff.next()
        self.stats.connection = f"connected, retrying a batch: {why}"
        log.warning(
            "batch_retry",
            attempt=attempt,
            errno=errno_of(exc),
            reason=why,
            error_class=kind,
            changes=n,
            retry_in=delay,
            error=str(exc)[:200],
        )
        if self.stop.wait(delay):
            raise exc

    def _hold(self, blogs: Mapping[int, str]) -> None:
        """Origins not usable at apply time: their changes stay queued (not fetched) until the next
        discovery finds the blog usable again."""
        for b, why in sorted(blogs.items()):
            if b not in self.stats.held:
                log.warning("changes_held", blog=b, reason=why)
            self.stats.held[b] = why

    def _isolate(
        self,
        conn: sa.Connection,
        groups: Sequence[Sequence[Change]],
        exc: BaseException,
        *,
        ahead: bool = False,
    ) -> int:
        """A batch failed for a reason that is not transient: apply it statement group by
        statement group (never change by change: one statement's rows are one sale)."""
        log.error(
            "batch_failed",
            changes=sum(len(g) for g in groups),
            statements=len(groups),
            errno=errno_of(exc),
            error=str(exc)[:300],
        )
        return sum(self.apply_with_retry(conn, g, ahead=ahead) for g in groups)

    def _dead_letter(self, conn: sa.Connection, changes: Sequence[Change], exc: BaseException) -> None:
        self.stats.dead += len(changes)
        if self.metrics is not None:
            from syncd.metrics import dead_letter_reason

            self.metrics.dead_letter(dead_letter_reason(errno_of(exc), exc), len(changes))
        first = changes[0]
        log.error(
            "change_dead_lettered",
            change=first.id,
            changes=[c.id for c in changes],
            blog=first.blog_id,
            post=first.post_id,
            key=first.meta_key,
            errno=errno_of(exc),
            error_class=queue.DEAD_ERROR,
            error=str(exc)[:300],
        )
        queue.dead_letter(
            conn, self.base, changes, queue.DEAD_ERROR, f"{errno_of(exc)}: {exc}", errno_of(exc)
        )
        conn.commit()

    def _account(self, result: BatchResult, changes: Sequence[Change], attempts: int = 1) -> None:
        s = self.stats
        s.batches += 1
        s.changes += len(changes)
        s.writes += result.writes
        s.skipped += result.skipped
        s.last_apply = time.time()
        newest = max((c.captured_at for c in changes if c.captured_at), default=None)
        if newest is not None:
            s.last_capture = newest.replace(tzinfo=UTC).timestamp()
            s.last_lag_ms = round((s.last_apply - s.last_capture) * 1000, 1)
        if self.metrics is not None:
            self.metrics.batch_applied((c.captured_at for c in changes), result.writes, s.last_apply)
        # One line per captured change, with the SKU and blogs as context, so that
        # `journalctl -u syncd SYNCD_SKU=X` / `SYNCD_BLOG=3` answer "what happened to X / on blog 3".
        copied_to: dict[int, list[int]] = {}
        for h in result.history:
            if h.role == "copy":
                copied_to.setdefault(h.change.id, []).append(h.blog_id)
        for h in result.history:
            if h.role == "origin":
                log.info(
                    "change_synced",
                    batch=result.batch_id,
                    change=h.change.id,
                    sku=h.sku,
                    blog=h.blog_id,
                    post=h.post_id,
                    key=h.meta_key,
                    old=h.old_value,
                    new=h.new_value,
                    delta=None if h.delta is None else format_quantity(h.delta),
                    to_blogs=sorted(copied_to.get(h.change.id, [])),
                )
        log.info(
            "batch_applied",
            batch=result.batch_id,
            changes=len(changes),
            writes=result.writes,
            skipped=result.skipped,
            lag_ms=s.last_lag_ms,
            attempts=attempts,
        )
        if self.on_batch is not None:
            self.on_batch(result)

    def _note_error(self, event: str, exc: BaseException, **context: Any) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{datetime.now(UTC).isoformat(timespec='seconds')} {event}: {str(exc)[:200]}"
        log.error(event, errno=errno_of(exc), error=str(exc)[:300], **context)

    def _status_line(self) -> str:
        """What `systemctl status syncd` shows: backlog, lag, work done, errors."""
        s = self.stats
        if s.leader_since is None:
            return "STATUS=standby: waiting for the leader lock"
        backlog = "?" if s.backlog is None else str(s.backlog)
        if s.backlog_age_s is not None:
            backlog += f" (oldest {s.backlog_age_s:.1f} s)"
        lag = "-" if s.last_lag_ms is None else f"{s.last_lag_ms:g} ms"
        return (
            f"STATUS=leader: backlog {backlog}, lag {lag}, {s.changes} changes applied, "
            f"{s.retries} retries, {s.errors} errors, connection {s.connection}"
        )


def _changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs between two configurations (never the values: one is a password)."""
    out = []
    for section in ("database", "capture", "sync", "history", "log", "blogs", "metrics", "fields"):
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                out.append(f"{section}.{f.name}")
    return out


def _reason(exc: BaseException) -> str:
    """The class of a database error in words, for log lines and STATUS (by errno, never by text)."""
    return queue.reason(exc)


class _Backoff:
    """Capped exponential backoff: 50 ms, 100 ms, ... up to 5 s."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.cap, self.current * 2)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


def _check_ahead(conn: sa.Connection, base: str, changes: Sequence[Change], result: BatchResult) -> None:
    """A batch fetched ahead of older bulk rows, still under its locks: if a product it wrote or
    originated has an older queued row outside it, it starts again with that row (and everything
    queued up to it, whole statement groups), so a product's changes apply in capture order."""
    keys = {(c.blog_id, c.post_id) for c in changes} | {(h.blog_id, h.post_id) for h in result.history}
    older = queue.passed_rows(conn, base, changes, keys)
    if older:
        raise BatchExtend(older)


def _discard(conn: sa.Connection) -> None:
    try:
        conn.invalidate()
        conn.close()
    except Exception:  # noqa: BLE001
        pass


def _safe_rollback(conn: sa.Connection) -> None:
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - a dead connection has nothing to roll back
        pass


def _log_from_thread(event: str, **context: Any) -> None:
    """Log from a signal handler without deadlocking: the handler runs in the main thread, maybe
    while that thread holds the log writer's lock (a log line being written), so the line is
    written by a short-lived thread that waits for the lock instead."""
    threading.Thread(target=lambda: log.info(event, **context), name="signal-log", daemon=True).start()


def install_signal_handlers(daemon: Daemon) -> None:
    """First SIGTERM/SIGINT: finish the batch and exit 0. Second: abort now. SIGHUP: reload."""
    count = {"n": 0}

    def handler(signum: int, _frame: object) -> None:
        count["n"] += 1
        if count["n"] == 1:
            _log_from_thread("stop_requested", signal=signal.Signals(signum).name, in_batch=daemon._in_batch)
            daemon.request_stop()
        else:
            raise HardStop(daemon._in_batch)

    def reload(signum: int, _frame: object) -> None:
        _log_from_thread("reload_requested", signal=signal.Signals(signum).name)
        daemon.request_reload()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, reload)
    # Signals that arrived during start-up (syncd.signals.catch_early): a stop asks this daemon to
    # stop before it does anything (exit 0), a reload re-reads the file.
    early = early_signals.take_pending()
    if any(s in (signal.SIGTERM, signal.SIGINT) for s in early):
        count["n"] = 1
        _log_from_thread("stop_requested", signal="early", in_batch=False)
        daemon.request_stop()
    if signal.SIGHUP in early:
        daemon.request_reload()


def run(config: Config) -> int:
    """Entry point of ``syncd run``: run the daemon in the foreground until stopped."""
    daemon = Daemon(config)
    install_signal_handlers(daemon)
    if config.metrics.listen:
        from syncd.metrics import serve

        try:
            serve(config.metrics.listen, daemon)
        except OSError as exc:
            log.error(
                "metrics_listen_failed", listen=config.metrics.listen, error=str(exc), exit_status=EXIT_CONFIG
            )
            return EXIT_CONFIG
        log.info("metrics_listening", listen=config.metrics.listen)
    return daemon.run()
