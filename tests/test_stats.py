"""Intervals (t and bootstrap), CV and the steady-state check on known data; one real CPU run with repetitions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runner.metrics import BatchSample, headline_uncertainty, request_sample
from runner.stats import (BOOTSTRAP_MIN_SAMPLES, BOOTSTRAP_RESAMPLES, bootstrap_ci, cv, first_out_of_line, interval,
                          mean_ci, ratio_ci, steady_state, t_ci)
from tests.helpers import FAST, IN_PROCESS


def test_constant_data_gives_a_zero_width_interval_and_zero_cv():
    assert bootstrap_ci([5.0] * 10) == (5.0, 5.0)
    assert cv([5.0] * 10) == 0.0


def test_interval_of_a_known_normal_sample_covers_its_mean():
    sample = np.random.default_rng(1).normal(100.0, 10.0, size=200)
    low, high = bootstrap_ci(sample)
    assert low < 100.0 < high
    # The standard error is 10 / sqrt(200) = 0.707; a 95 % interval is about ± 1.96 · 0.707 = ± 1.39 wide.
    assert high - low == pytest.approx(2 * 1.96 * 10 / np.sqrt(200), rel=0.2)


def test_bootstrap_is_seeded_and_documented():
    assert bootstrap_ci([1.0, 2.0, 4.0, 8.0]) == bootstrap_ci([1.0, 2.0, 4.0, 8.0])
    assert BOOTSTRAP_RESAMPLES == 2000


def test_cv_by_hand():
    # mean 5, sample standard deviation sqrt(((2² + 0 + 2²)) / 2) = 2 -> CV 0.4
    assert cv([3.0, 5.0, 7.0]) == pytest.approx(0.4)
    assert cv([1.0]) is None and bootstrap_ci([1.0]) is None
    assert interval([3.0, 5.0, 7.0]).n == 3


def test_t_interval_by_hand_and_the_switch_to_the_bootstrap():
    # mean 5, sd 2, t(0.975, 2 df) = 4.3027: half width 4.3027 * 2 / sqrt(3) = 4.968
    assert t_ci([3.0, 5.0, 7.0]) == pytest.approx((0.032, 9.968), abs=1e-3)
    assert t_ci([10.0, 5.0]) == pytest.approx((0.0, 39.27), abs=0.01)  # 7.5 - 31.77 < 0: clipped at 0
    assert interval([3.0, 5.0, 7.0]).method == "t" and t_ci([1.0]) is None
    many = list(np.random.default_rng(2).normal(100.0, 10.0, size=BOOTSTRAP_MIN_SAMPLES))
    assert mean_ci(many) == (bootstrap_ci(many), "bootstrap")
    assert mean_ci(many[:-1]) == (t_ci(many[:-1]), "t")


def test_with_three_samples_t_covers_the_mean_and_the_bootstrap_does_not():
    """Why small counts use t: 2,000 runs of 3 normal samples (sd 5 around 100, like 3 repetitions)."""
    runs = np.random.default_rng(3).normal(100.0, 5.0, size=(2000, 3))
    covered = {name: np.mean([low <= 100.0 <= high for low, high in map(ci, runs)])
               for name, ci in (("t", t_ci), ("bootstrap", lambda x: bootstrap_ci(x, resamples=400)))}
    print(f"coverage of a nominal 95 % interval from 3 samples: {covered}")
    assert 0.93 <= covered["t"] <= 0.97
    assert covered["bootstrap"] < 0.8  # it cannot leave the samples' range


def test_ratio_interval_of_equal_rate_batches_is_the_rate():
    # Every batch runs at 10 tok/s whatever its size: any resample gives 10.
    assert ratio_ci([10.0, 20.0, 40.0], [1.0, 2.0, 4.0]) == pytest.approx((10.0, 10.0))


def test_steady_state_flags_a_drift_and_passes_noise():
    steady, note = steady_state([100.0, 101.0, 99.0, 100.5, 99.5, 100.0])
    assert steady is True and "first-half" in note
    drifting, _ = steady_state([100.0, 95.0, 90.0, 85.0, 80.0, 75.0])  # throttling: -5 % a repetition
    assert drifting is False
    assert steady_state([1.0, 2.0]) == (None, "needs at least 5 repetitions (measure.repetitions), got 2")


def test_a_first_repetition_the_warm_up_did_not_cover_is_flagged_and_noise_rarely_is():
    """The H200's eager HF points whose prompt lengths the one warm-up batch had not run: their first repetition
    was 37-49 % slow, and the halves' drift check called both steady. The same point on this CPU was not."""
    for h200 in ([24.5, 39.9, 41.4, 38.9, 37.8, 36.1], [15.7, 33.6, 32.1, 29.3, 28.0, 30.3]):
        steady, note = steady_state(h200)
        assert steady is False and "warm-up left work" in note and "measure.warmup_batches" in note
    cpu = [25.3, 25.5, 23.9, 25.7, 25.3, 24.9]
    assert steady_state(cpu)[0] is True and first_out_of_line(cpu) is None
    noise = np.random.default_rng(2).normal(100.0, 5.0, size=(4000, 6))
    false_alarms = np.mean([first_out_of_line(row) is not None for row in noise])
    assert 0.003 < false_alarms < 0.02  # a 99 % prediction interval: ~1 %
    assert first_out_of_line([10.0, 100.0]) is None  # one other repetition: no spread to judge by


