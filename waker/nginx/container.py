"""nginx in another container, as `waker serve --nginx container` drives it (the compose deployment).

The gateway container runs nginx as its main process (`waker gateway`) and keeps running when the
waker dies; the waker shares its network namespace (so nginx reaches the waker on loopback) and its
runtime dir (a volume), writes nginx's files there, tests them with its own nginx binary, and
reloads nginx with SIGHUP sent through Docker (the socket proxy lets through that one signal, to
that one container). Nothing here ever stops nginx.
"""

from __future__ import annotations

import asyncio

import structlog

from waker.config.schema import Config
from waker.docker.runtime import DockerRuntime
from waker.errors import NginxError
from waker.nginx.process import check_config, current_generation, wait_generation, write_and_test

log = structlog.get_logger("waker.nginx")

START_TIMEOUT = 60.0  # the gateway container may still be starting when the waker does
PROBE_INTERVAL = 2.0
# Missed probes in a row before the waker gives up on this gateway and exits: when the gateway
# container restarts, its network namespace is a new one, which the waker can only join by being
# restarted itself (its restart policy does that).
PROBES_LOST = 3


class NginxContainer:
    def __init__(self, config: Config, runtime: DockerRuntime) -> None:
        self.config = config
        self.runtime = runtime
        self.container_id = ""
        self._answering = False

    async def start(self) -> None:
        """Renders the config into the shared runtime dir and reloads nginx only if it runs another
        one: a waker restarted with an unchanged config leaves nginx (and its kept-alive
        connections) alone."""
        self.container_id = await self.runtime.gateway_container()
        rendered = await write_and_test(self.config)
        running = await self._wait_answering()
        if running != rendered.generation:
            await self._reload(rendered.generation)
        self._answering = True
        log.info(
            "nginx_adopted",
            container=self.container_id[:12],
            listen=str(self.config.gateway.listen),
            reloaded=running != rendered.generation,
        )

    async def _wait_answering(self) -> str:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while (generation := await current_generation(self.config)) is None:
            if asyncio.get_running_loop().time() > deadline:
                gateway = self.config.gateway.listen.reachable()
                raise NginxError(
                    f"the gateway's nginx does not answer on {gateway} within {START_TIMEOUT:g} s; "
                    f"is the gateway container ({self.container_id[:12]}) running?"
                )
            await asyncio.sleep(0.2)
        return generation

    async def _reload(self, generation: str) -> None:
        await self.runtime.reload_gateway(self.container_id)
        await wait_generation(self.config, generation)
        log.info("nginx_reloaded", container=self.container_id[:12], generation=generation)

    def alive(self) -> bool:
        return self._answering

    async def check(self, config: Config) -> None:
        await check_config(config)

    async def reload(self, config: Config, asleep: frozenset[str] = frozenset()) -> None:
        self.config = config
        rendered = await write_and_test(config, asleep)
        if await current_generation(config) != rendered.generation:
            await self._reload(rendered.generation)

    async def wait(self) -> int | None:
        """Returns (None: nginx is not our child) once the gateway has stopped answering on its port."""
        lost = 0
        while lost < PROBES_LOST:
            await asyncio.sleep(PROBE_INTERVAL)
            self._answering = await current_generation(self.config) is not None
            lost = 0 if self._answering else lost + 1
        return None

    async def stop(self) -> None:
        """nginx belongs to the gateway container and outlives the waker: nothing to do."""
