"""The admin API, the metrics and the admin CLI against the real stack."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading

import aiohttp
import pytest

from tests.e2e.stack import FAKE_IMAGE, REPO, docker, fake_model
from tests.eventually import eventually, eventually_async

pytestmark = pytest.mark.e2e

SCHED = {"start_timeout": "60s", "stop_timeout": "2s", "min_uptime": "0s"}
TOKEN = "s3cret-admin-token"


async def call(session, stack, method, path, token=TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, stack.waker_url + path, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


def model_row(listing, model_id):
    return next(m for m in listing["models"] if m["id"] == model_id)


@pytest.fixture
def stack(make_stack):
    return make_stack(
        [
            fake_model(
                "alpha",
                aliases=["a"],
                load_delay=0.3,
                gpu_memory=0.5,
                context_length=8192,
                tools=True,
                extra=["--tokens-per-second", "10"],
            ),
            fake_model("beta", load_delay=0.3, gpu_memory=0.4),
        ],
        scheduler=SCHED,
        waker={"admin_token": TOKEN},
    )


async def test_models_listing_has_every_documented_field(stack):
    async with aiohttp.ClientSession() as session:
        status, started = await call(session, stack, "POST", "/admin/models/alpha/start")
        assert status == 200 and started["state"] == "ready"
        status, listing = await call(session, stack, "GET", "/admin/models")
    assert status == 200 and listing["docker"] == "connected" and listing["queue_length"] == 0
    alpha = model_row(listing, "alpha")
    for key in (
        "state",
        "uptime_seconds",
        "idle_seconds",
        "in_flight",
        "queued",
        "gpu_memory",
        "last_error",
        "image",
        "container_id",
        "pinned",
        "retry_in_seconds",
        "last_start_seconds",
    ):
        assert key in alpha, key
    assert alpha["state"] == "ready" and alpha["gpu_memory"] == 0.5 and alpha["container_id"]
    assert alpha["image"] == FAKE_IMAGE and alpha["uptime_seconds"] >= 0
    assert model_row(listing, "beta")["state"] == "stopped"


async def test_tokens_are_required_and_checked(stack):
    async with aiohttp.ClientSession() as session:
        for token in (None, "wrong"):
            status, body = await call(session, stack, "GET", "/admin/models", token=token)
            assert status == 401 and body["error"]["code"] == "unauthorized"
        # Through the gateway too: the client port gives no way around the token.
        async with session.get(f"{stack.url}/admin/models") as response:
            assert response.status == 401


async def test_start_without_waiting_then_stop_pin_and_unload(stack):
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, stack, "POST", "/admin/models/beta/start?wait=false")
        assert status == 202 and body["state"] == "starting"
        await call(session, stack, "POST", "/admin/models/alpha/start")

        async def beta_ready() -> bool:
            return model_row((await call(session, stack, "GET", "/admin/models"))[1], "beta")["state"] == "ready"

        await eventually_async(beta_ready, 5, "beta ready", stack.log)
        status, body = await call(session, stack, "POST", "/admin/models/alpha/pin")
        assert status == 200 and body["pinned"] is True
        status, body = await call(session, stack, "POST", "/admin/unload")
        assert status == 200 and body["models"] == {"beta": "stopping"}
        _, listing = await call(session, stack, "GET", "/admin/models")
        assert model_row(listing, "beta")["state"] == "stopped" and model_row(listing, "alpha")["state"] == "ready"
        status, body = await call(session, stack, "POST", "/admin/models/a/unpin")  # aliases work
        assert body["pinned"] is False
        status, body = await call(session, stack, "POST", "/admin/models/alpha/stop")
        assert status == 200 and body["outcome"] == "stopping" and body["state"] == "stopped"
        status, body = await call(session, stack, "POST", "/admin/models/alpha/stop")
        assert status == 200 and body["outcome"] == "already stopped"


async def test_stop_refuses_to_cut_a_stream_unless_forced(stack):
    async with aiohttp.ClientSession() as session:
        await call(session, stack, "POST", "/admin/models/alpha/start")
        payload = json.dumps({"model": "alpha", "prompt": "x", "stream": True, "max_tokens": 40}).encode()
        async with session.post(f"{stack.url}/v1/completions", data=payload) as streaming:
            await streaming.content.readline()
            status, body = await call(session, stack, "POST", "/admin/models/alpha/stop")
            assert status == 409 and "1 request(s) in flight" in body["error"]["message"]
            status, body = await call(session, stack, "POST", "/admin/models/alpha/stop?force=true")
            assert status == 200 and body["state"] == "stopped"


async def test_bad_input_gets_clear_json_errors(stack):
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, stack, "POST", "/admin/models/nope/start")
        assert status == 404 and "alpha" in body["error"]["message"]
        status, body = await call(session, stack, "POST", "/admin/models/alpha/stop?force=maybe")
        assert status == 400 and "force" in body["error"]["message"]
        status, body = await call(session, stack, "POST", "/admin/prepare", data=b"{not json")
        assert status == 400 and body["error"]["code"] == "invalid_json"
        status, body = await call(session, stack, "POST", "/admin/prepare", json={"models": ["ghost"]})
        assert status == 404
        status, body = await call(session, stack, "GET", "/admin/models/alpha/logs?tail=lots")
        assert status == 400
        status, body = await call(session, stack, "GET", "/admin/nothing")
        assert status == 404 and body["error"]["code"] == "not_found"
    assert stack.containers() == []


async def test_logs_tail_and_follow(stack):
    async with aiohttp.ClientSession() as session:
        await call(session, stack, "POST", "/admin/models/alpha/start")
        status, body = await call(session, stack, "GET", "/admin/models/alpha/logs?tail=5")
        assert status == 200 and any("serving alpha" in line for line in body["lines"])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{stack.url}/admin/models/alpha/logs?tail=5&follow=1", headers=headers) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = []
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    lines.append(json.loads(raw[6:])["line"])
                if any("serving alpha" in line for line in lines):
                    break
    assert lines


async def test_events_stream_reports_a_start(stack):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.url}/admin/events", headers=headers) as response:
            starter = asyncio.create_task(call(session, stack, "POST", "/admin/models/beta/start"))
            seen = []
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    event = json.loads(raw[6:])
                    seen.append((event["type"], event.get("state")))
                    if event["type"] == "model_ready":
                        break
            await starter
    assert ("model_state", "starting") in seen and ("model_state", "ready") in seen


async def test_reload_adds_a_model_and_refuses_a_broken_config_keeping_the_old_one(stack):
    async with aiohttp.ClientSession() as session:
        await call(session, stack, "POST", "/admin/models/alpha/start")
        stack.models.append(fake_model("gamma", load_delay=0.2, host_port=stack.model_port_base + 5))
        stack.write_config()
        status, body = await call(session, stack, "POST", "/admin/reload")
        assert status == 200 and body["added"] == ["gamma"]
        async with session.post(f"{stack.url}/v1/gamma/completions", data=b'{"prompt": "x"}') as response:
            assert response.status == 200
        stack.config_path.write_text(stack.config_path.read_text() + '\n[[model]]\nid = "broken"\ngpu_memory = 7\n')
        status, body = await call(session, stack, "POST", "/admin/reload")
        assert status == 400 and body["error"]["code"] == "invalid_config"
        assert any("field 'gpu_memory'" in p for p in body["error"]["problems"])
        assert any("field 'image' is required" in p for p in body["error"]["problems"])
        async with session.post(f"{stack.url}/v1/completions", data=b'{"model": "alpha", "prompt": "x"}') as response:
            assert response.status == 200  # the running config still serves
        stack.models.insert(0, fake_model("first"))  # shifts alpha's port while alpha runs
        stack.models[-1].pop("host_port")
        stack.write_config()
        status, body = await call(session, stack, "POST", "/admin/reload")
        assert status == 409 and "set host_port" in body["error"]["message"]


async def test_sighup_reloads_the_config_and_the_waker_lives_on(stack):
    """security-probe.md #21: SIGHUP (a closed terminal, an SSH session that ends) ended `waker run`
    without a word. It reloads now, as `waker reload` does, and says how it went."""
    stack.models.append(fake_model("gamma", load_delay=0.2, host_port=stack.model_port_base + 5))
    stack.write_config()
    stack.proc.send_signal(signal.SIGHUP)
    eventually(lambda: '"event": "sighup_reloaded"' in stack.log(), 30, "the reload's log line", stack.log)
    assert '"added": ["gamma"]' in stack.log() and stack.proc.poll() is None
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/gamma/completions", data=b'{"prompt": "x"}') as response:
            assert response.status == 200
        stack.config_path.write_text("[[model]]\nid = ")
        stack.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "sighup_reload_refused" in stack.log(), 30, "the refusal's log line", stack.log)
        async with session.post(f"{stack.url}/v1/gamma/completions", data=b'{"prompt": "x"}') as response:
            assert response.status == 200  # the running config still serves
    assert stack.proc.poll() is None


async def test_prepare_creates_containers_and_reports_missing_images(stack):
    stack.models.append({"id": "ghost", "image": "waker-test/absent:1", "host_port": stack.model_port_base + 7})
    stack.write_config()
    async with aiohttp.ClientSession() as session:
        await call(session, stack, "POST", "/admin/reload")
        status, body = await call(session, stack, "POST", "/admin/prepare")
    assert status == 207 and body["ok"] is False
    assert body["models"]["alpha"] == {"image": "present", "container": "created"}
    ghost = body["models"]["ghost"]
    assert ghost["image"] == "missing" and "waker-test/absent:1" in ghost["error"]
    assert len(stack.containers()) == 2
    assert not docker("ps", "-q", "--filter", f"label=io.waker.stack={stack.name}").strip()


async def test_metrics_count_starts_stops_and_show_state(stack):
    async with aiohttp.ClientSession() as session:
        await call(session, stack, "POST", "/admin/models/alpha/start")
        await call(session, stack, "POST", "/admin/models/alpha/stop")
        async with session.post(f"{stack.url}/v1/beta/completions", data=b'{"prompt": "x"}') as response:
            assert response.status == 200

        async def metrics_with_the_request_ended() -> str | None:
            async with session.get(f"{stack.waker_url}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            # A request counts once it ended: nginx's end mark reaches the waker after the response.
            return text if 'waker_requests_total{model="beta"} 1' in text else None

        text = await eventually_async(metrics_with_the_request_ended, 5, "beta's request counted", stack.log)
    assert 'waker_model_starts_total{model="alpha"} 1' in text
    assert 'waker_model_stops_total{model="alpha",reason="manual"} 1' in text
    assert 'waker_model_state{model="beta",state="ready"} 1' in text
    assert 'waker_requests_total{model="beta"} 1' in text
    assert 'waker_model_start_seconds_count{model="alpha"} 1' in text
    assert "waker_queue_length 0" in text and "waker_docker_connected 1" in text


async def test_openai_model_list_carries_metadata(stack):
    async with aiohttp.ClientSession() as session, session.get(f"{stack.url}/v1/models") as response:
        data = {m["id"]: m for m in (await response.json())["data"]}
    assert data["alpha"]["context_length"] == 8192 and data["alpha"]["capabilities"] == {"vision": False, "tools": True}
    assert "context_length" not in data["beta"]


def test_cli_commands_against_the_running_stack(stack):
    status = stack.cli("status")
    assert status.returncode == 0 and status.stdout.splitlines()[0].split()[:2] == ["MODEL", "STATE"]
    assert stack.cli("start", "alpha").stdout.strip() == "alpha: ready"
    listing = json.loads(stack.cli("status", "--json").stdout)
    assert model_row(listing, "alpha")["state"] == "ready"
    assert stack.cli("pin", "alpha").returncode == 0
    assert "beta" not in stack.cli("unload").stdout  # nothing else runs; alpha is pinned
    assert stack.cli("unpin", "alpha").returncode == 0
    logs = stack.cli("logs", "alpha", "--tail", "3")
    assert logs.returncode == 0 and "serving alpha" in logs.stdout
    assert stack.cli("reload").stdout.strip() == "reloaded, nothing changed"
    stop = stack.cli("stop", "alpha")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    prepare = stack.cli("prepare", "beta")
    assert prepare.returncode == 0 and "beta: image present, container created" in prepare.stdout
    missing = stack.cli("stop", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("waker stop: unknown model 'nope'")
    assert "Traceback" not in missing.stderr


def test_cli_follows_events(stack):
    events = subprocess.Popen(
        [sys.executable, "-m", "waker.cli.main", "events", "--config", str(stack.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    said: list[str] = []
    for pipe, into in ((events.stdout, lines), (events.stderr, said)):
        threading.Thread(target=lambda p=pipe, i=into: i.extend(iter(p.readline, "")), daemon=True).start()

    def saw(prefix: str) -> bool:
        return any(line.startswith(prefix) for line in list(lines))

    try:
        # Once it says it follows, nothing published is missed: one pin shows up.
        eventually(
            lambda: any(s.startswith("following the events") for s in said), 30, "`waker events` open", lambda: said
        )
        assert stack.cli("pin", "beta").returncode == 0
        eventually(lambda: saw("model_pinned model=beta"), 15, "a pin in `waker events`' output", lambda: lines)
        assert stack.cli("start", "beta").returncode == 0
        eventually(lambda: saw("model_ready model=beta"), 15, "model_ready in `waker events`' output", lambda: lines)
    finally:
        events.kill()
    assert any(line.startswith("model_state model=beta state=starting") for line in lines)


def test_cli_exit_codes_for_a_wrong_token_and_an_absent_waker(stack):
    wrong = stack.cli("status", "--token", "nope")
    assert wrong.returncode == 1 and "admin token" in wrong.stderr
    absent = subprocess.run(
        [sys.executable, "-m", "waker.cli.main", "status", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert absent.returncode == 3 and "cannot reach the waker" in absent.stderr
