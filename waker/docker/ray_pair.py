"""The driver of a model spread over two hosts on Ray (`hosts = 2`), as NVIDIA's two-Spark playbook runs
one: a Ray worker container on one host, the Ray head on the other, whose model server listens only once
Ray has both nodes. Made of the two hosts' own launchers: each creates, starts and stops its container.

The two are one model: a start waits for the head's health check and fails (both stopped, both log
tails given) when either container exits or `start_timeout` passes; a stop stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import structlog

from waker.config.externals import ExternalConfig
from waker.config.hosts import HostConfig
from waker.config.ray import RayNode, RayNodes
from waker.config.schema import ModelConfig
from waker.core.externals import ExternalContainer
from waker.core.image_pull import PullProgress
from waker.core.memory import ContainerMemory
from waker.docker.launcher import LOG_TAIL_LINES, Launcher, Node
from waker.docker.runtime import ContainerInfo
from waker.docker.spec import container_name, ray_node_spec, worker_name
from waker.errors import DockerError, SleepModeError, SleepStep, StartError

log = structlog.get_logger("waker.docker.ray_pair")


def node_ip(host: HostConfig) -> str:
    """The host's Ray node address: its address on the link, else the one nginx reaches it at."""
    return host.interconnect.vllm_host_ip or host.address


