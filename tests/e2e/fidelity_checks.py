"""What an engine observably does, measured the same way on the fake vLLM and on the real one.

Each check takes an `Engine` (a container of either image) and returns rows: a name and what was
seen, as a short string, with IDs, timestamps and generated text left out. test_fidelity.py runs every
check on both engines and compares the rows. The asserts inside a check are what vLLM 0.32.0 does
(measured on its CPU build; shared/real-vllm.md, tests/fake_vllm/README.md), so a failing
check × engine names the engine that strayed.
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import time
from collections.abc import Awaitable, Callable

import aiohttp

from tests.e2e.engine_probe import (
    CONTEXT,
    HELD,
    MODEL,
    Engine,
    anonymous,
    chat,
    compact,
    completion,
    keys,
    metrics,
    post,
    read_stream,
    shape,
)
from tests.e2e.fidelity_sleep import (
    check_level_2_wake_protocol,
    check_waker_sleep_adapter,
)
from tests.eventually import eventually_async
from waker.core.engine_log import Step, parse_line

ABORTS = "vllm:request_success_total[abort]"
SIGTERM_WAIT = 5.0  # how long a stream may take to end after SIGTERM before it counts as hung
# What vLLM 0.32.0 does to a stream in flight on SIGTERM, all seen here: the engine core is killed at
# once, and the race between its last outputs and its death decides (tests/fake_vllm/README.md). Once,
# the shutdown began only after the stream had run to its end ("length").
SIGTERM_OUTCOMES = {
    "abort chunk, [DONE]",
    "error chunk, [DONE]",
    "hangs until the client leaves",
    "length chunk, [DONE]",
}
ENGINE_DEAD = {
    "error": {
        "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}


# ---- the checks: each returns {row: observation} ----


async def check_start_and_health(engine: Engine) -> dict[str, str]:
    assert engine.before_ready == [], f"answers before ready: {engine.before_ready}"
    assert engine.health == (200, b"")
    return {
        "HTTP answers before the first /health 200": "none",
        "GET /health": f"{engine.health[0]} body={engine.health[1]!r}",
    }


async def check_loading_log(engine: Engine) -> dict[str, str]:
    """The loading stages the waker reads from an engine's log (waker/core/engine_log.py), in order. Lines
    are sorted by Docker's timestamps: vLLM logs to stdout, its progress bars go to stderr."""
    out = await asyncio.to_thread(
        subprocess.run, ["docker", "logs", "--timestamps", engine.container], capture_output=True, check=True
    )
    # Bytes split on newlines only (text mode would turn them into new lines): tqdm's "\r" stays in its line.
    lines = sorted((out.stdout + out.stderr).decode("utf-8", "replace").split("\n"))
    stages = [stage for line in lines if (stage := parse_line(line.split(" ", 1)[-1]))]
    steps = [stage.step.name.lower() for stage in stages]
    bar = [stage.percent for stage in stages if stage.step is Step.WEIGHTS]
    return {
        "stages, in order": ", ".join(step for i, step in enumerate(steps) if i == 0 or steps[i - 1] != step),
        "weights bar": f"{bar[0]}% to {bar[-1]}%" if bar else "none",
    }


