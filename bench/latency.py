"""3-5. What a cold model costs beyond its own load time: cold start, swap, and a burst."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp

from bench.common import Row, Section, admin, fake_model, median, start_stack

LOAD_DELAY = 1.0


def _first_byte(url: str, body: dict) -> float:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read(1)
        first = time.monotonic() - began
        response.read()
    return first


def cold_start(quick: bool) -> Section:
    runs = 3 if quick else 10
    stack = start_stack([fake_model("cold", load_delay=LOAD_DELAY)], scheduler={"min_uptime": "0s"})
    section = Section(f"3. Cold start overhead: first byte from a stopped model minus its {LOAD_DELAY:g} s load")
    try:
        admin(stack, "POST", "/admin/prepare")  # the container exists, as after `waker prepare`
        overheads = []
        for _ in range(runs):
            admin(stack, "POST", "/admin/models/cold/stop")
            overheads.append(_first_byte(f"{stack.url}/v1/completions", {"model": "cold", "prompt": "x"}) - LOAD_DELAY)
        p50 = median(overheads) * 1000
        section.rows.append(Row(f"overhead p50 over {runs} starts", f"{p50:.0f} ms", "<= 100 ms", p50 <= 100))
        section.rows.append(Row("overhead min / max", f"{min(overheads) * 1000:.0f} / {max(overheads) * 1000:.0f} ms"))
    finally:
        stack.stop()
    return section


def swap(quick: bool) -> Section:
    runs = 3 if quick else 8
    models = [fake_model(name, load_delay=LOAD_DELAY, gpu_memory=0.6) for name in ("a", "b")]
    stack = start_stack(models, scheduler={"min_uptime": "0s", "stop_timeout": "5s"})
    section = Section("4. Swap: idle A runs, a request for B: B's first byte minus its load, against A's exit time")
    try:
        admin(stack, "POST", "/admin/prepare")
        exits, overheads = [], []
        for _ in range(runs):
            admin(stack, "POST", "/admin/models/a/start")  # measure how long A takes to exit on its own
            began = time.monotonic()
            admin(stack, "POST", "/admin/models/a/stop")
            exits.append(time.monotonic() - began)
            admin(stack, "POST", "/admin/models/a/start")  # then swap: B's request evicts A
            overheads.append(_first_byte(f"{stack.url}/v1/completions", {"model": "b", "prompt": "x"}) - LOAD_DELAY)
            admin(stack, "POST", "/admin/models/b/stop")
        exit_p50, overhead_p50 = median(exits) * 1000, median(overheads) * 1000
        section.rows.append(Row("A's exit time p50", f"{exit_p50:.0f} ms"))
        section.rows.append(
            Row(
                "swap overhead p50 (B first byte - B load)",
                f"{overhead_p50:.0f} ms",
                f"<= A's exit + 100 ms = {exit_p50 + 100:.0f} ms",
                overhead_p50 <= exit_p50 + 100,
            )
        )
    finally:
        stack.stop()
    return section


async def _burst(url: str, count: int) -> tuple[list[int], list[float]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> tuple[int, float]:
            began = time.monotonic()
            async with session.post(url, json={"model": "burst", "prompt": "x", "max_tokens": 1}) as response:
                await response.read()
                return response.status, time.monotonic() - began

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    statuses = [r[0] if isinstance(r, tuple) else 0 for r in results]
    return statuses, [r[1] for r in results if isinstance(r, tuple)]


def burst(quick: bool) -> Section:
    count = 100 if quick else 500
    stack = start_stack([fake_model("burst", load_delay=LOAD_DELAY)])
    section = Section(f"5. Burst: {count} concurrent requests to a cold model ({LOAD_DELAY:g} s load)")
    try:
        statuses, latencies = asyncio.run(_burst(f"{stack.url}/v1/completions", count))
        starts = len(stack.docker_events("start"))
        errors = sum(1 for s in statuses if s != 200)
        slowest = max(latencies) if latencies else float("inf")
        section.rows.append(Row("container starts", str(starts), "1", starts == 1))
        section.rows.append(Row("errors", str(errors), "0", errors == 0))
        section.rows.append(
            Row(
                "slowest answer", f"{slowest:.2f} s", f"<= load + 1 s = {LOAD_DELAY + 1:g} s", slowest <= LOAD_DELAY + 1
            )
        )
    finally:
        stack.stop()
    return section
