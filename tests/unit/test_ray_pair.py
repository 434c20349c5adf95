"""The driver of a model over two hosts (`RayPair`) over two launchers, each on a fake engine of its own,
with the fake model server as the head's model server (ready once both nodes run): the order a pair
starts in, and that it lives and dies as one model (tests/e2e/test_ray_pair.py runs real Ray)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.unit.fake_docker import STACK, FakeDocker, ModelServer, Pull, until
from tests.unit.shell_fakes import FakeClock
from tests.unit.test_image_pull import STREAM
from waker.config.ray import RayNode
from waker.config.schema import ModelConfig, parse_config
from waker.docker.images import Images
from waker.docker.launcher import Launcher
from waker.docker.ray_pair import RayPair
from waker.docker.runtime import DockerRuntime
from waker.docker.spec import LABEL_MODEL, LABEL_RAY_NODE, container_name, worker_name
from waker.errors import DockerError, SleepModeError, StartError

HOSTS = [
    {"name": "one", "vllm_host_ip": "192.168.100.10"},
    {"name": "two", "docker_host": "unix:///run/two/docker.sock", "vllm_host_ip": "192.168.100.11"},
]
HEAD, WORKER = container_name(STACK, "huge"), worker_name(STACK, "huge")


@dataclass
class Rig:
    one: FakeDocker  # the head's engine
    two: FakeDocker  # the worker's
    server: ModelServer
    pair: RayPair
    model: ModelConfig
    clock: FakeClock
    died: asyncio.Event

    def up(self) -> asyncio.Task[str]:
        return asyncio.ensure_future(self.pair.up(self.model, self.died))

    def journal(self, *kinds: str) -> list[tuple[str, str, str]]:
        """What both engines were asked, in order: (engine, action, target)."""
        return [(c.engine, c.action, c.target) for c in self.one.journal if c.action in kinds]

    async def loading(self) -> None:
        await until(lambda: self.server.health_checks > 0, "the start asked the head's health check")

    def running(self) -> tuple[bool, bool]:
        return self.one.container(HEAD).running, self.two.container(WORKER).running


def node_running(docker: FakeDocker, role: RayNode) -> bool:
    return any(c.running and c.labels.get(LABEL_RAY_NODE) == role for c in docker.containers.values())


@pytest.fixture
async def rig(engines, model_server):
    """Makes a pair whose image is on both hosts; the head's server answers once both nodes run."""
    opened: list[tuple[Launcher, DockerRuntime]] = []

    async def make(**keys: Any) -> Rig:
        model = {
            "id": "huge",
            "image": "vllm:1",
            "hosts": 2,
            "host": "one",
            "port": model_server.port,
            "start_timeout": 30,
            "stop_timeout": 4,
            "entrypoint": ["/bin/bash", "-c"],
            "command": ["ray start --head --node-ip-address={head_ip} --port={ray_port} && exec vllm serve m"],
            **keys,
        }
        config = parse_config({"waker": {"name": STACK}, "host": HOSTS, "model": [model]}, Path("/etc/models.toml"))
        one, two = await engines("one"), await engines("two")
        clock = FakeClock()
        launchers = []
        for docker, host in zip((one, two), config.hosts, strict=True):
            docker.images["vllm:1"] = "sha256:vllm"
            runtime = DockerRuntime(STACK, docker.url)
            images = Images(runtime, lambda image, progress: None, clock.now, credentials=lambda image: None)
            launchers.append(Launcher(config.waker, runtime, images, clock.now, host))
            opened.append((launchers[-1], runtime))
        model_server.ready = lambda: node_running(one, RayNode.HEAD) and node_running(two, RayNode.WORKER)
        pair = RayPair(launchers[0], launchers[1], *config.hosts)
        return Rig(one, two, model_server, pair, config.models[0], clock, asyncio.Event())

    yield make
    for launcher, runtime in opened:
        await launcher.close()
        await runtime.close()


async def test_up_starts_the_worker_then_the_head_and_returns_once_the_head_serves(rig):
    r = await rig()
    head_id = await r.up()
    assert r.one.container(HEAD).id == head_id and r.running() == (True, True)
    assert r.journal("image", "create", "start") == [
        ("two", "image", "vllm:1"),  # both images first: no worker waits on a head still pulling
        ("one", "image", "vllm:1"),
        ("two", "create", WORKER),
        ("two", "start", WORKER),
        ("one", "create", HEAD),
        ("one", "start", HEAD),
    ]
    worker = r.two.container(WORKER).config
    joins = ["--address=192.168.100.10:6379", "--node-ip-address=192.168.100.11"]  # the placeholders, filled in
    assert worker["Entrypoint"] == ["ray", "start", "--block", *joins]
    assert "VLLM_HOST_IP=192.168.100.11" in worker["Env"] and worker["Labels"][LABEL_MODEL] == "huge"
    assert "VLLM_HOST_IP=192.168.100.10" in r.one.container(HEAD).config["Env"]


