"""This machine's memory, from /proc/meminfo (inside a container too: it shows the host's figures),
and the models' footprints the memory guard learned, kept in the state directory."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from waker.core.memory import HostMemory

MEMINFO = Path("/proc/meminfo")
FOOTPRINTS = "footprints.json"


def parse_meminfo(text: str) -> HostMemory:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            values[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return HostMemory(values["MemTotal"], values["MemAvailable"], values["MemFree"], values.get("SwapFree", 0))


def read_host_memory(meminfo: Path = MEMINFO) -> HostMemory:
    return parse_meminfo(meminfo.read_text())


class ThisMachine:
    """The `core.driver.Memory` of the machine the waker runs on."""

    def __init__(self, state_dir: Path, meminfo: Path = MEMINFO) -> None:
        self.path = state_dir / FOOTPRINTS
        self.meminfo = meminfo

    def read(self) -> HostMemory:
        return read_host_memory(self.meminfo)

    def learned(self) -> dict[str, int]:
        """What was remembered; nothing if there is no file yet, or one this code did not write."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and type(v) is int and v >= 0}

    def remember(self, footprints: Mapping[str, int]) -> None:
        """Written whole or not at all: a crash mid-write leaves the previous file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(dict(sorted(footprints.items())), indent=1) + "\n")
        os.replace(partial, self.path)
