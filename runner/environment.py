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


def _gpus() -> dict[str, Any]:
    info: dict[str, Any] = {"env_gpu": None, "env_gpu_count": 0, "env_gpu_driver": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if count:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            info.update(
                env_gpu=name.decode() if isinstance(name, bytes) else name,
                env_gpu_count=count,
                env_gpu_driver=pynvml.nvmlSystemGetDriverVersion(),
                env_gpu_memory_mib=pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20,
            )
    except Exception:  # no NVIDIA driver: a CPU machine
        pass
    return info


def environment(engine_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Flat ``env_*`` fields describing the machine and software of this run."""
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if commit is None:  # a copy of the tree without .git (e.g. the GPU machine): the caller may say which
        commit = os.environ.get("LLM_BENCH_GIT_COMMIT")
    env = {
        "env_hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "env_platform": platform.platform(),
        "env_cpu": _cpu_model(),
        "env_cpu_cores": os.cpu_count(),
        "env_python": platform.python_version(),
        "env_torch": torch.__version__,
        "env_cuda": torch.version.cuda,
        "env_transformers": _version("transformers"),
        "env_git_commit": commit,
        "env_git_dirty": bool(status) if status is not None else None,
    }
    env.update(_gpus())
    for dist in engine_packages:
        env[f"env_{dist.replace('-', '_')}"] = _version(dist)
    return env
