"""Serving figures with vLLM benchmark_serving's definitions; pure functions of the requests' timestamps.

Per successful request, sent at ``s`` with token-carrying chunks arriving at ``c_1 .. c_k`` and ``n``
output tokens in all:
    TTFT = c_1 - s          E2EL = c_k - s          TPOT = (E2EL - TTFT) / (n - 1)   (none when n = 1)
    ITL  = c_{j+1} - c_j    (pooled over requests; a chunk of several tokens is one gap, as in vLLM)
Throughputs divide by the measured phase's wall time (first send to last completion). Failed requests
are counted and left out of every latency and token figure. Goodput: requests meeting every SLO that is
set, as a share of all requests and per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from runner.serving.client import RequestResult

PERCENTILES = (50, 90, 95, 99)


def stats(name: str, values: Sequence[float]) -> dict[str, Optional[float]]:
    """``<name>_mean``, ``<name>_p50`` (median), ``_p90``, ``_p95``, ``_p99``; linear interpolation as vLLM."""
    if len(values) == 0:
        return {f"{name}_mean": None, **{f"{name}_p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values, dtype=float)
    qs = np.percentile(arr, PERCENTILES)
    return {f"{name}_mean": float(arr.mean()), **{f"{name}_p{p}": float(q) for p, q in zip(PERCENTILES, qs)}}


@dataclass
class RequestLatency:
    ttft_ms: float
    e2el_ms: float
    tpot_ms: Optional[float]
    itl_ms: list[float]


def request_latency(result: RequestResult) -> RequestLatency:
    ttft_ms = (result.chunk_times[0] - result.sent_at) * 1e3
    e2el_ms = (result.chunk_times[-1] - result.sent_at) * 1e3
    tpot_ms = (e2el_ms - ttft_ms) / (result.output_tokens - 1) if result.output_tokens > 1 else None
    itl_ms = [(b - a) * 1e3 for a, b in zip(result.chunk_times, result.chunk_times[1:])]
    return RequestLatency(ttft_ms=ttft_ms, e2el_ms=e2el_ms, tpot_ms=tpot_ms, itl_ms=itl_ms)


def meets_slos(latency: RequestLatency, slo_ttft_ms: Optional[float], slo_tpot_ms: Optional[float],
               slo_e2el_ms: Optional[float]) -> bool:
    checks = ((slo_ttft_ms, latency.ttft_ms), (slo_tpot_ms, latency.tpot_ms), (slo_e2el_ms, latency.e2el_ms))
    # A one-token request has no TPOT: it cannot miss a TPOT SLO.
    return all(value is None or limit is None or value <= limit for limit, value in checks)


def summarize_serving(results: list[RequestResult], duration_s: float, slo_ttft_ms: Optional[float] = None,
                      slo_tpot_ms: Optional[float] = None, slo_e2el_ms: Optional[float] = None) -> dict[str, Any]:
    good = [r for r in results if r.ok]
    latencies = [request_latency(r) for r in good]
    output_tokens = sum(r.output_tokens for r in good)
    input_tokens = sum(r.input_tokens for r in good)
    slos_set = any(v is not None for v in (slo_ttft_ms, slo_tpot_ms, slo_e2el_ms))
    within = sum(meets_slos(lat, slo_ttft_ms, slo_tpot_ms, slo_e2el_ms) for lat in latencies)
    return {
        "requests_sent": len(results),
        "completed_requests": len(good),
        "failed_requests": len(results) - len(good),
        "prompts": len(good),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "measured_s": duration_s,
        "requests_per_s": len(good) / duration_s,
        "requests_per_hour": len(good) / duration_s * 3600,
        "output_tok_s": output_tokens / duration_s,
        "total_tok_s": (input_tokens + output_tokens) / duration_s,
        "goodput_share": within / len(results) if slos_set and results else None,
        "goodput_requests_per_s": within / duration_s if slos_set else None,
        **stats("ttft_ms", [lat.ttft_ms for lat in latencies]),
        **stats("tpot_ms", [lat.tpot_ms for lat in latencies if lat.tpot_ms is not None]),
        **stats("itl_ms", [gap for lat in latencies for gap in lat.itl_ms]),
        **stats("e2el_ms", [lat.e2el_ms for lat in latencies]),
    }


def offered_rate_rps(results: list[RequestResult], start: float, request_rate: float) -> Optional[float]:
    """Requests sent per second, as sent: their count over the time from the start to the last send (vLLM's
    definition of the rate: the last of N requests goes out at N / rate). None for rate inf (all at once)."""
    sent = [r.sent_at for r in results if not math.isnan(r.sent_at)]
    if math.isinf(request_rate) or not sent or max(sent) <= start:
        return None
    return len(sent) / (max(sent) - start)


def request_samples(results: list[RequestResult], start: float,
                    target_rates_rps: Optional[Sequence[float]] = None) -> list[dict[str, Any]]:
    """Raw per-request rows kept on the record (failed ones with their error).

    ``sent_s``: when the request went out, seconds after the measured phase began at ``start`` (None if never
    sent); with max_concurrency that can be later than its arrival time. ``target_rate_rps``: the rate its
    arrival was drawn at (a ramp's rate at that point), so latency can be binned by offered load.
    """
    rows = []
    for r in results:
        sent_s = None if math.isnan(r.sent_at) else r.sent_at - start
        row: dict[str, Any] = {"index": r.index, "sent_s": sent_s,
                               "target_rate_rps": None if target_rates_rps is None else target_rates_rps[r.index],
                               "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                               "ok": r.ok, "error": r.error, "finish_reason": r.finish_reason,
                               "token_count_source": r.token_count_source,
                               "chunks": len(r.chunk_times)}
        if r.ok:
            lat = request_latency(r)
            row.update(ttft_ms=lat.ttft_ms, e2el_ms=lat.e2el_ms, tpot_ms=lat.tpot_ms, itl_ms=lat.itl_ms)
        rows.append(row)
    return rows