def test_too_few_repetitions_for_a_drift_verdict_give_none_not_steady():
    """3 or 4 repetitions cannot show a drift against the bootstrap interval of so few samples: such rows were
    all called steady, the H200 seed's 16.1 / 6.3 / 5.7 s batch among them. No verdict is the honest answer."""
    for drifting in ([16092.0, 6322.0, 5718.0], [100.0, 90.0, 80.0, 70.0]):
        steady, note = steady_state(drifting)
        assert steady is None and note.startswith("needs at least 5 repetitions")
    assert steady_state([100.0, 90.0, 80.0, 70.0, 60.0])[0] is False


def test_headline_uncertainty_uses_repetitions_when_there_are_several():
    # Two repetitions of the same two batches: 20 tokens in 2 s (10 tok/s), then in 4 s (5 tok/s).
    batches = [BatchSample(0, 1, 5, 10, 1000.0, repetition=0), BatchSample(1, 1, 5, 10, 1000.0, repetition=0),
               BatchSample(0, 1, 5, 10, 2000.0, repetition=1), BatchSample(1, 1, 5, 10, 2000.0, repetition=1)]
    requests = [request_sample(b.batch, 5, 0.0, [0.1, 0.2, 0.3], 3) for b in batches]
    for request, batch in zip(requests, batches):
        request.repetition = batch.repetition
    out = headline_uncertainty(batches, requests)
    assert out["output_tok_s_samples"] == pytest.approx([10.0, 5.0])  # 20 tok / 2 s, 20 tok / 4 s
    assert out["output_tok_s_ci_unit"] == "repetition" and out["repetitions"] == 2
    # Two samples: Student's t with 1 degree of freedom, 7.5 ± 12.706 * 3.5355 / sqrt(2), low end clipped at 0
    assert (out["output_tok_s_ci_low"], out["output_tok_s_ci_high"]) == pytest.approx((0.0, 39.27), abs=0.01)
    assert out["output_tok_s_ci_method"] == "t"
    # CV of (10, 5): sd = 3.5355, mean 7.5 -> 0.4714
    assert out["output_tok_s_cv"] == pytest.approx(0.4714, rel=1e-3)
    assert out["tpot_ms_cv"] == pytest.approx(0.0) and out["tpot_ms_mean_ci_low"] == pytest.approx(100.0)
    assert out["steady_state"] is None and out["latency_ci_unit"] == "batch"


def test_latency_intervals_count_a_static_batch_once():
    """The 4 requests of one batch share their first-token time: 4 equal TTFTs are one sample, not 4, so
    there is no interval (a width-0 one was printed before). Two batches give one."""
    one_batch = [request_sample(0, 5, 0.0, [0.1, 0.2], 2) for _ in range(4)]
    out = headline_uncertainty([BatchSample(0, 4, 20, 8, 200.0)], one_batch)
    assert out["ttft_ms_mean_ci_low"] is None and out["ttft_ms_mean_ci_high"] is None
    two = one_batch[:2] + [request_sample(1, 5, 0.0, [0.3, 0.4], 2) for _ in range(2)]
    out = headline_uncertainty([BatchSample(0, 2, 10, 4, 200.0), BatchSample(1, 2, 10, 4, 400.0)], two)
    # units: batch 0's mean TTFT 100 ms, batch 1's 300 ms; t(0.975, 1) = 12.706, sd 141.42 / sqrt(2) = 100
    assert (out["ttft_ms_mean_ci_low"], out["ttft_ms_mean_ci_high"]) == pytest.approx((0.0, 1470.6), abs=0.1)


