"""Which host(s) a model starts on, as a pure function: `place(need, hosts) -> Placement | Unplaceable`.

No I/O and no clock: the shell passes what it knows of each host (up or not, what runs there) and
carries out the answer with that host's driver; each host's own budget, eviction and queue are then
`scheduler.decide` over that host's models. Rules (issue 17):
1. Only hosts whose engine answers are candidates; a model never goes where its `gpu_memory` could
   not fit even on an empty host.
2. A model that names its `host` goes there (for `hosts = 2`: its Ray head goes there).
3. Otherwise hosts where it fits now come first (nothing evicted), then the others (the host's
   scheduler makes room); within each, the host where it last ran (image and weights cached there),
   then the one with most room left, then the order of the `[[host]]` entries.
4. `hosts = 2` takes the best host for the head and the best other host for the worker, by the same
   order: the model is charged on both.
"""

from __future__ import annotations

from dataclasses import dataclass

EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Need:
    """What placement needs to know of a model (from its ModelConfig)."""

    gpu_memory: float = 0.0
    exclusive: bool = False
    host: str = ""  # "" = any
    hosts: int = 1


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as the shell sees it now."""

    name: str
    capacity: float
    up: bool = True
    used: float = 0.0  # the gpu_memory of the models starting, ready or stopping there
    exclusive_running: bool = False  # an exclusive model occupies it
    running: int = 0  # models occupying it
    last_ran_here: bool = False  # the model's last run was here


@dataclass(frozen=True, slots=True)
class Placement:
    hosts: tuple[str, ...]  # the head (where nginx routes) first; a second one for hosts = 2
    evicts: bool  # room must be made on at least one of them

    @property
    def head(self) -> str:
        return self.hosts[0]


@dataclass(frozen=True, slots=True)
class Unplaceable:
    reason: str  # a complete sentence for the client's error and the log


def _fits_now(need: Need, host: HostView) -> bool:
    if host.exclusive_running or (need.exclusive and host.running):
        return False
    return host.used + need.gpu_memory <= host.capacity + EPSILON


def place(need: Need, hosts: tuple[HostView, ...]) -> Placement | Unplaceable:
    order = {h.name: i for i, h in enumerate(hosts)}

    def rank(host: HostView) -> tuple[bool, bool, float, int]:
        return (not _fits_now(need, host), not host.last_ran_here, host.used - host.capacity, order[host.name])

    head: list[HostView] = []
    if need.host:
        named = next((h for h in hosts if h.name == need.host), None)
        if named is None:
            return Unplaceable(f"host '{need.host}' is not declared")
        if not named.up:
            return Unplaceable(f"host '{need.host}' is down (its Docker engine does not answer)")
        if need.gpu_memory > named.capacity + EPSILON:
            return Unplaceable(
                f"gpu_memory {need.gpu_memory:g} is more than host '{need.host}' can hold ({named.capacity:g})"
            )
        head = [named]
    able = [h for h in hosts if need.gpu_memory <= h.capacity + EPSILON and h.name != need.host]
    chosen = [*head, *sorted((h for h in able if h.up), key=rank)][: need.hosts]
    if len(chosen) < need.hosts:
        down = [h.name for h in able if not h.up]
        return Unplaceable(
            f"the model needs {need.hosts} host{'s' if need.hosts > 1 else ''} and {len(chosen)} "
            "can take it now" + (f"; down: {', '.join(down)}" if down else "")
        )
    return Placement(tuple(h.name for h in chosen), evicts=not all(_fits_now(need, h) for h in chosen))
