"""Least privilege towards Docker: the waker never acts on containers it did not create, and
through the filtering socket proxy it cannot do more than the calls it makes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import aiohttp
import pytest

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model, start_socket_proxy
from waker.docker.runtime import DockerRuntime
from waker.errors import NotManaged

pytestmark = pytest.mark.e2e


@pytest.fixture
def unmanaged():
    name = f"waker-test-unmanaged-{int(time.time() * 1000)}"
    container = docker("run", "-d", "--name", name, FAKE_IMAGE, "serve", "x", "--load-delay", "0").strip()
    yield container
    docker("rm", "-f", container, check=False)


def running(container: str) -> bool:
    return docker("inspect", "--format", "{{.State.Running}}", container).strip() == "true"


async def test_the_waker_refuses_to_touch_an_unmanaged_container(unmanaged):
    runtime = DockerRuntime("anystack")
    try:
        for action in (runtime.stop(unmanaged, 1), runtime.remove(unmanaged), runtime.start(unmanaged)):
            with pytest.raises(NotManaged, match="never acts on containers it did not create"):
                await action
    finally:
        await runtime.close()
    assert running(unmanaged)


async def test_a_name_clash_with_an_unmanaged_container_is_an_error_not_a_takeover(make_stack, unmanaged):
    stack = make_stack([fake_model("alpha")])
    docker("rename", unmanaged, f"{stack.name}-alpha")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 503
            assert "already in use" in (await response.json())["error"]["message"]
        async with session.post(f"{stack.waker_url}/admin/models/alpha/stop") as response:
            assert (await response.json())["outcome"] == "failure cleared"
    assert running(unmanaged)


@pytest.fixture
def proxy(tmp_path):
    sock = tmp_path / "docker.sock"
    process = start_socket_proxy(sock, stderr=subprocess.DEVNULL)
    yield sock
    process.terminate()
    process.wait(timeout=10)


def through(sock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "-H", f"unix://{sock}", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_whole_lifecycle_works_through_the_proxy(make_stack, proxy):
    stack = make_stack(
        [fake_model("alpha", load_delay=0.2)], scheduler={"min_uptime": "0s"}, docker_host=f"unix://{proxy}"
    )
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/alpha/completions", data=b"{}") as response:
            assert response.status == 200
        for path in ("/admin/models/alpha/logs?tail=2", "/admin/models"):
            async with session.get(stack.waker_url + path) as response:
                assert response.status == 200
        async with session.post(f"{stack.waker_url}/admin/models/alpha/stop") as response:
            assert (await response.json())["state"] == "stopped"
        async with session.get(f"{stack.url}/healthz") as response:
            assert (await response.json())["docker"] == "connected"  # the events stream passes too


def test_forbidden_docker_calls_are_refused_by_the_proxy(proxy, unmanaged):
    for args in (
        ["exec", unmanaged, "true"],
        ["stop", unmanaged],
        ["rm", "-f", unmanaged],
        ["run", "--rm", FAKE_IMAGE, "true"],
        ["volume", "ls"],
        ["image", "rm", "nothing:1"],
        # SIGHUP passes only to the compose gateway (io.waker.role=gateway), no other signal at all.
        ["kill", unmanaged],
        ["kill", "-s", "HUP", unmanaged],
        ["kill", "-s", "TERM", unmanaged],
    ):
        result = through(proxy, *args)
        assert result.returncode != 0 and "refused by the waker's Docker socket proxy" in result.stderr, args
    assert running(unmanaged)
    assert through(proxy, "ps").returncode == 0  # listing is one of the calls the waker makes


async def test_the_proxy_refuses_privileged_or_unlabelled_creates(proxy):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy))) as session:
        for spec in (
            {"Image": FAKE_IMAGE},
            {"Image": FAKE_IMAGE, "Labels": {"io.waker.managed": "true"}, "HostConfig": {"Privileged": True}},
            {
                "Image": FAKE_IMAGE,
                "Labels": {"io.waker.managed": "true"},
                "HostConfig": {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]},
            },
            {"Image": FAKE_IMAGE, "Labels": {"io.waker.managed": "true"}, "HostConfig": {"NetworkMode": "host"}},
        ):
            async with session.post(
                "http://docker/containers/create", data=json.dumps(spec), headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 403, spec
                assert "refused" in (await response.json())["message"]
    await asyncio.sleep(0)


async def test_the_proxy_connects_only_managed_containers_to_networks(proxy, unmanaged):
    network = f"waker-test-net-{os.getpid()}"
    docker("network", "create", network)
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy))) as session,
            session.post(
                f"http://docker/networks/{network}/connect",
                data=json.dumps({"Container": unmanaged}),
                headers={"Content-Type": "application/json"},
            ) as response,
        ):
            assert response.status == 403
            assert "not managed by the waker" in (await response.json())["message"]
        assert json.loads(docker("network", "inspect", network))[0]["Containers"] == {}
    finally:
        docker("network", "rm", network, check=False)
