"""The scheduler's values: what it knows of each model (`Slot`), of each held request (`Waiter`), the
policy it applies, and the `Plan` it returns (actions for the shell to carry out, and when to ask again).
Frozen, so that `decide` stays a pure function of them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from waker.config.hosts import IMPLICIT_HOST
from waker.config.schema import OnBusy
from waker.core.lifecycle import Event, SleepReason, State, StopReason, next_state


@dataclass(frozen=True, slots=True)
class MemoryView:
    """A host's memory as the scheduler weighs a start against it: what is available now (bytes), the
    floor kept free, and whether memory a stop freed is still on its way back."""

    available: int
    total: int
    floor: int
    releasing: bool = False

    @property
    def headroom(self) -> int:
        return self.available - self.floor


@dataclass(frozen=True, slots=True)
class HostBudget:
    """One host's share of the GPU, and whether its engine answers (a host that does not takes no start)."""

    name: str
    capacity: float
    up: bool = True
    memory: MemoryView | None = None  # None: not measured (a remote host)


@dataclass(frozen=True, slots=True)
class Policy:
    capacity: float = 1.0
    on_busy: OnBusy = OnBusy.QUEUE
    queue_timeout: float = 600.0
    max_start_failures: int = 3
    start_backoff: float = 120.0
    max_wake_failures: int = 2
    hosts: tuple[HostBudget, ...] = ()  # none: one host, the local engine, with `capacity`

    @property
    def budgets(self) -> tuple[HostBudget, ...]:
        return self.hosts or (HostBudget(IMPLICIT_HOST, self.capacity),)


@dataclass(frozen=True, slots=True)
class Slot:
    """What the scheduler knows of one model."""

    id: str
    gpu_memory: float = 0.0
    memory: int = 0  # bytes of host memory it is expected to take (declared); 0: not known
    exclusive: bool = False
    keep_warm: bool = False
    pinned: bool = False
    suspended: bool = False  # a keep_warm model stopped by hand stays down until asked for
    idle_timeout: float = 0.0
    min_uptime: float = 0.0
    state: State = State.STOPPED
    since: float = 0.0  # when it entered its state
    in_flight: int = 0
    last_active: float = 0.0  # end of the last request, or when the model became ready
    ready_since: float = 0.0
    starting_since: float = 0.0
    expected_start_seconds: float | None = None  # how long its last successful start took
    oldest_request_since: float | None = None  # start of its oldest in-flight request
    mean_request_seconds: float | None = None
    failures: int = 0  # consecutive failed runs: starts that failed, or crashes while serving
    retry_at: float = 0.0  # while now < retry_at (after too many failures), requests fail fast
    last_error: str = ""
    sleep_level: int = 0  # vLLM's sleep level, 1 or 2; 0: never sleeps
    sleep_memory: float = 0.0  # what it holds while asleep
    sleep_timeout: float = 0.0  # asleep this long (from `since`), it is stopped; 0: never for time
    wake_failures: int = 0  # consecutive failed wakes
    hosts: tuple[str, ...] = ()  # where it runs (head first), or where it last ran; () = never placed
    host: str = ""  # the host it must run on (its head's, for two hosts); "" = wherever it fits
    host_count: int = 1  # 2: tensor-parallel over two hosts, charged on both

    def moved(self, event: Event, now: float) -> Slot:
        """This slot after the lifecycle transition `event` at `now`; raises IllegalTransition."""
        return replace(self, state=next_state(self.state, event), since=now)


@dataclass(frozen=True, slots=True)
class Waiter:
    id: int
    model: str
    since: float


@dataclass(frozen=True, slots=True)
class Start:
    model: str
    hosts: tuple[str, ...] = ()  # where to start it, the head first


@dataclass(frozen=True, slots=True)
class Stop:
    model: str
    reason: StopReason
    for_model: str | None = None  # the model an eviction makes room for


@dataclass(frozen=True, slots=True)
class Sleep:
    model: str
    reason: SleepReason
    for_model: str | None = None


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake a sleeping model; every waiter for it shares this one wake."""

    model: str


@dataclass(frozen=True, slots=True)
class Grant:
    waiter: int


@dataclass(frozen=True, slots=True)
class Holder:
    """A model standing between a request and the GPU, as reported to the refused client."""

    model: str
    state: str
    in_flight: int
    idle_seconds: int
    expected_release_seconds: int | None


@dataclass(frozen=True, slots=True)
class Refuse:
    waiter: int
    status: int
    code: str
    message: str
    retry_after: int | None = None
    holders: tuple[Holder, ...] = ()


Action = Start | Stop | Sleep | Wake | Grant | Refuse


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...] = ()
    wake_at: float | None = None  # call decide again at this time even if nothing else happens

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]
