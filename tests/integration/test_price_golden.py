"""Golden test of the ``price`` field group against what real WooCommerce 11.0.1 wrote.

For every recorded price transition (11, 15, 16, 21), on a fresh copy of the recorded network:

1. the step's source rows (``_regular_price``, ``_sale_price``, ``_sale_price_dates_*``) are
   written on the *origin* blog as plain SQL with the recorded values (blog 1 for transitions
   recorded on blog 1; blog 3 for 21, recorded on blog 2);
2. in one transaction, the target member on blog 2 (the same SKU, the same language) is locked,
   ``PriceGroup.read`` gives the origin's values and the target's current ones, and
   ``PriceGroup.write`` makes the target's values the origin's - with the clock at the recorded
   time of the step (the sale rules depend on "now");
3. blog 2's product tables are diffed against the state before the step and compared, fact by
   fact, with the recorded diff of that step (recorded on blog 1: post ids mapped by SKU, as the
   end-to-end golden test does); its Action Scheduler rows likewise, ids aside.

Normalised out of both sides (docs/woocommerce-fidelity.md): ``_price`` rows deleted and re-added
with the same value (a variable parent's sync_price; compared as what remains), the
``_thumbnail_id = '0'`` of a variation's first CRUD save, cache refills, and deletions of
transients the target blog does not hold. ``post_modified`` and the Action Scheduler log dates are
compared with the write time; the version transients with its unix time.

Steps with no source write (the async follow-ups, the sale start by cron or by the action, a
storefront read) are not replayed: what WooCommerce does then on the origin, its own queued action
does on the copy (checked: the copy holds the same pending action at the same time).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from syncd import woo
from syncd.db import table
from syncd.fields import price_rules as rules
from syncd.fields.group import Target
from syncd.fields.price import PriceGroup
from syncd.network import discover
from tests.integration import derived_helpers as h
from tests.integration.test_sync_golden import _fixture_key, _sku_ids

SCENARIOS = ("11-price-changes", "15-sale-price-schedule", "16-variable-prices", "21-polylang-price")
TARGET_BLOG = 2
AS_TABLES = ("actionscheduler_actions", "actionscheduler_groups", "actionscheduler_logs")


def _cases() -> list[Any]:
    out = []
    for scenario in SCENARIOS:
        for variant in h.load_transition(scenario)["variants"]:
            out.append(
                pytest.param(scenario, variant["variant"], id=f"{scenario[:2]}{variant['variant'][:1]}")
            )
    return out


def _source_rows(step: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    d = h.step_diff(step, prefix).get("postmeta", {})
    out: list[tuple[str, dict[str, Any]]] = []
    for u in d.get("updated", ()):
        ctx = u.get("context", {})
        if ctx.get("meta_key") in rules.SOURCE_KEYS and "meta_value" in u.get("new", {}):
            out.append(("update", {**ctx, "meta_value": u["new"]["meta_value"]}))
    out += [("insert", r) for r in d.get("inserted", ()) if r.get("meta_key") in rules.SOURCE_KEYS]
    out += [("delete", r) for r in d.get("deleted", ()) if r.get("meta_key") in rules.SOURCE_KEYS]
    return out


def _write_time(step: dict[str, Any], prefix: str) -> datetime:
    """The recorded save time: the product's new ``post_modified_gmt`` (the earliest of the step)."""
    stamps = [
        u["new"]["post_modified_gmt"]
        for u in h.step_diff(step, prefix).get("posts", {}).get("updated", ())
        if "post_modified_gmt" in u["new"]
    ]
    return datetime.strptime(min(stamps), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def _replay(
    net: Any, blog_id: int, rows: list[tuple[str, dict[str, Any]]], id_map: dict[int, int]
) -> set[int]:
    postmeta = net.table(blog_id, "postmeta")
    posts: set[int] = set()
    with net.engine.begin() as conn:
        for kind, r in rows:
            params = {"p": id_map[int(r["post_id"])], "k": r["meta_key"], "v": r.get("meta_value")}
            if kind == "update":
                sql = f"UPDATE {postmeta} SET meta_value = :v WHERE post_id = :p AND meta_key = :k"
            elif kind == "insert":
                sql = f"INSERT INTO {postmeta} (post_id, meta_key, meta_value) VALUES (:p, :k, :v)"
            else:
                sql = f"DELETE FROM {postmeta} WHERE post_id = :p AND meta_key = :k"
            conn.execute(sa.text(sql), params)
            posts.add(params["p"])
    return posts


# --------------------------------------------------------------------------- normalisation


def _net_price_rows(diff: h.Diff) -> h.Diff:
    """``_price`` rows deleted and inserted with the same value on the same post: netted out."""
    pm = diff.get("postmeta")
    if not pm:
        return diff
    deleted, inserted = list(pm.get("deleted", ())), []
    for r in pm.get("inserted", ()):
        twin = next(
            (
                d
                for d in deleted
                if r.get("meta_key") == d.get("meta_key") == rules.PRICE
                and d.get("post_id") == r.get("post_id")
                and d.get("meta_value") == r.get("meta_value")
            ),
            None,
        )
        if twin is None:
            inserted.append(r)
        else:
            deleted.remove(twin)
    return {**diff, "postmeta": {**pm, "inserted": inserted, "deleted": deleted}}


def _expected(recorded: h.Diff, products: set[int], present_options: set[str]) -> h.Diff:
    out = h.without_tables(h.expected_in_scope(recorded, products), ["wc_product_attributes_lookup"])
    pm = out.get("postmeta")
    if pm:
        pm["inserted"] = [
            r
            for r in pm["inserted"]
            if not (r.get("meta_key") == "_thumbnail_id" and r.get("meta_value") == "0")
        ]
    opts = out.get("options")
    if opts:
        opts["inserted"] = [
            r for r in opts["inserted"] if not h.PRODUCT_CACHE_OPTION_RE.match(r["option_name"])
        ]
        opts["deleted"] = [r for r in opts["deleted"] if r["option_name"] in present_options]
    return _net_price_rows(
        {t: d for t, d in out.items() if d.get("inserted") or d.get("deleted") or d.get("updated")}
    )


def _option_names(state: h.Snapshot) -> set[str]:
    return {str(r["option_name"]) for r in state.get("options", {}).values()}


# --------------------------------------------------------------------------- Action Scheduler rows


def _as_snapshot(net: Any, blog_id: int) -> dict[str, dict[str, dict[str, Any]]]:
    prefix = net.blog_prefix(blog_id)
    keys = {
        "actionscheduler_actions": "action_id",
        "actionscheduler_groups": "group_id",
        "actionscheduler_logs": "log_id",
    }
    conn = h._raw_connect(net.url)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        with conn.cursor() as cur:
            for t in AS_TABLES:
                cur.execute(f"SELECT * FROM `{prefix}{t}`")  # noqa: S608 - test helper, fixed names
                cols = [d[0] for d in cur.description]
                rows = [
                    dict(zip(cols, (v.decode() if isinstance(v, bytes) else v for v in raw), strict=True))
                    for raw in cur.fetchall()
                ]
                out[t] = {str(r[keys[t]]): r for r in rows}
    finally:
        conn.close()
    return out


def _as_facts(
    inserted: dict[str, list[dict[str, Any]]],
    updated: list[dict[str, Any]],
    actions: dict[str, dict[str, Any]],
    groups: dict[str, str],
    product_map: dict[int, int],
) -> Counter[tuple[Any, ...]]:
    """Action Scheduler changes without ids: actions by content (group by slug, args with the
    product id mapped), status changes by hook/args, logs by their action's hook and date."""

    def args(text: str) -> str:
        data = json.loads(text)
        return rules.action_args(product_map.get(int(data["product_id"]), int(data["product_id"])))

    facts: Counter[tuple[Any, ...]] = Counter()
    skip = {"action_id", "group_id", "args"}
    for r in inserted.get("actionscheduler_actions", ()):
        cells = tuple(sorted((k, v) for k, v in r.items() if k not in skip))
        facts[("action", groups.get(str(r["group_id"])), args(r["args"]), cells)] += 1
    for r in inserted.get("actionscheduler_groups", ()):
        facts[("group", r["slug"])] += 1
    for r in inserted.get("actionscheduler_logs", ()):
        a = actions[str(r["action_id"])]
        facts[("log", a["hook"], a["scheduled_date_gmt"], r["message"])] += 1
    for u in updated:
        a = actions[str(u["key"]["action_id"])]
        facts[
            (
                "status",
                a["hook"],
                args(a["args"]),
                a["scheduled_date_gmt"],
                u["old"].get("status"),
                u["new"].get("status"),
            )
        ] += 1
    return facts


def _recorded_as(
    step: dict[str, Any], prefix: str, actions: dict[str, dict[str, Any]], product_map: dict[int, int]
) -> Counter[tuple[Any, ...]]:
    diff = {
        t[len(prefix) :]: d
        for t, d in step["diff"].items()
        if t[len(prefix) :] in AS_TABLES and t.startswith(prefix)
    }
    for r in diff.get("actionscheduler_actions", {}).get("inserted", ()):
        actions[str(r["action_id"])] = r
    groups = {"4": "woocommerce-sales"}  # the group row the recording created (15 A/B/C step 1)
    inserted = {t: list(d.get("inserted", ())) for t, d in diff.items()}
    updated = [u for u in diff.get("actionscheduler_actions", {}).get("updated", ()) if "status" in u["new"]]
    # Runs of an action (attempts, last_attempt) happen only in the unreplayed follow-up steps.
    return _as_facts(inserted, updated, actions, groups, product_map)


def _actual_as(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[Counter[tuple[Any, ...]], list[dict[str, Any]]]:
    inserted = {t: [r for k, r in after[t].items() if k not in before[t]] for t in AS_TABLES}
    updated = []
    for k, r in after["actionscheduler_actions"].items():
        old = before["actionscheduler_actions"].get(k)
        if old is not None and old["status"] != r["status"]:
            updated.append(
                {"key": {"action_id": k}, "old": {"status": old["status"]}, "new": {"status": r["status"]}}
            )
    groups = {k: r["slug"] for k, r in after["actionscheduler_groups"].items()}
    return _as_facts(inserted, updated, after["actionscheduler_actions"], groups, {}), inserted[
        "actionscheduler_logs"
    ]


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize(("scenario", "variant_name"), _cases())
def test_price_write_matches_recorded_woocommerce(wp_network: Any, scenario: str, variant_name: str) -> None:
    net = wp_network
    fx = h.load_transition(scenario)
    variant = next(v for v in fx["variants"] if v["variant"] == variant_name)
    recorded_blog = int(fx["blog"])
    rec_prefix = fx["table_prefix"]
    origin = 1 if recorded_blog == 1 else 3
    target_prefix = net.blog_prefix(TARGET_BLOG)
    rec_ids, origin_ids, target_ids = (_sku_ids(net, b) for b in (recorded_blog, origin, TARGET_BLOG))
    to_origin = {pid: origin_ids[sku] for sku, pid in rec_ids.items() if sku in origin_ids}
    to_target = {pid: target_ids[sku] for sku, pid in rec_ids.items() if sku in target_ids}
    with net.engine.connect() as conn:
        network = discover(conn, net.prefix)
    origin_blog, target_blog = network.blog(origin), network.blog(TARGET_BLOG)
    volatile = {**h.ALWAYS_VOLATILE, "posts": {"post_modified", "post_modified_gmt"}}

    state = h.snapshot(net.url, target_prefix)
    products = h.product_post_ids(state)
    as_state = _as_snapshot(net, TARGET_BLOG)
    recorded_actions: dict[str, dict[str, Any]] = {}
    replayed = 0
    for step in variant["steps"]:
        rows = _source_rows(step, rec_prefix)
        if not rows:
            _recorded_as(step, rec_prefix, recorded_actions, to_target)  # keep the action map current
            continue
        now = _write_time(step, rec_prefix)
        group = PriceGroup(clock=lambda now=now: now)
        written = _replay(net, origin, rows, to_origin)
        with net.engine.begin() as conn:
            for opid in sorted(written):
                sku = next(s for s, p in origin_ids.items() if p == opid)
                tpid = target_ids[sku]
                conn.exec_driver_sql(
                    f"SELECT meta_id FROM {table(target_prefix, 'postmeta')} WHERE post_id = %s FOR UPDATE",
                    (tpid,),
                )
                current = group.read(conn, target_blog, [tpid])[tpid]
                wanted = group.read(conn, origin_blog, [opid])[opid]
                post = conn.exec_driver_sql(
                    f"SELECT post_type, post_parent FROM {table(target_prefix, 'posts')} WHERE ID = %s",
                    (tpid,),
                ).one()
                target = Target(target_blog, tpid, _fixture_key(sku), str(post[0]), int(post[1]))
                assert group.write(conn, target, current, wanted) == []
        after = h.snapshot(net.url, target_prefix)
        actual = _net_price_rows(
            h.without_tables(h.diff_snapshots(state, after), ["wc_product_attributes_lookup"])
        )
        recorded = h.step_diff(step, rec_prefix)
        if recorded_blog != TARGET_BLOG:
            recorded = h.remap_diff(recorded, to_target)
        expected = _expected(recorded, products, _option_names(state))
        problems = h.compare_diffs(
            actual,
            expected,
            volatile=volatile,
            volatile_options=h.volatile_option_names(fx) | _timeouts(actual, expected),
        )
        problems += _check_times(actual, now, target_blog)
        as_after = _as_snapshot(net, TARGET_BLOG)
        as_actual, logs = _actual_as(as_state, as_after)
        as_expected = _recorded_as(step, rec_prefix, recorded_actions, to_target)
        problems += [
            f"action scheduler, missing: {f}" for f in sorted((as_expected - as_actual).elements(), key=repr)
        ]
        problems += [
            f"action scheduler, extra: {f}" for f in sorted((as_actual - as_expected).elements(), key=repr)
        ]
        gmt = woo.mysql_datetime(now)
        problems += [f"log date {r['log_date_gmt']} != {gmt}" for r in logs if r["log_date_gmt"] != gmt]
        assert not problems, (
            f"{scenario} {variant_name} step {step['step']} ({step['operation']}), written to blog {TARGET_BLOG}:\n  "
            + "\n  ".join(problems)
        )
        with net.engine.connect() as conn:
            for opid in sorted(written):
                sku = next(s for s, p in origin_ids.items() if p == opid)
                assert (
                    group.read(conn, target_blog, [target_ids[sku]])[target_ids[sku]]
                    == group.read(conn, origin_blog, [opid])[opid]
                )
        state, as_state = after, as_after
        replayed += 1
    assert replayed


def _timeouts(*diffs: h.Diff) -> set[str]:
    names: set[str] = set()
    for d in diffs:
        o = d.get("options", {})
        for r in (*o.get("inserted", ()), *o.get("deleted", ())):
            if r["option_name"].startswith("_transient_timeout_"):
                names.add(r["option_name"])
    return names


def _check_times(actual: h.Diff, now: datetime, blog: Any) -> list[str]:
    local, gmt = woo.post_modified_values(now, blog.option("timezone_string"), blog.option("gmt_offset"))
    out = [
        f"post {u['key']} post_modified {u['new']} != ({local}, {gmt})"
        for u in actual.get("posts", {}).get("updated", ())
        if u["new"].get("post_modified_gmt") != gmt or u["new"].get("post_modified") != local
    ]
    stamp = str(woo.unix_time(now))
    out += [
        f"{u['context']['option_name']} = {u['new'].get('option_value')} != {stamp}"
        for u in actual.get("options", {}).get("updated", ())
        if u["context"]["option_name"] in h.VERSION_OPTIONS and u["new"].get("option_value") != stamp
    ]
    return out
