"""Provenance for every record: what ran, where, with which versions. Nothing secret."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional

import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _readable(read) -> Any:
    """One NVML query, or None where this GPU or driver does not answer it."""
    try:
        value = read()
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _gpus() -> dict[str, Any]:
    """The run's first GPU (CUDA_VISIBLE_DEVICES' first, as CUDA numbers it 0; a launcher job's claimed one): its
    NVML index, identity and limits (a run's GPUs are one model); each field None where NVML withholds it."""
    from runner.memory import nvml

    info: dict[str, Any] = {"env_gpu": None, "env_gpu_count": 0, "env_gpu_index": None, "env_gpu_driver": None,
                            "env_gpu_memory_mib": None, "env_cuda_driver": None, "env_gpu_sm_clock_max_mhz": None,
                            "env_gpu_mem_clock_max_mhz": None, "env_gpu_sm_clock_mhz": None,
                            "env_gpu_power_limit_w": None,
                            "env_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    nv, handles, _ = nvml()
    if not handles:  # no NVIDIA driver: a CPU machine
        return info
    handle = handles[0]
    cuda = _readable(nv.nvmlSystemGetCudaDriverVersion)  # e.g. 12080 -> "12.8"
    power_mw = _readable(lambda: nv.nvmlDeviceGetPowerManagementLimit(handle))
    info.update(
        env_gpu=_readable(lambda: nv.nvmlDeviceGetName(handle)),
        env_gpu_count=_readable(nv.nvmlDeviceGetCount),  # the host's; the run's are CUDA_VISIBLE_DEVICES'
        env_gpu_index=_readable(lambda: nv.nvmlDeviceGetIndex(handle)),
        env_gpu_driver=_readable(nv.nvmlSystemGetDriverVersion),
        env_gpu_memory_mib=_readable(lambda: nv.nvmlDeviceGetMemoryInfo(handle).total / 2**20),
        env_cuda_driver=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
        env_gpu_sm_clock_max_mhz=_readable(lambda: nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM)),
        env_gpu_mem_clock_max_mhz=_readable(lambda: nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_MEM)),
        env_gpu_sm_clock_mhz=_readable(lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)),
        env_gpu_power_limit_w=power_mw / 1000 if power_mw else None,
    )
    return info


def accelerator_name(device: str) -> str:
    """The name the roofline table is matched on: NVML's GPU 0 name on "cuda", the CPU model otherwise."""
    if device == "cuda":
        name = _gpus()["env_gpu"]
        if name:
            return name
        import torch

        return torch.cuda.get_device_name(0)
    return _cpu_model()


def environment(engine_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Flat ``env_*`` fields describing the machine and software of this run."""
    import torch

    # The caller may say which commit this tree is: a copy of the tree (the GPU machine's) can carry a stale
    # .git whose HEAD is not the code that runs. Then "dirty" is unknown.
    commit = os.environ.get("LLM_BENCH_GIT_COMMIT") or _git("rev-parse", "HEAD")
    status = None if os.environ.get("LLM_BENCH_GIT_COMMIT") else _git("status", "--porcelain", "--untracked-files=no")
    env = {
        "env_hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "env_platform": platform.platform(),
        "env_cpu": _cpu_model(),
        "env_cpu_cores": os.cpu_count(),
        "env_cpu_physical_cores": psutil.cpu_count(logical=False),
        "env_cpu_usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "env_python": platform.python_version(),
        "env_torch": torch.__version__,
        "env_cuda": torch.version.cuda,
        "env_transformers": _version("transformers"),
        "env_numpy": _version("numpy"),
        "env_git_commit": commit,
        "env_git_dirty": bool(status) if status is not None else None,
    }
    env.update(_gpus())
    for dist in engine_packages:
        env[f"env_{dist.replace('-', '_')}"] = _version(dist)
    return env
