"""The driver of one Docker engine (`Launcher`), against a fake engine and a fake model server, on a fake
clock: what a start creates, recreates, starts, removes and stops, and the StartError each way of failing
becomes (tests/e2e check the same wiring against a real engine and real model servers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fake_docker import STACK, STDERR, FakeDocker, ModelServer, Pull, managed, until
from tests.unit.shell_fakes import FakeClock
from tests.unit.test_image_pull import STREAM
from waker.config.hosts import DockerEndpoint, DockerScheme, HostConfig, Interconnect
from waker.config.schema import ModelConfig, parse_config
from waker.core.driver import ContainerChange, ContainerEvent
from waker.docker.images import Images
from waker.docker.launcher import EXIT_CHECK_INTERVAL, Launcher
from waker.docker.spec import LABEL_MODEL, LABEL_RAY_NODE, LABEL_SPEC
from waker.errors import StartError

IMAGE_ID = "sha256:one"


@dataclass
class Rig:
    """A launcher over the fake engine, the model it starts (reached at the fake model server), the event
    the shell would set on the model's container dying, and the clock the launcher reads."""

    docker: FakeDocker
    server: ModelServer
    launcher: Launcher
    model: ModelConfig
    clock: FakeClock
    died: asyncio.Event

    def up(self) -> asyncio.Task[str]:
        return asyncio.ensure_future(self.launcher.up(self.model, self.died))

    async def loading(self) -> None:
        """Until the start is waiting for the health check (its deadlines are set by then)."""
        await until(lambda: self.server.health_checks > 0, "the start asked the health check")

    def container(self) -> Any:
        return self.docker.container(self.launcher.node(self.model).name)


def model_config(host_port: int, waker: dict[str, Any] | None = None, **keys: Any) -> Any:
    model = {"id": "alpha", "image": "img:1", "host_port": host_port, "start_timeout": 30, "stop_timeout": 4, **keys}
    return parse_config({"waker": {"name": STACK, **(waker or {})}, "model": [model]}, Path("/etc/waker/models.toml"))


@pytest.fixture
async def rig(docker, runtime, model_server):
    """Makes rigs; by default the image is on the host and the model answers its health check while its
    container runs."""
    made: list[Launcher] = []
    docker.images["img:1"] = IMAGE_ID

    def make(server: ModelServer = model_server, host: HostConfig | None = None, **keys: Any) -> Rig:
        config = model_config(server.port, **keys)
        clock = FakeClock()
        images = Images(runtime, lambda image, progress: None, clock.now, credentials=lambda image: None)
        launcher = Launcher(config.waker, runtime, images, clock.now, host)
        made.append(launcher)
        model = config.models[0]
        server.ready = lambda: any(
            c.running and c.labels.get(LABEL_MODEL) == model.id for c in docker.containers.values()
        )
        return Rig(docker, server, launcher, model, clock, asyncio.Event())

    yield make
    for launcher in made:
        await launcher.close()


def existing(r: Rig, running: bool, image_id: str = IMAGE_ID, **changed: Any) -> Any:
    """The model's container as an earlier start left it; `changed`: config keys it was made with instead."""
    old = model_config(r.server.port, **changed).models[0] if changed else r.model
    return r.docker.add(r.launcher.node(r.model).name, r.launcher.node(old).spec, running, image_id)


CHANGES = ("stop", "remove", "create", "connect", "start")


async def test_up_creates_and_starts_the_container_and_returns_once_it_answers_its_health_check(rig):
    r = rig()
    loaded = False
    r.server.ready = lambda: loaded
    start = r.up()
    await r.loading()
    assert not start.done()  # started, not yet answering
    loaded = True
    container_id = await start
    created = r.container()
    assert created.id == container_id and created.running and created.image_id == IMAGE_ID
    assert r.docker.actions(*CHANGES) == [("create", "unit-alpha"), ("start", "unit-alpha")]
    assert created.config == r.launcher.node(r.model).spec
    published = created.config["HostConfig"]["PortBindings"]
    assert published == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(r.server.port)}]}


async def test_a_running_container_of_the_same_spec_is_adopted_as_it_is(rig):
    r = rig()
    running = existing(r, running=True)
    assert await r.up() == running.id
    assert r.docker.actions(*CHANGES) == []


