"""The memory guard's rules, pure. On a unified-memory machine (DGX Spark, GB10) the GPU, the OS, the
page cache and every container share one pool, and when it runs out the box hangs or needs a hard reset
instead of failing cleanly; the host's `MemAvailable` is the GPU's free memory. So the waker keeps a
floor of it: below the floor, it stops one model before the box wedges (`victim`), and then waits for
that memory to come back before it would stop another."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from waker.core.lifecycle import State
from waker.core.plan import Slot

RELEASING = (State.STOPPING, State.FALLING_ASLEEP)  # giving memory back already
STOPPABLE = (State.STARTING, State.WAKING, State.READY, State.SLEEPING)


@dataclass(frozen=True, slots=True)
class HostMemory:
    """One reading of a host's memory, in bytes, as /proc/meminfo gives it."""

    total: int
    available: int  # what can be had without swapping: free memory plus reclaimable caches
    free: int  # not used at all: what is left once reclaimable caches are not counted
    swap_free: int


@dataclass(frozen=True, slots=True)
class ContainerMemory:
    """One container's memory, in bytes, as Docker's stats give it."""

    current: int  # in use less the page cache charged to it (which the kernel can reclaim)
    peak: int | None  # its cgroup's high-water mark, page cache included (cgroup v1); None on cgroup v2


def parse_meminfo(text: str) -> HostMemory:
    """/proc/meminfo's figures (in kB there) in bytes; KeyError or ValueError when it is not as Linux
    writes it."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            values[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return HostMemory(values["MemTotal"], values["MemAvailable"], values["MemFree"], values.get("SwapFree", 0))


PROBE_END = "."  # the line that ends each of the memory probe's readings


def last_probe_reading(lines: Iterable[str]) -> tuple[float, HostMemory] | None:
    """The last whole reading in a memory probe's output (`docker.memory_probe`): each one is an
    `uptime <seconds>` line, /proc/meminfo's lines and a PROBE_END line. The host's uptime, which
    only grows, tells a new reading from one read before. None when no whole reading is there."""
    reading: list[str] | None = None
    last = None
    for line in (raw.strip() for raw in lines):
        if line.startswith("uptime "):
            reading = [line]
        elif reading is not None and line == PROBE_END:
            # One cut short by the log's rotation, or not meminfo, leaves the one before.
            with contextlib.suppress(KeyError, ValueError, IndexError):
                last = float(reading[0].split()[1]), parse_meminfo("\n".join(reading[1:]))
            reading = None
        elif reading is not None:
            reading.append(line)
    return last


def container_memory(stats: dict[str, Any]) -> ContainerMemory | None:
    """From Docker's `memory_stats` (cgroup v1 or v2); None for a container that is not running."""
    usage = stats.get("usage")
    if not isinstance(usage, int):
        return None
    detail = stats.get("stats") or {}
    # The page cache charged to it: the libraries and weights it read, which the kernel reclaims
    # under pressure and MemAvailable counts as available (v1: total_cache, v2: file).
    cache = detail.get("total_cache", detail.get("file", 0))
    current = usage - cache if isinstance(cache, int) and 0 <= cache <= usage else usage
    peak = stats.get("max_usage")
    return ContainerMemory(current, peak if isinstance(peak, int) and peak > 0 else None)


@dataclass(frozen=True, slots=True)
class Trip:
    """The floor crossed: the model the guard stops, and why, in words for its waiters and the log."""

    model: str
    message: str


def victim(
    slots: Iterable[Slot], memory: HostMemory, floor: int, releasing: frozenset[str], where: str = "the host"
) -> Trip | None:
    """The model to stop because available memory fell below `floor`, or None (above the floor, no
    floor, nothing to stop, or memory already on its way back: a model stopping or falling asleep, or
    one the guard stopped, in `releasing`); `where` names the host in its message. The order: the model
    starting or waking (it is what grows), then idle models, then busy ones, the most recently started
    first in each; a pinned model last."""
    if floor <= 0 or memory.available >= floor:
        return None
    candidates = list(slots)
    if releasing or any(s.state in RELEASING for s in candidates):
        return None
    stoppable = [s for s in candidates if s.state in STOPPABLE]
    if not stoppable:
        return None

    def cost(slot: Slot) -> tuple[bool, bool, bool, float]:
        coming_up = slot.state in (State.STARTING, State.WAKING)
        busy = slot.in_flight > 0
        began = slot.starting_since if coming_up else max(slot.ready_since, slot.starting_since)
        return (slot.pinned, not coming_up, busy, -began)

    chosen = min(stoppable, key=cost)
    doing = {
        State.STARTING: "while it started",
        State.WAKING: "while it woke",
        State.SLEEPING: "while asleep",
    }.get(chosen.state, f"while serving ({chosen.in_flight} request(s) in flight)")
    message = (
        f"model {chosen.id!r} was stopped by the memory guard {doing}: {where} had "
        f"{gib(memory.available)} available of {gib(memory.total)}, below the floor of {gib(floor)} "
        "(memory_floor); the box shares this memory with the GPU and would hang if it ran out. "
        "Free memory (stop other models or programs) or give the model less (--gpu-memory-utilization, "
        "--max-model-len), then ask again"
    )
    return Trip(chosen.id, message)


def page_cache_in_the_way(memory: HostMemory, need: int, floor: int) -> bool:
    """Whether a start needing `need` bytes free is short of free memory that reclaimable page cache
    would cover. On unified memory vLLM's start check reads free memory as the GPU's, which leaves
    out reclaimable cache (vLLM #48140): right after weights were read, a start can fail that check
    although the memory is there."""
    return memory.free < need + floor <= memory.available


def exceeds_share(learned: int | None, declared: int, gpu_memory: float, total: int | None) -> bool:
    """Whether a model took more than it declares (its `memory`) or, declaring none, more than its share
    of the GPU would be of the host's memory (`total`; unknown: no share to compare with)."""
    share = declared or (round(gpu_memory * total) if total and gpu_memory else 0)
    return learned is not None and share > 0 and learned > share


def gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"
