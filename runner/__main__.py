"""Command line: ``python -m runner [overrides]`` and ``python -m runner -m <sweep>`` (Hydra).

Exit codes: 0 every run ok; 1 some run failed (its record says why); 2 bad input (one line on
stderr naming the key, nothing left under outputs/); 130 / 143 interrupted by Ctrl-C / SIGTERM (the
running point is stopped within seconds with its processes, leaves nothing behind, finished points stay).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner import interrupts, rundir
from runner.config import ConfigError, register_configs, to_bench_config, validate

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_configs()


@dataclasses.dataclass
class _Invocation:
    """What one `python -m runner ...` has done so far (Hydra calls main() once per point; _cli reads this)."""
    failed: list[str] = dataclasses.field(default_factory=list)  # one line each: status, run dir, error
    skipped: list[str] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)
    hydra_dirs: set[Path] = dataclasses.field(default_factory=set)  # Hydra's point dirs: pruned if left empty
    running: list[Path] = dataclasses.field(default_factory=list)  # the point in progress's run dir (at most one)


_now = _Invocation()  # replaced by each _cli() call: one invocation's outcomes never mix with another's
# Hydra's launcher configs that come with a plugin package, and the extra of pyproject.toml that installs it
LAUNCHER_PLUGINS = {"joblib": "launchers", "ray": "ray", "submitit_local": "submitit", "submitit_slurm": "submitit"}


def _refuse(exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)


# An absolute path: the same config whether the module runs as `python -m runner` or is imported (tests)
@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    # Imported here so `--help` and config errors stay fast.
    from runner.plan import plan
    from runner.run import completed_record, execute
    from runner.summary import print_summary

    from runner.devices import disable_nvlink_multicast

    disable_nvlink_multicast()  # before any child starts: they inherit it
    hydra_cfg = HydraConfig.get()
    requested_dir = Path(hydra_cfg.runtime.output_dir)
    _now.hydra_dirs.add(requested_dir)
    try:
        bench = to_bench_config(cfg)
        if bench.scenario == "offline":
            from runner.isolation import prestart

            prestart(bench)  # the run child (or worker) imports while this process plans
        work = plan(bench)
    except ConfigError as exc:
        _refuse(exc)
    except Exception as exc:  # reading the data or the tokenizer failed: no run started, nothing written
        detail = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: preparing the run failed: {type(exc).__name__}: {detail}", file=sys.stderr)
        sys.exit(1)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    done = completed_record(bench, work, Path(hydra_cfg.sweep.dir) if multirun else None) if bench.resume else None
    if done is not None:  # resume: a complete record of this point exists (runner/resume.py); nothing is written
        _now.skipped.append(done["run_dir"])
        print(f"skipped (complete record with run_key {done['run_key']}: {done['run_dir']}); "
              "resume=false reruns it")
        return
    from runner.devices import claim_gpu, parallel_jobs

    overrides = list(hydra_cfg.overrides.task)
    run_dir = rundir.claim(requested_dir)  # Hydra's directory, or a fresh sibling if an earlier run's is there
    _now.running.append(run_dir)
    try:
        rundir.save_config(run_dir, cfg, hydra_cfg, overrides)
        with claim_gpu(parallel_jobs(hydra_cfg.launcher)):
            record = execute(bench, work, run_dir, overrides)
    except Exception as exc:  # no record was written (an interrupt is the caller's: _interrupted releases)
        _now.running.remove(run_dir)
        rundir.release(run_dir)
        if isinstance(exc, ConfigError):
            _refuse(exc)
        raise
    _now.running.remove(run_dir)
    print_summary(record)
    _now.finished.append(record["run_dir"])
    if record["status"] != "ok":
        error = (record.get("error") or "").strip().splitlines()
        _now.failed.append(f"{record['status']}: {record['run_dir']}: {error[0][:200] if error else ''}")


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
        from runner.plan import check_requirements

        for point in points:
            bench = to_bench_config(compose("config", overrides=point))
            validate(bench)
            check_requirements(bench)


def _one_line(exc: Exception) -> str:
    """Hydra's composition errors, reduced to one line that names the key and the valid choices."""
    from hydra.errors import MissingConfigException, OverrideParseException

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    head = lines[0].removeprefix("In 'config': ") if lines else type(exc).__name__
    if isinstance(exc, OverrideParseException):
        key = exc.override.split("=", 1)[0]
        return (f"{head}: Hydra cannot read this override; quote a value holding non-ASCII letters or characters "
                f"such as ()[]{{}}:,'\" for Hydra, inside the shell's quotes: '{key}=\"...\"'")
    plugin = next((extra for name, extra in LAUNCHER_PLUGINS.items() if f"'hydra/launcher/{name}'" in head), None)
    if plugin:  # the launcher's config comes with its plugin package
        return f"{head} (its Hydra plugin is not installed: pip install -e '.[{plugin}]')"
    if isinstance(exc, MissingConfigException) and "Available options" in str(exc):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1:] if not line.startswith(("Config search path", "provider="))]
        return f"{head}; valid choices: {', '.join(options)}"
    cause = exc.__cause__
    if cause is not None:
        detail = str(cause).strip().splitlines()[0]
        schema = getattr(cause, "object_type", None)
        from runner.config import missing_engine_key

        if refusal := missing_engine_key(schema, str(getattr(cause, "key", ""))):
            return refusal
        if "not in" in detail and dataclasses.is_dataclass(schema):
            detail += f"; valid keys: {', '.join(f.name for f in dataclasses.fields(schema))}"
        return f"{head.rstrip('.')}: {detail}"
    return head


def _stop_children() -> None:
    """Kill the run children (their whole process groups: engine cores, servers) of this process."""
    from runner.isolation import kill_children
    from runner.serving.server import stop_all

    kill_children()
    stop_all(grace_s=0.0)


def _interrupted(exc: KeyboardInterrupt) -> int:
    signum = getattr(exc, "signum", signal.SIGINT)
    _stop_children()
    where = f"the point in {_now.running[0]} was stopped and left nothing" if _now.running else "no point was running"
    for run_dir in _now.running:
        rundir.release(run_dir)
    kept = f"{len(_now.finished)} finished point(s) kept" if _now.finished else "no point had finished"
    print(f"interrupted by {signal.Signals(signum).name}: {where}; {kept}. Run the same command again to resume "
          "(finished points are skipped).", file=sys.stderr)
    return 128 + signum


def _cli() -> int:
    global _now
    _now = _Invocation()
    # Let composition errors reach us instead of Hydra's multi-line report (runs catch their own errors).
    os.environ["HYDRA_FULL_ERROR"] = "1"
    interrupts.install(on_exit_now=_stop_children)
    # A run child killed on purpose (Ctrl-C, timeout) leaves its semaphores registered with multiprocessing's
    # resource tracker, which then warns at exit in four lines after ours; the tracker takes -W from here.
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    if {"--help", "-h"} & set(sys.argv[1:]):  # ours: Hydra's page lists internal groups (--hydra-help has it)
        from runner.cli_help import help_text

        print(help_text(CONF_DIR))
        return 0
    try:
        _check_sweep(sys.argv[1:])
        main()
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except Exception as exc:  # raised while composing the config: no run started, nothing written
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        for directory in _now.hydra_dirs:
            rundir.prune(directory)
    if _now.skipped:
        print(f"{len(_now.skipped)} point(s) skipped: a complete record exists (resume=false reruns them)")
    if _now.failed:
        print(f"{len(_now.failed)} run(s) failed:\n  " + "\n  ".join(_now.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
