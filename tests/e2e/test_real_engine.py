"""The real engine in the loop: real nginx, the real waker, a real Docker engine and the real vLLM
(CPU build, tests/real_vllm/) serving a tiny local model. Each start takes 20-40 s here, so tests
share a stack where their configs agree and check what they need first."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import subprocess
import time

import aiohttp
import openai
import pytest

from tests.e2e.stack import LONG_CONTEXT, REAL_IMAGE, REAL_SCHEDULER, Stack, docker, real_model
from tests.eventually import eventually, eventually_async

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 300  # a cold start under a loaded CI machine, with margin
LONG = 1800  # tokens of a stream that outlasts the short idle timeouts below (250-400 tokens/s here)
# Tokens of a stream that runs for minutes (the whole LONG_CONTEXT, less room for the prompt): a test
# that needs work in flight holds one open, whatever the load, and ends it by leaving.
HELD = LONG_CONTEXT - 64


@pytest.fixture(scope="module", autouse=True)
def real_image():
    if subprocess.run(["docker", "image", "inspect", REAL_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {REAL_IMAGE} is missing: run scripts/build-test-images", pytrace=False)


@pytest.fixture(scope="module")
def module_stacks(tmp_path_factory):
    """Stacks kept for the whole module, one per config, so tests do not each pay a cold start."""
    stacks: dict[str, Stack] = {}

    def get(key: str, models: list[dict], **kwargs) -> Stack:
        if key not in stacks:
            tmp = tmp_path_factory.mktemp(key)
            stacks[key] = Stack(
                models=models, tmp=tmp, scheduler={**REAL_SCHEDULER, **kwargs.pop("scheduler", {})}, **kwargs
            ).start()
        return stacks[key]

    yield get
    for stack in stacks.values():
        stack.stop()


@pytest.fixture
def main_stack(module_stacks) -> Stack:
    """One real model, "tiny" (alias "tiny-alias"), with --max-num-seqs 1 so that parallel requests
    make a queue inside the engine, the whole LONG_CONTEXT so that streams of HELD tokens fit, a drain
    on SIGTERM shorter than stop_timeout, and an idle timeout no test reaches by accident."""
    return module_stacks(
        "main",
        [
            real_model(
                "tiny",
                aliases=["tiny-alias"],
                max_model_len=LONG_CONTEXT,
                extra=["--max-num-seqs", "1", "--shutdown-timeout", "10"],
                idle_timeout="1h",
            )
        ],
    )


def chat(model: str, max_tokens: int, **extra) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "say something"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


async def admin(session, stack: Stack, model: str) -> dict:
    async with session.get(f"{stack.waker_url}/admin/models/{model}") as response:
        return await response.json()


async def engine_metrics(session, stack: Stack, model: str) -> dict[str, float]:
    """vLLM's own running/waiting gauges, read from the engine's port; none when the engine did not
    answer within 5 s (its server stalls while it streams on a loaded CPU: 30 s once on CI), so that
    the callers' polling asks again within their deadline."""
    try:
        async with session.get(f"{stack.model_url(model)}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
    except (TimeoutError, aiohttp.ClientError):
        return {}
    return {
        name: float(value)
        for name, value in re.findall(r"^vllm:num_requests_(running|waiting)\{[^}]*\}\s+(\S+)", text, re.MULTILINE)
    }


async def engine_counts(session, stack: Stack, model: str, running: int, waiting: int = 0) -> bool:
    """Whether vLLM's own gauges say exactly this."""
    return await engine_metrics(session, stack, model) == {"running": running, "waiting": waiting}


def container_running(stack: Stack, model: str) -> bool:
    return bool(
        docker(
            "ps", "-q", "--filter", f"label=io.waker.stack={stack.name}", "--filter", f"label=io.waker.model={model}"
        ).strip()
    )


def sdk_chat(client: openai.OpenAI, model: str, max_tokens: int, **extra):
    """A chat completion of exactly `max_tokens` tokens through the official SDK."""
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "say something"}],
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
        **extra,
    )


def ensure_ready(stack: Stack, model: str) -> None:
    sdk_chat(openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=READY_TIMEOUT), model, 1)


async def read_stream(response, pace: float = 0.0) -> tuple[list[dict], bool]:
    """The JSON chunks of an SSE response and whether `[DONE]` ended it; `pace` seconds per chunk
    make a slow reader."""
    chunks, done = [], False
    async for line in response.content:
        if line.startswith(b"data: [DONE]"):
            done = True
        elif line.startswith(b"data: "):
            chunks.append(json.loads(line[6:]))
            if pace:
                await asyncio.sleep(pace)
    return chunks, done


