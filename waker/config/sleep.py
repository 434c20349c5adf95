"""Sleep mode in the config: per model `sleep`, `sleep_memory`, `sleep_timeout` and `wake_timeout`,
read and checked at the boundary like every other field (docs/configuration.md, "Sleep mode").

vLLM's sleep mode keeps the engine's process (compiled kernels, CUDA graphs) and gives back GPU
memory: level 1 drops the KV cache and moves the weights to host memory, level 2 drops both and
reloads the weights on wake. A sleeping model wakes in seconds instead of a cold start of minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from waker.config import fields
from waker.config.units import parse_duration


class SleepLevel(IntEnum):
    NEVER = 0  # an idle model is stopped, as without sleep mode
    OFFLOAD = 1  # vLLM level 1: KV cache dropped, weights to host memory (on a Spark: the same memory)
    DISCARD = 2  # vLLM level 2: KV cache and weights dropped; the weights are reloaded on wake


@dataclass(frozen=True, slots=True)
class SleepConfig:
    level: SleepLevel = SleepLevel.NEVER
    memory: float = 0.0  # the fraction of the GPU the model still holds while asleep
    timeout: float = 0.0  # asleep this long, it is stopped; 0: asleep until its room is needed
    wake_timeout: float = 120.0  # a wake (and its check) longer than this falls back to a cold start

    @property
    def enabled(self) -> bool:
        return self.level is not SleepLevel.NEVER


# Keys of a model entry that only mean something with sleep = 1 or 2.
SLEEP_ONLY_KEYS = ("sleep_memory", "sleep_timeout", "wake_timeout")
MODEL_KEYS = frozenset({"sleep", *SLEEP_ONLY_KEYS})


def sleep_level(value: Any) -> SleepLevel:
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise ValueError(
            f"expected 0 (never sleep: stop when idle), 1 (free the KV cache, weights to host "
            f"memory) or 2 (free the KV cache and the weights), got {value!r}"
        )
    return SleepLevel(value)


def share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a fraction of the GPU in [0, 1], such as 0.05, got {value!r}")
    return float(value)


def parse_sleep(
    model: fields.Table,
    entry: dict[str, Any],
    gpu_memory: float,
    command: tuple[str, ...],
    sleep_timeout: float,
    wake_timeout: float,
) -> SleepConfig:
    """The model's sleep settings; `entry` is the model's own table (without [defaults]), to tell a
    setting written for this model from one inherited. Problems go to the table's list."""
    level = model.get("sleep", sleep_level, SleepLevel.NEVER)
    # Without a figure, the model is assumed to keep all it holds: the budget stays safe, and sleeping
    # still spares the cold start. What an engine really keeps depends on the GPU (on a Spark, level 1
    # keeps the weights in the same unified memory), so only the operator can say.
    memory = model.get("sleep_memory", share, gpu_memory)
    result = SleepConfig(
        level=level,
        memory=memory,
        timeout=model.get("sleep_timeout", parse_duration, sleep_timeout),
        wake_timeout=model.get("wake_timeout", fields.positive_duration, wake_timeout),
    )
    if not result.enabled:
        for key in SLEEP_ONLY_KEYS:
            if key in entry:
                model.problems.append(
                    f"{model.where}: field '{key}' has no effect with sleep = 0: set sleep = 1 "
                    f"or 2 to let the model sleep, or remove '{key}'"
                )
        return result
    # The check after a wake is a completion naming the model, which vLLM serves under the names of
    # this flag (the container spec adds the model's id and aliases to them).
    if fields.served_names_index(command) is None:
        model.problems.append(
            f"{model.where}: sleep = {int(level)} needs vLLM's {fields.SERVED_NAME_FLAG} "
            "in 'command' "
            "(sleep mode is vLLM's; the waker checks a woken engine with a completion "
            "naming the model): add it, or set sleep = 0"
        )
    if memory > gpu_memory:
        model.problems.append(
            f"{model.where}: field 'sleep_memory': {memory:g} is more than the model's gpu_memory ({gpu_memory:g}); "
            f"a model cannot hold more asleep than awake: set it to what the engine keeps while asleep "
            f"(0 to {gpu_memory:g})"
        )
    return result
