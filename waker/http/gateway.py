"""The waker's HTTP face towards nginx: wake a model, list models, health, request counters.

nginx calls `/_wake/<id>` only when it could not reach a model; the answer is an empty 204 whose
X-Accel-Redirect sends nginx back to the model with the original request. The one exception is a
cold streaming chat completion of a model with loading feedback: nginx sends it here with its body,
and it is answered here, progress first and then the model's own stream (waker/http/loading_stream.py).
Requests to a ready model never reach the waker.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict

import structlog
from aiohttp import web

from waker.config.schema import LoadingFeedback
from waker.errors import RequestRefused
from waker.http.context import CONTEXT
from waker.http.errors import error_response
from waker.http.loading_stream import wants_feedback
from waker.http.model_list import created, openai_entry
from waker.nginx.render import NGINX_ERRORS, location_key

log = structlog.get_logger("waker.http.gateway")


# What the waker port serves clients through nginx: nginx checks the client key first and passes it
# on, so the waker checks it again. Else a caller of the waker port would need no key to start a
# model (and evict others), load or unload one, or list them.
CLIENT_PATHS = ("/_wake/", "/v1/models", "/models")


def carries_client_key(request: web.Request, keys: tuple[str, ...]) -> bool:
    """The same two headers nginx accepts (`Authorization: Bearer <key>`, `x-api-key: <key>`)."""
    given = [request.headers.get("x-api-key", "")]
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        given.append(authorization.removeprefix("Bearer "))
    return any(hmac.compare_digest(g.encode(), k.encode()) for g in given if g for k in keys)


@web.middleware
async def require_client_key(request: web.Request, handler):
    """401, word for word nginx's, to a client path without a key when keys are set."""
    keys = request.app[CONTEXT].supervisor.config.gateway.api_keys
    if keys and request.path.startswith(CLIENT_PATHS) and not carries_client_key(request, keys):
        return error_response(401, *NGINX_ERRORS[401], {"WWW-Authenticate": "Bearer"})
    return await handler(request)


@web.middleware
async def count_and_shield(request: web.Request, handler):
    """Counts what reaches the waker (so tests can prove which requests never do), and turns any
    failure into an OpenAI-shaped JSON error: nginx passes the waker's answers on to clients."""
    stats = request.app[CONTEXT].stats
    if request.path != "/_stats":
        stats.requests += 1
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            return web.Response(status=exc.status, text=exc.text, content_type="application/json")
        return error_response(
            exc.status,
            "not_found" if exc.status == 404 else "bad_request",
            f"{exc.reason}: {request.method} {request.path}",
        )
    except Exception:
        log.exception("internal_error", path=request.path)
        return error_response(500, "internal_error", "the waker failed on this request; its log has the details")
    if request.path.startswith("/_wake/"):
        if isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
            stats.wake_response_body_bytes += len(response.body)
        elif response.prepared:
            stats.loading_streams += 1
    return response


async def wake(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    model = ctx.supervisor.config.model(request.match_info["model"])
    if model is None:
        return error_response(404, "model_not_found", f"unknown model {request.match_info['model']!r}")
    ctx.stats.wakes += 1
    upstream_uri = request.headers.get("X-Upstream-URI", "")
    if request.method == "POST" and upstream_uri:  # sent with its body: loading feedback is on for the model
        body = await request.content.read()  # bounded by nginx's max_body, not by aiohttp's 1 MB default
        if model.loading_feedback is LoadingFeedback.REASONING and wants_feedback(request.method, upstream_uri, body):
            return await ctx.streams.serve(request, model, body, upstream_uri)
    began = time.monotonic()
    try:
        await ctx.supervisor.acquire(model)
    except RequestRefused as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers(), exc.details)
    log.info(
        "wake_served",
        model=model.id,
        held_seconds=round(time.monotonic() - began, 3),
        uri=request.headers.get("X-Original-URI"),
    )
    return web.Response(status=204, headers={"X-Accel-Redirect": f"@retry_{location_key(model.id)}"})


async def list_models(request: web.Request) -> web.Response:
    """The OpenAI model list with each model's live state. Answers from memory at once, waking
    nothing: Open WebUI gives the model list a short timeout of its own. Served at `/models` too,
    where llama.cpp's router (and so Open WebUI's llama.cpp connection) asks for the same list."""
    supervisor = request.app[CONTEXT].supervisor
    config = supervisor.config
    written = created(config)
    data = [openai_entry(model, supervisor.state(model.id), written) for model in config.models]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    """200 when the waker can do its job; 503 saying why when it cannot reach Docker. With several
    hosts, 503 only when none answers; 200 and "degraded" naming the host(s) down while one does."""
    hosts = request.app[CONTEXT].supervisor.hosts
    problem, down = hosts.docker_error, hosts.down()
    named = {"hosts": {name: down.get(name, "connected") for name in hosts.names}} if hosts.several else {}
    if problem:
        return web.json_response({"status": "degraded", "docker": problem, **named}, status=503)
    if down:
        return web.json_response({"status": "degraded", "docker": "connected", **named})
    return web.json_response({"status": "ok", "docker": "connected", **named})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(asdict(request.app[CONTEXT].stats))