async def hold_stream(session, url: str, body: dict) -> None:
    """Reads a stream (of HELD tokens: it does not end by itself while a test runs) until cancelled,
    then leaves: the connection closes and vLLM aborts the request."""
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout()) as response:
        assert response.status == 200, await response.text()
        try:
            async for _ in response.content:
                pass
        finally:
            response.close()


async def leave(streams: list[asyncio.Task]) -> None:
    """Ends held streams, after checking that each was still in flight: the state a test relied on."""
    ended = [stream for stream in streams if stream.done()]
    assert not ended, f"streams ended before the test left them: {[stream.exception() for stream in ended]}"
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, return_exceptions=True)


@contextlib.asynccontextmanager
async def waker_events(session, stack: Stack):
    """The waker's events stream (/admin/events), from now on, read in the background into a list."""
    seen: list[dict] = []
    async with session.get(f"{stack.waker_url}/admin/events", timeout=aiohttp.ClientTimeout()) as response:
        assert response.status == 200, await response.text()

        async def read() -> None:
            async for line in response.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))

        reader = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reader.cancel()


# ---- 1. cold start through the gateway, both routings, the official SDK --------------------------


def test_cold_start_body_and_path_routed_with_the_openai_sdk(main_stack):
    stack = main_stack
    if container_running(stack, "tiny"):
        assert stack.cli("stop", "tiny").returncode == 0
    body_routed = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=READY_TIMEOUT)
    reply = sdk_chat(body_routed, "tiny", 12)
    assert reply.model == "tiny"
    assert reply.usage.completion_tokens == 12 and reply.choices[0].finish_reason == "length"

    assert stack.cli("stop", "tiny").returncode == 0
    assert not container_running(stack, "tiny")
    path_routed = openai.OpenAI(base_url=f"{stack.url}/v1/tiny-alias", api_key="unused", timeout=READY_TIMEOUT)
    chunks = list(sdk_chat(path_routed, "tiny", 40, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 40
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # Both cold starts were real container starts, one each.
    assert len(stack.docker_events("start")) >= 2


# ---- 2. vLLM's own errors reach the client unchanged ---------------------------------------------


@pytest.mark.parametrize(
    "case, body",
    [
        ("max_tokens over the context", chat("tiny", LONG_CONTEXT + 1)),
        ("prompt over the context", {"model": "tiny", "prompt": "hello " * (LONG_CONTEXT + 52), "max_tokens": 4}),
        ("a parameter vLLM rejects", chat("tiny", 4, n=0)),
    ],
)
async def test_engine_errors_reach_the_client_unchanged(main_stack, case, body):
    stack = main_stack
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}{path}", json=body) as through_gateway:
            gateway = through_gateway.status, await through_gateway.json()
        async with session.post(f"{stack.model_url('tiny')}{path}", json=body) as direct:
            engine = direct.status, await direct.json()
    assert gateway[0] == 400, (case, gateway)
    assert gateway == engine, case
    assert gateway[1]["error"]["message"]


# ---- 3. idle stop counted from the end of a long stream -------------------------------------------


async def slow_stream(stack: Stack, body: dict, per_read: int, pause: float) -> tuple[bytes, float]:
    """Reads a response `per_read` bytes at a time with a pause between reads, through a socket whose
    receive buffer is small, so that nginx (and behind it the engine's socket) cannot run ahead of the
    reader: the request stays open at the gateway as long as the reader reads, as with a slow client
    on a slow link. HTTP/1.0, so the body arrives unchunked. Returns the body and when it ended."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.gateway_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    received = bytearray()
    while chunk := await reader.read(per_read):
        received += chunk
        await asyncio.sleep(pause)
    writer.close()
    return bytes(received), time.time()


async def test_idle_stop_waits_for_a_long_slow_stream(module_stacks):
    stack = module_stacks("idle", [real_model("tiny", max_model_len=2048, idle_timeout="2s")])
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    began = time.time()
    body = chat("tiny", LONG, stream=True, stream_options={"include_usage": True})
    received, ended = await slow_stream(stack, body, per_read=1500, pause=0.02)
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert received.rstrip().endswith(b"data: [DONE]"), received[-300:]
    # Whole: every token arrived (vLLM merges tokens into one chunk when its API server falls behind,
    # so count them by the usage chunk, not by chunks).
    events = [json.loads(line[6:]) for line in received.split(b"\n") if line.startswith(b"data: {")]
    assert events[-1]["usage"]["completion_tokens"] == LONG, events[-1]
    assert ended - began > 2 * 2, "the stream must outlast the idle timeout for this test to mean anything"
    stopped = eventually(lambda: stack.docker_events("die"), 30, "the idle stop", stack.log)
    died = stopped[0]["timeNano"] / 1e9
    assert died >= ended, f"the model stopped {ended - died:.1f} s before its stream ended"
    assert died - ended < 2 + 10, "the idle stop came far later than idle_timeout after the stream"
    eventually(lambda: '"reason": "idle"' in stack.log(), 30, "the stop logged as an idle stop", stack.log)


# ---- 4. swap between two real models that do not fit together -------------------------------------


async def test_swap_between_two_real_models(module_stacks):
    stack = module_stacks("swap", [real_model("left", gpu_memory=0.6), real_model("right", gpu_memory=0.6)])
    for model in ("left", "right", "left"):
        await asyncio.to_thread(ensure_ready, stack, model)
        assert container_running(stack, model)
        assert not container_running(stack, "right" if model == "left" else "left")
    starts = [(e["timeNano"], e["Actor"]["Attributes"]["io.waker.model"]) for e in stack.docker_events("start")]
    dies = [(e["timeNano"], e["Actor"]["Attributes"]["io.waker.model"]) for e in stack.docker_events("die")]
    assert [m for _, m in sorted(starts)] == ["left", "right", "left"]
    # Each start came after the other model had exited: they never ran together.
    assert sorted(dies)[0] < sorted(starts)[1] and sorted(dies)[1] < sorted(starts)[2]


# ---- 5. the container killed mid-stream -----------------------------------------------------------


async def killed_mid_stream(session, stack: Stack) -> tuple[bool, int, float]:
    """Streams HELD tokens and kills the container at the first chunk: (completed, chunks, seconds the
    client's stream went on after the kill). The container is named before the stream starts, so that
    the window holds one Docker call, the kill, run off the event loop that reads the stream."""
    (container,) = await asyncio.to_thread(stack.containers)
    async with session.post(f"{stack.url}/v1/chat/completions", json=chat("tiny", HELD, stream=True)) as r:
        assert r.status == 200
        received, done, killed_at = 0, False, 0.0
        try:
            async for line in r.content:
                done = done or line.startswith(b"data: [DONE]")
                received += line.startswith(b"data: {")
                if received == 1 and not killed_at:
                    await asyncio.to_thread(docker, "kill", container)
                    killed_at = time.monotonic()
        except aiohttp.ClientPayloadError:
            pass  # nginx cuts the chunked response short: the client knows it is incomplete
        assert killed_at, "the stream sent no chunk"
        return done, received, time.monotonic() - killed_at


async def test_container_killed_mid_stream_ends_the_stream_and_the_next_request_restarts_it(main_stack):
    """The stream asks for HELD tokens, minutes of work here: the kill at its first chunk lands mid-stream
    however slowly a loaded machine runs `docker kill`."""
    stack = main_stack
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    starts_before = len(stack.docker_events("start"))
    async with aiohttp.ClientSession() as session:
        done, received, went_on = await killed_mid_stream(session, stack)
    assert not done and received < HELD, (done, received)
    assert went_on < 5, f"the client's stream went on {went_on:.1f} s after the kill"
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    assert len(stack.docker_events("start")) == starts_before + 1


# ---- 6. in-flight and queued requests as the engine reports them ----------------------------------


async def test_waker_in_flight_count_agrees_with_the_engine_queue(main_stack):
    """While the engine has a queue (--max-num-seqs 1: one stream running, two waiting behind it), the
    waker's in-flight count equals the engine's running + waiting. The streams ask for HELD tokens and
    are held open, so the queue lasts until the test leaves; the first is sent alone, and the other two
    once the engine runs it, so that a short-lived one cannot be the running one. The two counts are
    read one after the other, so a reading counts only when the waker's count is the same before and
    after the engine's; vLLM's gauges can lag and its /metrics stalls while it streams, hence the
    polling."""
    stack = main_stack
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    readings: list[tuple[int, dict[str, float], int]] = []
    async with aiohttp.ClientSession() as session:
        url, body = f"{stack.url}/v1/chat/completions", chat("tiny", HELD, stream=True)
        streams = [asyncio.create_task(hold_stream(session, url, body))]
        await eventually_async(
            functools.partial(engine_counts, session, stack, "tiny", running=1), 60, "the first stream running"
        )
        streams += [asyncio.create_task(hold_stream(session, url, body)) for _ in range(2)]

        async def agreeing_reading() -> bool:
            before = (await admin(session, stack, "tiny"))["in_flight"]
            engine = await engine_metrics(session, stack, "tiny")
            after = (await admin(session, stack, "tiny"))["in_flight"]
            readings.append((before, engine, after))
            return before == after == 3 and engine == {"running": 1, "waiting": 2}

        await eventually_async(
            agreeing_reading,
            60,
            "a reading of the queue where the two counts agree",
            lambda: f"(waker before, engine, waker after): {readings[-20:]}",
        )
        await leave(streams)

        async def none_in_flight() -> bool:
            return (await admin(session, stack, "tiny"))["in_flight"] == 0

        await eventually_async(none_in_flight, 10, "the waker's count back to 0 after the streams", stack.log)
        await eventually_async(
            functools.partial(engine_counts, session, stack, "tiny", running=0), 30, "the engine idle again"
        )


async def test_idle_stop_is_called_off_while_the_engine_has_work(module_stacks):
    """Requests sent to the engine's own port (bypassing nginx) are invisible to the gateway's count;
    the engine's /metrics, asked before an idle stop, calls the stop off while they run and wait in its
    queue (--max-num-seqs 1), again at each idle check, and the model is stopped as idle once they are
    gone. The work is two streams of HELD tokens, held open until the test leaves. The model is pinned
    until the engine's gauges count them (they can lag a new request by seconds: CI saw 0 six seconds
    on). vLLM's API server on two cores stalls for up to 14 s while the engine works; a check it does
    not answer is asked again (5 s later, up to three checks), so no stall ends with a stop under the
    work. What the waker decided is read from its events stream."""
    stack = module_stacks(
        "postpone",
        [real_model("tiny", max_model_len=LONG_CONTEXT, idle_timeout="3s", extra=["--max-num-seqs", "1"])],
    )

    async with aiohttp.ClientSession() as session:

        async def admin_call(action: str) -> None:
            async with session.post(f"{stack.waker_url}/admin/models/tiny/{action}") as response:
                assert response.status == 200, await response.text()

        async def seen(kind: str, count: int = 1) -> list[dict]:
            """The waker's events of `kind` so far, once there are `count` of them."""
            found = [event for event in events if event["type"] == kind]
            return found if len(found) >= count else []

        await admin_call("pin")  # no idle check before the engine counts the work
        await asyncio.to_thread(ensure_ready, stack, "tiny")
        url, body = f"{stack.model_url('tiny')}/v1/chat/completions", chat("tiny", HELD, stream=True)
        async with waker_events(session, stack) as events:
            work = [asyncio.create_task(hold_stream(session, url, body)) for _ in range(2)]
            await eventually_async(
                functools.partial(engine_counts, session, stack, "tiny", running=1, waiting=1),
                60,
                "the engine counting the direct requests",
                stack.log,
            )
            await admin_call("unpin")
            # Two idle checks, each a full idle_timeout after the one before called the stop off.
            called_off = await eventually_async(
                functools.partial(seen, "idle_stop_postponed", 2),
                120,
                "two idle stops called off",
                lambda: f"{events}\n{stack.log()}",
            )
            assert not await seen("model_stopped"), events
            assert all(e["server_requests"] == 2 and e["in_flight"] == 0 for e in called_off), called_off
            assert container_running(stack, "tiny")
            await leave(work)
            stopped = await eventually_async(
                functools.partial(seen, "model_stopped"),
                60,
                "the idle stop once the work was gone",
                lambda: f"{events}\n{stack.log()}",
            )
    assert stopped[0]["reason"] == "idle" and stopped[0]["server_requests"] == 0, stopped


# ---- 7. failures as vLLM really fails -------------------------------------------------------------


async def test_start_that_exits_gives_the_exit_code_and_the_real_log_tail(module_stacks):
    no_kv_cache = real_model("nokv", kv_cache_gib=None)
    stack = module_stacks("exits", [no_kv_cache], scheduler={"max_start_failures": 1, "start_backoff": "1h"})
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.url}/v1/chat/completions", json=chat("nokv", 4), timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT)
        ) as r:
            status, body = r.status, await r.json()
            answered = time.time()
        assert status == 503, body
        assert body["error"]["code"] == "model_exited"
        assert "exited with code 1" in body["error"]["message"]
        died = stack.docker_events("die")
        assert died, "the engine did not exit"
        assert answered - died[0]["timeNano"] / 1e9 < 5, "the client waited long after the engine had exited"
        message = body["error"]["message"]
        tail = [line for line in message.split("last log lines:\n", 1)[-1].splitlines() if line.strip()]
        logs = await asyncio.to_thread(
            subprocess.run, ["docker", "logs", stack.containers()[0]], capture_output=True, text=True, check=True
        )
        assert len(tail) >= 3 and all(line in logs.stdout + logs.stderr for line in tail), message
        assert "RuntimeError" in message, "the tail shows vLLM's own reason"
        # Back-off as configured: the next request fails at once, naming the cause, without a new start.
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("nokv", 4)) as again:
            assert again.status == 503
            assert "exited with code 1" in (await again.json())["error"]["message"]
        assert len(stack.docker_events("start")) == 1


