"""nginx in the gateway container, as `waker serve --nginx container` drives it (nginx/container.py): the
files are written and tested here, the reload is a SIGHUP through Docker to the gateway container only,
and only when nginx runs another config. Here the gateway is a fake engine's container plus a small
server answering nginx's generation probe, and `nginx -t` is tests/unit/fake_nginx.py (tests/e2e/
test_compose.py runs the real gateway)."""

from __future__ import annotations

import re
import socket
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.unit import test_nginx_process
from tests.unit.fake_docker import STACK, managed
from waker.config.schema import Config, parse_config
from waker.docker.spec import LABEL_ROLE, ROLE_GATEWAY
from waker.errors import NginxError
from waker.nginx import container as nginx_container
from waker.nginx.container import NginxContainer
from waker.nginx.process import write_files
from waker.nginx.render import GENERATION_PATH

GENERATION = re.compile(rf"location = {GENERATION_PATH} {{[^}}]*return 200 '([0-9a-f]+)'")


class FakeGateway:
    """The gateway's nginx as the waker probes it: it answers the generation of the files it last loaded
    (at start, and on each SIGHUP Docker passes it); `misses` scripts probes it leaves unanswered."""

    def __init__(self) -> None:
        self.generation = ""
        self.misses: deque[bool] = deque()  # one entry a probe, True = unanswered; then every probe answers
        self.probes = 0
        self.port = 0

    def load(self, runtime_dir: Path) -> None:
        found = GENERATION.search((runtime_dir / "nginx.conf").read_text())
        assert found is not None
        self.generation = found.group(1)

    async def serve(self, aiohttp_server: Any) -> FakeGateway:
        app = web.Application()
        app.router.add_get(GENERATION_PATH, self._generation)
        self.port = (await aiohttp_server(app)).port
        return self

    async def _generation(self, request: web.Request) -> web.Response:
        self.probes += 1
        missed = self.misses.popleft() if self.misses else False
        if missed or not self.generation:
            return web.Response(status=503)
        return web.Response(text=self.generation)


@pytest.fixture
async def gateway(aiohttp_server):
    return await FakeGateway().serve(aiohttp_server)


@pytest.fixture
def nginx_binary(tmp_path: Path) -> test_nginx_process.Gateway:
    """tests/unit/fake_nginx.py for `nginx -t`; `misbehave("refuse", ...)` makes it refuse every config."""
    return test_nginx_process.Gateway(tmp_path)


@pytest.fixture
def configs(tmp_path: Path, gateway: FakeGateway, nginx_binary: test_nginx_process.Gateway):
    """Configs of one gateway by their models: one runtime dir, the fake gateway's port, the fake nginx."""

    def make(*model_ids: str) -> Config:
        raw = nginx_binary.raw(*model_ids)
        raw["gateway"]["listen"] = f"127.0.0.1:{gateway.port}"
        raw["waker"]["name"] = STACK
        return parse_config(raw, tmp_path / "models.toml")

    return make


@pytest.fixture
def gateway_container(docker, gateway, tmp_path):
    """The gateway's container, in this process's network namespace (so: its hostname), passing SIGHUP
    to the fake nginx; a model's container and another stack's gateway beside it."""
    docker.add("unit-alpha", managed("alpha"), running=True)
    labels = {"Image": "waker:1", "Labels": {LABEL_ROLE: ROLE_GATEWAY}}
    docker.add("other-gateway", labels, running=True, hostname="another-namespace")
    docker.on_kill = lambda container, signal: gateway.load(tmp_path / "run") if signal == "HUP" else None
    return docker.add("unit-gateway", labels, running=True, hostname=socket.gethostname())


def hups(docker) -> list[tuple[str, dict[str, str]]]:
    return [(call.target, call.query) for call in docker.calls if call.action == "kill"]


