"""This machine's memory, from /proc/meminfo (inside a container too: it shows the host's figures)."""

from __future__ import annotations

from pathlib import Path

from waker.core.memory import HostMemory

MEMINFO = Path("/proc/meminfo")


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
