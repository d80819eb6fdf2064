"""Issue 9 path 8: a demoted leader runs none of the leader-only periodic work (heartbeat, discovery,
full member refresh, history pruning), so `syncd status` never names it in place of the new
leader; the work resumes when it is promoted again.

Two in-process daemons share the network. The leader's lock connection is killed (what a network
blip or a server-side timeout does): the standby takes over, the old leader notices and stands by.
Its scheduled jobs are then run by hand, at once, so the test does not wait for their intervals:
each must do nothing while demoted, and its job again once promoted. Every wait is on an
observable fact (a log event, a row), never on a sleep.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING
from structlog.testing import capture_logs

from syncd import capture
from syncd.config import config_for
from syncd.daemon import EXIT_OK, Daemon
from tests.integration.daemon_process import (
    members,
    quantities,
    refresh_fn,
    running,
    wait_drained,
    wait_until,
)
from tests.integration.sync_helpers import woo_decrease


def heartbeat(net: Any) -> dict[str, Any]:
    with net.engine.connect() as c:
        raw = c.exec_driver_sql(f"SELECT value FROM {net.prefix}syncd_meta WHERE name = 'daemon'").scalar()
    return json.loads(raw) if raw else {}


def plant_leader_work(net: Any) -> None:
    """Something for each leader-only job to do: an expired history row (pruning), blog 3 without
    its insert trigger (discovery), and every member refreshed long ago (full member refresh)."""
    with net.engine.connect() as c:
        c.exec_driver_sql(
            f"INSERT INTO {net.prefix}syncd_history (applied_at, batch_id, change_id, captured_at, role, "
            "blog_id, post_id, meta_key, origin_blog_id, origin_post_id) VALUES "
            "('2000-01-01', 1, 1, '2000-01-01', 'origin', 1, 1, '_stock', 1, 1)"
        )
        c.exec_driver_sql(f"DROP TRIGGER `{capture.trigger_name(net.prefix, 3, 'insert')}`")
        c.exec_driver_sql(f"UPDATE {net.prefix}syncd_member SET refreshed_at = '2000-01-01'")
        c.commit()


def leader_work_done(net: Any) -> dict[str, bool]:
    with net.engine.connect() as c:
        pruned = not c.exec_driver_sql(
            f"SELECT COUNT(*) FROM {net.prefix}syncd_history WHERE applied_at < '2001-01-01'"
        ).scalar()
        trigger = bool(
            c.exec_driver_sql(
                "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
                f"AND TRIGGER_NAME = '{capture.trigger_name(net.prefix, 3, 'insert')}'"
            ).scalar()
        )
        refreshed = not c.exec_driver_sql(
            f"SELECT COUNT(*) FROM {net.prefix}syncd_member WHERE refreshed_at < '2001-01-01'"
        ).scalar()
    return {"history_pruned": pruned, "triggers_installed": trigger, "members_refreshed": refreshed}


def run_jobs_now(d: Daemon) -> None:
    for job in d._scheduler.get_jobs():
        job.func()


def events(logs: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in list(logs) if e.get("event") == name)


def test_a_demoted_leader_runs_no_leader_work_and_resumes_it_when_promoted(wp_network):
    net = wp_network
    # Discovery every hour: the only discoveries are the ones this test makes happen.
    cfg = config_for(net.url, net.prefix, sync={"idle_wait": 0.005, "discovery_interval": 3600})
    a = Daemon(cfg, instance="A", refresh=refresh_fn())
    b = Daemon(cfg, instance="B", refresh=refresh_fn())
    b_code: list[int] = []
    with capture_logs() as logs, running(a):
        assert heartbeat(net)["instance"] == "A"
        tb = threading.Thread(target=lambda: b_code.append(b.run()), name="daemon-b", daemon=True)
        tb.start()
        wait_until(lambda: events(logs, "standby_waiting") == 1, 30, "B to stand by")
        with net.engine.connect() as c:
            holder = c.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (a._lock_name,)).scalar_one()
            c.exec_driver_sql(f"KILL CONNECTION {int(holder)}")
        wait_until(b.ready.is_set, 30, "B to take over")
        # A noticed, stepped down and now waits for the lock itself.
        wait_until(lambda: events(logs, "standby_waiting") == 2, 30, "A to stand by")
        assert heartbeat(net)["instance"] == "B"

        plant_leader_work(net)
        run_jobs_now(a)  # as if every interval had elapsed on the demoted instance
        assert heartbeat(net)["instance"] == "B", "the demoted leader named itself in syncd status"
        assert leader_work_done(net) == dict.fromkeys(
            ("history_pruned", "triggers_installed", "members_refreshed"), False
        ), "the demoted leader kept doing leader-only work"
        assert a._scheduler.state == STATE_PAUSED

        b.request_stop()
        tb.join(30)
        assert b_code == [EXIT_OK]
        # A is promoted again: it names itself, catches up (discovery) and its jobs run again.
        wait_until(lambda: heartbeat(net).get("instance") == "A", 30, "A to lead again")
        assert a._scheduler.state == STATE_RUNNING
        assert leader_work_done(net)["triggers_installed"], "no discovery on promotion"
        run_jobs_now(a)
        assert leader_work_done(net) == dict.fromkeys(
            ("history_pruned", "triggers_installed", "members_refreshed"), True
        )
        # And it applies again.
        mug = members(net, "MUG")
        woo_decrease(net, 2, mug[2], 1)
        wait_drained(net, timeout=30)
        assert len(set(quantities(net, "MUG").values())) == 1
