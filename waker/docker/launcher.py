"""The driver for a local (or `docker_host`) Docker engine: brings a model's container up (create or
recreate, start, wait until healthy) and down, and reports what Docker says happens to them.

Side effects only: what to start or stop, and when, is the scheduler's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import structlog

from waker.config.externals import ExternalConfig
from waker.config.hosts import HostConfig
from waker.config.schema import ModelConfig, WakerConfig
from waker.config.units import format_duration
from waker.core.driver import ContainerEvent
from waker.core.externals import ExternalContainer
from waker.core.image_pull import PullProgress
from waker.core.memory import ContainerMemory, HostMemory
from waker.docker import events as docker_events
from waker.docker.images import Images
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_EGRESS, LABEL_SPEC, container_name, container_spec, placed
from waker.engine import probe
from waker.engine import sleep as engine_sleep
from waker.errors import DockerError, ImageMissing, ImagePullFailed, StartError

log = structlog.get_logger("waker.docker.launcher")

T = TypeVar("T")
HEALTH_POLL_INTERVAL = 0.02  # a refused connection costs next to nothing; waiting costs latency
# The Docker events stream reports an exit at once; this inspect is only the fallback if it is down.
EXIT_CHECK_INTERVAL = 2.0
LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class Node:
    """One container of a model on this engine: the model's own, or the Ray worker of a model over two
    hosts (`ray_pair.RayPair` starts one of each through two launchers)."""

    name: str
    spec: dict[str, Any]
    worker: bool = False


class Watch(Protocol):
    """The containers a start waits on, besides the health check."""

    async def check_exited(self) -> None:
        """Raises StartError when one of them has exited (after stopping the others)."""

    async def give_up(self) -> str:
        """Stops them all (the start timed out); returns their last log lines."""


class Launcher:
    """Implements `driver.Driver` over one Docker engine, the engine of `host` (by default the local one,
    whose models publish their ports on loopback)."""

    def __init__(
        self,
        waker: WakerConfig,
        runtime: DockerRuntime,
        images: Images,
        clock: Callable[[], float] = time.monotonic,
        host: HostConfig | None = None,
    ) -> None:
        self.stack = waker.name
        self.address = host.address if host is not None else "127.0.0.1"
        self.network, self.egress_network = waker.network, waker.egress_network
        self.runtime = runtime
        self.images = images
        self.clock = clock
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        # The last lines the loading log read of each model's current start: an error message falls
        # back on them when Docker has no logs left to give (the container removed meanwhile).
        self._read: dict[str, deque[str]] = {}

    async def close(self) -> None:
        await self._http.close()

    def _here(self, model: ModelConfig) -> ModelConfig:
        return placed(model, self.network, self.address)

    async def up(self, model: ModelConfig, died: asyncio.Event) -> str:
        """Creates (or recreates, when its spec changed) and starts the container, then waits until
        the model answers its health check. Returns the container id; raises StartError."""
        model = self._here(model)
        self._read.pop(model.id, None)
        deadline = self.clock() + model.start_timeout
        container_id = await self.launch(model, self.node(model), deadline)
        await self.wait_healthy(model, deadline, died, _OneContainer(self, model, container_id))
        return container_id

    def node(self, model: ModelConfig) -> Node:
        return Node(
            container_name(self.stack, model.id), container_spec(model, self.stack, self.network, self.egress_network)
        )

    async def ensure_image(self, model: ModelConfig, deadline: float) -> str:
        """Makes the model's image present here (pulled as its policy says); returns its id. Raises
        StartError."""
        return await self._starting(model, asyncio.wait_for(self.images.ensure(model), deadline - self.clock()))

    async def launch(self, model: ModelConfig, node: Node, deadline: float, image_id: str | None = None) -> str:
        """Makes the node's container run (created, or recreated when its spec changed or `image_id` is
        newer), its image made present first unless given; returns its id. Raises StartError."""
        image_id = image_id or await self.ensure_image(model, deadline)
        return await self._starting(model, self._create_and_start(model, image_id, node))

    async def _starting(self, model: ModelConfig, step: Awaitable[T]) -> T:
        try:
            return await step
        except TimeoutError:
            pulling = self.images.pulling.get(model.image)
            raise StartError(
                504,
                "model_start_timeout",
                f"model {model.id!r}: its image was still being pulled "
                f"after {format_duration(model.start_timeout)} (start_timeout)"
                + (f"; {pulling.describe()}" if pulling else ""),
            ) from None
        except ImageMissing as exc:
            raise StartError(503, "image_missing", f"model {model.id!r} could not be started: {exc}") from None
        except ImagePullFailed as exc:
            raise StartError(503, "image_pull_failed", f"model {model.id!r} could not be started: {exc}") from None
        except DockerError as exc:
            raise StartError(503, "model_start_failed", f"model {model.id!r} could not be started: {exc}") from None

    async def _create_and_start(self, model: ModelConfig, image_id: str, node: Node) -> str:
        spec = node.spec
        info = await self.runtime.find(model.id, node.worker)
        outdated = (
            "spec changed"
            if info is not None and info.spec_hash != spec["Labels"][LABEL_SPEC]
            else ("image updated" if info is not None and not info.running and info.image_id != image_id else "")
        )
        if info is not None and outdated:
            log.info("container_recreate", model=model.id, container=info.name, reason=outdated)
            if info.running:
                await self.runtime.stop(info.id, model.stop_timeout)
            await self.runtime.remove(info.id)
            info = None
        if info is None:
            container_id = await self._create(node)
            log.info("container_created", model=model.id, container=container_id[:12])
        else:
            container_id = info.id
        if info is not None and info.running:
            return container_id
        try:
            await self.runtime.start(container_id)
        except DockerError as exc:
            # A container that cannot start is not kept: the next start would find its spec hash
            # matching and fail the same way (say it still names a network recreated since).
            await self.runtime.remove(container_id)
            if info is None:
                raise
            log.info("container_recreate", model=model.id, container=info.name, reason=f"start failed: {exc}")
            container_id = await self._create(node)
            try:
                await self.runtime.start(container_id)
            except DockerError:
                await self.runtime.remove(container_id)
                raise
        log.info("container_started", model=model.id, container=container_id[:12])
        return container_id

    async def _create(self, node: Node) -> str:
        spec = node.spec
        container_id = await self.runtime.create(node.name, spec)
        if LABEL_EGRESS in spec["Labels"]:
            try:
                await self.runtime.connect(spec["Labels"][LABEL_EGRESS], container_id)
            except DockerError:
                await self.runtime.remove(container_id)  # else the next start would run it unconnected
                raise
        return container_id

    async def adopt(self, model: ModelConfig, container_id: str, deadline: float, died: asyncio.Event) -> None:
        model = self._here(model)
        await self.wait_healthy(model, deadline, died, _OneContainer(self, model, container_id))

    async def running(self) -> dict[str, str]:
        return {
            info.model_id: info.id for info in await self.runtime.managed_containers() if info.running and info.serves
        }

    async def follow(
        self,
        on_event: Callable[[ContainerEvent], None],
        on_connect: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        await docker_events.follow(self.runtime, on_event, on_connect, on_lost)

    async def log_tail(self, container_id: str) -> str:
        return await self.runtime.logs_tail(container_id, LOG_TAIL_LINES)

    async def memory_use(self, container_id: str) -> ContainerMemory | None:
        return await self.runtime.memory_use(container_id)

    async def host_memory(self, images: tuple[str, ...]) -> HostMemory:
        return await self.runtime.host_memory(images)

    async def end_memory_readings(self) -> None:
        await self.runtime.remove_memory_probe()

    async def externals(self, entries: tuple[ExternalConfig, ...]) -> list[ExternalContainer]:
        return await self.runtime.externals(entries)

    async def pause(self, container: ExternalContainer, unpause: bool = False) -> None:
        await self.runtime.pause(container, unpause)

    async def container(self, model_id: str) -> str | None:
        info = await self.runtime.find(model_id)
        return info.id if info is not None else None

    async def logs(self, container_id: str, tail: int) -> str:
        return await self.runtime.logs_tail(container_id, tail)

    def follow_logs(self, container_id: str, tail: int) -> AsyncIterator[str]:
        return self.runtime.follow_logs(container_id, tail)

    async def loading_log(self, model_id: str, since: float) -> AsyncIterator[str]:
        info = await self.runtime.find(model_id)
        if info is not None and info.running:
            read = self._read[model_id] = deque(maxlen=LOG_TAIL_LINES)
            async for chunk in self.runtime.follow_logs(info.id, since=since):
                read.extend(line for line in chunk.splitlines() if line.strip())
                yield chunk

    async def last_lines(self, model_id: str, container_id: str) -> str:
        """The container's last log lines: Docker's, else those the loading log read of this start."""
        return await self.runtime.logs_tail(container_id, LOG_TAIL_LINES) or "\n".join(self._read.get(model_id, ()))

    def pulling(self, image: str) -> PullProgress | None:
        return self.images.pulling.get(image)

    async def wait_healthy(self, model: ModelConfig, deadline: float, died: asyncio.Event, watch: Watch) -> None:
        """Polls the model's health check until it answers, checking `watch` for an exit when `died`
        is set (and every EXIT_CHECK_INTERVAL, in case the events stream is down); at `deadline`
        stops what `watch` holds and raises StartError."""
        model = self._here(model)
        url = f"{model.address.url}{model.health}"
        next_exit_check = self.clock() + EXIT_CHECK_INTERVAL
        while True:
            if await self.healthy(model):
                return
            now = self.clock()
            if died.is_set() or now >= next_exit_check:
                await watch.check_exited()
                died.clear()
                next_exit_check = now + EXIT_CHECK_INTERVAL
            if now >= deadline:
                tail = await watch.give_up()
                raise StartError(
                    504,
                    "model_start_timeout",
                    f"model {model.id!r} was not ready after {format_duration(model.start_timeout)} "
                    f"(start_timeout; its health check is {url}); it was stopped. Last log lines:\n{tail}",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(died.wait(), HEALTH_POLL_INTERVAL)

    async def _fail_if_exited(self, model: ModelConfig, container_id: str) -> None:
        try:
            info = await self.runtime.inspect(container_id)
        except DockerError as exc:
            raise StartError(503, "model_start_failed", f"model {model.id!r}: {exc}") from None
        if info.running:
            return
        tail = await self.last_lines(model.id, container_id)
        raise StartError(
            503,
            "model_exited",
            f"model {model.id!r} exited with code {info.exit_code} while loading"
            + (f" ({info.error})" if info.error else "")
            + (f"; last log lines:\n{tail}" if tail else "; it printed nothing"),
        )

    async def healthy(self, model: ModelConfig) -> bool:
        model = self._here(model)
        return await probe.healthy(self._http, f"{model.address.url}{model.health}")

    async def busy(self, model: ModelConfig) -> int | None:
        return await probe.busy(self._http, self._here(model).address.url)

    async def sleep(self, model: ModelConfig) -> None:
        model = self._here(model)
        await engine_sleep.sleep(self._http, engine_sleep.Engine.of(model), model.sleep.level, model.sleep.wake_timeout)

    async def wake(self, model: ModelConfig) -> None:
        model = self._here(model)
        await engine_sleep.wake(self._http, engine_sleep.Engine.of(model), model.sleep.level, model.sleep.wake_timeout)

    async def is_sleeping(self, model: ModelConfig) -> bool:
        model = self._here(model)
        return await engine_sleep.is_sleeping(self._http, engine_sleep.Engine.of(model), model.sleep.wake_timeout)

    async def prepare(self, model: ModelConfig, node: Node | None = None) -> dict[str, str]:
        """Makes a model ready to start fast: its image present (pulled as its policy allows) and its
        container created, not started. Reports what it found and did."""
        model = self._here(model)
        report: dict[str, str] = {}
        try:
            before = await self.runtime.image_id(model.image)
            try:
                image_id = await self.images.ensure(model)
            except (ImageMissing, ImagePullFailed) as exc:
                return {"image": "missing", "error": str(exc)}
            report["image"] = "present" if before == image_id else "pulled"
            node = node or self.node(model)
            info = await self.runtime.find(model.id, node.worker)
            if info is not None and info.spec_hash == node.spec["Labels"][LABEL_SPEC] and info.image_id == image_id:
                report["container"] = "exists"
            elif info is not None and info.running:
                report["container"] = "outdated, running: recreated at its next start"
            else:
                if info is not None:
                    await self.runtime.remove(info.id)
                await self._create(node)
                report["container"] = "recreated" if info is not None else "created"
        except DockerError as exc:
            report["error"] = str(exc)
        return report

    async def down(self, model: ModelConfig, container_id: str | None, grace: float | None = None) -> None:
        """Stops the container; returns once it has exited (Docker's stop waits for the exit)."""
        if container_id is None:
            info = await self.runtime.find(model.id)
            if info is None:
                return
            container_id = info.id
        await self.runtime.stop(container_id, model.stop_timeout if grace is None else grace)


@dataclass(frozen=True, slots=True)
class _OneContainer:
    launcher: Launcher
    model: ModelConfig
    container_id: str

    async def check_exited(self) -> None:
        await self.launcher._fail_if_exited(self.model, self.container_id)

    async def give_up(self) -> str:
        tail = await self.launcher.last_lines(self.model.id, self.container_id)
        await self.launcher.down(self.model, self.container_id)
        return tail
