"""Command line: ``python -m runner [overrides]`` and ``python -m runner -m <sweep>`` (Hydra).

Exit codes: 0 every run ok; 1 some run failed (its record says why); 2 bad input (one line on
stderr naming the key, nothing left under outputs/).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner.config import ConfigError, register_configs

register_configs()
_failed_runs: list[str] = []


def _discard_scaffolding(run_dir: Path) -> None:
    """Remove what Hydra created for a run that never started, and the directories left empty by that."""
    shutil.rmtree(run_dir, ignore_errors=True)
    sweep_dir = run_dir.parent
    if HydraConfig.get().mode.name == "MULTIRUN":
        leftover = {p.name for p in sweep_dir.iterdir()} if sweep_dir.is_dir() else set()
        if leftover <= {"multirun.yaml"}:
            shutil.rmtree(sweep_dir, ignore_errors=True)
    stop = Path.cwd().resolve()
    for directory in [sweep_dir, *sweep_dir.parents]:
        if directory == stop or not directory.is_relative_to(stop):
            break
        if directory.is_dir() and any(directory.iterdir()):
            break
        shutil.rmtree(directory, ignore_errors=True)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    # Imported here so `--help` and config errors stay fast.
    from runner.run import execute, plan
    from runner.summary import print_summary

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        bench = OmegaConf.to_object(cfg)
        work = plan(bench)
    except ConfigError as exc:
        _discard_scaffolding(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    record = execute(bench, work, run_dir, list(hydra_cfg.overrides.task))
    print_summary(record)
    if record["status"] != "ok":
        _failed_runs.append(record["run_dir"])


if __name__ == "__main__":
    main()
    if _failed_runs:
        print(f"{len(_failed_runs)} run(s) failed: " + ", ".join(_failed_runs), file=sys.stderr)
        sys.exit(1)
