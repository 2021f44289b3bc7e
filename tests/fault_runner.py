"""`python -m tests.fault_runner <overrides>`: the runner, with faults injected into the real HF engine.

Test-only; nothing of it is in production paths. The 'spawn' run child imports this module as
``__mp_main__``, so the patch below is installed in the child too, where the engine runs.
LLM_BENCH_TEST_FAULTS="2:oom,4:sigkill" makes HFEngine.generate, given a batch of that many prompts, raise
torch's real OutOfMemoryError (with CUDA's message) or SIGKILL its own process (a segfault or the kernel's
OOM killer look the same to the parent).
"""

from __future__ import annotations

import os
import signal


def _install() -> None:
    faults = dict(item.split(":") for item in os.environ.get("LLM_BENCH_TEST_FAULTS", "").split(",") if item)
    if not faults:
        return
    from engines.hf.engine import HFEngine

    real_generate = HFEngine.generate

    def generate(self, prompts, sampling):
        fault = faults.get(str(len(prompts)))
        if fault == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by a test)")
        if fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            signal.pause()
        return real_generate(self, prompts, sampling)

    HFEngine.generate = generate


_install()

if __name__ == "__main__":
    import runpy

    # alter_sys=False: __main__ stays this module, so the spawned run child imports it (and the patch)
    runpy.run_module("runner", run_name="__main__", alter_sys=False)
