"""The memory guard with real memory: a model whose load takes this machine's memory below the floor
is killed before it runs out (its client gets 503 `memory_guard` with the figures, the memory comes
back), and a declared footprint that cannot fit is refused before any container is made. Floors are
set from the memory available when the test begins, so they hold on any machine."""

from __future__ import annotations

import json
import os

import aiohttp
import pytest

from tests.e2e.stack import fake_model, real_model
from tests.eventually import eventually, eventually_async
from waker.system.memory import read_host_memory

pytestmark = pytest.mark.e2e

MIB, GIB = 1024**2, 1024**3


async def complete(session, stack, model) -> tuple[int, dict]:
    payload = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
    headers = {"Content-Type": "application/json"}  # the real vLLM takes nothing else
    async with session.post(f"{stack.url}/v1/completions", data=payload, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_a_load_that_takes_memory_below_the_floor_is_killed_and_gives_it_back(make_stack):
    available = read_host_memory().available
    floor = available - 1536 * MIB  # the load takes 3 GiB: the floor is crossed half-way
    hog = fake_model("hog", load_delay=20, extra=["--load-memory", "3072"])
    stack = make_stack([hog], scheduler={"start_timeout": "60s", "memory_floor": floor, "max_start_failures": 3})
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack, "hog")
        assert status == 503 and body["error"]["code"] == "memory_guard", body
        message = body["error"]["message"]
        assert "stopped by the memory guard while it started" in message and "memory_floor" in message
        assert f"below the floor of {floor / GIB:.1f} GiB" in message
        died = eventually(lambda: stack.docker_events("die"), 30, "the container's death", stack.log)
        assert died[0]["Actor"]["Attributes"]["io.waker.model"] == "hog"
        assert stack.docker_events("kill"), "killed at once, not stopped gracefully"
        eventually(lambda: read_host_memory().available > floor + GIB, 30, "the memory given back", stack.log)

        async with session.get(f"{stack.waker_url}/admin/models/hog") as response:
            described = await response.json()
        assert described["state"] == "failed" and "memory guard" in described["last_error"]
        async with session.get(f"{stack.waker_url}/admin/models") as response:
            (host,) = (await response.json())["hosts"]
        assert host["memory"]["floor_bytes"] == floor and host["memory"]["total_bytes"] > host["memory"]["floor_bytes"]
        async with session.get(f"{stack.waker_url}/metrics") as response:
            metrics = await response.text()
        assert 'waker_memory_guard_stops_total{model="hog"} 1' in metrics
        assert "waker_host_memory_available_bytes" in metrics
    lines = [json.loads(line) for line in stack.log().splitlines() if line.startswith("{")]
    (stop,) = [line for line in lines if line["event"] == "memory_guard_stop"]
    assert (stop["model"], stop["state"], stop["floor"], stop["level"]) == ("hog", "starting", floor, "warning")


async def test_a_declared_footprint_that_cannot_fit_is_refused_before_any_container_is_made(make_stack):
    available = read_host_memory().available
    big = fake_model("big", memory=available + 10 * GIB)
    stack = make_stack([big], scheduler={"start_timeout": "60s", "memory_floor": "1GiB"})
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack, "big")
    assert status == 503 and body["error"]["code"] == "insufficient_memory", body
    assert "None of the waker's models run there" in body["error"]["message"]
    assert stack.docker_events("create") == [] and stack.containers() == []


async def test_the_page_cache_is_dropped_before_a_start_that_free_memory_cannot_cover(make_stack, tmp_path):
    """As root on the host (CI's case): weights just written sit in the page cache, which MemFree (what
    vLLM's start check reads on unified memory) leaves out and MemAvailable counts."""
    weights = tmp_path / "weights.bin"  # on the disk, not a tmpfs: clean cache the kernel may drop
    with weights.open("wb") as out:
        for _ in range(32):
            out.write(b"\x01" * (64 * MIB))
        out.flush()
        os.fsync(out.fileno())
    memory = read_host_memory()
    assert memory.available - memory.free > 1536 * MIB, "the file's pages should be cached"
    floor = GIB
    need = memory.free - floor + 512 * MIB  # more than is free above the floor, less than is available
    cold = fake_model("cold", memory=need)
    stack = make_stack([cold], scheduler={"start_timeout": "60s", "memory_floor": floor, "drop_page_cache": True})
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack, "cold")
    assert status == 200, body
    lines = [json.loads(line) for line in stack.log().splitlines() if line.startswith("{")]
    (dropped,) = [line for line in lines if line["event"] == "page_cache_dropped"]
    assert dropped["model"] == "cold" and dropped["need_bytes"] == need
    assert dropped["free_after_bytes"] > dropped["free_before_bytes"] + GIB


async def test_a_models_learned_footprint_matches_what_its_container_took(make_stack):
    """The fall in available memory over a start (what the waker learns) against Docker's own account
    of the container: a fake that takes 2 GiB while it loads, and holds it."""
    loader = fake_model("loader", load_delay=3, extra=["--load-memory", "2048"])
    stack = make_stack([loader], scheduler={"start_timeout": "60s", "memory_floor": "1GiB"})
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack, "loader")
        assert status == 200, body

        async def learned() -> dict | None:  # at the guard's first sample after the start (0.2 s)
            async with session.get(f"{stack.waker_url}/admin/models/loader") as response:
                memory = (await response.json())["memory"]
            return memory if memory["learned_bytes"] is not None else None

        memory = await eventually_async(learned, 10, "the footprint learned", stack.log)
    held = memory["current_bytes"]
    assert held >= 2 * GIB, memory  # the 2 GiB it took, and the interpreter
    # The larger of the host's fall over the start and the container's own account: never less than
    # what the container holds, and not much more (nothing else grew by a tenth of it meanwhile).
    assert 0.9 * held <= memory["learned_bytes"] <= 1.1 * held, memory
    assert json.loads((stack.tmp / "state" / "footprints.json").read_text()) == {"loader": memory["learned_bytes"]}


async def test_the_real_engines_learned_footprint_is_within_a_tenth_of_what_its_container_holds(make_stack):
    """The real vLLM (CPU build: its weights and KV cache are host memory, as on a Spark) started
    through the gateway: what the waker learns against Docker's account of its container, less the
    page cache charged to it (cgroup v1's high-water mark counts the libraries the engine read, which
    the kernel reclaims: 2.2 GiB against 3.1 GiB on a cold cache here)."""
    stack = make_stack([real_model("real")], scheduler={"start_timeout": "600s", "memory_floor": "1GiB"})
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack, "real")
        assert status == 200, body

        async def learned() -> dict | None:
            async with session.get(f"{stack.waker_url}/admin/models/real") as response:
                memory = (await response.json())["memory"]
            return memory if memory["learned_bytes"] is not None else None

        memory = await eventually_async(learned, 20, "the footprint learned", stack.log)
    held = memory["current_bytes"]
    assert held > GIB, memory  # the 1 GiB KV cache, the weights, torch
    assert abs(memory["learned_bytes"] - held) <= 0.1 * held, memory