async def check_metrics_names(engine: Engine) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.get(f"{engine.url}/metrics") as response:
        text = await response.text()
        content_type = response.headers["Content-Type"]
    labels = {
        name: sorted(re.findall(r'(\w+)="', label_text))
        for name, label_text in re.findall(r"^(vllm:\w+)\{([^}]*)\}", text, re.MULTILINE)
    }
    reasons = re.findall(r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"', text, re.MULTILINE)
    states = re.findall(r'^vllm:engine_sleep_state\{[^}]*sleep_state="(\w+)"', text, re.MULTILINE)
    rows = {"Content-Type": content_type}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:request_success_total",
        "vllm:engine_sleep_state",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert name in labels, f"{name} missing from /metrics"
        rows[f"{name} labels"] = ",".join(labels[name])
    rows["finished_reason values"] = ",".join(reasons)
    rows["sleep_state values"] = ",".join(states)
    assert reasons == ["stop", "length", "abort", "error", "repetition"]
    return rows


async def check_queue(engine: Engine) -> dict[str, str]:
    """With --max-num-seqs 1: a stream runs and two requests wait behind it; when the stream's client
    leaves, the two run to their end. The stream asks for HELD tokens and is held open, so the queue
    lasts until the gauges have shown it (vLLM's can lag, and its /metrics stalls while it streams); it
    is sent alone first, so that it is the one running."""
    async with aiohttp.ClientSession() as session:

        async def gauges(running: int, waiting: int) -> dict[str, float] | None:
            now = await metrics(session, engine.url)
            shown = (now["vllm:num_requests_running"], now["vllm:num_requests_waiting"])
            return now if shown == (running, waiting) else None

        before = await metrics(session, engine.url)
        async with session.post(f"{engine.url}/v1/completions", json=completion(HELD, stream=True)) as stream:
            await eventually_async(functools.partial(gauges, 1, 0), 60, "the stream running")
            queued = [
                asyncio.create_task(post(session, f"{engine.url}/v1/completions", completion(8))) for _ in range(2)
            ]
            await eventually_async(functools.partial(gauges, 1, 2), 60, "two requests waiting behind it")
            assert not any(request.done() for request in queued), "a request went past the running stream"
            stream.close()
        answers = await asyncio.gather(*queued)
        after = await eventually_async(functools.partial(gauges, 0, 0), 30, "an idle engine")
    moved = {
        reason: after[f"vllm:request_success_total[{reason}]"] - before[f"vllm:request_success_total[{reason}]"]
        for reason in ("stop", "length", "abort", "error", "repetition")
    }
    return {
        "a stream running, two requests sent behind it": "running 1, waiting 2",
        "the two once the stream's client left": ", ".join(
            f"{status} {answer['choices'][0]['finish_reason']} {answer['usage']['completion_tokens']}"
            for status, answer in answers
        ),
        "afterwards": "running 0, waiting 0",
        "request_success_total increase": ", ".join(f"{reason} {n:g}" for reason, n in moved.items() if n),
    }


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
ERROR_CASES = {
    # "hello " is one token of the real test model's tokenizer, and one word for the fake.
    "prompt over the context": (
        "/v1/completions",
        {"model": MODEL, "prompt": "hello " * (CONTEXT + 76), "max_tokens": 4},
    ),
    "max_tokens over the context": ("/v1/chat/completions", chat(CONTEXT + 1)),
    "unknown model": ("/v1/chat/completions", {**chat(4), "model": "nope"}),
    "n: 0": ("/v1/chat/completions", chat(4, n=0)),
    "max_tokens: -1": ("/v1/completions", completion(-1)),
    "temperature: -1": ("/v1/completions", completion(4, temperature=-1)),
    'max_tokens: "x"': ("/v1/completions", completion("x")),
    "a body that is not JSON": ("/v1/completions", b"{not json"),
    # Served without a tool parser: what the "strip_tools" fix-up exists for.
    "tools without --enable-auto-tool-choice": ("/v1/chat/completions", chat(4, tools=TOOLS)),
    "tool_choice required without --tool-call-parser": (
        "/v1/chat/completions",
        chat(4, tools=TOOLS, tool_choice="required"),
    ),
    "max_completion_tokens over the context": (
        "/v1/chat/completions",
        {**chat(4), "max_completion_tokens": CONTEXT + 1},
    ),
}


async def check_errors(engine: Engine) -> dict[str, str]:
    rows = {}
    async with aiohttp.ClientSession() as session:
        for case, (path, body) in ERROR_CASES.items():
            status, answer = await post(session, f"{engine.url}{path}", body)
            assert status in (400, 404) and set(answer["error"]) == {"message", "type", "param", "code"}, answer
            rows[case] = f"{status} {compact(answer)}"
        # Not UTF-8: FastAPI guesses the encoding from the first bytes, as Python's json.loads does.
        for case, body in (
            ("a body that is not UTF-8, UTF-16 to a guess", b"\xff\xfe{not UTF-8 \x80"),
            ("a body that is not UTF-8, in no encoding", b"\xff\xfe\x00 not json at all \x80"),
        ):
            status, answer = await post(session, f"{engine.url}/v1/completions", body)
            rows[case] = f"{status} {compact(answer)}"
        async with session.get(f"{engine.url}/no/such/route") as response:
            rows["GET an unknown route"] = f"{response.status} {await response.text()}"
        async with session.get(f"{engine.url}/v1/chat/completions") as response:
            rows["GET /v1/chat/completions"] = (
                f"{response.status} allow={response.headers.get('Allow')} {await response.text()}"
            )
    return rows


async def stream_rows(engine: Engine, path: str, body: dict, tokens: int) -> dict[str, str]:
    async with aiohttp.ClientSession() as session, session.post(f"{engine.url}{path}", json=body) as response:
        stream = await read_stream(response)
    assert stream.status == 200 and stream.framing_ok, stream
    assert stream.events[-1] == "[DONE]"
    chunks = [event for event in stream.events if event != "[DONE]"]
    assert len({chunk["id"] for chunk in chunks}) == 1, "one id for the whole stream"
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    final = [chunk for chunk in with_choices if chunk["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0] is with_choices[-1], "the finish reason comes once, in the last content chunk"
    rows = {
        "Content-Type": stream.content_type,
        "events": shape(stream.events, tokens),
        "id prefix": chunks[0]["id"].split("-")[0],
        "object": chunks[0]["object"],
    }
    kinds = {}
    for chunk in chunks:
        kind = (
            "usage"
            if not chunk["choices"]
            else "role"
            if "role" in chunk["choices"][0].get("delta", {})
            else "final"
            if chunk["choices"][0]["finish_reason"]
            else "content"
        )
        kinds.setdefault(kind, chunk)
    for kind, chunk in kinds.items():
        rows[f"{kind} chunk keys"] = keys(chunk)
        if chunk["choices"]:
            rows[f"{kind} chunk choice keys"] = keys(chunk["choices"][0])
            if "delta" in chunk["choices"][0]:
                rows[f"{kind} chunk delta keys"] = keys(chunk["choices"][0]["delta"])
        else:  # prompt_tokens: the fake counts words, vLLM its tokenizer's tokens and chat template
            usage = chunk["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
            rows["usage"] = f"{keys(usage)}; completion_tokens={usage['completion_tokens']}"
    return rows


async def check_chat_stream(engine: Engine) -> dict[str, str]:
    body = chat(8, stream=True, stream_options={"include_usage": True})
    return await stream_rows(engine, "/v1/chat/completions", body, 8)


async def check_chat_stream_without_usage(engine: Engine) -> dict[str, str]:
    return await stream_rows(engine, "/v1/chat/completions", chat(8, stream=True), 8)


async def check_completion_stream(engine: Engine) -> dict[str, str]:
    body = completion(8, stream=True, stream_options={"include_usage": True})
    return await stream_rows(engine, "/v1/completions", body, 8)


async def check_completion_stream_without_usage(engine: Engine) -> dict[str, str]:
    return await stream_rows(engine, "/v1/completions", completion(8, stream=True), 8)


async def check_non_streaming(engine: Engine) -> dict[str, str]:
    rows = {}
    async with aiohttp.ClientSession() as session:
        for label, path, body in (
            ("chat", "/v1/chat/completions", chat(5)),
            ("completion", "/v1/completions", completion(5)),
            (
                "completion without max_tokens",
                "/v1/completions",
                {"model": MODEL, "prompt": "hello", "temperature": 0, "ignore_eos": True},
            ),
        ):
            async with session.post(f"{engine.url}{path}", json=body) as response:
                status, content_type, answer = response.status, response.headers["Content-Type"], await response.json()
            choice = answer["choices"][0]
            rows[f"{label}: status, Content-Type"] = f"{status} {content_type}"
            rows[f"{label}: keys"] = keys(answer)
            rows[f"{label}: choice keys"] = keys(choice)
            if "message" in choice:
                rows[f"{label}: message keys"] = keys(choice["message"])
            rows[f"{label}: usage keys"] = keys(answer["usage"])
            rows[f"{label}: id prefix, object"] = f"{answer['id'].split('-')[0]} {answer['object']}"
            rows[f"{label}: finish, completion_tokens"] = (
                f"{choice['finish_reason']} {answer['usage']['completion_tokens']}"
            )
        async with session.get(f"{engine.url}/v1/models") as response:
            listing = await response.json()
        rows["/v1/models card keys"] = keys(listing["data"][0])
        rows["/v1/models id, max_model_len"] = f"{listing['data'][0]['id']} {listing['data'][0]['max_model_len']}"
    return rows


async def check_sleep(engine: Engine) -> dict[str, str]:
    """Dev mode's sleep: a request sent while asleep waits until /wake_up, then is served; /health
    says 200 all along."""
    rows = {}
    async with aiohttp.ClientSession() as session:
        status, answer = await post(session, f"{engine.url}/sleep?level=3", b"")
        rows["POST /sleep?level=3"] = f"{status} {compact(answer)}"
        status, answer = await post(session, f"{engine.url}/sleep?level=1", b"")
        rows["POST /sleep?level=1"] = f"{status} {compact(answer)}"
        async with session.get(f"{engine.url}/is_sleeping") as response:
            rows["GET /is_sleeping (asleep)"] = f"{response.status} {await response.text()}"
        asleep = await metrics(session, engine.url)
        rows["engine_sleep_state (level 1)"] = ",".join(
            f"{state}={asleep[f'vllm:engine_sleep_state[{state}]']:g}"
            for state in ("awake", "weights_offloaded", "discard_all")
        )
        pending = asyncio.create_task(post(session, f"{engine.url}/v1/completions", completion(5)))
        # "Hangs" is an absence: give the request a fair time to be answered, checking /health meanwhile.
        health = set()
        for _ in range(15):
            async with session.get(f"{engine.url}/health") as response:
                health.add(response.status)
            await asyncio.sleep(0.1)
        rows["a request while asleep"] = f"answered {pending.result()}" if pending.done() else "unanswered after 1.5 s"
        rows["GET /health while asleep"] = ",".join(map(str, sorted(health)))
        status, answer = await post(session, f"{engine.url}/wake_up", b"")
        rows["POST /wake_up"] = f"{status} {compact(answer)}"
        status, answer = await asyncio.wait_for(pending, 30)
        rows["that request after /wake_up"] = f"{status} finish={answer['choices'][0]['finish_reason']}"
        async with session.get(f"{engine.url}/is_sleeping") as response:
            rows["GET /is_sleeping (awake)"] = f"{response.status} {await response.text()}"
        status, answer = await post(session, f"{engine.url}/sleep?level=2", b"")
        rows["POST /sleep?level=2"] = f"{status} {compact(answer)}"
        deep = await metrics(session, engine.url)
        rows["engine_sleep_state (level 2)"] = ",".join(
            f"{state}={deep[f'vllm:engine_sleep_state[{state}]']:g}"
            for state in ("awake", "weights_offloaded", "discard_all")
        )
        status, answer = await post(session, f"{engine.url}/wake_up?tags=weights&tags=kv_cache", b"")
        rows["POST /wake_up?tags=weights&tags=kv_cache"] = f"{status} {compact(answer)}"
    assert rows["a request while asleep"] == "unanswered after 1.5 s"
    return rows


async def check_sleep_aborts_streams(engine: Engine) -> dict[str, str]:
    """POST /sleep (mode=abort, the default) ends the requests in flight with finish_reason abort. The
    streams ask for HELD tokens, so the sleep lands mid-stream however long a loaded engine takes to
    handle the call (CI measured 3 s while the engine generated 236 tokens/s)."""
    rows = {}
    async with aiohttp.ClientSession() as session:
        before = await metrics(session, engine.url)
        for label, path, body in (
            ("chat", "/v1/chat/completions", chat(HELD, stream=True)),
            ("completion", "/v1/completions", completion(HELD, stream=True)),
        ):
            async with session.post(f"{engine.url}{path}", json=body) as response:
                first = await read_stream(response, until=lambda events: len(events) >= 1)
                status, answer = await post(session, f"{engine.url}/sleep?level=1", b"")
                assert status == 200, answer
                events = (await asyncio.wait_for(read_stream(response), 60)).events
            assert events[-1] == "[DONE]" and len(first.events) + len(events) < HELD, "aborted before the end"
            final = events[-2]
            rows[f"{label}: the stream's end"] = ", ".join(
                "[DONE]" if e == "[DONE]" else f"final({e['choices'][0]['finish_reason']})" for e in events[-2:]
            )
            rows[f"{label}: abort chunk"] = anonymous(final)
            status, _ = await post(session, f"{engine.url}/wake_up", b"")
            assert status == 200
        after = await metrics(session, engine.url)
    rows["request_success_total{abort} increase"] = f"{after[ABORTS] - before[ABORTS]:g}"
    return rows


async def check_client_disconnect(engine: Engine) -> dict[str, str]:
    """A client that leaves mid-stream: its request stops running, and is not counted as aborted."""
    async with aiohttp.ClientSession() as session:
        before = await metrics(session, engine.url)
        async with session.post(f"{engine.url}/v1/completions", json=completion(HELD, stream=True)) as response:
            await read_stream(response, until=lambda events: len(events) >= 5)
            response.close()

        async def idle():
            now = await metrics(session, engine.url)
            return now if now["vllm:num_requests_running"] == 0 else None

        after = await eventually_async(idle, 20, "num_requests_running back to 0")
    return {
        "num_requests_running after the client left": "0",
        "request_success_total{abort} increase": f"{after[ABORTS] - before[ABORTS]:g}",
    }


async def check_sleep_routes_need_dev_mode(engine: Engine) -> dict[str, str]:
    rows = {}
    async with aiohttp.ClientSession() as session:
        for method, path in (("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping")):
            async with session.request(method, f"{engine.url}{path}") as response:
                rows[f"{method} {path} without VLLM_SERVER_DEV_MODE"] = f"{response.status} {await response.text()}"
    return rows


async def sigterm_mid_stream(engine: Engine) -> dict[str, str]:
    """SIGTERM while a stream is in flight: how the stream ends and when the process exits. A stream
    not ended within SIGTERM_WAIT is hung; the client then leaves, as one with a timeout would."""
    body = chat(900, stream=True)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{engine.url}/v1/chat/completions", json=body) as response,
    ):
        await read_stream(response, until=lambda events: len(events) >= 10)
        await asyncio.to_thread(engine.sigterm)
        try:
            events = (await asyncio.wait_for(read_stream(response), SIGTERM_WAIT)).events
            if events[-1:] != ["[DONE]"] or len(events) < 2:
                outcome = f"ends without [DONE] after {len(events)} events"
            elif "error" in events[-2]:
                assert events[-2] == ENGINE_DEAD, events[-2]
                outcome = "error chunk, [DONE]"
            else:
                outcome = f"{events[-2]['choices'][0]['finish_reason']} chunk, [DONE]"
        except TimeoutError:
            outcome = "hangs until the client leaves"
        except aiohttp.ClientPayloadError:
            outcome = "connection cut"
    ended = time.monotonic()  # the stream's end, or its client gone

    async def exited() -> bool:
        return not (await asyncio.to_thread(engine.state))[0]

    await eventually_async(exited, 30, f"{engine.container} exiting")
    took = time.monotonic() - ended
    return {
        "stream": outcome,
        "exit code": str(engine.state()[1]),
        "exit after the stream ended or its client left": "within 3 s" if took < 3 else f"{took:.1f} s",
    }


CHECKS: dict[str, tuple[str, Callable[[Engine], Awaitable[dict[str, str]]]]] = {
    # name: (the engine config it needs, the check); in the order they run, SIGTERM last.
    "start and /health": ("main", check_start_and_health),
    "loading lines in the log": ("main", check_loading_log),
    "/metrics names and labels": ("main", check_metrics_names),
    "queue with --max-num-seqs 1": ("main", check_queue),
    "error answers": ("main", check_errors),
    "chat stream, include_usage": ("main", check_chat_stream),
    "chat stream": ("main", check_chat_stream_without_usage),
    "completion stream, include_usage": ("main", check_completion_stream),
    "completion stream": ("main", check_completion_stream_without_usage),
    "non-streaming answers": ("main", check_non_streaming),
    "sleep mode": ("main", check_sleep),
    "sleep aborts streams": ("main", check_sleep_aborts_streams),
    "level-2 wake protocol": ("main", check_level_2_wake_protocol),
    "the waker's sleep adapter": ("main", check_waker_sleep_adapter),
    "client leaves mid-stream": ("main", check_client_disconnect),
    "sleep routes without dev mode": ("plain", check_sleep_routes_need_dev_mode),
    "SIGTERM mid-stream": ("plain", sigterm_mid_stream),
}


def agree(row: str, fake: str, real: str) -> str | None:
    """Why the two observations of a row agree, or None. Equal agrees, and two rows where vLLM
    itself varies from run to run: its SIGTERM outcome (a race), and streamed chunks that it merges
    when its API server falls behind the engine (the fake sends one per token)."""
    if fake == real:
        return "equal"
    if row == "SIGTERM mid-stream: stream" and fake in SIGTERM_OUTCOMES and real in SIGTERM_OUTCOMES:
        return "both are outcomes vLLM shows"
    if row.endswith(": events") and re.sub(r"content x \d+ of \d+", "content x (tokens - 1)", real) == fake:
        return "vLLM merged chunks"
    return None
