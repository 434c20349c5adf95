"""NVML cannot run here (no GPU): its bindings are stood in for by a small fake. The real readings
were checked on an H200 (see the closing note of the operations issue): they match nvidia-smi."""

from types import SimpleNamespace

from waker.system import gpu as gpu_module
from waker.system.gpu import GpuMemory, MemoryReading, system_memory


class FakeNvml:
    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 2

    def __init__(self, unified: bool = False, v2: bool = True) -> None:
        self.unified, self.v2 = unified, v2

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA GB10" if self.unified else "NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        if self.unified:
            raise self.NVMLError("Not Supported")
        if version is not None and not self.v2:
            raise TypeError("unexpected keyword argument 'version'")
        reserved = 0 if version else 600 * 2**20
        return SimpleNamespace(used=4 * 2**30 + reserved, total=141 * 2**30)


def reader(nvml) -> GpuMemory:
    gpu = GpuMemory.__new__(GpuMemory)
    gpu._nvml = nvml
    return gpu


def test_discrete_gpu_reports_nvml_figures_without_driver_reserved_memory():
    assert reader(FakeNvml()).read() == [MemoryReading("0:NVIDIA H200", 4 * 2**30, 141 * 2**30, "nvml")]


def test_older_bindings_fall_back_to_the_first_memory_query():
    (reading,) = reader(FakeNvml(v2=False)).read()
    assert reading.used_bytes == 4 * 2**30 + 600 * 2**20


def test_unified_memory_falls_back_to_system_memory_and_says_so(monkeypatch):
    # The figures of one read of /proc/meminfo: two reads a moment apart differ on a busy machine.
    figures = system_memory()
    monkeypatch.setattr(gpu_module, "system_memory", lambda: figures)
    (reading,) = reader(FakeNvml(unified=True)).read()
    assert reading.device == "0:NVIDIA GB10" and reading.source == "system"
    assert (reading.used_bytes, reading.total_bytes) == figures


def test_no_nvml_means_no_gpu_figures_and_no_error():
    assert GpuMemory().read() == []  # nvidia-ml-py is not installed here
