"""Other workloads' containers as the waker finds them (`[[external]]`), and the pure rules of their
policies: which ones block a start, which ones a start pauses."""

from __future__ import annotations

from dataclasses import dataclass

from waker.config.externals import ExternalConfig, ExternalPolicy


@dataclass(frozen=True, slots=True)
class ExternalContainer:
    id: str
    name: str
    external: ExternalConfig  # the [[external]] entry it belongs to
    paused: bool


def blocking(found: list[ExternalContainer]) -> list[ExternalContainer]:
    """The running containers of `block` workloads: while one runs, nothing starts or wakes."""
    return [c for c in found if c.external.policy is ExternalPolicy.BLOCK and not c.paused]


def to_pause(found: list[ExternalContainer]) -> list[ExternalContainer]:
    """The running containers of `pause` workloads: paused to make room for a start or a wake."""
    return [c for c in found if c.external.policy is ExternalPolicy.PAUSE and not c.paused]


def busy_message(model: str, blockers: list[ExternalContainer]) -> str:
    names = ", ".join(f"{c.name!r} ([[external]] '{c.external.name}')" for c in blockers)
    return (
        f"model {model!r} cannot start while {names} runs: its policy is 'block' (it shares the GPU's "
        "memory). Stop it, or set its policy to 'pause' or 'observe', then ask again"
    )
