"""Derived figures checked against arithmetic done by hand."""

from __future__ import annotations

import pytest

from runner.metrics import BatchSample, Stats, request_sample, summarize
from runner.records import flatten


def test_request_latencies_from_known_timestamps():
    # Batch starts at t=10.0 s; tokens arrive at 10.1, 10.15, 10.25, 10.30 s.
    r = request_sample(batch=0, input_tokens=5, start=10.0, token_times=[10.1, 10.15, 10.25, 10.30], output_tokens=4)
    assert r.ttft_ms == pytest.approx(100.0)
    assert r.e2el_ms == pytest.approx(300.0)
    # TPOT = (300 - 100) / (4 - 1) = 66.67 ms; the ITLs are 50, 100, 50 ms (their mean is the TPOT).
    assert r.tpot_ms == pytest.approx(200.0 / 3)
    assert r.itl_ms == pytest.approx([50.0, 100.0, 50.0])


def test_single_token_request_has_no_tpot():
    r = request_sample(batch=0, input_tokens=5, start=0.0, token_times=[0.2], output_tokens=1)
    assert (r.ttft_ms, r.e2el_ms, r.tpot_ms, r.itl_ms) == (pytest.approx(200.0), pytest.approx(200.0), None, [])


def test_request_without_timestamps_has_empty_latencies():
    r = request_sample(batch=0, input_tokens=5, start=0.0, token_times=None, output_tokens=7)
    assert (r.ttft_ms, r.e2el_ms, r.tpot_ms, r.output_tokens) == (None, None, None, 7)


def test_stats_percentiles_interpolate_linearly():
    s = Stats.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.mean, s.p50, s.p90, s.p99) == pytest.approx((3.0, 3.0, 4.6, 4.96))
    assert Stats.of([]) == Stats()


def test_summary_throughput_divides_tokens_by_measured_time():
    batches = [
        BatchSample(batch=0, size=2, input_tokens=20, output_tokens=16, latency_ms=500.0),
        BatchSample(batch=1, size=2, input_tokens=30, output_tokens=16, latency_ms=1500.0),
    ]
    requests = [request_sample(i // 2, 10, 0.0, [0.1 * (k + 1) for k in range(8)], 8) for i in range(4)]
    s = summarize(batches, requests)
    assert s.measured_s == pytest.approx(2.0)
    assert s.output_tok_s == pytest.approx(32 / 2.0)
    assert s.total_tok_s == pytest.approx((50 + 32) / 2.0)
    assert s.requests_per_s == pytest.approx(4 / 2.0)
    assert s.batch_latency_ms.mean == pytest.approx(1000.0)
    assert s.ttft_ms.mean == pytest.approx(100.0)
    assert s.tpot_ms.mean == pytest.approx(100.0)


def test_flatten_names_columns_with_units():
    flat = flatten(summarize([BatchSample(0, 1, 4, 2, 10.0)], [request_sample(0, 4, 0.0, [0.001, 0.003], 2)]))
    assert flat["ttft_ms_p50"] == pytest.approx(1.0)
    assert flat["batch_latency_ms_p99"] == pytest.approx(10.0)
    assert flatten({"engine": {"dtype": "bf16", "engine_kwargs": {}}}) == {"engine_dtype": "bf16", "engine_engine_kwargs": None}


def test_greedy_agreement_counts_identical_tokens_by_position():
    from runner.quality import agreement

    reference = [[1, 2, 3, 4], [5, 6, 7, 8]]
    # first: 3 of 4 positions equal (the third differs); second: diverges at the second token -> 1 of 4
    assert agreement(reference, [[1, 2, 9, 4], [5, 9, 9, 9]]) == pytest.approx(4 / 8)
    assert agreement(reference, reference) == 1.0
    assert agreement(reference, [[1, 2], [5, 6, 7, 8]]) == pytest.approx(6 / 8)  # a shorter output misses positions