async def test_up_first_stops_a_head_left_running_from_a_run_whose_worker_died(rig):
    r = await rig()
    first = await r.up()
    r.two.exit(r.two.container(WORKER), 3)  # the head alone would pass for started
    assert await r.up() == first
    assert r.journal("stop", "start")[2:] == [
        ("one", "stop", HEAD),
        ("two", "stop", WORKER),
        ("two", "start", WORKER),
        ("one", "start", HEAD),
    ]


async def test_a_worker_dying_while_the_head_loads_stops_both_and_gives_both_tails(rig):
    r = await rig()
    r.server.ready = lambda: False
    start = r.up()
    await r.loading()
    r.one.write_log(r.one.container(HEAD), "Waiting for 2 Ray nodes, 1 found")
    worker = r.two.container(WORKER)
    r.two.write_log(worker, "ray.exceptions.RaySystemError: lost the connection to the head")
    r.two.exit(worker, 1)
    r.died.set()
    with pytest.raises(StartError) as failed:
        await start
    assert (failed.value.status, failed.value.code) == (503, "model_exited")
    assert failed.value.message == (
        "model 'huge': its Ray worker on host 'two' exited with code 1 while loading; both containers were "
        "stopped. Last log lines:\n"
        "Ray head on host 'one':\n  Waiting for 2 Ray nodes, 1 found\n"
        "Ray worker on host 'two':\n  ray.exceptions.RaySystemError: lost the connection to the head"
    )
    assert r.running() == (False, False)


async def test_a_pair_that_does_not_serve_in_time_is_stopped_with_both_tails(rig):
    r = await rig()
    r.server.ready = lambda: False
    start = r.up()
    await r.loading()
    r.one.write_log(r.one.container(HEAD), "Waiting for 2 Ray nodes, 1 found")
    r.clock.advance(30)
    with pytest.raises(StartError) as failed:
        await start
    assert (failed.value.status, failed.value.code) == (504, "model_start_timeout")
    assert failed.value.message.endswith(
        "Last log lines:\nRay head on host 'one':\n  Waiting for 2 Ray nodes, 1 found\n"
        "Ray worker on host 'two':\n  (nothing)"
    )
    assert r.running() == (False, False)


async def test_a_worker_removed_while_the_head_loads_fails_the_start_and_stops_the_head(rig):
    r = await rig()
    r.server.ready = lambda: False
    start = r.up()
    await r.loading()
    r.two.remove_by_hand(r.two.container(WORKER))
    r.died.set()
    with pytest.raises(StartError, match="model 'huge': its Ray worker on host 'two': cannot inspect") as failed:
        await start
    assert failed.value.code == "model_start_failed" and not r.one.container(HEAD).running


async def test_a_clean_up_docker_refuses_is_logged_and_the_exit_stays_the_news(rig):
    r = await rig()
    r.server.ready = lambda: False
    start = r.up()
    await r.loading()
    r.two.exit(r.two.container(WORKER), 1)
    r.one.refuse("stop", 500, "tried to kill container, but did not receive an exit event")
    with capture_logs() as logs:
        r.died.set()
        with pytest.raises(StartError, match="its Ray worker on host 'two' exited with code 1"):
            await start
    (logged,) = [entry for entry in logs if entry["event"] == "ray_pair_stop_failed"]
    assert "did not receive an exit event" in logged["error"] and logged["log_level"] == "error"


async def test_down_stops_the_head_then_the_worker_even_when_the_heads_engine_refuses(rig):
    r = await rig()
    head_id = await r.up()
    await r.pair.down(r.model, head_id)
    assert r.journal("stop")[-2:] == [("one", "stop", HEAD), ("two", "stop", WORKER)]
    assert r.running() == (False, False)
    await r.up()
    r.one.refuse("stop", 500, "permission denied")
    with pytest.raises(DockerError, match="permission denied"):
        await r.pair.down(r.model, head_id)
    assert r.running() == (True, False)


async def test_an_engine_refusing_the_clean_up_before_a_start_fails_it(rig):
    r = await rig()
    r.one.refuse("list", 500, "engine is shutting down")
    with pytest.raises(StartError, match="could not be started: cannot list containers: engine is shutting down"):
        await r.up()
    assert r.journal("create", "start") == []


