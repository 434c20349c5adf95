"""vLLM's sleep protocol as waker/engine/sleep.py speaks it, against a stand-in that answers as vLLM 0.32.0
does (the module docstring; tests/e2e/fidelity_sleep.py checks those answers against the real engine)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from waker.config.schema import parse_config
from waker.config.sleep import SleepLevel
from waker.engine import sleep as engine_sleep
from waker.engine.sleep import Engine
from waker.errors import SleepModeError, SleepStep

HANG = (0, "")  # an answer that never comes: the engine stopped answering
PING = {"model": "alpha", "prompt": "ping", "max_tokens": 1, "temperature": 0}
COMPLETION = {"id": "cmpl-1", "choices": [{"index": 0, "text": "!", "finish_reason": "length"}]}


class FakeVllm:
    """vLLM's sleep endpoints and a completion, with the answers a test scripts per call ("POST /wake_up")
    played first; `calls` records each call with its JSON body, in order."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: list[tuple[str, Any]] = []
        self.scripts: dict[str, Iterator[tuple[int, str]]] = {}
        self.sleeping = False
        self.called = asyncio.Event()
        self.released = asyncio.Event()

    def script(self, call: str, answers: Iterator[tuple[int, str]]) -> None:
        self.scripts[call] = answers

    async def handle(self, request: web.Request) -> web.Response:
        call = f"{request.method} {request.path_qs}"
        raw = await request.read()
        self.calls.append((call, json.loads(raw) if raw else None))
        self.called.set()
        status, text = next(self.scripts.get(call, iter(())), None) or self.natural(call)
        if (status, text) == HANG:
            await self.released.wait()
        return web.Response(status=status, text=text, content_type="application/json")

    async def received(self, call: str, times: int = 1) -> None:
        """Returns once `call` came `times` times (a hung one included)."""
        while sum(made == call for made, _ in self.calls) < times:
            self.called.clear()
            await asyncio.wait_for(self.called.wait(), 10)

    def natural(self, call: str) -> tuple[int, str]:
        """What vLLM 0.32.0 answers."""
        if call.startswith("POST /sleep?level="):
            self.sleeping = True
            return 200, json.dumps({"status": "sleeping", "level": int(call.rsplit("=", 1)[1])})
        if call in ("POST /wake_up", "POST /wake_up?tags=kv_cache"):
            self.sleeping = False
            return 200, json.dumps({"status": "awake", "tags": ["kv_cache"] if "tags" in call else None})
        answers = {
            "GET /is_sleeping": {"is_sleeping": self.sleeping},
            "POST /wake_up?tags=weights": {"status": "sleeping", "tags": ["weights"]},
            "POST /collective_rpc": {"results": [None]},
            "POST /reset_prefix_cache": {"success": True},
            "POST /v1/completions": COMPLETION,
        }
        return (200, json.dumps(answers[call])) if call in answers else (404, '{"detail":"Not Found"}')


class Deadlines:
    """asyncio as engine/sleep.py sees it, with a deadline the test ends when the engine is where it wants
    it: a short real deadline would also race the steps before the one under test on a loaded machine."""

    def __init__(self) -> None:
        self.made: list[asyncio.Timeout] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def timeout(self, delay: float) -> asyncio.Timeout:
        self.made.append(deadline := asyncio.timeout(delay))
        return deadline

    def expire(self) -> None:
        for deadline in self.made:
            deadline.reschedule(asyncio.get_running_loop().time())


@pytest.fixture
def deadlines(monkeypatch) -> Deadlines:
    monkeypatch.setattr(engine_sleep, "asyncio", deadlines := Deadlines())
    return deadlines


@pytest.fixture
async def vllm(aiohttp_server):
    fake = FakeVllm()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.released.set()  # a hung handler must end for the server to close


async def sleep(fake: FakeVllm, level: SleepLevel, timeout: float = 10) -> None:
    async with aiohttp.ClientSession() as session:
        await engine_sleep.sleep(session, Engine(fake.url, "alpha"), level, timeout)


async def wake(fake: FakeVllm, level: SleepLevel, timeout: float = 10) -> None:
    async with aiohttp.ClientSession() as session:
        await engine_sleep.wake(session, Engine(fake.url, "alpha"), level, timeout)


async def is_sleeping(fake: FakeVllm) -> bool:
    async with aiohttp.ClientSession() as session:
        return await engine_sleep.is_sleeping(session, Engine(fake.url, "alpha"), 10)