async def test_model_that_dies_after_becoming_healthy_is_noticed_and_backs_off(module_stacks):
    """Head size 16: vLLM starts and says healthy, its first request fails, then it exits."""
    stack = module_stacks(
        "dies",
        [real_model("h16", weights="/models/tiny-llama-h16")],
        scheduler={"max_start_failures": 2, "start_backoff": "1h"},
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT)) as session:
        statuses = []
        for _ in range(2):
            async with session.post(f"{stack.url}/v1/chat/completions", json=chat("h16", 4)) as r:
                statuses.append((r.status, await r.json(content_type=None)))
            # The engine exits after its failed request; the waker learns it from Docker's events.
            await eventually_async(
                lambda: admin_state(session, stack, "h16", ("failed", "stopped")), 60, "the exit noticed", stack.log
            )
        assert all(status >= 500 and body["error"]["message"] for status, body in statuses), statuses
        model = await admin(session, stack, "h16")
        assert model["failures"] == 2 and model["retry_in_seconds"] is not None, model
        assert "exited with code" in model["last_error"]
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("h16", 4)) as r:
            body = await r.json()
            assert r.status == 503 and "exited with code" in body["error"]["message"], body
    assert len(stack.docker_events("start")) == 2


async def admin_state(session, stack: Stack, model: str, states: tuple[str, ...]) -> bool:
    return (await admin(session, stack, model))["state"] in states


