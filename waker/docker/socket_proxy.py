"""A filtering proxy for the Docker socket: the waker gets a socket that allows only the calls it
makes, on containers it manages, and nothing that could take over the host.

    waker socket-proxy --listen /run/waker/docker.sock [--docker /var/run/docker.sock] [--owner UID]

One call reaches a container the waker does not manage: SIGHUP (an nginx reload, nothing else) to
the compose gateway, the container labelled io.waker.role=gateway. Image pulls get the registry
credentials `docker login` left on the host, read here, so that the waker never holds them.

Each request is read whole (line, headers, body), checked, then forwarded; answers stream back
untouched (events and log follows included). A refused call gets 403 with a JSON message and the
connection is closed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import structlog

from waker.docker import registry_auth
from waker.docker.spec import LABEL_MANAGED, LABEL_ROLE, ROLE_GATEWAY

log = structlog.get_logger("waker.docker.socket_proxy")

_VERSION = r"(?:/v[0-9.]+)?"
_ID = r"[A-Za-z0-9_.-]+"
ALLOWED = [
    (method, re.compile(f"^{_VERSION}{path}(?:\\?.*)?$"))
    for method, path in (
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", "/version"),
        ("GET", "/events"),
        ("GET", "/containers/json"),
        ("GET", f"/containers/{_ID}/json"),
        ("GET", f"/containers/{_ID}/logs"),
        ("GET", "/images/[^?]+/json"),
        ("POST", "/images/create"),
        ("POST", "/containers/create"),
        ("POST", f"/containers/{_ID}/start"),
        ("POST", f"/containers/{_ID}/stop"),
        ("DELETE", f"/containers/{_ID}"),
        ("POST", f"/networks/{_ID}/connect"),
    )
]
# Calls that change or read out a container: allowed on managed containers only. Only the two calls on the
# collection are not on a container: Docker routes DELETE /containers/json or POST /containers/create/start
# to the containers named "json" and "create".
ON_CONTAINER = re.compile(
    f"^(?!GET {_VERSION}/containers/json(?:\\?|$))(?!POST {_VERSION}/containers/create(?:\\?|$))"
    f"(?:POST|DELETE|GET) {_VERSION}/containers/({_ID})(?:/(start|stop|logs))?(?:\\?.*)?$"
)
NETWORK_CONNECT = re.compile(f"^POST {_VERSION}/networks/{_ID}/connect(?:\\?.*)?$")
# The gateway's reload: the query must be exactly one SIGHUP (checked in `check`).
KILL = re.compile(f"^POST {_VERSION}/containers/({_ID})/kill(?:\\?(.*))?$")
RELOAD_SIGNALS = ("HUP", "SIGHUP")
MAX_HEAD, MAX_BODY = 64 * 1024, 4 * 1024 * 1024


class Refused(Exception):
    pass


def connected_container(body: bytes) -> str:
    """The container a network connect call names; only the container, no endpoint settings."""
    try:
        request = json.loads(body)
    except ValueError:
        raise Refused("network connect: the body is not JSON") from None
    if not isinstance(request, dict) or set(request) != {"Container"} or not isinstance(request["Container"], str):
        raise Refused('network connect: only {"Container": ID} is accepted')
    if not re.fullmatch(_ID, request["Container"]):
        raise Refused("network connect: not a container id")
    return request["Container"]


def check(method: str, target: str, body: bytes) -> None:
    """Raises Refused unless the call is one the waker makes, with a body it would send."""
    if kill := KILL.match(f"{method} {target}"):
        query = parse_qsl(kill.group(2) or "", keep_blank_values=True)
        if query not in [[("signal", name)] for name in RELOAD_SIGNALS]:
            raise Refused("container kill: only signal=HUP (an nginx reload) is allowed, and only to the gateway")
        return
    if not any(method == m and pattern.match(target) for m, pattern in ALLOWED):
        raise Refused(f"{method} {target.split('?')[0]} is not a call the waker makes")
    if method == "POST" and re.match(f"^{_VERSION}/containers/create(?:\\?|$)", target):
        _check_create(body)


def _check_create(body: bytes) -> None:
    try:
        spec: dict[str, Any] = json.loads(body)
    except ValueError:
        raise Refused("container create: the body is not JSON") from None
    spec_labels = spec.get("Labels") or {}
    if spec_labels.get(LABEL_MANAGED) != "true":
        raise Refused(f"container create: only containers labelled {LABEL_MANAGED}=true may be created")
    if LABEL_ROLE in spec_labels:
        # Only the operator names the gateway: the waker cannot make itself a container it may signal.
        raise Refused(f"container create: the {LABEL_ROLE} label is the operator's, not the waker's")
    host = spec.get("HostConfig") or {}
    if host.get("Privileged") or host.get("CapAdd") or host.get("Devices"):
        raise Refused("container create: privileged containers, added capabilities and devices are refused")
    for key in ("NetworkMode", "PidMode", "IpcMode", "UsernsMode", "UTSMode"):
        if str(host.get(key, "")).startswith(("host", "container:")):
            raise Refused(f"container create: {key}={host[key]} is refused (it shares another namespace)")
    for bind in host.get("Binds") or []:
        if bind.split(":", 1)[0] in ("/", "/var/run/docker.sock", "/run/docker.sock"):
            raise Refused(f"container create: mounting {bind.split(':', 1)[0]} is refused")


IMAGE_PULL = re.compile(f"^POST {_VERSION}/images/create\\?(.*)$")


def pulled_image(query: str) -> str:
    """The image a pull call names, as `fromImage[:tag]` (its registry decides the credentials)."""
    params = dict(parse_qsl(query))
    image, tag = params.get("fromImage", ""), params.get("tag", "")
    return f"{image}:{tag}" if tag and "@" not in image else image


def with_registry_auth(head: bytes, auth: dict[str, str]) -> bytes:
    """The request head with Docker's X-Registry-Auth header (base64url of the JSON credentials)."""
    header = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
    return head[:-2] + f"X-Registry-Auth: {header}\r\n\r\n".encode()