async def failure(operation: Any, fake: FakeVllm, level: SleepLevel, timeout: float = 10) -> SleepModeError:
    with pytest.raises(SleepModeError) as caught:
        await operation(fake, level, timeout)
    return caught.value


def once(status: int, body: Any) -> Iterator[tuple[int, str]]:
    return iter([(status, body if isinstance(body, str) else json.dumps(body))])


LEVEL_1_WAKE = [("POST /wake_up", None), ("GET /is_sleeping", None), ("POST /v1/completions", PING)]
LEVEL_2_WAKE = [
    ("POST /wake_up?tags=weights", None),
    ("POST /collective_rpc", {"method": "reload_weights"}),
    ("POST /wake_up?tags=kv_cache", None),
    ("POST /reset_prefix_cache", None),
    ("GET /is_sleeping", None),
    ("POST /v1/completions", PING),
]


@pytest.mark.parametrize("level", [SleepLevel.OFFLOAD, SleepLevel.DISCARD])
async def test_a_sleep_asks_for_its_level_then_checks_the_engine_says_so(vllm, level):
    await sleep(vllm, level)
    assert vllm.calls == [(f"POST /sleep?level={int(level)}", None), ("GET /is_sleeping", None)]
    assert await is_sleeping(vllm) is True


async def test_a_level_1_wake_wakes_everything_then_checks_the_engine_serves(vllm):
    await sleep(vllm, SleepLevel.OFFLOAD)
    vllm.calls.clear()
    await wake(vllm, SleepLevel.OFFLOAD)
    assert vllm.calls == LEVEL_1_WAKE
    assert await is_sleeping(vllm) is False


async def test_a_level_2_wake_follows_vllms_order_weights_reload_kv_cache_reset(vllm):
    await sleep(vllm, SleepLevel.DISCARD)
    vllm.calls.clear()
    await wake(vllm, SleepLevel.DISCARD)
    assert vllm.calls == LEVEL_2_WAKE


async def test_the_prefix_cache_reset_is_tried_again_while_vllm_refuses_it(vllm):
    """vLLM answers {"success": false} while a running request holds cache blocks."""
    vllm.script("POST /reset_prefix_cache", iter([(200, '{"success":false}')] * 2))
    await wake(vllm, SleepLevel.DISCARD)
    assert [call for call, _ in vllm.calls] == [
        "POST /wake_up?tags=weights",
        "POST /collective_rpc",
        "POST /wake_up?tags=kv_cache",
        *["POST /reset_prefix_cache"] * 3,
        "GET /is_sleeping",
        "POST /v1/completions",
    ]


async def test_a_reset_refused_until_the_deadline_fails_the_wake_as_a_timeout(vllm, deadlines):
    vllm.script("POST /reset_prefix_cache", itertools.repeat((200, '{"success":false}')))
    waking = asyncio.create_task(wake(vllm, SleepLevel.DISCARD, timeout=60))
    await vllm.received("POST /reset_prefix_cache", times=3)
    deadlines.expire()
    with pytest.raises(SleepModeError) as caught:
        await waking
    assert caught.value.step is SleepStep.RESET_PREFIX_CACHE and caught.value.timed_out
    assert caught.value.message == "not done within 60 s (at step reset_prefix_cache)"
    assert {call for call, _ in vllm.calls[3:]} == {"POST /reset_prefix_cache"}  # it kept trying, went no further


async def test_a_reset_answer_that_is_neither_true_nor_false_fails_at_once(vllm):
    vllm.script("POST /reset_prefix_cache", once(200, {"success": "maybe"}))
    error = await failure(wake, vllm, SleepLevel.DISCARD)
    assert error.step is SleepStep.RESET_PREFIX_CACHE and not error.timed_out
    assert error.message == (
        'POST /reset_prefix_cache answered {"success": "maybe"}, expected {"success": true or false}'
    )


