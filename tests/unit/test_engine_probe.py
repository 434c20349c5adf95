"""A running model server's health and load, as the waker asks them (engine/probe.py), against a fake
server: a health check is a plain yes or no, and the load is vLLM's own count or None when the server
does not say; a server that does not answer is a DriverError (the shell asks again)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.unit.fake_docker import refusing_port
from waker.engine import probe
from waker.errors import DriverError


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        yield session


async def test_healthy_is_a_200_from_the_health_check_and_anything_else_is_not(http, model_server):
    assert await probe.healthy(http, f"{model_server.url}/health")
    model_server.ready = lambda: False
    assert not await probe.healthy(http, f"{model_server.url}/health")  # 503: loading
    assert not await probe.healthy(http, f"{model_server.url}/nowhere")  # 404: a wrong health path
    with refusing_port() as closed:
        assert not await probe.healthy(http, f"http://127.0.0.1:{closed.getsockname()[1]}/health")


async def test_a_health_check_that_does_not_answer_in_time_is_not_healthy(model_server):
    model_server.stall = True
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as http:
        assert not await probe.healthy(http, f"{model_server.url}/health")  # it would answer 200, too late


async def test_busy_counts_the_requests_running_and_waiting_that_vllm_reports(http, model_server):
    assert await probe.busy(http, model_server.url) == 3  # 2 running + 1 waiting; the cache gauge is not load
    model_server.metrics = (
        'vllm:num_requests_running{engine="0"} 1.0\nvllm:num_requests_running{engine="1"} 2.0\n'
        "vllm:num_requests_waiting 4e+00\n"
    )
    assert await probe.busy(http, model_server.url) == 7  # every engine's gauges, labelled or not
    model_server.metrics = "vllm:num_requests_running 0.0\nvllm:num_requests_waiting 0.0\n"
    assert await probe.busy(http, model_server.url) == 0  # idle is an answer, not "unknown"


async def test_busy_is_none_when_the_server_does_not_say(http, model_server):
    model_server.metrics = "# llama.cpp\nllamacpp:requests_processing 1\n"
    assert await probe.busy(http, model_server.url) is None
    model_server.metrics, model_server.metrics_status = "vllm:num_requests_running 5.0\n", 404
    assert await probe.busy(http, model_server.url) is None


async def test_a_server_that_does_not_answer_its_metrics_is_a_driver_error_so_the_shell_asks_again(
    http, model_server, monkeypatch
):
    with refusing_port() as closed:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with pytest.raises(DriverError, match=f"{url}/metrics did not answer: ClientConnectorError"):
            await probe.busy(http, url)
    monkeypatch.setattr(probe, "METRICS_TIMEOUT", 0.05)  # the real wait is 10 s
    model_server.stall = True  # wedged, or stalled while it streams
    with pytest.raises(DriverError, match=f"{model_server.url}/metrics did not answer within 0.05 s"):
        await probe.busy(http, model_server.url)
