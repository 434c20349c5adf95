"""Model load and unload on the client port, as llama.cpp's router serves them and Open WebUI's
llama.cpp connection calls them: `POST /models/load` and `POST /models/unload` with
`{"model": "<id or alias>"}`.

Off unless `[gateway] client_model_control = true`: with it, whoever holds a client API key can
stop a model someone else is about to use. nginx checks the key before proxying here; the waker
checks it again, because its own port serves these paths too.

- load: what a request for the model does (queue or refuse per `[scheduler] on_busy`, fail fast in
  back-off), answered when the model is ready or at once with its state when it cannot start.
- unload: what `waker stop` without force does, and more cautious: a pinned model or one with
  requests in flight is refused (409), and a failed one is left as it is, because clearing a
  back-off is the operator's call.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from aiohttp import web

from waker.config.schema import ModelConfig
from waker.core.lifecycle import State, StopReason
from waker.errors import RequestRefused
from waker.http.context import CONTEXT
from waker.http.errors import error_response
from waker.http.model_list import client_status, created, openai_entry
from waker.shell.manual_control import StopOutcome
from waker.shell.supervisor import Supervisor

log = structlog.get_logger("waker.http.model_controls")


class _Refused(Exception):
    """A request answered with an error before anything happens; carries the answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = error_response(status, code, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None)


async def _requested_model(request: web.Request) -> ModelConfig:
    """The model the request names, once it may be acted on; raises _Refused, changing nothing."""
    config = request.app[CONTEXT].supervisor.config
    if not config.gateway.client_model_control:
        raise _Refused(
            403,
            "client_model_control_disabled",
            "loading and unloading models from the client port is off: set [gateway] "
            "client_model_control = true to allow it (the operator can use `waker start` and "
            f"`waker stop`); {request.path} changed nothing",
        )
    ids = ", ".join(m.id for m in config.models)
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Refused(400, "invalid_json", 'the body must be JSON such as {"model": "<id>"}') from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise _Refused(
            400, "invalid_body", f'the body must be a JSON object such as {{"model": "<id>"}} naming one of: {ids}'
        )
    name = body["model"]
    model = config.resolve(name)
    if model is not None:
        return model
    disabled = next((m for m in config.disabled if name in m.names), None)
    if disabled is not None:
        raise _Refused(
            404,
            "model_disabled",
            f"model {name!r} is disabled in the config: {disabled.notes}; the models served are: {ids}",
        )
    raise _Refused(404, "model_not_found", f"unknown model {name!r}; the models are: {ids}")


def _entry(supervisor: Supervisor, model: ModelConfig) -> dict[str, Any]:
    return openai_entry(model, supervisor.state(model.id), created(supervisor.config))


async def load(request: web.Request) -> web.Response:
    supervisor = request.app[CONTEXT].supervisor
    try:
        model = await _requested_model(request)
    except _Refused as refused:
        return refused.response
    began = time.monotonic()
    try:
        # Exactly what a request for the model does: the scheduler queues or refuses it per
        # [scheduler] on_busy, a model in back-off fails fast, a failed start answers its reason.
        await supervisor.acquire(model)
    except RequestRefused as exc:
        state = supervisor.state(model.id)
        log.info("client_load_refused", model=model.id, status=exc.status, code=exc.code)
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            exc.headers(),
            {**exc.details, "model": model.id, "state": state.value, "status": {"value": client_status(state).value}},
        )
    log.info("client_load", model=model.id, waited_seconds=round(time.monotonic() - began, 3))
    return web.json_response({"success": True, **_entry(supervisor, model)})


async def unload(request: web.Request) -> web.Response:
    supervisor = request.app[CONTEXT].supervisor
    try:
        model = await _requested_model(request)
    except _Refused as refused:
        return refused.response
    slot = supervisor.current_slots()[model.id]
    if slot.state in (State.STOPPED, State.FAILED):
        # Nothing runs. A failed model keeps its failure: `waker stop` clears a back-off, a client may not.
        return web.json_response({"success": True, "outcome": "not running", **_entry(supervisor, model)})
    if slot.pinned:
        return error_response(
            409,
            "model_pinned",
            f"model {model.id!r} is pinned, so it is never unloaded: the "
            f"operator unpins it with `waker unpin {model.id}` (POST /admin/models/{model.id}"
            "/unpin); nothing was changed",
        )
    if slot.state is State.STARTING:
        return error_response(
            409, "model_loading", f"model {model.id!r} is loading; unload it once it is loaded; nothing was changed"
        )
    if slot.in_flight:
        # Refused, as by `waker stop` without force: an unload clicked in a UI must not cut off
        # someone else's answer mid-stream, and waiting for idle would leave an unload pending that
        # nobody sees; the client can simply ask again.
        return error_response(
            409,
            "model_busy",
            f"model {model.id!r} has {slot.in_flight} request(s) in flight; "
            "unloading it would cut them off; nothing was changed, ask again when they are done",
        )
    outcome = request.app[CONTEXT].control.stop_by_hand(model.id, reason=StopReason.CLIENT)
    if outcome is StopOutcome.STOPPING:
        await supervisor.wait_until(model.id, (State.STOPPED,), model.stop_timeout + 30)
    log.info("client_unload", model=model.id, outcome=outcome)
    return web.json_response({"success": True, "outcome": outcome.value, **_entry(supervisor, model)})