@pytest.mark.slow
def test_a_cpu_run_with_repetitions_writes_every_new_field(run_cli, tmp_path):
    result = run_cli(*FAST, "measure.repetitions=5", "measure.perplexity_prompts=2", IN_PROCESS)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(next(tmp_path.glob("outputs/runs/*/*/record.json")).read_text())
    assert record["status"] == "ok" and record["repetitions"] == 5
    assert len(record["output_tok_s_samples"]) == 5 and {b["repetition"] for b in record["batch_samples"]} == set(range(5))
    assert record["output_tok_s_ci_low"] <= record["output_tok_s"] * 1.001
    assert record["output_tok_s_ci_high"] >= record["output_tok_s"] * 0.999
    for key in ("output_tok_s_cv", "ttft_ms_mean_ci_low", "tpot_ms_mean_ci_high", "tpot_ms_cv", "ttft_ms_p95",
                "itl_ms_p95", "host_peak_rss_tree_mib", "memory_sample_hz_achieved", "perplexity",
                "decode_bytes_per_step", "mbu_measured", "mfu_decode_measured", "mfu_prefill_measured",
                "peak_bandwidth_gb_s_measured", "matmul_params", "env_cpu_physical_cores", "env_numpy"):
        assert record[key] is not None, key
    assert isinstance(record["steady_state"], bool) and record["steady_state_note"]
    assert 1 < record["perplexity"] < 1000 and record["perplexity_prompts"] == 2
    # No GPU here: each empty figure says why.
    for empty, note in (("energy_j", "energy_note"), ("device_peak_used_mib", "device_memory_note"),
                        ("device_peak_process_mib", "device_process_memory_note"), ("mbu_table", "roofline_note")):
        assert record[empty] is None and record[note], empty
    assert "TTFT ms mean [95% CI]" in result.stdout and "CV" in result.stdout


class _ScriptedEngine:
    """Not an engine under test: a stand-in whose batches take scripted times on a fake clock, so the stopping
    rule's arithmetic is checked exactly (the real engines' runs are in the CLI tests)."""

    def __init__(self, clock: list[float], latencies_s):
        self.clock, self.latencies = clock, iter(latencies_s)

    def synchronize(self):
        pass

    def generate(self, prompts, sampling):
        from engines.base import Generation

        self.clock[0] += next(self.latencies)
        return [Generation(token_ids=[1] * sampling.max_new_tokens) for _ in prompts]


@pytest.mark.parametrize("latencies, kwargs, reps, reason", [
    ([1.0] * 50, dict(repetitions=1), 1, "repetitions"),
    # equal repetitions: the interval has width 0 once there are two
    ([1.0] * 50, dict(repetitions=1, target_rel_ci=0.02, max_repetitions=10), 2, "target_rel_ci"),
    # ±10 % alternation never gets within ±1 % quickly: the cap stops it, and says so
    ([0.9, 1.1] * 25, dict(repetitions=2, target_rel_ci=0.01, max_repetitions=6), 6, "max_repetitions"),
    # ...but within ±10 % it does (tok/s 11.11, 9.09, ...: relative half-width 0.115 after 6, 0.097 after 7)
    ([0.9, 1.1] * 25, dict(repetitions=2, target_rel_ci=0.1, max_repetitions=20), 7, "target_rel_ci"),
    ([1.0] * 50, dict(repetitions=1, min_duration_s=3.5, max_repetitions=10), 4, "min_duration_s"),
    ([1.0] * 50, dict(repetitions=1, min_duration_s=30.0, max_repetitions=5), 5, "max_repetitions"),
])
def test_stopping_rule_stops_on_each_condition(monkeypatch, latencies, kwargs, reps, reason):
    from engines.base import SamplingSpec
    from runner import measure

    clock = [0.0]
    monkeypatch.setattr(measure, "now", lambda: clock[0])
    engine = _ScriptedEngine(clock, latencies)
    batches, _, why = measure.measure_repeated(engine, [[[1, 2]]], SamplingSpec(10, True, 0.0), **kwargs)
    assert (len({b.repetition for b in batches}), why) == (reps, reason)


@pytest.mark.slow
def test_the_console_summary_says_why_a_run_is_not_steady(raw):
    from rich.console import Console

    from runner.summary import print_summary

    record = {**raw[0], "steady_state": False, "steady_state_note": "the first repetition (24.5) is out of line"}
    console = Console(record=True, width=300)
    print_summary(record, console)
    text = console.export_text()
    assert "not steady" in text and "the first repetition (24.5) is out of line" in text
    print_summary({**raw[0], "steady_state": True}, console)
    assert "not steady" not in console.export_text()
