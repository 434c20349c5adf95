"""13. The memory guard: how fast it kills a load that takes memory below the floor, and what watching
memory costs at rest.

Reaction: a fake model takes memory at about 1 GiB/s while it loads; the floor is set 2 GiB under what
is available when it begins. A thread here reads /proc/meminfo every 5 ms and notes when available
memory first falls below the floor; Docker's `kill` event (nanosecond time) notes when the guard
killed the container. Cost at rest: the guard's sample (read /proc/meminfo, apply the rule to the
models) timed in this process, as a share of one core at its rest interval. A remote host's sample
(`DockerRuntime.host_memory`: the memory probe's last lines, through the engine), made here through
this machine's engine with the fake model's image: the waker's CPU (this process) and the engine's
(dockerd's, from /proc) a sample, as a share of one core at the rest interval.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import Row, Section, docker, fake_model, median, start_stack
from tests.e2e.stack import FAKE_IMAGE
from tests.eventually import eventually
from waker.core.lifecycle import State
from waker.core.memory import victim
from waker.core.plan import Slot
from waker.docker.runtime import DockerRuntime
from waker.shell.memory_guard import REST_INTERVAL
from waker.system.memory import read_host_memory

GIB, MIB = 1024**3, 1024**2
RATE_MIB = 1024  # the load's allocation rate, per second
TAKEN_MIB = 4096


def _crossing(floor: int, stop: threading.Event, seen: list[float]) -> None:
    while not stop.is_set():
        if read_host_memory().available < floor:
            seen.append(time.time())
            return
        time.sleep(0.005)


def _request(stack, model: str) -> None:
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
    request = urllib.request.Request(stack.url + "/v1/completions", data=body, method="POST")
    try:
        urllib.request.urlopen(request, timeout=120).close()
    except urllib.error.HTTPError as refused:  # 503 memory_guard: the outcome measured
        refused.close()


def reaction_once() -> float:
    """Seconds from the floor crossed to the container's kill."""
    load_delay = TAKEN_MIB / RATE_MIB / 0.7  # the fake takes its memory over 70 % of its load
    floor = read_host_memory().available - 2 * GIB
    hog = fake_model("hog", load_delay=load_delay, extra=["--load-memory", str(TAKEN_MIB)])
    stack = start_stack([hog], scheduler={"start_timeout": "120s", "memory_floor": floor})
    stop, seen = threading.Event(), list[float]()
    watcher = threading.Thread(target=_crossing, args=(floor, stop, seen), daemon=True)
    try:
        began = time.time()
        watcher.start()
        _request(stack, "hog")
        stop.set()
        watcher.join()
        kills = eventually(lambda: _kills(stack, began), 30, "the guard's kill", stack.log)  # after the answer
        if not seen:
            raise RuntimeError(f"the floor was never seen crossed:\n{stack.log()[-3000:]}")
        return int(kills[0]) / 1e9 - seen[0]
    finally:
        stack.stop()


def _kills(stack, since: float) -> list[str]:
    return docker(
        "events",
        "--since",
        f"{since - 1:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        f"label=io.waker.stack={stack.name}",
        "--filter",
        "event=kill",
        "--format",
        "{{.TimeNano}}",
    ).split()


def sample_cost(samples: int) -> float:
    """Seconds of CPU one guard sample takes (read and rule, five models)."""
    slots = [Slot(f"m{i}", 0.2, state=State.READY, ready_since=float(i)) for i in range(5)]
    began = time.process_time()
    for _ in range(samples):
        victim(slots, read_host_memory(), 1, frozenset())
    return (time.process_time() - began) / samples


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def probe_cost(samples: int) -> tuple[float, float, float]:
    """(wall, this process's CPU, dockerd's CPU) seconds of one remote-host sample through the probe."""
    dockerd = int(Path("/var/run/docker.pid").read_text())

    async def measure() -> tuple[float, float, float]:
        runtime = DockerRuntime("bench-probe")
        try:
            await runtime.host_memory((FAKE_IMAGE,))  # makes the probe: not counted
            wall, cpu, engine = time.perf_counter(), time.process_time(), _cpu_seconds(dockerd)
            for _ in range(samples):
                await runtime.host_memory((FAKE_IMAGE,))
            return (
                (time.perf_counter() - wall) / samples,
                (time.process_time() - cpu) / samples,
                (_cpu_seconds(dockerd) - engine) / samples,
            )
        finally:
            await runtime.remove_memory_probe()
            await runtime.close()

    return asyncio.run(measure())


def run(quick: bool) -> Section:
    section = Section(f"13. Memory guard: a load taking {RATE_MIB} MiB/s crosses the floor")
    reactions = [reaction_once() for _ in range(1 if quick else 3)]
    reaction = median(reactions)
    section.rows.append(
        Row(
            "floor crossed to container killed (median)",
            f"{reaction * 1000:.0f} ms ({', '.join(f'{r * 1000:.0f}' for r in reactions)})",
            "< 1 s",
            reaction < 1.0,
        )
    )
    cost = sample_cost(2000 if quick else 20000)
    share = cost / REST_INTERVAL * 100
    section.rows.append(
        Row(
            f"sampling at rest (one sample every {REST_INTERVAL:g} s)",
            f"{cost * 1e6:.0f} µs a sample, {share:.4f} % of a core",
            "< 0.1 % of a core",
            share < 0.1,
        )
    )
    wall, waker_cpu, engine_cpu = probe_cost(100 if quick else 500)
    remote = (waker_cpu + engine_cpu) / REST_INTERVAL * 100
    section.rows.append(
        Row(
            f"a remote host's sample through its engine, at rest (every {REST_INTERVAL:g} s)",
            f"{wall * 1000:.1f} ms; CPU {waker_cpu * 1000:.2f} ms waker + {engine_cpu * 1000:.2f} ms dockerd, "
            f"{remote:.3f} % of a core",
            "< 0.1 % of a core",
            remote < 0.1,
        )
    )
    section.notes.append(
        "the crossing is this process's own reading of /proc/meminfo every 5 ms; the kill is Docker's event time"
    )
    return section
