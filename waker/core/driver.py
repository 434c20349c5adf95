"""The seams between the shell (`shell.supervisor`) and the world it acts on, passed in as small
interfaces.

A `Driver` brings a model's engine up and down, puts it to sleep and wakes it, and reports what
happens to it; a `HostDriver` also says what runs on one host's engine and follows its events.
`docker.launcher.Launcher` is the host driver of a Docker engine (one per host, the `shell.fleet`
picks it); `docker.ray_pair.RayPair` is the driver of a model over two hosts. Drivers raise the
project's own errors (`errors.StartError`, `DriverError`, `SleepModeError`), never their library's.

A `Router` is nginx's gate for sleep mode: requests for a model in sleep mode must reach the waker
(which wakes it) instead of the engine (which would answer them asleep).

`Memory` is this machine's memory as the memory guard reads it, and the models' footprints it has
learned, kept across restarts (`system.memory.ThisMachine`).

A `Clock` gives the time and the timers, so that the shell's rules (idle stops, back-off, queue
time-outs, stop retries) are unit-tested with a fake clock in microseconds instead of real seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from waker.config.externals import ExternalConfig
from waker.config.ray import RayNode
from waker.config.schema import Config, ModelConfig
from waker.core.externals import ExternalContainer
from waker.core.image_pull import PullProgress
from waker.core.memory import ContainerMemory, HostMemory


class ContainerChange(StrEnum):
    STARTED = "started"  # a container of a model started (by us, or by hand)
    DIED = "died"  # its process exited, whoever asked
    OOM = "oom"  # the kernel's OOM killer hit it


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    change: ContainerChange
    model_id: str
    container_id: str
    exit_code: str = "?"  # as the engine reports it; only for DIED
    ray_node: RayNode | None = None  # None: a one-host model's container


class Driver(Protocol):
    async def up(self, model: ModelConfig, died: asyncio.Event) -> str:
        """Makes `model` serve: creates or recreates its container, starts it, waits until healthy
        or `start_timeout`. Returns the container id; raises `StartError`. `died` is set by the
        shell when the container's death is reported, so the wait ends at once."""

    async def adopt(self, model: ModelConfig, container_id: str, deadline: float, died: asyncio.Event) -> None:
        """Waits until a container found running (a waker restart, a start by hand) is healthy."""

    async def down(self, model: ModelConfig, container_id: str | None, grace: float | None = None) -> None:
        """Stops the model's container (found by its labels when the id is not known), killing it after
        `grace` seconds (None: the model's stop_timeout; 0: at once); returns once it has exited.
        Raises `DriverError` when the engine refuses (the shell retries)."""

    async def healthy(self, model: ModelConfig) -> bool: ...

    async def memory_use(self, container_id: str) -> ContainerMemory | None:
        """The model's container's memory now; None if it does not run. Raises `DriverError`."""

    async def externals(self, entries: tuple[ExternalConfig, ...]) -> list[ExternalContainer]:
        """The running or paused containers of these `[[external]]` workloads. Raises `DriverError`."""

    async def pause(self, container: ExternalContainer, unpause: bool = False) -> None:
        """Pauses (unpauses) a `pause` workload's container, and nothing else. Raises `DriverError`."""

    async def busy(self, model: ModelConfig) -> int | None:
        """Requests the engine itself reports running or waiting, or None when it does not say;
        raises DriverError when it does not answer."""

    async def log_tail(self, container_id: str) -> str:
        """The container's last lines, for an error message ("" when they cannot be read)."""

    async def container(self, model_id: str) -> str | None:
        """The id of the model's container (running or not; its head's, over two hosts), or None."""

    async def logs(self, container_id: str, tail: int) -> str:
        """The container's last `tail` log lines."""

    def follow_logs(self, container_id: str, tail: int) -> AsyncIterator[str]:
        """The container's last `tail` log lines, then each line as it is written."""

    def loading_log(self, model_id: str, since: float) -> AsyncIterator[str]:
        """The log of the model's running container from `since` (a Unix time), as it is written;
        nothing when no container of it runs. Raises `DriverError` when the engine fails."""

    async def prepare(self, model: ModelConfig) -> dict[str, str]:
        """Makes a start fast (image present, container created); reports what it found and did."""

    def pulling(self, image: str) -> PullProgress | None:
        """The progress of the pull of `image` in progress, if one is."""

    async def sleep(self, model: ModelConfig) -> None:
        """Puts the model's engine to sleep at its `sleep` level; raises `SleepModeError`. The shell
        makes sure no request is in flight first."""

    async def wake(self, model: ModelConfig) -> None:
        """Wakes the model's engine and checks that it serves; raises `SleepModeError`."""

    async def is_sleeping(self, model: ModelConfig) -> bool:
        """What the engine says (an adopted container may be asleep); raises `SleepModeError`."""

    async def close(self) -> None: ...


class HostDriver(Driver, Protocol):
    """The driver of one host's engine (`launcher.Launcher`): besides a model's calls, what runs on that
    engine and what happens there. A model over two hosts has a `Driver` made of two of these."""

    async def running(self) -> dict[str, str]:
        """The models whose container runs now, with its id: what a resync adopts."""

    async def follow(
        self,
        on_event: Callable[[ContainerEvent], None],
        on_connect: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        """Runs until cancelled: calls `on_connect` each time the engine's event stream is (re)opened
        (before any event, so a listing then loses nothing), `on_event` for each event of a managed
        container, and `on_lost` with the reason when the engine goes away."""

    async def host_memory(self, images: tuple[str, ...]) -> HostMemory:
        """The host's memory as read through its engine, by a small container made (once) from the
        first of `images` the host has. Raises `DriverError` when there is no reading."""

    async def end_memory_readings(self) -> None:
        """Removes what `host_memory` left on the host; raises `DriverError`."""


class Router(Protocol):
    async def route(self, config: Config, asleep: frozenset[str]) -> None:
        """Has nginx route `config` with the gate of the models in `asleep` closed (their requests go
        to the waker); returns once nginx routes so. Raises `NginxError`."""


class Memory(Protocol):
    def read(self) -> HostMemory:
        """This machine's memory now; raises OSError (or KeyError, ValueError) when it cannot be read."""

    def learned(self) -> dict[str, int]:
        """The footprints (bytes) learned of models at their starts, as last remembered."""

    def remember(self, footprints: Mapping[str, int]) -> None:
        """Keeps `footprints` for the next run; raises OSError when it cannot."""

    def paused(self) -> dict[str, list[str]]:
        """Other workloads' containers the waker paused (by id), with the models each was paused for."""

    def remember_paused(self, paused: Mapping[str, list[str]]) -> None:
        """Keeps `paused` for the next run; raises OSError when it cannot."""

    def drop_page_cache(self) -> None:
        """Writes dirty pages out, then has the kernel drop its clean caches; blocks (call it in a
        thread); raises OSError when it may not (not root, or in a container)."""


class Timer(Protocol):
    def cancel(self) -> None: ...

    def when(self) -> float: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...

    async def sleep(self, seconds: float) -> None: ...
