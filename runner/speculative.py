"""Speculative decoding on the runner's side: the draft model (a model config, prepared like the target), the
check that it shares the target's tokenizer, the record's counts, and greedy exactness against the same engine
without speculation.

Exactness: the first ``measure.agreement_prompts`` prompts, in the batches the measured run gives them (batch
1 for an engine that runs speculation one sequence at a time), are generated greedily by the same engine with
``engine.speculative.method=none``, once, before the measured engine loads; cached on disk. A point without
speculation of the same engine config, model, prompts and batches (the ``none`` point of a sweep) leaves its own
greedy outputs in that cache, so the speculative points after it start no engine for their reference.
Speculative decoding verified greedily must reproduce that output token for token: ``spec_exact`` is False
otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import OmegaConf

from engines.base import Engine, SamplingSpec
from engines.speculative import SpecCounts, SpeculativeConfig
from runner.cache import cache_root
from runner.config import BenchConfig, ConfigError, ModelConfig
from runner.models import PreparedModel, prepare
from runner.quality import AGREEMENT_TOKENS, agreement, cached_in_own_process
from runner.records import flatten, write_json_atomic

MODEL_CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


def speculative(cfg: BenchConfig) -> Optional[SpeculativeConfig]:
    """The engine's speculative config when it has one and it is on."""
    spec = getattr(cfg.engine, "speculative", None)
    return spec if spec is not None and spec.on else None


def draft_model(name: str) -> ModelConfig:
    """The model config conf/model/<name>.yaml, as a dataclass (the draft of engine.speculative.draft)."""
    path = MODEL_CONF / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"engine.speculative.draft={name}: no such model config; valid choices: "
                          f"{', '.join(sorted(p.stem for p in MODEL_CONF.glob('*.yaml')))}")
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))


def check_draft(cfg: BenchConfig, tokenizer_of: Callable[[ModelConfig], Any]) -> None:
    """A draft model whose tokenizer is not the target's is refused: its token ids would mean other text.
    ``tokenizer_of(model)`` loads a model's tokenizer (no weights; runner.plan caches them)."""
    spec = speculative(cfg)
    if spec is None or spec.method.value != "draft":
        return
    tokenizer, theirs = tokenizer_of(cfg.model), tokenizer_of(draft_model(spec.draft))
    if theirs is not tokenizer and theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"engine.speculative.draft={spec.draft}: its tokenizer differs from model {cfg.model.name}'s "
                          f"({len(theirs)} vs {len(tokenizer)} tokens); a draft must share the target's tokenizer")


def prepare_draft(cfg: BenchConfig, engine: Engine) -> Optional[PreparedModel]:
    """The draft model in the engine's format (converted once, cached), handed to the engine before it loads."""
    spec = speculative(cfg)
    if spec is None or spec.method.value != "draft":
        return None
    prepared = prepare(draft_model(spec.draft), engine.model_format, cfg.cache_dir)
    engine.use_draft(prepared.path)
    return prepared


