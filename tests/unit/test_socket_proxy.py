import asyncio
import base64
import json
import os
import re
import signal
import socket
import stat
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.eventually import eventually_async
from waker.config.schema import load_config
from waker.docker.socket_proxy import (
    KILL,
    NETWORK_CONNECT,
    ON_CONTAINER,
    LatestConfig,
    SocketProxy,
    check,
    connected_container,
    pulled_image,
    run,
)
from waker.docker.spec import LABEL_MANAGED, LABEL_ROLE, ROLE_GATEWAY, container_spec
from waker.errors import ProxyRefused

CONFIG = (
    '[waker]\nname = "unit"\n[[model]]\nid = "model1"\nimage = "i"\nvolumes = ["/data:/models"]\n'
    '[[external]]\nname = "comfyui"\nlabel = "app=comfyui"\npolicy = "pause"\n'
    '[[external]]\nname = "notes"\ncontainer = "notebook"\n'
)
CONTAINERS = {
    "model1": {LABEL_MANAGED: "true"},
    "gateway1": {LABEL_ROLE: ROLE_GATEWAY},
    "stranger": {"x": "y"},
    "comfy": {"app": "comfyui"},  # [[external]] 'comfyui', policy pause
    "notebook": {},  # [[external]] 'notes' by its name, policy observe
}
Call = tuple[str, str, "CIMultiDictProxy[str]", bytes]


