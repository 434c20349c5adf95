"""8-9. The real engine (vLLM, CPU build, tiny model): what the gateway adds to the engine's own start.

The engine's own start is measured directly, in the same run and on the same container: from Docker's
`start` event to its first HTTP answer (vLLM listens only once ready), seen by a prober independent
of the waker. The gateway's figure is the client's: request sent to first byte. Their ratio, run by
run, is the gateway's cost; a restarted container and a first one differ by seconds (caches), so
comparing two containers would measure that instead.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request

from bench.common import Row, Section, admin, median, start_stack
from tests.e2e.stack import REAL_SCHEDULER, Stack, real_model

PROBE_INTERVAL = 0.01


class PortProbe:
    """Notes when a model first answers HTTP on its published port, from a thread of its own. A TCP
    connect would not do: Docker's proxy accepts on the published port before the engine listens."""

    def __init__(self, port: int) -> None:
        self.port, self.opened_at = port, 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as response:
                    if response.status == 200:
                        self.opened_at = time.time()
                        return
            except (OSError, http.client.HTTPException):
                time.sleep(PROBE_INTERVAL)

    def wait(self) -> float:
        self._thread.join()
        if not self.opened_at:
            raise RuntimeError(f"the model on port {self.port} never answered")
        return self.opened_at


def _first_byte(url: str, model: str) -> tuple[float, float]:
    """When the request was sent and when its first byte came back (wall clock, as Docker's events)."""
    body = json.dumps({"model": model, "prompt": "x", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    sent = time.time()
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read(1)
        first = time.time()
        response.read()
    return sent, first


def _event_time(stack: Stack, event: str, model: str, after: float) -> float:
    times = [
        e["timeNano"] / 1e9
        for e in stack.docker_events(event)
        if e["Actor"]["Attributes"]["io.waker.model"] == model and e["timeNano"] / 1e9 >= after
    ]
    return min(times)


def _port(stack: Stack, model: str) -> int:
    return int(stack.model_url(model).rsplit(":", 1)[1])


def _against_the_engine(
    total: list[float], engine: list[float], engine_label: str, total_label: str, max_overhead: float
) -> list[Row]:
    """The rows comparing what the client waited with what the engine itself took, run by run."""
    overhead = median([t - e for t, e in zip(total, engine, strict=True)])
    ratio = median([t / e for t, e in zip(total, engine, strict=True)])
    return [
        Row(f"{engine_label}, p50", f"{median(engine):.2f} s"),
        Row(f"{total_label}, p50", f"{median(total):.2f} s"),
        Row(
            "gateway overhead (the difference), p50",
            f"{overhead * 1000:.0f} ms",
            f"<= {max_overhead * 1000:.0f} ms",
            overhead <= max_overhead,
        ),
        Row("ratio gateway / engine, p50", f"{ratio:.3f}", "<= 1.02", ratio <= 1.02),
    ]


def cold_start(quick: bool) -> Section:
    runs = 1 if quick else 3
    stack = start_stack([real_model("real")], scheduler={**REAL_SCHEDULER})
    section = Section(
        "8. Real vLLM cold start: request to first byte through the gateway, against the "
        "engine's own start (container start to its first HTTP answer) in the same start"
    )
    try:
        admin(stack, "POST", "/admin/prepare")  # the container exists, as after `waker prepare`
        engine, total = [], []
        for _ in range(runs):
            probe = PortProbe(_port(stack, "real"))
            sent, first = _first_byte(stack.url, "real")
            engine.append(probe.wait() - _event_time(stack, "start", "real", sent))
            total.append(first - sent)
            admin(stack, "POST", "/admin/models/real/stop")
        section.rows += _against_the_engine(
            total,
            engine,
            "engine's own start (Docker start event to its first /health 200)",
            "through the gateway: request to first byte",
            0.3,
        )
        section.notes.append(
            f"{runs} start(s); the overhead holds the container start call, the waker's health "
            "polling (every 20 ms), nginx's replay of the request and one generated token"
        )
    finally:
        stack.stop()
    return section


def swap(quick: bool) -> Section:
    runs = 1 if quick else 3
    stack = start_stack(
        [real_model("a", gpu_memory=0.6), real_model("b", gpu_memory=0.6)], scheduler={**REAL_SCHEDULER}
    )
    section = Section("9. Real vLLM swap: A ready, a request for B, against A's exit plus B's own start")
    try:
        admin(stack, "POST", "/admin/prepare")
        floor, total = [], []
        for _ in range(runs):
            admin(stack, "POST", "/admin/models/a/start")
            probe = PortProbe(_port(stack, "b"))
            sent, first = _first_byte(stack.url, "b")  # evicts A, then starts B
            a_exit = _event_time(stack, "die", "a", sent) - _event_time(stack, "kill", "a", sent)  # SIGTERM to exit
            b_start = probe.wait() - _event_time(stack, "start", "b", sent)
            floor.append(a_exit + b_start)
            total.append(first - sent)
            admin(stack, "POST", "/admin/models/b/stop")
        section.rows += _against_the_engine(
            total, floor, "A's exit + B's own start", "swap through the gateway: request for B to first byte", 0.4
        )
    finally:
        stack.stop()
    return section
