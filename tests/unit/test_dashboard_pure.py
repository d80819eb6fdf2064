"""The dashboard's pure parts: password hashing, the login limiter, [dashboard] configuration and
the listen rule, attribution matching, the SVG charts. No database."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from syncd.attribution import describe, match
from syncd.config import ConfigError, config_for
from syncd.web import auth, charts
from syncd.web.server import ListenRefused, check_listen, is_loopback

URL = "mysql+pymysql://u:secret@127.0.0.1:3306/wp"
T0 = datetime(2026, 5, 1, 12, 0, 0)


def test_passwords_are_salted_scrypt_hashes():
    h1, h2 = auth.hash_password("correct horse", n=2**10), auth.hash_password("correct horse", n=2**10)
    assert h1 != h2 and h1.startswith("scrypt$1024$8$1$") and "correct" not in h1
    assert auth.verify_password("correct horse", h1) and not auth.verify_password("wrong horse", h1)
    assert not auth.verify_password("x", "md5$abc") and not auth.verify_password("x", "garbage")


def test_login_limiter_counts_failures_per_key_in_a_window():
    lim = auth.RateLimiter(limit=3, window=300)
    for _ in range(3):
        assert not lim.blocked("ip:a", "user:x")
        lim.failed("ip:a", "user:x")
    assert lim.blocked("ip:a") and lim.blocked("user:x") and not lim.blocked("ip:b", "user:y")


def test_dashboard_configuration_and_listen_rule():
    assert config_for(URL).dashboard.listen == "127.0.0.1:8765"
    for bad in (
        {"listen": "8765"},
        {"listen": "host:99999"},
        {"tls_cert": "/c"},
        {"allow_plain_remote": "yes"},
        {"bind": "x"},
    ):
        with pytest.raises(ConfigError, match="dashboard"):
            config_for(URL, dashboard=bad)
    assert check_listen(config_for(URL)) is False
    assert check_listen(config_for(URL, dashboard={"listen": "[::1]:9000"})) is False
    with pytest.raises(ListenRefused, match="tls_cert"):
        check_listen(config_for(URL, dashboard={"listen": "0.0.0.0:8765"}))
    assert (
        check_listen(config_for(URL, dashboard={"listen": "0.0.0.0:8765", "allow_plain_remote": True}))
        is True
    )
    tls = config_for(URL, dashboard={"listen": "0.0.0.0:8443", "tls_cert": "/c.pem", "tls_key": "/k.pem"})
    assert check_listen(tls) is False and tls.dashboard.tls
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")


def test_attribution_follows_the_connections_statement_order():
    s = T0
    changes = [  # (change id, blog, conn, post, captured_at, parent)
        (1, 1, 50, 12, s, 0),
        (2, 1, 50, 12, s + timedelta(seconds=5), 0),
        (3, 1, 60, 31, s, 30),
        (4, 2, 50, 12, s, 0),
    ]
    sources = [  # (blog, conn, product, kind, order, user, recorded_at)
        (1, 50, 12, "order", 777, 0, s + timedelta(milliseconds=3)),  # after change 1, before change 2
        (1, 50, 12, "admin", 0, 5, s + timedelta(seconds=4)),  # before change 2
        (1, 60, 30, "admin", 0, 9, s - timedelta(milliseconds=1)),  # the variation's parent saved
    ]
    found = match(changes, sources)
    assert found[1] == {"kind": "order", "order_id": 777, "user_id": 0}
    assert found[2]["kind"] == "admin" and found[2]["user_id"] == 5
    assert found[3]["user_id"] == 9
    assert 4 not in found  # another blog's connection 50 is another connection
    assert describe("origin", None, (1, 12), found[1]) == "order #777"
    assert describe("origin", None, (2, 12), {"kind": None}) == "other writer (import, REST, SQL)"
    assert describe("origin", None, (2, 12), None) == "not recorded"
    assert describe("set", "dashboard:alice", (1, 12), None) == "dashboard user alice"
    assert describe("copy", None, (1, 12), None) == "copy of 1:12"


def test_charts_are_plain_svg_without_script():
    series = {1: [(T0, 5.0), (T0 + timedelta(hours=1), 3.0)], 2: [(T0, 5.0)]}
    marks = [charts.Mark(T0 + timedelta(hours=1), 1, 3.0, "sale", "<script>alert(1)</script>")]
    svg = charts.stock_chart(series, marks, "Stock of <b>X</b>")
    assert (
        svg.startswith("<svg") and svg.endswith("</svg>") and "<script" not in svg and "&lt;script&gt;" in svg
    )
    assert svg.count("<polyline") == 2 and 'class="mark sale"' in svg
    assert "no stock history" in charts.stock_chart({}, [], "t")
    hours = [T0 + timedelta(hours=h) for h in range(3)]
    assert "<polyline" in charts.hourly_chart({1: {hours[1]: 4}}, hours, "per hour")
