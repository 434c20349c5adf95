"""The `[[external]]` workloads' policies, carried out on the machine the waker runs on: a start or a
wake is refused while a `block` workload runs (`check`), pauses the `pause` workloads' containers
first (`make_room`), and a container paused for models is unpaused once the last of them is down
(`model_down`). What was paused, and for which models, is kept in the state directory, so that a
restarted waker unpauses what it had paused (`adopt`). Only what Docker confirms is a listed
workload's container is ever paused; nothing is ever stopped or removed."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import structlog

from waker.config.externals import ExternalConfig, ExternalPolicy
from waker.core.driver import Driver, Memory
from waker.core.externals import ExternalContainer, blocking, busy_message, to_pause
from waker.errors import DriverError, RequestRefused

log = structlog.get_logger("waker.shell.externals")

RETRY_AFTER = 30  # seconds a client refused for a `block` workload is told to wait


class Externals:
    def __init__(
        self,
        driver: Driver,
        entries: Callable[[], tuple[ExternalConfig, ...]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        machine: Memory | None = None,
    ) -> None:
        self.driver = driver  # the engine of the machine the waker runs on
        self.entries = entries  # the config in force's (a reload changes them)
        self.spawn = spawn
        self.machine = machine  # where what was paused is kept across restarts
        self.paused: dict[str, tuple[ExternalContainer, set[str]]] = {}  # container id -> (it, models)

    def _keep(self) -> None:
        if self.machine is None:
            return
        try:
            self.machine.remember_paused({cid: sorted(models) for cid, (_, models) in self.paused.items()})
        except OSError as exc:
            log.error("paused_not_kept", error=str(exc))

    async def adopt(self, running: set[str]) -> None:
        """After a restart: the containers an earlier run paused are paused still for the models of
        theirs that run, and unpaused when none does."""
        kept = self.machine.paused() if self.machine is not None else {}
        if not kept:
            return
        try:
            found = {c.id: c for c in await self._found() if c.paused}
        except DriverError as exc:
            log.error("paused_not_adopted", error=str(exc))
            return
        for container_id, models in kept.items():
            container = found.get(container_id)
            if container is None:
                continue  # gone, or unpaused by hand
            if still := set(models) & running:
                self.paused[container_id] = (container, still)
            else:
                self.spawn(self._unpause(container))
        self._keep()

    async def _found(self) -> list[ExternalContainer]:
        return await self.driver.externals(self.entries()) if self.entries() else []

    async def check(self, model_id: str) -> None:
        """Raises RequestRefused (429 external_busy) while a `block` workload runs."""
        if not any(e.policy is ExternalPolicy.BLOCK for e in self.entries()):
            return
        try:
            blockers = blocking(await self._found())
        except DriverError as exc:
            log.warning("externals_unlisted", model=model_id, error=str(exc))  # the start goes on
            return
        if blockers:
            raise RequestRefused(429, "external_busy", busy_message(model_id, blockers), RETRY_AFTER)

    async def make_room(self, model_id: str) -> None:
        """Pauses the running `pause` workloads' containers before `model_id` comes up; those already
        paused for other models are kept paused for this one too."""
        for _container, models in self.paused.values():
            models.add(model_id)
        if not any(e.policy is ExternalPolicy.PAUSE for e in self.entries()):
            return
        try:
            found = to_pause(await self._found())
        except DriverError as exc:
            log.warning("externals_unlisted", model=model_id, error=str(exc))
            return
        for container in found:
            try:
                await self.driver.pause(container)
            except DriverError as exc:
                log.error("external_pause_failed", external=container.external.name, error=str(exc))
                continue
            self.paused[container.id] = (container, {model_id})
            log.info("external_paused", external=container.external.name, container=container.name, model=model_id)
        self._keep()

    def model_down(self, model_id: str) -> None:
        """`model_id` stopped or failed: the containers paused for it alone are unpaused."""
        if not self.paused:
            return
        for container_id, (container, models) in list(self.paused.items()):
            models.discard(model_id)
            if not models:
                del self.paused[container_id]
                self.spawn(self._unpause(container))
        self._keep()

    async def _unpause(self, container: ExternalContainer) -> None:
        try:
            await self.driver.pause(container, unpause=True)
        except DriverError as exc:
            log.error("external_unpause_failed", external=container.external.name, error=str(exc))
            return
        log.info("external_unpaused", external=container.external.name, container=container.name)

    async def status(self) -> list[dict[str, Any]]:
        """Each workload with its containers as Docker has them now, and their memory (observe)."""
        try:
            found = await self._found()
        except DriverError as exc:
            unknown = {"error": str(exc), "containers": []}
            return [{**asdict(e), "policy": e.policy.value, **unknown} for e in self.entries()]
        result = []
        for entry in self.entries():
            containers = []
            for container in (c for c in found if c.external == entry):
                try:
                    used = await self.driver.memory_use(container.id)
                except DriverError:
                    used = None
                containers.append(
                    {
                        "id": container.id[:12],
                        "name": container.name,
                        "paused": container.paused,
                        "memory_bytes": used.current if used is not None else None,
                    }
                )
            result.append({**asdict(entry), "policy": entry.policy.value, "error": None, "containers": containers})
        return result
