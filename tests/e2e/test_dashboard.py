"""The dashboard in a real headless browser (Debian's chromium driven by Playwright), through the
gateway: start a model with its button and watch it become ready, read its logs, stop it."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.stack import fake_model

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-token"


@pytest.fixture
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        yield page
        browser.close()


def test_dashboard_starts_shows_logs_and_stops_a_model(make_stack, page, tmp_path):
    stack = make_stack([fake_model("alpha", load_delay=2.0, gpu_memory=0.5), fake_model("beta", gpu_memory=0.3)],
                       scheduler={"stop_timeout": "2s", "min_uptime": "0s"}, waker={"admin_token": TOKEN})
    page.goto(f"{stack.url}/ui/")
    page.fill("#token-input", TOKEN)  # an admin token is set: the page asks for it
    page.click("#token button")
    alpha = page.locator("tr[data-model='alpha']")
    expect(alpha).to_have_attribute("data-state", "stopped")
    expect(page.locator("tr[data-model='beta']")).to_have_attribute("data-state", "stopped")

    alpha.locator("button[data-action='start']").click()
    expect(alpha).to_have_attribute("data-state", "starting", timeout=5000)  # live, from the events stream
    expect(alpha.locator(".progress")).to_be_visible()
    expect(alpha).to_have_attribute("data-state", "ready", timeout=15000)
    expect(page.locator("#budget")).to_have_text("0.50 / 1.00")
    page.screenshot(path=str(tmp_path / "ready.png"))

    alpha.locator("button[data-action='logs']").click()
    expect(page.locator("#logs-text")).to_contain_text("serving alpha", timeout=5000)

    alpha.locator("button[data-action='pin']").click()
    expect(alpha).to_contain_text("pinned", timeout=5000)
    alpha.locator("button[data-action='stop']").click()
    expect(alpha).to_have_attribute("data-state", "stopped", timeout=10000)
    assert stack.containers() and not stack.cli("status", "--json").returncode
