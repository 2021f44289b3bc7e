"""One offline point in whatever process calls it: prepare the model, load the engine, measure."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, Optional

from runner.config import BenchConfig
from runner.environment import environment
from runner.measure import measure_run
from runner.models import prepare
from runner.plan import Workload
from runner.quality import agreement_fields, on_cuda, reference_missing, wanted_reference
from runner.session import EngineSession
from runner.speculative import exactness_fields, plain_reference, prepare_draft, remember_plain_outputs


def _failure_status(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in type(exc).__name__.lower():
        return "oom"
    return "error"


def run_point(cfg: BenchConfig, work: Workload, run_dir: Path, overrides: list[str],
              session: Optional[EngineSession] = None) -> dict[str, Any]:
    """One offline run, in whatever process calls it; returns its outcome (status, error, the measured fields), which
    runner.run.execute merges into the point's one record. Never raises.

    ``session``: the engine a worker keeps loaded between points (runner/isolation.py); None: a new one,
    closed at the end.
    """
    record: dict[str, Any] = {"status": "running", "error": None}
    own_session = session is None
    try:
        prepared = prepare(cfg.model, work.engine_cls.model_format, cfg.cache_dir, work.model_variant)
        record.update(model_path=prepared.path, model_prepare_s=prepared.prepare_s,
                      model_cache_hit=prepared.cache_hit)
        if session is None:
            session = EngineSession(work.engine_cls(cfg.engine))
        elif session.loaded_path and on_cuda() and reference_missing(cfg, work.prompts, work.sampling):
            # the reference needs the GPU that a kept engine may have pre-allocated (vLLM, SGLang: ~90 %)
            print("the kept engine is closed to run the greedy reference on new prompts "
                  "(measure.agreement_prompts); this point's load_s counts the engine's new start",
                  file=sys.stderr, flush=True)
            session.unload()
        reference = wanted_reference(cfg, work.prompts, work.sampling)  # cached; before any timing
        # the same engine without speculation, made before the measured engine loads (a kept one is closed first)
        spec_reference = plain_reference(cfg, work, prepared.path, make_room=session.unload)
        # after any unload above: it hands the draft to the engine instance that will load
        draft = prepare_draft(cfg, session.engine)  # engine.speculative.draft, converted once like the target
        if draft is not None:
            record.update(spec_draft_path=draft.path, spec_draft_prepare_s=draft.prepare_s)
        record["engine_reused"] = session.loaded_path == prepared.path  # load_s ~0: the model was already loaded
        record.update(measure_run(cfg, work, session, prepared.path))
        heads = [r["output_head"] for r in record["request_samples"]]
        record.update(agreement_fields(work.sampling, reference, heads))
        record.update(exactness_fields(cfg, spec_reference, heads))
        remember_plain_outputs(cfg, work, session.engine.resolved, heads)  # the reference of speculative points
        record["status"] = "ok"
    except Exception as exc:  # the run failed: keep it as a row with its error
        record["status"] = _failure_status(exc)
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    finally:
        if own_session and session is not None:
            session.close()
    record.update(environment(work.engine_cls.packages))
    return record