class FakeDocker:
    """The Docker engine behind the proxy: the containers of CONTAINERS (inspect answers their labels), an
    event stream the test feeds, and every other call answered with what it was. The proxy's own label
    lookups come without an API version, the client's calls with one: `forwarded` holds only the latter."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.events: asyncio.Queue[bytes] = asyncio.Queue()
        self.stream_ended = asyncio.Event()

    @property
    def forwarded(self) -> list[Call]:
        return [call for call in self.calls if call[1].startswith("/v1.41/")]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path_qs, request.headers, await request.read()))
        inspect = re.fullmatch(r"(?:/v1\.41)?/containers/([^/]+)/json", request.path)
        if request.method == "GET" and inspect:
            labels = CONTAINERS.get(inspect.group(1))
            if labels is None:
                return web.json_response({"message": f"No such container: {inspect.group(1)}"}, status=404)
            return web.json_response(
                {"Id": inspect.group(1), "Name": f"/{inspect.group(1)}", "Config": {"Labels": labels}}
            )
        if request.path == "/v1.41/events":
            return await self.stream(request)
        if request.path == "/v1.41/containers/json":
            listing = [{"Id": name, "Names": [f"/{name}"], "Labels": labels} for name, labels in CONTAINERS.items()]
            return web.json_response(listing)
        return web.json_response({"answered": f"{request.method} {request.path_qs}"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(await self.events.get())
        finally:
            self.stream_ended.set()


@pytest.fixture
async def docker(tmp_path):
    fake = FakeDocker()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    # Cancelled when the proxy drops its connection, as Docker stops an event stream nobody reads.
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "docker.sock")).start()
    yield fake
    await runner.cleanup()


def model_spec(path) -> dict[str, Any]:
    """The container the config at `path` gives model1: the one create the proxy lets through."""
    config = load_config(path)
    return container_spec(config.model("model1"), "unit")


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
async def proxy(tmp_path, docker, config_path):
    proxy = SocketProxy(tmp_path / "proxy.sock", tmp_path / "docker.sock", LatestConfig(config_path, ()), os.getuid())
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def client(proxy):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy.listen))) as session:
        yield session


async def call(session: aiohttp.ClientSession, method: str, target: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, f"http://docker{target}", **kwargs) as response:
        return response.status, await response.json()


def refused(reason: str) -> tuple[int, Any]:
    return 403, {"message": f"refused by the waker's Docker socket proxy: {reason}"}


@pytest.mark.parametrize(
    "method, target",
    [
        ("GET", "/v1.41/_ping"),
        ("GET", "/v1.41/events?filters=%7B%7D"),
        ("GET", "/v1.41/containers/json?all=1"),
        ("GET", "/v1.41/containers/abc123/json"),
        ("POST", "/v1.41/containers/create?name=x"),
        ("GET", "/v1.41/containers/abc/logs?tail=5"),
        ("GET", "/v1.41/containers/abc/stats?stream=0&one-shot=1"),
        ("POST", "/v1.41/containers/abc/start"),
        ("POST", "/v1.41/containers/abc/stop?t=5"),
        ("DELETE", "/v1.41/containers/abc?force=1"),
        ("GET", "/v1.41/images/waker-fake-vllm:test/json"),
        ("POST", "/v1.41/images/create?fromImage=x"),
        ("POST", "/v1.41/networks/egress/connect"),
        ("POST", "/v1.41/containers/gw/kill?signal=HUP"),
        ("POST", "/v1.41/containers/gw/kill?signal=SIGHUP"),
    ],
)
def test_the_calls_the_waker_makes_pass(method, target):
    check(method, target)


@pytest.mark.parametrize(
    "method, target",
    [
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v1.41/exec/abc/start"),
        ("GET", "/v1.41/volumes"),
        ("DELETE", "/v1.41/images/x"),
        ("POST", "/v1.41/build"),
        ("POST", "/v1.41/swarm/init"),
        ("GET", "/v1.41/secrets"),
        ("POST", "/v1.41/containers/abc/attach"),
        ("PUT", "/v1.41/containers/abc/archive"),
        ("GET", "/v1.41/containers/abc/archive?path=/"),
        ("POST", "/v1.41/networks/create"),
        ("POST", "/v1.41/networks/abc/disconnect"),
        ("DELETE", "/v1.41/networks/abc"),
    ],
)
def test_anything_else_is_refused(method, target):
    with pytest.raises(ProxyRefused, match="not a call the waker makes"):
        check(method, target)


@pytest.mark.parametrize(
    "target",
    [
        "/v1.41/containers/gw/kill",
        "/v1.41/containers/gw/kill?signal=KILL",
        "/v1.41/containers/gw/kill?signal=TERM",
        "/v1.41/containers/gw/kill?signal=9",
        "/v1.41/containers/gw/kill?signal=1",
        "/v1.41/containers/gw/kill?signal=hup",
        "/v1.41/containers/gw/kill?signal=HUP&signal=KILL",
        "/v1.41/containers/gw/kill?signal=HUP&x=1",
        "/v1.41/containers/gw/kill?signal=",
        "/v1.41/containers/gw/kill?signal=HUP%00",
    ],
)
def test_kill_is_refused_for_every_signal_but_hup(target):
    with pytest.raises(ProxyRefused, match="only signal=HUP"):
        check("POST", target)


def test_a_kill_names_its_container_for_the_gateway_check():
    """The proxy then asks Docker whether that container is labelled io.waker.role=gateway."""
    assert KILL.match("POST /v1.41/containers/abc123/kill?signal=HUP").group(1) == "abc123"
    assert KILL.match("POST /containers/abc123/kill?signal=HUP").group(1) == "abc123"
    assert ON_CONTAINER.match("POST /v1.41/containers/abc123/kill?signal=HUP") is None  # not a managed-only call


def test_container_calls_name_their_container_but_create_and_list_do_not():
    assert ON_CONTAINER.match("POST /v1.41/containers/abc/stop?t=1").group(1) == "abc"
    assert ON_CONTAINER.match("DELETE /v1.41/containers/abc?force=1").group(1) == "abc"
    assert ON_CONTAINER.match("POST /v1.41/containers/create?name=x") is None
    assert ON_CONTAINER.match("GET /v1.41/containers/json?all=1") is None


def test_network_connect_names_one_container_and_nothing_else():
    assert NETWORK_CONNECT.match("POST /v1.41/networks/egress/connect")
    assert connected_container(b'{"Container": "abc123"}') == "abc123"
    for body in (
        b"[]",
        b"nope",
        b'{"Container": "abc", "EndpointConfig": {"IPAMConfig": {}}}',
        b'{"Container": 1}',
        b'{"Container": "../x"}',
    ):
        with pytest.raises(ProxyRefused, match="network connect"):
            connected_container(body)


def test_a_pull_names_its_image_with_its_tag():
    assert pulled_image("fromImage=nvcr.io%2Fnvidia%2Fvllm&tag=25.10-py3") == "nvcr.io/nvidia/vllm:25.10-py3"
    assert pulled_image("fromImage=reg.io%2Fa%40sha256%3Aab&tag=") == "reg.io/a@sha256:ab"


@pytest.mark.parametrize(
    "query",
    [
        "fromSrc=-&repo=waker-gateway&tag=local",
        "fromSrc=http%3A%2F%2Fx%2Fimg.tar&repo=a",
        "fromImage=a&fromSrc=-",
        "fromImage=a&repo=b",
        "fromImage=a&changes=CMD%20sh",
        "fromImage=a&fromImage=b",
        "tag=1",
        "",
    ],
)
def test_an_import_or_anything_but_a_pull_is_refused(query):
    """An import (fromSrc) would replace a local tag, the gateway's own image say, with any tarball."""
    with pytest.raises(ProxyRefused, match="only a pull"):
        pulled_image(query)


