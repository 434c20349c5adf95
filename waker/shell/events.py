"""In-process publication of what happens (state changes, starts, stops, refusals) to any listener,
such as the admin events stream. Publishing never blocks: a listener that falls behind loses the
oldest events rather than slowing the waker down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import structlog

log = structlog.get_logger("waker.shell.events")

QUEUE_SIZE = 1000


class EventKind(StrEnum):
    """Everything the waker publishes (the `type` of an admin event, the name of its log line)."""

    MODEL_STATE = "model_state"  # every transition, with `previous` and `trigger`
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
    MODEL_ASLEEP = "model_asleep"  # with `reason` (idle, room, manual) and `seconds` the sleep took
    MODEL_AWAKE = "model_awake"  # with `seconds` the wake took and `asleep_seconds`
    SLEEP_CALLED_OFF = "sleep_called_off"  # requests in flight, or nginx's gate could not close
    SLEEP_FAILED = "sleep_failed"  # the engine refused or did not finish: the model is stopped
    WAKE_FAILED = "wake_failed"  # with `step`, `timed_out`, `wake_failures`: the model is stopped, then started cold
    IMAGE_PULL = "image_pull"
    LOADING_STAGE = "loading_stage"  # a starting engine's latest loading stage, read from its log
    CONFIG_RELOADED = "config_reloaded"
    HOST_LOST = "host_lost"  # a host's engine went away (several hosts): with `error` and the `models` marked down
    HOST_BACK = "host_back"  # it answers again: its running containers were listed and adopted


class EventBus:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._sinks: list[Callable[[dict[str, Any]], None]] = []

    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """A synchronous observer of every event (the metrics counters)."""
        self._sinks.append(sink)

    def publish(self, kind: EventKind, **fields: Any) -> None:
        event = {"type": kind.value, "time": time.time(), **fields}
        log.info(kind.value, **fields)
        for sink in self._sinks:
            sink(event)
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._listeners.discard(queue)
