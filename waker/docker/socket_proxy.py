"""A Docker socket for the waker that allows only the calls it makes, on containers it manages, and
creates only the containers the config gives its models.

    waker socket-proxy --listen /run/waker/docker.sock [--docker /var/run/docker.sock] [--owner UID]
                       [--config models.toml]

The proxy never forwards the waker's bytes. It parses each request with aiohttp's HTTP parser, checks
the call, and sends Docker a request it builds itself: the checked method and target, its own few
headers, and a body it serialised (a create's body is the container the proxy computed from the
config, create_guard.py). So neither an HTTP trick (bare LF, folded headers, two Content-Lengths) nor
a JSON one (key case, repeated keys) can put anything before Docker that was not checked.

One call reaches a container the waker does not manage: SIGHUP (an nginx reload, nothing else) to
the compose gateway, the container labelled io.waker.role=gateway. Image pulls get the registry
credentials `docker login` left on the host, read here, so that the waker never holds them. Inspect
answers come without the container's environment, and listings show managed containers and the
gateway only. A refused call gets 403 with a JSON message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from waker.config.externals import ExternalConfig, ExternalPolicy
from waker.config.schema import Config, load_config
from waker.docker import registry_auth
from waker.docker.create_guard import checked_create, strict_json
from waker.docker.spec import LABEL_MANAGED, LABEL_ROLE, ROLE_GATEWAY
from waker.errors import ConfigError, ProxyRefused

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
        ("GET", f"/containers/{_ID}/stats"),
        ("GET", "/images/[^?]+/json"),
        ("POST", "/images/create"),
        ("POST", "/containers/create"),
        ("POST", f"/containers/{_ID}/start"),
        ("POST", f"/containers/{_ID}/stop"),
        ("POST", f"/containers/{_ID}/pause"),
        ("POST", f"/containers/{_ID}/unpause"),
        ("DELETE", f"/containers/{_ID}"),
        ("POST", f"/networks/{_ID}/connect"),
    )
]
# Calls that change or read out a container: allowed on managed containers only. Only the two calls on the
# collection are not on a container: Docker routes DELETE /containers/json or POST /containers/create/start
# to the containers named "json" and "create".
ON_CONTAINER = re.compile(
    f"^(?!GET {_VERSION}/containers/json(?:\\?|$))(?!POST {_VERSION}/containers/create(?:\\?|$))"
    f"(?:POST|DELETE|GET) {_VERSION}/containers/({_ID})(?:/(start|stop|logs|stats|json))?(?:\\?.*)?$"
)
CREATE = re.compile(f"^POST ({_VERSION}/containers/create)(?:\\?(.*))?$")
LIST = re.compile(f"^GET {_VERSION}/containers/json(?:\\?.*)?$")
NETWORK_CONNECT = re.compile(f"^POST {_VERSION}/networks/{_ID}/connect(?:\\?.*)?$")
# The gateway's reload: the query must be exactly one SIGHUP (checked in `check`).
KILL = re.compile(f"^POST {_VERSION}/containers/({_ID})/kill(?:\\?(.*))?$")
# An [[external]] workload's container: paused for a model and unpaused after it, when its policy says so.
PAUSE = re.compile(f"^POST {_VERSION}/containers/({_ID})/(?:un)?pause(?:\\?.*)?$")
STATS = re.compile(f"^GET {_VERSION}/containers/({_ID})/stats(?:\\?.*)?$")
RELOAD_SIGNALS = ("HUP", "SIGHUP")
IMAGE_PULL = re.compile(f"^POST {_VERSION}/images/create(?:\\?(.*))?$")
# A pull names an image and nothing else: fromSrc (an import) would overwrite a local tag with any tarball.
PULL_PARAMS = {"fromImage", "tag", "platform"}
MAX_BODY = 4 * 1024 * 1024
# What Docker's answers carry that belongs to one connection, not to the answer.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def check(method: str, target: str) -> None:
    """Raises ProxyRefused unless the call is one the waker makes."""
    if kill := KILL.match(f"{method} {target}"):
        query = parse_qsl(kill.group(2) or "", keep_blank_values=True)
        if query not in [[("signal", name)] for name in RELOAD_SIGNALS]:
            raise ProxyRefused("container kill: only signal=HUP (an nginx reload) is allowed, and only to the gateway")
        return
    if not any(method == m and pattern.match(target) for m, pattern in ALLOWED):
        raise ProxyRefused(f"{method} {target.split('?')[0]} is not a call the waker makes")


def connected_container(body: bytes) -> str:
    """The container a network connect call names; only the container, no endpoint settings."""
    request = strict_json(body, "network connect")
    if not isinstance(request, dict) or set(request) != {"Container"} or not isinstance(request["Container"], str):
        raise ProxyRefused('network connect: only {"Container": ID} is accepted')
    if not re.fullmatch(_ID, request["Container"]):
        raise ProxyRefused("network connect: not a container id")
    return request["Container"]


def pulled_image(query: str) -> str:
    """The image a pull call names, as `fromImage[:tag]` (its registry decides the credentials)."""
    params = parse_qsl(query, keep_blank_values=True)
    names = [name for name, _ in params]
    if "fromImage" not in names or not set(names) <= PULL_PARAMS or len(set(names)) != len(names):
        raise ProxyRefused("image create: only a pull (fromImage, tag, platform) is allowed, not an import")
    values = dict(params)
    image, tag = values["fromImage"], values.get("tag", "")
    return f"{image}:{tag}" if tag and "@" not in image else image


def registry_header(auth: dict[str, str]) -> str:
    """Docker's X-Registry-Auth header: base64url of the JSON credentials."""
    return base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()


