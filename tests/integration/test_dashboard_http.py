"""The dashboard over HTTP against a real server (uvicorn in a thread) and the test network:
every page and its JSON twin, authentication, CSRF, the read-only role, the stale-quantity
refusal of set stock, bad input, and that no secret reaches a page."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from syncd.web import auth
from tests.integration.dashboard_helpers import ADMIN, READER, csrf_of, running_dashboard, woo_order
from tests.integration.sync_helpers import ids, make_daemon, qty, woo_decrease
from tests.integration.test_audit_reconcile import drift_sql, installed

PAGES = ("/", "/products", "/audit", "/links", "/dead-letters")


def history_rows(net: Any, **where: Any) -> list[dict[str, Any]]:
    cond = " AND ".join(f"{k} = :{k}" for k in where) or "1 = 1"
    with net.engine.connect() as c:
        return [
            dict(r._mapping)
            for r in c.execute(
                sa.text(f"SELECT * FROM {net.prefix}syncd_history WHERE {cond} ORDER BY id"), where
            )
        ]


@pytest.fixture
def dash(wp_network):
    installed(wp_network)
    with running_dashboard(wp_network) as d:
        yield d


def group_of(d: Any, sku: str) -> int:
    doc = d.api().get(d.url + "/products.json", params={"q": sku}).json()
    return next(g["group"] for g in doc["groups"] if g["sku"] == sku)


def test_every_page_and_its_json_twin_with_security_headers(dash):
    d = dash
    s = d.session()
    gid = group_of(d, "TSHIRT-RED")
    for path in (*PAGES, f"/product/{gid}"):
        r = s.get(d.url + path)
        assert r.status_code == 200, (path, r.status_code)
        assert "text/html" in r.headers["content-type"]
        assert (
            "script-src" not in r.headers["content-security-policy"]
        )  # default-src 'none': no script at all
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
        assert 'id="daemon-state"' in r.text and "<script" not in r.text
        twin = s.get(d.url + ("/index" if path == "/" else path) + ".json")
        assert twin.status_code == 200 and twin.headers["content-type"] == "application/json", path
        twin.json()
    product = s.get(d.url + f"/product/{gid}.json").json()
    assert {m["blog"] for m in product["members"]} == {1, 2, 3} and all(
        m["lookup_agrees"] for m in product["members"]
    )
    assert '<svg class="chart"' in s.get(d.url + f"/product/{gid}").text
    css = s.get(d.url + "/static/style.css")
    assert css.status_code == 200 and css.headers["content-security-policy"]


def test_authentication_cookies_and_no_secrets(dash, wp_network):
    d = dash
    anon = d.api()
    anon.headers.pop("Authorization")
    r = anon.get(d.url + "/products", allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert anon.get(d.url + "/products.json").status_code == 401
    assert anon.post(d.url + "/audit/run.json").status_code == 401
    bad = anon.get(d.url + "/products.json", headers={"Authorization": "Bearer sdt_wrong"})
    assert bad.status_code == 401 and "sdt_wrong" not in bad.text
    assert anon.get(d.url + "/products.json", headers={"Authorization": "Basic abc"}).status_code == 401
    # the login sets a session cookie HttpOnly and SameSite=Strict (not Secure: plain loopback HTTP)
    page = anon.get(d.url + "/login")
    nonce = page.text.split('name="nonce" value="')[1].split('"')[0]
    r = anon.post(
        d.url + "/login", data={"name": ADMIN[0], "password": ADMIN[1], "nonce": nonce}, allow_redirects=False
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert (
        "syncd_session=" in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert "Secure" not in cookie
    # a login form without its nonce cookie is refused (login CSRF)
    fresh = d.api()
    fresh.headers.pop("Authorization")
    r = fresh.post(d.url + "/login", data={"name": ADMIN[0], "password": ADMIN[1], "nonce": "x"})
    assert r.status_code == 403
    # nothing secret on any page or JSON: DB password, token, hashes
    s = d.session()
    with wp_network.engine.connect() as c:
        hashes = [
            h for (h,) in c.execute(sa.text(f"SELECT password_hash FROM {wp_network.prefix}syncd_user"))
        ]
    password = sa.engine.make_url(wp_network.url).password
    texts = [s.get(d.url + p).text for p in PAGES] + [s.get(d.url + p + ".json").text for p in PAGES[1:]]
    for text in texts:
        assert d.token not in text and all(h not in text and h.split("$")[-1] not in text for h in hashes)
        assert not password or password not in text
    # log out: the session is gone
    r = s.post(d.url + "/logout", data={"csrf": s.csrf}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert s.get(d.url + "/products.json").status_code == 401


def test_csrf_and_read_only_role_are_refused(dash, wp_network):
    d, net = dash, wp_network
    gid = group_of(d, "MUG")
    mug = ids(net, "MUG")
    before = [qty(net, b, mug[b]) for b in (1, 2, 3)]
    expect = {f"expect-{b}-{mug[b]}": str(before[i]) for i, b in enumerate((1, 2, 3))}
    s = d.session()
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "3", **expect})
    assert r.status_code == 403 and "CSRF" in r.text
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "3", "csrf": "forged", **expect})
    assert r.status_code == 403
    reader = d.session(READER)
    page = reader.get(d.url + f"/product/{gid}").text
    assert 'id="set-stock"' not in page  # no action forms for the read-only role
    for path in (
        f"/product/{gid}/set-stock",
        f"/product/{gid}/sync",
        f"/product/{gid}/reconcile",
        "/audit/run",
        "/links/link",
        "/links/unlink",
        "/dead-letters/retry",
        "/dead-letters/discard",
    ):
        r = reader.post(d.url + path, data={"qty": "3", "csrf": reader.csrf, **expect})
        assert r.status_code == 403 and "read-only" in r.text, path
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == before
    # a read-only user may still search (POST, read)
    r = reader.post(d.url + "/products.json", json={"q": "MUG"}, headers={"X-CSRF-Token": reader.csrf})
    assert r.status_code == 200 and r.json()["groups"]


def test_set_stock_everywhere_and_the_stale_quantity_refusal(dash, wp_network):
    d, net = dash, wp_network
    gid = group_of(d, "TSHIRT-RED")
    t = ids(net, "TSHIRT-RED")
    s = d.session()
    page = s.get(d.url + f"/product/{gid}").text
    fields = {f"expect-{b}-{t[b]}": "10" for b in (1, 2, 3)}
    assert all(f'name="{k}" value="10"' in page for k in fields)
    # a sale lands on blog 2 after the admin loaded the page (captured, not yet applied)
    woo_decrease(net, 2, t[2], 1)
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "25", "csrf": csrf_of(page), **fields})
    assert r.status_code == 409 and "changed since" in r.text
    assert 'id="stock-2-' in r.text and ">9<" in r.text.replace(".000000", "")  # the new state is shown
    assert [qty(net, b, t[b]) for b in (1, 2, 3)] == [9, 9, 9]  # the sale was applied, then the set refused
    assert not history_rows(net, role="set")
    # again with what is there now: written everywhere, history says who
    fields = {f"expect-{b}-{t[b]}": "9" for b in (1, 2, 3)}
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "25", "csrf": s.csrf, **fields})
    assert r.status_code == 200 and "stock set to 25" in r.text
    assert [qty(net, b, t[b]) for b in (1, 2, 3)] == [25, 25, 25]
    rows = history_rows(net, role="set")
    assert len(rows) == 3 and {r["source"] for r in rows} == {"dashboard:admin"}
    events = s.get(d.url + f"/product/{gid}.json").json()["history"]
    assert {e["source"]["text"] for e in events if e["role"] == "set"} == {"dashboard user admin"}
    # form errors: not a number, no expected quantities
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "many", "csrf": s.csrf, **fields})
    assert r.status_code == 400 and "QTY must be a number" in r.text
    r = s.post(d.url + f"/product/{gid}/set-stock", data={"qty": "4", "csrf": s.csrf})
    assert r.status_code == 400 and "quantities you saw" in r.text
    # the API: bearer token, JSON body, JSON answers (409 carries the current state)
    api = d.api()
    stale = {f"{b}:{t[b]}": "24" for b in (1, 2, 3)}
    r = api.post(d.url + f"/product/{gid}/set-stock.json", json={"qty": "7", "expect": stale})
    assert r.status_code == 409 and r.json()["current"] == {f"{b}:{t[b]}": "25" for b in (1, 2, 3)}
    r = api.post(
        d.url + f"/product/{gid}/set-stock.json", json={"qty": "7", "expect": {k: "25" for k in stale}}
    )
    assert r.status_code == 200 and r.json()["counts"]["writes"] == 3
    assert [qty(net, b, t[b]) for b in (1, 2, 3)] == [7, 7, 7]


def test_sync_and_reconcile_a_group_preview_first(dash, wp_network):
    d, net = dash, wp_network
    gid = group_of(d, "MUG")
    mug = ids(net, "MUG")
    drift_sql(net, 3, mug[3], "_stock", "40")
    s = d.session()
    assert s.get(d.url + "/products.json", params={"drifted": "1"}).json()["groups"][0]["group"] == gid
    r = s.post(d.url + f"/product/{gid}/reconcile", data={"csrf": s.csrf})
    assert r.status_code == 200 and 'id="preview"' in r.text and "Would write" in r.text
    assert qty(net, 3, mug[3]) == 40  # a preview writes nothing
    r = s.post(d.url + f"/product/{gid}/reconcile", data={"csrf": s.csrf, "confirm": "1"})
    assert r.status_code == 200 and "reconciled (1 write(s))" in r.text
    low = qty(net, 1, mug[1])
    assert qty(net, 3, mug[3]) == low
    assert history_rows(net, role="reconcile")[0]["source"] == "dashboard:admin"
    # sync from a chosen member: its values everywhere
    drift_sql(net, 2, mug[2], "_stock", "17")
    r = d.api().post(d.url + f"/product/{gid}/sync.json", json={"from_blog": 2})
    assert r.status_code == 200 and r.json()["authority"] == "blog:2"
    assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [17, 17, 17]


def test_audit_then_reconcile_all_with_preview(dash, wp_network):
    d, net = dash, wp_network
    mug, cap = ids(net, "MUG"), ids(net, "CAP")
    drift_sql(net, 2, mug[2], "_stock", "1")
    drift_sql(net, 3, cap[3], "_stock", "99")
    api = d.api()
    assert api.post(d.url + "/audit/run.json").json() == {"started": True}
    job = d.dashboard.audit
    assert job is not None
    done = threading.Event()
    while not done.wait(0.05):  # until the audit thread says it finished (a condition, not a timing)
        if not job.running:
            done.set()
    doc = api.get(d.url + "/audit.json").json()["job"]
    assert doc["error"] is None
    drifted = {g["sku"] for g in doc["report"]["drift"]}
    assert {"MUG", "CAP"} <= drifted  # (the recorded network has drift of its own too)
    r = api.post(d.url + "/audit/reconcile.json", json={"all": "1"})
    preview = r.json()["outcome"]
    assert r.json()["applied"] is False and {w["sku"] for w in preview["writes"]} >= {"MUG", "CAP"}
    assert qty(net, 2, mug[2]) == 1
    r = api.post(d.url + "/audit/reconcile.json", json={"all": "1", "confirm": "1"})

    def key(w: dict[str, Any]) -> tuple[Any, ...]:
        return (w["blog"], w["post"], w["key"], w["new"])

    assert r.json()["applied"] is True
    assert sorted(map(key, r.json()["outcome"]["writes"])) == sorted(map(key, preview["writes"]))
    assert (
        len({qty(net, b, mug[b]) for b in (1, 2, 3)}) == 1
        and len({qty(net, b, cap[b]) for b in (1, 2, 3)}) == 1
    )
    assert api.post(d.url + "/audit/reconcile.json", json={"group": ["x"]}).status_code == 400


def test_links_and_dead_letters(dash, wp_network):
    d, net = dash, wp_network
    api = d.api()
    tshirt, mug = ids(net, "TSHIRT-RED"), ids(net, "MUG")
    r = api.post(d.url + "/links/link.json", json={"targets": f"1:{tshirt[1]} 1:{mug[1]}"})
    assert (
        r.status_code == 409 and "refused" in r.json()["error"]
    )  # two products of one blog, as the CLI says
    r = api.post(d.url + "/links/link.json", json={"targets": f"1:{mug[1]} 2:{mug[2]}"})
    assert r.status_code == 200
    links = api.get(d.url + "/links.json").json()["groups"]
    assert len(links) == 1 and {m["blog_id"] for m in links[0]["members"]} == {1, 2}
    assert api.post(d.url + "/links/unlink.json", json={"target": f"1:{mug[1]}"}).status_code == 200
    assert api.get(d.url + "/links.json").json()["groups"] == []
    assert api.post(d.url + "/links/unlink.json", json={"target": "nonsense"}).status_code == 400
    with net.engine.connect() as c:
        for i in (901, 902):
            c.execute(
                sa.text(
                    f"INSERT INTO {net.prefix}syncd_dead (id, blog_id, post_id, meta_key, op, old_value, new_value, "
                    "captured_at, conn_id, failed_at, error) VALUES (:i, 1, :p, '_stock', 'U', '5', '4', UTC_TIMESTAMP(6), 7, "
                    "UTC_TIMESTAMP(6), 'boom')"
                ),
                {"i": i, "p": mug[1]},
            )
        c.commit()
    s = d.session()
    assert "boom" in s.get(d.url + "/dead-letters").text
    assert s.post(d.url + "/dead-letters/retry", data={"csrf": s.csrf, "id": "901"}).status_code == 200
    assert s.post(
        d.url + "/dead-letters/discard.json", json={"id": ["902"]}, headers={"X-CSRF-Token": s.csrf}
    ).json() == {"discarded": 1}
    with net.engine.connect() as c:
        assert c.execute(sa.text(f"SELECT COUNT(*) FROM {net.prefix}syncd_dead")).scalar_one() == 0
        row = c.execute(
            sa.text(
                f"SELECT blog_id, post_id, new_value, conn_id FROM {net.prefix}syncd_change WHERE id = 901"
            )
        ).one()
        assert tuple(row) == (1, mug[1], "4", 7)


def test_bad_input_gives_400_or_404(dash):
    d = dash
    s = d.session()
    h = {"X-CSRF-Token": s.csrf}
    assert s.get(d.url + "/product/999999").status_code == 404
    r = s.get(d.url + "/product/999999.json")
    assert r.status_code == 404 and "no link group" in r.json()["error"]
    assert s.get(d.url + "/no-such-page").status_code == 404
    assert s.get(d.url + "/products?page=abc").status_code == 400
    assert s.get(d.url + "/products.json?blog=x").status_code == 400
    r = s.post(
        d.url + "/products.json",
        data=b"x" * 70_000,
        headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "too large" in r.json()["error"]
    r = s.post(d.url + "/products.json", data=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON body"
    r = s.post(d.url + "/products.json", data=b"[1]", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400
    r = s.post(
        d.url + "/products.json",
        data=b"\xff\xfe",
        headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400
    r = s.post(d.url + "/products.json", data=b"q=1", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 400
    gid = group_of(d, "MUG")
    r = d.api().post(d.url + f"/product/{gid}/set-stock.json", json={"qty": "1", "expect": {"x": "1"}})
    assert r.status_code == 400
    r = d.api().post(d.url + f"/product/{gid}/set-stock.json", json={"qty": {"a": 1}, "expect": {"1:1": "1"}})
    assert r.status_code == 400
    assert "Traceback" not in r.text


def test_login_attempts_are_rate_limited(dash):
    d = dash
    s = d.api()
    s.headers.pop("Authorization")

    def attempt(password: str) -> int:
        page = s.get(d.url + "/login")
        nonce = page.text.split('name="nonce" value="')[1].split('"')[0]
        return s.post(
            d.url + "/login",
            data={"name": ADMIN[0], "password": password, "nonce": nonce},
            allow_redirects=False,
        ).status_code

    assert [attempt("wrong-password") for _ in range(5)] == [401] * 5
    assert attempt(ADMIN[1]) == 429  # even the right password, until the window passes


def test_where_a_change_came_from(dash, wp_network):
    """Order (trace 04: _stock then _reduced_stock on one connection), admin save (trace 03b:
    _edit_last then _stock), and another writer; matched by connection, shown with a link."""
    d, net = dash, wp_network
    mug = ids(net, "MUG")
    p1 = net.blog_prefix(1)
    woo_order(net, 1, mug[1], 777)  # the order request: one connection
    with net.engine.connect() as c:  # the admin's save
        c.exec_driver_sql(
            f"INSERT INTO {p1}postmeta (post_id, meta_key, meta_value) VALUES ({mug[1]}, '_edit_last', '1')"
        )
        c.exec_driver_sql(
            f"UPDATE {p1}postmeta SET meta_value = '30' WHERE post_id = {mug[1]} AND meta_key = '_stock'"
        )
        c.commit()
    woo_decrease(net, 2, mug[2], 2)  # another writer
    daemon = make_daemon(net)
    try:
        daemon.apply_pending()
    finally:
        daemon.close()
    gid = group_of(d, "MUG")
    events = d.api().get(d.url + f"/product/{gid}.json").json()["history"]
    origins = [(e["blog"], e["source"]["text"], e["source"]["url"]) for e in events if e["role"] == "origin"]
    assert origins[0][:2] == (1, "order #777") and origins[0][2].endswith(
        "/wp-admin/post.php?post=777&action=edit"
    )
    assert origins[1] == (1, "admin user #1", None)
    assert origins[2] == (2, "other writer (import, REST, SQL)", None)
    copies = {e["source"]["text"] for e in events if e["role"] == "copy"}
    assert copies == {f"copy of 1:{mug[1]}", f"copy of 2:{mug[2]}"}
    # syncd history says the same
    import argparse
    import io

    from syncd import history
    from syncd.config import config_for

    out = io.StringIO()
    args = argparse.Namespace(sku="MUG", since=None, limit=0, lang=None, json=True)
    assert history.main(config_for(net.url, net.prefix), args, out) == 0
    froms = [e["from"] for e in json.loads(out.getvalue())["entries"] if e["role"] == "origin"]
    assert froms == ["order #777", "admin user #1", "other writer (import, REST, SQL)"]
    # the product page links the order in blog 1's wp-admin
    assert "/wp-admin/post.php?post=777&amp;action=edit" in d.session().get(d.url + f"/product/{gid}").text


@pytest.fixture
def restored_logging():
    """cli.main configures logging onto capsys's stream: undo it after the test."""
    import logging

    import structlog

    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)


