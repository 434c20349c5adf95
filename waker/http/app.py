"""The waker's one HTTP application, built here and nowhere else: every route, its middlewares, and
the typed context its handlers share (`http.context`).

What nginx calls (`/_wake/<id>`, the model list, health), the client port's model controls, the
admin API, `/metrics` and the dashboard are all served from this one application on `[waker] listen`.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from waker.http import admin, gateway, model_controls
from waker.http.context import CONTEXT, Context
from waker.http.loading_stream import LoadingStreams
from waker.http.metrics import Counters, render
from waker.shell.loading_watch import LoadingWatch
from waker.shell.manual_control import ManualControl
from waker.shell.supervisor import Supervisor
from waker.system.gpu import GpuMemory

UI_DIR = Path(__file__).with_name("ui")


def build_app(
    supervisor: Supervisor, control: ManualControl, counters: Counters, gpu: GpuMemory | None = None
) -> web.Application:
    watch = LoadingWatch(supervisor)
    ctx = Context(supervisor, control, watch, LoadingStreams(supervisor, watch), counters, gpu or GpuMemory())
    app = web.Application(middlewares=[gateway.count_and_shield, gateway.require_client_key, admin.require_token])
    app[CONTEXT] = ctx
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
    app.add_routes(
        [
            # nginx's: a model it could not reach, and what answers from the waker's memory
            web.route("*", "/_wake/{model}", gateway.wake),
            web.get("/v1/models", gateway.list_models),
            web.get("/models", gateway.list_models),  # llama.cpp router's path for the same list
            web.get("/healthz", gateway.healthz),
            web.get("/_stats", gateway.stats),
            # the client port's model controls (llama.cpp router's, as Open WebUI calls them)
            web.post("/models/load", model_controls.load),
            web.post("/models/unload", model_controls.unload),
            # the operator's
            web.get("/admin/models", admin.list_models),
            web.get("/admin/models/{model}", admin.get_model),
            web.post("/admin/models/{model}/start", admin.start),
            web.post("/admin/models/{model}/stop", admin.stop),
            web.post("/admin/models/{model}/sleep", admin.sleep),
            web.post("/admin/models/{model}/pin", admin.pin),
            web.post("/admin/models/{model}/unpin", admin.pin),
            web.get("/admin/models/{model}/logs", admin.logs),
            web.post("/admin/unload", admin.unload),
            web.get("/admin/events", admin.events),
            web.post("/admin/reload", admin.reload),
            web.post("/admin/prepare", admin.prepare),
            web.get("/metrics", metrics),
            web.get("/ui/", dashboard),
        ]
    )
    return app


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    text = render(ctx.supervisor, ctx.counters, ctx.gpu, await ctx.supervisor.memory_in_use())
    return web.Response(text=text, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"})


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _open(app: web.Application) -> None:
    await app[CONTEXT].watch.open()
    await app[CONTEXT].streams.open()


async def _close(app: web.Application) -> None:
    await app[CONTEXT].streams.close()
    await app[CONTEXT].watch.close()