async def test_a_pull_without_credentials_gets_the_hosts_docker_login(tmp_path, monkeypatch, docker, client):
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"reg.io": {"auth": base64.b64encode(b"me:pw").decode()}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    for image in ("reg.io%2Fa%2Fb", "other.io%2Fa%2Fb"):
        assert (await call(client, "POST", f"/v1.41/images/create?fromImage={image}&tag=1"))[0] == 200
    login, anonymous = (headers for _, _, headers, _ in docker.forwarded)
    assert json.loads(base64.urlsafe_b64decode(login["X-Registry-Auth"])) == {
        "username": "me",
        "password": "pw",
        "serveraddress": "reg.io",
    }
    assert "X-Registry-Auth" not in anonymous  # no login for that registry: anonymous


async def test_a_pull_that_brings_its_own_credentials_keeps_them(tmp_path, monkeypatch, docker, client):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"reg.io": {"auth": "bWU6cHc="}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    await call(client, "POST", "/v1.41/images/create?fromImage=reg.io%2Fa&tag=1", headers={"X-Registry-Auth": "mine"})
    assert docker.forwarded[0][2].getall("X-Registry-Auth") == ["mine"]


@pytest.mark.parametrize(
    "method, target",
    [
        ("POST", "/v1.41/containers/model1/start"),
        ("POST", "/v1.41/containers/model1/stop?t=5"),
        ("DELETE", "/v1.41/containers/model1?force=1"),
        ("GET", "/v1.41/containers/model1/logs?tail=5"),
        ("GET", "/v1.41/containers/model1/stats?stream=0&one-shot=1"),
        ("POST", "/v1.41/containers/gateway1/kill?signal=HUP"),
    ],
)
async def test_allowed_calls_reach_docker_and_its_answer_comes_back(docker, client, method, target):
    assert await call(client, method, target) == (200, {"answered": f"{method} {target}"})
    assert [(m, t) for m, t, _, _ in docker.forwarded] == [(method, target)]


async def test_a_managed_container_is_inspected_without_its_environment(docker, client):
    assert await call(client, "GET", "/v1.41/containers/model1/json") == (
        200,
        {"Id": "model1", "Name": "/model1", "Config": {"Labels": {LABEL_MANAGED: "true"}, "Env": []}},
    )


async def test_the_gateway_is_inspected_without_its_environment_too(docker, client):
    """The waker finds the gateway whose network namespace it shares by the hostname in its inspect."""
    assert await call(client, "GET", "/v1.41/containers/gateway1/json") == (
        200,
        {"Id": "gateway1", "Name": "/gateway1", "Config": {"Labels": {LABEL_ROLE: ROLE_GATEWAY}, "Env": []}},
    )


async def test_a_listing_shows_the_managed_containers_and_the_gateway_only(docker, client):
    status, listing = await call(client, "GET", "/v1.41/containers/json?all=1")
    assert status == 200 and [entry["Id"] for entry in listing] == ["model1", "gateway1", "comfy", "notebook"]


