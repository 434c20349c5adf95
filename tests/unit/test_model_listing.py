"""The model list's entries and the llama.cpp-router status each of our states shows as."""

from __future__ import annotations

import pytest

from waker.config.schema import parse_config
from waker.core.lifecycle import State
from waker.http.model_list import ClientStatus, client_status, openai_entry


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (State.STOPPED, "unloaded"),
        (State.STARTING, "loading"),
        (State.READY, "loaded"),
        (State.STOPPING, "unloaded"),
        (State.FAILED, "failed"),
        (State.FALLING_ASLEEP, "sleeping"),
        (State.SLEEPING, "sleeping"),
        (State.WAKING, "loading"),
    ],
)
def test_each_state_has_the_status_llama_cpp_clients_read(state, status):
    assert client_status(state) == status


def test_the_status_set_is_llama_cpp_routers_plus_failed_and_sleeping_and_every_state_has_one():
    assert {s.value for s in ClientStatus} == {"loaded", "loading", "unloaded", "failed", "sleeping"}
    assert {client_status(state) for state in State} == set(ClientStatus)


def test_an_entry_carries_state_status_and_metadata(tmp_path):
    config = parse_config(
        {"model": [{"id": "alpha", "aliases": ["a"], "image": "i", "context_length": 8192, "tools": True}]},
        tmp_path / "models.toml",
    )
    entry = openai_entry(config.models[0], State.STARTING, 1700000000)
    assert entry == {
        "id": "alpha",
        "object": "model",
        "created": 1700000000,
        "owned_by": "waker",
        "aliases": ["a"],
        "state": "starting",
        "status": {"value": "loading"},
        "capabilities": {"vision": False, "tools": True},
        "context_length": 8192,
        "max_model_len": 8192,
    }


def test_the_context_is_the_one_the_engine_enforces_when_its_command_says(tmp_path):
    """real-clients.md: aider warned "Unknown context window size" for a model whose command had
    --max-model-len but whose config had no context_length."""
    config = parse_config(
        {
            "model": [
                {"id": "flag", "image": "i", "command": ["serve", "x", "--max-model-len", "1024"]},
                {"id": "both", "image": "i", "command": ["serve", "x", "--max-model-len=2048"], "context_length": 4096},
                {"id": "none", "image": "i"},
            ]
        },
        tmp_path / "models.toml",
    )
    flag, both, none = (openai_entry(m, State.STOPPED, 0) for m in config.models)
    assert (flag["context_length"], flag["max_model_len"]) == (1024, 1024)
    assert both["context_length"] == 2048  # vLLM refuses what goes past its own limit, whatever the config says
    assert "context_length" not in none and "max_model_len" not in none
