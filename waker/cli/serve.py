"""The long-running processes: `waker serve` (control plane; nginx elsewhere, or in another container)
and `waker run` (nginx as a child + control plane)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Literal

import structlog
from aiohttp import web

from waker.config.hosts import HostConfig, local_host
from waker.config.schema import Config, WakerConfig
from waker.core.driver import Router
from waker.core.events import ImagePull
from waker.core.image_pull import PullProgress
from waker.docker.images import Images
from waker.docker.launcher import Launcher
from waker.docker.ray_pair import RayPair
from waker.docker.runtime import DockerRuntime
from waker.errors import AdminError, ConfigError, DockerError, NginxError
from waker.http.app import build_app
from waker.http.metrics import Counters
from waker.nginx import access as nginx_access
from waker.nginx.activity import listen as listen_for_activity
from waker.nginx.container import NginxContainer
from waker.nginx.process import Nginx, NginxProcess, NginxRouter
from waker.shell.events import EventBus
from waker.shell.fleet import Fleet
from waker.shell.manual_control import ManualControl
from waker.shell.supervisor import Supervisor
from waker.system import systemd
from waker.system.clock import LoopClock
from waker.system.memory import ThisMachine, may_drop_page_cache

log = structlog.get_logger("waker.cli.serve")

# Where nginx runs: "child" (`waker run`), "container" (the compose gateway, reloaded through Docker),
# "none" (managed by someone else; the waker never touches it).
NginxMode = Literal["child", "container", "none"]


def docker_driver(
    waker: WakerConfig,
    config: Callable[[], Config],
    runtime: DockerRuntime,
    bus: EventBus,
    clock: LoopClock,
    host: HostConfig,
) -> Launcher:
    """A host's driver: its Docker engine, with image pulls reported as `image_pull` events naming the
    models of the config in force (`config`, read at each report: a reload may add models)."""

    def pull_progress(image: str, progress: PullProgress) -> None:
        models = tuple(m.id for m in config().models if m.image == image)
        bus.publish(
            ImagePull(
                image,
                models,
                progress.layers_done,
                progress.layers_total,
                progress.bytes_done,
                progress.bytes_total,
                host.name if len(config().hosts) > 1 else None,
            )
        )

    return Launcher(waker, runtime, Images(runtime, pull_progress), clock.now, host)


def _nginx(mode: NginxMode, config: Config, runtime: DockerRuntime) -> Nginx | None:
    if mode == "child":
        return NginxProcess(config)
    if mode == "container":
        return NginxContainer(config, runtime)
    return None


def reload_on_hangup(control: ManualControl) -> Callable[[], None]:
    """The SIGHUP handler: the config read again and applied, as `waker reload` does. A closed terminal
    or SSH session sends SIGHUP, which would otherwise end the control plane with no word; daemons
    read it as "reload". One reload at a time; each outcome is logged."""
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        async with lock:
            try:
                change = await control.reload()
            except ConfigError as exc:
                log.warning("sighup_reload_refused", reason="; ".join(exc.problems))
            except (AdminError, NginxError) as exc:
                log.warning("sighup_reload_refused", reason=str(exc))
            else:
                log.info("sighup_reloaded", **change.as_dict())

    def handler() -> None:
        task = asyncio.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return handler


def _cannot_drop_page_cache(nginx_mode: NginxMode) -> str | None:
    if nginx_mode == "container":
        return (
            "[scheduler] drop_page_cache = true cannot work in the compose deployment: the waker's "
            "container may not write /proc/sys/vm/drop_caches. Set it to false, and drop the host's "
            "caches before big starts yourself (sync; echo 3 > /proc/sys/vm/drop_caches)"
        )
    if (why := may_drop_page_cache()) is not None:
        return (
            f"[scheduler] drop_page_cache = true, but {why}. Run the waker as root (in its systemd unit: "
            "User=root), or set it to false"
        )
    return None


async def serve(config: Config, nginx_mode: NginxMode) -> int:
    """Runs until SIGINT/SIGTERM (exit 0) or until nginx dies or stops answering (exit 1); SIGHUP reloads."""
    if config.scheduler.drop_page_cache and (why := _cannot_drop_page_cache(nginx_mode)) is not None:
        log.error("startup_failed", error=why)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    bus, counters = EventBus(), Counters()
    bus.add_sink(counters.observe)
    hosts = config.placement_hosts
    try:
        runtimes = {host.name: DockerRuntime(config.waker.name, host.docker) for host in hosts}
    except DockerError as exc:  # unreadable TLS files of a tcp:// host
        log.error("startup_failed", error=str(exc))
        return 1
    runtime = runtimes[local_host(hosts).name]  # the engine of this machine: nginx's, in compose
    clock = LoopClock()
    launchers = {
        host.name: docker_driver(config.waker, lambda: supervisor.config, runtimes[host.name], bus, clock, host)
        for host in hosts
    }
    by_name = {host.name: host for host in hosts}
    fleet = Fleet(
        launchers, lambda head, worker: RayPair(launchers[head], launchers[worker], by_name[head], by_name[worker])
    )
    nginx = _nginx(nginx_mode, config, runtime)
    router: Router | None = NginxRouter(nginx) if nginx is not None else None
    supervisor = Supervisor(config, fleet, bus, clock, router, ThisMachine(config.waker.state_dir))
    control = ManualControl(supervisor, nginx)
    loop.add_signal_handler(signal.SIGHUP, reload_on_hangup(control))
    # A client that hangs up while its request is held must be noticed: the handler is cancelled.
    runner = web.AppRunner(build_app(supervisor, control, counters), access_log=None, handler_cancellation=True)
    activity = None
    code = 0
    try:
        await runner.setup()
        listen = config.waker.listen
        await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
        activity = await listen_for_activity(listen.host, listen.port, supervisor.on_activity)
        log.info("waker_listening", listen=str(listen), models=len(config.models))
        if (exposure := nginx_access.exposure_warning(config)) is not None:
            log.warning("no_api_keys", warning=exposure)
        watchers: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        if nginx is not None:  # before the supervisor: adopting a sleeping model routes its gate
            await nginx.start()
            watchers.append(asyncio.create_task(nginx.wait()))
        await supervisor.open()
        systemd.notify(f"READY=1\nSTATUS=serving {len(config.models)} models on {config.gateway.listen}")
        watchdog = asyncio.create_task(systemd.feed_watchdog(lambda: nginx is None or nginx.alive()))
        done, pending = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        for task in (*pending, watchdog):
            task.cancel()
        if not stop.is_set():
            log.error("nginx_exited", mode=nginx_mode, code=next(iter(done)).result())
            code = 1
    except (NginxError, DockerError, OSError) as exc:
        log.error("startup_failed", error=str(exc))
        code = 1
    finally:
        log.info("shutting_down")
        systemd.notify("STOPPING=1")
        if nginx is not None:
            await nginx.stop()
        if activity is not None:
            asyncio.get_running_loop().remove_reader(activity)
            activity.close()
        await runner.cleanup()
        await supervisor.close()
        for each in runtimes.values():
            await each.close()
    return code
