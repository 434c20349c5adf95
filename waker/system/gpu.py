"""GPU memory readings for the metrics, through NVML when the optional `nvidia-ml-py` bindings and a
driver are there. On a unified-memory machine (DGX Spark, GB10) NVML has no framebuffer figures:
the reading falls back to system memory in use, and says so in its `source`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from waker.system.memory import MEMINFO, read_host_memory

log = structlog.get_logger("waker.system.gpu")


@dataclass(frozen=True, slots=True)
class MemoryReading:
    device: str
    used_bytes: int
    total_bytes: int
    source: str  # "nvml", or "system" where the device shares system memory


def system_memory(meminfo: Path = MEMINFO) -> tuple[int, int]:
    """(used, total) bytes of system memory, as `free` counts them (total minus available)."""
    memory = read_host_memory(meminfo)
    return memory.total - memory.available, memory.total


class GpuMemory:
    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml  # from the optional nvidia-ml-py package

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no bindings, no driver, no GPU: no GPU figures, not an error
            log.info("nvml_unavailable", reason=type(exc).__name__)

    def read(self) -> list[MemoryReading]:
        if self._nvml is None:
            return []
        nvml, readings = self._nvml, []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            device = f"{index}:{name}"
            try:
                info = _memory_info(nvml, handle)
                readings.append(MemoryReading(device, int(info.used), int(info.total), "nvml"))
            except nvml.NVMLError:  # unified memory: NVML reports no framebuffer
                used, total = system_memory()
                readings.append(MemoryReading(device, used, total, "system"))
        return readings


def _memory_info(nvml, handle):
    """Version 2 of the memory query where the bindings have it: its `used` leaves out the memory the
    driver reserves for itself, as nvidia-smi does (version 1 counts it, about 600 MiB on an H200)."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (nvml.NVMLError, TypeError):
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)
