"""Command line: ``python -m runner [overrides]`` and ``python -m runner -m <sweep>`` (Hydra).

Exit codes: 0 every run ok; 1 some run failed (its record says why); 2 bad input (one line on
stderr naming the key, nothing left under outputs/).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner.config import ConfigError, register_configs, to_bench_config, validate

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_configs()
_failed_runs: list[str] = []  # one line each: status, run dir, error
_skipped_runs: list[str] = []


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
        bench = to_bench_config(cfg)
        if bench.scenario == "offline":
            from runner.isolation import prestart_worker

            prestart_worker(bench)  # isolation=worker: the worker imports while this process plans
        work = plan(bench)
    except ConfigError as exc:
        _discard_scaffolding(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from runner.devices import claim_gpu, parallel_jobs

    try:
        with claim_gpu(parallel_jobs(hydra_cfg.launcher)):
            record = execute(bench, work, run_dir, list(hydra_cfg.overrides.task))
    except ConfigError as exc:
        _discard_scaffolding(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if record.get("skipped"):  # resume: a complete record of this point exists (runner/resume.py)
        _discard_scaffolding(run_dir)
        _skipped_runs.append(record["run_dir"])
        print(f"skipped (complete record with run_key {record['run_key']}: {record['run_dir']}); "
              "resume=false reruns it")
        return
    print_summary(record)
    if record["status"] != "ok":
        error = (record.get("error") or "").strip().splitlines()
        _failed_runs.append(f"{record['status']}: {record['run_dir']}: {error[0][:200] if error else ''}")


def _check_sweep(argv: list[str]) -> None:
    """Compose and validate every point of a command-line sweep before its first run starts.

    Without this, `-m batch_size=1,0` would run batch 1 for minutes and only then refuse batch 0.
    Data-dependent checks (a slice past the end) still happen per run, before its model loads.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _ = get_args_parser().parse_known_args(argv)
    if not args.multirun:
        return
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
    points = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        launcher = [o for o in args.overrides if o.lstrip("+~").startswith("hydra/launcher") or
                    o.lstrip("+~").startswith("hydra.launcher")]
        if launcher:  # parallel jobs without a GPU each are refused before any job starts
            from runner.devices import check_parallel

            check_parallel(compose("config", overrides=launcher, return_hydra_config=True).hydra.launcher)
        for point in points:
            validate(to_bench_config(compose("config", overrides=point)))


def _one_line(exc: Exception) -> str:
    """Hydra's composition errors, reduced to one line that names the key and the valid choices."""
    from hydra.errors import MissingConfigException

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    head = lines[0].removeprefix("In 'config': ") if lines else type(exc).__name__
    if isinstance(exc, MissingConfigException) and "Available options" in str(exc):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1:] if not line.startswith(("Config search path", "provider="))]
        return f"{head}; valid choices: {', '.join(options)}"
    cause = exc.__cause__
    if cause is not None:
        detail = str(cause).strip().splitlines()[0]
        schema = getattr(cause, "object_type", None)
        if "not in" in detail and dataclasses.is_dataclass(schema):
            detail += f"; valid keys: {', '.join(f.name for f in dataclasses.fields(schema))}"
        return f"{head.rstrip('.')}: {detail}"
    return head


if __name__ == "__main__":
    # Let composition errors reach us instead of Hydra's multi-line report (runs catch their own errors).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _check_sweep(sys.argv[1:])
        main()
    except Exception as exc:  # raised while composing the config: no run started, nothing written
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    if _skipped_runs:
        print(f"{len(_skipped_runs)} point(s) skipped: a complete record exists (resume=false reruns them)")
    if _failed_runs:
        print(f"{len(_failed_runs)} run(s) failed:\n  " + "\n  ".join(_failed_runs), file=sys.stderr)
        sys.exit(1)
