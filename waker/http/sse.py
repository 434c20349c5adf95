"""The server-sent events the waker writes into a chat completion stream, framed as vLLM frames its
own (pure): `chat.completion.chunk` objects whose delta carries the loading progress as
`reasoning_content`, and the error event vLLM writes when a stream cannot go on."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def progress_chunk(stream_id: str, model: str, created: int, line: str, first: bool) -> bytes:
    """One line of progress as a chunk: its own line in the reasoning text, and an empty `content`
    (clients that join every chunk's content find a string), so that the client's answer is the
    model's alone. The first chunk carries the role, as the model's does."""
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
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
