"""One GPU per parallel launcher job (hydra/launcher=joblib with n_jobs > 1): a lock file per GPU.

A job claims the first GPU whose lock it can take and sets CUDA_VISIBLE_DEVICES to it before its run child
starts; the lock is held until the job ends. Numbering jobs (job.num % n_jobs) would not do: joblib hands
out jobs as workers free up, so two live jobs could get the same number modulo n_jobs.
On a CPU-only machine parallel jobs are refused: runs sharing cores corrupt each other's timings.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from runner.config import ConfigError


# NVLink multicast stays off on every run and in every child (engine cores, tensor-parallel workers): NCCL's
# NVLS, torch's symmetric memory and NVSHMEM would otherwise create multicast objects, which can take a host's
# GPUs out of service. A value the user set is kept.
NO_NVLINK_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def disable_nvlink_multicast() -> None:
    for name, value in NO_NVLINK_MULTICAST.items():
        os.environ.setdefault(name, value)


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]  # NVML: no CUDA context in this process
    except ImportError:
        return []


def parallel_jobs(launcher_cfg) -> int:
    """n_jobs of a parallel local launcher (joblib); 1 for every other launcher."""
    target = str(launcher_cfg.get("_target_", ""))
    if "joblib" not in target.lower():
        return 1
    n_jobs = launcher_cfg.get("n_jobs", 1)
    if n_jobs in (-1, None):  # joblib: every CPU; here one job per GPU, and a CPU machine's core count to refuse
        return len(visible_gpus()) or (os.cpu_count() or 1)
    return int(n_jobs)


def check_parallel(launcher_cfg) -> None:
    """Before a sweep starts: refuse parallel jobs that could not each get a GPU of their own."""
    n_jobs = parallel_jobs(launcher_cfg)
    gpus = visible_gpus()
    if n_jobs > 1 and not gpus:
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs}: parallel runs need one GPU each and this machine "
                          "has none (CPU runs in parallel share cores and corrupt each other's timings); "
                          "use hydra.launcher.n_jobs=1 or the basic launcher")
    if n_jobs > len(gpus) > 0:
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs}: more jobs than GPUs ({len(gpus)}: {','.join(gpus)})")


@contextmanager
def claim_gpu(n_jobs: int) -> Iterator[Optional[str]]:
    """Hold one GPU for this job (CUDA_VISIBLE_DEVICES set to it); nothing to do with one job."""
    if n_jobs <= 1:
        yield None
        return
    gpus = visible_gpus()
    check_parallel({"_target_": "joblib", "n_jobs": n_jobs})
    lock_dir = Path(tempfile.gettempdir()) / "llm-bench-gpu-locks"
    lock_dir.mkdir(exist_ok=True)
    while True:
        for gpu in gpus:
            f = open(lock_dir / f"gpu-{gpu}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            try:
                yield gpu
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                f.close()  # releases the lock
            return
        time.sleep(1.0)  # every GPU is held by a live job: wait for one to finish
