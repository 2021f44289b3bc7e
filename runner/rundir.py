"""Run directories: claimed before a run writes anything, never deleted once they hold a result.

Hydra names a run's directory (``hydra.run.dir``, or ``hydra.sweep.dir``/``subdir`` in a multirun) and
creates it empty (conf/config.yaml turns off Hydra's own ``.hydra/`` and log file, so Hydra writes nothing
into it). A rerun of a sweep with a fixed ``hydra.sweep.dir`` gets the same directories as the first
run, which already hold its records: a run must then write elsewhere, never over them.

- :func:`claim` picks the directory a run writes into: Hydra's, or, when an earlier run's files are there,
  the first free sibling ``<name>.2``, ``<name>.3``... It is claimed by creating its ``.hydra/`` (one
  atomic mkdir), so two processes never share one. The run's config goes into that ``.hydra/``.
- :func:`release` removes a claimed directory that holds no record (an interrupted run: nothing
  half-done stays behind); :func:`prune` removes Hydra's directories that stayed empty (a skipped or
  refused point), with ``os.rmdir`` only: a directory with anything in it is never removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.records import RECORD_NAME

CONFIG_DIR = ".hydra"


def claim(requested: Path) -> Path:
    """The directory this run writes into, created with its (empty) ``.hydra/``."""
    candidate, number = requested, 1
    while True:
        candidate.mkdir(parents=True, exist_ok=True)
        if not (candidate / RECORD_NAME).exists():
            try:
                (candidate / CONFIG_DIR).mkdir()
                return candidate
            except FileExistsError:
                pass  # an earlier (or a concurrent) run's directory
        number += 1
        candidate = requested.with_name(f"{requested.name}.{number}")


def save_config(run_dir: Path, task_cfg: Any, hydra_cfg: Any, overrides: list[str]) -> None:
    """What Hydra itself writes into ``.hydra/``: the composed config, Hydra's config, the overrides."""
    target = run_dir / CONFIG_DIR
    OmegaConf.save(task_cfg, target / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), target / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), target / "overrides.yaml")


def release(run_dir: Path) -> None:
    """Remove a directory claimed by this process whose run did not finish (no record in it)."""
    if not (run_dir / RECORD_NAME).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    prune(run_dir.parent)


def prune(directory: Path, stop: Path | None = None) -> None:
    """Remove ``directory`` and its parents while they are empty, up to (not including) ``stop`` (cwd).

    A sweep directory left holding only Hydra's ``multirun.yaml`` (every point skipped or refused) counts as
    empty. Nothing that holds any other file is touched.
    """
    stop = (stop or Path.cwd()).resolve()
    directory = directory.resolve()
    while directory != stop and directory.is_relative_to(stop):
        try:
            entries = {p.name for p in directory.iterdir()}
        except FileNotFoundError:
            directory = directory.parent
            continue
        if entries == {"multirun.yaml"}:
            (directory / "multirun.yaml").unlink(missing_ok=True)
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty: a result, a user's file, or another point's directory
        directory = directory.parent
