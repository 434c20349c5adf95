"""A Docker engine in memory, speaking the Engine API over HTTP (aiohttp on loopback), and a model server
to go with it: what the Docker adapters (waker/docker/, waker/nginx/container.py) are tested against
without a real engine.

The fake answers the endpoints aiodocker calls for the waker, as Docker answers them: label filters on
listings, 404/409 with Docker's own JSON errors, logs in Docker's multiplexed framing (the containers
have no TTY), a pull's progress as a stream of JSON lines with a failure inside the 200 stream, and an
events stream of JSON lines that it writes to as containers start and die. Every call is recorded
(`calls`, and `journal` shared by several engines), so a test asserts what an adapter did and in which
order. Faults are queued by the test: an error answer (`refuse`) or an engine dying mid-answer (`cut`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.eventually import eventually_async
from waker.docker.spec import LABEL_MANAGED, LABEL_MODEL, LABEL_SPEC, LABEL_STACK

API = "/v1.43"
STACK = "unit"  # the stack name the tests' runtimes and launchers use
STDOUT, STDERR = 1, 2
_END = None  # what a stream's queue gets when the stream is over
_CUT = b""  # what an events stream's queue gets when the engine goes away mid-stream


@dataclass(frozen=True)
class Call:
    engine: str
    action: str  # "create", "start", "stop", "kill", "remove", "inspect", "list", "logs", "pull", ...
    target: str  # the container's name (its id when the engine has no such container), image, network
    query: dict[str, str]
    body: Any = None
    auth: dict[str, Any] | None = None  # a pull's X-Registry-Auth, decoded


@dataclass
class Container:
    id: str
    name: str
    config: dict[str, Any]  # the create call's body
    image_id: str
    hostname: str
    running: bool = False
    exit_code: int = 0
    error: str = ""
    starts: int = 0
    logs: list[tuple[float, int, bytes]] = field(default_factory=list)  # (unix time, stream, line)
    followers: list[asyncio.Queue[bytes | None]] = field(default_factory=list)
    memory_stats: dict[str, Any] = field(default_factory=dict)  # what its stats say of its memory
    paused: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    @property
    def status(self) -> str:
        if self.running:
            return "paused" if self.paused else "running"
        return "created" if not self.starts else "exited"


@dataclass
class Pull:
    """What the registry holds for one reference, and how its pull goes."""

    image_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # progress, streamed first
    error: str = ""  # the registry refuses it after the messages (inside the 200 stream, as Docker does)
    hold: asyncio.Event | None = None  # the pull waits here after its messages: one that takes long


@dataclass
class _Fault:
    action: str
    target: str | None
    status: int
    message: str
    cut: bool


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Waits for `condition()` to hold (polled, with a deadline): what a test waits on instead of a sleep."""

    async def holds() -> object:
        return condition()

    await eventually_async(holds, timeout, what)


def refusing_port() -> socket.socket:
    """A loopback port bound but not listening, held by the returned socket: connections to it are
    refused for as long as the test keeps the socket open (no other process can take the port)."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    return held


def frame(stream: int, data: bytes) -> bytes:
    """One chunk of Docker's multiplexed stream: stream type, three zero bytes, big-endian length."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def _error(status: int, message: str) -> web.Response:
    # aiodocker reads Docker's {"message": ...} only under exactly this content type, as Docker sends it.
    return web.Response(
        status=status, body=json.dumps({"message": message}).encode(), headers={"Content-Type": "application/json"}
    )


def _labels_match(labels: dict[str, str], wanted: Any) -> bool:
    """Docker's label filter: every `key` or `key=value` given must hold (list or {term: true} form)."""
    for term in wanted or ():
        key, has_value, value = term.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def managed(model_id: str, stack: str = STACK, image: str = "img:1", **labels: str) -> dict[str, Any]:
    """A create body carrying the waker's labels for `model_id` in `stack` (`labels` added or replaced)."""
    own = {LABEL_MANAGED: "true", LABEL_STACK: stack, LABEL_MODEL: model_id, LABEL_SPEC: "0123456789abcdef"}
    return {"Image": image, "Labels": {**own, **labels}}


def _truthy(value: str | None) -> bool:
    return value in ("1", "true", "True")


