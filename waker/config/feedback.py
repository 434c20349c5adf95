"""`loading_feedback`: what a streaming chat completion for a model that is not ready gets while it waits
(in `[gateway]`, and per model)."""

from __future__ import annotations

from enum import StrEnum

from waker.config import fields


class LoadingFeedback(StrEnum):
    """What a streaming chat completion for a model that is not ready gets while it waits."""

    REASONING = "reasoning"  # progress lines as `delta.reasoning_content` chunks, then the model's answer
    OFF = "off"  # nothing until the model's answer, as for any other request


def parse_feedback(table: fields.Table, default: LoadingFeedback) -> LoadingFeedback:
    return LoadingFeedback(
        table.get("loading_feedback", fields.choice(*(f.value for f in LoadingFeedback)), default.value)
    )