async def test_a_stopped_container_of_the_same_spec_and_image_is_started_again(rig):
    r = rig()
    stopped = existing(r, running=False)
    assert await r.up() == stopped.id and stopped.running and stopped.starts == 1
    assert r.docker.actions(*CHANGES) == [("start", "unit-alpha")]


async def test_a_model_whose_spec_changed_is_recreated_stop_remove_create_start(rig):
    r = rig()
    old = existing(r, running=True, env={"VLLM_OLD_FLAG": "1"})
    new_id = await r.up()
    assert r.docker.actions(*CHANGES) == [
        ("stop", "unit-alpha"),
        ("remove", "unit-alpha"),
        ("create", "unit-alpha"),
        ("start", "unit-alpha"),
    ]
    assert new_id != old.id and old.id not in r.docker.containers
    assert r.container().labels[LABEL_SPEC] == r.launcher.node(r.model).spec["Labels"][LABEL_SPEC]
    assert [c.query for c in r.docker.calls if c.action == "stop"] == [{"t": "4"}]  # the model's stop_timeout


async def test_a_newer_image_replaces_a_stopped_container_but_never_a_running_one(rig):
    r = rig()
    old = existing(r, running=True, image_id="sha256:older")
    assert await r.up() == old.id  # serving: left alone, the new image waits for its next start
    assert r.docker.actions(*CHANGES) == []
    r.docker.exit(old, 0)
    new_id = await r.up()
    assert r.docker.actions(*CHANGES) == [("remove", "unit-alpha"), ("create", "unit-alpha"), ("start", "unit-alpha")]
    assert r.docker.containers[new_id].image_id == IMAGE_ID


async def test_a_new_container_that_cannot_start_is_removed(rig):
    r = rig()
    r.docker.refuse("start", 500, "driver failed programming external connectivity: port is already allocated")
    with pytest.raises(StartError) as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (503, "model_start_failed")
    assert "model 'alpha' could not be started: cannot start container" in failed.value.message
    assert "port is already allocated" in failed.value.message
    assert r.docker.actions(*CHANGES) == [("create", "unit-alpha"), ("start", "unit-alpha"), ("remove", "unit-alpha")]
    assert r.docker.containers == {}


async def test_a_kept_container_that_cannot_start_is_made_afresh_once(rig):
    r = rig()
    kept = existing(r, running=False)
    r.docker.refuse("start", 404, "failed to set up container networking: network 3f2a not found")
    new_id = await r.up()  # say its network was recreated since: a new container joins the new one
    assert new_id != kept.id and r.docker.containers[new_id].running
    assert r.docker.actions(*CHANGES) == [
        ("start", "unit-alpha"),
        ("remove", "unit-alpha"),
        ("create", "unit-alpha"),
        ("start", "unit-alpha"),
    ]


async def test_a_container_made_afresh_that_cannot_start_either_is_removed_too(rig):
    r = rig()
    existing(r, running=False)
    r.docker.refuse("start", 500, "OCI runtime create failed: nvidia-container-cli: device error", times=2)
    with pytest.raises(StartError, match="nvidia-container-cli: device error") as failed:
        await r.up()
    assert failed.value.code == "model_start_failed" and r.docker.containers == {}
    last = r.docker.actions(*CHANGES)[-3:]
    assert last == [("create", "unit-alpha"), ("start", "unit-alpha"), ("remove", "unit-alpha")]


NETWORKED = {"network": "models", "model_ip_base": "127.0.0.1", "egress_network": "egress"}


async def test_a_networked_model_joins_its_egress_network_between_create_and_start(rig, model_server):
    r = rig(waker=NETWORKED, port=model_server.port)  # its fixed address is the fake server's
    r.docker.networks["egress"] = set()
    container_id = await r.up()
    assert r.docker.actions(*CHANGES) == [("create", "unit-alpha"), ("connect", "egress"), ("start", "unit-alpha")]
    assert r.docker.networks["egress"] == {container_id}
    assert r.container().config["HostConfig"]["NetworkMode"] == "models"


async def test_a_container_that_cannot_join_its_egress_network_is_not_left_behind(rig, model_server):
    r = rig(waker=NETWORKED, port=model_server.port)
    with pytest.raises(StartError, match="to network 'egress': network egress not found") as failed:
        await r.up()
    assert failed.value.code == "model_start_failed" and r.docker.containers == {}
    assert r.docker.actions(*CHANGES) == [("create", "unit-alpha"), ("connect", "egress"), ("remove", "unit-alpha")]