class FakeDocker:
    """One engine: its containers, images, registry and networks are plain attributes a test arranges
    and reads; `on_start` and `on_kill` let a test play the process inside a container."""

    def __init__(self, name: str = "engine", journal: list[Call] | None = None, hostname: str = "fake-host") -> None:
        self.name = name
        self.hostname = hostname  # what a created container's Config.Hostname is, unless the test says
        self.containers: dict[str, Container] = {}
        self.images: dict[str, str] = {}  # reference -> image id
        self.registry: dict[str, Pull] = {}  # what a pull can get
        self.networks: dict[str, set[str]] = {}  # name -> the ids of the containers connected to it
        self.calls: list[Call] = []
        self.journal = journal if journal is not None else []
        self.url = ""  # tcp://127.0.0.1:PORT once served
        self.on_start: Callable[[Container], None] = lambda container: None
        self.on_kill: Callable[[Container, str], None] = lambda container, signal: None
        self._faults: list[_Fault] = []
        self._subscribers: list[tuple[dict[str, Any], asyncio.Queue[bytes | None]]] = []
        self._released = asyncio.Event()

    # What a test arranges and inspects.

    def refuse(self, action: str, status: int, message: str, target: str | None = None, times: int = 1) -> None:
        """The next `times` calls of `action` (on `target`, when given) get Docker's error `status`."""
        self._faults += [_Fault(action, target, status, message, cut=False) for _ in range(times)]

    def cut(self, action: str, target: str | None = None) -> None:
        """The next call of `action` gets half an answer, then the connection drops: the engine went away."""
        self._faults.append(_Fault(action, target, 0, "", cut=True))

    def add(
        self,
        name: str,
        config: dict[str, Any],
        running: bool = False,
        image_id: str = "sha256:old",
        hostname: str | None = None,
    ) -> Container:
        """A container that was there before the test: made by an earlier waker, a user, another stack."""
        container = Container(secrets.token_hex(32), name, config, image_id, hostname or self.hostname)
        container.running, container.starts = running, int(running)
        self.containers[container.id] = container
        return container

    def container(self, name: str) -> Container:
        found = self._lookup(name)
        assert found is not None, f"no container {name!r} on {self.name}: {[c.name for c in self.containers.values()]}"
        return found

    def actions(self, *kinds: str) -> list[tuple[str, str]]:
        """The calls of those kinds (all, when none is given) as (action, target), in order."""
        return [(c.action, c.target) for c in self.calls if not kinds or c.action in kinds]

    def write_log(self, container: Container, line: str, stream: int = STDOUT, at: float | None = None) -> None:
        data = (line + "\n").encode()
        container.logs.append((time.time() if at is None else at, stream, data))
        for follower in container.followers:
            follower.put_nowait(frame(stream, data))

    def exit(self, container: Container, code: int, error: str = "") -> None:
        """The container's process ends (a crash, or a stop): Docker reports it as a `die` event."""
        container.running, container.exit_code, container.error = False, code, error
        self._end_follows(container)
        self.emit("die", container, exitCode=str(code))

    def remove_by_hand(self, container: Container) -> None:
        """`docker rm -f` by someone else."""
        if container.running:
            self.exit(container, 137)
        del self.containers[container.id]
        self.emit("destroy", container)

    def emit(self, action: str, container: Container, **attributes: str) -> None:
        """A Docker event about `container`, to every events stream whose filters take it."""
        now = time.time()
        raw = {
            "Type": "container",
            "Action": action,
            "status": action,
            "id": container.id,
            "from": container.config.get("Image", ""),
            "Actor": {
                "ID": container.id,
                "Attributes": {**container.labels, "name": container.name, **attributes},
            },
            "scope": "local",
            "time": int(now),
            "timeNano": int(now * 1e9),
        }
        for filters, queue in self._subscribers:
            if "container" in filters.get("type", ["container"]) and _labels_match(
                raw["Actor"]["Attributes"], filters.get("label")
            ):
                queue.put_nowait(json.dumps(raw).encode() + b"\n")

    def end_events(self, cut: bool = False) -> None:
        """The engine ends every events stream: cleanly, or `cut` short (the daemon went away)."""
        for _, queue in self._subscribers:
            queue.put_nowait(_CUT if cut else _END)

    def release(self) -> None:
        """Lets every held answer finish, so that the server can close at the end of a test."""
        self._released.set()
        self.end_events()
        for container in self.containers.values():
            self._end_follows(container)
        for pull in self.registry.values():
            if pull.hold is not None:
                pull.hold.set()

    async def serve(self, aiohttp_server: Callable[..., Awaitable[Any]]) -> FakeDocker:
        server = await aiohttp_server(self.app())
        self.url = f"tcp://127.0.0.1:{server.port}"
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_get(f"{API}/containers/json", self._list)
        app.router.add_post(f"{API}/containers/create", self._create)
        app.router.add_get(API + "/containers/{id}/json", self._inspect)
        app.router.add_post(API + "/containers/{id}/start", self._start)
        app.router.add_post(API + "/containers/{id}/stop", self._stop)
        app.router.add_post(API + "/containers/{id}/kill", self._kill)
        app.router.add_post(API + "/containers/{id}/pause", self._pause)
        app.router.add_post(API + "/containers/{id}/unpause", self._pause)
        app.router.add_delete(API + "/containers/{id}", self._remove)
        app.router.add_get(API + "/containers/{id}/logs", self._logs)
        app.router.add_get(API + "/containers/{id}/stats", self._stats)
        app.router.add_get(API + "/images/{name:.+}/json", self._image)
        app.router.add_post(f"{API}/images/create", self._pull)
        app.router.add_post(API + "/networks/{id}/connect", self._connect)
        app.router.add_get(f"{API}/events", self._events)
        return app

    # The engine's side.

    def _lookup(self, key: str) -> Container | None:
        """As Docker resolves a reference: a full id, a name, or an unambiguous id prefix."""
        if key in self.containers:
            return self.containers[key]
        by_name = [c for c in self.containers.values() if c.name == key.lstrip("/")]
        by_prefix = [c for c in self.containers.values() if c.id.startswith(key)]
        found = by_name or by_prefix
        return found[0] if len(found) == 1 else None

    async def _record(self, request: web.Request, action: str, target: str, **extra: Any) -> web.StreamResponse | None:
        """Records the call; returns the answer of a fault the test queued for it, if any."""
        call = Call(self.name, action, target, dict(request.query), **extra)
        self.calls.append(call)
        self.journal.append(call)
        for fault in self._faults:
            if fault.action == action and fault.target in (None, target):
                self._faults.remove(fault)
                return await self._cut(request) if fault.cut else _error(fault.status, fault.message)
        return None

    async def _cut(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"Id": "')
        assert request.transport is not None
        request.transport.close()
        return response

    def _container_call(self, request: web.Request) -> tuple[Container | None, str]:
        key = request.match_info["id"]
        container = self._lookup(key)
        return container, container.name if container is not None else key

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.43", "Version": "fake"})

    async def _list(self, request: web.Request) -> web.StreamResponse:
        if (fault := await self._record(request, "list", "")) is not None:
            return fault
        filters = json.loads(request.query.get("filters", "{}"))
        listed = [
            {
                "Id": c.id,
                "Names": [f"/{c.name}"],
                "Image": c.config.get("Image", ""),
                "ImageID": c.image_id,
                "Labels": c.labels,
                "State": c.status,
            }
            for c in self.containers.values()
            if (c.running or _truthy(request.query.get("all"))) and _labels_match(c.labels, filters.get("label"))
        ]
        return web.json_response(listed)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("name", "")
        body = await request.json()
        if (fault := await self._record(request, "create", name, body=body)) is not None:
            return fault
        if (taken := self._lookup(name)) is not None and taken.name == name:
            return _error(
                409,
                f'Conflict. The container name "/{name}" is already in use by container "{taken.id}". '
                "You have to remove (or rename) that container to be able to reuse that name.",
            )
        image = body.get("Image", "")
        if image not in self.images:
            return _error(404, f"No such image: {image}")
        container = Container(secrets.token_hex(32), name, body, self.images[image], self.hostname)
        self.containers[container.id] = container
        self.emit("create", container)
        return web.json_response({"Id": container.id, "Warnings": []}, status=201)

    async def _inspect(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "inspect", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        return web.json_response(
            {
                "Id": container.id,
                "Name": f"/{container.name}",
                "Image": container.image_id,
                "Config": {
                    "Image": container.config.get("Image", ""),
                    "Labels": container.labels,
                    "Hostname": container.hostname,
                    "Tty": False,
                    "Env": container.config.get("Env", []),
                },
                "HostConfig": container.config.get("HostConfig", {}),
                "State": {
                    "Status": container.status,
                    "Running": container.running,
                    "ExitCode": container.exit_code,
                    "Error": container.error,
                },
            }
        )

    async def _start(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "start", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        if container.running:
            return web.Response(status=304)
        container.running, container.exit_code, container.error = True, 0, ""
        container.starts += 1
        self.emit("start", container)
        self.on_start(container)
        return web.Response(status=204)

    async def _stop(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "stop", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        if not container.running:
            return web.Response(status=304)
        self.exit(container, 143)  # SIGTERM
        return web.Response(status=204)

    async def _kill(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "kill", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        if not container.running:
            return _error(409, f"Cannot kill container: {target}: Container {container.id} is not running")
        signal = request.query.get("signal", "KILL")
        if signal.removeprefix("SIG") == "KILL":
            self.exit(container, 137)
        self.on_kill(container, signal)
        return web.Response(status=204)

    async def _remove(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "remove", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        if container.running and not _truthy(request.query.get("force")):
            return _error(
                409,
                f"You cannot remove a running container {container.id}. Stop the container before "
                "attempting removal or force remove",
            )
        self.remove_by_hand(container)
        for members in self.networks.values():
            members.discard(container.id)
        return web.Response(status=204)

    async def _pause(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        action = request.path.rsplit("/", 1)[1]
        if (fault := await self._record(request, action, target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        if not container.running or container.paused == (action == "pause"):
            return _error(409, f"Container {container.id} is not {'running' if action == 'pause' else 'paused'}")
        container.paused = action == "pause"
        return web.Response(status=204)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        """Docker's one-shot stats: the container's `memory_stats` as the test set them (a stopped
        container's are empty, as Docker's are)."""
        container, target = self._container_call(request)
        if (fault := await self._record(request, "stats", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        assert request.query.get("stream") == "0" and request.query.get("one-shot") == "1"
        return web.json_response(
            {"id": container.id, "memory_stats": container.memory_stats if container.running else {}}
        )

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        container, target = self._container_call(request)
        if (fault := await self._record(request, "logs", target)) is not None:
            return fault
        if container is None:
            return _error(404, f"No such container: {target}")
        streams = {s for s, flag in ((STDOUT, "stdout"), (STDERR, "stderr")) if _truthy(request.query.get(flag))}
        since = float(request.query.get("since", "0"))
        lines = [(stream, data) for at, stream, data in container.logs if stream in streams and at > since]
        tail = request.query.get("tail", "all")
        if tail != "all":
            lines = lines[len(lines) - int(tail) :] if int(tail) else []
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.multiplexed-stream"})
        await response.prepare(request)
        for stream, data in lines:
            await response.write(frame(stream, data))
        if _truthy(request.query.get("follow")) and container.running:
            async for chunk in self._follow(container.followers):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _follow(self, followers: list[asyncio.Queue[bytes | None]]) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        followers.append(queue)
        try:
            while (chunk := await queue.get()) is not _END and not self._released.is_set():
                yield chunk
        finally:
            followers.remove(queue)

    def _end_follows(self, container: Container) -> None:
        for follower in container.followers:
            follower.put_nowait(_END)

    async def _image(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if (fault := await self._record(request, "image", name)) is not None:
            return fault
        if name not in self.images:
            return _error(404, f"No such image: {name}")
        return web.json_response({"Id": self.images[name], "RepoTags": [name]})

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        reference = request.query["fromImage"] + (f":{request.query['tag']}" if request.query.get("tag") else "")
        header = request.headers.get("X-Registry-Auth")
        auth = json.loads(base64.urlsafe_b64decode(header)) if header else None
        if (fault := await self._record(request, "pull", reference, auth=auth)) is not None:
            return fault
        pull = self.registry.get(reference)
        if pull is None:
            return _error(404, f"manifest for {reference} not found: manifest unknown: manifest unknown")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for message in pull.messages:
            await response.write(json.dumps(message).encode() + b"\r\n")
        if pull.hold is not None:
            await pull.hold.wait()
        if pull.error:
            last: dict[str, Any] = {"errorDetail": {"message": pull.error}, "error": pull.error}
        else:
            self.images[reference] = pull.image_id
            last = {"status": f"Status: Downloaded newer image for {reference}"}
        await response.write(json.dumps(last).encode() + b"\r\n")
        await response.write_eof()
        return response

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        network = request.match_info["id"]
        body = await request.json()
        if (fault := await self._record(request, "connect", network, body=body)) is not None:
            return fault
        container = self._lookup(body.get("Container", ""))
        if network not in self.networks:
            return _error(404, f"network {network} not found")
        if container is None:
            return _error(404, f"No such container: {body.get('Container')}")
        self.networks[network].add(container.id)
        return web.Response(status=200)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        filters = json.loads(request.query.get("filters", "{}"))
        if (fault := await self._record(request, "events", "", body=filters)) is not None:
            return fault
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        subscription = (filters, queue)
        self._subscribers.append(subscription)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request)
            while (line := await queue.get()) is not _END and not self._released.is_set():
                if line == _CUT:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(line)
        finally:
            self._subscribers.remove(subscription)
        await response.write_eof()
        return response

    def streams_open(self) -> int:
        """Events streams being answered now: a test waits for its follower to be connected."""
        return len(self._subscribers)


# What a model server says about its load (vLLM 0.32's /metrics, abridged).
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="alpha"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="alpha"} 1.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage.
vllm:gpu_cache_usage_perc{engine="0",model_name="alpha"} 0.25
"""

# A model's answer to a streaming chat completion as vLLM 0.32 frames it (abridged): its chunks and [DONE].
VLLM_CHAT_STREAM = (
    b'data: {"id":"chatcmpl-7f3","object":"chat.completion.chunk","created":1764495133,"model":"alpha",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7f3","object":"chat.completion.chunk","created":1764495133,"model":"alpha",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-7f3","object":"chat.completion.chunk","created":1764495133,"model":"alpha",'
    b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


class ModelServer:
    """A model server's HTTP face: /health answers 200 while `ready()` says so, /metrics what `metrics`
    holds (with `metrics_status`), /is_sleeping whether `asleep`; `stall` leaves /health and /metrics
    unanswered (a wedged server). /v1/chat/completions records each request (`chats`: headers and
    body) and answers `chat_answer` (status, content type, body); an event stream goes one event a
    write, and with `chat_cut` the server dies after the first event."""

    def __init__(self) -> None:
        self.ready: Callable[[], bool] = lambda: True
        self.metrics = VLLM_METRICS
        self.metrics_status = 200
        self.asleep = False
        self.stall = False
        self.health_checks = 0
        self.chats: list[tuple[CIMultiDict[str], bytes]] = []
        self.chat_answer: tuple[int, str, bytes] = (200, "text/event-stream", VLLM_CHAT_STREAM)
        self.chat_cut = False
        self.port = 0
        self.url = ""
        self._released = asyncio.Event()

    async def serve(self, aiohttp_server: Callable[..., Awaitable[Any]], host: str = "127.0.0.1") -> ModelServer:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/is_sleeping", self._is_sleeping)
        app.router.add_post("/v1/chat/completions", self._chat)
        server = await aiohttp_server(app, host=host)
        self.port = server.port
        self.url = f"http://{host}:{server.port}"
        return self

    def release(self) -> None:
        self._released.set()

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if self.stall:
            await self._released.wait()
        return web.Response(status=200 if self.ready() else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.stall:
            await self._released.wait()
        return web.Response(status=self.metrics_status, text=self.metrics)

    async def _is_sleeping(self, request: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.asleep})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.chats.append((request.headers.copy(), await request.read()))
        status, content_type, body = self.chat_answer
        if (status, content_type) != (200, "text/event-stream"):
            return web.Response(status=status, body=body, content_type=content_type)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for event in body.split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")
            if self.chat_cut:  # the engine dies mid-answer: the stream ends without its last chunk
                assert request.transport is not None
                request.transport.close()
                break
        return response
