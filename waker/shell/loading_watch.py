"""Follows each starting model's container log and keeps the engine's latest loading stage; answers
`progress(model)` for the streams and the admin API alike (one source, so both show the same).

Works beside the Supervisor, from its events and read-only views: a model entering "starting"
starts a follower of its container's log (from that moment, so that a reused container's previous
run says nothing), leaving "starting" ends it.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from waker.core.engine_log import EngineStage, parse_line
from waker.core.events import LoadingStage, ModelStateChanged
from waker.core.lifecycle import State
from waker.core.progress import Progress, progress
from waker.errors import DriverError
from waker.shell.events import Published
from waker.shell.supervisor import Supervisor

log = structlog.get_logger("waker.shell.loading_watch")

FIND_INTERVAL = 0.25  # seconds between two looks for the container while it is being created


class LoadingWatch:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.stages: dict[str, EngineStage] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._events: asyncio.Queue[Published] | None = None
        self._task: asyncio.Task[None] | None = None

    def progress(self, model_id: str) -> Progress:
        s = self.supervisor
        model = s.config.model(model_id)
        pull = s.fleet.pulling(model.image) if model else None
        return progress(
            model_id,
            s.current_slots(),
            s.waiting.waiting(),
            s.hosts.policy(s.policy),
            pull,
            self.stages.get(model_id),
            s.now(),
        )

    async def open(self) -> None:
        self._events = self.supervisor.bus.listen()
        self._task = asyncio.create_task(self._run(self._events))

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._followers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._events is not None:
            self.supervisor.bus.unlisten(self._events)

    async def _run(self, events: asyncio.Queue[Published]) -> None:
        while True:
            published = await events.get()
            match published.event:
                case ModelStateChanged(model=model_id, state=State.STARTING):
                    self._end(model_id)
                    self._followers[model_id] = asyncio.create_task(self._follow(model_id, published.time))
                case ModelStateChanged(model=model_id, previous=State.STARTING):
                    self._end(model_id)

    def _end(self, model_id: str) -> None:
        follower = self._followers.pop(model_id, None)
        if follower is not None:
            follower.cancel()
        self.stages.pop(model_id, None)

    async def _follow(self, model_id: str, since: float) -> None:
        """Reads the log of the model's running container until the start ends (the task is
        cancelled then); a container replaced meanwhile (its spec changed) is found again."""
        while True:
            with contextlib.suppress(DriverError):
                async for chunk in self.supervisor.driver_of(model_id).loading_log(model_id, since):
                    for line in chunk.split("\n"):
                        self._saw(model_id, line)
            await asyncio.sleep(FIND_INTERVAL)

    def _saw(self, model_id: str, line: str) -> None:
        stage = parse_line(line)
        if stage is not None and stage != self.stages.get(model_id):
            self.stages[model_id] = stage
            self.supervisor.bus.publish(LoadingStage(model_id, stage.step.name.lower(), stage.text, stage.percent))