async def test_a_gateway_already_running_this_config_is_adopted_without_a_reload(
    configs, gateway, gateway_container, docker, runtime
):
    config = configs("alpha")
    write_files(config)  # what the gateway loaded at its own start, from an earlier waker
    gateway.load(config.waker.runtime_dir)
    gateway.misses.append(True)  # still starting when the waker asks first: waited for
    nginx = NginxContainer(config, runtime)
    assert not nginx.alive()
    await nginx.start()
    assert nginx.alive() and nginx.container_id == gateway_container.id and gateway.probes == 2
    assert hups(docker) == []  # its kept-alive connections are left alone


async def test_a_gateway_running_another_config_is_reloaded_by_a_sighup_through_docker(
    configs, gateway, gateway_container, docker, runtime
):
    write_files(configs("old"))
    gateway.load(configs("old").waker.runtime_dir)
    before = gateway.generation
    nginx = NginxContainer(configs("alpha"), runtime)
    await nginx.start()
    assert hups(docker) == [("unit-gateway", {"signal": "HUP"})]  # to our gateway only, never another container
    assert gateway.generation != before and gateway_container.running


async def test_a_reload_signals_nginx_only_when_what_it_runs_changes(
    configs, gateway, gateway_container, docker, runtime
):
    nginx = NginxContainer(configs("alpha"), runtime)
    write_files(configs("alpha"))
    gateway.load(configs("alpha").waker.runtime_dir)
    await nginx.start()
    await nginx.reload(configs("alpha"))
    assert hups(docker) == []
    await nginx.reload(configs("alpha", "beta"))
    assert len(hups(docker)) == 1 and nginx.config.model("beta") is not None
    generation = gateway.generation
    await nginx.reload(configs("alpha", "beta"), asleep=frozenset({"beta"}))  # beta's gate closes
    assert len(hups(docker)) == 2 and gateway.generation != generation


async def test_a_config_nginx_refuses_is_an_error_and_the_running_one_stays(
    configs, nginx_binary, gateway, gateway_container, docker, runtime
):
    nginx = NginxContainer(configs("alpha"), runtime)
    write_files(configs("alpha"))
    gateway.load(configs("alpha").waker.runtime_dir)
    await nginx.start()
    running = gateway.generation
    await nginx.check(configs("alpha", "beta"))  # tested in a staging dir, nothing reloaded
    nginx_binary.misbehave("refuse", 'unknown directive "proxy_passs"')
    with pytest.raises(NginxError, match=r"refused the rendered config .*/staging/nginx.conf:\nnginx: \[emerg\] unkno"):
        await nginx.check(configs("alpha", "beta"))
    with pytest.raises(NginxError, match="nginx refused the rendered config"):
        await nginx.reload(configs("alpha", "beta"))
    assert hups(docker) == [] and gateway.generation == running


async def test_a_gateway_that_does_not_answer_at_start_is_an_error_naming_its_container(
    configs, gateway, gateway_container, runtime, monkeypatch
):
    monkeypatch.setattr(nginx_container, "START_TIMEOUT", 0.0)
    nginx = NginxContainer(configs("alpha"), runtime)  # the gateway answers nothing: no generation loaded
    with pytest.raises(NginxError) as failed:
        await nginx.start()
    assert failed.value.args[0] == (
        f"the gateway's nginx does not answer on 127.0.0.1:{gateway.port} within 0 s; "
        f"is the gateway container ({gateway_container.id[:12]}) running?"
    )
    assert not nginx.alive()


async def test_the_waker_lets_go_of_a_gateway_only_after_missed_probes_in_a_row(
    configs, gateway, gateway_container, docker, runtime, monkeypatch
):
    monkeypatch.setattr(nginx_container, "PROBE_INTERVAL", 0.0)
    nginx = NginxContainer(configs("alpha"), runtime)
    write_files(configs("alpha"))
    gateway.load(configs("alpha").waker.runtime_dir)
    await nginx.start()
    gateway.probes = 0
    gateway.misses.extend([False, True, True, False, True, True, True])  # a restart's blip, then gone
    assert await nginx.wait() is None  # nginx is not the waker's child: no exit code
    assert gateway.probes == 7 and not nginx.alive()
    await nginx.stop()  # nginx outlives the waker: nothing is sent to it
    assert hups(docker) == [] and docker.actions("stop", "kill", "remove") == []
