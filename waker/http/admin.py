"""The admin REST API under /admin/: see and steer the models, follow events and logs, reload.

JSON everywhere; errors are OpenAI-shaped error bodies. When `[waker] admin_token` is set, every
/admin/ call needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import asdict
from typing import Any

import structlog
from aiohttp import web

from waker.config.fixups import model_context
from waker.config.schema import ModelConfig
from waker.core.lifecycle import State
from waker.core.memory import ContainerMemory
from waker.core.plan import Slot
from waker.core.progress import Phase, Progress
from waker.errors import AdminError, ConfigError, NginxError, RequestRefused, error_body
from waker.http.context import CONTEXT
from waker.http.errors import error_response
from waker.shell.manual_control import SleepOutcome, StopOutcome
from waker.shell.supervisor import Supervisor

log = structlog.get_logger("waker.http.admin")

HEARTBEAT_SECONDS = 15.0


@web.middleware
async def require_token(request: web.Request, handler):
    token = request.app[CONTEXT].supervisor.config.waker.admin_token
    if token and request.path.startswith("/admin/"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return error_response(
                401,
                "unauthorized",
                "missing or wrong admin token: send 'Authorization: Bearer <token>' with [waker] admin_token",
            )
    return await handler(request)


def _model(request: web.Request) -> ModelConfig:
    supervisor = request.app[CONTEXT].supervisor
    name = request.match_info["model"]
    model = supervisor.config.model(name) or supervisor.config.resolve(name)
    if model is None:
        raise _http_error(
            404,
            "model_not_found",
            f"unknown model {name!r}; the models are: " + ", ".join(m.id for m in supervisor.config.models),
        )
    return model


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise _http_error(400, "invalid_parameter", f"query parameter {name!r} must be true or false, got {value!r}")


def _http_error(status: int, code: str, message: str) -> web.HTTPException:
    """An OpenAI error body raised from deep inside a handler (404 or 400)."""
    kind = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return kind(text=json.dumps(error_body(message, code, status)), content_type="application/json")


def describe(
    supervisor: Supervisor,
    model: ModelConfig,
    slots: dict[str, Slot] | None = None,
    progress: Progress | None = None,
    used: ContainerMemory | None = None,
) -> dict[str, Any]:
    """One model's state for the API; `slots` lets a listing merge the activity into them once.
    `progress` (a model queued or loading) is the line its waiting streams show too; `used`, its
    container's memory, where it was read."""
    now = supervisor.now()
    slot = (slots or supervisor.current_slots())[model.id]
    ready = slot.state is State.READY
    entry: dict[str, Any] = {
        "id": model.id,
        "aliases": list(model.aliases),
        "state": slot.state.value,
        "state_seconds": round(now - slot.since, 1),
        "uptime_seconds": round(now - slot.ready_since, 1) if ready else None,
        "idle_seconds": round(now - slot.last_active, 1) if ready and not slot.in_flight else None,
        "in_flight": slot.in_flight,
        "queued": len(supervisor.waiting.for_model(model.id)),
        "requests_total": supervisor.records[model.id].activity.total,
        "gpu_memory": model.gpu_memory,
        "memory": {
            **supervisor.footprint(model),
            "current_bytes": used.current if used is not None else None,
            "peak_bytes": used.peak if used is not None else None,
        },
        "exclusive": model.exclusive,
        "keep_warm": model.keep_warm,
        "pinned": slot.pinned,
        "idle_timeout": model.idle_timeout,
        "last_error": slot.last_error or None,
        "failures": slot.failures,
        "retry_in_seconds": round(slot.retry_at - now, 1) if slot.retry_at > now else None,
        "image": model.image,
        "container_id": supervisor.records[model.id].container,
        "host_port": model.host_port,
        "address": str(supervisor.address_of(model)),
        "hosts": list(slot.hosts),
        "host": model.host or None,
        "context_length": model_context(model),
        "vision": model.vision,
        "tools": model.tools,
        "fixups": [f.value for f in model.fixups],
        "last_start_seconds": round(slot.expected_start_seconds, 1) if slot.expected_start_seconds else None,
        "sleep": slot.sleep_level,  # 0 also where sleep mode is off (no nginx routed by the waker)
        "sleep_memory": slot.sleep_memory,
        "asleep_seconds": round(now - slot.since, 1) if slot.state is State.SLEEPING else None,
        "wake_failures": slot.wake_failures,
    }
    if progress is not None and progress.phase in (Phase.QUEUED, Phase.PULLING, Phase.LOADING):
        entry["progress"] = {**asdict(progress), "text": progress.text}
    if slot.state is State.STARTING:
        entry["loading"] = {
            "elapsed_seconds": round(now - slot.starting_since, 1),
            "expected_seconds": entry["last_start_seconds"],
        }
        pulling = supervisor.fleet.pulling(model.image)
        if pulling is not None:
            entry["loading"]["pull"] = {**asdict(pulling), "text": pulling.describe()}
    return entry


