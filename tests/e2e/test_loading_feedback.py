"""Loading feedback end to end (real nginx, the real waker, Docker, the fake vLLM printing vLLM's own
loading lines): a cold streaming chat completion gets its stream at once, progress lines while the
model loads, then the model's exact answer; failures end the stream with the error a non-streaming
client gets; everything else is as without feedback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import time

import aiohttp
import openai
import pytest

from tests.e2e.stack import REPO, fake_model
from tests.eventually import eventually_async

pytestmark = pytest.mark.e2e

LOAD = 5.0  # seconds the fake model loads: long enough for progress that moves
MESSAGES = [{"role": "user", "content": "Count"}]


def chat(model: str, max_tokens: int = 5, stream: bool = True) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    """The SSE events of a response as they arrive: (arrival time, `data:` payload)."""
    events, buffer = [], b""
    async for data in response.content.iter_any():
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            events.append((time.monotonic(), event[len(b"data: ") :]))
    assert buffer == b"", buffer
    return events


async def stats(session: aiohttp.ClientSession, stack) -> dict:
    async with session.get(f"{stack.waker_url}/_stats") as response:
        return await response.json()


async def model_answer(session: aiohttp.ClientSession, stack, model: str, max_tokens: int) -> str:
    """The model's own answer to the same request, asked of its server directly (bypassing the gateway)."""
    async with session.post(f"{stack.model_url(model)}/v1/chat/completions", json=chat(model, max_tokens)) as response:
        events = await read_events(response)
    chunks = [json.loads(payload) for _, payload in events if payload != b"[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("routing", ["body", "path"])
async def test_a_cold_stream_shows_progress_at_once_then_the_models_exact_answer(make_stack, routing):
    stack = make_stack([fake_model("alpha", aliases=["a"], load_delay=LOAD)])
    url = f"{stack.url}/v1/chat/completions" if routing == "body" else f"{stack.url}/v1/a/chat/completions"
    async with aiohttp.ClientSession() as session:
        sent = time.monotonic()
        async with session.post(url, json=chat("a")) as response:
            assert response.status == 200 and response.content_type == "text/event-stream"
            events = await read_events(response)
        first_at = events[0][0] - sent
        assert first_at < 1.0, f"the first progress event came after {first_at:.2f} s"
        assert events[-1][1] == b"[DONE]" and [p for _, p in events].count(b"[DONE]") == 1
        chunks = [json.loads(payload) for _, payload in events[:-1]]
        # One stream, as an engine's own: one id, one creation time, one role (on its first chunk).
        assert len({(c["id"], c["created"]) for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-waker-")
        assert [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]] == [chunks[0]]
        # All progress first, then the model's stream.
        count = next(i for i, c in enumerate(chunks) if "reasoning_content" not in c["choices"][0]["delta"])
        progress, answer = chunks[:count], chunks[count:]
        assert not any("reasoning_content" in c["choices"][0]["delta"] for c in answer if c["choices"])
        lines = [c["choices"][0]["delta"]["reasoning_content"] for c in progress]
        assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "alpha" for c in progress)
        assert progress[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["choices"][0]["delta"]["content"] == "" for c in progress)
        # Progress that moves: the engine's own stages from its log, the shards bar climbing.
        text = "".join(lines)
        assert "starting alpha's container" in text or "loading alpha" in text, text
        shards = [line for line in lines if "checkpoint shards" in line]
        assert len({line.split(" · ")[0] for line in shards}) >= 2, text
        assert "KV cache allocated: 2,097,152 tokens" in text, text
        assert "s so far (its first start" in text, text  # no earlier start to measure against
        assert lines[-1].startswith("alpha is ready after "), text
        # Then the model's answer, exactly as the model gives it.
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in answer if c["choices"])
        assert content == await model_answer(session, stack, "alpha", 5) == "tok0 tok1 tok2 tok3 tok4 "
        assert (await stats(session, stack))["loading_streams"] == 1


