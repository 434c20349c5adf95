"""The admin API's background starts (`POST /admin/models/<id>/start?wait=false`)."""

import asyncio

import pytest
from structlog.testing import capture_logs

from waker.errors import RequestRefused
from waker.http.admin import keep_until_done


async def ends_with(outcome: BaseException, gate: asyncio.Event) -> None:
    await gate.wait()
    raise outcome


@pytest.mark.parametrize(
    "outcome, logged",
    [
        (
            RequestRefused(503, "model_exited", "exited with code 1"),
            {
                "event": "admin_start_refused",
                "log_level": "warning",
                "model": "alpha",
                "status": 503,
                "code": "model_exited",
                "error": "exited with code 1",
            },
        ),
        (
            RuntimeError("a bug"),
            {"event": "admin_start_failed", "log_level": "error", "model": "alpha", "error": "RuntimeError('a bug')"},
        ),
    ],
)
async def test_a_start_nobody_waits_for_is_held_until_it_ends_and_its_failure_logged(outcome, logged):
    tasks: set[asyncio.Task[None]] = set()
    gate = asyncio.Event()
    task = asyncio.ensure_future(ends_with(outcome, gate))
    keep_until_done(tasks, task, "alpha")
    assert tasks == {task}
    with capture_logs() as logs:
        gate.set()
        await asyncio.gather(task, return_exceptions=True)
    assert tasks == set()
    assert [{k: v for k, v in entry.items() if k != "exc_info"} for entry in logs] == [logged]


async def test_a_cancelled_background_start_is_dropped_without_a_log():
    tasks: set[asyncio.Task[None]] = set()
    task = asyncio.ensure_future(ends_with(RuntimeError("never raised"), asyncio.Event()))
    keep_until_done(tasks, task, "alpha")
    with capture_logs() as logs:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert tasks == set() and logs == []
