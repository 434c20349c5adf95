"""Least privilege towards Docker: the waker never acts on containers it did not create, and
through the filtering socket proxy it cannot do more than the calls it makes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time

import aiohttp
import pytest

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model, start_socket_proxy
from waker.config.schema import load_config
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_ROLE, container_spec
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
    process = start_socket_proxy(sock, tmp_path / "stack0" / "models.toml", stderr=subprocess.DEVNULL)
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


PROBE_CONFIG = f"""
[waker]
name = "probe{os.getpid()}"
[[model]]
id = "alpha"
image = "{FAKE_IMAGE}"
command = ["serve", "x", "--load-delay", "0"]
volumes = ["/srv/waker-probe-models:/models:ro"]
"""
MODEL = {"io.waker.managed": "true", "io.waker.stack": f"probe{os.getpid()}", "io.waker.model": "alpha"}
# The create bodies of security-probe.md (#11) that the old filter let through, each confirmed there
# with `docker inspect`: key case, repeated keys, mounts of the host and unconfined modes.
PROBE_BODIES = [
    {"Image": FAKE_IMAGE, "Labels": MODEL, "hostconfig": {"privileged": True, "pidmode": "host", "capadd": ["ALL"]}},
    f'{{"Image": "{FAKE_IMAGE}", "Labels": {json.dumps(MODEL)}, '
    '"HostConfig": {"Privileged": false, "privileged": true}}',
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}},
    {
        "Image": FAKE_IMAGE,
        "Labels": MODEL,
        "HostConfig": {
            "Mounts": [
                {
                    "Type": "volume",
                    "Target": "/h",
                    "VolumeOptions": {"DriverConfig": {"Options": {"o": "bind", "device": "/", "type": "none"}}},
                }
            ]
        },
    },
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"Binds": ["//:/host"]}},
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"Binds": ["/etc:/host/etc"]}},
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"Binds": ["/var/run:/r"]}},
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"DeviceCgroupRules": ["b *:* rwm"]}},
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}},
    {"Image": FAKE_IMAGE, "Labels": MODEL, "HostConfig": {"CgroupnsMode": "host"}},
    f'{{"Image": "{FAKE_IMAGE}", "Labels": {json.dumps(MODEL)}, '
    f'"labels": {json.dumps({**MODEL, LABEL_ROLE: "gateway"})}}}',
    {"Image": FAKE_IMAGE},
]


def made_by_probe() -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=io.waker.stack=probe{os.getpid()}").split()


@pytest.fixture
def probe_config(tmp_path):
    """The config the proxy reads, where the test's stack would have it."""
    path = tmp_path / "stack0" / "models.toml"
    path.parent.mkdir()
    path.write_text(PROBE_CONFIG)
    yield path
    for container in made_by_probe():
        docker("rm", "-f", container, check=False)


async def test_every_probe_create_is_refused_and_the_configs_container_is_what_docker_makes(probe_config, proxy):
    config = load_config(probe_config)
    spec = container_spec(config.model("alpha"), config.waker.name)
    name = f"probe{os.getpid()}-alpha"
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy))) as session:
        for body in PROBE_BODIES:
            data = body if isinstance(body, str) else json.dumps(body)
            async with session.post(
                f"http://docker/v1.41/containers/create?name={name}",
                data=data,
                headers={"Content-Type": "application/json"},
            ) as response:
                assert response.status == 403, data
                assert "refused by the waker's Docker socket proxy" in (await response.json())["message"]
        assert made_by_probe() == []
        async with session.post(
            f"http://docker/v1.41/containers/create?name={name}",
            data=json.dumps(spec),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 201, await response.text()
    (made,) = json.loads(docker("inspect", name))
    host = made["HostConfig"]
    assert not host["Privileged"] and not host["CapAdd"] and host["PidMode"] == "" and not host["SecurityOpt"]
    assert host["Binds"] == ["/srv/waker-probe-models:/models:ro"] and not host.get("Mounts")
    assert [m["Source"] for m in made["Mounts"]] == ["/srv/waker-probe-models"]
    assert made["Config"]["Labels"] == spec["Labels"]


async def test_smuggled_creates_make_no_container(proxy):
    """security-probe.md B: a folded header line and a bare LF each carried a privileged, unlabelled
    create past the old proxy."""
    name = f"waker-smuggled-{os.getpid()}"
    create = json.dumps({"Image": FAKE_IMAGE, "HostConfig": {"Privileged": True}}).encode()
    hidden = (
        f"POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(create)}\r\n\r\n"
    ).encode() + create
    for head in (
        f"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nX-A: b\r\n Content-Length: {len(hidden)}\r\n\r\n",
        f"GET /v1.41/_ping HTTP/1.1\r\nHost: d\nContent-Length: {len(hidden)}\r\n\r\n",
    ):
        reader, writer = await asyncio.open_unix_connection(str(proxy))
        writer.write(head.encode() + hidden)
        await writer.drain()
        with contextlib.suppress(ConnectionResetError):  # the proxy refused the head, closed with data unread
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert docker("ps", "-aq", "--filter", f"name={name}").split() == []


async def test_an_image_import_is_refused_and_the_local_tag_kept(proxy):
    """security-probe.md C: `fromSrc=-` replaced a local tag with the caller's tarball."""
    before = docker("image", "inspect", "--format", "{{.Id}}", FAKE_IMAGE).strip()
    repo, tag = FAKE_IMAGE.split(":")
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy))) as session,
        session.post(f"http://docker/v1.41/images/create?fromSrc=-&repo={repo}&tag={tag}", data=b"x" * 1024) as answer,
    ):
        assert answer.status == 403 and "not an import" in (await answer.json())["message"]
    assert docker("image", "inspect", "--format", "{{.Id}}", FAKE_IMAGE).strip() == before


def test_a_container_the_waker_does_not_manage_is_neither_listed_nor_inspected(proxy, unmanaged):
    """security-probe.md #14: any container's inspect, its environment included, was readable."""
    result = through(proxy, "inspect", unmanaged)
    assert result.returncode != 0 and "not managed by the waker" in result.stderr
    assert unmanaged[:12] not in through(proxy, "ps", "-a").stdout


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