async def test_a_start_that_times_out_stops_the_container_and_gives_its_last_log_lines(rig):
    r = rig()
    r.server.ready = lambda: False
    r.docker.on_start = lambda c: r.docker.write_log(c, "Loading safetensors checkpoint shards: 50% Completed")
    start = r.up()
    await r.loading()
    r.clock.advance(30)
    with pytest.raises(StartError) as failed:
        await start
    assert (failed.value.status, failed.value.code) == (504, "model_start_timeout")
    url = f"http://127.0.0.1:{r.server.port}/health"
    assert failed.value.message == (
        f"model 'alpha' was not ready after 30s (start_timeout; its health check is {url}); it was stopped. "
        "Last log lines:\nLoading safetensors checkpoint shards: 50% Completed"
    )
    assert not r.container().running and r.docker.actions(*CHANGES)[-1] == ("stop", "unit-alpha")


async def test_an_exit_while_loading_is_model_exited_with_the_code_and_the_log_tail(rig):
    r = rig()

    def crash(container: Any) -> None:
        r.docker.write_log(container, "INFO Loading model weights")
        r.docker.write_log(container, "torch.OutOfMemoryError: CUDA out of memory.", stream=STDERR)
        r.docker.exit(container, 1)
        r.died.set()  # what the shell does on Docker's die event

    r.docker.on_start = crash
    with pytest.raises(StartError) as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (503, "model_exited")
    assert failed.value.message == (
        "model 'alpha' exited with code 1 while loading; last log lines:\n"
        "INFO Loading model weights\ntorch.OutOfMemoryError: CUDA out of memory."
    )


async def test_an_exit_docker_explains_and_the_model_never_printed_says_both(rig):
    r = rig()

    def cannot_exec(container: Any) -> None:
        r.docker.exit(container, 127, 'exec: "vllm": executable file not found in $PATH')
        r.died.set()

    r.docker.on_start = cannot_exec
    with pytest.raises(StartError) as failed:
        await r.up()
    assert failed.value.message == (
        "model 'alpha' exited with code 127 while loading "
        '(exec: "vllm": executable file not found in $PATH); it printed nothing'
    )


async def test_an_exit_whose_logs_docker_lost_shows_the_lines_the_loading_log_read(rig):
    """real-clients.md: "exited with code 137 while loading; it printed nothing" came right after the
    waker had read that container's loading lines: Docker had none left to give."""
    r = rig()
    r.server.ready = lambda: False
    start = r.up()
    await r.loading()
    container = r.container()
    r.docker.write_log(container, "INFO Loading model weights")
    log = r.launcher.loading_log("alpha", since=0)
    assert await anext(log) == "INFO Loading model weights"
    container.logs.clear()  # what Docker no longer has
    r.docker.exit(container, 137)
    r.died.set()
    with pytest.raises(StartError) as failed:
        await start
    assert failed.value.message == (
        "model 'alpha' exited with code 137 while loading; last log lines:\nINFO Loading model weights"
    )
    await log.aclose()


async def test_an_exit_is_noticed_without_its_event_while_the_events_stream_is_down(rig):
    r = rig()
    r.docker.on_start = lambda container: r.docker.exit(container, 3)  # and no one sets `died`
    start = r.up()
    await r.loading()
    assert not start.done()
    r.clock.advance(EXIT_CHECK_INTERVAL)
    with pytest.raises(StartError, match="exited with code 3 while loading") as failed:
        await start
    assert failed.value.code == "model_exited"


async def test_a_container_removed_while_it_loads_fails_the_start(rig):
    r = rig()

    def removed(container: Any) -> None:
        r.docker.remove_by_hand(container)
        r.died.set()

    r.docker.on_start = removed
    with pytest.raises(StartError, match="model 'alpha': cannot inspect container .*No such container") as failed:
        await r.up()
    assert failed.value.code == "model_start_failed"


