"""The dashboard in a real browser: Playwright driving Debian's chromium, headless, with an empty
profile. Log in, search, open a product, see its chart, set stock everywhere, run an audit and
reconcile a drifted group, check the database and the history, log out.

Screenshots of every page go to test-artifacts/screenshots/ (gitignored); with
SYNCD_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/ (the README shows those)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from syncd.testnet.browser import ARGS, ensure_chromium
from tests.integration.dashboard_helpers import ADMIN, running_dashboard, woo_order
from tests.integration.sync_helpers import ids, make_daemon, qty
from tests.integration.test_audit_reconcile import drift_sql, installed
from tests.integration.test_dashboard_http import history_rows

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"


@pytest.fixture
def page(tmp_path):
    chromium = ensure_chromium()  # installs it when missing (root + apt); never skips
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # an empty user-data-dir
            executable_path=chromium,
            headless=True,
            args=list(ARGS),
            viewport={"width": 1280, "height": 900},
        )
        try:
            pg = context.new_page()
            pg.csp_errors = []  # type: ignore[attr-defined]
            pg.on("console", lambda m: "Content Security Policy" in m.text and pg.csp_errors.append(m.text))  # type: ignore[attr-defined]
            yield pg
        finally:
            context.close()


def shot(page: Page, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SYNCD_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def test_admin_workflow_in_a_real_browser(page, wp_network):
    net = wp_network
    installed(net)
    mug, cap = ids(net, "MUG"), ids(net, "CAP")
    with running_dashboard(net) as d:
        # a little history for the charts: orders on every blog, applied by the daemon
        for b in (1, 2, 3):
            drift_sql(net, b, mug[b], "_stock", "30")
        daemon = make_daemon(net)
        try:
            for n, blog in enumerate((1, 2, 3, 2, 1, 3, 2), start=101):
                woo_order(net, blog, mug[blog], n, n % 2 + 1)
                daemon.apply_pending()
        finally:
            daemon.close()
        page.goto(d.url + "/products")
        expect(page).to_have_url(d.url + "/login?next=/products")
        shot(page, "login")
        page.fill("input[name=name]", ADMIN[0])
        page.fill("input[name=password]", ADMIN[1])
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Products")
        page.goto(d.url + "/")
        expect(page.locator("#hourly-chart svg")).to_be_visible()
        shot(page, "overview")

        page.goto(d.url + "/products")
        page.fill("#search input[name=q]", "MUG")
        page.click("#search button")
        expect(page.locator("table.products tbody tr")).to_have_count(1)
        shot(page, "products-search")
        page.click("table.products a:text('MUG')")
        expect(page.locator("#stock-chart svg polyline").first).to_be_attached()
        assert page.locator("#stock-chart svg polyline").count() == 3  # one line per blog
        assert page.locator("#stock-chart svg .mark.sale").count() == 7  # every order marked as a sale
        expect(page.locator("table.events")).to_contain_text("order #101")

        page.fill("#set-stock input[name=qty]", "12")
        page.click("#set-stock button")
        expect(page.locator("#done")).to_contain_text("stock set to 12 everywhere")
        assert [qty(net, b, mug[b]) for b in (1, 2, 3)] == [12, 12, 12]
        assert {r["source"] for r in history_rows(net, role="set")} == {"dashboard:admin"}
        expect(page.locator("table.events")).to_contain_text("dashboard user admin")
        shot(page, "product")

        drift_sql(net, 3, cap[3], "_stock", "77")
        page.goto(d.url + "/products")
        expect(page.locator("table.products tr.drift")).to_have_count(1)  # CAP, highlighted
        shot(page, "products")
        page.goto(d.url + "/audit")
        page.click("#run-audit button")
        expect(page.locator("#audit-summary")).to_be_visible(timeout=60_000)  # the page refreshes itself
        shot(page, "audit")
        page.check("input[aria-label='choose CAP']")
        page.click("#reconcile-chosen button:text('chosen')")
        expect(page.locator("#preview")).to_contain_text("Would write")
        shot(page, "reconcile-preview")
        assert qty(net, 3, cap[3]) == 77  # the preview wrote nothing
        page.click("#apply button")
        expect(page.locator("#preview")).to_contain_text("Wrote 1 value")
        assert len({qty(net, b, cap[b]) for b in (1, 2, 3)}) == 1
        assert [r["source"] for r in history_rows(net, role="reconcile")] == ["dashboard:admin"]

        for path, name in (("/links", "links"), ("/dead-letters", "dead-letters")):
            page.goto(d.url + path)
            expect(page.locator("h1")).to_be_visible()
            shot(page, name)
        page.click("header form.logout button")
        expect(page).to_have_url(d.url + "/login")
        page.goto(d.url + "/products")
        expect(page).to_have_url(d.url + "/login?next=/products")
        assert not page.csp_errors  # type: ignore[attr-defined]
