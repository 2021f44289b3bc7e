"""One benchmark run: config -> prompts -> model format -> engine -> measured batches -> record."""

from __future__ import annotations

import datetime as dt
import functools
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from engines import get_engine_class
from engines.base import Engine, SamplingSpec
from runner.config import BenchConfig, ConfigError, validate
from runner.data import data_file_fingerprint, load_prompts, prompts_fingerprint
from runner.environment import environment
from runner.interrupts import deferred
from runner.measure import measure_run
from runner.models import preparation_requirements, prepare, tokenizer_source
from runner.quality import agreement_fields, wanted_reference
from runner.records import RECORD_NAME, flatten, write_json_atomic
from runner.resume import find_complete, index_record, run_key


@dataclass
class Workload:
    """Everything decided before a model is loaded; building it is where bad input fails."""

    engine_cls: type
    model_variant: Optional[str]  # the engine's model-format variant (checked here, e.g. a compute type)
    prompts: list[list[int]]
    sampling: SamplingSpec


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str, kwargs: tuple):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **dict(kwargs))


_prompt_cache: dict[tuple, list[list[int]]] = {}


def _prompts(dataset: Any, source: str, kwargs: tuple) -> list[list[int]]:
    """The slice's token ids, kept for the next points of a multirun (one process runs them all): a grid
    over batch sizes reads and tokenizes its prompts once. Keyed by the dataset config's repr."""
    key = (repr(dataset), source, kwargs)
    if key not in _prompt_cache:
        _prompt_cache.clear()  # one slice at a time is what a grid needs; never grow without bound
        _prompt_cache[key] = load_prompts(dataset, _tokenizer(source, kwargs))
    return [list(p) for p in _prompt_cache[key]]


