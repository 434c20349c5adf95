"""Fixtures of the Docker adapters' tests: fake engines (tests/unit/fake_docker.py), a runtime over one,
and a model server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.unit.fake_docker import STACK, Call, FakeDocker, ModelServer
from waker.docker.runtime import DockerRuntime


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