def _described(
    request: web.Request,
    model: ModelConfig,
    slots: dict[str, Slot] | None = None,
    used: ContainerMemory | None = None,
) -> dict[str, Any]:
    ctx = request.app[CONTEXT]
    return describe(ctx.supervisor, model, slots, ctx.watch.progress(model.id), used)


async def list_models(request: web.Request) -> web.Response:
    supervisor = request.app[CONTEXT].supervisor
    slots = supervisor.current_slots()
    used = await supervisor.memory_in_use()
    return web.json_response(
        {
            "models": [_described(request, m, slots, used.get(m.id)) for m in supervisor.config.models],
            "queue_length": len(supervisor.waiting),
            "docker": supervisor.docker_error or "connected",
            "gpu_capacity": supervisor.policy.capacity,
            "hosts": [asdict(status) for status in supervisor.host_status(slots)],
            "gpu": [asdict(reading) for reading in request.app[CONTEXT].gpu.read()],
            "externals": await supervisor.externals.status() if supervisor.externals is not None else [],
        }
    )


async def get_model(request: web.Request) -> web.Response:
    model = _model(request)
    used = await request.app[CONTEXT].supervisor.container_memory(model.id)
    return web.json_response(_described(request, model, used=used))


async def start(request: web.Request) -> web.Response:
    supervisor, model = request.app[CONTEXT].supervisor, _model(request)
    wait = _flag(request, "wait", True)
    preload = asyncio.ensure_future(supervisor.acquire(model))
    if not wait:
        keep_until_done(request.app[CONTEXT].starts, preload, model.id)
        # One turn of the loop queues the request (acquire runs up to its first wait); deciding now
        # rather than on the next turn makes the answer show the decision ("starting", or still
        # "stopped" with its place in the queue), not the state before it.
        await asyncio.sleep(0)
        supervisor.reconcile()
        return web.json_response(_described(request, model), status=202)
    try:
        await preload
    except RequestRefused as exc:
        return error_response(exc.status, exc.code, exc.message, details=exc.details)
    return web.json_response(_described(request, model))