class RayPair:
    """Implements `driver.Driver` for the models over two hosts; `running` and `follow` are each host's
    own launcher's (they report a worker's container with `ray_node` WORKER, never as a model's)."""

    def __init__(self, head: Launcher, worker: Launcher, head_host: HostConfig, worker_host: HostConfig) -> None:
        self.head, self.worker = head, worker
        self.head_host, self.worker_host = head_host, worker_host

    def _side(self, role: RayNode) -> tuple[Launcher, HostConfig]:
        return (self.head, self.head_host) if role is RayNode.HEAD else (self.worker, self.worker_host)

    def node(self, model: ModelConfig, role: RayNode) -> Node:
        launcher, host = self._side(role)
        nodes = RayNodes(node_ip(self.head_host), node_ip(self.worker_host), model.ray.port)
        name = (container_name if role is RayNode.HEAD else worker_name)(launcher.stack, model.id)
        return Node(
            name, ray_node_spec(model, launcher.stack, role, nodes, host.interconnect), worker=role is RayNode.WORKER
        )

    async def up(self, model: ModelConfig, died: asyncio.Event) -> str:
        """Stops what runs of the pair (a head left from a run whose worker died would pass for
        started), starts the worker, then the head, and waits for the head's health check."""
        deadline = self.head.clock() + model.start_timeout
        try:
            await self.down(model, None)
        except DockerError as exc:
            raise StartError(503, "model_start_failed", f"model {model.id!r} could not be started: {exc}") from None
        # Both images first: a worker started before a long pull on the head's host would give up on
        # a head that is not there yet.
        images = {
            role: await self._step(model, role, self._side(role)[0].ensure_image(model, deadline))
            for role in (RayNode.WORKER, RayNode.HEAD)
        }
        ids = {
            role: await self._step(
                model, role, self._side(role)[0].launch(model, self.node(model, role), deadline, images[role])
            )
            for role in (RayNode.WORKER, RayNode.HEAD)
        }
        await self.head.wait_healthy(model, deadline, died, _Watch(self, model, ids))
        return ids[RayNode.HEAD]

    async def _step(self, model: ModelConfig, role: RayNode, step: Awaitable[str]) -> str:
        """A step of the start on one host; when it fails, what started of the pair is stopped and the
        error names the host."""
        try:
            return await step
        except StartError as exc:
            await self._stop_quietly(model)
            raise StartError(
                exc.status, exc.code, f"{exc.message} (its Ray {role} on host {self._side(role)[1].name!r})"
            ) from None

    async def adopt(self, model: ModelConfig, container_id: str, deadline: float, died: asyncio.Event) -> None:
        worker = await self._find(model.id, RayNode.WORKER)
        if worker is None or not worker.running:
            tails = await self.tails(model.id)
            await self._stop_quietly(model)
            raise StartError(
                503,
                "model_exited",
                f"model {model.id!r}: its Ray head runs but its Ray worker on host "
                f"{self.worker_host.name!r} does not; both were stopped. Last log lines:\n{tails}",
            )
        await self.head.wait_healthy(
            model, deadline, died, _Watch(self, model, {RayNode.HEAD: container_id, RayNode.WORKER: worker.id})
        )

    async def down(self, model: ModelConfig, container_id: str | None, grace: float | None = None) -> None:
        """Stops the head (the server), then the worker, even when the head's engine refused."""
        try:
            await self.head.down(model, container_id, grace)
        finally:
            worker = await self._find(model.id, RayNode.WORKER)
            if worker is not None:
                await self.worker.runtime.stop(worker.id, model.stop_timeout if grace is None else grace)

    async def _stop_quietly(self, model: ModelConfig) -> None:
        """A failed start's clean-up: the failure is the news, an engine refusing the stop is logged."""
        try:
            await self.down(model, None)
        except DockerError as exc:
            log.error("ray_pair_stop_failed", model=model.id, error=str(exc))

    async def _find(self, model_id: str, role: RayNode) -> ContainerInfo | None:
        launcher, _ = self._side(role)
        return await launcher.runtime.find(model_id, worker=role is RayNode.WORKER)

    async def tails(self, model_id: str) -> str:
        """Both containers' last log lines, each under the host it ran on."""
        parts = []
        for role in (RayNode.HEAD, RayNode.WORKER):
            launcher, host = self._side(role)
            try:
                info = await self._find(model_id, role)
            except DockerError as exc:
                parts.append(f"Ray {role} on host {host.name!r}: {exc}")
                continue
            tail = await launcher.runtime.logs_tail(info.id, LOG_TAIL_LINES) if info is not None else ""
            parts.append(
                f"Ray {role} on host {host.name!r}:\n"
                + ("\n".join(f"  {line}" for line in tail.splitlines()) or "  (nothing)")
            )
        return "\n".join(parts)

    async def log_tail(self, container_id: str) -> str:
        for launcher in (self.head, self.worker):
            with contextlib.suppress(DockerError):
                return await self.tails((await launcher.runtime.inspect(container_id)).model_id)
        return ""

    async def healthy(self, model: ModelConfig) -> bool:
        return await self.head.healthy(model)

    async def memory_use(self, container_id: str) -> ContainerMemory | None:
        """The head's container (the server's); the worker's memory is its own host's."""
        return await self.head.memory_use(container_id)

    async def externals(self, entries: tuple[ExternalConfig, ...]) -> list[ExternalContainer]:
        return await self.head.externals(entries)

    async def pause(self, container: ExternalContainer, unpause: bool = False) -> None:
        await self.head.pause(container, unpause)

    async def busy(self, model: ModelConfig) -> int | None:
        return await self.head.busy(model)

    async def container(self, model_id: str) -> str | None:
        return await self.head.container(model_id)  # its API server, and vLLM's log, are the head's

    async def logs(self, container_id: str, tail: int) -> str:
        return await self.head.logs(container_id, tail)

    def follow_logs(self, container_id: str, tail: int) -> AsyncIterator[str]:
        return self.head.follow_logs(container_id, tail)

    def loading_log(self, model_id: str, since: float) -> AsyncIterator[str]:
        return self.head.loading_log(model_id, since)  # vLLM's loading stages are the head's lines

    async def prepare(self, model: ModelConfig) -> dict[str, str]:
        report: dict[str, str] = {}
        errors = []
        for role in (RayNode.HEAD, RayNode.WORKER):
            launcher, host = self._side(role)
            found = await launcher.prepare(model, self.node(model, role))
            if "error" in found:
                errors.append(f"host {host.name!r}: {found.pop('error')}")
            report.update({f"{key} (Ray {role} on {host.name})": value for key, value in found.items()})
        if errors:
            report["error"] = "; ".join(errors)
        return report

    def pulling(self, image: str) -> PullProgress | None:
        return self.head.pulling(image) or self.worker.pulling(image)

    # The config refuses sleep mode for hosts = 2 (config_ray), so the shell never asks these.
    async def sleep(self, model: ModelConfig) -> None:
        raise SleepModeError(SleepStep.SLEEP, f"model {model.id!r} runs over two hosts: it has no sleep mode")

    async def wake(self, model: ModelConfig) -> None:
        raise SleepModeError(SleepStep.WAKE, f"model {model.id!r} runs over two hosts: it has no sleep mode")

    async def is_sleeping(self, model: ModelConfig) -> bool:
        return False

    async def close(self) -> None:
        """Nothing of its own: the launchers are the hosts', closed by their owner."""


@dataclass(frozen=True, slots=True)
class _Watch:
    """A pair's start: either container exiting ends it, and both are stopped."""

    pair: RayPair
    model: ModelConfig
    ids: dict[RayNode, str]

    async def check_exited(self) -> None:
        for role, container_id in self.ids.items():
            launcher, host = self.pair._side(role)
            try:
                info = await launcher.runtime.inspect(container_id)
            except DockerError as exc:
                await self.pair._stop_quietly(self.model)
                raise StartError(
                    503, "model_start_failed", f"model {self.model.id!r}: its Ray {role} on host {host.name!r}: {exc}"
                ) from None
            if not info.running:
                tails = await self.give_up()
                raise StartError(
                    503,
                    "model_exited",
                    f"model {self.model.id!r}: its Ray {role} on host "
                    f"{host.name!r} exited with code {info.exit_code} while loading"
                    + (f" ({info.error})" if info.error else "")
                    + f"; both containers were stopped. Last log lines:\n{tails}",
                )

    async def give_up(self) -> str:
        tails = await self.pair.tails(self.model.id)
        await self.pair._stop_quietly(self.model)
        return tails