def test_user_commands(wp_network, tmp_path, capsys, restored_logging):
    from syncd import cli

    net = wp_network
    path = tmp_path / "syncd.toml"
    path.write_text(f'[database]\nurl = "{net.url}"\ntable_prefix = "{net.prefix}"\n', encoding="utf-8")
    base = ["--config", str(path), "--log-level", "warning", "dashboard"]

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        import io
        import sys

        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            code = cli.main([*base, *argv])
        finally:
            sys.stdin = old
        out, err = capsys.readouterr()
        return code, out, err

    assert run("add-user", "carol", "--password-stdin", stdin="carol-password\n")[0] == 0
    assert run("add-user", "dave", "--password-stdin", "--read-only", stdin="dave-password-x\n")[0] == 0
    code, _out, err = run("add-user", "eve", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 10 characters" in err
    code, out, _ = run("token", "create", "carol")
    token = out.strip().splitlines()[0]
    assert code == 0 and token.startswith("sdt_")
    code, out, _ = run("list-users", "--json")
    users = {u["name"]: u for u in json.loads(out)["users"]}
    assert (
        users["carol"]["role"] == "admin"
        and users["carol"]["tokens"] == 1
        and users["dave"]["role"] == "read-only"
    )
    assert "scrypt" not in out and token not in out
    with net.engine.connect() as c:
        assert auth.lookup(c, net.prefix, token, "api")[0].name == "carol"
        stored = c.execute(
            sa.text(f"SELECT password_hash FROM {net.prefix}syncd_user WHERE name = 'carol'")
        ).scalar_one()
    assert stored.startswith("scrypt$") and auth.verify_password("carol-password", stored)
    assert run("remove-user", "carol")[0] == 0
    with net.engine.connect() as c:
        assert auth.lookup(c, net.prefix, token, "api") is None
    code, _, err = run("remove-user", "nobody")
    assert code == 2 and "no dashboard user" in err


def test_uninstall_drops_the_attribution_triggers_and_shops_keep_writing(wp_network):
    from syncd import capture
    from syncd.config import config_for
    from syncd.web.server import prepare

    net = wp_network
    installed(net)
    prepare(config_for(net.url, net.prefix)).close()
    with net.engine.connect() as c:
        names = {
            r[0]
            for r in c.exec_driver_sql(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
            )
        }
    assert f"{net.prefix}syncd_src_change" in names and f"{net.prefix}syncd_src_b2_oi_ai" in names
    import io

    assert capture.uninstall_all(config_for(net.url, net.prefix), out=io.StringIO()) == 0
    with net.engine.connect() as c:
        left = [
            r[0]
            for r in c.exec_driver_sql(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
            )
        ]
    assert left == []
    woo_order(net, 1, ids(net, "MUG")[1], 5)  # the shop still sells


def test_tls_serves_https_with_secure_cookies(wp_network, tmp_path):
    import subprocess

    import requests

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    installed(wp_network)
    tls = {
        "listen": "0.0.0.0:8443",
        "tls_cert": str(cert),
        "tls_key": str(key),
    }  # beyond loopback: allowed with TLS
    with running_dashboard(wp_network, dashboard=tls) as d:
        assert d.url.startswith("https://")
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would replace our certificate
        s.verify = str(cert)
        page = s.get(d.url + "/login")
        assert "Secure" in page.headers["set-cookie"]
        nonce = page.text.split('name="nonce" value="')[1].split('"')[0]
        r = s.post(
            d.url + "/login",
            data={"name": ADMIN[0], "password": ADMIN[1], "nonce": nonce},
            allow_redirects=False,
        )
        cookie = r.headers["set-cookie"]
        assert r.status_code == 303 and "Secure" in cookie and "HttpOnly" in cookie


def test_syncd_dashboard_command_serves_and_refuses_plain_remote(wp_network, tmp_path):
    """`syncd dashboard` as an operator runs it: its own process, the configuration file."""
    import signal
    import subprocess
    import sys

    import requests

    from syncd.testnet.server import free_port

    installed(wp_network)
    port = free_port()

    def config(listen: str) -> str:
        path = tmp_path / "syncd.toml"
        path.write_text(
            f'[database]\nurl = "{wp_network.url}"\ntable_prefix = "{wp_network.prefix}"\n'
            f'[dashboard]\nlisten = "{listen}"\n[log]\nformat = "json"\n',
            encoding="utf-8",
        )
        return str(path)

    cmd = [sys.executable, "-m", "syncd", "--config"]
    refused = subprocess.run(
        [*cmd, config(f"0.0.0.0:{port}"), "dashboard"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 78 and "refusing to listen on 0.0.0.0" in refused.stderr
    proc = subprocess.Popen(
        [*cmd, config(f"127.0.0.1:{port}"), "dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        up = threading.Event()
        while not up.wait(0.05):  # until it answers (a condition, not a timing)
            assert proc.poll() is None, proc.stderr.read()
            try:
                r = requests.get(f"http://127.0.0.1:{port}/login", timeout=5)
            except requests.ConnectionError:
                continue
            up.set()
        assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'none'")
        assert requests.get(f"http://127.0.0.1:{port}/index.json", timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn finishes the requests in flight, then re-raises SIGTERM: systemd counts that as a clean stop
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "dashboard_start" in out + err and wp_network.url.split("@")[0] not in out + err
