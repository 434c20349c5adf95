"""Loading feedback (docs/architecture.md "Loading feedback"): a cold streaming chat completion is answered
by the waker at once, progress first and then the model's own stream; failures end it as vLLM ends a
failed stream. The real HTTP app over the fake shell (conftest `api`), nginx's requests to `/_wake/<id>`
made by hand, and a model server on loopback (fake_docker.ModelServer) that the waker relays."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.unit.fake_docker import VLLM_CHAT_STREAM
from tests.unit.shell_fakes import until
from tests.unit.test_supervisor import begin, end, ready
from waker.core.events import RequestAbandoned
from waker.core.lifecycle import State
from waker.core.progress import HEARTBEAT
from waker.errors import StartError
from waker.nginx.render import NGINX_ERRORS
from waker.shell.loading_watch import LoadingWatch

CHAT_PATH = "/v1/chat/completions"
# Spaces and key order as a client wrote them: the model gets these bytes, not a re-encoding.
CHAT = b'{"model": "a",  "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
DONE = "[DONE]"
# vLLM refusing a request (its own error body, status 400)
VLLM_REFUSAL = (
    b'{"error":{"message":"This model\'s maximum context length is 4096 tokens.","type":"BadRequestError",'
    b'"param":null,"code":400}}'
)
# What nginx answers a request to a model it cannot reach, as an error event.
UNREACHABLE = {
    "error": {"message": NGINX_ERRORS[502][1], "type": "server_error", "param": None, "code": NGINX_ERRORS[502][0]}
}
WEIGHTS_LINE = "Loading safetensors checkpoint shards:  45% Completed | 5/11 [00:03<00:04,  1.21it/s]"


def cold(client, model_id: str, body: bytes = CHAT, uri: str = CHAT_PATH, headers: dict[str, str] | None = None):
    """What nginx sends the waker for a model it could not reach, when feedback is on: the request
    with its body and headers, and the URI to pass on to the model."""
    sent = {"X-Upstream-URI": uri, "X-Original-URI": uri, "Content-Type": "application/json", **(headers or {})}
    return client.post(f"/_wake/{model_id}", data=body, headers=sent)


def data(event: bytes) -> Any:
    """What one server-sent event carries: its JSON, or "[DONE]"."""
    assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
    payload = event.removeprefix(b"data: ").removesuffix(b"\n\n")
    return DONE if payload == DONE.encode() else json.loads(payload)


def continued(event: Any, first: dict[str, Any]) -> Any:
    """A model's event as the loading stream passes it on: the id and creation time of the stream's
    `first` chunk, and no second role."""
    if not isinstance(event, dict):
        return event
    chunk = json.loads(json.dumps(event))
    chunk["id"], chunk["created"] = first["id"], first["created"]
    for choice in chunk["choices"]:
        choice["delta"].pop("role", None)
    return chunk


def events(stream: bytes) -> list[Any]:
    return [data(event + b"\n\n") for event in stream.split(b"\n\n")[:-1]]


async def next_event(response) -> Any:
    async with asyncio.timeout(5):
        return data(await response.content.readuntil(b"\n\n"))


def line_of(chunk: dict[str, Any]) -> str:
    """The progress line of a chunk the waker wrote, checking it is one a client joins into nothing."""
    assert chunk["object"] == "chat.completion.chunk"
    (choice,) = chunk["choices"]
    assert choice["finish_reason"] is None and choice["delta"]["content"] == ""
    line: str = choice["delta"]["reasoning_content"]
    assert line.endswith("\n")
    return line.removesuffix("\n")


async def test_a_cold_streaming_chat_gets_progress_at_once_then_the_models_own_stream(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    gate = shell.driver.hold("a")
    response = await cold(client, "a", headers={"Authorization": "Bearer sk-client"})
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    first = await next_event(response)
    assert shell.supervisor.state("a") is State.STARTING  # the stream began before the model was ready
    assert line_of(first).startswith("starting a's container · 0 s so far")
    shell.driver.loading_lines["a"] = [WEIGHTS_LINE]  # the engine's log moves on: a line at once
    stage = await next_event(response)
    assert line_of(stage).startswith("loading a: loading weights: safetensors checkpoint shards 45% (5/11) · 0 s")
    shell.clock.advance(HEARTBEAT + 1)  # nothing new for a while: the same line again, with fresh figures
    heartbeat = await next_event(response)
    assert line_of(heartbeat).startswith("loading a: loading weights: safetensors checkpoint shards 45% (5/11) · 6 s")
    gate.set_result(None)
    ready_event, relayed = (await response.read()).split(b"\n\n", 1)
    assert line_of(data(ready_event + b"\n\n")) == "a is ready after 6.0 s; its answer follows"
    # The model's events, its [DONE] included and nothing after it, as the rest of this one stream.
    assert events(relayed) == [continued(e, first) for e in events(VLLM_CHAT_STREAM)]

    chunks = [first, stage, heartbeat, data(ready_event + b"\n\n"), *events(relayed)[:-1]]
    assert [c["choices"][0]["delta"].get("role") for c in chunks] == ["assistant"] + [None] * (len(chunks) - 1)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-waker-")
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert {c["model"] for c in chunks[:4]} == {"a"}  # the model's own chunks name it as the engine does
    (headers, body), *others = model_server.chats
    assert not others and body == CHAT
    assert headers["Authorization"] == "Bearer sk-client"
    assert "X-Upstream-URI" not in headers and "X-Original-URI" not in headers  # the waker's, from nginx
    assert (await (await client.get("/_stats")).json())["loading_streams"] == 1


async def refused_alike(client, model_id: str) -> tuple[int, dict[str, Any]]:
    """A refused stream's end, checked against what a non-streaming request gets at the same moment:
    the same error body, then [DONE]. Answers the non-streaming status and body."""
    plain = await client.get(f"/_wake/{model_id}")
    streamed = await cold(client, model_id)
    assert streamed.status == 200  # the stream had begun: the refusal is in it
    body = await plain.json()
    assert events(await streamed.read())[-2:] == [body, DONE]
    return plain.status, body


async def test_a_failed_start_ends_the_stream_as_vllm_ends_a_failed_one(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    for _ in range(2):  # one start for each request
        shell.driver.outcomes["a"].append(StartError(503, "model_exited", "model 'a' exited with code 1 while loading"))
    status, body = await refused_alike(client, "a")
    assert status == 503 and body["error"]["code"] == "model_exited" and body["error"]["type"] == "server_error"
    assert not model_server.chats


async def test_a_model_in_back_off_ends_the_stream_at_once(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port}, max_start_failures=1, start_backoff="60s")
    shell.driver.outcomes["a"].append(StartError(503, "model_exited", "boom"))
    assert (await client.get("/_wake/a")).status == 503  # the failure that begins the back-off
    status, body = await refused_alike(client, "a")
    assert status == 503 and body["error"]["code"] == "model_failed"
    assert shell.driver.up_calls("a") == 1 and not model_server.chats


async def test_a_busy_gpu_with_on_busy_reject_ends_the_stream_with_the_429(api, model_server):
    shell, client = await api(
        {"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6, "host_port": model_server.port}, on_busy="reject"
    )
    await ready(shell, "a")
    begin(shell, "a", b"r1")  # a answers someone: no room for b
    status, body = await refused_alike(client, "b")
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert shell.driver.up_calls("b") == 0


async def test_an_error_answer_of_the_model_goes_into_the_stream_as_its_error_event(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    model_server.chat_answer = (400, "application/json", VLLM_REFUSAL)
    stream = events(await (await cold(client, "a", uri=f"{CHAT_PATH}?trace=1")).read())
    assert line_of(stream[0]).startswith("a is ready after")
    assert stream[1:] == [json.loads(VLLM_REFUSAL), DONE]  # vLLM's own body, as its streams carry it
    assert model_server.chats[0][1] == CHAT
    # Not vLLM's error shape (a proxy's page, a crash): the status and the text, in an OpenAI error.
    model_server.chat_answer = (500, "text/plain", b"Internal Server Error")
    stream = events(await (await cold(client, "a")).read())
    assert stream[-2:] == [
        {
            "error": {
                "message": "the model answered 500: Internal Server Error",
                "type": "server_error",
                "param": None,
                "code": "model_error",
            }
        },
        DONE,
    ]


async def test_an_unreachable_model_gives_nginxs_502_as_an_error_event(api, unused_tcp_port):
    shell, client = await api({"id": "a", "host_port": unused_tcp_port})  # nothing listens there
    stream = events(await (await cold(client, "a")).read())
    assert line_of(stream[0]).startswith("a is ready after") and stream[1:] == [UNREACHABLE, DONE]


async def test_a_model_that_dies_mid_answer_ends_the_stream_with_an_error_event(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    model_server.chat_cut = True
    stream = events(await (await cold(client, "a")).read())
    first_chunk = events(VLLM_CHAT_STREAM)[0]
    # What the model sent before it died reached the client; then the end as nginx words a model it lost.
    assert stream[-3:] == [continued(first_chunk, stream[0]), UNREACHABLE, DONE]


async def test_a_client_that_leaves_while_queued_abandons_its_wait(api, model_server):
    shell, client = await api(
        {"id": "a", "gpu_memory": 0.6}, {"id": "b", "gpu_memory": 0.6, "host_port": model_server.port}
    )
    await ready(shell, "a")
    begin(shell, "a", b"r1")  # a is busy, so b waits for room
    response = await cold(client, "b")
    assert line_of(await next_event(response)).startswith("queued for b (#1 of 1)")
    response.close()  # the handler is cancelled (handler_cancellation, as cli/serve.py serves it): no line needed
    await until(lambda: shell.kinds(RequestAbandoned, model="b"), "b's wait abandoned")
    assert len(shell.supervisor.waiting) == 0
    end(shell, "a", b"r1")
    assert shell.driver.up_calls("b") == 0 and not model_server.chats


async def test_a_failure_of_the_waker_itself_ends_the_stream_with_an_error_event(api, model_server, monkeypatch):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    shell.driver.hold("a")

    def broken(self, model_id):
        raise RuntimeError("a bug in the progress")

    monkeypatch.setattr(LoadingWatch, "progress", broken)
    stream = events(await (await cold(client, "a")).read())
    assert stream == [
        {
            "error": {
                "message": "the waker failed on this request; its log has the details",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        },
        DONE,
    ]  # an ended stream the SDKs raise, never one cut off
    await until(lambda: shell.kinds(RequestAbandoned, model="a"), "the request leaves the queue")


async def test_other_requests_get_the_ordinary_redirect(api):
    shell, client = await api({"id": "a"}, {"id": "quiet", "loading_feedback": "off"})
    for model_id, uri, body in (
        ("a", CHAT_PATH, b'{"model": "a", "stream": false, "messages": []}'),  # not streaming
        ("a", CHAT_PATH, b'{"model": "a", "messages": []}'),  # streaming is not the default
        ("a", "/v1/completions", b'{"model": "a", "stream": true, "prompt": "hi"}'),  # not a chat
        ("a", CHAT_PATH, b'{"model": "a", "stream": tru'),  # not JSON: the model answers its own error
        ("a", CHAT_PATH, b"\xff\xfe\x00"),  # nor text
        ("a", CHAT_PATH, b'["stream", true]'),  # JSON, not an object
        ("quiet", CHAT_PATH, CHAT),  # feedback off for this model
    ):
        response = await cold(client, model_id, body=body, uri=uri)
        assert response.status == 204, (model_id, uri, body)
        assert response.headers["X-Accel-Redirect"] == f"@retry_{model_id}"
    assert (await (await client.get("/_stats")).json())["loading_streams"] == 0


async def test_a_client_that_shows_no_reasoning_may_ask_for_the_progress_in_the_content(api, model_server):
    """`llm` and `opencode run` drop reasoning_content, so their users watched a blank terminal for the
    whole start (real-clients.md). With X-Waker-Progress: content the lines come ahead of the answer."""
    shell, client = await api({"id": "a", "host_port": model_server.port})
    stream = events(await (await cold(client, "a", headers={"X-Waker-Progress": "content"})).read())
    chunks = [e for e in stream if isinstance(e, dict)]
    assert not any("reasoning_content" in c["choices"][0]["delta"] for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    progress, answer = text.split("its answer follows\n\n")
    assert progress.startswith("starting a's container") or progress.startswith("a is ready after"), text
    assert answer == "Hello" and stream[-1] == DONE
    (headers, _), *_ = model_server.chats
    assert "X-Waker-Progress" not in headers  # the waker's, not the model's


async def test_without_the_header_or_with_another_value_the_content_is_the_models_alone(api, model_server):
    shell, client = await api({"id": "a", "host_port": model_server.port})
    for headers in ({}, {"X-Waker-Progress": "reasoning"}, {"X-Waker-Progress": "contents"}):
        stream = events(await (await cold(client, "a", headers=headers)).read())
        text = "".join(e["choices"][0]["delta"]["content"] for e in stream if isinstance(e, dict))
        assert text == "Hello", headers
        shell.control.stop_by_hand("a")
        await shell.reach("a", State.STOPPED)
