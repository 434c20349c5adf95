"""Loading feedback: a streaming chat completion for a model that is not ready gets its stream at
once, progress lines while the model is queued, pulled and loaded, then the model's own stream.

Only cold requests come here (nginx sends a request to the waker when it could not reach the
model), and of those only streaming chat completions of models with `loading_feedback = "reasoning"`
are answered here; the waker then sends the request to the model itself and relays the model's
events as the rest of the same stream (its id, one role). nginx counts the request in flight from
its first byte to its last, as any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import aiohttp
import structlog
from aiohttp import web

from waker.config.schema import ModelConfig
from waker.core.progress import Progress, ready_line, should_send
from waker.errors import RequestRefused, error_body
from waker.http import sse
from waker.nginx.render import NGINX_ERRORS
from waker.shell.loading_watch import LoadingWatch
from waker.shell.supervisor import Supervisor

log = structlog.get_logger("waker.http.loading_stream")

CHAT_PATH = "/v1/chat/completions"
# `X-Waker-Progress: content` puts the progress lines in the answer's text, for clients that show no
# reasoning (`llm`, `opencode run`); the lines then stay in the conversation, so it is never the default.
PROGRESS_HEADER = "X-Waker-Progress"
TICK = 0.25  # seconds between two looks at the progress while the model is not ready
FIRST_LINE_WAIT = 0.05
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# Not passed on to the model: hop-by-hop headers, the body's framing (aiohttp sets its own), the
# waker's own headers from nginx, and compression (the model's bytes are relayed as they come).
NOT_FORWARDED = frozenset(
    {
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "accept-encoding",
        "x-original-uri",
        "x-upstream-uri",
        PROGRESS_HEADER.lower(),
    }
)


def wants_feedback(method: str, upstream_uri: str, body: bytes) -> bool:
    """A streaming chat completion: a POST to the chat route whose JSON body says `"stream": true`."""
    if method != "POST" or upstream_uri.split("?", 1)[0] != CHAT_PATH:
        return False
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False  # the model answers it with its own error, as without feedback
    return isinstance(doc, dict) and doc.get("stream") is True


class LoadingStreams:
    """Serves the cold streaming chat completions; holds the one client session to the models."""

    def __init__(self, supervisor: Supervisor, watch: LoadingWatch) -> None:
        self.supervisor = supervisor
        self.watch = watch
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        gateway = self.supervisor.config.gateway
        # As nginx's own proxy: a connect timeout, and a read timeout between two reads only.
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=gateway.read_timeout), auto_decompress=False
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def serve(
        self, request: web.Request, model: ModelConfig, body: bytes, upstream_uri: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=STREAM_HEADERS)
        await response.prepare(request)
        in_content = request.headers.get(PROGRESS_HEADER, "").strip().lower() == "content"
        stream = _Stream(response, f"chatcmpl-waker-{uuid.uuid4().hex[:16]}", model.id, int(time.time()), in_content)
        began = self.supervisor.now()
        acquire = asyncio.ensure_future(self.supervisor.acquire(model))
        try:
            await self._wait(stream, acquire, model.id)
            try:
                acquire.result()
            except RequestRefused as exc:
                log.info("loading_stream_refused", model=model.id, status=exc.status, code=exc.code)
                await stream.end_with(error_body(exc.message, exc.code, exc.status, exc.details))
                return response
            # In the content, a blank line parts the progress from the answer.
            await stream.line(ready_line(model.id, self.supervisor.now() - began) + ("\n" if in_content else ""))
            await self._relay(request, stream, model, body, upstream_uri)
        except ConnectionResetError:
            log.info("loading_stream_client_gone", model=model.id)
        except Exception:  # the stream has begun: the client gets an error event, never a cut-off stream
            log.exception("loading_stream_failed", model=model.id)
            with contextlib.suppress(ConnectionResetError):
                await stream.end_with(
                    error_body("the waker failed on this request; its log has the details", "internal_error", 500)
                )
        finally:
            if not acquire.done():
                acquire.cancel()  # the client left while waiting: the queue forgets the request
        return response

    async def _wait(self, stream: _Stream, acquire: asyncio.Future[None], model_id: str) -> None:
        last: Progress | None = None
        last_sent_at = 0.0
        # The first line once the scheduler has decided (it does within a loop turn or two), so
        # that it says what happens to the request rather than the state before.
        await asyncio.wait({acquire}, timeout=FIRST_LINE_WAIT)
        while not acquire.done():
            current, now = self.watch.progress(model_id), self.supervisor.now()
            if should_send(last, last_sent_at, current, now):
                await stream.line(current.text)
                last, last_sent_at = current, now
            await asyncio.wait({acquire}, timeout=TICK)

    async def _relay(
        self, request: web.Request, stream: _Stream, model: ModelConfig, body: bytes, upstream_uri: str
    ) -> None:
        """Sends the request to the model and its stream on to the client as the rest of this stream
        (sse.Continuation: one id, one role); an error answer (vLLM refusing the request)
        goes into the stream as vLLM's own error event."""
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        try:
            async with self._http.post(f"{model.address.url}{upstream_uri}", data=body, headers=headers) as upstream:
                if upstream.status == 200 and upstream.content_type == "text/event-stream":
                    rest = sse.Continuation(stream.stream_id, stream.created)
                    async for data in upstream.content.iter_any():
                        if events := rest.feed(data):
                            await stream.response.write(events)
                    if tail := rest.end():
                        await stream.response.write(tail)
                    return
                answer = await upstream.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("loading_stream_model_unreachable", model=model.id, error=repr(exc))
            code, message = NGINX_ERRORS[502]
            await stream.end_with(error_body(message, code, 502))
            return
        try:
            refusal = json.loads(answer)
        except ValueError:
            refusal = None
        if not isinstance(refusal, dict) or "error" not in refusal:
            text = answer.decode("utf-8", "replace")[:1000]
            refusal = error_body(f"the model answered {upstream.status}: {text}", "model_error", upstream.status)
        await stream.end_with(refusal)


class _Stream:
    """The client's side: progress lines as chunks (the first with the role), and the error end."""

    def __init__(
        self, response: web.StreamResponse, stream_id: str, model: str, created: int, in_content: bool
    ) -> None:
        self.response, self.stream_id, self.model, self.created = response, stream_id, model, created
        self.in_content = in_content
        self.first = True

    async def line(self, text: str) -> None:
        chunk = sse.progress_chunk(self.stream_id, self.model, self.created, text, self.first, self.in_content)
        await self.response.write(chunk)
        self.first = False

    async def end_with(self, body: dict) -> None:
        await self.response.write(sse.error_events(body))


STREAMS = web.AppKey("loading_streams", LoadingStreams)