async def test_a_container_found_loading_after_a_restart_is_waited_for_and_its_exit_noticed(rig):
    r = rig()
    loaded = False
    r.server.ready = lambda: loaded
    container = existing(r, running=True)
    adopting = asyncio.ensure_future(r.launcher.adopt(r.model, container.id, r.clock.now() + 30, r.died))
    await r.loading()
    assert not adopting.done()
    loaded = True
    await adopting
    r.server.health_checks, loaded = 0, False
    adopting = asyncio.ensure_future(r.launcher.adopt(r.model, container.id, r.clock.now() + 30, r.died))
    await r.loading()
    r.docker.exit(container, 1)
    r.died.set()
    with pytest.raises(StartError, match="exited with code 1 while loading"):
        await adopting
    assert r.docker.actions(*CHANGES) == []  # adopting creates and starts nothing


async def test_an_image_missing_with_pull_never_fails_before_any_container_is_made(rig):
    r = rig(image="reg.io/team/img:2", pull="never")
    with pytest.raises(StartError, match="not on this Docker host and model 'alpha' has pull = .never.") as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (503, "image_missing")
    assert r.docker.actions("pull", *CHANGES) == []


async def test_a_refused_pull_fails_the_start_in_the_registrys_words(rig):
    r = rig(image="reg.io/team/img:2")
    with pytest.raises(StartError, match="manifest for reg.io/team/img:2 not found") as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (503, "image_pull_failed")
    assert r.docker.actions("pull", *CHANGES) == [("pull", "reg.io/team/img:2")]


async def test_a_pull_still_running_at_the_deadline_is_a_timeout_saying_how_far_it_got(rig):
    r = rig(image="reg.io/team/img:2", start_timeout=0.2)
    pull = r.docker.registry["reg.io/team/img:2"] = Pull("sha256:two", STREAM[:5], hold=asyncio.Event())
    earlier = asyncio.ensure_future(r.launcher.images.ensure(r.model))  # another start, already pulling
    await until(lambda: (p := r.launcher.pulling(r.model.image)) and p.bytes_done == 3000, "the pull got halfway")
    with pytest.raises(StartError) as failed:
        await r.up()
    assert (failed.value.status, failed.value.code) == (504, "model_start_timeout")
    assert failed.value.message == (
        "model 'alpha': its image was still being pulled after 0.2s (start_timeout); "
        "pulling reg.io/team/img:2: 1/2 layers, 3.0 kB of 4.0 kB"
    )
    pull.hold.set()
    assert await earlier == "sha256:two"  # the pull went on for the start still waiting
    assert r.launcher.pulling(r.model.image) is None


async def test_prepare_pulls_the_image_and_creates_the_container_without_starting_it(rig):
    r = rig(image="reg.io/team/img:2")
    r.docker.registry["reg.io/team/img:2"] = Pull("sha256:two", STREAM)
    assert await r.launcher.prepare(r.model) == {"image": "pulled", "container": "created"}
    assert r.container().starts == 0 and not r.container().running
    assert await r.launcher.prepare(r.model) == {"image": "present", "container": "exists"}
    assert r.docker.actions(*CHANGES) == [("create", "unit-alpha")]


async def test_prepare_recreates_an_outdated_container_unless_it_is_serving(rig):
    r = rig()
    serving = existing(r, running=True, env={"VLLM_OLD_FLAG": "1"})
    report = await r.launcher.prepare(r.model)
    assert report == {"image": "present", "container": "outdated, running: recreated at its next start"}
    assert r.docker.actions(*CHANGES) == []
    r.docker.exit(serving, 0)
    assert await r.launcher.prepare(r.model) == {"image": "present", "container": "recreated"}
    assert r.docker.actions(*CHANGES) == [("remove", "unit-alpha"), ("create", "unit-alpha")]


async def test_prepare_reports_a_missing_image_and_dockers_refusals_instead_of_raising(rig):
    r = rig(pull="never", image="reg.io/team/img:2")
    report = await r.launcher.prepare(r.model)
    assert report["image"] == "missing" and 'has pull = "never"' in report["error"] and "container" not in report
    r = rig()
    r.docker.refuse("create", 500, "no space left on device")
    report = await r.launcher.prepare(r.model)
    assert report == {"image": "present", "error": "cannot create container 'unit-alpha': no space left on device"}


