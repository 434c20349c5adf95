"""The Docker engine, seen through the few calls the waker makes (aiodocker).

Only containers carrying this stack's managed labels are ever acted on: every call that changes a
container checks the labels first, so the waker cannot stop or remove anything it did not create.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp
from aiodocker.multiplexed import multiplexed_result_list
from aiodocker.networks import DockerNetwork
from aiohttp.http_exceptions import LineTooLong

from waker.config.externals import ExternalConfig, ExternalPolicy
from waker.config.hosts import DockerEndpoint
from waker.config.ray import RayNode
from waker.core.externals import ExternalContainer
from waker.core.image_pull import PullProgress, PullTracker
from waker.core.memory import ContainerMemory, HostMemory, container_memory, last_probe_reading
from waker.docker import memory_probe
from waker.docker.connect import docker_client
from waker.docker.spec import (
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_RAY_NODE,
    LABEL_ROLE,
    LABEL_SPEC,
    LABEL_STACK,
    ROLE_GATEWAY,
)
from waker.errors import DockerError, NotManaged, PullFailed


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    model_id: str
    spec_hash: str
    image_id: str
    running: bool
    exit_code: int
    error: str
    ray_node: RayNode | None = None  # None: a one-host model's container

    @property
    def serves(self) -> bool:
        """The model's own container (a one-host model's, or a Ray head), not a Ray worker of it."""
        return self.ray_node is not RayNode.WORKER


PROBE_FIRST_READING_POLLS = 30  # tenths of a second a new memory probe is given to write its first reading
PROBE_STALE = 3.0  # seconds without a new reading (it writes one every 0.5 s) that make it no reading


class _docker_errors:  # lower case: it reads as a function where it is used, `with _docker_errors(...)`
    """Turns every failure of a Docker call into DockerError, saying what was being done. An answer
    whose status is in `ignore` ends the block silently (a class, so that type checkers know that
    code after the block can run)."""

    def __init__(self, what: str, ignore: tuple[int, ...] = ()) -> None:
        self.what, self.ignore = what, ignore

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> bool:
        if isinstance(exc, aiodocker.DockerError):
            if exc.status in self.ignore:
                return True
            raise DockerError(f"{self.what}: {exc.message}") from None
        if isinstance(exc, (TimeoutError, aiohttp.ClientError, OSError)):
            raise DockerError(
                f"{self.what}: the Docker engine is not reachable ({str(exc) or type(exc).__name__})"
            ) from None
        return False


class DockerRuntime:
    def __init__(self, stack: str, docker_host: str | DockerEndpoint = "") -> None:
        self.stack = stack
        try:
            self._docker = docker_client(docker_host)
        except (OSError, ssl.SSLError) as exc:
            raise DockerError(
                f"cannot use the TLS files of {docker_host}: {exc}; check tls_ca, tls_cert and tls_key of its [[host]]"
            ) from None
        self._probe: str | None = None  # the memory probe's container, once found or made
        self._probe_uptime = 0.0  # the host's uptime in the probe's last reading
        self._probe_moved_at = 0.0  # when (this machine's monotonic clock) that uptime last moved on

    async def host_memory(self, images: tuple[str, ...]) -> HostMemory:
        """This host's memory, as the memory probe (`docker.memory_probe`) last read it; the probe is
        made the first time, from the first of `images` this host has. Raises DockerError when there
        is no reading: no image to make the probe from, the probe not running (it is started again
        for the next call), or no new reading for PROBE_STALE seconds."""
        if self._probe is None:
            self._probe = await self._memory_probe(images)
        probe = self._docker.containers.container(self._probe)
        try:
            reading = last_probe_reading(await self._probe_output(self._probe))
        except DockerError:
            self._probe = None  # removed by hand, say: found or made again next time
            raise
        if reading is None or reading[0] <= self._probe_uptime:
            with _docker_errors("cannot inspect the memory probe"):
                state = (await probe.show())["State"]
            if not state.get("Running"):
                with _docker_errors("cannot start the memory probe"):
                    await probe.start()
                raise DockerError(
                    f"the memory probe had stopped ({state.get('Status')}, exit code {state.get('ExitCode')}): "
                    "started again"
                )
            if reading is None:
                raise DockerError("the memory probe has not written a whole reading yet")
            quiet = time.monotonic() - self._probe_moved_at
            if reading[0] == self._probe_uptime and quiet > PROBE_STALE:
                # It runs but writes nothing new: a host stalled (swapping, say) is no reading.
                raise DockerError(f"the memory probe has written no new reading for {quiet:.0f} s")
        else:
            self._probe_moved_at = time.monotonic()
        self._probe_uptime = reading[0]
        return reading[1]

    async def _memory_probe(self, images: tuple[str, ...]) -> str:
        """The probe's container id: the one an earlier run left if it is there, else a new one."""
        name = memory_probe.probe_name(self.stack)
        with _docker_errors("cannot inspect the memory probe", ignore=(404,)):
            data = await self._docker.containers.container(name).show()
            labels = data["Config"].get("Labels") or {}
            if labels.get(memory_probe.LABEL_PROBE) != self.stack:
                raise DockerError(
                    f"a container named {name} is on the host and is not the waker's memory probe; rename or remove it"
                )
            if not data["State"].get("Running"):
                await self._docker.containers.container(data["Id"]).start()
            return str(data["Id"])
        image = None
        for candidate in images:
            if await self.image_id(candidate) is not None:
                image = candidate
                break
        if image is None:
            raise DockerError(
                f"no image to read the host's memory with: none of {', '.join(images) or 'no image'} is on it; "
                "set memory_probe_image in its [[host]] to an image it has with /bin/sh, or start a model there"
            )
        with _docker_errors("cannot make the memory probe"):
            container = await self._docker.containers.create(
                config=memory_probe.probe_spec(self.stack, image), name=name
            )
            await container.start()
        for _ in range(PROBE_FIRST_READING_POLLS):  # its first reading, written within milliseconds
            if last_probe_reading(await self._probe_output(container.id)) is not None:
                break
            await asyncio.sleep(0.1)
        return str(container.id)

    async def _probe_output(self, probe: str) -> list[str]:
        # One call, not aiodocker's `log` (which inspects the container first): the probe has no TTY.
        with _docker_errors("cannot read the memory probe's output"):
            params = {"stdout": "1", "tail": str(memory_probe.TAIL)}
            async with self._docker._query(f"containers/{probe}/logs", params=params, timeout=10) as response:
                chunks = await multiplexed_result_list(response, is_tty=False)
        return "".join(chunks).splitlines()

    async def remove_memory_probe(self) -> None:
        """Removes the probe (the waker is stopping); no error if there is none, and never a container
        of that name that is not the probe."""
        self._probe = None
        with _docker_errors("cannot remove the memory probe", ignore=(404,)):
            data = await self._docker.containers.container(memory_probe.probe_name(self.stack)).show()
            if (data["Config"].get("Labels") or {}).get(memory_probe.LABEL_PROBE) == self.stack:
                await self._docker.containers.container(data["Id"]).delete(force=True)

    async def close(self) -> None:
        await self._docker.close()
        await self._docker.connector.close()  # one passed in (ssh://) is not closed by aiodocker

    async def managed_containers(self) -> list[ContainerInfo]:
        with _docker_errors("cannot list containers"):
            listed = await self._docker.containers.list(all=True, filters=self._filters())
        return [await self._inspect(c.id) for c in listed]

    async def find(self, model_id: str, worker: bool = False) -> ContainerInfo | None:
        """The model's own container here, or with `worker` the Ray worker of it (a host may hold
        both for one model, from placements before)."""
        with _docker_errors("cannot list containers"):
            listed = await self._docker.containers.list(all=True, filters=self._filters(model_id))
        for container in listed:
            info = await self._inspect(container.id)
            if info.serves != worker:
                return info
        return None

    def _filters(self, model_id: str | None = None) -> dict[str, list[str]]:
        labels = [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={self.stack}"]
        if model_id is not None:
            labels.append(f"{LABEL_MODEL}={model_id}")
        return {"label": labels}

    async def inspect(self, container_id: str) -> ContainerInfo:
        return await self._inspect(container_id)

    async def image_id(self, image: str) -> str | None:
        """The id of the image `image` names on this host, or None when it is not here."""
        with _docker_errors(f"cannot inspect image {image!r}", ignore=(404,)):
            return str((await self._docker.images.inspect(image))["Id"])
        return None

    async def pull(
        self,
        image: str,
        auth: dict[str, str] | None = None,
        on_progress: Callable[[PullProgress], None] = lambda progress: None,
    ) -> None:
        """Pulls `image`, reporting progress as Docker streams it; raises DockerError with the
        registry's own words when the pull fails."""
        tracker = PullTracker(image)
        try:
            with _docker_errors(f"cannot pull image {image!r}"):
                async for message in self._docker.images.pull(image, auth=auth, stream=True):
                    tracker.feed(message)
                    on_progress(tracker.snapshot())
        except PullFailed as exc:
            raise DockerError(f"cannot pull image {image!r}: {exc}") from None

    async def create(self, name: str, spec: dict[str, Any]) -> str:
        with _docker_errors(f"cannot create container {name!r}"):
            container = await self._docker.containers.create(config=spec, name=name)
        return container.id

    async def connect(self, network: str, container_id: str) -> None:
        await self._inspect(container_id)  # raises NotManaged
        with _docker_errors(f"cannot connect container {container_id[:12]} to network {network!r}"):
            await DockerNetwork(self._docker, network).connect({"Container": container_id})

    async def start(self, container_id: str) -> None:
        await self._inspect(container_id)  # raises NotManaged
        with _docker_errors(f"cannot start container {container_id[:12]}"):
            await self._docker.containers.container(container_id).start()

    async def stop(self, container_id: str, timeout: float) -> None:
        await self._inspect(container_id)  # raises NotManaged
        with _docker_errors(f"cannot stop container {container_id[:12]}", ignore=(304, 404)):
            await self._docker.containers.container(container_id).stop(t=max(0, round(timeout)))

    async def remove(self, container_id: str) -> None:
        await self._inspect(container_id)  # raises NotManaged
        with _docker_errors(f"cannot remove container {container_id[:12]}", ignore=(404,)):
            await self._docker.containers.container(container_id).delete(force=True)

    async def gateway_container(self) -> str:
        """The id of the gateway container whose network namespace this process shares (compose:
        `network_mode: service:gateway`). Docker gives a container that joins another's network
        namespace that container's hostname, which is how the one gateway among several stacks'
        is told apart without naming it in the config."""
        hostname = socket.gethostname()
        with _docker_errors("cannot find the gateway container"):
            listed = await self._docker.containers.list(filters={"label": [f"{LABEL_ROLE}={ROLE_GATEWAY}"]})
            matches = [c.id for c in listed if (await c.show())["Config"].get("Hostname") == hostname]
        if len(matches) != 1:
            raise DockerError(
                f"{len(matches) or 'no'} running container(s) labelled {LABEL_ROLE}={ROLE_GATEWAY} with this "
                f"container's hostname {hostname!r}: run the waker in the gateway's network namespace "
                "(compose: network_mode: service:gateway), next to exactly one gateway"
            )
        return matches[0]

    async def reload_gateway(self, container_id: str) -> None:
        """SIGHUP to the gateway container (tini passes it to nginx: a graceful reload)."""
        with _docker_errors(f"cannot reload the gateway {container_id[:12]}"):
            container = self._docker.containers.container(container_id)
            if ((await container.show())["Config"].get("Labels") or {}).get(LABEL_ROLE) != ROLE_GATEWAY:
                raise NotManaged(f"container {container_id[:12]} is not labelled {LABEL_ROLE}={ROLE_GATEWAY}")
            await container.kill(signal="HUP")

    @asynccontextmanager
    async def event_stream(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Docker's events for this stack's containers, as they happen. The stream is open (no event
        is missed from here on) when the context is entered; when the engine goes away it ends or
        raises DockerError."""
        filters = {"type": ["container"], "label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={self.stack}"]}
        forever = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
        with _docker_errors("cannot open the Docker events stream"):
            query = self._docker._query("events", params={"filters": json.dumps(filters)}, timeout=forever)
            response = await query.__aenter__()
        try:
            yield _json_lines(response)
        finally:
            await query.__aexit__(None, None, None)

    async def follow_logs(
        self, container_id: str, tail: int | None = None, since: float | None = None
    ) -> AsyncIterator[str]:
        """The container's last `tail` log lines (all since `since`, a Unix time, when given), then
        every new one as it is written."""
        window: dict[str, Any] = {"tail": tail} if tail is not None else {"since": f"{since or 0:.6f}"}
        with _docker_errors("cannot follow container logs"):
            container = self._docker.containers.container(container_id)
            async for line in container.log(stdout=True, stderr=True, follow=True, **window):
                yield line.rstrip("\n")

    async def externals(self, entries: tuple[ExternalConfig, ...]) -> list[ExternalContainer]:
        """The running (or paused) containers of the `[[external]]` workloads, never a managed one."""
        if not entries:
            return []
        with _docker_errors("cannot list containers"):
            listed = await self._docker.containers.list()
        found = []
        for container in listed:
            data = container._container
            labels = data.get("Labels") or {}
            name = (data.get("Names") or ["/"])[0].lstrip("/")
            entry = next((e for e in entries if e.matches(name, labels)), None)
            if entry is not None and labels.get(LABEL_MANAGED) != "true":
                found.append(ExternalContainer(data["Id"], name, entry, data.get("State") == "paused"))
        return found

    async def pause(self, container: ExternalContainer, unpause: bool = False) -> None:
        """Pauses (or unpauses) an external workload's container, once Docker confirms it is one of
        a `pause` workload's: nothing else is ever paused."""
        action = "unpause" if unpause else "pause"
        with _docker_errors(f"cannot {action} container {container.name}", ignore=(304,)):
            data = await self._docker.containers.container(container.id).show()
            labels = data["Config"].get("Labels") or {}
            entry = container.external
            if entry.policy is not ExternalPolicy.PAUSE or labels.get(LABEL_MANAGED) == "true":
                raise NotManaged(f"container {container.name} is not one the waker may pause")
            if not entry.matches(data["Name"], labels):
                raise NotManaged(f"container {container.name} is not [[external]] '{entry.name}''s any more")
            async with self._docker._query(f"containers/{container.id}/{action}", method="POST"):
                pass

    async def memory_use(self, container_id: str) -> ContainerMemory | None:
        """The container's memory now (and its peak where cgroup v1 keeps one); None if not running."""
        with _docker_errors(f"cannot read container {container_id[:12]}'s stats"):
            # one-shot: Docker answers at once instead of waiting a second for a CPU figure.
            stats = await self._docker._query_json(
                f"containers/{container_id}/stats", params={"stream": "0", "one-shot": "1"}
            )
        return container_memory(stats.get("memory_stats") or {})

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            with _docker_errors("cannot read container logs"):
                chunks = await self._docker.containers.container(container_id).log(stdout=True, stderr=True, tail=lines)
                return "".join(chunks).strip()
        except DockerError:
            pass  # the logs only decorate an error message that is already on its way
        return ""

    async def _inspect(self, container_id: str) -> ContainerInfo:
        with _docker_errors(f"cannot inspect container {container_id[:12]}"):
            data = await self._docker.containers.container(container_id).show()
        labels = data["Config"].get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "true" or labels.get(LABEL_STACK) != self.stack:
            raise NotManaged(
                f"container {data['Name'].lstrip('/')} is not managed by waker stack {self.stack!r}; "
                "the waker never acts on containers it did not create"
            )
        state = data["State"]
        return ContainerInfo(
            id=data["Id"],
            name=data["Name"].lstrip("/"),
            model_id=labels.get(LABEL_MODEL, ""),
            spec_hash=labels.get(LABEL_SPEC, ""),
            image_id=data.get("Image", ""),
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            error=state.get("Error") or "",
            ray_node=ray_node(labels),
        )


def ray_node(labels: dict[str, str]) -> RayNode | None:
    value = labels.get(LABEL_RAY_NODE)
    return RayNode(value) if value in tuple(RayNode) else None


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Docker's events, one JSON object a line; anything else is the stream failing (DockerError). An
    engine that goes away cuts the chunked stream short: a DockerError too, as for any call to an
    engine that is not there."""
    try:
        with _docker_errors("the Docker events stream broke off"):
            async for line in response.content:
                if line.strip():
                    yield _event(line)
    except (LineTooLong, ValueError):  # older aiohttp: ValueError("Chunk too big")
        raise DockerError("the Docker events stream sent a line longer than aiohttp buffers") from None


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
        raise DockerError(f"the Docker events stream sent a line that is not JSON ({exc}): {line[:200]!r}") from None
    if not isinstance(event, dict):
        raise DockerError(f"the Docker events stream sent JSON that is not an event object: {line[:200]!r}")
    return event
