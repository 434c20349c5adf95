"""The walk of a cold request's model id through the waker: every waker function entered from the wake
handler (`GET /_wake/<id>`) to the driver's `up`, and those among them that are handed the model (its
id, config, slot, waiter, action or event) as an argument, with the modules they cross. It runs the
real shell and HTTP layer over a fake driver (tests/unit/shell_fakes.py), in-process:

    PYTHONPATH=. .venv/bin/python -m bench.cold_walk

Counted with sys.setprofile; a dataclass's generated __init__ makes a value and is not counted. It also
runs in a checkout from before the package layout (issue 21), to compare: there the imports differ.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.unit.shell_fakes import FakeDriver, Shell, make_config, open_shell

MODEL = "cold-model"
VARARGS, VARKEYWORDS = 4, 8  # code object flags: the function takes *args, **kwargs


class Walk:
    def __init__(self) -> None:
        self.entered: list[tuple[str, str]] = []
        self.handed: list[tuple[str, str]] = []
        self._frames: list[FrameType] = []
        self._on = self._done = False

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or self._done:
            return
        module, name = frame.f_globals.get("__name__", ""), frame.f_code.co_qualname
        if name == "wake" and module in ("waker.http.gateway", "waker.gateway_api"):
            self._on = True
        if not self._on or any(f is frame for f in self._frames):
            return  # a coroutine's resumption is a 'call' event too: each frame counts once
        self._frames.append(frame)
        if (module.startswith("waker.") and "__create_fn__" not in name) or name == "FakeDriver.up":
            self.entered.append((module, name))
            if _handed_the_model(frame):
                self.handed.append((module, name))
        self._done = name == "FakeDriver.up"


def _carries(value: Any) -> bool:
    if value == MODEL or MODEL in (getattr(value, a, None) for a in ("id", "model", "model_id")):
        return True
    if isinstance(value, dict):
        return MODEL in value or MODEL in value.values()
    if isinstance(value, tuple):
        return any(getattr(v, "model", None) == MODEL for v in value)
    return any(getattr(a, "model", None) == MODEL for a in getattr(value, "actions", ()) or ())


def _handed_the_model(frame: FrameType) -> bool:
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & VARARGS) + bool(code.co_flags & VARKEYWORDS)
    return any(_carries(frame.f_locals.get(name)) for name in code.co_varnames[:count])


async def walk_cold_request(build: Callable[[Shell], web.Application]) -> Walk:
    shell = await open_shell(make_config({"id": MODEL}), FakeDriver())
    client = TestClient(TestServer(build(shell)))
    await client.start_server()
    walk = Walk()
    sys.setprofile(walk.profile)
    response = await client.get(f"/_wake/{MODEL}")
    sys.setprofile(None)
    assert response.status == 204, response.status
    await client.close()
    await shell.supervisor.close()
    return walk


def report(label: str, calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    distinct = list(dict.fromkeys(calls))
    hops = sum(1 for (a, _), (b, _) in zip(distinct, distinct[1:], strict=False) if a != b)
    print(f"{label}: {len(distinct)} functions, {len({m for m, _ in distinct})} modules, {hops} module hops")
    return distinct


def app_builder() -> Callable[[Shell], web.Application]:
    try:
        from waker.http.app import build_app
        from waker.http.metrics import Counters
    except ImportError:  # a checkout from before issue 21's package layout
        from waker.docker_runtime import DockerRuntime  # type: ignore[import-not-found]
        from waker.metrics import Counters  # type: ignore[import-not-found,no-redef]
        from waker.service import build_app  # type: ignore[import-not-found,no-redef]

        def build_old(shell: Shell) -> web.Application:
            runtime = DockerRuntime("bench", "unix:///nonexistent/docker.sock")
            return build_app(shell.supervisor, shell.control, {"local": runtime}, Counters())  # type: ignore[call-arg]

        return build_old

    def build(shell: Shell) -> web.Application:
        return build_app(shell.supervisor, shell.control, Counters())

    return build


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    walk = asyncio.run(walk_cold_request(app_builder()))
    report("every waker function run", walk.entered)
    for module, name in report("handed the model", walk.handed):
        print(f"    {module}.{name}")


if __name__ == "__main__":
    main()
