"""10. Loading feedback: the hot path of a ready model with feedback on is that of one with it off (one
stack, both models, interleaved rounds), and how soon a cold streaming request sees its first
progress event, against when it would see the model's first byte."""

from __future__ import annotations

import json
import time
import urllib.request

from bench.common import Row, Section, admin, fake_model, median, start_stack, wrk

BODY = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1}
STREAM = {**BODY, "stream": True}
LOAD_DELAY = 3.0


def _first_event(url: str, body: dict) -> tuple[float, float]:
    """Seconds to the first SSE event, and to the model's first chunk (its id is not the waker's)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    began = time.monotonic()
    first = model_first = None
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if not line.startswith(b"data: "):
                continue
            now = time.monotonic() - began
            first = now if first is None else first
            if model_first is None and b'"id":"chatcmpl-waker-' not in line:
                model_first = now
    assert first is not None and model_first is not None
    return first, model_first


def run(quick: bool) -> Section:
    seconds, rounds, starts = (1, 2, 2) if quick else (2, 14, 5)
    fast = ["--tokens-per-second", "1000000"]
    stack = start_stack(
        [
            fake_model("on", load_delay=0.1, extra=fast, loading_feedback="reasoning"),
            fake_model("off", load_delay=0.1, extra=fast, loading_feedback="off"),
            fake_model("cold", load_delay=LOAD_DELAY),
        ],
        scheduler={"min_uptime": "0s"},
    )
    section = Section("10. Loading feedback: hot path with it on vs off; first progress event of a cold stream")
    try:
        admin(stack, "POST", "/admin/models/on/start")
        admin(stack, "POST", "/admin/models/off/start")
        targets = {
            f"{model}, {routing}, {kind}": (url, body)
            for model in ("on", "off")
            for routing, url, extra in (
                ("path", f"{stack.url}/v1/{model}/chat/completions", {}),
                ("body", f"{stack.url}/v1/chat/completions", {"model": model}),
            )
            for kind, body in (("plain", {**BODY, **extra}), ("stream", {**STREAM, **extra}))
        }
        for url, body in targets.values():  # warm-up
            wrk(url, body, 1)
        ratios: dict[str, list[float]] = {name[4:]: [] for name in targets if name.startswith("on, ")}
        for round_ in range(rounds):  # each on/off pair back to back, in alternating order: drift cancels
            for kind, pair in ratios.items():
                order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                rps = {model: wrk(*targets[f"{model}, {kind}"], seconds)["rps"] for model in order}
                pair.append(rps["on"] / rps["off"])
        for kind, pair in ratios.items():
            section.rows.append(
                Row(
                    f"throughput feedback on / off ({kind}), median of {rounds} pairs",
                    f"{median(pair):.2f} ({min(pair):.2f} to {max(pair):.2f})",
                )
            )
        every = [ratio for pair in ratios.values() for ratio in pair]
        section.rows.append(
            Row(
                f"throughput feedback on / off, all {len(every)} pairs",
                f"{median(every):.2f}",
                ">= 0.95",
                median(every) >= 0.95,
            )
        )
        admin(stack, "POST", "/admin/prepare")  # the container exists, as after `waker prepare`
        firsts, answers = [], []
        for _ in range(starts):
            # force: the last stream's end mark may still be on its way (nginx logs after the last byte).
            admin(stack, "POST", "/admin/models/cold/stop?force=true")
            first, answer = _first_event(f"{stack.url}/v1/chat/completions", {**STREAM, "model": "cold"})
            firsts.append(first)
            answers.append(answer)
        p50 = median(firsts) * 1000
        section.rows.append(
            Row(f"first progress event of a cold stream, p50 of {starts}", f"{p50:.0f} ms", "<= 1000 ms", p50 <= 1000)
        )
        section.rows.append(
            Row(
                f"the model's first chunk in the same streams, p50 ({LOAD_DELAY:g} s load)",
                f"{median(answers) * 1000:.0f} ms",
            )
        )
        section.notes.append(
            "The first event waits 50 ms for the scheduler's decision, so that it says what "
            "happens to the request (waker/http/loading_stream.py)."
        )
    finally:
        stack.stop()
    return section
