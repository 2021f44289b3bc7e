"""What the runner's measurement costs the host, timed alone (issue 16).

- The clock inside HF's decoding loop: ``generate`` calls the runner's stopping criterion (engines/hf/engine.py
  ``_StepClock``) once per step; on CUDA it records an event, on a CPU it reads the clock. Its share of a step
  (the step's time is the runner's TPOT) can be read exactly, where a ratio of two whole runs of a host-bound
  engine is as noisy as the host itself.
- The memory sampler's NVML calls (runner/memory.py, its own process, 100 times a second on a GPU): their
  duration, which a third party measured in milliseconds for the running-processes query, while holding the
  driver's global lock (MangoHud pull request 2104).

    python scripts/clock_cost.py --calls 20000 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def clock_us_per_step(device, batch_size: int, calls: int) -> float:
    import torch

    from engines.hf.engine import _StepClock

    ids = torch.zeros((batch_size, 128), dtype=torch.long, device=device)
    for _ in range(3):  # the first round pays for CUDA's lazy set-up; the last is reported
        clock = _StepClock(device, batch_size)
        start = time.perf_counter()
        for _ in range(calls):
            clock(ids, None)
        host_s = time.perf_counter() - start
        clock.step_times()  # what the runner reads after generate returned, outside the step loop
    return host_s / calls * 1e6


def nvml_call_us(calls: int = 200) -> dict[str, tuple[float, float]]:
    """(median, 99th percentile) µs of each NVML call the memory sampler makes per sample, on the visible GPUs."""
    from runner.memory import nvml

    pynvml, handles, why = nvml()
    if why:
        return {}
    out = {}
    for name in ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetComputeRunningProcesses"):
        call, times = getattr(pynvml, name), []
        for _ in range(calls):
            start = time.perf_counter()
            for handle in handles:
                call(handle)
            times.append((time.perf_counter() - start) * 1e6)
        out[name] = (float(np.median(times)), float(np.percentile(times, 99)))
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    us = clock_us_per_step(torch.device(args.device), args.batch_size, args.calls)
    print(f"{args.device}: {us:.2f} µs of host time per step for the runner's clock "
          f"(batch {args.batch_size}, {args.calls} calls, last of 3 rounds)")
    for name, (median, p99) in nvml_call_us().items():
        print(f"memory sampler: {name} {median:,.1f} µs median, {p99:,.1f} µs 99th percentile (200 calls)")


if __name__ == "__main__":
    main()