async def test_the_openai_sdk_parses_the_whole_stream(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=LOAD)])
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(model="alpha", stream=True, max_tokens=6, messages=MESSAGES)
    reasoning, content = [], []
    async for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
            content.append(delta.content or "")
    await client.close()
    assert "".join(content) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert "checkpoint shards" in "".join(reasoning) and "alpha is ready after" in "".join(reasoning)


async def test_a_client_that_shows_no_reasoning_can_have_the_progress_as_content(make_stack):
    """For `llm` and `opencode run`, which drop reasoning: X-Waker-Progress: content, set once on the
    client as they allow, puts the progress ahead of the answer, parted from it by a blank line."""
    stack = make_stack([fake_model("alpha", load_delay=LOAD)])
    client = openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, default_headers={"X-Waker-Progress": "content"}
    )
    stream = await client.chat.completions.create(model="alpha", stream=True, max_tokens=6, messages=MESSAGES)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    await client.close()
    progress, answer = text.split("its answer follows\n\n")
    assert "checkpoint shards" in progress and "alpha is ready after" in progress, text
    assert answer == "tok0 tok1 tok2 tok3 tok4 tok5 "


def test_the_openai_npm_package_parses_the_whole_stream(make_stack):
    node = shutil.which("node")
    assert node, "Node.js is not installed"
    assert (REPO / "tests" / "node" / "node_modules" / "openai").exists(), "run: npm ci --prefix tests/node"
    stack = make_stack([fake_model("alpha", load_delay=LOAD)])
    result = subprocess.run(
        [node, str(REPO / "tests" / "node" / "loading.mjs"), f"{stack.url}/v1", "alpha", "3"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["content"] == "tok0 tok1 tok2 "
    assert "KV cache allocated" in answer["reasoning"] and "alpha is ready after" in answer["reasoning"]


async def test_a_failed_start_ends_the_stream_with_the_error_a_non_streaming_client_gets(make_stack):
    stack = make_stack([fake_model("broken", load_delay=2.0, extra=["--fail", "exit_during_load"])])
    url = f"{stack.url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def streaming():
            async with session.post(url, json=chat("broken")) as response:
                assert response.status == 200
                return await read_events(response)

        async def plain():
            async with session.post(url, json=chat("broken", stream=False)) as response:
                return response.status, await response.json()

        events, (status, refusal) = await asyncio.gather(streaming(), plain())  # both wait on the same start
    assert status == 503 and refusal["error"]["code"] == "model_exited"
    assert [p for _, p in events[-2:]] == [json.dumps(refusal, separators=(",", ":")).encode(), b"[DONE]"]
    assert "exited with code 3 while loading" in refusal["error"]["message"]
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for _, p in events[:-2])


async def test_the_openai_sdk_raises_the_start_failure(make_stack):
    stack = make_stack([fake_model("broken", load_delay=1.0, extra=["--fail", "exit_during_load"])])
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(model="broken", stream=True, max_tokens=3, messages=MESSAGES)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    await client.close()
    assert "exited with code 3 while loading" in caught.value.message


async def test_feedback_off_streams_only_the_model(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=2.0, loading_feedback="off")])
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("alpha")) as response:
            events = await read_events(response)
        chunks = [json.loads(p) for _, p in events[:-1]]
        assert not any(c["id"].startswith("chatcmpl-waker-") for c in chunks)
        assert (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            == "tok0 tok1 tok2 tok3 tok4 "
        )
        counted = await stats(session, stack)
    assert counted["loading_streams"] == 0 and counted["wakes"] == 1


async def test_the_gateway_setting_is_the_default_a_model_overrides(make_stack):
    stack = make_stack(
        [fake_model("quiet", load_delay=1.0), fake_model("chatty", load_delay=1.0, loading_feedback="reasoning")],
        gateway={"loading_feedback": "off"},
    )
    async with aiohttp.ClientSession() as session:
        for model in ("quiet", "chatty"):
            async with session.post(f"{stack.url}/v1/chat/completions", json=chat(model)) as response:
                await read_events(response)
        assert (await stats(session, stack))["loading_streams"] == 1