def without_environment(inspect: Any) -> Any:
    """A container's inspect answer less its environment: the waker reads state and labels only."""
    if isinstance(inspect, dict) and isinstance(inspect.get("Config"), dict):
        inspect["Config"]["Env"] = []
    return inspect


def visible(listing: Any, externals: tuple[ExternalConfig, ...] = ()) -> list[Any]:
    """The containers of a listing the waker may see: the managed ones, the gateway, and those of the
    config's [[external]] workloads."""
    entries = [entry for entry in listing if isinstance(entry, dict)] if isinstance(listing, list) else []
    return [
        entry
        for entry in entries
        if (labels := entry.get("Labels") or {}).get(LABEL_MANAGED) == "true"
        or labels.get(LABEL_ROLE) == ROLE_GATEWAY
        or any(e.matches(str((entry.get("Names") or [""])[0]), labels) for e in externals)
    ]


class LatestConfig:
    """The config the file holds now, read again whenever it changed (an edit, then `waker reload`), or
    the last one that loaded while the file does not (as the waker keeps its own)."""

    def __init__(self, path: Path | None, overrides: tuple[str, ...]) -> None:
        self.path, self.overrides = path, overrides
        self._config: Config | None = None
        self._read: tuple[int, int, int] | None = None

    def __call__(self) -> Config:
        stamp = self._stamp()
        if stamp is None or stamp != self._read:
            try:
                self._config = load_config(self.path, self.overrides)
            except ConfigError as exc:
                if self._config is None:
                    raise ProxyRefused(f"the proxy cannot read the config: {'; '.join(exc.problems)}") from None
                log.warning("socket_proxy_config_kept", problems=exc.problems)
            self._read = stamp
        assert self._config is not None
        return self._config

    def _stamp(self) -> tuple[int, int, int] | None:
        path = self._config.path if self._config is not None else self.path
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st is not None else None


