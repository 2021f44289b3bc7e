"""What a batch-size grid costs, end to end, under each isolation mode (issue 7's fast-grid figure).

    python scripts/grid_timing.py [--modes worker,process] [--grid "OVERRIDES"] [more overrides...]

Runs `python -m runner -m batch_size=1,2,4 <small SmolLM2 workload> isolation=MODE` for each mode, timing the
whole command (process start-up and imports included), then reads the records: the ratio is the wall time
over (one model load + the sum of every point's timed generate calls). Goal: at most 1.2 for worker.
It also prints the points' output tok/s per mode, so the fast grid can be checked against isolated runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = "batch_size=1,2,4 dataset.limit=4 dataset.max_prompt_tokens=128 generation.max_new_tokens=8"


def run_grid(mode: str, overrides: list[str], sweep_dir: Path) -> float:
    command = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={sweep_dir}", "resume=false",
               f"isolation={mode}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{mode}: the sweep failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall_s


def main() -> None:
    from runner.results import load_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="worker,process")
    parser.add_argument("--grid", default=GRID, help=f"the sweep's overrides (default: {GRID})")
    args, overrides = parser.parse_known_args()
    overrides = [*args.grid.split(), *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            wall_s = run_grid(mode, overrides, Path(tmp) / mode)
            df = load_results(Path(tmp) / mode).sort_values("batch_size")
            load_s = df["load_s"].max()  # the one real load (a reused worker's later points load nothing)
            generate_s = df["measured_region_s"].sum()
            ideal_s = load_s + generate_s
            print(f"{mode}: wall {wall_s:.1f} s for {len(df)} points; load {load_s:.1f} s + timed generate "
                  f"{generate_s:.1f} s = {ideal_s:.1f} s; ratio {wall_s / ideal_s:.2f}")
            for _, row in df.iterrows():
                print(f"    batch {row['batch_size']}: {row['output_tok_s']:.1f} out tok/s "
                      f"[{row['output_tok_s_ci_low']:.1f}, {row['output_tok_s_ci_high']:.1f}], "
                      f"load {row['load_s']:.2f} s, timed {row['measured_region_s']:.2f} s")


if __name__ == "__main__":
    main()
