"""Host and device memory around a run, without busy-waiting.

Host: the kernel's exact peak resident set (``VmHWM``), reset before the model loads by writing
``5`` to ``/proc/self/clear_refs``; where that is not allowed, the process-lifetime peak
(``ru_maxrss``) is used and the record says so. Device: NVML's used memory of the GPUs, sampled by
a background thread that sleeps between samples; the figure is the peak minus the reading taken
before the model loaded, so other tenants' steady use does not count.
"""

from __future__ import annotations

import gc
import resource
import sys
import threading
from typing import Optional

MIB = 2**20


def _read_vm_hwm_kib() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class HostPeak:
    """Peak resident set size of this process from ``reset()`` to ``peak_mib()``."""

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM since model load"
        except OSError:
            self.method = "ru_maxrss over the process lifetime"

    def peak_mib(self) -> float:
        kib = _read_vm_hwm_kib() if self.method.startswith("VmHWM") else None
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kib * 1024 / MIB


class DeviceSampler:
    """Samples NVML used memory (summed over visible GPUs) at ``hz`` in a daemon thread."""

    def __init__(self, hz: float):
        self.interval = 1.0 / hz
        self.unavailable_reason: Optional[str] = None
        self._handles = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.baseline_bytes = 0
        self.peak_bytes = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                self.unavailable_reason = "NVML sees no GPU"
        except Exception as exc:  # no driver, no library: a CPU machine
            self.unavailable_reason = f"NVML unavailable ({type(exc).__name__})"

    def _used_bytes(self) -> int:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles)

    def start(self) -> None:
        if self.unavailable_reason:
            return
        self.baseline_bytes = self.peak_bytes = self._used_bytes()
        self._thread = threading.Thread(target=self._loop, name="device-memory-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._used_bytes())

    def stop(self) -> Optional[float]:
        """Stops sampling; returns the peak above the pre-load baseline in MiB (None without NVML)."""
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._used_bytes())
        return (self.peak_bytes - self.baseline_bytes) / MIB


def release_cached_device_memory() -> None:
    """Return what PyTorch's allocator caches to the driver before a run's baseline is read.

    Work done earlier in this process (building a random model on the GPU, a previous run of a sweep)
    leaves freed blocks cached; NVML counts them as used, which would hide this run's own memory.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
