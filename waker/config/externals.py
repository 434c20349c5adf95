"""Other workloads on the box (`[[external]]`): containers the waker does not manage but must reckon
with, because on a unified-memory machine they take from the same memory as the GPU (ComfyUI and
the like). Each names its containers by a label or by a container name, and says what the waker does
while one of them runs: `observe` (its memory is shown), `block` (starts and wakes are refused, as
the original stack's external-workload policy did) or `pause` (`docker pause` to make room for a
model, unpaused once that model stops). Unlisted, unmanaged containers are never touched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from waker.config import fields

KEYS = {"name", "label", "container", "policy"}


class ExternalPolicy(StrEnum):
    OBSERVE = "observe"
    BLOCK = "block"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class ExternalConfig:
    name: str
    label: str  # "key=value" its containers carry, or ""
    container: str  # its container's name, or ""
    policy: ExternalPolicy

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        """Whether a container (its name, its labels) is one of this workload's."""
        if self.container:
            return name.lstrip("/") == self.container
        key, _, value = self.label.partition("=")
        return labels.get(key) == value

    @property
    def selector(self) -> str:
        return f"container {self.container!r}" if self.container else f"label {self.label!r}"


def label(value: Any) -> str:
    text = fields.string(value)
    if not re.fullmatch(r"[^=\s]+=[^\s]*", text):
        raise ValueError(f'expected a Docker label as "key=value", such as "com.example.app=comfyui", got {text!r}')
    return text


def container_name(value: Any) -> str:
    text = fields.string(value)
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", text):
        raise ValueError(f"expected a Docker container name (letters, digits, _ . -), got {text!r}")
    return text


def parse_externals(raw: Any, path: Path, problems: list[str]) -> tuple[ExternalConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        problems.append(f"{path}: 'external' must be an array of tables, written [[external]]")
        return ()
    found: list[ExternalConfig] = []
    for index, entry in enumerate(raw):
        where = f"{path}: [[external]] #{index + 1}"
        table = fields.Table(entry, None, where, problems)
        name = table.get("name", fields.model_id, required=True) or ""
        where = f"{path}: [[external]] '{name}'" if name else where
        table.where = where
        by_label = table.get("label", label) or ""
        by_name = table.get("container", container_name) or ""
        policy = table.get("policy", fields.member(ExternalPolicy), ExternalPolicy.OBSERVE)
        table.reject_unknown(KEYS)
        if bool(by_label) == bool(by_name):
            problems.append(f"{where}: give 'label' (\"key=value\") or 'container' (a name), one of the two")
        if name and any(e.name == name for e in found):
            problems.append(f"{where}: another [[external]] has this name; names must be unique")
        found.append(ExternalConfig(name, by_label, by_name, policy))
    return tuple(found)