def _engine_class(cfg: BenchConfig) -> type:
    try:
        return get_engine_class(cfg.engine.name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def check_requirements(cfg: BenchConfig) -> None:
    """Every optional package this point needs is installed, or a ConfigError naming the install command.

    Run for every point of a sweep before the first starts (runner.__main__), and again by ``plan``: a
    missing package must not cost a run, a failed record or a half-made run directory.
    """
    needed = []
    if cfg.scenario == "serving":
        from runner.serving.backends import requirements

        needed += requirements(cfg)
    if not (cfg.scenario == "serving" and cfg.server.url):  # attach mode: the server is someone else's
        engine_cls = _engine_class(cfg)
        needed += engine_cls.requirements(cfg.engine)
        if all(r.installed() for r in needed):  # the variant may need the engine's package (CT2 compute types)
            variant = engine_cls.model_variant(cfg.engine)
            needed += preparation_requirements(cfg.model, engine_cls.model_format, cfg.cache_dir, variant)
    missing = [r for r in needed if not r.installed()]
    if missing:
        first = missing[0]
        raise ConfigError(f"{first.needed_by or f'engine={cfg.engine.name}'} needs the '{first.module}' package, "
                          f"which is not installed: {first.install}")


def plan(cfg: BenchConfig) -> Workload:
    """Validate the config, read and tokenize the prompts. Raises ConfigError, loads no model weights."""
    validate(cfg)
    check_requirements(cfg)
    if cfg.scenario == "serving":  # requests to an OpenAI-compatible server: runner/serving
        from runner.serving.plan import plan as plan_serving

        return plan_serving(cfg)
    engine_cls = _engine_class(cfg)
    variant = engine_cls.model_variant(cfg.engine)
    source, kwargs = tokenizer_source(cfg.model, cfg.cache_dir)
    prompts = _prompts(cfg.dataset, source, tuple(sorted(kwargs.items())))
    sampling = SamplingSpec(
        max_new_tokens=cfg.generation.max_new_tokens,
        ignore_eos=cfg.generation.ignore_eos,
        temperature=cfg.generation.temperature,
    )
    return Workload(engine_cls=engine_cls, model_variant=variant, prompts=prompts, sampling=sampling)


def _fingerprints(cfg: BenchConfig, work: Any) -> dict[str, Optional[str]]:
    """What exactly ran: the prompt token ids (part of the run key: edited prompts are a new point) and the
    data file they came from (provenance)."""
    prompts = work.prompt_ids if cfg.scenario == "serving" else work.prompts
    return {"prompts_sha256": prompts_fingerprint(prompts), "dataset_file_sha256": data_file_fingerprint(cfg.dataset)}


def completed_record(cfg: BenchConfig, work: Any) -> Optional[dict[str, Any]]:
    """The status=ok record of this very point (same run key) under cfg.outputs_root, if one exists."""
    return find_complete(Path(cfg.outputs_root), run_key(cfg, _fingerprints(cfg, work)["prompts_sha256"]))


def execute(cfg: BenchConfig, work: Any, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the workload (as cfg.isolation says) and write ``record.json`` in ``run_dir``; a failure is a record.

    ``run_dir`` must be this run's own (runner.rundir.claim): the record is written there. Resume is the
    caller's: see :func:`completed_record`.
    """
    fingerprints = _fingerprints(cfg, work)
    if cfg.scenario == "serving":
        from runner.serving.execute import execute as execute_serving

        record = execute_serving(cfg, work, run_dir, overrides)
    else:
        record = _base_record(cfg, work, run_dir, overrides)
        if cfg.isolation == "none":
            outcome = run_point(cfg, work, run_dir, overrides)
        else:
            from runner.isolation import run_isolated

            outcome = run_isolated(cfg, work, run_dir, overrides)
        record.update(outcome)
        if "env_python" not in record:  # the child died before describing its environment
            record.update(environment(work.engine_cls.packages))
    record.update(fingerprints, run_key=run_key(cfg, fingerprints["prompts_sha256"]))
    with deferred():  # a Ctrl-C now would lose a finished result: it takes effect after the write
        write_json_atomic(run_dir / RECORD_NAME, record)
        index_record(Path(cfg.outputs_root), run_dir / RECORD_NAME, record)
    return record


def _base_record(cfg: BenchConfig, work: Workload, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex[:12],
        "status": "running",
        "error": None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "run_dir": str(run_dir),
        "overrides": " ".join(overrides),
        **flatten(cfg),
        "model_format": work.engine_cls.model_format,
        "engine_streams_tokens": work.engine_cls.streams_tokens,
    }


def _failure_status(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in type(exc).__name__.lower():
        return "oom"
    return "error"


def run_point(cfg: BenchConfig, work: Workload, run_dir: Path, overrides: list[str],
              engine: Optional[Engine] = None) -> dict[str, Any]:
    """One offline run, in whatever process calls it; returns the record (not written). Never raises.

    ``engine``: an engine a worker keeps loaded between points (runner/isolation.py); None: a new one,
    closed at the end.
    """
    record = _base_record(cfg, work, run_dir, overrides)
    own_engine = engine is None
    try:
        prepared = prepare(cfg.model, work.engine_cls.model_format, cfg.cache_dir, work.model_variant)
        record.update(model_path=prepared.path, model_prepare_s=prepared.prepare_s,
                      model_cache_hit=prepared.cache_hit)
        reference = wanted_reference(cfg, work.prompts, work.sampling)  # cached; before any timing
        if engine is None:
            engine = work.engine_cls(cfg.engine)
        record.update(measure_run(cfg, work, engine, prepared.path))
        heads = [r["output_head"] for r in record["request_samples"]]
        record.update(agreement_fields(work.sampling, reference, heads))
        record["status"] = "ok"
    except Exception as exc:  # the run failed: keep it as a row with its error
        record["status"] = _failure_status(exc)
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    finally:
        if own_engine and engine is not None:
            engine.close()
    record.update(environment(work.engine_cls.packages))
    return record
