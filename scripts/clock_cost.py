"""What the runner's HF clock costs the host per decoding step, measured directly (issue 16).

``generate`` calls the runner's stopping criterion (engines/hf/engine.py ``_StepClock``) once per step: on CUDA it
records an event, on a CPU it reads the clock. Where the engine is bound by its host (eager HF issues every
kernel from Python) the ratio of two whole runs is as noisy as the host itself; this times the clock alone,
many calls back to back, so its share of a step (the step's time is the runner's TPOT) can be read exactly.

    python scripts/clock_cost.py --calls 20000 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from engines.hf.engine import _StepClock

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    ids = torch.zeros((args.batch_size, 128), dtype=torch.long, device=device)
    for _ in range(3):  # the first round pays for CUDA's lazy set-up
        clock = _StepClock(device, args.batch_size)
        start = time.perf_counter()
        for _ in range(args.calls):
            clock(ids, None)
        host_s = time.perf_counter() - start
        clock.step_times()  # what the runner reads after generate returned, outside the step loop
    print(f"{args.device}: {host_s / args.calls * 1e6:.2f} µs of host time per step for the runner's clock "
          f"(batch {args.batch_size}, {args.calls} calls, last of 3 rounds)")


if __name__ == "__main__":
    main()
