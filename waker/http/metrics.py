"""Prometheus text exposition of the waker's state and history (GET /metrics).

Counters follow the event bus; gauges are read from the supervisor when scraped."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from waker.core.events import (
    MemoryGuardTripped,
    ModelAsleep,
    ModelAwake,
    ModelExited,
    ModelReady,
    ModelStateChanged,
    ModelStopped,
    RequestRefusal,
    WakeFailed,
    WakerEvent,
)
from waker.core.lifecycle import Event, State
from waker.core.memory import ContainerMemory
from waker.shell.supervisor import Supervisor
from waker.system.gpu import GpuMemory

START_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 5400)


class Counters:
    """Everything counted from the events the supervisor publishes."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = defaultdict(int)
        self.start_failures: dict[str, int] = defaultdict(int)
        self.stops: dict[tuple[str, str], int] = defaultdict(int)
        self.busy_refusals: dict[str, int] = defaultdict(int)
        self.start_buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(START_BUCKETS))
        self.start_sum: dict[str, float] = defaultdict(float)
        self.sleeps: dict[str, int] = defaultdict(int)
        self.wakes: dict[str, int] = defaultdict(int)
        self.wake_sum: dict[str, float] = defaultdict(float)
        self.wake_failures: dict[str, int] = defaultdict(int)
        self.guard_stops: dict[str, int] = defaultdict(int)

    def observe(self, event: WakerEvent) -> None:
        match event:
            case ModelReady(model=model, seconds=seconds):
                self.starts[model] += 1
                self.start_sum[model] += seconds
                for i, bound in enumerate(START_BUCKETS):
                    if seconds <= bound:
                        self.start_buckets[model][i] += 1
            case ModelStateChanged(model=model, trigger=Event.FAIL):
                self.start_failures[model] += 1
            case ModelStopped(model=model, reason=reason):
                self.stops[(model, reason.value)] += 1
            case ModelExited(model=model):
                self.stops[(model, "exited")] += 1
            case RequestRefusal(model=model, status=429):
                self.busy_refusals[model] += 1
            case ModelAsleep(model=model):
                self.sleeps[model] += 1
            case ModelAwake(model=model, seconds=seconds):
                self.wakes[model] += 1
                self.wake_sum[model] += seconds
            case WakeFailed(model=model):
                self.wake_failures[model] += 1
            case MemoryGuardTripped(model=model):
                self.guard_stops[model] += 1


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    """Exact: a byte count keeps every digit (`:g` would round 22346620928 to 2.23466e+10)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(
    supervisor: Supervisor, counters: Counters, gpu: GpuMemory, used: Mapping[str, ContainerMemory | None]
) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(**labels)} {_number(value)}" for labels, value in samples)

    slots = supervisor.current_slots()
    hosts = supervisor.host_status(slots)
    models = [m.id for m in supervisor.config.models]
    metric(
        "waker_model_state",
        "gauge",
        "1 for the state each model is in.",
        [({"model": m, "state": s.value}, float(slots[m].state is s)) for m in models for s in State],
    )
    metric(
        "waker_requests_in_flight",
        "gauge",
        "Requests in flight per model, streams included.",
        [({"model": m}, slots[m].in_flight) for m in models],
    )
    metric(
        "waker_requests_total",
        "counter",
        "Requests served per model (ended).",
        [({"model": m}, supervisor.records[m].activity.total) for m in models],
    )
    metric(
        "waker_queue_length",
        "gauge",
        "Requests held waiting for a model to start or for room.",
        [({}, len(supervisor.waiting))],
    )
    metric(
        "waker_model_starts_total",
        "counter",
        "Successful model starts.",
        [({"model": m}, counters.starts[m]) for m in models],
    )
    metric(
        "waker_model_start_failures_total",
        "counter",
        "Failed model starts.",
        [({"model": m}, counters.start_failures[m]) for m in models],
    )
    out.append("# HELP waker_model_start_seconds Time from start to the first healthy answer.")
    out.append("# TYPE waker_model_start_seconds histogram")
    for m in models:
        for bound, count in zip(START_BUCKETS, counters.start_buckets[m], strict=True):
            out.append(f"waker_model_start_seconds_bucket{_labels(model=m, le=str(bound))} {count}")
        out.append(f"waker_model_start_seconds_bucket{_labels(model=m, le='+Inf')} {counters.starts[m]}")
        out.append(f"waker_model_start_seconds_sum{_labels(model=m)} {counters.start_sum[m]:g}")
        out.append(f"waker_model_start_seconds_count{_labels(model=m)} {counters.starts[m]}")
    metric(
        "waker_model_stops_total",
        "counter",
        "Model stops by reason (idle, evicted, manual, exited, ...).",
        [({"model": m, "reason": r}, n) for (m, r), n in sorted(counters.stops.items())],
    )
    metric(
        "waker_model_sleeps_total",
        "counter",
        "Times a model was put to sleep (sleep mode).",
        [({"model": m}, counters.sleeps[m]) for m in models],
    )
    metric(
        "waker_model_wakes_total",
        "counter",
        "Successful wakes of a sleeping model.",
        [({"model": m}, counters.wakes[m]) for m in models],
    )
    metric(
        "waker_model_wake_seconds_sum",
        "counter",
        "Time spent in successful wakes (with the check).",
        [({"model": m}, counters.wake_sum[m]) for m in models],
    )
    metric(
        "waker_model_wake_failures_total",
        "counter",
        "Wakes that failed or hung (the model was started cold).",
        [({"model": m}, counters.wake_failures[m]) for m in models],
    )
    now = supervisor.now()
    metric(
        "waker_model_asleep_seconds",
        "gauge",
        "How long each model has been asleep (0 when not asleep).",
        [({"model": m}, round(now - slots[m].since, 3) if slots[m].state is State.SLEEPING else 0.0) for m in models],
    )
    metric(
        "waker_busy_refusals_total",
        "counter",
        "Requests refused with 429 because the GPU was busy.",
        [({"model": m}, counters.busy_refusals[m]) for m in models],
    )
    metric(
        "waker_docker_connected",
        "gauge",
        "1 while the waker follows the Docker events stream (of a host).",
        [({}, float(supervisor.docker_error is None))]
        if not supervisor.hosts.several
        else [({"host": h.name}, float(h.connected)) for h in hosts],
    )
    metric(
        "waker_host_gpu_capacity",
        "gauge",
        "Each host's gpu_capacity (the local one without [[host]]).",
        [({"host": h.name}, h.gpu_capacity) for h in hosts],
    )
    metric(
        "waker_host_gpu_used",
        "gauge",
        "What the models occupying each host hold of its gpu_capacity.",
        [({"host": h.name}, h.gpu_used) for h in hosts],
    )
    measured = [(h.name, h.memory) for h in hosts if h.memory is not None]
    if measured:
        for name, help_text, field in (
            ("waker_host_memory_total_bytes", "Each measured host's memory (MemTotal).", "total_bytes"),
            (
                "waker_host_memory_available_bytes",
                "Each measured host's available memory (MemAvailable).",
                "available_bytes",
            ),
            (
                "waker_host_memory_floor_bytes",
                "The memory the guard keeps available ([scheduler] memory_floor).",
                "floor_bytes",
            ),
        ):
            metric(name, "gauge", help_text, [({"host": host}, getattr(memory, field)) for host, memory in measured])
    footprints = {m.id: supervisor.footprint(m) for m in supervisor.config.models}
    for name, help_text, values in (
        (
            "waker_model_memory_bytes",
            "Each running model's container's memory now, less its page cache (Docker's stats).",
            {m: held.current for m, held in used.items() if held is not None},
        ),
        (
            "waker_model_memory_declared_bytes",
            "The host memory each model declares it takes (its `memory`).",
            {m: footprint["declared_bytes"] for m, footprint in footprints.items()},
        ),
        (
            "waker_model_memory_learned_bytes",
            "The host memory each model took at its last start, as the memory guard learned it.",
            {m: footprint["learned_bytes"] for m, footprint in footprints.items()},
        ),
    ):
        samples = [({"model": m}, float(value)) for m, value in values.items() if isinstance(value, int)]
        if samples:
            metric(name, "gauge", help_text, samples)
    metric(
        "waker_memory_guard_stops_total",
        "counter",
        "Models the memory guard stopped because available memory fell below the floor.",
        [({"model": model}, n) for model, n in sorted(counters.guard_stops.items())],
    )
    readings = gpu.read()
    if readings:
        metric(
            "waker_gpu_memory_used_bytes",
            "gauge",
            "GPU memory in use; source=system where the GPU shares system memory and NVML has no figure.",
            [({"device": r.device, "source": r.source}, r.used_bytes) for r in readings],
        )
        metric(
            "waker_gpu_memory_total_bytes",
            "gauge",
            "GPU memory in all.",
            [({"device": r.device, "source": r.source}, r.total_bytes) for r in readings],
        )
    return "\n".join(out) + "\n"
