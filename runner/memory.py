"""Host and device memory around a run, sampled by a process of its own that sleeps between samples.

Host: the kernel's exact peak resident set of this process (``VmHWM``), reset before the model loads by
writing ``5`` to ``/proc/self/clear_refs`` (where that is not allowed: the lifetime ``ru_maxrss``, and the
record says so); plus the sampled sum of RSS over this process and all its children (an engine core
or a server in a child process: VmHWM never sees those).
Device (NVML): the used memory of the GPUs this process may use (CUDA_VISIBLE_DEVICES), peak minus the
reading taken before the model loaded, so other tenants' steady use does not count; and the memory NVML
attributes to the processes of this run's tree (``nvmlDeviceGetComputeRunningProcesses``, filtered to our
pid and its descendants), peak of the sum.
The sampler waits on its stdin between samples (no busy-waiting); the child list is refreshed every
``CHILDREN_REFRESH_S`` because walking /proc costs far more than one RSS read. Without a GPU it samples at most
``HOST_ONLY_MAX_HZ``: there it shares the CPU with the engine, and at 100 Hz it slowed HF on the 2-core CI
machine by ~2 % (runner/bare 0.978 [0.959, 0.998], against 0.997 and 1.008 at 1 Hz); the host peak of the
run's own process is the kernel's exact VmHWM, so only the children's RSS sum depends on the rate.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import select
import subprocess
import sys
import time
from typing import Any, Optional

import psutil

from engines.base import own_code_env

MIB = 2**20
CHILDREN_REFRESH_S = 0.5
HOST_ONLY_MAX_HZ = 10.0  # no GPU to sample: host RSS alone (module doc)
BASELINE_KEY = "_device_baseline_bytes"  # from the sampler process to MemorySampler, not a record field


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


def _visible_handles(pynvml) -> list:
    """The GPUs this process may use: NVML numbers every GPU of the host, CUDA_VISIBLE_DEVICES picks
    some (by index or by full UUID). Anything else there (a UUID prefix, MIG syntax) falls back to all."""
    every = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return every
    try:
        return [pynvml.nvmlDeviceGetHandleByIndex(int(e)) if e.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(e)
                for e in filter(None, (e.strip() for e in visible.split(",")))]
    except Exception:
        return every


def nvml() -> tuple[Any, list, Optional[str]]:
    """(pynvml module, handles of the GPUs visible to this process, None) or (None, [], why NVML is unusable)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = _visible_handles(pynvml)
    except Exception as exc:  # no driver, no library: a CPU machine
        return None, [], f"NVML unavailable ({type(exc).__name__}): no NVIDIA GPU or driver"
    if not handles:
        return None, [], "NVML sees no GPU"
    return pynvml, handles, None


def device_used_bytes(pynvml, handles: list) -> int:
    """NVML used memory summed over ``handles`` (nvml()'s visible GPUs): every process's allocations on them."""
    return sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)


class _Readings:
    """What the sampler process reads: RSS summed over a process tree, NVML used memory of the visible GPUs
    (and the part NVML attributes to the tree's processes), each kept at its peak."""

    def __init__(self, root: int, exclude: int, baseline_bytes: Optional[int] = None):
        self._nvml, self._handles, self.device_note = nvml()
        self.process_note: Optional[str] = self.device_note
        self._root, self._exclude = psutil.Process(root), exclude
        self._tree: list[psutil.Process] = [self._root]
        self._tree_refreshed = 0.0
        self.peak_device_bytes = self._device_used() if self._handles else 0
        self.baseline_bytes = self.peak_device_bytes if baseline_bytes is None else baseline_bytes
        self.peak_process_bytes: Optional[int] = None
        self.peak_tree_rss_bytes = 0
        self.samples = 0

    @property
    def on_gpu(self) -> bool:
        return bool(self._handles)

    def _refresh_tree(self) -> None:
        try:
            self._tree = [p for p in [self._root, *self._root.children(recursive=True)] if p.pid != self._exclude]
        except psutil.Error:
            self._tree = [self._root]
        self._tree_refreshed = time.monotonic()

    def _tree_rss(self) -> int:
        total = 0
        for proc in self._tree:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that ended between the refresh and now
                pass
        return total

    def _device_used(self) -> int:
        return device_used_bytes(self._nvml, self._handles)

    def _process_used(self) -> Optional[int]:
        pids = {p.pid for p in self._tree}
        total, seen = 0, False
        for handle in self._handles:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in pids:
                    if proc.usedGpuMemory is None:  # NVML withholds it (e.g. some containers, MIG)
                        self.process_note = "NVML reports no per-process memory here"
                        return None
                    total, seen = total + proc.usedGpuMemory, True
        if not seen:
            # Inside a container NVML lists host pids, which never match ours.
            self.process_note = "NVML lists none of this run's processes (pid namespace?)"
        return total if seen else None

    def sample(self) -> None:
        if time.monotonic() - self._tree_refreshed > CHILDREN_REFRESH_S:
            self._refresh_tree()
        self.peak_tree_rss_bytes = max(self.peak_tree_rss_bytes, self._tree_rss())
        if self._handles:
            self.peak_device_bytes = max(self.peak_device_bytes, self._device_used())
            used = self._process_used()
            if used is not None:
                self.process_note = None
                self.peak_process_bytes = max(self.peak_process_bytes or 0, used)
        self.samples += 1

    def fields(self, elapsed_s: float, hz: Optional[float] = None) -> dict[str, Any]:
        """The record's sampled-memory fields, in MiB (``hz``: the rate the sampler aimed at)."""
        return {
            "host_peak_rss_tree_mib": self.peak_tree_rss_bytes / MIB,
            "device_peak_used_mib": (self.peak_device_bytes - self.baseline_bytes) / MIB if self._handles else None,
            "device_memory_note": self.device_note,
            "device_peak_process_mib": self.peak_process_bytes / MIB if self.peak_process_bytes is not None else None,
            "device_process_memory_note": self.process_note if self.peak_process_bytes is None else None,
            "memory_samples": self.samples,
            "memory_sample_hz_target": hz,
            "memory_sample_hz_achieved": self.samples / elapsed_s if elapsed_s > 0 else None,
            BASELINE_KEY: self.baseline_bytes,
        }


