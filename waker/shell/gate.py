"""nginx's gate for sleep mode: the models whose requests must reach the waker (which wakes them)
instead of their engine (which would answer them asleep). The gate closes before an engine is asked
to sleep and opens once it serves again.

The supervisor says which models are gated whenever that set changes; every route renders the whole
current set, one at a time, so that routes can never undo one another. A config reload routes nginx
itself under the same lock (`reloading`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from waker.config.schema import Config
from waker.core.driver import Router
from waker.errors import NginxError

log = structlog.get_logger("waker.shell.gate")


class Gate:
    def __init__(self, router: Router, config: Callable[[], Config], gated: Callable[[], frozenset[str]]) -> None:
        self.router = router
        self._config = config  # the config in force, read at each route (a reload changes it)
        self._gated = gated  # the models in sleep mode now, from the supervisor
        self._lock = asyncio.Lock()
        self._routed: frozenset[str] | None = frozenset()  # None: unknown (a route failed)

    async def route(self) -> None:
        """Has nginx route the current set of gated models, unless it already does. Raises NginxError."""
        async with self._lock:
            gated = self._gated()
            if gated == self._routed:
                return
            self._routed = None
            await self.router.route(self._config(), gated)
            self._routed = gated

    async def route_logged(self) -> None:
        """`route`, for a change nobody waits on: a failure is logged, and the next change routes again."""
        try:
            await self.route()
        except NginxError as exc:
            log.error("gate_route_failed", error=str(exc), gated=sorted(self._gated()))

    @asynccontextmanager
    async def reloading(self) -> AsyncIterator[frozenset[str]]:
        """Holds the gate while a config reload has nginx route the gated set it yields itself."""
        async with self._lock:
            gated = self._gated()
            self._routed = None
            yield gated
            self._routed = gated
