"""What the waker publishes, one frozen dataclass per kind: the logs, the admin events stream, the
metrics and the loading feedback read fields, never keys. Its fields are the JSON an event is sent as
(every enum here is a StrEnum, whose JSON is its value); the bus adds `type` and `time` (`shell.events`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from waker.core.lifecycle import Event, SleepReason, State, StopReason
from waker.errors import SleepStep


class EventKind(StrEnum):
    """Everything the waker publishes (the `type` of an admin event, the name of its log line)."""

    MODEL_STATE = "model_state"
    MODEL_READY = "model_ready"
    MODEL_STOPPED = "model_stopped"
    MODEL_EXITED = "model_exited"
    MODEL_OOM = "model_oom"
    MODEL_BACKOFF = "model_backoff"
    MODEL_UNREACHABLE = "model_unreachable"
    MODEL_PINNED = "model_pinned"
    MODEL_UNPINNED = "model_unpinned"
    REQUEST_QUEUED = "request_queued"
    REQUEST_REFUSED = "request_refused"
    REQUEST_ABANDONED = "request_abandoned"
    CONTAINER_ADOPTED = "container_adopted"
    IDLE_STOP_POSTPONED = "idle_stop_postponed"
    MODEL_ASLEEP = "model_asleep"
    MODEL_AWAKE = "model_awake"
    SLEEP_CALLED_OFF = "sleep_called_off"
    SLEEP_FAILED = "sleep_failed"
    WAKE_FAILED = "wake_failed"
    IMAGE_PULL = "image_pull"
    LOADING_STAGE = "loading_stage"
    CONFIG_RELOADED = "config_reloaded"
    HOST_LOST = "host_lost"
    HOST_BACK = "host_back"
    MEMORY_GUARD = "memory_guard"
    PAGE_CACHE_DROPPED = "page_cache_dropped"


@dataclass(frozen=True, slots=True)
class WakerEvent:
    kind: ClassVar[EventKind]


@dataclass(frozen=True, slots=True)
class ModelStateChanged(WakerEvent):
    """Every transition, with what triggered it."""

    kind = EventKind.MODEL_STATE
    model: str
    state: State
    previous: State
    trigger: Event
    error: str | None = None  # the failure's message, for a transition to failed


@dataclass(frozen=True, slots=True)
class ModelReady(WakerEvent):
    kind = EventKind.MODEL_READY
    model: str
    seconds: float  # how long the start (or adoption) took


@dataclass(frozen=True, slots=True)
class ModelStopped(WakerEvent):
    kind = EventKind.MODEL_STOPPED
    model: str
    reason: StopReason
    for_model: str | None = None  # the model an eviction made room for
    server_requests: int | None = None  # an idle stop: what the engine reported (None: it did not answer)


@dataclass(frozen=True, slots=True)
class ModelExited(WakerEvent):
    """Its container exited without being asked (a crash, whatever the code)."""

    kind = EventKind.MODEL_EXITED
    model: str
    exit_code: str


@dataclass(frozen=True, slots=True)
class ModelOom(WakerEvent):
    kind = EventKind.MODEL_OOM
    model: str


@dataclass(frozen=True, slots=True)
class MemoryGuardTripped(WakerEvent):
    """`host`'s available memory fell below its floor: the guard stopped `model` (it was `state`)."""

    kind = EventKind.MEMORY_GUARD
    model: str
    state: State
    available_bytes: int
    total_bytes: int
    floor_bytes: int
    host: str


@dataclass(frozen=True, slots=True)
class PageCacheDropped(WakerEvent):
    """Before `model`'s start, free memory could not cover what it needs but reclaimable cache could:
    the kernel's clean caches were dropped ([scheduler] drop_page_cache)."""

    kind = EventKind.PAGE_CACHE_DROPPED
    model: str
    need_bytes: int
    free_before_bytes: int
    free_after_bytes: int


