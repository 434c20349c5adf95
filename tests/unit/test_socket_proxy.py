import asyncio
import base64
import json
import socket

import pytest

from waker.docker.socket_proxy import (
    KILL,
    NETWORK_CONNECT,
    ON_CONTAINER,
    Refused,
    SocketProxy,
    check,
    connected_container,
    pulled_image,
    relay,
)

MANAGED = {"Image": "i", "Labels": {"io.waker.managed": "true"}, "HostConfig": {"Binds": ["/data:/models"]}}


@pytest.mark.parametrize(
    "method, target",
    [
        ("GET", "/v1.41/_ping"),
        ("GET", "/v1.41/events?filters=%7B%7D"),
        ("GET", "/v1.41/containers/json?all=1"),
        ("GET", "/v1.41/containers/abc123/json"),
        ("GET", "/v1.41/containers/abc/logs?tail=5"),
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
    check(method, target, b"")


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
    with pytest.raises(Refused, match="not a call the waker makes"):
        check(method, target, b"")


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
    with pytest.raises(Refused, match="only signal=HUP"):
        check("POST", target, b"")


def test_a_kill_names_its_container_for_the_gateway_check():
    """The proxy then asks Docker whether that container is labelled io.waker.role=gateway."""
    assert KILL.match("POST /v1.41/containers/abc123/kill?signal=HUP").group(1) == "abc123"
    assert KILL.match("POST /containers/abc123/kill?signal=HUP").group(1) == "abc123"
    assert ON_CONTAINER.match("POST /v1.41/containers/abc123/kill?signal=HUP") is None  # not a managed-only call


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"Labels": {}}, "labelled"),
        ({"HostConfig": {"Privileged": True}}, "privileged"),
        ({"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}, "capabilities"),
        ({"HostConfig": {"PidMode": "host"}}, "PidMode"),
        ({"HostConfig": {"NetworkMode": "host"}}, "NetworkMode"),
        ({"HostConfig": {"Binds": ["/:/host"]}}, "mounting /"),
        ({"HostConfig": {"Binds": ["/var/run/docker.sock:/s"]}}, "docker.sock"),
        ({"HostConfig": {"NetworkMode": "container:gateway"}}, "shares another namespace"),
        ({"HostConfig": {"PidMode": "container:abc"}}, "shares another namespace"),
        ({"Labels": {"io.waker.managed": "true", "io.waker.role": "gateway"}}, "operator's"),
    ],
)
def test_dangerous_creates_are_refused(change, reason):
    check("POST", "/v1.41/containers/create?name=x", json.dumps(MANAGED).encode())
    with pytest.raises(Refused, match=reason):
        check("POST", "/v1.41/containers/create?name=x", json.dumps({**MANAGED, **change}).encode())


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
        with pytest.raises(Refused, match="network connect"):
            connected_container(body)


def test_a_pull_names_its_image_with_its_tag():
    assert pulled_image("fromImage=nvcr.io%2Fnvidia%2Fvllm&tag=25.10-py3") == "nvcr.io/nvidia/vllm:25.10-py3"
    assert pulled_image("fromImage=reg.io%2Fa%40sha256%3Aab&tag=") == "reg.io/a@sha256:ab"


async def test_a_pull_without_credentials_gets_the_hosts_docker_login(tmp_path, monkeypatch):
    """Through a real proxy to a stand-in Docker socket that records what reaches it."""
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"reg.io": {"auth": base64.b64encode(b"me:pw").decode()}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    seen: list[bytes] = []

    async def docker(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_unix_server(docker, path=str(tmp_path / "docker.sock"))
    proxy = SocketProxy(tmp_path / "proxy.sock", tmp_path / "docker.sock")
    await proxy.start()
    try:
        for image in ("reg.io%2Fa%2Fb", "other.io%2Fa%2Fb"):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "proxy.sock"))
            writer.write(f"POST /v1.41/images/create?fromImage={image}&tag=1 HTTP/1.1\r\nHost: d\r\n\r\n".encode())
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()
    finally:
        await proxy.close()
        upstream.close()
    header = [line for line in seen[0].split(b"\r\n") if line.lower().startswith(b"x-registry-auth:")]
    assert json.loads(base64.urlsafe_b64decode(header[0].split(b":", 1)[1].strip())) == {
        "username": "me",
        "password": "pw",
        "serveraddress": "reg.io",
    }
    assert b"x-registry-auth" not in seen[1].lower()  # no login for that registry: anonymous


async def test_a_cancelled_relay_closes_its_writer_and_stays_cancelled():
    near, far = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=near)
    far_reader, _ = await asyncio.open_connection(sock=far)
    copying = asyncio.create_task(relay(asyncio.StreamReader(), writer))
    await asyncio.sleep(0)  # the relay waits on its (never fed) reader
    copying.cancel()
    await asyncio.gather(copying, return_exceptions=True)
    assert copying.cancelled()
    assert await asyncio.wait_for(far_reader.read(), 5) == b""  # the writer's end closed
