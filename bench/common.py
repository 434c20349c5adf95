"""What the benchmarks share: a running stack, the load tools, and the shape of a result."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.stack import Stack, docker, fake_model

__all__ = [
    "Stack",
    "docker",
    "fake_model",
    "Row",
    "Section",
    "start_stack",
    "admin",
    "container_ip",
    "wrk",
    "median",
    "percentile",
]


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def start_stack(models: list[dict], **kwargs) -> Stack:
    tmp = Path(tempfile.mkdtemp(prefix="waker-bench-"))
    return Stack(models=models, tmp=tmp, **kwargs).start()


def admin(stack: Stack, method: str, path: str) -> dict:
    request = urllib.request.Request(stack.waker_url + path, method=method)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def container_ip(stack: Stack, model: str) -> str:
    ids = docker(
        "ps", "-q", "--filter", f"label=io.waker.stack={stack.name}", "--filter", f"label=io.waker.model={model}"
    ).split()
    return docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ids[0]).strip()


_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, body: dict, seconds: float, connections: int = 16, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """Requests/s and p50/p99 latency (ms) of POSTing `body` to `url` with wrk."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    extra = "".join(f"wrk.headers['{k}'] = '{v}'\n" for k, v in (headers or {}).items())
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = [[{json.dumps(body)}]]\n"
        "wrk.headers['Content-Type'] = 'application/json'\n" + extra
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    script.unlink()
    latency = {p: float(v) * _UNITS[u] for p, v, u in _WRK_LATENCY.findall(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses from {url}")
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"]}


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)