@pytest.mark.parametrize(
    "method, target, reason",
    [
        ("POST", "/v1.41/containers/stranger/stop", "container stranger is not managed by the waker"),
        ("DELETE", "/v1.41/containers/stranger", "container stranger is not managed by the waker"),
        ("GET", "/v1.41/containers/stranger/logs", "container stranger is not managed by the waker"),
        ("GET", "/v1.41/containers/stranger/stats", "container stranger is not managed by the waker"),
        ("GET", "/v1.41/containers/gateway1/stats", "container gateway1 is not managed by the waker"),
        ("GET", "/v1.41/containers/stranger/json", "container stranger is not managed by the waker"),
        ("POST", "/v1.41/containers/gateway1/start", "container gateway1 is not managed by the waker"),
        ("POST", "/v1.41/containers/0123456789abcdef/stop", "container 0123456789ab is not managed by the waker"),
        (
            "POST",
            "/v1.41/containers/model1/kill?signal=HUP",
            "container model1 is not the gateway (io.waker.role=gateway): no signal may be sent to it",
        ),
        (
            "POST",
            "/v1.41/containers/gateway1/kill?signal=KILL",
            "container kill: only signal=HUP (an nginx reload) is allowed, and only to the gateway",
        ),
        ("POST", "/v1.41/containers/model1/exec", "POST /v1.41/containers/model1/exec is not a call the waker makes"),
    ],
)
async def test_a_refused_call_never_reaches_docker(docker, client, method, target, reason):
    assert await call(client, method, target) == refused(reason)
    assert docker.forwarded == []


async def test_network_connect_is_allowed_for_a_managed_container_only(docker, client):
    target = "/v1.41/networks/egress/connect"
    assert (await call(client, "POST", target, json={"Container": "model1"}))[0] == 200
    assert await call(client, "POST", target, json={"Container": "stranger"}) == refused(
        "container stranger is not managed by the waker"
    )
    assert await call(client, "POST", target, json={"Container": "model1", "EndpointConfig": {}}) == refused(
        'network connect: only {"Container": ID} is accepted'
    )
    assert [(t, json.loads(body)) for _, t, _, body in docker.forwarded] == [(target, {"Container": "model1"})]


async def test_a_create_reaches_docker_as_the_proxy_writes_it_and_only_the_configs(docker, client, config_path):
    target = "/v1.41/containers/create?name=unit-model1"
    spec = model_spec(config_path)
    # The model's own container, its keys written with unicode escapes: Docker gets the proxy's copy.
    escaped = json.dumps(spec).replace('"HostConfig"', '"\\u0048ostConfig"').encode()
    assert (await call(client, "POST", target, data=escaped))[0] == 200
    privileged = {**spec, "HostConfig": {**spec["HostConfig"], "Privileged": True}}
    assert (await call(client, "POST", target, json=privileged))[0] == 403
    assert await call(client, "POST", target, data=b"{not json") == refused("container create: the body is not JSON")
    ((_, sent_target, headers, body),) = docker.forwarded
    assert sent_target == target and json.loads(body) == spec and b"\\u0048" not in body
    assert headers["Content-Type"] == "application/json"


async def test_a_create_follows_the_config_file_and_keeps_the_last_good_one(docker, client, config_path):
    target = "/v1.41/containers/create?name=unit-model1"
    before = model_spec(config_path)
    config_path.write_text(CONFIG.replace('"/data:/models"', '"/data:/models:ro"'))
    after = model_spec(config_path)
    assert (await call(client, "POST", target, json=before))[0] == 403  # the edit counts at once
    assert (await call(client, "POST", target, json=after))[0] == 200
    config_path.write_text("[[model]]\nid = ")  # broken: the proxy keeps what it had, as the waker does
    assert (await call(client, "POST", target, json=after))[0] == 200


async def test_without_a_readable_config_no_create_passes(tmp_path, docker):
    proxy = SocketProxy(tmp_path / "p.sock", tmp_path / "docker.sock", LatestConfig(tmp_path / "none.toml", ()))
    await proxy.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy.listen))) as session:
            status, body = await call(session, "POST", "/v1.41/containers/create?name=unit-model1", json={})
        assert status == 403 and "the proxy cannot read the config" in body["message"]
        assert "none.toml" in body["message"] and docker.forwarded == []
    finally:
        await proxy.close()


