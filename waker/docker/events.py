"""Follows Docker's events stream for the stack's containers, reconnecting when the engine goes away.

Each (re)connection first opens the stream, then calls `on_connect` (a full resync from a container
listing), so no event is lost between the listing and the stream. At idle this is one open HTTP
stream and no API calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from waker.core.driver import ContainerChange, ContainerEvent
from waker.docker.runtime import DockerRuntime, ray_node
from waker.docker.spec import LABEL_MODEL
from waker.errors import DockerError

log = structlog.get_logger("waker.docker.events")

MAX_BACKOFF = 30.0
_CHANGES = {"start": ContainerChange.STARTED, "die": ContainerChange.DIED, "oom": ContainerChange.OOM}


def container_event(raw: dict[str, Any]) -> ContainerEvent | None:
    """The change a Docker event reports for a model's container, or None for any other event."""
    actor = raw.get("Actor", {})
    attributes = actor.get("Attributes", {})
    model_id = attributes.get(LABEL_MODEL)
    change = _CHANGES.get(raw.get("Action") or raw.get("status") or "")
    if model_id is None or change is None:
        return None
    return ContainerEvent(
        change, model_id, raw.get("id") or actor.get("ID", ""), attributes.get("exitCode", "?"), ray_node(attributes)
    )


async def follow(
    runtime: DockerRuntime,
    on_event: Callable[[ContainerEvent], None],
    on_connect: Callable[[], Awaitable[None]],
    on_disconnect: Callable[[str], None],
) -> None:
    backoff = 0.5
    while True:
        try:
            async with runtime.event_stream() as events:
                await on_connect()
                log.info("docker_events_connected")
                backoff = 0.5
                async for raw in events:
                    if (event := container_event(raw)) is not None:
                        on_event(event)
            reason = "the Docker events stream ended"
        # Only the stream's own failures: an exception from `on_event` or `on_connect` (a state machine's
        # IllegalTransition is a ValueError) is a bug, not a lost engine, and ends the follow loudly.
        except (TimeoutError, DockerError, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        on_disconnect(reason)
        log.warning("docker_events_lost", error=reason, retry_in=backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
