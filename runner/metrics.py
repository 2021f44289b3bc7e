"""Derived figures: pure functions of raw timestamps and counts, so tests can check them by hand.

Definitions follow vLLM's benchmarks. For a request whose batch started at ``start`` and whose
tokens arrived at ``t_1 .. t_n``:
    TTFT = t_1 - start                    (time to first token)
    E2EL = t_n - start                    (end-to-end latency)
    TPOT = (E2EL - TTFT) / (n - 1)        (time per output token after the first; none when n = 1)
    ITL  = t_{i+1} - t_i for every i      (inter-token latencies, pooled over requests)
Throughputs divide token counts by the measured time: the sum of the batch latencies, warm-up excluded.
With ``measure.repetitions`` > 1 the same batches are measured again; every sample carries its repetition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from runner.stats import cv, interval, ratio_ci, steady_state


@dataclass
class Stats:
    mean: Optional[float] = None
    p50: Optional[float] = None
    p90: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        if len(values) == 0:
            return cls()
        arr = np.asarray(values, dtype=float)
        p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])  # linear interpolation, as vLLM
        return cls(mean=float(arr.mean()), p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99))


@dataclass
class RequestSample:
    batch: int
    input_tokens: int
    output_tokens: int
    ttft_ms: Optional[float] = None
    e2el_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    itl_ms: list[float] = field(default_factory=list)
    output_head: list[int] = field(default_factory=list)  # the first generated token ids (quality checks)
    repetition: int = 0


@dataclass
class BatchSample:
    batch: int
    size: int
    input_tokens: int
    output_tokens: int
    latency_ms: float  # generate() call, device synchronized on both sides
    ttft_ms: Optional[float] = None  # first token of the batch (prefill + one step)
    decode_ms: Optional[float] = None  # first token to the last token of the batch
    # Until every sequence of the batch has its first token: the whole prefill, also when the engine
    # prefills in chunks (vLLM) and the first sequence's token comes long before the last one's.
    prefill_ms: Optional[float] = None
    repetition: int = 0


@dataclass
class Summary:
    prompts: int
    batches: int
    input_tokens: int
    output_tokens: int
    measured_s: float
    output_tok_s: float
    total_tok_s: float
    requests_per_s: float
    batch_latency_ms: Stats
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats
    latency_note: Optional[str] = None  # why the per-request latencies are empty, when they are


def request_sample(batch: int, input_tokens: int, start: float, token_times: Optional[list[float]],
                   output_tokens: int) -> RequestSample:
    """Per-request latencies from the batch start and the request's token timestamps (seconds)."""
    sample = RequestSample(batch=batch, input_tokens=input_tokens, output_tokens=output_tokens)
    if not token_times:
        return sample
    sample.ttft_ms = (token_times[0] - start) * 1e3
    sample.e2el_ms = (token_times[-1] - start) * 1e3
    if len(token_times) > 1:
        sample.tpot_ms = (sample.e2el_ms - sample.ttft_ms) / (len(token_times) - 1)
    sample.itl_ms = [(b - a) * 1e3 for a, b in zip(token_times, token_times[1:])]
    return sample


def summarize(batches: list[BatchSample], requests: list[RequestSample]) -> Summary:
    measured_s = sum(b.latency_ms for b in batches) / 1e3
    input_tokens = sum(b.input_tokens for b in batches)
    output_tokens = sum(b.output_tokens for b in batches)

    def present(name: str) -> list[float]:
        return [v for r in requests if (v := getattr(r, name)) is not None]

    return Summary(
        prompts=len(requests),
        batches=len(batches),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        measured_s=measured_s,
        output_tok_s=output_tokens / measured_s,
        total_tok_s=(input_tokens + output_tokens) / measured_s,
        requests_per_s=len(requests) / measured_s,
        batch_latency_ms=Stats.of([b.latency_ms for b in batches]),
        ttft_ms=Stats.of(present("ttft_ms")),
        tpot_ms=Stats.of(present("tpot_ms")),
        itl_ms=Stats.of([itl for r in requests for itl in r.itl_ms]),
        e2el_ms=Stats.of(present("e2el_ms")),
        latency_note=None if present("ttft_ms") else "the engine gives no per-token timestamps",
    )


def repetition_rates(batches: list[BatchSample]) -> list[float]:
    """Output tok/s of each repetition: its tokens over its summed batch latencies."""
    reps = sorted({b.repetition for b in batches})
    return [sum(b.output_tokens for b in batches if b.repetition == r)
            / (sum(b.latency_ms for b in batches if b.repetition == r) / 1e3) for r in reps]


def headline_uncertainty(batches: list[BatchSample], requests: list[RequestSample]) -> dict:
    """95 % intervals and CVs of the headline figures, and the steady-state verdict.

    output tok/s: with two or more repetitions the unit is a repetition (each measures the same
    batches, so the spread is run-to-run noise); with one, the unit is a batch (with enough batches,
    resampled batches, tokens and seconds summed: the spread then includes the prompts' differences too).
    TTFT and TPOT: the interval of the mean over batches (each batch of each repetition is one unit: the
    requests of one static batch share one clock, e.g. one first-token time, so they are not independent
    samples), and the CV of the per-request values. One batch gives no interval.
    Below runner.stats.BOOTSTRAP_MIN_SAMPLES units the interval is Student's t, else the bootstrap.
    """
    reps = sorted({b.repetition for b in batches})
    per_rep = repetition_rates(batches)
    if len(reps) >= 2:
        tok_s, unit = interval(per_rep), "repetition"
    else:
        tok_s, unit = interval([b.output_tokens / (b.latency_ms / 1e3) for b in batches]), "batch"
        if tok_s.method == "bootstrap":
            ci = ratio_ci([b.output_tokens for b in batches], [b.latency_ms / 1e3 for b in batches])
            tok_s.ci_low, tok_s.ci_high = ci if ci else (None, None)
    steady, note = steady_state(per_rep)
    fields = {
        "repetitions": len(reps),
        "output_tok_s_samples": per_rep,
        "output_tok_s_ci_low": tok_s.ci_low,
        "output_tok_s_ci_high": tok_s.ci_high,
        "output_tok_s_cv": tok_s.cv,
        "output_tok_s_ci_unit": unit,
        "output_tok_s_ci_method": tok_s.method,
        "steady_state": steady,
        "steady_state_note": note,
    }
    for name in ("ttft_ms", "tpot_ms"):
        units: dict[tuple[int, int], list[float]] = {}
        for r in requests:
            if (value := getattr(r, name)) is not None:
                units.setdefault((r.repetition, r.batch), []).append(value)
        stat = interval([float(np.mean(v)) for v in units.values()])
        fields.update({f"{name}_mean_ci_low": stat.ci_low, f"{name}_mean_ci_high": stat.ci_high,
                       f"{name}_cv": cv([v for values in units.values() for v in values])})
    fields["latency_ci_unit"] = "batch"
    return fields