SLEEP_STEPS = [("POST /sleep?level=1", SleepStep.SLEEP), ("GET /is_sleeping", SleepStep.CHECK_ASLEEP)]
WAKE_1_STEPS = [
    ("POST /wake_up", SleepStep.WAKE),
    ("GET /is_sleeping", SleepStep.CHECK_AWAKE),
    ("POST /v1/completions", SleepStep.CHECK_SERVES),
]
WAKE_2_STEPS = [
    ("POST /wake_up?tags=weights", SleepStep.WAKE_WEIGHTS),
    ("POST /collective_rpc", SleepStep.RELOAD_WEIGHTS),
    ("POST /wake_up?tags=kv_cache", SleepStep.WAKE_KV_CACHE),
    ("POST /reset_prefix_cache", SleepStep.RESET_PREFIX_CACHE),
    ("GET /is_sleeping", SleepStep.CHECK_AWAKE),
    ("POST /v1/completions", SleepStep.CHECK_SERVES),
]
EVERY_STEP = [
    *((sleep, SleepLevel.OFFLOAD, call, step) for call, step in SLEEP_STEPS),
    *((wake, SleepLevel.OFFLOAD, call, step) for call, step in WAKE_1_STEPS),
    *((wake, SleepLevel.DISCARD, call, step) for call, step in WAKE_2_STEPS),
]
STEP_IDS = [f"{operation.__name__}-{int(level)}-{step.value}" for operation, level, _, step in EVERY_STEP]


@pytest.mark.parametrize(("operation", "level", "call", "step"), EVERY_STEP, ids=STEP_IDS)
async def test_a_step_answered_with_an_error_fails_naming_the_step_and_the_answer(vllm, operation, level, call, step):
    vllm.sleeping = operation is wake
    vllm.script(call, once(500, '{"error":{"message":"CUDA out of memory","code":500}}'))
    error = await failure(operation, vllm, level)
    assert error.step is step and not error.timed_out
    assert error.message == f'{call} answered 500: {{"error":{{"message":"CUDA out of memory","code":500}}}}'
    assert vllm.calls[-1][0] == call  # no step after the failed one


@pytest.mark.parametrize(("operation", "level", "call", "step"), EVERY_STEP, ids=STEP_IDS)
async def test_a_step_that_never_answers_fails_at_the_deadline_naming_the_step(
    vllm, deadlines, operation, level, call, step
):
    vllm.sleeping = operation is wake
    vllm.script(call, once(*HANG))
    running = asyncio.create_task(operation(vllm, level, timeout=60))
    await vllm.received(call)
    deadlines.expire()
    with pytest.raises(SleepModeError) as caught:
        await running
    assert caught.value.step is step and caught.value.timed_out
    assert caught.value.message == f"not done within 60 s (at step {step.value})"


async def test_the_deadline_is_real_time(vllm):
    vllm.script("POST /sleep?level=2", once(*HANG))
    error = await failure(sleep, vllm, SleepLevel.DISCARD, timeout=0.2)
    assert (
        error.step is SleepStep.SLEEP and error.timed_out and error.message == "not done within 0.2 s (at step sleep)"
    )


AWAKE = '{"status": "awake"}'


@pytest.mark.parametrize(
    ("operation", "level", "call", "answer", "expected"),
    [
        (sleep, SleepLevel.OFFLOAD, "POST /sleep?level=1", {"status": "awake"}, '{"status": "sleeping", "level": 1}'),
        (
            sleep,
            SleepLevel.DISCARD,
            "POST /sleep?level=2",
            {"status": "sleeping", "level": 1},
            '{"status": "sleeping", "level": 2}',
        ),
        (sleep, SleepLevel.OFFLOAD, "GET /is_sleeping", {"is_sleeping": False}, '{"is_sleeping": true}'),
        (wake, SleepLevel.OFFLOAD, "POST /wake_up", {"status": "sleeping", "tags": None}, AWAKE),
        (wake, SleepLevel.OFFLOAD, "POST /wake_up", ["awake"], AWAKE),
        (wake, SleepLevel.OFFLOAD, "POST /wake_up", None, AWAKE),
        (wake, SleepLevel.OFFLOAD, "GET /is_sleeping", {"is_sleeping": True}, '{"is_sleeping": false}'),
        (
            wake,
            SleepLevel.DISCARD,
            "POST /wake_up?tags=weights",
            {"status": "awake", "tags": None},
            '{"tags": ["weights"]}',
        ),
        (wake, SleepLevel.DISCARD, "POST /wake_up?tags=kv_cache", {"status": "sleeping"}, AWAKE),
    ],
)
async def test_an_answer_that_is_not_vllms_fails_saying_what_was_expected(
    vllm, operation, level, call, answer, expected
):
    vllm.sleeping = operation is wake
    vllm.script(call, once(200, "" if answer is None else answer))
    error = await failure(operation, vllm, level)
    assert error.message == f"{call} answered {json.dumps(answer)}, expected {expected}" and not error.timed_out
    assert vllm.calls[-1][0] == call


