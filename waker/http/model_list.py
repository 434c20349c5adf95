"""The OpenAI model list's entries (pure): what `GET /v1/models` (and `GET /models`) shows per model.

Beside our own `state`, each entry carries `status: {"value": ...}` the way llama.cpp's router mode
reports it, because Open WebUI's llama.cpp connection reads it to show which models are loaded and
to offer load and unload (and counts an entry without it as loaded).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from waker.config.fixups import model_context
from waker.config.schema import Config, ModelConfig
from waker.core.lifecycle import State


class ClientStatus(StrEnum):
    """llama.cpp router's `status.value` set, plus "failed" (our failed runs, which its clients
    cannot otherwise tell from a model that was never started)."""

    LOADED = "loaded"
    LOADING = "loading"
    UNLOADED = "unloaded"
    FAILED = "failed"
    SLEEPING = "sleeping"  # vLLM's sleep mode: the engine is up, its GPU memory given back


_STATUS: dict[State, ClientStatus] = {
    State.STOPPED: ClientStatus.UNLOADED,
    State.STARTING: ClientStatus.LOADING,
    State.READY: ClientStatus.LOADED,
    # A stopping model is on its way out and unloaded within its stop_timeout. A client that wants it
    # must load it again (a load or a request waits for the stop, then starts it), which is what a UI
    # offers for an unloaded model; "loading" would promise a model that is not coming, and "loaded"
    # would offer an unload that has already begun.
    State.STOPPING: ClientStatus.UNLOADED,
    State.FAILED: ClientStatus.FAILED,
    # A model falling asleep is as good as asleep to a client: a request waits for the sleep, then wakes it.
    State.FALLING_ASLEEP: ClientStatus.SLEEPING,
    State.SLEEPING: ClientStatus.SLEEPING,
    State.WAKING: ClientStatus.LOADING,
}


def client_status(state: State) -> ClientStatus:
    return _STATUS[state]


def created(config: Config) -> int:
    """OpenAI's `created` for every entry: when the catalogue was last written (0 if it is gone)."""
    return int(config.path.stat().st_mtime) if config.path.exists() else 0


def openai_entry(model: ModelConfig, state: State, created: int) -> dict[str, Any]:
    """One model as an OpenAI `model` object, with its live state and what clients need to pick one."""
    entry: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": created,
        "owned_by": "waker",
        "aliases": list(model.aliases),
        "state": state.value,
        "status": {"value": client_status(state).value},
        "capabilities": {"vision": model.vision, "tools": model.tools},
    }
    # The context the engine enforces (its --max-model-len), else the configured one: clients such as
    # aider size their requests by it, and warn without it.
    if context := model_context(model):
        entry["context_length"] = entry["max_model_len"] = context
    if model.description:
        entry["description"] = model.description
    return entry
