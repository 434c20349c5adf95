"""The progress line a waiting stream and the dashboard both show, and when a stream sends one."""

from __future__ import annotations

import json
from dataclasses import replace

from waker.core.engine_log import EngineStage, Step
from waker.core.image_pull import PullProgress
from waker.core.lifecycle import State
from waker.core.plan import HostBudget
from waker.core.progress import (
    HEARTBEAT,
    MIN_GAP,
    Phase,
    Progress,
    progress,
    ready_line,
    should_send,
)
from waker.core.scheduler import Policy, Slot, Waiter
from waker.http import sse

POLICY = Policy(capacity=1.0, queue_timeout=600)


def slots(**given: Slot) -> dict[str, Slot]:
    return {name: replace(slot, id=name) for name, slot in given.items()}


def test_a_loading_model_shows_the_engines_stage_against_its_last_start():
    table = slots(beta=Slot("", 0.5, state=State.STARTING, starting_since=100.0, expected_start_seconds=95.0))
    stage = EngineStage(Step.WEIGHTS, "loading weights: safetensors checkpoint shards 45% (5/11)", 45)
    shown = progress("beta", table, (Waiter(1, "beta", 99.0),), POLICY, None, stage, now=138.0)
    assert shown.text == (
        "loading beta: loading weights: safetensors checkpoint shards 45% (5/11) · 38 s of ~95 s (its last start)"
    )
    assert (shown.phase, shown.step, shown.percent, shown.elapsed_seconds) == (Phase.LOADING, "weights", 45, 38.0)


def test_before_the_log_says_anything_and_on_a_first_start():
    table = slots(beta=Slot("", state=State.STARTING, starting_since=100.0))
    shown = progress("beta", table, (), POLICY, None, None, now=102.4)
    assert shown.text == "starting beta's container · 2 s so far (its first start: no earlier one to compare with)"


def test_an_image_pull_shows_layers_and_bytes():
    table = slots(beta=Slot("", state=State.STARTING, starting_since=100.0))
    pull = PullProgress("vllm/vllm-openai:v0.32.0", 3, 11, 1_200_000_000, 9_800_000_000)
    shown = progress("beta", table, (), POLICY, pull, None, now=114.0)
    assert shown.phase is Phase.PULLING
    assert shown.headline == "pulling image vllm/vllm-openai:v0.32.0: 3/11 layers"
    assert shown.detail.startswith("1.2 GB of 9.8 GB, 14 s so far")


def test_a_queued_model_names_its_place_and_who_holds_the_gpu():
    table = slots(
        alpha=Slot(
            "",
            0.7,
            state=State.READY,
            in_flight=2,
            oldest_request_since=90.0,
            mean_request_seconds=50.0,
            last_active=95.0,
        ),
        beta=Slot("", 0.5),
    )
    shown = progress("beta", table, (Waiter(1, "beta", 97.0),), POLICY, None, None, now=100.0)
    assert shown.text == (
        "queued for beta (#1 of 1): room on the GPU, held by 'alpha' (ready, 2 request(s) in "
        "flight, release expected in ~40 s) · waited 3 s of at most 600 s"
    )
    assert (shown.queue_position, shown.queue_length) == (1, 1)


def test_with_two_hosts_a_queued_model_speaks_of_its_own_host():
    two = replace(POLICY, hosts=(HostBudget("one", 1.0), HostBudget("two", 1.0, up=False)))
    table = slots(
        alpha=Slot("", 0.7, state=State.READY, in_flight=2, hosts=("one",), oldest_request_since=90.0),
        beta=Slot("", 0.5, host="two"),
        gamma=Slot("", 0.5, hosts=("one",)),
    )
    shown = progress("beta", table, (Waiter(1, "beta", 97.0),), two, None, None, now=100.0)
    assert shown.text.startswith("queued for beta (#1 of 1): it cannot be placed: host 'two' is down")
    up = replace(two, hosts=(HostBudget("one", 1.0), HostBudget("two", 1.0)))
    shown = progress("gamma", table, (Waiter(1, "gamma", 97.0),), up, None, None, now=100.0)
    assert "starting now" in shown.text  # one is held by alpha, two has room: no holder to name


def test_a_queued_model_behind_another_start_and_behind_another_model():
    table = slots(
        alpha=Slot("", 0.6, state=State.STARTING, starting_since=90.0, expected_start_seconds=30.0),
        beta=Slot("", 0.6),
        gamma=Slot("", 0.6),
    )
    queue = (Waiter(1, "gamma", 91.0), Waiter(2, "beta", 92.0), Waiter(3, "alpha", 93.0))
    first = progress("gamma", table, queue, POLICY, None, None, now=100.0)
    second = progress("beta", table, queue, POLICY, None, None, now=100.0)
    assert first.headline == "queued for gamma (#1 of 2): 'alpha' is starting (one start at a time; ~20 s left)"
    assert second.queue_position == 2
    table = {**table, "alpha": replace(table["alpha"], state=State.READY, in_flight=1)}
    assert (
        progress("beta", table, queue, POLICY, None, None, now=100.0).headline
        == "queued for beta (#2 of 2): 'gamma' goes first"
    )


def test_a_ready_model_and_the_last_line():
    table = slots(beta=Slot("", state=State.READY, expected_start_seconds=12.34))
    assert progress("beta", table, (), POLICY, None, None, now=1.0).headline == "beta is ready (started in 12.3 s)"
    assert ready_line("beta", 12.96) == "beta is ready after 13.0 s; its answer follows"


def line(step: str, headline: str, phase: Phase = Phase.LOADING) -> Progress:
    return Progress("m", phase, step, headline, "")


def test_a_new_phase_or_step_goes_at_once_moving_figures_at_most_once_a_second_and_a_heartbeat():
    shards = line("weights", "shards 10%")
    assert should_send(None, 0.0, shards, 0.0)
    assert should_send(shards, 10.0, line("weights_loaded", "weights loaded"), 10.1)
    assert should_send(shards, 10.0, line("pull", "x", Phase.PULLING), 10.1)
    assert not should_send(shards, 10.0, line("weights", "shards 20%"), 10.0 + MIN_GAP / 2)
    assert should_send(shards, 10.0, line("weights", "shards 20%"), 10.0 + MIN_GAP)
    assert not should_send(shards, 10.0, shards, 10.0 + HEARTBEAT - 0.1)
    assert should_send(shards, 10.0, shards, 10.0 + HEARTBEAT)


def test_chunks_carry_the_line_as_reasoning_and_add_no_content():
    first = json.loads(sse.progress_chunk("chatcmpl-waker-1", "beta", 1700000000, "one line", True)[6:])
    later = json.loads(sse.progress_chunk("chatcmpl-waker-1", "beta", 1700000000, "next", False)[6:])
    assert first == {
        "id": "chatcmpl-waker-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "beta",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "reasoning_content": "one line\n"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    assert later["choices"][0]["delta"] == {"content": "", "reasoning_content": "next\n"}


def test_a_failure_is_vllms_error_event_then_done():
    body = {"error": {"message": "model 'beta' exited", "type": "server_error", "param": None, "code": "model_exited"}}
    assert (
        sse.error_events(body) == b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"
    )
