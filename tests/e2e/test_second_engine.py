"""Two Docker engines on one machine: the ground the two-host tests stand on (issue 17).

Engine 2 is a real `dockerd` of its own (tests/e2e/second_engine.py). These tests prove what the
placement and multi-host work will rely on: a model container runs on engine 2 and answers from the
host, the main engine does not see it, and when engine 2 goes away (a second box shut down) and comes
back, the waker's Docker adapter sees it go (its events stream ends, calls fail with a clear error) and
finds the container again afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import urllib.request
import uuid

import pytest

from tests.e2e.second_engine import BRIDGE_ADDRESS
from tests.e2e.stack import FAKE_IMAGE, docker, free_port
from tests.eventually import eventually, eventually_async
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_MANAGED, LABEL_MODEL, LABEL_STACK
from waker.errors import DockerError

pytestmark = pytest.mark.e2e


def _served_models(port: int) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
            return [m["id"] for m in json.load(response)["data"]]
    except OSError:
        return []


def _run_fake(engine, name: str, port: int, stack: str = "") -> str:
    labels = [f"--label={LABEL_MANAGED}=true", f"--label={LABEL_STACK}={stack}", f"--label={LABEL_MODEL}={name}"]
    return engine.docker(
        "run",
        "-d",
        "--name",
        name,
        *(labels if stack else []),
        "-p",
        f"127.0.0.1:{port}:8000",
        FAKE_IMAGE,
        "serve",
        f"fake/{name}",
        "--port",
        "8000",
        "--served-model-name",
        name,
    ).strip()


def test_a_model_container_on_engine_two_answers_from_the_host(second_engine):
    name, port = f"m{uuid.uuid4().hex[:8]}", free_port()
    _run_fake(second_engine, name, port)

    assert eventually(lambda: _served_models(port), 20, f"{name} answering on 127.0.0.1:{port}") == [name]
    # It is engine 2's container on engine 2's bridge; the main engine knows nothing of it.
    address = ipaddress.IPv4Address(second_engine.container_ip(name))
    assert address in ipaddress.IPv4Interface(BRIDGE_ADDRESS).network
    assert docker("ps", "-aq", "--filter", f"name=^{name}$") == ""
    second_engine.docker("rm", "-f", name)


async def test_engine_two_goes_away_and_comes_back(second_engine):
    stack, name, port = f"t{uuid.uuid4().hex[:10]}", f"m{uuid.uuid4().hex[:8]}", free_port()
    container_id = _run_fake(second_engine, name, port, stack)
    await eventually_async(lambda: asyncio.to_thread(_served_models, port), 20, f"{name} answering")
    runtime = DockerRuntime(stack, second_engine.host)
    try:
        assert [(c.id, c.running) for c in await runtime.managed_containers()] == [(container_id, True)]

        # The host goes away: its engine stops its containers and the events stream ends.
        events = []
        async with runtime.event_stream() as stream:
            stopping = asyncio.create_task(asyncio.to_thread(second_engine.stop))
            with pytest.raises(DockerError, match="events stream broke off.*not reachable"):
                async with asyncio.timeout(60):
                    async for event in stream:
                        events.append(event.get("status"))
            await stopping
        assert "die" in events, events
        with pytest.raises(DockerError, match="cannot list containers: Cannot connect to Docker Engine"):
            await runtime.managed_containers()
        assert _served_models(port) == []

        # It comes back: the container is still there, stopped, and starts again on the same port.
        await asyncio.to_thread(second_engine.start)
        [info] = await runtime.managed_containers()
        assert (info.id, info.running) == (container_id, False)
        await runtime.start(container_id)
        await eventually_async(lambda: asyncio.to_thread(_served_models, port), 20, f"{name} answering again")
    finally:
        await runtime.close()
        second_engine.start()  # idempotent when it already runs: later tests need the engine
        second_engine.docker("rm", "-f", name, check=False)
