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

from tests.e2e.stack import FAKE_IMAGE, Stack, docker, fake_model, free_port, free_port_range
from tests.eventually import eventually, eventually_async
from waker.system.memory import read_host_memory

pytestmark = pytest.mark.e2e

HOST_TWO_ADDRESS = "127.0.0.2"
MIB, GIB = 1024**2, 1024**3  # loopback too, but not engine one's: which host answers shows


@pytest.fixture
def two_hosts(make_stack, second_engine):
    def make(*models: dict) -> Stack:
        hosts = [
            {"name": "one", "gpu_capacity": 1.0},
            {"name": "two", "docker_host": second_engine.host, "address": HOST_TWO_ADDRESS, "gpu_capacity": 1.0},
        ]
        return make_stack(list(models), hosts=hosts)

    yield make
    second_engine.remove_all_containers()


def running_on_one(stack: Stack) -> set[str]:
    out = docker("ps", "--filter", f"label=io.waker.stack={stack.name}", "--format", '{{.Label "io.waker.model"}}')
    return set(out.split())


def running_on_two(engine, stack: Stack) -> set[str]:
    out = engine.docker(
        "ps", "--filter", f"label=io.waker.stack={stack.name}", "--format", '{{.Label "io.waker.model"}}'
    )
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
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    await client.close()
    return reply.model


async def test_models_go_where_they_fit_each_host_keeps_its_own_budget_and_evicts_only_there(two_hosts, second_engine):
    stack = two_hosts(
        fake_model("a", gpu_memory=0.6),
        fake_model("b", gpu_memory=0.6),
        fake_model("c", gpu_memory=0.3, host="two"),
        fake_model("d", gpu_memory=0.5),
    )
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
    with urllib.request.urlopen(f"{stack.waker_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    for line in (
        'waker_host_gpu_used{host="one"} 0.6',
        'waker_host_gpu_used{host="two"} 0.9',
        'waker_host_gpu_capacity{host="two"} 1',
        'waker_docker_connected{host="two"} 1',
    ):
        assert line in metrics.splitlines(), line

    # d fits nowhere now: room is made where it is cheapest (one has more left), by evicting a only.
    assert await ask(stack, "d") == "d"
    assert running_on_one(stack) == {"d"} and running_on_two(second_engine, stack) == {"b", "c"}
    assert {"model": "a", "reason": "evicted", "for_model": "d"}.items() <= logged(stack, "model_stopped")[0].items()


async def test_a_host_whose_engine_goes_away_is_reported_its_models_fail_clearly_and_the_other_serves(
    two_hosts, second_engine
):
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


RAY_IMAGE = "waker-ray:test"
RAY_WORKER = [
    "/opt/ray/bin/python",
    "-u",
    "/node.py",
    "worker",
    "--ip",
    "{worker_ip}",
    "--address",
    "{head_ip}:{ray_port}",
]


