"""The waker's HTTP face (what nginx, clients and operators call) over the real shell with a fake
driver: wake, model list, health, admin API, model controls and /metrics, without Docker."""

from __future__ import annotations

import json

from tests.unit.shell_fakes import until
from tests.unit.test_supervisor import begin, end, ready
from waker.core.events import ModelStopped
from waker.core.lifecycle import State
from waker.errors import StartError
from waker.nginx.render import NGINX_ERRORS


async def test_a_wake_holds_until_ready_then_redirects_nginx_to_the_model(api):
    shell, client = await api({"id": "a"})
    response = await client.get("/_wake/a")
    assert response.status == 204
    assert response.headers["X-Accel-Redirect"].startswith("@retry_")
    assert shell.supervisor.state("a") is State.READY
    stats = await (await client.get("/_stats")).json()
    assert stats["wakes"] == 1 and stats["wake_response_body_bytes"] == 0


async def test_with_client_keys_the_waker_port_wants_one_where_the_gateway_does(api):
    """security-probe.md #4: with keys on, a keyless call to the waker port's /_wake started a model, and
    its model list answered."""
    shell, client = await api({"id": "a"}, gateway={"api_keys": ("sk-one",)})
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        refused = await client.get("/_wake/a", headers=headers)
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert (await refused.json())["error"]["code"] == NGINX_ERRORS[401][0]
    assert shell.supervisor.state("a") is State.STOPPED  # nothing started for them
    assert (await client.get("/_wake/a", headers={"x-api-key": "sk-one"})).status == 204
    for path in ("/v1/models", "/models"):  # the model list too, as nginx guards it
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers={"Authorization": "Bearer sk-one"})).status == 200
    assert (await client.get("/healthz")).status == 200  # as on the gateway: no key for health


async def test_a_wake_that_fails_answers_the_openai_error(api):
    shell, client = await api({"id": "a"})
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "model 'a' exited with code 1 while loading"))
    response = await client.get("/_wake/a")
    body = await response.json()
    assert response.status == 503
    assert body["error"]["code"] == "model_exited" and "exited with code 1" in body["error"]["message"]
    missing = await client.get("/_wake/nope")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "model_not_found"


async def test_the_model_list_carries_each_models_state_and_status(api):
    shell, client = await api({"id": "a"}, {"id": "b"})
    await ready(shell, "a")
    for path in ("/v1/models", "/models"):
        listed = {m["id"]: m for m in (await (await client.get(path)).json())["data"]}
        assert listed["a"]["status"] == {"value": "loaded"} and listed["b"]["status"] == {"value": "unloaded"}


async def test_health_says_why_it_is_degraded(api):
    shell, client = await api({"id": "a"})
    assert (await client.get("/healthz")).status == 200
    shell.driver.lose("Cannot connect to the Docker daemon")
    response = await client.get("/healthz")
    assert response.status == 503
    assert await response.json() == {"status": "degraded", "docker": "Cannot connect to the Docker daemon"}


async def test_admin_lists_stops_pins_and_unloads(api):
    shell, client = await api({"id": "a", "gpu_memory": 0.3}, {"id": "b", "gpu_memory": 0.3})
    await ready(shell, "a")
    await ready(shell, "b")
    listing = await (await client.get("/admin/models")).json()
    assert {m["id"]: m["state"] for m in listing["models"]} == {"a": "ready", "b": "ready"}
    assert listing["docker"] == "connected" and listing["queue_length"] == 0
    assert (await (await client.get("/admin/models/a")).json())["container_id"] == "a-1"
    pinned = await (await client.post("/admin/models/a/pin")).json()
    assert pinned["pinned"] is True
    begin(shell, "b", b"r1")
    refused = await client.post("/admin/models/b/stop")
    assert refused.status == 409 and "in flight" in (await refused.json())["error"]["message"]
    unloaded = await (await client.post("/admin/unload?force=true")).json()
    assert unloaded == {"models": {"b": "stopping"}}
    assert shell.supervisor.state("b") is State.STOPPED  # wait=true: answered once stopped
    stopped = await (await client.post("/admin/models/a/stop")).json()
    assert stopped["outcome"] == "stopping" and stopped["state"] == "stopped"
    unknown = await client.post("/admin/models/zzz/stop")
    assert unknown.status == 404 and "the models are: a, b" in (await unknown.json())["error"]["message"]
    bad = await client.post("/admin/models/a/stop?force=maybe")
    assert bad.status == 400 and "must be true or false" in (await bad.json())["error"]["message"]


async def test_admin_start_without_waiting_answers_at_once(api):
    shell, client = await api({"id": "a"})
    gate = shell.driver.hold("a")
    response = await client.post("/admin/models/a/start?wait=false")
    assert response.status == 202
    assert (await response.json())["state"] == "starting"  # the decision, not the state before it
    assert shell.supervisor.state("a") is State.STARTING  # answered before the start ended
    gate.set_result(None)
    await shell.reach("a", State.READY)


async def test_admin_events_stream_what_happens(api):
    shell, client = await api({"id": "a"})
    response = await client.get("/admin/events")
    assert response.headers["Content-Type"] == "text/event-stream"
    await ready(shell, "a")
    seen = b""
    while b"event: model_ready" not in seen:
        seen += await response.content.readany()
    ready_event = json.loads(seen.split(b"event: model_ready\ndata: ")[1].split(b"\n")[0])
    assert ready_event["model"] == "a"
    response.close()


