"""Shared fixtures: the Docker adapters' fake engines (tests/unit/fake_docker.py), a runtime over one, a
model server, and the waker's HTTP application over the shell's fakes (tests/unit/shell_fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from tests.unit.fake_docker import STACK, Call, FakeDocker, ModelServer
from tests.unit.shell_fakes import FakeDriver, FakeNginx, make_config, open_shell
from waker.docker.runtime import DockerRuntime
from waker.http.app import build_app
from waker.http.metrics import Counters


@pytest.fixture
async def engines(aiohttp_server) -> AsyncIterator[Callable[..., Awaitable[FakeDocker]]]:
    """Starts fake engines on demand, sharing one journal of calls (the order across two engines)."""
    journal: list[Call] = []
    started: list[FakeDocker] = []

    async def start(name: str = "engine") -> FakeDocker:
        fake = await FakeDocker(name, journal).serve(aiohttp_server)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.release()


@pytest.fixture
async def docker(engines) -> FakeDocker:
    return await engines()


@pytest.fixture
async def runtime(docker: FakeDocker) -> AsyncIterator[DockerRuntime]:
    runtime = DockerRuntime(STACK, docker.url)
    yield runtime
    await runtime.close()


@pytest.fixture
async def model_server(aiohttp_server) -> AsyncIterator[ModelServer]:
    server = await ModelServer().serve(aiohttp_server)
    yield server
    server.release()


@pytest.fixture
async def api(aiohttp_client):
    """The waker's one HTTP application over the real shell with a fake driver and clock, served on a
    loopback port: `await api(*models, ...)` answers (shell, client). `config` stands for the one made of
    `models` (a file that a reload or the CLI reads too), `port` is where to serve (the config's), `hosts`
    a driver for each of the config's [[host]] entries, `memory` this machine's memory for the guard."""

    async def make(
        *models, gateway=None, sleep_mode=False, config=None, port=None, hosts=None, memory=None, **scheduler
    ):
        config = config or make_config(*models, **scheduler)
        if gateway:
            config = replace(config, gateway=replace(config.gateway, **gateway))
        driver = FakeDriver()
        nginx = FakeNginx(driver) if sleep_mode else None
        shell = await open_shell(config, driver, nginx=nginx, router=nginx, hosts=hosts, memory=memory)
        counters = Counters()
        shell.supervisor.bus.add_sink(counters.observe)
        app = build_app(shell.supervisor, shell.control, counters)
        client = await aiohttp_client(app, server_kwargs={"port": port} if port else None)
        return shell, client

    return make