async def test_a_model_over_two_hosts_runs_its_ray_worker_there_serves_from_its_head_and_fails_as_one(
    make_stack, second_engine
):
    """hosts = 2 through the gateway: the worker on engine two, the head on engine one (the Ray test
    image's server listens only once both nodes are in the cluster, as vLLM does), charged on both
    budgets; a stop takes both down; the worker killed fails the model with both log tails and the head
    torn down. Both hosts keep the default loopback address: Ray's nodes meet there."""
    second_engine.load_images(RAY_IMAGE)
    port = free_port()
    big = {
        "id": "big",
        "image": RAY_IMAGE,
        "pull": "never",
        "hosts": 2,
        "host": "one",
        "gpu_memory": 0.8,
        "port": port,
        "ray_port": free_port(),
        "start_timeout": "3m",
        "stop_timeout": "5s",
        "command": [
            "head",
            "--ip",
            "{head_ip}",
            "--port",
            "{ray_port}",
            "--port-base",
            str(free_port_range(64)),
            "--nodes",
            "2",
            "--",
            "serve",
            "fake/big",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--served-model-name",
            "big",
        ],
        "worker_command": [*RAY_WORKER, "--port-base", str(free_port_range(64))],
    }
    hosts = [
        {"name": "one", "gpu_capacity": 1.0},
        {"name": "two", "docker_host": second_engine.host, "gpu_capacity": 1.0},
    ]
    stack = make_stack([big], hosts=hosts)
    labels = ("--filter", f"label=io.waker.stack={stack.name}")
    try:
        assert await ask(stack, "big") == "big"
        workers = second_engine.docker("ps", "-q", *labels, "--filter", "label=io.waker.ray-node=worker")
        assert docker("ps", "-q", *labels).strip() and workers.strip()
        _, listing = get_json(f"{stack.waker_url}/admin/models")
        assert next(m for m in listing["models"] if m["id"] == "big")["hosts"] == ["one", "two"]
        assert [(h["name"], h["gpu_used"]) for h in listing["hosts"]] == [("one", 0.8), ("two", 0.8)]

        stopped = stack.cli("stop", "big")
        assert stopped.returncode == 0, stopped.stderr
        assert not docker("ps", "-q", *labels).strip() and not second_engine.docker("ps", "-q", *labels).strip()

        assert await ask(stack, "big") == "big"  # the same pair again
        worker = second_engine.docker("ps", "-q", *labels).split()
        second_engine.docker("kill", *worker)

        async def failed() -> dict | None:
            _, model = await asyncio.to_thread(get_json, f"{stack.waker_url}/admin/models/big")
            return model if model["state"] == "failed" and "last log lines" in (model["last_error"] or "") else None

        model = await eventually_async(failed, 30, "big failed with its log tails", stack.log)
        assert "on host 'two'" in model["last_error"]
        assert "Ray head on host 'one':" in model["last_error"] and "Ray worker on host 'two':" in model["last_error"]
        await eventually_async(
            lambda: asyncio.to_thread(lambda: not docker("ps", "-q", *labels).strip()),
            30,
            "the head torn down with its worker",
            stack.log,
        )
    finally:
        second_engine.remove_all_containers()


async def test_host_twos_memory_is_read_through_its_engine_and_guarded_with_its_own_floor(make_stack, second_engine):
    """Engine 2 runs on this machine, so its containers see this machine's /proc/meminfo: the figures
    read through it can be checked against the ones read here."""
    available = read_host_memory().available
    floor = available - 1536 * MIB  # the load takes 3 GiB: host two's floor is crossed half-way
    hosts = [
        {"name": "one", "gpu_capacity": 1.0},  # [scheduler]'s floor, far below: nothing happens on one
        {
            "name": "two",
            "docker_host": second_engine.host,
            "address": HOST_TWO_ADDRESS,
            "gpu_capacity": 1.0,
            "memory_floor": floor,
        },
    ]
    hog = fake_model("hog", host="two", load_delay=20, extra=["--load-memory", "3072"])
    stack = make_stack([hog], hosts=hosts, scheduler={"start_timeout": "60s", "max_start_failures": 3})

    async def two_measured() -> dict | None:
        _, listing = await asyncio.to_thread(get_json, f"{stack.waker_url}/admin/models")
        return {h["name"]: h for h in listing["hosts"]}["two"]["memory"]

    memory = await eventually_async(two_measured, 30, "host two's memory, read through engine 2", stack.log)
    here = read_host_memory()
    assert memory["total_bytes"] == here.total and memory["floor_bytes"] == floor
    assert abs(memory["available_bytes"] - here.available) < 512 * MIB  # read half a second apart at most
    (probe,) = second_engine.docker("ps", "-q", "--filter", f"label=io.waker.memory-probe={stack.name}").split()
    image, user, network = second_engine.docker(
        "inspect", "--format", "{{.Config.Image}} {{.Config.User}} {{.HostConfig.NetworkMode}}", probe
    ).split()
    assert (image, user, network) == (FAKE_IMAGE, "65534:65534", "none")  # the model's image, as nobody

    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=120, max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        await client.completions.create(model="hog", prompt="hi", max_tokens=1)
    await client.close()
    assert refused.value.status_code == 503 and refused.value.body["code"] == "memory_guard"
    assert "host 'two' had" in refused.value.message
    assert f"below the floor of {floor / GIB:.1f} GiB" in refused.value.message
    (stop,) = logged(stack, "memory_guard_stop")
    assert (stop["model"], stop["host"], stop["floor"]) == ("hog", "two", floor)
    eventually(lambda: not running_on_two(second_engine, stack), 30, "the hog gone from engine 2", stack.log)
    eventually(lambda: read_host_memory().available > floor + GIB, 30, "the memory given back", stack.log)

    await asyncio.to_thread(stack.stop)
    assert second_engine.docker("ps", "-aq", "--filter", f"label=io.waker.memory-probe={stack.name}").split() == []
