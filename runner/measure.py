"""The timed loop: warm-up, then every batch timed with the device synchronized around it."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from engines.base import Engine, SamplingSpec, now
from runner.memory import MIB, DeviceSampler, HostPeak, release_cached_device_memory
from runner.metrics import BatchSample, RequestSample, request_sample, summarize
from runner.quality import AGREEMENT_TOKENS
from runner.records import flatten

if TYPE_CHECKING:
    from runner.config import BenchConfig
    from runner.run import Workload


def chunk(prompts: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    return [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]


def warm_up(engine: Engine, batches: list[list[list[int]]], sampling: SamplingSpec, count: int) -> None:
    """Untimed runs on the first ``count`` batches: compilation, allocator growth and caches settle here.

    These prompts are measured again afterwards, so the measured set is the same with or without warm-up.
    """
    for batch in batches[:count]:
        engine.generate(batch, sampling)
    engine.synchronize()


def measure(engine: Engine, batches: list[list[list[int]]],
            sampling: SamplingSpec) -> tuple[list[BatchSample], list[RequestSample]]:
    batch_samples: list[BatchSample] = []
    request_samples: list[RequestSample] = []
    for index, batch in enumerate(tqdm(batches, desc="batches", unit="batch")):
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
        ))
        request_samples.extend(requests)
    return batch_samples, request_samples


def measure_run(cfg: "BenchConfig", work: "Workload", engine: Engine, model_path: str) -> dict[str, Any]:
    """Load the model, warm up, time every batch; the measured fields of the record."""
    host, device = HostPeak(), DeviceSampler(cfg.measure.memory_sample_hz)
    release_cached_device_memory()
    host.reset()
    device.start()
    try:
        start = now()
        engine.load(model_path)
        engine.synchronize()
        load_s = now() - start
        batches = chunk(work.prompts, cfg.batch_size)
        warm_up(engine, batches, work.sampling, cfg.measure.warmup_batches)
        engine.reset_peak_memory()
        batch_samples, request_samples = measure(engine, batches, work.sampling)
    finally:
        device_peak_mib = device.stop()
    weights = engine.weights_bytes()
    return {
        **engine.resolved,
        "load_s": load_s,
        "weights_mib": weights / MIB if weights is not None else None,
        **flatten(summarize(batch_samples, request_samples)),
        "host_peak_rss_mib": host.peak_mib(),
        "host_peak_rss_method": host.method,
        "device_peak_used_mib": device_peak_mib,
        "device_memory_note": device.unavailable_reason,
        "torch_peak_allocated_mib": None,
        "torch_peak_reserved_mib": None,
        **engine.device_memory(),
        "batch_samples": [asdict(b) for b in batch_samples],
        "request_samples": [asdict(r) for r in request_samples],
    }