def keep_until_done(tasks: set[asyncio.Task[None]], task: asyncio.Task[None], model_id: str) -> None:
    """Holds a start nobody waits for until it ends (the event loop keeps only a weak reference to a
    task), then logs how it failed, if it did."""
    tasks.add(task)

    def ended(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        failure = None if task.cancelled() else task.exception()
        if isinstance(failure, RequestRefused):
            log.warning(
                "admin_start_refused", model=model_id, status=failure.status, code=failure.code, error=failure.message
            )
        elif failure is not None:
            log.error("admin_start_failed", model=model_id, error=repr(failure), exc_info=failure)

    task.add_done_callback(ended)


async def stop(request: web.Request) -> web.Response:
    supervisor, model = request.app[CONTEXT].supervisor, _model(request)
    force, wait = _flag(request, "force", False), _flag(request, "wait", True)
    try:
        outcome = request.app[CONTEXT].control.stop_by_hand(model.id, force)
    except AdminError as exc:
        return error_response(exc.status, "conflict", exc.message)
    if wait and outcome is StopOutcome.STOPPING:
        await supervisor.wait_until(model.id, (State.STOPPED,), model.stop_timeout + 30)
    return web.json_response({"outcome": outcome.value, **_described(request, model)})


async def sleep(request: web.Request) -> web.Response:
    supervisor, model = request.app[CONTEXT].supervisor, _model(request)
    try:
        outcome = request.app[CONTEXT].control.sleep_by_hand(model.id)
    except AdminError as exc:
        return error_response(exc.status, "conflict", exc.message)
    if _flag(request, "wait", True) and outcome is SleepOutcome.FALLING_ASLEEP:
        settled = tuple(s for s in State if s is not State.FALLING_ASLEEP)
        await supervisor.wait_until(model.id, settled, model.sleep.wake_timeout + 30)
    return web.json_response({"outcome": outcome.value, **describe(supervisor, model)})


async def pin(request: web.Request) -> web.Response:
    model = _model(request)
    request.app[CONTEXT].control.set_pinned(model.id, request.path.endswith("/pin"))
    return web.json_response(_described(request, model))


async def unload(request: web.Request) -> web.Response:
    supervisor = request.app[CONTEXT].supervisor
    outcome = request.app[CONTEXT].control.unload(_flag(request, "force", False))
    if _flag(request, "wait", True):
        await asyncio.gather(
            *(
                supervisor.wait_until(model_id, (State.STOPPED,), 60)
                for model_id, what in outcome.items()
                if what == StopOutcome.STOPPING
            )
        )
    return web.json_response({"models": outcome})


async def logs(request: web.Request) -> web.StreamResponse:
    model = _model(request)
    try:
        tail = int(request.query.get("tail", "100"))
        if not 0 <= tail <= 100_000:
            raise ValueError
    except ValueError:
        return error_response(400, "invalid_parameter", "tail must be a whole number from 0 to 100000")
    driver = request.app[CONTEXT].supervisor.driver_of(model.id)
    container_id = await driver.container(model.id)
    if container_id is None:
        return error_response(404, "no_container", f"model {model.id!r} has no container yet; start it first")
    if not _flag(request, "follow", False):
        text = await driver.logs(container_id, tail)
        return web.json_response({"model": model.id, "container_id": container_id, "lines": text.splitlines()})
    response = await _sse(request)
    async for line in driver.follow_logs(container_id, tail):
        await response.write(_event("log", {"line": line}))
    return response


async def events(request: web.Request) -> web.StreamResponse:
    bus = request.app[CONTEXT].supervisor.bus
    queue = bus.listen()
    try:
        response = await _sse(request)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            await response.write(_event(event.event.kind, event.as_json()))
    finally:
        bus.unlisten(queue)


async def reload(request: web.Request) -> web.Response:
    try:
        change = await request.app[CONTEXT].control.reload()
    except ConfigError as exc:
        return error_response(
            400,
            "invalid_config",
            "the new config was refused; the running one stays: " + "; ".join(exc.problems),
            details={"problems": exc.problems},
        )
    except AdminError as exc:
        return error_response(exc.status, "conflict", exc.message)
    except NginxError as exc:
        return error_response(500, "nginx_refused", str(exc))
    return web.json_response({"reloaded": True, **change.as_dict()})


async def prepare(request: web.Request) -> web.Response:
    supervisor = request.app[CONTEXT].supervisor
    ids: list[Any] = []
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "invalid_json", 'the body must be JSON such as {"models": ["id"]}')
        if not isinstance(body, dict) or not isinstance(body.get("models", []), list):
            return error_response(400, "invalid_body", 'the body must be {"models": ["id", ...]}')
        ids = body.get("models", [])
    named = [supervisor.config.model(i) if isinstance(i, str) else None for i in ids]
    unknown = [i for i, model in zip(ids, named, strict=True) if model is None]
    if unknown:
        return error_response(404, "model_not_found", f"unknown model(s) {unknown!r}")
    models = [m for m in named if m is not None] or list(supervisor.config.models)
    report = {m.id: await supervisor.driver_of(m.id).prepare(m) for m in models}
    ready = all("error" not in r for r in report.values())
    return web.json_response({"ok": ready, "models": report}, status=200 if ready else 207)


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
