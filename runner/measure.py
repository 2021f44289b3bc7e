"""The timed loop: warm-up, then every batch timed with the device synchronized around it, repeated.

Only the batches are timed. Memory is sampled in a background thread throughout; energy is read right
around the measured repetitions; perplexity and the roofline's peak measurements come after them.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Optional

from tqdm import tqdm

from engines.base import Engine, SamplingSpec, now
from runner import compilation
from runner.energy import EnergyMeter
from runner.memory import MIB, HostPeak, MemorySampler, release_cached_device_memory
from runner.metrics import BatchSample, RequestSample, headline_uncertainty, repetition_rates, request_sample, summarize
from runner.perplexity import perplexity_fields
from runner.quality import AGREEMENT_TOKENS
from runner.records import flatten
from runner.roofline import kv_element_bytes, measured_peak, model_shape, roofline_fields, table_peak
from runner.speculative import counts_fields
from runner.stats import relative_half_width

if TYPE_CHECKING:
    from runner.config import BenchConfig
    from runner.plan import Workload
    from runner.session import EngineSession


def chunk(prompts: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    return [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]


def batch_size_fields(requested: int, sizes: list[int]) -> dict[str, Any]:
    """The batch size really run (the largest batch), and a note when it is not what was asked for every batch:
    ``batch_size=16 dataset.limit=4`` runs one batch of 4, and its row must say 4, not 16."""
    ran = max(sizes)
    notes = []
    if ran != requested:
        notes.append(f"batch_size={requested} asked, but the slice has {sum(sizes)} prompts: batches of {ran} ran")
    elif len(set(sizes)) > 1:
        notes.append(f"the last batch held {sizes[-1]} of {ran} prompts ({sum(sizes)} prompts in all)")
    return {"batch_size": ran, "batch_size_requested": requested, "batch_size_note": "; ".join(notes) or None}


def warmup_batches(batches: list[list[list[int]]], count: int, shape_specialized: bool) -> list[list[list[int]]]:
    """The batches the warm-up runs: the first ``count``; for an engine whose compiled code specializes to shapes,
    also the batch with the longest prompt first (a static cache keeps the longest length it has seen) and one
    batch of every other size (an uneven last batch), so that nothing compiles inside the timed region."""
    chosen = list(batches[:count])
    if shape_specialized and batches:
        longest = max(batches, key=lambda b: max(map(len, b)))
        chosen = [longest, *(b for b in chosen if b is not longest)]
        for batch in batches:
            if len(batch) not in {len(b) for b in chosen}:
                chosen.append(batch)
    return chosen


def warm_up(engine: Engine, batches: list[list[list[int]]], sampling: SamplingSpec) -> None:
    """Untimed runs: compilation, allocator growth and caches settle here.

    These prompts are measured again afterwards, so the measured set is the same with or without warm-up.
    """
    for batch in batches:
        engine.generate(batch, sampling)
    engine.synchronize()


def measure(engine: Engine, batches: list[list[list[int]]], sampling: SamplingSpec,
            repetition: int = 0) -> tuple[list[BatchSample], list[RequestSample]]:
    batch_samples: list[BatchSample] = []
    request_samples: list[RequestSample] = []
    for index, batch in enumerate(tqdm(batches, desc=f"batches (repetition {repetition})", unit="batch")):
        engine.synchronize()
        start = now()
        generations = engine.generate(batch, sampling)
        engine.synchronize()
        end = now()
        requests = [
            request_sample(index, len(prompt), start, gen.token_times, len(gen.token_ids))
            for prompt, gen in zip(batch, generations)
        ]
        for request, gen in zip(requests, generations):
            request.output_head = gen.token_ids[:AGREEMENT_TOKENS]
            request.repetition = repetition
        firsts = [g.token_times[0] for g in generations if g.token_times]
        lasts = [g.token_times[-1] for g in generations if g.token_times]
        batch_samples.append(BatchSample(
            batch=index,
            size=len(batch),
            input_tokens=sum(len(p) for p in batch),
            output_tokens=sum(len(g.token_ids) for g in generations),
            latency_ms=(end - start) * 1e3,
            ttft_ms=(min(firsts) - start) * 1e3 if firsts else None,
            decode_ms=(max(lasts) - min(firsts)) * 1e3 if firsts else None,
            prefill_ms=(max(firsts) - start) * 1e3 if firsts else None,
            repetition=repetition,
        ))
        request_samples.extend(requests)
    return batch_samples, request_samples


def measure_repeated(engine: Engine, batches: list[list[list[int]]], sampling: SamplingSpec, repetitions: int,
                     min_duration_s: float = 0.0, target_rel_ci: Optional[float] = None,
                     max_repetitions: Optional[int] = None) -> tuple[list[BatchSample], list[RequestSample], str]:
    """All batches ``repetitions`` times, then more while their summed latency is under ``min_duration_s`` or the
    95 % interval of output tok/s over repetitions is wider than ± ``target_rel_ci`` of its mean, up to
    ``max_repetitions`` (MLPerf's minimum duration, with a precision target). Returns the samples and why it
    stopped: repetitions, min_duration_s, target_rel_ci or max_repetitions (the cap: the target was not met)."""
    batch_samples: list[BatchSample] = []
    request_samples: list[RequestSample] = []
    cap = max(max_repetitions or repetitions, repetitions)
    repetition = 0
    while True:
        more_batches, more_requests = measure(engine, batches, sampling, repetition)
        batch_samples += more_batches
        request_samples += more_requests
        repetition += 1
        if repetition < repetitions:
            continue
        short = sum(b.latency_ms for b in batch_samples) / 1e3 < min_duration_s
        rel = relative_half_width(repetition_rates(batch_samples)) if target_rel_ci is not None else None
        loose = target_rel_ci is not None and (rel is None or rel > target_rel_ci)
        if not short and not loose:
            reason = "target_rel_ci" if target_rel_ci is not None else (
                "min_duration_s" if repetition > repetitions else "repetitions")
            return batch_samples, request_samples, reason
        if repetition >= cap:
            return batch_samples, request_samples, "max_repetitions"


def _warmup_sampling(cfg: "BenchConfig", sampling: SamplingSpec, engine: Engine, warm: bool) -> SamplingSpec:
    """Full length, except for an engine a worker already ran (isolation=worker, measure.reused_warmup_tokens):
    then a few tokens give the new batch shape its first prefill and decode calls, at a fraction of the cost.
    Not for shape-specialized engines: a static cache sized for a few tokens would be outgrown while timing."""
    short = cfg.measure.reused_warmup_tokens
    if warm and short is not None and short < sampling.max_new_tokens \
            and not engine.shape_specialized:
        return replace(sampling, max_new_tokens=short)
    return sampling


def measure_run(cfg: "BenchConfig", work: "Workload", session: "EngineSession", model_path: str) -> dict[str, Any]:
    """Load the model, warm up, time every batch; the measured fields of the record. ``session.warm`` (an earlier
    point ran this engine) keeps the allocator's cache and the device baseline, and may allow a short warm-up
    (_warmup_sampling)."""
    engine = session.engine
    # A kept engine's memory is already in use when its point starts: its device peak counts from the reading
    # before the engine was loaded, as a fresh engine's does.
    baseline = session.device_baseline_bytes if session.warm else None
    sampler = MemorySampler(cfg.measure.memory_sample_hz, baseline_bytes=baseline)
    host, energy = HostPeak(), EnergyMeter()
    if not session.warm:
        # A fresh engine: an honest NVML baseline. Not for one a worker keeps: its allocator would have to
        # grow again inside the timed region after a short warm-up (eager HF: 0.69x of its own loop on an H200)
        release_cached_device_memory()
    host.reset()
    sampler.start()
    try:
        start = now()
        session.load(model_path)
        engine.synchronize()
        load_s = now() - start
        batches = chunk(work.prompts, cfg.batch_size)
        # read after load: loading another model path makes the session cold again
        warmup_sampling = _warmup_sampling(cfg, work.sampling, engine, session.warm)
        warmup = warmup_batches(batches, cfg.measure.warmup_batches, engine.shape_specialized)
        compiled_before_warmup = compilation.snapshot()
        warmup_start = now()
        warm_up(engine, warmup, warmup_sampling)
        warmup_s = now() - warmup_start
        compiled_before_timing = compilation.snapshot()
        engine.take_spec_counts()  # speculative decoding: the warm-up's counts are dropped
        engine.reset_peak_memory()
        energy.start()
        region_start = now()
        m = cfg.measure
        batch_samples, request_samples, stop_reason = measure_repeated(
            engine, batches, work.sampling, m.repetitions, m.min_duration_s, m.target_rel_ci, m.max_repetitions)
        engine.synchronize()
        region_s = now() - region_start
        energy.stop()
        compiled_after_timing = compilation.snapshot()
        spec_counts = engine.take_spec_counts()  # the measured region's, read after it (vLLM: a metrics call)
    finally:
        sampler.stop()
    session.device_baseline_bytes = sampler.baseline_bytes
    summary = flatten(summarize(batch_samples, request_samples))
    weights = engine.weights_bytes()
    record = {
        **engine.resolved,
        **batch_size_fields(cfg.batch_size, [len(b) for b in batches]),
        "load_s": load_s,
        "weights_mib": weights / MIB if weights is not None else None,
        **summary,
        **headline_uncertainty(batch_samples, request_samples),
        "host_peak_rss_mib": host.peak_mib(),
        "host_peak_rss_method": host.method,
        **sampler.fields(),
        "torch_peak_allocated_mib": None,
        "torch_peak_reserved_mib": None,
        **engine.device_memory(),
        "measured_region_s": region_s,
        "stop_reason": stop_reason,
        "stopped_at_cap": stop_reason == "max_repetitions",
        "warmup_new_tokens": warmup_sampling.max_new_tokens if warmup else 0,
        "warmup_batches_run": len(warmup),
        "warmup_s": warmup_s,
        **compilation.fields(compiled_before_warmup, compiled_before_timing, compiled_after_timing),
        **energy.fields(summary["output_tokens"], region_s),
        **counts_fields(spec_counts),
        "batch_samples": [asdict(b) for b in batch_samples],
        "request_samples": [asdict(r) for r in request_samples],
    }
    record.update(perplexity_fields(session, work.prompts, cfg.measure.perplexity_prompts))
    record.update(_roofline(cfg, engine, model_path, weights, record))
    return record


def _roofline(cfg: "BenchConfig", engine: Engine, model_path: str, weights: int | None,
              record: dict[str, Any]) -> dict[str, Any]:
    """Roofline fields; the peak measurement runs once per machine (cached), after the timed region."""
    from runner.cache import cache_root
    from runner.environment import accelerator_name

    device = "cuda" if str(engine.resolved.get("device", "cpu")).startswith("cuda") else "cpu"
    name = accelerator_name(device)
    table = table_peak(name) if device == "cuda" else None
    measure_error = None
    try:
        measured = measured_peak(device, name, cache_root(cfg.cache_dir))
    except Exception as exc:  # e.g. no room left on the device for the copy buffers
        measured, measure_error = None, f"peak measurement failed: {type(exc).__name__}: {exc}"
    shape = model_shape(model_path)
    fields = roofline_fields(weights, shape, kv_element_bytes(record.get("dtype")), record, table, measured)
    if table is None:
        why = f"no datasheet peak for '{name}' (CPU, or a GPU missing from runner/roofline.py)"
        fields["roofline_note"] = "; ".join(filter(None, [fields["roofline_note"], why]))
    if measure_error:
        fields["roofline_note"] = "; ".join(filter(None, [fields["roofline_note"], measure_error]))
    return {"roofline_device_name": name, **fields}
