"""This machine's memory, from /proc/meminfo (inside a container too: it shows the host's figures),
and what the waker keeps of it in the state directory: the models' footprints the memory guard
learned, and the other workloads' containers it paused."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from waker.core.memory import HostMemory, parse_meminfo

MEMINFO = Path("/proc/meminfo")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
FOOTPRINTS = "footprints.json"
PAUSED = "paused.json"


def read_host_memory(meminfo: Path = MEMINFO) -> HostMemory:
    return parse_meminfo(meminfo.read_text())


class ThisMachine:
    """The `core.driver.Memory` of the machine the waker runs on."""

    def __init__(self, state_dir: Path, meminfo: Path = MEMINFO, drop_caches: Path = DROP_CACHES) -> None:
        self.state_dir = state_dir
        self.path = state_dir / FOOTPRINTS
        self.meminfo = meminfo
        self.drop_caches = drop_caches

    def read(self) -> HostMemory:
        return read_host_memory(self.meminfo)

    def learned(self) -> dict[str, int]:
        """What was remembered; nothing if there is no file yet, or one this code did not write."""
        data = self._load(FOOTPRINTS)
        return {k: v for k, v in data.items() if type(v) is int and v >= 0}

    def remember(self, footprints: Mapping[str, int]) -> None:
        self._keep(FOOTPRINTS, dict(sorted(footprints.items())))

    def paused(self) -> dict[str, list[str]]:
        """The containers the waker paused (by id) and the models each was paused for."""
        data = self._load(PAUSED)
        return {k: v for k, v in data.items() if isinstance(v, list) and all(isinstance(m, str) for m in v)}

    def remember_paused(self, paused: Mapping[str, list[str]]) -> None:
        self._keep(PAUSED, dict(sorted(paused.items())))

    def _load(self, name: str) -> dict[str, object]:
        try:
            data = json.loads((self.state_dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _keep(self, name: str, data: dict[str, object]) -> None:
        """Written whole or not at all: a crash mid-write leaves the previous file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_dir / f"{name}.tmp"
        partial.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(partial, self.state_dir / name)

    def drop_page_cache(self) -> None:
        os.sync()
        self.drop_caches.write_text("3\n")  # page cache, dentries and inodes, as NVIDIA's Spark guide does


def may_drop_page_cache(drop_caches: Path = DROP_CACHES) -> str | None:
    """Why this process cannot have the kernel drop its caches, or None when it can."""
    if not os.access(drop_caches, os.W_OK):
        return f"{drop_caches} is not writable by this process (uid {os.geteuid()}): it needs root on the host"
    return None