async def labels(docker: Path, container: str) -> dict[str, str] | None:
    """The container's labels (asked of Docker on a connection of its own), None if there is no such container."""
    reader, writer = await asyncio.open_unix_connection(str(docker))
    try:
        writer.write(f"GET /containers/{container}/json HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        return None
    return (json.loads(body).get("Config") or {}).get("Labels") or {}


async def managed(docker: Path, container: str) -> bool:
    """Whether the container carries the managed label."""
    return ((await labels(docker, container)) or {}).get(LABEL_MANAGED) == "true"


async def gateway(docker: Path, container: str) -> bool:
    """Whether the container is the compose gateway (the label set in compose.yaml)."""
    return ((await labels(docker, container)) or {}).get(LABEL_ROLE) == ROLE_GATEWAY


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, str, str, bytes] | None:
    """(head, method, target, body) of the next request, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise Refused("request head too large") from None
    if len(head) > MAX_HEAD:
        raise Refused("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise Refused("chunked request bodies are not accepted")
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_BODY:
        raise Refused("request body too large")
    body = await reader.readexactly(length) if length else b""
    return head, method, target, body


async def relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, observe: Callable[[bytes], None] | None = None
) -> None:
    """Copies bytes from reader to writer until either side ends; `observe` sees each chunk. Cancelled,
    it closes the writer and stays cancelled."""
    try:
        while data := await reader.read(65536):
            if observe is not None:
                observe(data)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class SocketProxy:
    def __init__(self, listen: Path, docker: Path, owner: int | None = None) -> None:
        self.listen, self.docker, self.owner = listen, docker, owner
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.listen.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.listen), limit=MAX_HEAD)
        os.chmod(self.listen, 0o660)
        if self.owner is not None:
            os.chown(self.listen, self.owner, -1)
        log.info("socket_proxy_listening", listen=str(self.listen), docker=str(self.docker))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _check_managed(self, container: str) -> None:
        if not await managed(self.docker, container):
            raise Refused(f"container {container[:12]} is not managed by the waker")

    async def _check_gateway(self, container: str) -> None:
        if not await gateway(self.docker, container):
            raise Refused(
                f"container {container[:12]} is not the gateway ({LABEL_ROLE}={ROLE_GATEWAY}): "
                "no signal may be sent to it"
            )

    async def _add_credentials(self, head: bytes, image: str) -> bytes:
        """The proxy, not the waker, holds what `docker login` wrote on the host (compose mounts it
        here): a pull that comes without credentials gets them, and the waker never sees them."""
        auth = await asyncio.to_thread(registry_auth.credentials, image)
        return with_registry_auth(head, auth) if auth else head

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        docker_writer = None
        responses = None
        try:
            docker_reader, docker_writer = await asyncio.open_unix_connection(str(self.docker))
            responses = asyncio.create_task(relay(docker_reader, client_writer))
            while (request := await _read_request(client_reader)) is not None:
                head, method, target, body = request
                check(method, target, body)
                call = f"{method} {target}"
                target_container = ON_CONTAINER.match(call)
                if kill := KILL.match(call):
                    await self._check_gateway(kill.group(1))
                elif target_container and not (method == "GET" and target_container.group(2) is None):
                    await self._check_managed(target_container.group(1))
                elif NETWORK_CONNECT.match(call):
                    await self._check_managed(connected_container(body))
                elif (pull := IMAGE_PULL.match(call)) and b"\r\nx-registry-auth:" not in head.lower():
                    head = await self._add_credentials(head, pulled_image(pull.group(1)))
                docker_writer.write(head + body)
                await docker_writer.drain()
        except Refused as exc:
            log.warning("docker_call_refused", reason=str(exc))
            body = json.dumps({"message": f"refused by the waker's Docker socket proxy: {exc}"}).encode()
            # No await until `finally` cancels the relay of Docker's answers: nothing comes after this.
            client_writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if responses is not None:
                responses.cancel()
                await asyncio.gather(responses, return_exceptions=True)
            if docker_writer is not None:
                docker_writer.close()
            client_writer.close()


async def run(listen: Path, docker: Path, owner: int | None = None) -> int:
    proxy = SocketProxy(listen, docker, owner)
    await proxy.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()
    return 0
