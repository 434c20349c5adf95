"""Brings models up: one start per model however many requests wait, readiness, failure reporting.

This is the imperative shell around `lifecycle`: Docker calls, health polling and the clock live here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp
import structlog

from waker.config import Config, ModelConfig
from waker.container_spec import LABEL_SPEC, container_name, container_spec
from waker.docker_runtime import DockerError, DockerRuntime
from waker.lifecycle import Event, ModelStatus, apply
from waker.units import format_duration

log = structlog.get_logger("waker.supervisor")

HEALTH_POLL_INTERVAL = 0.05
EXIT_CHECK_INTERVAL = 0.25
LOG_TAIL_LINES = 20


class StartError(Exception):
    """A model could not be made ready; carries the HTTP status and error code clients get."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Supervisor:
    def __init__(self, config: Config, runtime: DockerRuntime, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.runtime = runtime
        self.clock = clock
        self.statuses: dict[str, ModelStatus] = {m.id: ModelStatus(since=clock()) for m in config.models}
        self._starts: dict[str, asyncio.Task[None]] = {}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))

    async def close(self) -> None:
        for task in list(self._starts.values()):
            task.cancel()
        await asyncio.gather(*self._starts.values(), return_exceptions=True)
        await self._http.close()

    async def adopt(self) -> None:
        """Take over the containers a previous waker left: running ones are waited on until ready."""
        for info in await self.runtime.managed_containers():
            model = self.config.model(info.model_id)
            if model is None or not info.running:
                continue
            log.info("container_adopted", model=model.id, container=info.name)
            self._start_task(model)

    async def ensure_ready(self, model: ModelConfig) -> None:
        """Returns once the model answers its health check; raises StartError otherwise."""
        await asyncio.shield(self._start_task(model))

    def _start_task(self, model: ModelConfig) -> asyncio.Task[None]:
        task = self._starts.get(model.id)
        if task is None:
            task = asyncio.create_task(self._start(model), name=f"start:{model.id}")
            self._starts[model.id] = task
            task.add_done_callback(lambda t: self._starts.pop(model.id, None))
            # Waiters may all be gone by the time it fails; the failure is logged and kept in status.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _transition(self, model: ModelConfig, event: Event, **details: str) -> None:
        before = self.statuses[model.id]
        after = apply(before, event, self.clock(), **details)
        self.statuses[model.id] = after
        log.info("model_state", model=model.id, trigger=event.value, state=after.state.value,
                 previous=before.state.value, error=after.last_error or None)

    async def _start(self, model: ModelConfig) -> None:
        begun = self.clock()
        self._transition(model, Event.START)
        try:
            container_id = await self._bring_up(model)
            await self._wait_healthy(model, container_id, begun + model.start_timeout)
        except StartError as exc:
            self._transition(model, Event.FAIL, error=exc.message)
            raise
        except DockerError as exc:
            self._transition(model, Event.FAIL, error=str(exc))
            raise StartError(503, "model_start_failed", f"model {model.id!r} could not be started: {exc}") from None
        except asyncio.CancelledError:
            self._transition(model, Event.FAIL, error="start cancelled (waker shutting down)")
            raise
        except Exception as exc:  # a bug must not leave the model stuck in "starting"
            log.exception("start_crashed", model=model.id)
            self._transition(model, Event.FAIL, error=f"internal error: {exc!r}")
            raise StartError(500, "internal_error", f"model {model.id!r}: the waker failed while starting it; "
                             "its log has the details") from None
        self._transition(model, Event.READY, container_id=container_id)
        log.info("model_ready", model=model.id, seconds=round(self.clock() - begun, 3))

    async def _bring_up(self, model: ModelConfig) -> str:
        """Creates (or recreates, when its spec changed) and starts the container; returns its id."""
        stack = self.config.waker.name
        spec = container_spec(model, stack)
        info = await self.runtime.find(model.id)
        if info is not None and info.spec_hash != spec["Labels"][LABEL_SPEC]:
            log.info("container_recreate", model=model.id, container=info.name, reason="spec changed")
            if info.running:
                await self.runtime.stop(info.id, model.stop_timeout)
            await self.runtime.remove(info.id)
            info = None
        if info is None:
            await self.runtime.check_image(model.image)
            container_id = await self.runtime.create(container_name(stack, model.id), spec)
            log.info("container_created", model=model.id, container=container_id[:12])
        else:
            container_id = info.id
        if info is None or not info.running:
            await self.runtime.start(container_id)
            log.info("container_started", model=model.id, container=container_id[:12])
        return container_id

    async def _wait_healthy(self, model: ModelConfig, container_id: str, deadline: float) -> None:
        url = f"http://127.0.0.1:{model.host_port}{model.health}"
        next_exit_check = self.clock()
        while True:
            if await self._healthy(url):
                return
            now = self.clock()
            if now >= next_exit_check:
                info = await self.runtime.inspect(container_id)
                if not info.running:
                    tail = await self.runtime.logs_tail(container_id, LOG_TAIL_LINES)
                    raise StartError(
                        503, "model_exited",
                        f"model {model.id!r} exited with code {info.exit_code} while loading"
                        + (f" ({info.error})" if info.error else "")
                        + (f"; last log lines:\n{tail}" if tail else "; it printed nothing"),
                    )
                next_exit_check = now + EXIT_CHECK_INTERVAL
            if now >= deadline:
                tail = await self.runtime.logs_tail(container_id, LOG_TAIL_LINES)
                await self.runtime.stop(container_id, model.stop_timeout)
                raise StartError(
                    504, "model_start_timeout",
                    f"model {model.id!r} was not ready after {format_duration(model.start_timeout)} "
                    f"(start_timeout); it was stopped. Last log lines:\n{tail}",
                )
            await asyncio.sleep(HEALTH_POLL_INTERVAL)

    async def _healthy(self, url: str) -> bool:
        try:
            async with self._http.get(url) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