async def test_down_stops_the_container_named_or_else_the_models_own(rig):
    r = rig()
    container = existing(r, running=True)
    await r.launcher.down(r.model, container.id)
    assert not container.running and r.docker.calls[-1].query == {"t": "4"}
    await r.launcher.up(r.model, r.died)
    await r.launcher.down(r.model, None)
    assert not container.running
    r.docker.remove_by_hand(container)
    await r.launcher.down(r.model, None)  # nothing there: nothing to do
    assert r.docker.actions("stop") == [("stop", "unit-alpha")] * 2


async def test_running_names_the_models_served_here_and_not_ray_workers_or_stopped_ones(rig):
    r = rig()
    alpha = existing(r, running=True)
    r.docker.add("unit-huge-w", managed("huge", **{LABEL_RAY_NODE: "worker"}), running=True)
    r.docker.add("unit-beta", managed("beta"))
    r.docker.add("other-gamma", managed("gamma", stack="other"), running=True)
    assert await r.launcher.running() == {"alpha": alpha.id}


async def test_follow_reports_a_models_container_dying_with_its_exit_code(rig):
    r = rig()
    container = existing(r, running=True)
    seen: list[ContainerEvent] = []
    connected = asyncio.Event()

    async def on_connect() -> None:
        connected.set()

    follower = asyncio.ensure_future(r.launcher.follow(seen.append, on_connect, lambda reason: None))
    try:
        await asyncio.wait_for(connected.wait(), 10)
        r.docker.exit(container, 137)
        await until(lambda: seen, "the die event arrived")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert seen == [ContainerEvent(ContainerChange.DIED, "alpha", container.id, "137")]


async def test_the_loading_log_follows_the_running_container_from_the_time_asked(rig):
    r = rig()
    container = existing(r, running=True)
    r.docker.write_log(container, "the run before", at=r.clock.now() - 100)
    r.docker.write_log(container, "Loading weights took 3.1 GiB", at=r.clock.now() + 1)
    log = r.launcher.loading_log("alpha", since=r.clock.now())
    assert await anext(log) == "Loading weights took 3.1 GiB"
    r.docker.write_log(container, "Application startup complete.")
    assert await anext(log) == "Application startup complete."
    r.docker.exit(container, 0)
    assert [line async for line in log] == []
    assert [line async for line in r.launcher.loading_log("alpha", since=0)] == []  # not running: nothing


async def test_the_log_tail_of_a_failed_start_is_its_last_twenty_lines(rig):
    r = rig()
    container = existing(r, running=False)
    for n in range(25):
        r.docker.write_log(container, f"line {n}")
    assert (await r.launcher.log_tail(container.id)).splitlines() == [f"line {n}" for n in range(5, 25)]


async def test_a_models_logs_are_its_own_containers_tailed_or_followed(rig):
    r = rig()
    assert await r.launcher.container("alpha") is None
    r.docker.add("unit-alpha-w", managed("alpha", **{LABEL_RAY_NODE: "worker"}), running=True)
    container = existing(r, running=True)
    assert await r.launcher.container("alpha") == container.id  # the model's own, not a Ray worker
    for n in range(5):
        r.docker.write_log(container, f"line {n}")
    assert await r.launcher.logs(container.id, 2) == "line 3\nline 4"
    follow = r.launcher.follow_logs(container.id, 1)
    assert await anext(follow) == "line 4"
    r.docker.write_log(container, "line 5")
    assert await anext(follow) == "line 5"
    r.docker.exit(container, 0)
    assert [line async for line in follow] == []


async def test_a_model_on_another_host_publishes_and_is_checked_at_that_hosts_address(rig, aiohttp_server):
    remote = await ModelServer().serve(aiohttp_server, host="127.0.0.2")
    try:
        host = HostConfig("spark2", DockerEndpoint(DockerScheme.UNIX, ""), 1.0, "127.0.0.2", Interconnect())
        r = rig(server=remote, host=host)
        await r.up()
        binding = r.container().config["HostConfig"]["PortBindings"]["8000/tcp"]
        assert binding == [{"HostIp": "127.0.0.2", "HostPort": str(remote.port)}]
        assert remote.health_checks > 0 and await r.launcher.healthy(r.model)
        assert await r.launcher.busy(r.model) == 3
        remote.asleep = True
        assert await r.launcher.is_sleeping(r.model)
    finally:
        remote.release()
