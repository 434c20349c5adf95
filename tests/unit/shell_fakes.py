"""A fake clock and a fake driver, so the shell (`Supervisor`, `ManualControl`) runs its real rules
without Docker and without real time: a test advances the clock and scripts what the engines do."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from tests.eventually import eventually_async
from waker.config.externals import ExternalConfig
from waker.config.hosts import IMPLICIT_HOST
from waker.config.schema import Config, ModelConfig, parse_config
from waker.core.driver import ContainerEvent, Memory
from waker.core.events import WakerEvent
from waker.core.externals import ExternalContainer
from waker.core.image_pull import PullProgress
from waker.core.lifecycle import State
from waker.core.memory import ContainerMemory, HostMemory
from waker.errors import DriverError, NginxError, SleepModeError, SleepStep, StartError
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet, PairFactory
from waker.shell.manual_control import ManualControl
from waker.shell.supervisor import Supervisor

E = TypeVar("E", bound=WakerEvent)


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def when(self) -> float:
        return self.at


class FakeClock:
    """Time moves only when the test says so; timers and sleeps fire as it passes them."""

    def __init__(self, now: float = 1000.0) -> None:
        self.t = now
        self.timers: list[FakeTimer] = []
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = (self.t + seconds, done)
        self.sleepers.append(sleeper)
        try:
            await done
        finally:  # a sleep given up (the memory guard's, when poked) waits no more
            if sleeper in self.sleepers:
                self.sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        self.t += seconds
        due = sorted((t for t in self.timers if t.at <= self.t and not t.cancelled), key=lambda t: t.at)
        self.timers = [t for t in self.timers if t.at > self.t and not t.cancelled]
        for timer in due:
            timer.callback()
        for at, done in [s for s in self.sleepers if s[0] <= self.t]:
            self.sleepers.remove((at, done))
            if not done.cancelled():  # given up, its task not yet resumed to take it off the list
                done.set_result(None)

    def pending(self) -> list[float]:
        return sorted(t.at for t in self.timers if not t.cancelled)


@dataclass
class FakeDriver:
    """Engines that do what the test scripts: starts succeed at once unless a gate holds them or an
    outcome (a StartError) is queued for the model."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    outcomes: dict[str, deque[StartError]] = field(default_factory=lambda: defaultdict(deque))
    gates: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    running_now: dict[str, str] = field(default_factory=dict)
    unhealthy: set[str] = field(default_factory=set)
    busy_counts: dict[str, int | None] = field(default_factory=dict)
    busy_unanswered: dict[str, int] = field(default_factory=dict)  # busy checks left unanswered per model
    down_failures: int = 0
    tails: dict[str, str] = field(default_factory=dict)
    loading_lines: dict[str, list[str]] = field(default_factory=dict)
    pulls: dict[str, PullProgress] = field(default_factory=dict)
    stopped_containers: dict[str, str] = field(default_factory=dict)  # model -> its container, stopped
    memory_in_use: dict[str, ContainerMemory] = field(default_factory=dict)  # container -> its stats' memory
    memory_refused: set[str] = field(default_factory=set)  # containers whose stats the engine refuses
    external_containers: dict[str, ExternalContainer] = field(default_factory=dict)  # other workloads', by id
    host_memory_now: HostMemory | DriverError = DriverError("no memory probe here")  # what `host_memory` gives
    memory_reads: list[tuple[str, ...]] = field(default_factory=list)  # the images of each `host_memory` call
    memory_readings_ended: bool = False
    starts: int = 0
    closed: bool = False
    asleep: set[str] = field(default_factory=set)  # engines that say they sleep
    sleep_outcomes: dict[str, deque[SleepModeError]] = field(default_factory=lambda: defaultdict(deque))
    wake_outcomes: dict[str, deque[SleepModeError]] = field(default_factory=lambda: defaultdict(deque))
    sleep_gates: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    wake_gates: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    busy_checks: dict[str, tuple[asyncio.Event, asyncio.Future[int | None]]] = field(default_factory=dict)
    _on_event: Callable[[ContainerEvent], None] | None = None
    _on_connect: Callable[[], Awaitable[None]] | None = None
    _on_lost: Callable[[str], None] | None = None

    def hold(self, model_id: str) -> asyncio.Future[None]:
        """The model's next start (or adoption) waits until the returned future is resolved."""
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates[model_id] = gate
        return gate

    async def _come_up(self, model: ModelConfig, container_id: str, died: asyncio.Event) -> None:
        gate = self.gates.pop(model.id, None)
        if gate is not None:
            dying = asyncio.ensure_future(died.wait())
            await asyncio.wait([gate, dying], return_when=asyncio.FIRST_COMPLETED)
            dying.cancel()
            if died.is_set():
                self.running_now.pop(model.id, None)
                raise StartError(503, "model_exited", f"model {model.id!r} exited with code 1 while loading")
        if self.outcomes[model.id]:
            self.running_now.pop(model.id, None)
            raise self.outcomes[model.id].popleft()

    async def up(self, model: ModelConfig, died: asyncio.Event) -> str:
        self.starts += 1
        container_id = f"{model.id}-{self.starts}"
        self.calls.append(("up", model.id))
        self.running_now[model.id] = container_id
        await self._come_up(model, container_id, died)
        return container_id

    async def adopt(self, model: ModelConfig, container_id: str, deadline: float, died: asyncio.Event) -> None:
        self.calls.append(("adopt", model.id, container_id))
        await self._come_up(model, container_id, died)

    async def down(self, model: ModelConfig, container_id: str | None, grace: float | None = None) -> None:
        self.calls.append(("down", model.id, container_id) if grace is None else ("kill", model.id, container_id))
        if self.down_failures:
            self.down_failures -= 1
            raise DriverError("the Docker engine refused the stop")
        if (stopped := self.running_now.pop(model.id, None)) is not None:
            self.stopped_containers[model.id] = stopped

    async def healthy(self, model: ModelConfig) -> bool:
        return model.id in self.running_now and model.id not in self.unhealthy

    async def busy(self, model: ModelConfig) -> int | None:
        self.calls.append(("busy", model.id))
        if self.busy_unanswered.get(model.id):
            self.busy_unanswered[model.id] -= 1
            raise DriverError("http://127.0.0.1:8000/metrics did not answer within 10 s")
        if model.id in self.busy_checks:
            asked, answer = self.busy_checks.pop(model.id)
            asked.set()
            return await answer
        return self.busy_counts.get(model.id)

    def hold_busy(self, model_id: str) -> tuple[asyncio.Event, asyncio.Future[int | None]]:
        """The model's next busy check is set as asked, and answers what the future is resolved with."""
        check = (asyncio.Event(), asyncio.get_running_loop().create_future())
        self.busy_checks[model_id] = check
        return check

    async def running(self) -> dict[str, str]:
        return dict(self.running_now)

    async def follow(
        self,
        on_event: Callable[[ContainerEvent], None],
        on_connect: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        self._on_event, self._on_connect, self._on_lost = on_event, on_connect, on_lost
        await on_connect()
        await asyncio.Event().wait()

    async def log_tail(self, container_id: str) -> str:
        return self.tails.get(container_id, "")

    async def externals(self, entries: tuple[ExternalConfig, ...]) -> list[ExternalContainer]:
        self.calls.append(("externals",))
        return [c for c in self.external_containers.values() if c.external in entries]

    async def pause(self, container: ExternalContainer, unpause: bool = False) -> None:
        self.calls.append(("unpause" if unpause else "pause", container.name))
        self.external_containers[container.id] = replace(container, paused=not unpause)

    async def host_memory(self, images: tuple[str, ...]) -> HostMemory:
        self.memory_reads.append(images)
        if isinstance(self.host_memory_now, DriverError):
            raise self.host_memory_now
        return self.host_memory_now

    async def end_memory_readings(self) -> None:
        self.memory_readings_ended = True

    async def memory_use(self, container_id: str) -> ContainerMemory | None:
        if container_id in self.memory_refused:
            raise DriverError(f"cannot read container {container_id}'s stats")
        return self.memory_in_use.get(container_id)

    async def container(self, model_id: str) -> str | None:
        return self.running_now.get(model_id) or self.stopped_containers.get(model_id)

    async def logs(self, container_id: str, tail: int) -> str:
        return "\n".join(self.tails.get(container_id, "").splitlines()[-tail:] if tail else [])

    async def follow_logs(self, container_id: str, tail: int) -> AsyncIterator[str]:
        for line in (await self.logs(container_id, tail)).splitlines():
            yield line

    async def loading_log(self, model_id: str, since: float) -> AsyncIterator[str]:
        for line in self.loading_lines.get(model_id, ()):
            yield line

    async def prepare(self, model: ModelConfig) -> dict[str, str]:
        return {"image": "present", "container": "created"}

    def pulling(self, image: str) -> PullProgress | None:
        return self.pulls.get(image)

    async def close(self) -> None:
        self.closed = True

    async def sleep(self, model: ModelConfig) -> None:
        self.calls.append(("sleep", model.id))
        await self._scripted(model.id, self.sleep_gates, self.sleep_outcomes)
        self.asleep.add(model.id)

    async def wake(self, model: ModelConfig) -> None:
        self.calls.append(("wake", model.id))
        await self._scripted(model.id, self.wake_gates, self.wake_outcomes)
        self.asleep.discard(model.id)

    async def is_sleeping(self, model: ModelConfig) -> bool:
        return model.id in self.asleep

    async def _scripted(
        self, model_id: str, gates: dict[str, asyncio.Future[None]], outcomes: dict[str, deque[SleepModeError]]
    ) -> None:
        gate = gates.pop(model_id, None)
        if gate is not None:
            await gate
        if outcomes[model_id]:
            raise outcomes[model_id].popleft()

    def hold_sleep(self, model_id: str) -> asyncio.Future[None]:
        """The model's next sleep call waits until the returned future is resolved."""
        self.sleep_gates[model_id] = gate = asyncio.get_running_loop().create_future()
        return gate

    def hold_wake(self, model_id: str) -> asyncio.Future[None]:
        self.wake_gates[model_id] = gate = asyncio.get_running_loop().create_future()
        return gate

    def fail_wake(self, model_id: str, times: int = 1, timed_out: bool = False) -> None:
        for _ in range(times):
            self.wake_outcomes[model_id].append(
                SleepModeError(SleepStep.CHECK_SERVES, "the check completion failed: connection reset", timed_out)
            )

    # ---- what the engine does on its own --------------------------------------------------------

    def emit(self, event: ContainerEvent) -> None:
        assert self._on_event is not None, "the supervisor is not following the driver yet"
        self._on_event(event)

    def lose(self, reason: str) -> None:
        assert self._on_lost is not None
        self._on_lost(reason)

    async def reconnect(self) -> None:
        assert self._on_connect is not None
        await self._on_connect()

    def up_calls(self, model_id: str) -> int:
        return sum(1 for c in self.calls if c[:2] == ("up", model_id))

    def count(self, kind: str, model_id: str) -> int:
        return sum(1 for c in self.calls if c[:2] == (kind, model_id))


class FakeNginx:
    """nginx as the shell drives it: `check` and `reload` (manual control), `route` (the sleep gate,
    as `nginx.process.NginxRouter`). Each reload or route is recorded in the driver's calls too, when given
    one, so a test sees the gate's order against the engines' calls."""

    def __init__(
        self, driver: FakeDriver | None = None, refuse_check: bool = False, refuse_reload: bool = False
    ) -> None:
        self.driver = driver
        self.refuse_check, self.refuse_reload = refuse_check, refuse_reload
        self.checked: list[Config] = []
        self.reloaded: list[Config] = []
        self.gates: list[frozenset[str]] = []  # the asleep set of every reload and route, in order

    async def check(self, config: Config) -> None:
        self.checked.append(config)
        if self.refuse_check:
            raise NginxError("nginx -t: unknown directive")

    async def reload(self, config: Config, asleep: frozenset[str] = frozenset()) -> None:
        if self.refuse_reload:
            raise NginxError("nginx did not reload")
        self.reloaded.append(config)
        self._record(asleep)

    async def route(self, config: Config, asleep: frozenset[str]) -> None:
        await asyncio.sleep(0)  # a real route awaits nginx: let others run meanwhile
        if self.refuse_reload:
            raise NginxError("nginx did not reload")
        self._record(asleep)

    def _record(self, asleep: frozenset[str]) -> None:
        self.gates.append(asleep)
        if self.driver is not None:
            self.driver.calls.append(("route", asleep))


def make_config(*models: dict[str, Any], **scheduler: Any) -> Config:
    entries = [{"image": "fake:test", "gpu_memory": 0.5, **m} for m in models]
    return parse_config({"scheduler": scheduler, "model": entries}, Path("/nonexistent/models.toml"))


@dataclass
class Shell:
    supervisor: Supervisor
    control: ManualControl
    driver: FakeDriver
    clock: FakeClock
    events: list[WakerEvent]

    def kinds(self, kind: type[E], **match: Any) -> list[E]:
        """The published events of `kind` whose fields have the values in `match`."""
        return [e for e in self.events if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())]

    async def reach(self, model_id: str, *states: State) -> None:
        assert await self.supervisor.wait_until(model_id, states, 2.0), (
            f"{model_id} is {self.supervisor.state(model_id).value}, not {[s.value for s in states]}"
        )