def _sample_until_stopped(root: int, hz: float, baseline_bytes: Optional[int]) -> None:
    """The sampler process: sample the tree of ``root`` at ``hz`` until a line arrives on stdin (or it closes),
    then print the fields as one JSON line. A fixed schedule (deadline += interval) so the time a sample takes
    does not lower the rate; after a stall it skips ahead instead of bursting to catch up."""
    readings = _Readings(root, exclude=os.getpid(), baseline_bytes=baseline_bytes)
    if not readings.on_gpu:
        hz = min(hz, HOST_ONLY_MAX_HZ)
    started = time.monotonic()
    readings.sample()
    print("ready", flush=True)
    deadline, interval = started, 1.0 / hz
    while True:
        deadline = max(deadline + interval, time.monotonic())
        if select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break  # "stop", or EOF: the run process is gone
        readings.sample()
    readings.sample()
    print(json.dumps(readings.fields(time.monotonic() - started, hz)), flush=True)


class MemorySampler:
    """Samples host RSS of a process tree and NVML device memory at ``hz``, in a process of its own.

    Not a thread: sampling takes the GIL, and a thread that takes it 100 times a second slows a Python-bound
    engine (eager HF generate on a GPU launches kernels from Python) by more than any sample is worth. The
    process is a child of the run (it dies with it) and leaves itself out of the tree it measures.
    """

    def __init__(self, hz: float, root: Optional[int] = None, baseline_bytes: Optional[int] = None):
        """``baseline_bytes``: the device memory in use before this run's engine was loaded, when the engine was
        loaded by an earlier run (a worker keeps it); by default the reading when sampling starts."""
        self.hz, self.root, self.baseline_bytes = hz, root or os.getpid(), baseline_bytes
        self._proc: Optional[subprocess.Popen] = None
        self._fields: dict[str, Any] = {}

    def start(self) -> None:
        baseline = "" if self.baseline_bytes is None else str(self.baseline_bytes)
        self._proc = subprocess.Popen([sys.executable, "-m", "runner.memory", str(self.root), str(self.hz), baseline],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      env=own_code_env(dict(os.environ)))
        ready = self._proc.stdout.readline().strip()
        if ready != "ready":
            self._proc.kill()
            raise RuntimeError(f"the memory sampler did not start (exit code {self._proc.wait()})")

    @property
    def pid(self) -> Optional[int]:
        """The sampler process's pid once started (scripts/step_ab.py pauses and resumes it)."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is None or self._fields:
            return
        self._proc.stdin.write("stop\n")
        self._proc.stdin.flush()
        self._fields = json.loads(self._proc.stdout.readline())
        self.baseline_bytes = self._fields.pop(BASELINE_KEY)
        self._proc.wait()

    def fields(self) -> dict[str, Any]:
        return self._fields


def release_cached_device_memory() -> None:
    """Return what PyTorch's allocator caches to the driver before a run's baseline is read.

    Work done earlier in this process (building a random model on the GPU, a previous run of a sweep)
    leaves freed blocks cached; NVML counts them as used, which would hide this run's own memory.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


if __name__ == "__main__":  # the sampler process of MemorySampler
    _sample_until_stopped(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] and sys.argv[3] else None)
