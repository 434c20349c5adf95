"""In-process publication of what happens (state changes, starts, stops, refusals) to any listener,
such as the admin events stream. Publishing never blocks: a listener that falls behind loses the
oldest events rather than slowing the waker down."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import structlog

log = structlog.get_logger("waker.events")

QUEUE_SIZE = 1000


class EventBus:
    def __init__(self) -> None:
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._sinks: list[Callable[[dict[str, Any]], None]] = []

    def add_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """A synchronous observer of every event (the metrics counters)."""
        self._sinks.append(sink)

    def publish(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "time": time.time(), **fields}
        log.info(kind, **fields)
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