async def test_several_calls_on_one_connection_each_reach_docker(docker, client):
    """Clients keep their connection to the Docker socket alive: every request on it is checked and sent."""
    for target in ("/v1.41/_ping", "/v1.41/containers/model1/json", "/v1.41/version"):
        assert (await call(client, "GET", target))[0] == 200
    assert [t for _, t, _, _ in docker.forwarded] == ["/v1.41/_ping", "/v1.41/containers/model1/json", "/v1.41/version"]


async def test_an_event_stream_comes_back_as_docker_sends_it_and_ends_with_the_client(docker, client):
    async with client.get("http://docker/v1.41/events") as response:
        await docker.events.put(b'{"status":"start"}\n')
        assert await asyncio.wait_for(response.content.readline(), 10) == b'{"status":"start"}\n'
        await docker.events.put(b'{"status":"die"}\n')
        assert await asyncio.wait_for(response.content.readline(), 10) == b'{"status":"die"}\n'
    await client.close()
    # The client left: the proxy closes its connection to Docker, and Docker ends the stream.
    await asyncio.wait_for(docker.stream_ended.wait(), 10)


async def exchange(proxy: SocketProxy, request: bytes) -> bytes:
    """Whatever the proxy answers to raw bytes, until it closes or goes quiet for 3 s."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(proxy.listen))
        await loop.sock_sendall(sock, request)
        answer = b""
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 3):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


PRIVILEGED = b'{"Image": "i", "HostConfig": {"Privileged": true}}'
CREATE = (
    b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(PRIVILEGED)}\r\n\r\n".encode()
    + PRIVILEGED
)


@pytest.mark.parametrize(
    "request_bytes",
    [
        # security-probe.md B: a folded header line, which the old proxy took for a header of its own
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nX-A: b\r\n Content-Length: "
        + str(len(CREATE)).encode()
        + b"\r\n\r\n"
        + CREATE,
        # ...and a bare LF, which Docker takes for the end of a line
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\nContent-Length: " + str(len(CREATE)).encode() + b"\r\n\r\n" + CREATE,
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nContent-Length: "
        + str(len(CREATE)).encode()
        + b"\r\n\r\n"
        + CREATE,
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        + CREATE,
        b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nX-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\n" + CREATE,
        CREATE.replace(b"Content-Length: ", b"Content-Length: 4194305\r\nX: "),
    ],
    ids=["obs-fold", "bare-lf", "two-lengths", "te-and-cl", "huge-head", "huge-body"],
)
async def test_smuggled_requests_never_reach_docker(docker, proxy, client, request_bytes):
    """Docker gets only requests the proxy wrote: what a client hides in a body, a folded line or a
    length the two parsers read apart is refused (aiohttp's parser answers 400 and closes; the answer
    may be lost in the reset that unread bytes cause) or read as the proxy reads it, never forwarded."""
    await exchange(proxy, request_bytes)
    assert (await call(client, "GET", "/v1.41/_ping"))[0] == 200  # and the proxy serves on
    assert all(method != "POST" for method, _, _, _ in docker.forwarded), docker.forwarded
    assert all(body == b"" for _, _, _, body in docker.forwarded)


async def test_a_chunked_body_is_read_whole_and_checked(docker, client, config_path):
    async def chunks():
        yield json.dumps(model_spec(config_path)).encode()

    assert (await call(client, "POST", "/v1.41/containers/create?name=unit-model1", data=chunks()))[0] == 200
    assert json.loads(docker.forwarded[0][3]) == model_spec(config_path)


async def test_without_docker_a_client_gets_a_json_error_naming_the_socket(tmp_path, config_path):
    proxy = SocketProxy(tmp_path / "proxy.sock", tmp_path / "no-docker.sock", LatestConfig(config_path, ()))
    await proxy.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(proxy.listen))) as session:
            status, body = await call(session, "GET", "/v1.41/_ping")
        assert status == 502 and "no-docker.sock" in body["message"] and "does not answer" in body["message"]
    finally:
        await proxy.close()


async def test_the_socket_is_for_its_owner_and_group_only(proxy):
    mode = proxy.listen.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_uid == os.getuid()


async def test_the_proxy_runs_until_sigterm(tmp_path, docker, config_path):
    loop = asyncio.get_running_loop()
    default = signal.getsignal(signal.SIGTERM)
    running = asyncio.create_task(run(tmp_path / "run.sock", tmp_path / "docker.sock", LatestConfig(config_path, ())))

    async def handled() -> bool:
        return signal.getsignal(signal.SIGTERM) != default

    try:
        # Until run() has its handler, SIGTERM would end the test run itself.
        await eventually_async(handled, 10, "run() handling SIGTERM")
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(tmp_path / "run.sock"))) as session:
            assert (await call(session, "GET", "/v1.41/_ping"))[0] == 200
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(running, 10) == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_unix_connection(str(tmp_path / "run.sock"))
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):  # run() leaves them on the loop, as a process exits next
            loop.remove_signal_handler(number)


async def test_a_managed_container_whose_name_begins_with_create_is_not_taken_for_a_create(docker, client, monkeypatch):
    """Model containers are named after the stack ([waker] name), which may well begin with "create"."""
    monkeypatch.setitem(CONTAINERS, "create-alpha", {LABEL_MANAGED: "true"})
    target = "/v1.41/containers/create-alpha/start"
    assert await call(client, "POST", target) == (200, {"answered": f"POST {target}"})
    assert [t for _, t, _, _ in docker.forwarded] == [target]


@pytest.mark.parametrize(
    "method, target",
    [
        ("DELETE", "/v1.41/containers/json?force=1"),
        ("DELETE", "/v1.41/containers/create"),
        ("POST", "/v1.41/containers/create/stop"),
        ("POST", "/v1.41/containers/json/start"),
        ("GET", "/v1.41/containers/create/logs?follow=1"),
    ],
)
async def test_containers_named_json_or_create_are_checked_like_any_other(docker, client, monkeypatch, method, target):
    """Docker routes these to the containers named "json" and "create", as to any other name."""
    monkeypatch.setitem(CONTAINERS, "json", {})
    monkeypatch.setitem(CONTAINERS, "create", {})
    name = target.split("/")[3].split("?")[0]
    assert await call(client, method, target) == refused(f"container {name} is not managed by the waker")
    assert docker.forwarded == []


@pytest.mark.parametrize(
    ("method", "target", "answer"),
    [
        ("POST", "/v1.41/containers/comfy/pause", None),
        ("POST", "/v1.41/containers/comfy/unpause", None),
        ("GET", "/v1.41/containers/comfy/stats?stream=0&one-shot=1", None),
        ("GET", "/v1.41/containers/notebook/stats?stream=0&one-shot=1", None),  # observe: its memory is shown
        ("POST", "/v1.41/containers/notebook/pause", "container notebook is not an [[external]] workload's"),
        ("POST", "/v1.41/containers/stranger/pause", "container stranger is not an [[external]] workload's"),
        ("POST", "/v1.41/containers/model1/unpause", "container model1 is not an [[external]] workload's"),
        ("GET", "/v1.41/containers/stranger/stats", "container stranger is not managed by the waker"),
    ],
)
async def test_external_workloads_are_paused_only_by_policy_and_their_memory_read(
    docker, client, method, target, answer
):
    status, body = await call(client, method, target)
    if answer is None:
        assert (status, body) == (200, {"answered": f"{method} {target}"})
    else:
        assert status == 403 and answer in body["message"] and not docker.forwarded, body


async def test_without_a_config_it_can_read_the_listing_still_shows_the_wakers_own_containers(
    docker, client, config_path
):
    config_path.unlink()  # before the proxy ever read it: no [[external]] known
    status, listing = await call(client, "GET", "/v1.41/containers/json?all=1")
    assert status == 200 and [entry["Id"] for entry in listing] == ["model1", "gateway1"]
    status, body = await call(client, "POST", "/v1.41/containers/comfy/pause")
    assert status == 403 and "is not an [[external]] workload's" in body["message"]
