"""The timed loop: warm-up, then every batch timed with the device synchronized around it."""

from __future__ import annotations

from tqdm import tqdm

from engines.base import Engine, SamplingSpec, now
from runner.metrics import BatchSample, RequestSample, request_sample
from runner.quality import AGREEMENT_TOKENS


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
