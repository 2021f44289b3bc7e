"""Greedy agreement with a reference: does this engine or quantization change the text?

The reference is HF transformers at full precision for the device (float32 on CPU, float16 on CUDA),
greedy, each prompt alone (no padding), on the first ``measure.agreement_prompts`` prompts of the run,
for the first 32 tokens. It is computed once per model, prompts and settings and cached on disk, never
inside a timed region. A run's agreement is the share of positions, among those first tokens, where
its own greedy output holds the same token as the reference (vLLM-style "exact match" per position).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import engines
from engines.base import SamplingSpec
from runner.cache import cache_root
from runner.config import BenchConfig
from runner.models import prepare
from runner.records import write_json_atomic

AGREEMENT_TOKENS = 32
REFERENCE_ENGINE = "hf"  # its default config: dtype auto (float32 on CPU, float16 on CUDA)


def agreement(reference: list[list[int]], outputs: list[list[int]]) -> float:
    """Share of identical tokens, position by position, over the reference's positions."""
    total = sum(len(ref) for ref in reference)
    same = sum(a == b for ref, out in zip(reference, outputs) for a, b in zip(ref, out))
    return same / total


def _reference_path(cfg: BenchConfig, prompts: list[list[int]], sampling: SamplingSpec) -> Path:
    n_tokens = min(AGREEMENT_TOKENS, sampling.max_new_tokens)
    key = hashlib.sha256(json.dumps([cfg.model.name, cfg.model.hf, cfg.model.gguf, cfg.model.random,
                                     prompts, n_tokens, sampling.ignore_eos]).encode()).hexdigest()[:16]
    return cache_root(cfg.cache_dir) / "references" / f"{cfg.model.name}-{key}.json"


def _generate_reference(cfg: BenchConfig, prompts: list[list[int]], sampling: SamplingSpec) -> dict:
    engine_class = engines.get_engine_class(REFERENCE_ENGINE)
    engine = engine_class(engines.config_class(REFERENCE_ENGINE)())
    engine.load(prepare(cfg.model, engine_class.model_format, cfg.cache_dir).path)
    try:
        spec = SamplingSpec(max_new_tokens=min(AGREEMENT_TOKENS, sampling.max_new_tokens),
                            ignore_eos=sampling.ignore_eos, temperature=0.0)
        outputs = [engine.generate([prompt], spec)[0].token_ids for prompt in prompts]
        described = f"{REFERENCE_ENGINE} {engine.resolved['dtype']} {engine.resolved['device']} batch 1"
    finally:
        engine.close()
    return {"reference": described, "outputs": outputs}


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reference_outputs(cfg: BenchConfig, prompts: list[list[int]], sampling: SamplingSpec) -> dict:
    """{"reference": what produced it, "outputs": its first tokens per prompt}, cached on disk by model,
    prompts and settings."""
    return cached_in_own_process(_reference_path(cfg, prompts, sampling), _generate_reference, cfg, prompts, sampling)


def cached_in_own_process(path: Path, generate: Callable[..., dict], *args: Any) -> dict:
    """The JSON cached at ``path``, else ``generate(*args)`` (a reference engine's outputs), written there.

    On a GPU ``generate`` runs in a child process of its own, so that the memory it took is the driver's again
    when the child exits, whatever the reference engine's allocator keeps (a worker that keeps an engine loaded
    would otherwise hold a second copy of the weights beside it). On the CPU it runs here: host memory is freed
    when the engine is closed, and a child would cost CI a torch import per reference."""
    if path.is_file():
        return json.loads(path.read_text())
    if on_cuda():
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(generate, *args).result()
    else:
        result = generate(*args)
    write_json_atomic(path, result)
    return result


def agreement_fields(sampling: SamplingSpec, reference: Optional[dict], heads: list[list[int]]) -> dict:
    """The record's agreement fields; the note says why the figure is empty when it is."""
    fields = {"greedy_agreement": None, "greedy_agreement_prompts": 0, "greedy_reference": None,
              "greedy_agreement_note": None}
    if reference is None:
        fields["greedy_agreement_note"] = ("sampling (temperature > 0): no greedy reference"
                                           if sampling.temperature > 0 else "disabled (measure.agreement_prompts=0)")
        return fields
    outputs = reference["outputs"]
    fields.update(greedy_agreement=agreement(outputs, heads[:len(outputs)]), greedy_agreement_prompts=len(outputs),
                  greedy_reference=reference["reference"])
    return fields


def _wanted(cfg: BenchConfig, sampling: SamplingSpec) -> bool:
    return cfg.measure.agreement_prompts > 0 and sampling.temperature == 0


def reference_missing(cfg: BenchConfig, prompts: list[list[int]], sampling: SamplingSpec) -> bool:
    """This run wants a reference that is not cached yet: getting it loads the reference model."""
    return _wanted(cfg, sampling) and not _reference_path(
        cfg, prompts[:cfg.measure.agreement_prompts], sampling).is_file()


def wanted_reference(cfg: BenchConfig, prompts: list[list[int]], sampling: SamplingSpec) -> Optional[dict]:
    """The reference for this run, or None when agreement is off or meaningless (sampling)."""
    if not _wanted(cfg, sampling):
        return None
    return reference_outputs(cfg, prompts[:cfg.measure.agreement_prompts], sampling)