@pytest.mark.parametrize(
    "answer", [(200, json.dumps({"id": "cmpl-1", "choices": []})), (200, "[]"), (200, ""), (200, "null")]
)
async def test_a_woken_engine_that_does_not_complete_the_ping_fails_the_check(vllm, answer):
    """/health stays 200 on an engine a failed wake wedged: only a completion tells."""
    vllm.sleeping = True
    vllm.script("POST /v1/completions", iter([answer]))
    error = await failure(wake, vllm, SleepLevel.OFFLOAD)
    assert error.step is SleepStep.CHECK_SERVES and not error.timed_out
    assert (
        error.message
        == f"the check completion answered without a choice: {json.dumps(json.loads(answer[1] or 'null'))}"
    )


async def test_a_reload_of_the_weights_answered_with_an_empty_body_is_enough(vllm):
    """Only the status of collective_rpc is checked: its results are the workers' return values."""
    vllm.script("POST /collective_rpc", once(200, ""))
    await wake(vllm, SleepLevel.DISCARD)
    assert [call for call, _ in vllm.calls] == [call for call, _ in LEVEL_2_WAKE]


async def test_a_200_that_is_not_json_is_an_error(vllm):
    vllm.script("POST /sleep?level=1", once(200, "<html>sleeping</html>"))
    error = await failure(sleep, vllm, SleepLevel.OFFLOAD)
    assert error.step is SleepStep.SLEEP
    assert error.message == "POST /sleep?level=1 answered 200 with a body that is not JSON: '<html>sleeping</html>'"


async def test_without_dev_mode_the_error_says_what_the_engine_needs(vllm):
    """A vLLM started without VLLM_SERVER_DEV_MODE=1 has no /sleep: FastAPI's 404."""
    vllm.script("POST /sleep?level=1", once(404, {"detail": "Not Found"}))
    error = await failure(sleep, vllm, SleepLevel.OFFLOAD)
    assert error.step is SleepStep.SLEEP and "no sleep endpoints" in error.message
    assert "VLLM_SERVER_DEV_MODE=1" in error.message


async def test_vllms_own_404_is_reported_as_it_came(vllm):
    """vLLM's JSON 404 (a model it does not serve) is an answer of the engine, not a missing endpoint."""
    missing = '{"error":{"message":"The model `alpha` does not exist.","type":"NotFoundError","code":404}}'
    vllm.sleeping = True
    vllm.script("POST /v1/completions", once(404, missing))
    error = await failure(wake, vllm, SleepLevel.OFFLOAD)
    assert error.step is SleepStep.CHECK_SERVES and error.message == f"POST /v1/completions answered 404: {missing}"


async def test_a_long_answer_is_cut_in_the_message(vllm):
    vllm.script("POST /wake_up", once(500, "x" * 10_000))
    error = await failure(wake, vllm, SleepLevel.OFFLOAD)
    assert error.message == "POST /wake_up answered 500: " + "x" * engine_sleep.ANSWER_EXCERPT


async def test_an_engine_that_is_gone_fails_at_once_naming_the_call():
    with socket.socket() as bound:  # bound, never listening: a connection is refused at once
        bound.bind(("127.0.0.1", 0))
        engine = Engine(f"http://127.0.0.1:{bound.getsockname()[1]}", "alpha")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(SleepModeError) as caught:
                await engine_sleep.wake(session, engine, SleepLevel.OFFLOAD, 10)
    assert caught.value.step is SleepStep.WAKE and not caught.value.timed_out
    assert caught.value.message.startswith("POST /wake_up failed: Cannot connect to host 127.0.0.1:")


@pytest.mark.parametrize("answer", [{"is_sleeping": "yes"}, {}, [True]])
async def test_an_is_sleeping_answer_that_is_not_a_boolean_is_an_error(vllm, answer):
    vllm.script("GET /is_sleeping", once(200, answer))
    with pytest.raises(SleepModeError) as caught:
        await is_sleeping(vllm)
    assert caught.value.step is SleepStep.CHECK_ASLEEP
    assert caught.value.message == (
        f'GET /is_sleeping answered {json.dumps(answer)}, expected {{"is_sleeping": true or false}}'
    )


def test_a_configured_models_engine_is_its_address_and_its_id(tmp_path):
    config = parse_config(
        {"waker": {"runtime_dir": str(tmp_path)}, "model": [{"id": "alpha", "image": "i", "host_port": 19001}]},
        tmp_path / "models.toml",
    )
    assert Engine.of(config.models[0]) == Engine("http://127.0.0.1:19001", "alpha")
