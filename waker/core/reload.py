"""What a new config changes for the running waker, and whether it may change it live: a pure
function of the two configs and the models' states, checked before anything (nginx included) moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from waker.config.hosts import HostConfig
from waker.config.schema import Config
from waker.core.lifecycle import State
from waker.core.plan import Slot
from waker.core.scheduler import OCCUPYING
from waker.errors import AdminError

# Settings the waker reads once at its start: a reload that changes them is refused.
RESTART_ONLY = (
    "listen",
    "name",
    "docker_host",
    "runtime_dir",
    "state_dir",
    "network",
    "model_ip_base",
    "egress_network",
)


# What a model runs as: a reload that changes one of these makes another container (or gives the start
# longer), so the failures of the old one say nothing of the new: its back-off is cleared.
RUNS_AS = (
    "image",
    "pull",
    "command",
    "entrypoint",
    "port",
    "health",
    "env",
    "volumes",
    "gpus",
    "shm_size",
    "ulimits",
    "aliases",
    "host",
    "hosts",
    "ray",
    "sleep",
    "start_timeout",
)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    renewed: tuple[str, ...] = ()  # those of `changed` whose container changes (RUNS_AS)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "changed": list(self.changed), "removed": list(self.removed)}


def plan_reload(old: Config, new: Config, slots: Mapping[str, Slot]) -> ConfigChange:
    """The models `new` adds, changes and removes; raises AdminError naming every reason it cannot be
    applied live (a moved address under a running model, a busy model removed, a restart-only setting)."""
    problems = [
        f"[waker] {key} changed: restart the waker to apply it"
        for key in RESTART_ONLY
        if getattr(old.waker, key) != getattr(new.waker, key)
    ]

    # Each host's engine is connected and followed from the start; its budget, memory floor and probe
    # image may change live (they are read at each decision or sample).
    def engine_of(host: HostConfig) -> HostConfig:
        return replace(host, gpu_capacity=0.0, memory_floor=None, memory_probe_image="")

    if [engine_of(h) for h in old.hosts] != [engine_of(h) for h in new.hosts]:
        problems.append(
            "[[host]] entries changed (added, removed, renamed, or another engine, address or link): "
            "restart the waker to apply them; a host's gpu_capacity, memory_floor and memory_probe_image "
            "may change live"
        )
    for model in new.models:
        before = old.model(model.id)
        if before and slots[model.id].state in OCCUPYING and before.address != model.address:
            problems.append(
                f"model {model.id!r} runs at {before.address} and the new config moves it to "
                f"{model.address}: keep its position (add new models at the end; with host ports, "
                f"set host_port = {before.host_port}), or stop it first"
            )
    removed = [m.id for m in old.models if new.model(m.id) is None]
    for model_id in removed:
        slot = slots[model_id]
        if slot.in_flight or slot.state in (State.STARTING, State.FALLING_ASLEEP, State.WAKING):
            problems.append(
                f"model {model_id!r} is removed but is busy ({slot.state.value}, "
                f"{slot.in_flight} request(s) in flight); retry when it is idle"
            )
    if problems:
        raise AdminError(409, "the new config cannot be applied live: " + "; ".join(problems))
    added = tuple(m.id for m in new.models if old.model(m.id) is None)
    changed = tuple(m.id for m in new.models if (before := old.model(m.id)) is not None and before != m)
    renewed = tuple(
        model_id
        for model_id in changed
        if any(getattr(old.model(model_id), key) != getattr(new.model(model_id), key) for key in RUNS_AS)
    )
    return ConfigChange(added, changed, tuple(removed), renewed)