async def test_an_image_missing_on_the_heads_host_fails_before_any_container_runs(rig):
    r = await rig(pull="never")
    del r.one.images["vllm:1"]
    with pytest.raises(StartError) as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (503, "image_missing")
    assert failed.value.message.endswith("(its Ray head on host 'one')")
    assert r.journal("create", "start") == []


async def test_a_head_found_running_is_adopted_only_with_its_worker(rig):
    r = await rig()
    head_id = await r.up()
    await r.pair.adopt(r.model, head_id, r.clock.now() + 30, r.died)  # both there: serving
    r.two.write_log(r.two.container(WORKER), "node lost")
    r.two.exit(r.two.container(WORKER), 3)
    with pytest.raises(StartError) as failed:
        await r.pair.adopt(r.model, head_id, r.clock.now() + 30, r.died)
    assert (failed.value.status, failed.value.code) == (503, "model_exited")
    assert "its Ray head runs but its Ray worker on host 'two' does not; both were stopped" in failed.value.message
    assert "Ray worker on host 'two':\n  node lost" in failed.value.message
    assert r.running() == (False, False)


async def test_the_log_tail_of_either_container_is_both_and_a_stranger_has_none(rig):
    r = await rig()
    head_id = await r.up()
    r.one.write_log(r.one.container(HEAD), "INFO head up")
    r.two.write_log(r.two.container(WORKER), "INFO worker up")
    both = "Ray head on host 'one':\n  INFO head up\nRay worker on host 'two':\n  INFO worker up"
    assert await r.pair.log_tail(head_id) == both
    assert await r.pair.log_tail(r.two.container(WORKER).id) == both
    assert await r.pair.log_tail("0123456789ab") == ""
    r.two.refuse("list", 500, "engine is shutting down")
    tails = await r.pair.tails("huge")
    assert tails.endswith("Ray worker on host 'two': cannot list containers: engine is shutting down")


async def test_prepare_reports_each_host_and_gathers_their_errors(rig):
    r = await rig(pull="never")
    del r.two.images["vllm:1"]
    report = await r.pair.prepare(r.model)
    assert report["image (Ray head on one)"] == "present" and report["container (Ray head on one)"] == "created"
    assert report["image (Ray worker on two)"] == "missing"
    assert report["error"].startswith("host 'two': image 'vllm:1' is not on this Docker host")
    assert r.one.container(HEAD).starts == 0


async def test_a_pull_on_either_host_is_the_pairs_pull(rig):
    r = await rig(image="reg.io/team/vllm:2")
    hold = asyncio.Event()
    r.two.registry["reg.io/team/vllm:2"] = Pull("sha256:two", STREAM[:3], hold=hold)
    pulling = asyncio.ensure_future(r.pair.worker.images.ensure(r.model))
    await until(lambda: (p := r.pair.pulling("reg.io/team/vllm:2")) and p.layers_total == 2, "the worker pulls")
    assert r.pair.head.pulling("reg.io/team/vllm:2") is None  # the worker's host pulls, not the head's
    hold.set()
    assert await pulling == "sha256:two" and r.pair.pulling("reg.io/team/vllm:2") is None


async def test_a_pair_has_no_sleep_mode_and_its_health_load_and_logs_are_the_heads(rig):
    r = await rig()
    with pytest.raises(SleepModeError, match="runs over two hosts: it has no sleep mode"):
        await r.pair.sleep(r.model)
    with pytest.raises(SleepModeError, match="runs over two hosts: it has no sleep mode"):
        await r.pair.wake(r.model)
    assert not await r.pair.is_sleeping(r.model)
    assert not await r.pair.healthy(r.model)
    await r.up()
    assert await r.pair.healthy(r.model) and await r.pair.busy(r.model) == 3
    r.one.write_log(r.one.container(HEAD), "Loading weights", at=r.clock.now() + 1)
    log = r.pair.loading_log("huge", since=r.clock.now())
    assert await anext(log) == "Loading weights"
    await log.aclose()
    head_id = await r.pair.container("huge")
    assert head_id == r.one.container(HEAD).id and await r.pair.logs(head_id, 5) == "Loading weights"
    follow = r.pair.follow_logs(head_id, 1)
    assert await anext(follow) == "Loading weights"
    await follow.aclose()
    await r.pair.close()  # the launchers are their hosts': still usable
    assert await r.pair.healthy(r.model)