async def test_admin_logs_come_from_the_models_driver_tail_or_followed(api):
    shell, client = await api({"id": "a"})
    missing = await client.get("/admin/models/a/logs")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "no_container"
    await ready(shell, "a")
    container = shell.supervisor.records["a"].container
    shell.driver.tails[container] = "loading\nready\nserving"
    tail = await (await client.get("/admin/models/a/logs?tail=2")).json()
    assert tail == {"model": "a", "container_id": container, "lines": ["ready", "serving"]}
    followed = await client.get("/admin/models/a/logs?tail=3&follow=true")
    assert followed.headers["Content-Type"] == "text/event-stream"
    lines = [
        json.loads(line.removeprefix("data: "))["line"]
        for line in (await followed.text()).splitlines()
        if line.startswith("data: ")
    ]
    assert lines == ["loading", "ready", "serving"]
    bad = await client.get("/admin/models/a/logs?tail=lots")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_parameter"


async def test_admin_prepare_reports_per_model_and_refuses_unknown_ones(api):
    shell, client = await api({"id": "a"})
    report = await (await client.post("/admin/prepare", json={"models": ["a"]})).json()
    assert report == {"ok": True, "models": {"a": {"image": "present", "container": "created"}}}
    unknown = await client.post("/admin/prepare", json={"models": ["x"]})
    assert unknown.status == 404
    broken = await client.post("/admin/prepare", data=b"{", headers={"Content-Type": "application/json"})
    assert broken.status == 400


async def test_client_model_controls_are_refused_unless_enabled(api):
    shell, client = await api({"id": "a"})
    refused = await client.post("/models/load", json={"model": "a"})
    assert refused.status == 403 and "client_model_control" in (await refused.json())["error"]["message"]
    assert shell.supervisor.state("a") is State.STOPPED


async def test_client_load_and_unload_when_enabled(api):
    shell, client = await api({"id": "a"}, gateway={"client_model_control": True})
    loaded = await (await client.post("/models/load", json={"model": "a"})).json()
    assert loaded["success"] is True and loaded["status"] == {"value": "loaded"}
    unloaded = await (await client.post("/models/unload", json={"model": "a"})).json()
    assert unloaded["outcome"] == "stopping" and unloaded["status"] == {"value": "unloaded"}
    assert shell.kinds(ModelStopped, model="a", reason="client")


async def test_metrics_count_starts_failures_and_stops_by_reason(api):
    shell, client = await api({"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6})
    await ready(shell, "a")
    await ready(shell, "b")  # evicts a
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "boom"))
    await client.get("/_wake/a")  # evicts b, then fails
    await until(lambda: shell.supervisor.state("a") is State.FAILED, "a failed")
    text = await (await client.get("/metrics")).text()
    assert 'waker_model_stops_total{model="a",reason="evicted"} 1' in text
    assert 'waker_model_stops_total{model="b",reason="evicted"} 1' in text
    assert 'waker_model_start_failures_total{model="a"} 1' in text
    assert 'waker_model_starts_total{model="b"} 1' in text
    assert 'waker_model_state{model="a",state="failed"} 1' in text
    assert "waker_docker_connected 1" in text


async def test_admin_sleep_puts_an_idle_model_to_sleep_and_start_wakes_it(api):
    sleeper = {"id": "a", "sleep": 1, "command": ["--served-model-name", "a"], "gpu_memory": 0.3}
    shell, client = await api(sleeper, {"id": "plain", "gpu_memory": 0.3}, sleep_mode=True)
    await ready(shell, "plain")
    refused = await client.post("/admin/models/plain/sleep")
    assert refused.status == 409 and "sleep = 0" in (await refused.json())["error"]["message"]
    not_ready = await client.post("/admin/models/a/sleep")
    assert not_ready.status == 409 and "only a ready model" in (await not_ready.json())["error"]["message"]
    await ready(shell, "a")
    begin(shell, "a", b"r1")
    busy = await client.post("/admin/models/a/sleep")
    assert busy.status == 409 and "1 request(s) in flight" in (await busy.json())["error"]["message"]
    end(shell, "a", b"r1")
    slept = await (await client.post("/admin/models/a/sleep")).json()
    assert slept["outcome"] == "falling asleep" and slept["state"] == "sleeping"  # wait=true: once asleep
    assert slept["sleep"] == 1 and slept["asleep_seconds"] == 0 and slept["wake_failures"] == 0
    listed = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert listed["a"]["status"] == {"value": "sleeping"}
    shell.driver.fail_wake("a")
    await ready(shell, "a")  # the wake fails: started cold
    await client.post("/admin/models/a/sleep")
    woken = await (await client.post("/admin/models/a/start")).json()
    assert woken["state"] == "ready" and woken["wake_failures"] == 0
    text = await (await client.get("/metrics")).text()
    assert 'waker_model_sleeps_total{model="a"} 2' in text
    assert 'waker_model_wakes_total{model="a"} 1' in text
    assert 'waker_model_wake_failures_total{model="a"} 1' in text
    assert 'waker_model_asleep_seconds{model="a"} 0' in text