# ---- 8. SIGTERM with a stream in flight ----------------------------------------------------------


async def test_stop_with_a_stream_in_flight_drains_it_cleanly(main_stack):
    """vLLM drains in-flight requests on SIGTERM for --shutdown-timeout seconds; a stop_timeout longer
    than that lets the stream end as vLLM ends it (complete, or finish_reason "abort" at the drain's
    end) instead of a reset by SIGKILL. Without --shutdown-timeout, vLLM 0.32 in a container either ends
    the stream with an "EngineCore encountered an issue" error event or stalls until SIGKILL (measured
    here; docs/reliability.md)."""
    stack = main_stack
    await asyncio.to_thread(ensure_ready, stack, "tiny")
    (container,) = await asyncio.to_thread(stack.containers)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("tiny", LONG, stream=True)) as r:
            assert r.status == 200
            for _ in range(20):  # well into the stream
                assert (await r.content.readline()).startswith(b"data: {")
                await r.content.readline()
            # The admin API, not the CLI: a Python start-up crawls while the engine holds both cores.
            asked = time.monotonic()
            stopping = asyncio.create_task(session.post(f"{stack.waker_url}/admin/models/tiny/stop?force=true"))
            chunks, done = await read_stream(r)
        async with await stopping as stopped:
            assert stopped.status == 200, await stopped.text()
        await eventually_async(lambda: admin_state(session, stack, "tiny", ("stopped",)), 60, "the stop", stack.log)
        took = time.monotonic() - asked
    assert done, "the client saw a reset, not vLLM's end of stream"
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish in (["length"], ["abort"]), finish
    assert docker("inspect", "--format", "{{.State.ExitCode}}", container).strip() == "0", "killed, not drained"
    assert took < 30, f"the stop took {took:.1f} s, past stop_timeout"
