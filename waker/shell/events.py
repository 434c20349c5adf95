"""In-process publication of what happens (state changes, starts, stops, refusals) to any listener,
such as the admin events stream. Publishing never blocks: a listener that falls behind loses the
oldest events rather than slowing the waker down. The events are `core.events`' typed values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from waker.core.events import WakerEvent

log = structlog.get_logger("waker.shell.events")

QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Published:
    """An event as it was published: when (a Unix time), and what."""

    time: float
    event: WakerEvent

    def as_json(self) -> dict[str, Any]:
        """The admin events stream's object: `type`, `time`, then the event's fields."""
        return {"type": self.event.kind.value, "time": self.time, **asdict(self.event)}


class EventBus:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[Published]] = set()
        self._sinks: list[Callable[[WakerEvent], None]] = []

    def add_sink(self, sink: Callable[[WakerEvent], None]) -> None:
        """A synchronous observer of every event (the metrics counters)."""
        self._sinks.append(sink)

    def publish(self, event: WakerEvent) -> None:
        published = Published(time.time(), event)
        log.info(event.kind.value, **asdict(event))
        for sink in self._sinks:
            sink(event)
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(published)

    def listen(self) -> asyncio.Queue[Published]:
        queue: asyncio.Queue[Published] = asyncio.Queue(QUEUE_SIZE)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[Published]) -> None:
        self._listeners.discard(queue)
