"""The server-sent events the waker writes into a chat completion stream, framed as vLLM frames its
own (pure): `chat.completion.chunk` objects whose delta carries the loading progress as
`reasoning_content`, the error event vLLM writes when a stream cannot go on, and the model's own
events made the continuation of the stream the waker began."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def progress_chunk(stream_id: str, model: str, created: int, line: str, first: bool, in_content: bool = False) -> bytes:
    """One line of progress as a chunk: its own line in the reasoning text, and an empty `content`
    (clients that join every chunk's content find a string), so that the client's answer is the
    model's alone. The first chunk carries the role, as the model's does. `in_content` (asked for by
    a client that shows no reasoning) puts the line in `content` instead, ahead of the answer."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if in_content:
        delta["content"] = line + "\n"
    else:
        delta["content"] = ""
        delta["reasoning_content"] = line + "\n"
    chunk = {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
    return event(chunk)


def error_events(body: dict[str, Any]) -> bytes:
    """What vLLM sends when a stream fails: `data: {"error": {...}}` and then `data: [DONE]`. The body
    is the one a non-streaming client gets for the same failure."""
    return event(body) + DONE


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class Continuation:
    """The model's events as the rest of a stream the waker began, so that the client sees one stream,
    as an engine's own: each chunk takes the stream's id and creation time, and the role (sent with
    the first progress line) leaves the model's deltas. Anything else (comments, [DONE], error events, what is not a
    JSON object) passes as it came. Fed bytes as they arrive; an event split across reads waits for
    its end."""

    def __init__(self, stream_id: str, created: int) -> None:
        self.stream_id, self.created = stream_id, created
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        *events, self._pending = (self._pending + data).split(b"\n\n")
        return b"".join(self._event(raw) + b"\n\n" for raw in events)

    def end(self) -> bytes:
        """What came after the last whole event (nothing, from a stream that ended properly)."""
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, raw: bytes) -> bytes:
        if not raw.startswith(b"data: {"):
            return raw
        try:
            chunk = json.loads(raw[len(b"data: ") :])
        except ValueError:
            return raw
        if not isinstance(chunk, dict) or "id" not in chunk:
            return raw
        chunk["id"], chunk["created"] = self.stream_id, self.created
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                choice["delta"].pop("role", None)
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode()
