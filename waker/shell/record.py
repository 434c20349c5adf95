"""Everything the shell keeps about one model while it runs the waker: one record, so that adding or
forgetting a model cannot leave a piece of it behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from waker.config.schema import ModelConfig
from waker.core.plan import Slot
from waker.nginx.activity import ModelActivity


def with_limits(slot: Slot, model: ModelConfig, can_sleep: bool = True) -> Slot:
    """`slot` with what the model's config says of it (its share of the GPU, where it runs, its timeouts,
    its sleep level). Without `can_sleep` (nothing could gate nginx), a model configured to sleep is
    stopped instead."""
    return replace(
        slot,
        gpu_memory=model.gpu_memory,
        memory=model.memory,
        exclusive=model.exclusive,
        keep_warm=model.keep_warm,
        idle_timeout=model.idle_timeout,
        min_uptime=model.min_uptime,
        sleep_level=int(model.sleep.level) if can_sleep else 0,
        sleep_memory=model.sleep.memory,
        sleep_timeout=model.sleep.timeout,
        host=model.host,
        host_count=model.hosts,
    )


@dataclass(slots=True)
class ModelRecord:
    model: ModelConfig  # its config in force
    slot: Slot  # what the scheduler knows; replaced, never mutated
    activity: ModelActivity = field(default_factory=ModelActivity)  # requests in flight, from nginx
    died: asyncio.Event = field(default_factory=asyncio.Event)  # set when Docker reports its death
    container: str | None = None  # the id of the container serving it, once known

    @classmethod
    def new(cls, model: ModelConfig, now: float = 0.0, can_sleep: bool = True) -> ModelRecord:
        return cls(model, with_limits(Slot(model.id, since=now), model, can_sleep))
