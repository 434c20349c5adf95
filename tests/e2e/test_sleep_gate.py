"""nginx never passes a request to a sleeping engine (vLLM would hold it unanswered until a wake): the
real nginx, rendered with a model asleep, sends every request for it to the waker first, and a request
the waker then lets through (X-Accel-Redirect) reaches the model with its body. Stand-ins play the
waker and the model, each counting what reaches it; the shell's wiring of sleep is tested elsewhere."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.stack import free_port_range
from waker.config.schema import parse_config
from waker.nginx.process import NginxProcess, current_generation

pytestmark = pytest.mark.e2e


class StandIns:
    """A model server and a waker that lets every held request through, both recording requests."""

    def __init__(self) -> None:
        self.model_requests: list[tuple[str, bytes]] = []
        self.wakes: list[str] = []

    async def model(self, request: web.Request) -> web.Response:
        self.model_requests.append((request.path, await request.read()))
        return web.json_response({"served_by": "model"})

    async def wake(self, request: web.Request) -> web.Response:
        self.wakes.append(request.match_info["model"])
        return web.Response(status=204, headers={"X-Accel-Redirect": f"@retry_{request.match_info['model']}"})

    async def serve(self, port: int, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner


@pytest.fixture
def runtime_dir():
    path = Path("/tmp") / f"waker-test-gate-{uuid.uuid4().hex[:8]}"  # reachable by nginx's workers
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def gate_scenario(runtime_dir: Path) -> None:
    base = free_port_range(3)
    config = parse_config(
        {
            "gateway": {"listen": f"127.0.0.1:{base}"},
            "waker": {"listen": f"127.0.0.1:{base + 1}", "runtime_dir": str(runtime_dir), "model_port_base": base + 2},
            "model": [{"id": "tiny", "image": "unused"}],
        },
        runtime_dir / "models.toml",
    )
    stand_ins = StandIns()
    model_app, waker_app = web.Application(), web.Application()
    model_app.router.add_route("*", "/{tail:.*}", stand_ins.model)
    waker_app.router.add_get("/_wake/{model}", stand_ins.wake)
    runners = [await stand_ins.serve(base + 2, model_app), await stand_ins.serve(base + 1, waker_app)]
    nginx = NginxProcess(config)
    await nginx.start()
    try:
        await nginx.reload(config, asleep=frozenset({"tiny"}))
        asleep_generation = await current_generation(config)
        body = {"model": "tiny", "prompt": "while asleep", "max_tokens": 1}
        async with aiohttp.ClientSession() as session:
            for url, path in (
                (f"http://127.0.0.1:{base}/v1/completions", "/v1/completions"),
                (f"http://127.0.0.1:{base}/v1/tiny/completions", "/v1/completions"),
            ):
                before = len(stand_ins.wakes)
                async with session.post(url, json=body) as response:
                    assert response.status == 200 and await response.json() == {"served_by": "model"}
                # It went to the waker first, and reached the model only through the waker's redirect.
                assert stand_ins.wakes[before:] == ["tiny"]
                assert stand_ins.model_requests[-1] == (path, json.dumps(body).encode())
            assert len(stand_ins.model_requests) == 2

            await nginx.reload(config)  # woken: the gate opens with a reload
            assert await current_generation(config) not in (None, asleep_generation)
            async with session.post(f"http://127.0.0.1:{base}/v1/completions", json=body) as response:
                assert response.status == 200
            assert len(stand_ins.wakes) == 2 and len(stand_ins.model_requests) == 3  # straight to the model
    finally:
        await nginx.stop()
        for runner in runners:
            await runner.cleanup()


def test_nginx_sends_requests_for_a_sleeping_model_to_the_waker_first(runtime_dir):
    asyncio.run(gate_scenario(runtime_dir))
