"""One benchmark point, start to record: run it as cfg.isolation says (or as a serving run) and write the record.

The data path: runner.plan (config, prompts) -> runner.run.execute -> runner.isolation (a child process, a
kept worker, or none) -> runner.point.run_point -> runner.measure -> the record, written here once.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from runner.config import BenchConfig
from runner.environment import environment
from runner.interrupts import deferred
from runner.isolation import run_isolated
from runner.plan import fingerprints
from runner.point import run_point
from runner.records import RECORD_NAME, flatten, write_json_atomic
from runner.resume import find_complete, index_record, run_key


def completed_record(cfg: BenchConfig, work: Any, sweep_dir: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """The status=ok record of this very point (same run key) under cfg.outputs_root, or under ``sweep_dir`` when
    that lies outside it (``hydra.sweep.dir=/elsewhere``: a sweep copied to another machine, or rerun from
    another directory, finds its own finished points), if one exists."""
    key = run_key(cfg, fingerprints(cfg, work)["prompts_sha256"])
    root = Path(cfg.outputs_root).resolve()
    roots = [root]
    if sweep_dir is not None and not sweep_dir.resolve().is_relative_to(root):
        roots.append(sweep_dir.resolve())
    return next(filter(None, (find_complete(r, key) for r in roots)), None)


def execute(cfg: BenchConfig, work: Any, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the workload (as cfg.isolation says) and write ``record.json`` in ``run_dir``; a failure is a record.

    ``run_dir`` must be this run's own (runner.rundir.claim): the record is written there. Resume is the
    caller's: see :func:`completed_record`.
    """
    start = time.perf_counter()
    prints = fingerprints(cfg, work)
    if cfg.scenario == "serving":
        from runner.serving.execute import execute as execute_serving

        record = execute_serving(cfg, work, run_dir, base_record(cfg, run_dir, overrides))
    else:
        record = base_record(cfg, run_dir, overrides)
        record.update(model_format=work.engine_cls.model_format, engine_streams_tokens=work.engine_cls.stamps_tokens(cfg.engine))
        if cfg.isolation == "none":
            outcome = run_point(cfg, work, run_dir, overrides)
        else:
            outcome = run_isolated(cfg, work, run_dir, overrides)
        record.update(outcome)
        if "env_python" not in record:  # the child died before describing its environment
            record.update(environment(work.engine_cls.packages))
    record.update(prints, run_key=run_key(cfg, prints["prompts_sha256"]))
    record["point_wall_s"] = time.perf_counter() - start  # everything of this point, child start included
    with deferred():  # a Ctrl-C now would lose a finished result: it takes effect after the write
        write_json_atomic(run_dir / RECORD_NAME, record)
        index_record(Path(cfg.outputs_root), run_dir / RECORD_NAME, record)
    return record


def base_record(cfg: BenchConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The head of a point's record (offline and serving alike): identity, the flattened config, status."""
    # JSON has no infinity: an unbounded request rate is written "inf" (pandas keeps such a column as objects)
    config = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in flatten(cfg).items()}
    return {"run_id": uuid.uuid4().hex[:12], "status": "running", "error": None,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(), "run_dir": str(run_dir),
            "overrides": " ".join(overrides), **config}
