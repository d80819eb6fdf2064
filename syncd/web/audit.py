"""Audit: run an audit (in a worker thread; the page shows its progress and refreshes itself
without JavaScript), list what differs, and reconcile the chosen groups or all of them - always
after a preview of every write (``confirm`` absent: preview; ``confirm=1``: apply)."""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
from starlette.responses import RedirectResponse, Response

from syncd import reconcile
from syncd.audit import Auditor
from syncd.progress import Progress
from syncd.web.http import Ctx, Problem, View
from syncd.web.state import AuditJob, Dashboard

log = structlog.get_logger("syncd.dashboard")
MAX_GROUPS = 10_000


class _JobProgress(Progress):
    """syncd.progress.Progress that reports into the job instead of a terminal."""

    def __init__(self, job: AuditJob) -> None:
        super().__init__("audit", enabled=False)
        self.job = job

    def stage(self, label: str, total: int | None = None) -> None:
        self.job.stage, self.job.total, self.job.done = label, total, 0

    def advance(self, n: int = 1, detail: str | None = None) -> None:
        self.job.done += n


def audit_page(ctx: Ctx) -> View:
    job = ctx.app.audit
    data: dict[str, Any] = {"job": None}
    if job is not None:
        data["job"] = {
            "running": job.running,
            "started_by": job.started_by,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(job.started_at)),
            "stage": job.stage,
            "done": job.done,
            "total": job.total,
            "error": job.error,
            "report": job.report,
        }
    return View("audit.html", data)


def run_audit(ctx: Ctx) -> View | Response:
    app = ctx.app
    with app.lock:
        if app.audit is not None and app.audit.running:
            raise Problem(409, "an audit is already running: wait for it")
        job = AuditJob(started_by=ctx.user.name)
        app.audit = job
    threading.Thread(target=_run, args=(app, job), name="dashboard-audit", daemon=True).start()
    log.info("dashboard_audit_started", user=ctx.user.name)
    if ctx.json:
        return View("audit.html", {"started": True})
    return RedirectResponse("/audit", status_code=303)


def _run(app: Dashboard, job: AuditJob) -> None:
    try:
        with app.read_engine.connect() as conn:
            scope = app.scope(conn)
            conn.rollback()
        report = Auditor(app.read_engine, scope, progress=_JobProgress(job)).run()
        job.report = report.document()
    except Exception as exc:  # noqa: BLE001 - shown on the page, the process goes on
        job.error = f"the audit failed ({type(exc).__name__}); see the log"
        log.error("dashboard_audit_failed", error=type(exc).__name__)
    finally:
        job.finished_at = time.time()


def reconcile_chosen(ctx: Ctx) -> View | Response:
    """Preview (default) or apply (``confirm=1``) reconcile of the chosen groups, or of every
    drifted group of the last audit (``all=1``)."""
    ids = _groups(ctx)
    apply = ctx.param("confirm", "").lower() in ("1", "yes", "true")
    outcome = reconcile.reconcile_groups(
        ctx.app.config, ctx.app.write_engine, ids, dry_run=not apply, source=ctx.source
    )
    if apply:
        log.info("dashboard_reconcile", user=ctx.user.name, groups=len(ids), writes=outcome.counts["writes"])
    return View("reconcile.html", {"groups": ids, "applied": apply, "outcome": outcome.document()})


def _groups(ctx: Ctx) -> list[int]:
    if ctx.param("all", "").lower() in ("1", "yes", "true"):
        job = ctx.app.audit
        if job is None or job.report is None:
            raise Problem(400, "run an audit first: 'all' means every drifted group it found")
        ids = [int(d["group"]) for d in job.report["drift"]]
    else:
        raw = ctx.params_list("group")
        if not all(x.isdigit() for x in raw):
            raise Problem(400, "group must be link group ids")
        ids = [int(x) for x in raw]
    if not ids:
        raise Problem(400, "choose at least one group")
    if len(ids) > MAX_GROUPS:
        raise Problem(400, f"at most {MAX_GROUPS} groups per request")
    return sorted(set(ids))
