"""The waker's driver of a model over two hosts (`RayPair`, issue 17) against two real Docker engines and
real Ray: the head on the main engine, the worker on engine 2, both with host networking on this
machine's loopback, as two Sparks run them across their link. The model server (waker-ray:test,
tests/ray_node/) listens only once Ray has both nodes and exits 3 when a node leaves, as vLLM does.

The config is a real `[[host]]` + `hosts = 2` config; the commands name the nodes by placeholders that
the driver fills in. Every Ray node gets a port range of its own (two nodes share one loopback here).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.e2e.stack import docker, free_port, free_port_range
from tests.eventually import eventually_async
from waker.config.ray import RayNode
from waker.config.schema import ModelConfig, parse_config
from waker.core.driver import ContainerChange, ContainerEvent
from waker.docker.images import Images
from waker.docker.launcher import Launcher
from waker.docker.ray_pair import RayPair
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_RAY_NODE, LABEL_STACK
from waker.errors import StartError

pytestmark = pytest.mark.e2e

RAY_IMAGE = "waker-ray:test"
NODE_LOST_EXIT = 3  # tests/ray_node/node.py
WORKER = ["/opt/ray/bin/python", "-u", "/node.py", "worker", "--ip", "{worker_ip}"]


class Pair:
    """A RayPair over the two engines, the model it runs, and the events both engines report."""

    def __init__(
        self,
        second_engine,
        worker_address: str = "{head_ip}:{ray_port}",
        start_timeout: str = "3m",
        image: str = RAY_IMAGE,
    ):
        self.stack, self.port = f"ray{uuid.uuid4().hex[:8]}", free_port()
        self.model_id = "big"
        raw = {
            "waker": {"name": self.stack},
            "host": [
                {"name": "one", "gpu_capacity": 1.0},
                {"name": "two", "docker_host": second_engine.host, "gpu_capacity": 1.0},
            ],
            "model": [
                {
                    "id": self.model_id,
                    "image": image,
                    "pull": "never",
                    "hosts": 2,
                    "host": "one",
                    "port": self.port,
                    "ray_port": free_port(),
                    "start_timeout": start_timeout,
                    "stop_timeout": "5s",
                    "command": [
                        "head",
                        "--ip",
                        "{head_ip}",
                        "--port",
                        "{ray_port}",
                        "--port-base",
                        str(free_port_range(64)),
                        "--nodes",
                        "2",
                        "--",
                        "serve",
                        f"fake/{self.model_id}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(self.port),
                        "--served-model-name",
                        self.model_id,
                    ],
                    "worker_command": [*WORKER, "--address", worker_address, "--port-base", str(free_port_range(64))],
                }
            ],
        }
        self.config = parse_config(raw, Path("/nonexistent/models.toml"))
        self.model: ModelConfig = self.config.models[0]
        head_host, worker_host = self.config.hosts
        self.launchers = [
            Launcher(self.config.waker, runtime, Images(runtime, lambda image, progress: None))
            for runtime in (DockerRuntime(self.stack, h.docker) for h in (head_host, worker_host))
        ]
        self.driver = RayPair(self.launchers[0], self.launchers[1], head_host, worker_host)
        self.events: list[tuple[str, ContainerEvent]] = []
        self.died = asyncio.Event()
        self.engines = [lambda *a: docker(*a), second_engine.docker]

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[Pair]:
        """Both engines' events streams followed, as the shell follows each host's."""
        connected = [asyncio.Event(), asyncio.Event()]

        def on_event(host: str, event: ContainerEvent) -> None:
            self.events.append((host, event))
            if event.change is ContainerChange.DIED:
                self.died.set()

        def follow(index: int, host: str) -> asyncio.Task[None]:
            async def on_connect() -> None:
                connected[index].set()

            return asyncio.create_task(
                self.launchers[index].follow(lambda event: on_event(host, event), on_connect, lambda reason: None)
            )

        tasks = [follow(0, "one"), follow(1, "two")]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.wait() for c in connected)), 30)
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for engine in self.engines:
                leftovers = engine("ps", "-aq", "--filter", f"label={LABEL_STACK}={self.stack}").split()
                if leftovers:
                    engine("rm", "-f", *leftovers)
            for launcher in self.launchers:
                await launcher.close()
                await launcher.runtime.close()

    def state(self, engine: int, container_id: str) -> tuple[str, int]:
        status, code = self.engines[engine](
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container_id
        ).split()
        return status, int(code)

    async def exited(self, engine: int, container_id: str) -> tuple[str, int] | None:
        state = await asyncio.to_thread(self.state, engine, container_id)
        return state if state[0] == "exited" else None

    def worker_id(self) -> str:
        return self.engines[1]("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_STACK}={self.stack}").strip()

    def assert_both_exited(self) -> None:
        head = docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_STACK}={self.stack}").strip()
        assert self.state(0, head)[0] == "exited" and self.state(1, self.worker_id())[0] == "exited"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0, timeout=5)


@pytest.fixture
def engines(second_engine):
    second_engine.load_images(RAY_IMAGE)
    return second_engine


async def test_up_serves_once_both_nodes_joined_and_a_dead_worker_is_the_model_dying(engines):
    async with Pair(engines).following() as pair:
        head_id = await pair.driver.up(pair.model, pair.died)

        reply = await asyncio.to_thread(
            pair.client().chat.completions.create,
            model=pair.model_id,
            max_tokens=5,
            messages=[{"role": "user", "content": "hello"}],
        )
        assert reply.model == pair.model_id and reply.usage is not None and reply.usage.completion_tokens == 5
        worker_id = pair.worker_id()
        assert (
            engines.docker("inspect", "--format", f'{{{{index .Config.Labels "{LABEL_RAY_NODE}"}}}}', worker_id).strip()
            == RayNode.WORKER
        )
        assert engines.docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", worker_id).strip() == "host"
        # Each host's listing (what a resync adopts) has the model's head, never its worker.
        assert await pair.launchers[0].running() == {pair.model_id: head_id}
        assert await pair.launchers[1].running() == {}

        # The worker's box goes away: engine 2 reports the death as the model's, marked as its worker's;
        # the head sees its node leave and ends its server; the pair's stop then finds both stopped.
        pair.died.clear()
        engines.docker("kill", worker_id)
        await asyncio.wait_for(pair.died.wait(), 30)
        host, event = next((h, e) for h, e in pair.events if e.change is ContainerChange.DIED)
        assert (host, event.model_id, event.container_id, event.ray_node) == (
            "two",
            pair.model_id,
            worker_id,
            RayNode.WORKER,
        )
        assert await eventually_async(
            lambda: pair.exited(0, head_id), 60, "the head exiting after its worker died"
        ) == ("exited", NODE_LOST_EXIT)
        tails = await pair.driver.log_tail(worker_id)
        assert "Ray head on host 'one':" in tails and "a node left the cluster" in tails
        assert "Ray worker on host 'two':" in tails


async def test_down_stops_both_and_up_starts_the_same_pair_again(engines):
    async with Pair(engines).following() as pair:
        head_id = await pair.driver.up(pair.model, pair.died)
        worker_id = pair.worker_id()
        await pair.driver.down(pair.model, head_id)
        assert pair.state(0, head_id)[0] == "exited" and pair.state(1, worker_id)[0] == "exited"
        with pytest.raises(openai.APIConnectionError):
            await asyncio.to_thread(pair.client().models.list)

        # Started again: the same two containers (their specs unchanged), serving again.
        assert await pair.driver.up(pair.model, pair.died) == head_id
        assert pair.worker_id() == worker_id and pair.state(1, worker_id)[0] == "running"
        assert [m.id for m in await asyncio.to_thread(pair.client().models.list)] == [pair.model_id]
        await pair.driver.down(pair.model, None)
        assert pair.state(0, head_id)[0] == "exited" and pair.state(1, worker_id)[0] == "exited"


async def test_a_start_whose_worker_cannot_join_fails_with_both_log_tails(engines):
    # The worker is sent to a port where no Ray head listens: it keeps trying (Ray's own retries outlast
    # the start_timeout), the head waits for its second node, and the start times out.
    async with Pair(engines, worker_address=f"{{head_ip}}:{free_port()}", start_timeout="40s").following() as pair:
        with pytest.raises(StartError) as failed:
            await pair.driver.up(pair.model, pair.died)
        message = failed.value.message
        assert failed.value.code == "model_start_timeout", message
        assert "Ray head on host 'one':" in message and "cluster has 1/2 nodes, waiting" in message
        assert "Ray worker on host 'two':" in message and "Failed to connect to GCS" in message
        pair.assert_both_exited()


async def test_a_worker_that_exits_while_the_head_waits_fails_the_start_at_once(engines):
    # An address without its port: `ray start` refuses it and exits 1 ("Invalid address format").
    async with Pair(engines, worker_address="{head_ip}", start_timeout="3m").following() as pair:
        began = asyncio.get_running_loop().time()
        with pytest.raises(StartError) as failed:
            await pair.driver.up(pair.model, pair.died)
        message = failed.value.message
        assert failed.value.code == "model_exited", message
        assert "its Ray worker on host 'two' exited with code 1 while loading; both containers were stopped" in message
        assert "Ray head on host 'one':" in message and "Ray worker on host 'two':" in message
        assert asyncio.get_running_loop().time() - began < 120  # the death ended the wait, not start_timeout
        pair.assert_both_exited()


async def test_an_image_missing_on_the_heads_host_fails_the_start_before_any_container_runs(engines):
    image = f"waker-ray:only-engine2-{uuid.uuid4().hex[:8]}"
    engines.docker("tag", RAY_IMAGE, image)
    try:
        async with Pair(engines, image=image).following() as pair:
            with pytest.raises(StartError) as failed:
                await pair.driver.up(pair.model, pair.died)
            assert failed.value.code == "image_missing", failed.value.message
            assert failed.value.message.endswith("(its Ray head on host 'one')"), failed.value.message
            # Both images are made present before either container starts: the worker was not started.
            assert pair.worker_id() == ""
    finally:
        engines.docker("rmi", image)
