"""What every handler of the waker's one HTTP application reaches: the shell and the HTTP layer's own
parts, in one typed value (`request.app[CONTEXT]`), set once where the application is built (`http.app`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from waker.http.loading_stream import LoadingStreams
from waker.http.metrics import Counters
from waker.shell.loading_watch import LoadingWatch
from waker.shell.manual_control import ManualControl
from waker.shell.supervisor import Supervisor
from waker.system.gpu import GpuMemory


@dataclass(slots=True)
class Stats:
    """What reaches the waker's port (`GET /_stats`), so that tests can prove which requests never do."""

    requests: int = 0
    wakes: int = 0
    wake_response_body_bytes: int = 0
    loading_streams: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    supervisor: Supervisor
    control: ManualControl
    watch: LoadingWatch  # each starting model's loading stage, for streams and the admin API alike
    streams: LoadingStreams  # the cold streaming chat completions answered with loading feedback
    counters: Counters  # what the events counted, for /metrics
    gpu: GpuMemory
    stats: Stats = field(default_factory=Stats)
    starts: set[asyncio.Task[None]] = field(default_factory=set)  # admin `start?wait=false`, held until done


CONTEXT = web.AppKey("context", Context)