@dataclass(frozen=True, slots=True)
class ModelBackoff(WakerEvent):
    """Too many failed runs in a row: requests fail fast for `seconds`."""

    kind = EventKind.MODEL_BACKOFF
    model: str
    failures: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ModelUnreachable(WakerEvent):
    """Believed ready, but its health check failed when nginx could not reach it."""

    kind = EventKind.MODEL_UNREACHABLE
    model: str


@dataclass(frozen=True, slots=True)
class ModelPinned(WakerEvent):
    kind = EventKind.MODEL_PINNED
    model: str


@dataclass(frozen=True, slots=True)
class ModelUnpinned(WakerEvent):
    kind = EventKind.MODEL_UNPINNED
    model: str


@dataclass(frozen=True, slots=True)
class RequestQueued(WakerEvent):
    kind = EventKind.REQUEST_QUEUED
    model: str
    waiter: int
    queue_length: int


@dataclass(frozen=True, slots=True)
class RequestRefusal(WakerEvent):
    kind = EventKind.REQUEST_REFUSED
    model: str
    status: int
    error: str


@dataclass(frozen=True, slots=True)
class RequestAbandoned(WakerEvent):
    """The client left while its request was queued."""

    kind = EventKind.REQUEST_ABANDONED
    model: str
    waiter: int


@dataclass(frozen=True, slots=True)
class ContainerAdopted(WakerEvent):
    """A container found running (a waker restart, a start by hand) is taken in."""

    kind = EventKind.CONTAINER_ADOPTED
    model: str
    container: str  # its short id
    hosts: tuple[str, ...] | None = None  # with several hosts: where it runs, the head first


@dataclass(frozen=True, slots=True)
class IdleStopPostponed(WakerEvent):
    """An idle stop called off: the engine or nginx said requests were in flight."""

    kind = EventKind.IDLE_STOP_POSTPONED
    model: str
    server_requests: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class ModelAsleep(WakerEvent):
    kind = EventKind.MODEL_ASLEEP
    model: str
    reason: SleepReason
    for_model: str | None
    seconds: float  # how long falling asleep took


@dataclass(frozen=True, slots=True)
class ModelAwake(WakerEvent):
    kind = EventKind.MODEL_AWAKE
    model: str
    seconds: float  # how long the wake (and its check) took
    asleep_seconds: float


@dataclass(frozen=True, slots=True)
class SleepCalledOff(WakerEvent):
    """A sleep called off: requests in flight, or nginx's gate could not close."""

    kind = EventKind.SLEEP_CALLED_OFF
    model: str
    reason: str
    server_requests: int | None = None
    in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class SleepFailed(WakerEvent):
    """The engine refused to sleep or did not finish: the model is stopped."""

    kind = EventKind.SLEEP_FAILED
    model: str
    step: SleepStep
    timed_out: bool
    error: str


@dataclass(frozen=True, slots=True)
class WakeFailed(WakerEvent):
    """A wake failed, hung or left an engine that does not serve: the model is stopped, then started cold."""

    kind = EventKind.WAKE_FAILED
    model: str
    step: SleepStep
    timed_out: bool
    error: str
    wake_failures: int


@dataclass(frozen=True, slots=True)
class ImagePull(WakerEvent):
    kind = EventKind.IMAGE_PULL
    image: str
    models: tuple[str, ...]
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    host: str | None = None  # with several hosts: whose engine pulls


@dataclass(frozen=True, slots=True)
class LoadingStage(WakerEvent):
    """A starting engine's latest loading stage, read from its log."""

    kind = EventKind.LOADING_STAGE
    model: str
    step: str
    text: str
    percent: int | None


@dataclass(frozen=True, slots=True)
class ConfigReloaded(WakerEvent):
    kind = EventKind.CONFIG_RELOADED
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostLost(WakerEvent):
    """A host's engine went away (several hosts): its models were marked down."""

    kind = EventKind.HOST_LOST
    host: str
    error: str
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostBack(WakerEvent):
    """A host's engine answers again: its running containers were listed and adopted."""

    kind = EventKind.HOST_BACK
    host: str
