"""6-7. What the control plane costs: at idle (Docker calls, CPU, memory) and at scale (200 models)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import Row, Section, admin, fake_model, median, start_stack
from tests.e2e.docker_proxy import DockerCallCounter

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_cost(quick: bool) -> Section:
    seconds = 10 if quick else 60
    counter = DockerCallCounter(Path(tempfile.mkdtemp()) / "docker.sock").start()
    stack = start_stack([fake_model(f"m{i}", load_delay=0.1) for i in range(5)], docker_host=counter.url)
    section = Section(f"6. Idle cost: 5 models running and idle, measured over {seconds} s")
    try:
        for i in range(5):
            admin(stack, "POST", f"/admin/models/m{i}/start")
        time.sleep(2)
        pid, calls = stack.proc.pid, len(counter.calls())
        cpu = _cpu_seconds(pid)
        time.sleep(seconds)
        cpu_pct = (_cpu_seconds(pid) - cpu) / seconds * 100
        per_minute = (len(counter.calls()) - calls) * 60 / seconds
        rss = _rss_mb(pid)
        section.rows.append(Row("Docker API calls per minute", f"{per_minute:g}", "0", per_minute == 0))
        section.rows.append(Row("waker CPU", f"{cpu_pct:.2f} %", "<= 0.5 %", cpu_pct <= 0.5))
        section.rows.append(Row("waker RSS", f"{rss:.1f} MB", "<= 60 MB", rss <= 60))
    finally:
        stack.stop()
        counter.stop()
    return section


def _big_config(path: Path, count: int) -> None:
    lines = ["[waker]", f'runtime_dir = "{path.parent / "run"}"', "model_port_base = 30000"]
    for i in range(count):
        lines += [
            "[[model]]",
            f'id = "model-{i:03d}"',
            f'aliases = ["m{i}"]',
            'image = "waker-fake-vllm:test"',
            "gpu_memory = 0.1",
            "context_length = 32768",
        ]
    path.write_text("\n".join(lines) + "\n")


def _timed(*args: str) -> float:
    runs = []
    for _ in range(3):
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "waker.cli.main", *args], check=True, capture_output=True)
        runs.append(time.monotonic() - began)
    return median(runs)


def scale(quick: bool) -> Section:
    count = 200
    section = Section(f"7. Scale: a config of {count} models")
    path = Path(tempfile.mkdtemp()) / "models.toml"
    _big_config(path, count)
    check, render = _timed("check", "--config", str(path)), _timed("nginx-config", "--config", str(path))
    section.rows.append(Row("`waker check` (whole command)", f"{check * 1000:.0f} ms", "< 1 s", check < 1))
    section.rows.append(Row("`waker nginx-config` (whole command)", f"{render * 1000:.0f} ms", "< 1 s", render < 1))
    stack = start_stack(
        [fake_model(f"model-{i:03d}", aliases=[f"m{i}"], gpu_memory=0.1, context_length=32768) for i in range(count)]
    )
    try:
        timings = []
        for _ in range(50 if quick else 300):
            began = time.monotonic()
            with urllib.request.urlopen(f"{stack.url}/v1/models") as response:
                response.read()
            timings.append(time.monotonic() - began)
        p50 = median(timings) * 1000
        section.rows.append(Row("GET /v1/models through the gateway, p50", f"{p50:.1f} ms", "< 20 ms", p50 < 20))
        section.rows.append(Row("waker RSS with 200 models", f"{_rss_mb(stack.proc.pid):.1f} MB"))
    finally:
        stack.stop()
    return section