async def open_shell(
    config: Config,
    driver: FakeDriver | None = None,
    nginx: Any = None,
    router: Any = None,
    hosts: dict[str, FakeDriver] | None = None,
    pair: PairFactory | None = None,
    memory: Memory | None = None,
) -> Shell:
    """The shell over fakes; `router` (a FakeNginx, usually the same as `nginx`) turns sleep mode on.
    `hosts`: a driver per `[[host]]` of `config` (then `driver` is the first); `pair`: the driver of a
    model over two of them, from (head, worker); `memory`: this machine's memory, for the guard."""
    bus, events = EventBus(), list[WakerEvent]()
    bus.add_sink(events.append)
    drivers: dict[str, FakeDriver] = hosts or {IMPLICIT_HOST: driver or FakeDriver()}
    clock = FakeClock()
    supervisor = Supervisor(config, Fleet(drivers, pair), bus, clock, router, memory)
    await supervisor.open()
    await until(lambda: supervisor.hosts.settled and not supervisor.hosts.down(), "the first sync with each driver")
    return Shell(supervisor, ManualControl(supervisor, nginx), next(iter(drivers.values())), clock, events)


async def until(condition: Callable[[], Any], what: str) -> Any:
    async def check() -> Any:
        return condition()

    return await eventually_async(check, 2.0, what)
