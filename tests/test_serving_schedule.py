"""scenario=serving without a server: the metric arithmetic by hand, the arrival schedule (rates, ramps, vLLM's
rescaled schedule), and the serving config's composition and ramp errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from tests.helpers import ROOT


def test_metrics_by_hand():
    from runner.serving.client import RequestResult
    from runner.serving.metrics import summarize_serving

    # sent at 10 s; tokens at +0.1, +0.3, +0.4 (a 2-token chunk), n = 4 -> TTFT 100, E2EL 400, TPOT 100
    a = RequestResult(index=0, input_tokens=5, sent_at=10.0, ok=True, chunk_times=[10.1, 10.3, 10.4],
                      chunk_tokens=[1, 1, 2], output_tokens=4)
    b = RequestResult(index=1, input_tokens=7, sent_at=11.0, ok=True, chunk_times=[11.5], chunk_tokens=[1],
                      output_tokens=1)
    failed = RequestResult(index=2, input_tokens=9, sent_at=11.0, error="HTTP 500")
    got = summarize_serving([a, b, failed], duration_s=2.0, slo_ttft_ms=200)
    assert got["completed_requests"] == 2 and got["failed_requests"] == 1
    assert got["output_tokens"] == 5 and got["input_tokens"] == 12  # the failed request counts nowhere
    assert got["ttft_ms_mean"] == pytest.approx(300) and got["ttft_ms_p50"] == pytest.approx(300)
    assert got["tpot_ms_mean"] == pytest.approx(100)  # b has one token: no TPOT
    assert got["itl_ms_mean"] == pytest.approx(150)  # gaps 200 and 100, one per chunk
    assert got["e2el_ms_p99"] == pytest.approx(400 + 0.99 * (500 - 400))
    assert got["requests_per_s"] == 1.0 and got["requests_per_hour"] == 3600 and got["output_tok_s"] == 2.5
    assert got["goodput_share"] == pytest.approx(1 / 3) and got["goodput_requests_per_s"] == 0.5


@pytest.mark.parametrize("overrides, message", [
    (["serving.ramp=sine"], "serving.ramp=sine: unknown; valid choices: linear, exponential"),
    (["serving.ramp=linear", "serving.ramp_start_rate=1"], "needs a finite serving.request_rate"),
    (["serving.ramp=linear", "serving.request_rate=4"], "serving.ramp_start_rate=None: serving.ramp=linear needs"),
    (["serving.ramp=exponential", "serving.request_rate=4", "serving.ramp_start_rate=0"],
     "> 0 and < serving.request_rate"),
    (["serving.ramp=linear", "serving.request_rate=4", "serving.ramp_start_rate=4"], "> 0 and < serving.request_rate"),
    (["serving.ramp_start_rate=1", "serving.request_rate=4"], "serving.ramp_start_rate=1.0: only with serving.ramp"),
])
def test_bad_ramp_is_a_config_error(overrides, message):
    from runner.config import ConfigError, register_configs, to_bench_config, validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        bench = to_bench_config(compose("config", overrides=["scenario=serving", "engine=llamacpp", *overrides]))
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(bench)


@pytest.mark.parametrize("ramp", ["linear", "exponential"])
@pytest.mark.parametrize("burstiness", [1.0, 0.5])
def test_ramp_arrival_schedule(ramp, burstiness):
    from runner.serving.client import arrival_gaps_s, target_rates_rps

    n, start, end = 50_000, 1.0, 8.0
    rates = np.array(target_rates_rps(n, end, ramp, start))
    assert rates[0] == start and rates[-1] == pytest.approx(end) and (np.diff(rates) > 0).all()
    progress = (n // 2) / (n - 1)  # vLLM's: the request's position in the run
    expected = start * (end / start) ** progress if ramp == "exponential" else start + (end - start) * progress
    assert rates[n // 2] == pytest.approx(expected)
    gaps = np.array(arrival_gaps_s(n, end, burstiness, 0, ramp, start))
    assert len(gaps) == n and (gaps > 0).all()  # send times (their cumulative sum) strictly rise
    assert gaps.tolist() == arrival_gaps_s(n, end, burstiness, 0, ramp, start)  # seeded
    assert gaps.tolist() != arrival_gaps_s(n, end, burstiness, 1, ramp, start)
    # The mean gap of the first and last tenth is the mean of 1/rate over it (the rate moves within a
    # tenth: 1 -> 1.7/s for this linear ramp), within 5 %: ~3 standard errors of a 5000-gap mean at
    # burstiness 0.5 (gap CV 1.41), ~3.5 at 1 (CV 1).
    tenth = n // 10
    for part in (slice(0, tenth), slice(n - tenth, n)):
        assert gaps[part].mean() == pytest.approx((1 / rates[part]).mean(), rel=0.05)
    assert (1 / rates[tenth]) < gaps[:tenth].mean() < 1 / start * 1.05  # between 1/start and the tenth's end
    assert 1 / end * 0.95 < gaps[-tenth:].mean() < 1 / rates[n - tenth]
    assert target_rates_rps(3, 4.0) == [4.0] * 3  # no ramp: one rate


def test_arrival_gaps_follow_the_rate():
    from runner.serving.client import arrival_gaps_s

    assert arrival_gaps_s(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]
    for burstiness in (1.0, 0.5):
        gaps = arrival_gaps_s(20000, 4.0, burstiness, 0)
        assert sum(gaps) / len(gaps) == pytest.approx(0.25, rel=0.03)  # mean gap 1/rate whatever the shape
    assert arrival_gaps_s(5, 4.0, 1.0, 7) == arrival_gaps_s(5, 4.0, 1.0, 7)  # seeded
    # vLLM's draws for the same seed: np.random.seed(seed), then np.random.gamma(burstiness, 1 / (rate * b)) each
    np.random.seed(7)
    assert arrival_gaps_s(5, 4.0, 0.5, 7) == [np.random.gamma(shape=0.5, scale=1 / (4.0 * 0.5)) for _ in range(5)]


def test_vllm_schedule_offers_the_rate_asked_for():
    """vLLM's benchmark rescales the cumulative gamma delays so the last of N requests goes out at N / rate;
    the raw process ends wherever its draws put it (16 requests at 1 req/s: 21.8 s once, 0.73 req/s)."""
    from runner.serving.client import arrival_gaps_s, send_times_s

    for seed in range(20):
        times = send_times_s(16, 1.0, 1.0, seed)
        assert times[-1] == pytest.approx(16.0) and all(b > a for a, b in zip(times, times[1:]))
        raw = send_times_s(16, 1.0, 1.0, seed, schedule="raw")
        assert raw == pytest.approx(np.cumsum(arrival_gaps_s(16, 1.0, 1.0, seed)).tolist())
        assert times == pytest.approx([t * 16.0 / raw[-1] for t in raw])  # the same draws, one scale
    assert max(abs(send_times_s(16, 1.0, 1.0, s, schedule="raw")[-1] - 16) for s in range(20)) > 2
    # a ramp keeps its own times (vLLM rescales only a fixed rate); inf sends everything at once
    assert send_times_s(4, 8.0, 1.0, 0, "linear", 1.0) == pytest.approx(
        np.cumsum(arrival_gaps_s(4, 8.0, 1.0, 0, "linear", 1.0)).tolist())
    assert send_times_s(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("scenario", ["offline", "serving"])
def test_scenario_options_compose(scenario):
    from runner.config import register_configs, to_bench_config, validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        bench = to_bench_config(compose("config", overrides=[f"scenario={scenario}", "engine=llamacpp"]))
    validate(bench)
    assert bench.scenario == scenario
    assert (bench.serving is None) == (scenario == "offline")
    if scenario == "serving":
        assert math.isinf(bench.serving.request_rate) and bench.server.url is None
