"""Two hosts through the whole gateway (issue 17): the main Docker engine is host "one", a second real
`dockerd` (tests/e2e/second_engine.py) is host "two", reached at 127.0.0.2 where its models publish
their ports. Clients use the one gateway port with the official OpenAI SDK; the waker places each
model where it fits, keeps a budget per host, and keeps serving from one host while the other's
engine is gone.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest
from playwright.sync_api import expect

from tests.e2e.stack import Stack, docker, fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e

HOST_TWO_ADDRESS = "127.0.0.2"  # loopback too, but not engine one's: which host answers shows


@pytest.fixture
def two_hosts(make_stack, second_engine):
    def make(*models: dict) -> Stack:
        hosts = [{"name": "one", "gpu_capacity": 1.0},
                 {"name": "two", "docker_host": second_engine.host, "address": HOST_TWO_ADDRESS, "gpu_capacity": 1.0}]
        return make_stack(list(models), hosts=hosts)
    yield make
    second_engine.remove_all_containers()


def running_on_one(stack: Stack) -> set[str]:
    out = docker("ps", "--filter", f"label=io.waker.stack={stack.name}", "--format", '{{.Label "io.waker.model"}}')
    return set(out.split())


def running_on_two(engine, stack: Stack) -> set[str]:
    out = engine.docker("ps", "--filter", f"label=io.waker.stack={stack.name}", "--format",
                        '{{.Label "io.waker.model"}}')
    return set(out.split())


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def logged(stack: Stack, event: str) -> list[dict]:
    return [e for e in map(json.loads, stack.log().splitlines()) if e["event"] == event]


async def ask(stack: Stack, model: str) -> str:
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=60, max_retries=0)
    reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3)
    await client.close()
    return reply.model


async def test_models_go_where_they_fit_each_host_keeps_its_own_budget_and_evicts_only_there(two_hosts,
                                                                                             second_engine):
    stack = two_hosts(fake_model("a", gpu_memory=0.6), fake_model("b", gpu_memory=0.6),
                      fake_model("c", gpu_memory=0.3, host="two"), fake_model("d", gpu_memory=0.5))
    for model in ("a", "b", "c"):
        assert await ask(stack, model) == model
    # b has no room beside a on one: it went to two, and a kept running. c names two.
    assert running_on_one(stack) == {"a"} and running_on_two(second_engine, stack) == {"b", "c"}
    status, listing = get_json(f"{stack.waker_url}/admin/models")
    hosts = {h["name"]: h for h in listing["hosts"]}
    assert (hosts["one"]["gpu_used"], hosts["one"]["models"]) == (0.6, ["a"])
    assert (hosts["two"]["gpu_used"], hosts["two"]["models"]) == (0.9, ["b", "c"])
    b = next(m for m in listing["models"] if m["id"] == "b")
    assert b["hosts"] == ["two"] and b["address"].startswith(f"{HOST_TWO_ADDRESS}:")

    # d fits nowhere now: room is made where it is cheapest (one has more left), by evicting a only.
    assert await ask(stack, "d") == "d"
    assert running_on_one(stack) == {"d"} and running_on_two(second_engine, stack) == {"b", "c"}
    assert {"model": "a", "reason": "evicted", "for_model": "d"}.items() <= logged(stack, "model_stopped")[0].items()


async def test_a_host_whose_engine_goes_away_is_reported_its_models_fail_clearly_and_the_other_serves(
        two_hosts, second_engine):
    stack = two_hosts(fake_model("a", gpu_memory=0.5, host="one"), fake_model("c", gpu_memory=0.5, host="two"))
    assert await ask(stack, "a") == "a" and await ask(stack, "c") == "c"
    await asyncio.to_thread(second_engine.stop)
    try:
        async def degraded() -> dict | None:
            status, health = await asyncio.to_thread(get_json, f"{stack.url}/healthz")
            return health if status == 200 and health["status"] == "degraded" else None
        health = await eventually_async(degraded, 30, "/healthz naming host two as down", stack.log)
        assert health["hosts"]["one"] == "connected" and health["hosts"]["two"] != "connected"
        _, c = await asyncio.to_thread(get_json, f"{stack.waker_url}/admin/models/c")
        # Down either way: "failed" when the engine's shutdown killed it and said so before the stream
        # ended (as here), "stopped" when the host just vanished (a cable, a power cut).
        assert c["state"] in ("stopped", "failed")
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(stack, "c")
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "host_unavailable" and "host 'two' is down" in refused.value.message
        assert await ask(stack, "a") == "a"  # one keeps serving
    finally:
        await asyncio.to_thread(second_engine.start)

    async def healthy() -> bool:
        status, health = await asyncio.to_thread(get_json, f"{stack.url}/healthz")
        return status == 200 and health["status"] == "ok"
    await eventually_async(healthy, 60, "host two back in /healthz (the events stream reconnects)", stack.log)
    assert await ask(stack, "c") == "c"
    assert running_on_two(second_engine, stack) == {"c"}
    assert logged(stack, "host_lost") and logged(stack, "host_back")


def test_the_dashboard_and_waker_status_show_each_host_its_budget_and_its_models(two_hosts, page):
    stack = two_hosts(fake_model("a", gpu_memory=0.6, host="one"), fake_model("b", gpu_memory=0.25, host="two"))
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=60, max_retries=0)
    for model in ("a", "b"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    page.goto(f"{stack.url}/ui/")
    expect(page.locator("#hosts")).to_have_text("one: 0.60 / 1.00 · two: 0.25 / 1.00")
    expect(page.locator("#budget")).to_have_text("0.85 / 2.00")
    expect(page.locator("tr[data-model='b']")).to_contain_text("on two")
    status = stack.cli("status")
    assert status.returncode == 0, status.stderr
    assert "host one: GPU 0.6 of 1 (a), connected" in status.stdout
    assert "host two: GPU 0.25 of 1 (b), connected" in status.stdout
    row = next(line for line in status.stdout.splitlines() if line.startswith("b "))
    assert row.split()[1:3] == ["ready", "two"]
