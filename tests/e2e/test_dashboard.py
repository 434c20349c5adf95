"""The dashboard in a real headless browser (Debian's chromium driven by Playwright), through the
gateway: start a model with its button and watch it become ready, read its logs, stop it; watch a
model load beside a stream waiting for it."""

from __future__ import annotations

import json
import re
import threading
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.e2e.stack import fake_model
from tests.e2e.test_sleep import sleeper
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-token"


def test_dashboard_starts_shows_logs_and_stops_a_model(make_stack, page, tmp_path):
    stack = make_stack(
        [
            fake_model("alpha", load_delay=2.0, gpu_memory=0.5, extra=["--load-memory", "512"]),
            fake_model("beta", gpu_memory=0.3, memory="1GiB"),
        ],
        scheduler={"stop_timeout": "2s", "min_uptime": "0s"},
        waker={"admin_token": TOKEN},
    )
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
    # The memory the guard watches, with the default floor of 2 GiB.
    expect(page.locator("#memory")).to_have_text(re.compile(r"^memory: \d+\.\d GiB available of \d+\.\d, floor 2\.0$"))
    # Each model's memory: what alpha's container holds (its 512 MiB load and the server), what beta declares.
    expect(alpha.locator("td.memory")).to_have_text(re.compile(r"^0\.[5-9] GiB"))
    expect(page.locator("tr[data-model='beta'] td.memory")).to_have_text("–declared 1.0 GiB")
    page.screenshot(path=str(tmp_path / "ready.png"))

    alpha.locator("button[data-action='logs']").click()
    expect(page.locator("#logs-text")).to_contain_text("serving alpha", timeout=5000)

    alpha.locator("button[data-action='pin']").click()
    expect(alpha).to_contain_text("pinned", timeout=5000)
    alpha.locator("button[data-action='stop']").click()
    expect(alpha).to_have_attribute("data-state", "stopped", timeout=10000)
    assert stack.containers() and not stack.cli("status", "--json").returncode


def test_the_dashboard_shows_the_progress_a_waiting_stream_shows(make_stack, page):
    """A cold streaming request and the dashboard side by side: the dashboard's line for the loading
    model is the one the stream received (the same stage, the same figures)."""
    stack = make_stack([fake_model("alpha", load_delay=8.0)])
    page.goto(f"{stack.url}/ui/")
    alpha = page.locator("tr[data-model='alpha']")
    expect(alpha).to_have_attribute("data-state", "stopped")
    lines: list[str] = []

    def stream() -> None:
        body = json.dumps(
            {"model": "alpha", "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        request = urllib.request.Request(
            f"{stack.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            for raw in response:
                if raw.startswith(b"data: {"):
                    delta = json.loads(raw[6:])["choices"][0]["delta"]
                    if "reasoning_content" in delta:
                        lines.append(delta["reasoning_content"].rstrip("\n"))

    reader = threading.Thread(target=stream)
    reader.start()

    def status_line() -> str | None:  # `waker status` shows the same line under its table
        out = stack.cli("status").stdout
        return out if "\nalpha: loading alpha: " in out else None

    eventually(status_line, 8, "the progress line in waker status")
    shown = alpha.locator(".loading-progress")
    expect(shown).to_contain_text("loading alpha: KV cache allocated: 2,097,152 tokens", timeout=15000)
    on_dashboard = shown.inner_text()
    reader.join(30)
    assert not reader.is_alive()
    expect(alpha).to_have_attribute("data-state", "ready", timeout=5000)
    expect(shown).to_have_count(0)  # ready: no progress line any more
    headline, detail = on_dashboard.split(" · ")
    in_stream = [line for line in lines if line.startswith(headline + " · ")]
    assert in_stream, (on_dashboard, lines)
    pattern = re.compile(r"\d+ s so far \(its first start: no earlier one to compare with\)")
    assert pattern.fullmatch(detail) and pattern.fullmatch(in_stream[0].split(" · ")[1])


def test_dashboard_puts_a_model_to_sleep_counts_its_sleep_memory_and_wakes_it(make_stack, page):
    stack = make_stack(
        [sleeper("nap", gpu_memory=0.5, idle_timeout="1h")], scheduler={"stop_timeout": "2s", "min_uptime": "0s"}
    )
    page.goto(f"{stack.url}/ui/")
    nap = page.locator("tr[data-model='nap']")
    nap.locator("button[data-action='start']").click()
    expect(nap).to_have_attribute("data-state", "ready", timeout=15000)
    expect(page.locator("#budget")).to_have_text("0.50 / 1.00")
    nap.locator("button[data-action='sleep']").click()
    expect(nap).to_have_attribute("data-state", "sleeping", timeout=10000)
    expect(page.locator("#budget")).to_have_text("0.10 / 1.00")  # what the scheduler counts asleep
    expect(nap.locator(".sleep-notes")).to_contain_text("asleep")
    nap.locator("button[data-action='wake']").click()
    expect(nap).to_have_attribute("data-state", "ready", timeout=10000)
    expect(page.locator("#budget")).to_have_text("0.50 / 1.00")
    assert sum(1 for e in stack.docker_events("start") if e["Actor"]["Attributes"].get("io.waker.model") == "nap") == 1
