"""vLLM's sleep protocol over HTTP: put an engine to sleep, wake it, and check that it really serves.

The endpoints exist only with VLLM_SERVER_DEV_MODE=1 (the container spec sets it for models with
`sleep`); nginx keeps them away from clients. Measured on vLLM 0.32.0:

    POST /sleep?level=N                    {"status": "sleeping", "level": N}
    GET  /is_sleeping                      {"is_sleeping": true | false}
    POST /wake_up                          {"status": "awake", "tags": null}
    POST /wake_up?tags=weights             {"status": "sleeping", "tags": ["weights"]}  (partly awake)
    POST /collective_rpc                   {"results": [...]}       with {"method": "reload_weights"}
    POST /wake_up?tags=kv_cache            {"status": "awake", "tags": ["kv_cache"]}
    POST /reset_prefix_cache               {"success": true}

A level-2 sleep discards the weights, so its wake follows vLLM's order: the weights' memory, then
`reload_weights`, then the KV cache, then a prefix-cache reset (its cached blocks are garbage). After
any wake the engine is checked: `/is_sleeping` false, and a one-token completion answered, because
`/health` stays 200 on an engine wedged by a failed wake (vLLM issues 41564, 49237). Each operation
has one deadline for all its steps; whatever goes wrong raises SleepModeError naming the step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from waker.config.schema import ModelConfig
from waker.config.sleep import SleepLevel
from waker.errors import SleepModeError, SleepStep

NO_TIMEOUT = aiohttp.ClientTimeout(total=None)  # the operation's deadline bounds every call
ANSWER_EXCERPT = 300
RETRY_PAUSE = 0.05  # between tries of a reset vLLM refuses while a request holds cache blocks
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Engine:
    url: str  # the model server, e.g. http://127.0.0.1:18100
    model: str  # a name it serves, for the check completion

    @classmethod
    def of(cls, model: ModelConfig) -> Engine:
        """A configured model's engine: its id is among its served names (container_spec adds it)."""
        return cls(model.address.url, model.id)


class _Steps:
    """Runs one operation's steps under one deadline, remembering the step in progress."""

    def __init__(self, session: aiohttp.ClientSession, engine: Engine, timeout: float) -> None:
        self.session, self.engine, self.timeout = session, engine, timeout
        self.step = SleepStep.SLEEP

    async def call(self, step: SleepStep, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of one call (None for an empty body); anything but 200 is an error."""
        self.step = step
        url = f"{self.engine.url}{path}"
        try:
            async with self.session.request(method, url, json=body, timeout=NO_TIMEOUT) as response:
                text = await response.text()
        except aiohttp.ClientError as exc:
            raise SleepModeError(step, f"{method} {path} failed: {str(exc) or type(exc).__name__}") from None
        if response.status == 404 and not text.startswith('{"error"'):
            raise SleepModeError(
                step,
                f"{method} {path} answered 404: the engine has no sleep endpoints; they need "
                "vLLM with VLLM_SERVER_DEV_MODE=1 (set for models with `sleep`)",
            )
        if response.status != 200:
            raise SleepModeError(step, f"{method} {path} answered {response.status}: {text[:ANSWER_EXCERPT]}")
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise SleepModeError(
                step, f"{method} {path} answered 200 with a body that is not JSON: {text[:ANSWER_EXCERPT]!r}"
            ) from None

    async def expect(
        self, step: SleepStep, method: str, path: str, wanted: dict[str, Any], body: dict[str, Any] | None = None
    ) -> None:
        answer = await self.call(step, method, path, body)
        seen = {key: answer.get(key) for key in wanted} if isinstance(answer, dict) else answer
        if seen != wanted:
            raise SleepModeError(
                step, f"{method} {path} answered {json.dumps(answer)[:ANSWER_EXCERPT]}, expected {json.dumps(wanted)}"
            )

    async def until_success(self, step: SleepStep, path: str) -> None:
        """POST `path` until vLLM answers {"success": true}: it answers false while running requests
        hold the blocks, and says to try again."""
        while True:
            answer = await self.call(step, "POST", path)
            success = answer.get("success") if isinstance(answer, dict) else None
            if success is True:
                return
            if success is not False:
                raise SleepModeError(
                    step,
                    f"POST {path} answered {json.dumps(answer)[:ANSWER_EXCERPT]}, "
                    'expected {"success": true or false}',
                )
            await asyncio.sleep(RETRY_PAUSE)

    async def run(self, steps: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await steps
        except TimeoutError:
            raise SleepModeError(
                self.step, f"not done within {self.timeout:g} s (at step {self.step.value})", timed_out=True
            ) from None


async def sleep(session: aiohttp.ClientSession, engine: Engine, level: SleepLevel, timeout: float) -> None:
    """Puts the engine to sleep at `level` and checks that it says so. The caller makes sure no request
    is in flight: vLLM aborts them (its default pause mode)."""
    steps = _Steps(session, engine, timeout)

    async def run() -> None:
        await steps.expect(
            SleepStep.SLEEP, "POST", f"/sleep?level={int(level)}", {"status": "sleeping", "level": int(level)}
        )
        await steps.expect(SleepStep.CHECK_ASLEEP, "GET", "/is_sleeping", {"is_sleeping": True})

    await steps.run(run())


async def wake(session: aiohttp.ClientSession, engine: Engine, level: SleepLevel, timeout: float) -> None:
    """Wakes an engine put to sleep at `level`, in vLLM's order, then checks that it serves."""
    steps = _Steps(session, engine, timeout)

    async def run() -> None:
        if level is SleepLevel.DISCARD:
            await steps.expect(SleepStep.WAKE_WEIGHTS, "POST", "/wake_up?tags=weights", {"tags": ["weights"]})
            await steps.call(SleepStep.RELOAD_WEIGHTS, "POST", "/collective_rpc", {"method": "reload_weights"})
            await steps.expect(SleepStep.WAKE_KV_CACHE, "POST", "/wake_up?tags=kv_cache", {"status": "awake"})
            await steps.until_success(SleepStep.RESET_PREFIX_CACHE, "/reset_prefix_cache")
        else:
            await steps.expect(SleepStep.WAKE, "POST", "/wake_up", {"status": "awake"})
        await steps.expect(SleepStep.CHECK_AWAKE, "GET", "/is_sleeping", {"is_sleeping": False})
        answer = await steps.call(
            SleepStep.CHECK_SERVES,
            "POST",
            "/v1/completions",
            {"model": engine.model, "prompt": "ping", "max_tokens": 1, "temperature": 0},
        )
        if not (isinstance(answer, dict) and answer.get("choices")):
            raise SleepModeError(
                SleepStep.CHECK_SERVES,
                f"the check completion answered without a choice: {json.dumps(answer)[:ANSWER_EXCERPT]}",
            )

    await steps.run(run())


async def is_sleeping(session: aiohttp.ClientSession, engine: Engine, timeout: float) -> bool:
    """What the engine says (for adoption after a waker restart: a container found asleep stays so)."""
    steps = _Steps(session, engine, timeout)
    answer = await steps.run(steps.call(SleepStep.CHECK_ASLEEP, "GET", "/is_sleeping"))
    state = answer.get("is_sleeping") if isinstance(answer, dict) else None
    if not isinstance(state, bool):
        raise SleepModeError(
            SleepStep.CHECK_ASLEEP,
            f'GET /is_sleeping answered {json.dumps(answer)}, expected {{"is_sleeping": true or false}}',
        )
    return state