def _plain_setup(cfg: BenchConfig, work: Any) -> tuple[Path, Any, list[list[int]], SamplingSpec, int]:
    """Where the plain reference of this point's engine, model, prompts and batches is cached; the engine config
    without speculation, the prompts it covers, its sampling and its batch size."""
    n = cfg.measure.agreement_prompts
    batch = 1 if work.engine_cls.batches_sequentially(cfg.engine) else cfg.batch_size
    prompts = work.prompts[:-(-min(n, len(work.prompts)) // batch) * batch]
    plain = dataclasses.replace(cfg.engine, speculative=SpeculativeConfig())
    spec = SamplingSpec(max_new_tokens=min(AGREEMENT_TOKENS, work.sampling.max_new_tokens),
                        ignore_eos=work.sampling.ignore_eos, temperature=0.0)
    key = hashlib.sha256(json.dumps([flatten(plain), flatten(cfg.model), prompts, dataclasses.asdict(spec), batch],
                                    default=str).encode()).hexdigest()[:16]
    path = cache_root(cfg.cache_dir) / "references" / f"spec-{cfg.model.name}-{cfg.engine.name}-{key}.json"
    return path, plain, prompts, spec, batch


def _exactness_wanted(cfg: BenchConfig, sampling: SamplingSpec) -> bool:
    return cfg.measure.agreement_prompts > 0 and sampling.temperature == 0


def plain_reference(cfg: BenchConfig, work: Any, model_path: str, make_room: Callable[[], None]) -> Optional[dict]:
    """The same engine's greedy output without speculation on the first prompts (module doc), cached; None
    when speculation is off, sampling, or agreement is off. ``make_room`` runs before a reference engine loads
    (a worker's kept engine is closed: two vLLM engines would not fit on one GPU)."""
    if speculative(cfg) is None or not _exactness_wanted(cfg, work.sampling):
        return None
    path, plain, prompts, spec, batch = _plain_setup(cfg, work)
    if path.is_file():
        return json.loads(path.read_text())
    make_room()
    return cached_in_own_process(path, _plain_outputs, work.engine_cls, plain, model_path, prompts, spec, batch,
                                 cfg.measure.agreement_prompts)


def remember_plain_outputs(cfg: BenchConfig, work: Any, resolved: dict, heads: list[list[int]]) -> None:
    """A point without speculation, on an engine that has it, is the plain reference of the speculative points
    of the same engine config, model, prompts and batches: its first greedy tokens go into their cache (module
    doc), which spares each of them an engine start (vLLM on an H200: 35-55 s)."""
    if (speculative(cfg) is not None or getattr(cfg.engine, "speculative", None) is None
            or not _exactness_wanted(cfg, work.sampling)):
        return
    path, plain, prompts, spec, batch = _plain_setup(cfg, work)
    n = min(cfg.measure.agreement_prompts, len(prompts))
    if path.is_file() or batch != cfg.batch_size or len(heads) < n:
        return
    write_json_atomic(path, {
        "reference": _described(plain, resolved, batch) + " (the measured run of that point)",
        "outputs": [head[:spec.max_new_tokens] for head in heads[:n]]})


def _described(plain: Any, resolved: dict, batch: int) -> str:
    return f"{plain.name} {resolved.get('dtype')} {resolved.get('device')} batch {batch}, engine.speculative.method=none"


def _plain_outputs(engine_cls: type, plain: Any, model_path: str, prompts: list[list[int]], spec: SamplingSpec,
                   batch: int, n: int) -> dict:
    """The engine without speculation, greedy, ``batch`` prompts at a time: its outputs on the first ``n``."""
    engine = engine_cls(plain)
    engine.load(model_path)
    try:
        outputs = [g.token_ids for i in range(0, len(prompts), batch)
                   for g in engine.generate(prompts[i:i + batch], spec)]
        described = _described(plain, engine.resolved, batch)
    finally:
        engine.close()
    return {"reference": described, "outputs": outputs[:n]}


def counts_fields(counts: Optional[SpecCounts]) -> dict[str, Any]:
    """The record's counts of the measured region (empty without speculation)."""
    if counts is None:
        return {}
    steps = counts.drafts
    return {
        "spec_counts_source": counts.source,
        "spec_verify_steps": steps,
        "spec_drafted_tokens": counts.drafted_tokens,
        "spec_accepted_tokens": counts.accepted_tokens,
        "spec_acceptance_rate": counts.accepted_tokens / counts.drafted_tokens if counts.drafted_tokens else None,
        "spec_accepted_tokens_per_step_mean": counts.accepted_tokens / steps if steps else None,
        "spec_accepted_tokens_per_step_hist": counts.accepted_hist,
    }


def exactness_fields(cfg: BenchConfig, ref: Optional[dict], heads: list[list[int]]) -> dict[str, Any]:
    """Greedy agreement with the same engine without speculation; the flag; why it is empty when it is."""
    if speculative(cfg) is None:
        return {}
    if ref is None:
        why = "sampling (temperature > 0)" if cfg.generation.temperature > 0 else "measure.agreement_prompts=0"
        return {"spec_greedy_agreement": None, "spec_exact": None, "spec_reference": None,
                "spec_agreement_note": f"no exactness check: {why}"}
    share = agreement(ref["outputs"], heads[:len(ref["outputs"])])
    return {"spec_greedy_agreement": share, "spec_exact": share == 1.0, "spec_reference": ref["reference"],
            "spec_agreement_note": None if share == 1.0 else
            "BELOW 1.0: speculative decoding changed the greedy output of this engine"}
