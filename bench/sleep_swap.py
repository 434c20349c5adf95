"""10. Sleep against stop: A -> B -> A where B's room is made by putting A to sleep, against the same
swap where A is stopped and started cold. Load and wake times are the fake's, set to the figures
measured and reported for the real engine (shared/real-vllm.md): a cold start of ~20 s (a tiny model
on two CPU cores; real models take minutes), a wake of ~1 s (0.3 to 3 s on GPUs)."""

from __future__ import annotations

import time

from bench.common import Row, Section, fake_model, median, start_stack
from bench.latency import _first_byte

COLD_LOAD = 20.0
WAKE = 1.0


def _swap_back_times(sleep: int, runs: int) -> tuple[list[float], int]:
    """Seconds to A's first byte after B displaced it, for each run; and A's container starts."""
    a = fake_model(
        "a",
        load_delay=COLD_LOAD,
        gpu_memory=0.6,
        sleep=sleep,
        extra=["--wake-delay", str(WAKE), "--sleep-memory", "0.1"],
        **({"sleep_memory": 0.1} if sleep else {}),
    )
    stack = start_stack(
        [a, fake_model("b", load_delay=0.5, gpu_memory=0.6)],
        scheduler={"min_uptime": "0s", "stop_timeout": "5s", "start_timeout": "120s"},
    )
    try:
        url = f"{stack.url}/v1/completions"
        _first_byte(url, {"model": "a", "prompt": "x"})  # A's first cold start, not measured
        times = []
        for _ in range(runs):
            _first_byte(url, {"model": "b", "prompt": "x"})  # A sleeps or stops for B's room
            began = time.monotonic()
            _first_byte(url, {"model": "a", "prompt": "x"})  # B is stopped, A wakes or starts cold
            times.append(time.monotonic() - began)
        starts = sum(1 for e in stack.docker_events("start") if e["Actor"]["Attributes"].get("io.waker.model") == "a")
        return times, starts
    finally:
        stack.stop()


def run(quick: bool) -> Section:
    runs = 2 if quick else 4
    section = Section(
        f"10. Sleep against stop: A -> B -> A, A's first byte on its return (cold start {COLD_LOAD:g} s, "
        f"wake {WAKE:g} s, as the fake plays them)"
    )
    slept, slept_starts = _swap_back_times(1, runs)
    stopped, stopped_starts = _swap_back_times(0, runs)
    ratio = median(stopped) / median(slept)
    section.rows.append(
        Row(
            "A back, asleep: p50",
            f"{median(slept):.2f} s",
            f"<= wake + 1 s = {WAKE + 1:g} s",
            median(slept) <= WAKE + 1,
        )
    )
    section.rows.append(Row("A back, stopped: p50", f"{median(stopped):.2f} s"))
    section.rows.append(Row("stop / sleep ratio (same run)", f"{ratio:.1f}x", ">= 5x", ratio >= 5))
    section.rows.append(
        Row(
            "A's container starts (sleep / stop)",
            f"{slept_starts} / {stopped_starts}",
            f"1 / {runs + 1}",
            slept_starts == 1 and stopped_starts == runs + 1,
        )
    )
    section.notes.append(
        "On a Spark a cold start of a real model is one to fifteen minutes, so the gap is wider "
        "there; the wake's cost is the engine's, the waker adds a gate reload before the sleep."
    )
    return section