async def test_other_cold_requests_are_unchanged_and_a_ready_model_never_meets_the_waker(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=1.0)])
    body = json.dumps(chat("alpha", stream=False)).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{stack.url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            reply = await response.json()
            assert response.status == 200 and response.headers["x-fake-body-sha256"] == hashlib.sha256(body).hexdigest()
        assert reply["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4"
        before = await stats(session, stack)
        assert before["loading_streams"] == 0 and before["wakes"] == 1
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("alpha")) as response:
            events = await read_events(response)
        assert not any(json.loads(p)["id"].startswith("chatcmpl-waker-") for _, p in events[:-1])
        after = await stats(session, stack)
    assert after["requests"] == before["requests"]  # nothing reached the waker (/_stats counts itself out)


async def test_a_client_that_leaves_while_waiting_leaves_the_queue(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=LOAD)])
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("alpha")) as response:
            first = await response.content.readuntil(b"\n\n")
            assert b"chatcmpl-waker-" in first

        async def queued() -> bool:
            async with session.get(f"{stack.waker_url}/admin/models/alpha") as reply:
                return (await reply.json())["queued"] == 0

        await eventually_async(queued, 5, "the waiting request leaving the queue")
    assert "request_abandoned" in stack.log()


async def test_a_large_body_reaches_the_model_whole_through_the_waker(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=1.0)])
    words = "Grüße 日本語 🚀 " * 400_000  # about 6 MB of multi-byte text, 1.2 million words
    body = {
        **chat("alpha", 2),
        "messages": [{"role": "user", "content": words}],
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.url}/v1/chat/completions", json=body) as response,
    ):
        events = await read_events(response)
    usage = json.loads(events[-2][1])["usage"]
    assert usage["prompt_tokens"] == 1 + len(words.split())  # the fake counts the words it received
    assert json.loads(events[0][1])["id"].startswith("chatcmpl-waker-")


async def test_a_missing_image_and_a_refusal_for_room_end_the_stream_with_their_errors(make_stack):
    stack = make_stack(
        [
            fake_model("alpha", gpu_memory=0.6),
            fake_model("beta", gpu_memory=0.6),
            {**fake_model("ghost"), "image": "waker/not-here:never", "pull": "never"},
        ],
        scheduler={"on_busy": "reject", "stop_timeout": "2s"},
    )
    async with aiohttp.ClientSession() as session:

        async def last_error(model: str) -> dict:
            async with session.post(f"{stack.url}/v1/chat/completions", json=chat(model)) as response:
                assert response.status == 200
                events = await read_events(response)
            assert events[-1][1] == b"[DONE]"
            return json.loads(events[-2][1])["error"]

        missing = await last_error("ghost")
        assert missing["code"] == "image_missing" and "waker/not-here:never" in missing["message"]
        async with session.post(f"{stack.waker_url}/admin/models/alpha/start") as response:
            assert response.status == 200
        async with session.post(f"{stack.waker_url}/admin/models/alpha/pin") as response:
            assert response.status == 200
        refused = await last_error("beta")
    assert refused["code"] == "model_busy" and refused["type"] == "rate_limit_error"
    assert "'alpha' (pinned" in refused["message"] and refused["holders"][0]["model"] == "alpha"


async def test_a_relayed_answer_is_in_flight_and_a_client_that_leaves_ends_it(make_stack):
    stack = make_stack([fake_model("alpha", load_delay=1.0, extra=["--tokens-per-second", "5"])])

    async def running(session: aiohttp.ClientSession) -> float:
        async with session.get(f"{stack.model_url('alpha')}/metrics") as reply:
            text = await reply.text()
        return float(
            next(line.split()[-1] for line in text.splitlines() if line.startswith("vllm:num_requests_running{"))
        )

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stack.url}/v1/chat/completions", json=chat("alpha", 100)) as response:
            while b'"content":"tok0 "' not in await response.content.readuntil(b"\n\n"):
                pass  # progress, then the model's first token: the relay is under way
            assert await running(session) == 1
            async with session.get(f"{stack.waker_url}/admin/models/alpha") as reply:
                assert (await reply.json())["in_flight"] == 1  # nginx's activity marks count it, as any request

        async def ended() -> bool:
            return await running(session) == 0

        await eventually_async(ended, 5, "the model's request ending once its client left")