@dataclass
class Call:
    """The request the proxy sends Docker: built by the proxy, never the client's bytes."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    rewrite: Callable[[Any], Any] | None = None  # applied to a JSON answer before it goes back


class SocketProxy:
    def __init__(self, listen: Path, docker: Path, config: Callable[[], Config], owner: int | None = None) -> None:
        self.listen, self.docker, self.config, self.owner = listen, docker, config, owner
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.listen.unlink(missing_ok=True)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.docker)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancelled when the waker leaves, so that an event stream nobody reads ends Docker's too.
        # A stop does not wait on the event streams and log follows that never end by themselves.
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.listen)).start()
        os.chmod(self.listen, 0o660)
        if self.owner is not None:
            os.chown(self.listen, self.owner, -1)
        log.info("socket_proxy_listening", listen=str(self.listen), docker=str(self.docker))

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            call = await self._checked(request.method, request.raw_path, request.headers, await request.read())
        except ProxyRefused as exc:
            log.warning("docker_call_refused", call=f"{request.method} {request.path}", reason=str(exc))
            return web.json_response({"message": f"refused by the waker's Docker socket proxy: {exc}"}, status=403)
        try:
            return await self._forward(request, call)
        except aiohttp.ClientError as exc:
            message = f"the Docker engine behind the waker's socket proxy ({self.docker}) does not answer: {exc}"
            return web.json_response({"message": message}, status=502)

    async def _checked(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Call:
        """The call to make for the waker's request, or ProxyRefused."""
        check(method, target)
        call = f"{method} {target}"
        if create := CREATE.match(call):
            query, spec = checked_create(self.config(), create.group(2) or "", body)
            return Call(method, f"{create.group(1)}?{query}", {"Content-Type": "application/json"}, spec)
        if kill := KILL.match(call):
            await self._check_gateway(kill.group(1))
            return Call(method, target)
        if pause := PAUSE.match(call):
            await self._check_external(pause.group(1), pausing=True)
            return Call(method, target)
        if stats := STATS.match(call):  # also an [[external]] workload's memory, which the waker shows
            await self._check_managed(stats.group(1), or_external=True)
            return Call(method, target)
        if container := ON_CONTAINER.match(call):
            inspect = container.group(2) == "json"
            # The waker finds its gateway by the hostname its inspect shows; nothing else is read there.
            await self._check_managed(container.group(1), or_gateway=inspect)
            return Call(method, target, rewrite=without_environment if inspect else None)
        if NETWORK_CONNECT.match(call):
            connected = connected_container(body)
            await self._check_managed(connected)
            body = json.dumps({"Container": connected}).encode()
            return Call(method, target, {"Content-Type": "application/json"}, body)
        if LIST.match(call):
            externals = self._externals()
            return Call(method, target, rewrite=lambda listing: visible(listing, externals))
        if pull := IMAGE_PULL.match(call):
            image = pulled_image(pull.group(1) or "")
            given = headers.get("X-Registry-Auth")
            return Call(method, target, {"X-Registry-Auth": given} if given else await self._credentials(image))
        return Call(method, target)

    async def _credentials(self, image: str) -> dict[str, str]:
        """The proxy, not the waker, holds what `docker login` wrote on the host (compose mounts it here):
        a pull that comes without credentials gets them, and the waker never sees them."""
        auth = await asyncio.to_thread(registry_auth.credentials, image)
        return {"X-Registry-Auth": registry_header(auth)} if auth else {}

    async def _identity(self, container: str) -> tuple[str, dict[str, str]]:
        """The container's name and labels (empty for no such container), from one inspect."""
        assert self.session is not None
        async with self.session.get(URL(f"http://docker/containers/{container}/json", encoded=True)) as answer:
            if answer.status != 200:
                return "", {}
            data = await answer.json(content_type=None)
        labels = (data.get("Config") or {}).get("Labels")
        return str(data.get("Name", "")), labels if isinstance(labels, dict) else {}

    def _workload(self, name: str, labels: dict[str, str]) -> ExternalConfig | None:
        """The config's [[external]] workload a container belongs to (never a managed one's)."""
        if labels.get(LABEL_MANAGED) == "true":
            return None
        return next((e for e in self._externals() if e.matches(name, labels)), None)

    def _externals(self) -> tuple[ExternalConfig, ...]:
        """The config's [[external]] workloads; none while the proxy has no config it could read (the
        waker's own containers stay visible: it needs them to serve what runs)."""
        try:
            return self.config().externals
        except ProxyRefused:
            return ()

    async def _check_external(self, container: str, pausing: bool) -> None:
        external = self._workload(*await self._identity(container))
        if external is None or (pausing and external.policy is not ExternalPolicy.PAUSE):
            raise ProxyRefused(
                f"container {container[:12]} is not an [[external]] workload's with policy 'pause': "
                "the waker pauses nothing else"
            )

    async def _check_managed(self, container: str, or_gateway: bool = False, or_external: bool = False) -> None:
        name, labels = await self._identity(container)
        if not (
            labels.get(LABEL_MANAGED) == "true"
            or (or_gateway and labels.get(LABEL_ROLE) == ROLE_GATEWAY)
            or (or_external and self._workload(name, labels) is not None)
        ):
            raise ProxyRefused(f"container {container[:12]} is not managed by the waker")

    async def _check_gateway(self, container: str) -> None:
        _, labels = await self._identity(container)
        if labels.get(LABEL_ROLE) != ROLE_GATEWAY:
            raise ProxyRefused(
                f"container {container[:12]} is not the gateway ({LABEL_ROLE}={ROLE_GATEWAY}): "
                "no signal may be sent to it"
            )

    async def _forward(self, request: web.Request, call: Call) -> web.StreamResponse:
        assert self.session is not None
        url = URL(f"http://docker{call.target}", encoded=True)
        async with self.session.request(call.method, url, headers=call.headers, data=call.body or None) as answer:
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
            if call.rewrite is not None and answer.status == 200:
                body = json.dumps(call.rewrite(await answer.json(content_type=None))).encode()
                return web.Response(status=answer.status, headers=headers, body=body)
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


async def run(listen: Path, docker: Path, config: Callable[[], Config], owner: int | None = None) -> int:
    try:
        config()
    except ProxyRefused as exc:
        # It may come later (a config written after the proxy starts): until then creates are refused.
        log.warning("socket_proxy_without_config", reason=str(exc))
    proxy = SocketProxy(listen, docker, config, owner)
    await proxy.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()
    return 0
