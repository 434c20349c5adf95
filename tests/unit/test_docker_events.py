"""The events follower against an HTTP server speaking Docker's API: what counts as losing Docker."""

import asyncio

from aiohttp import web

from tests.eventually import eventually_async
from waker.config.ray import RayNode
from waker.core.driver import ContainerChange, ContainerEvent
from waker.docker import events as docker_events
from waker.docker.runtime import DockerRuntime
from waker.errors import IllegalTransition

DIE = b'{"Type": "container", "Action": "die", "Actor": {"Attributes": {"io.waker.model": "alpha"}}}\n'


async def docker_serving(aiohttp_server, *lines: bytes) -> DockerRuntime:
    """A runtime whose engine answers /version and streams `lines` as its events, then holds the stream open."""

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.43"})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        await asyncio.Event().wait()
        return response

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.43/events", events)
    server = await aiohttp_server(app)
    return DockerRuntime("test", f"tcp://127.0.0.1:{server.port}")


async def follow_until_lost(runtime: DockerRuntime) -> tuple[list[ContainerEvent], list[str]]:
    seen: list[ContainerEvent] = []
    lost: list[str] = []

    async def connected() -> None:
        return None

    async def reported_lost() -> list[str]:
        return lost

    follower = asyncio.create_task(docker_events.follow(runtime, seen.append, connected, lost.append))
    try:
        await eventually_async(reported_lost, 10, "the stream reported lost")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await runtime.close()
    return seen, lost


async def test_a_line_that_is_not_json_is_the_stream_failing(aiohttp_server):
    runtime = await docker_serving(aiohttp_server, DIE, b"{not json\n")
    seen, lost = await follow_until_lost(runtime)
    assert [(e.change, e.model_id) for e in seen] == [(ContainerChange.DIED, "alpha")]
    assert "not JSON" in lost[0] and "{not json" in lost[0], lost


async def test_json_that_is_not_an_event_object_is_the_stream_failing(aiohttp_server):
    runtime = await docker_serving(aiohttp_server, b'["die"]\n')
    seen, lost = await follow_until_lost(runtime)
    assert seen == [] and "not an event object" in lost[0], lost


async def test_a_line_longer_than_the_client_buffers_is_the_stream_failing(aiohttp_server):
    runtime = await docker_serving(aiohttp_server, b'{"Action": "' + b"x" * 20_000_000 + b'"}\n')
    seen, lost = await follow_until_lost(runtime)
    assert seen == [] and "a line longer than aiohttp buffers" in lost[0], lost


async def test_a_state_machine_bug_is_not_mistaken_for_losing_docker(aiohttp_server):
    runtime = await docker_serving(aiohttp_server, DIE)
    lost: list[str] = []

    def buggy(event: ContainerEvent) -> None:
        raise IllegalTransition("ready --start--> ?")

    async def connected() -> None:
        return None

    try:
        follower = docker_events.follow(runtime, buggy, connected, lost.append)
        raised = await asyncio.wait_for(asyncio.gather(follower, return_exceptions=True), 10)
    finally:
        await runtime.close()
    assert isinstance(raised[0], IllegalTransition) and lost == []


def test_docker_events_become_typed_container_events_and_others_are_ignored():
    die = {"status": "die", "id": "c1", "Actor": {"ID": "c1", "Attributes": {"io.waker.model": "a", "exitCode": "137"}}}
    start = {"Action": "start", "Actor": {"ID": "c2", "Attributes": {"io.waker.model": "b"}}}
    assert docker_events.container_event(die) == ContainerEvent(ContainerChange.DIED, "a", "c1", "137")
    assert docker_events.container_event(start) == ContainerEvent(ContainerChange.STARTED, "b", "c2")
    assert (
        docker_events.container_event({"Action": "oom", "Actor": {"Attributes": {"io.waker.model": "a"}}}).change
        is ContainerChange.OOM
    )
    assert (
        docker_events.container_event({"Action": "exec_start", "Actor": {"Attributes": {"io.waker.model": "a"}}})
        is None
    )
    assert docker_events.container_event({"Action": "die", "Actor": {"Attributes": {}}}) is None


def test_a_ray_workers_death_is_its_models_death_marked_as_the_workers():
    attributes = {"io.waker.model": "huge", "io.waker.ray-node": "worker", "exitCode": "137"}
    died = docker_events.container_event({"Action": "die", "id": "w1", "Actor": {"ID": "w1", "Attributes": attributes}})
    assert died == ContainerEvent(ContainerChange.DIED, "huge", "w1", "137", RayNode.WORKER)
    head = {"io.waker.model": "huge", "io.waker.ray-node": "head"}
    assert (
        docker_events.container_event({"Action": "start", "id": "h1", "Actor": {"Attributes": head}}).ray_node
        is RayNode.HEAD
    )
