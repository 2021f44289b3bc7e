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


def test_tpot_is_per_request_and_itl_is_pooled_so_their_means_differ():
    # Request A: 4 tokens 10 ms apart -> TPOT 10 ms, ITLs 10, 10, 10. Request B: 2 tokens 40 ms apart -> TPOT 40.
    a = request_sample(0, 5, 0.0, [0.100, 0.110, 0.120, 0.130], 4)
    b = request_sample(0, 5, 0.0, [0.100, 0.140], 2)
    s = summarize([BatchSample(0, 2, 10, 6, 140.0)], [a, b])
    assert s.tpot_ms.mean == pytest.approx((10 + 40) / 2)  # 25 ms: the mean of per-request TPOTs
    assert s.itl_ms.mean == pytest.approx((10 + 10 + 10 + 40) / 4)  # 17.5 ms: every gap, pooled
    assert s.latency_note is None


def test_p95_interpolates_linearly():
    # 11 values 0..10: the 95th percentile sits at rank 0.95 · 10 = 9.5 -> 9.5
    assert Stats.of([float(v) for v in range(11)]).p95 == pytest.approx(9.5)


def test_an_engine_without_timestamps_leaves_latencies_empty_and_says_why():
    s = summarize([BatchSample(0, 1, 4, 7, 70.0)], [request_sample(0, 4, 0.0, None, 7)])
    assert s.ttft_ms == Stats() and s.tpot_ms == Stats() and s.output_tok_s == pytest.approx(100.0)
    assert s.latency_note == "the engine gives no per-token timestamps"


def test_memory_sampler_counts_children_and_keeps_its_rate():
    import subprocess
    import sys
    import time

    from runner.memory import HOST_ONLY_MAX_HZ, MemorySampler, nvml

    sampler = MemorySampler(100.0)
    sampler.start()
    # A child holding 200 MiB: VmHWM of this process never sees it; the tree sum must.
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(200 * 2**20); time.sleep(1.5)"])
    time.sleep(1.2)
    child.wait()
    sampler.stop()
    fields = sampler.fields()
    assert fields["host_peak_rss_tree_mib"] > 200
    # 100 Hz beside a GPU; without one it shares the CPU with the engine and takes at most 10 Hz
    target = 100.0 if nvml()[1] else HOST_ONLY_MAX_HZ
    assert fields["memory_sample_hz_target"] == target
    assert fields["memory_sample_hz_achieved"] > target / 2  # ~the target on an idle machine; it sleeps between samples


def test_a_kept_engines_device_peak_counts_from_before_its_load(monkeypatch):
    """A worker's reused engine starts its point with its weights already on the device: the sampler takes the
    baseline read before the engine was loaded, so its device peak is the engine's whole use, as on a fresh
    point (it read 450 MiB for a 6.7 GiB int8 model on an H200). The device is NVML's answer, faked here."""
    import os
    from types import SimpleNamespace

    import runner.memory as memory

    used = {"bytes": 3 * 2**30}
    fake = SimpleNamespace(nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=used["bytes"]),
                           nvmlDeviceGetComputeRunningProcesses=lambda handle: [])
    monkeypatch.setattr(memory, "nvml", lambda: (fake, ["gpu0"], None))
    kept = memory._Readings(os.getpid(), exclude=0, baseline_bytes=2**30)
    fresh = memory._Readings(os.getpid(), exclude=0)
    used["bytes"] = 4 * 2**30
    kept.sample(), fresh.sample()
    assert kept.fields(1.0)["device_peak_used_mib"] == 3 * 1024
    assert fresh.fields(1.0)["device_peak_used_mib"] == 1024


def test_the_sampler_process_hands_back_the_baseline_it_used():
    from runner.memory import MemorySampler

    for given, expected in ((None, 0), (5 * 2**20, 5 * 2**20)):  # no GPU here: a reading of 0 bytes
        sampler = MemorySampler(100.0, baseline_bytes=given)
        sampler.start()
        sampler.stop()
        assert sampler.baseline_bytes == expected and "_device_baseline_bytes" not in sampler.fields()


def test_the_sampler_runs_this_copy_of_the_runner_not_another_one_on_the_path(tmp_path, monkeypatch):
    """Another copy of the project first on PYTHONPATH (an install of another checkout, say) must not be what
    the sampler process runs; a checkout run without any install must start it too."""
    from runner.memory import MemorySampler

    other = tmp_path / "runner"
    other.mkdir()
    (other / "__init__.py").write_text("")
    (other / "memory.py").write_text("raise SystemExit(3)  # another version's sampler\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # `python -m` puts the working directory first: not the checkout
    sampler = MemorySampler(100.0)
    sampler.start()
    sampler.stop()
    assert sampler.fields()["host_peak_rss_tree_mib"] > 0


def test_energy_fields_by_hand():
    from runner.energy import EnergyMeter, energy_fields

    # 300 J over 10 s for 1000 output tokens -> 0.3 J/token, 30 W
    fields = energy_fields(300.0, 1000, 10.0, "NVML total energy, 1 GPU(s)", None)
    assert (fields["joules_per_output_token"], fields["avg_power_w"]) == (pytest.approx(0.3), pytest.approx(30.0))
    empty = energy_fields(None, 1000, 10.0, None, "no NVIDIA GPU")
    assert empty["energy_j"] is None and empty["energy_note"] == "no NVIDIA GPU"
    meter = EnergyMeter()  # on a machine without NVML or readable RAPL: empty, with the reason
    meter.start()
    meter.stop()
    if meter.source is None:
        assert meter.fields(10, 1.0)["energy_note"]


def test_provenance_names_the_commit_and_a_given_commit_wins_over_a_stale_git(monkeypatch):
    import subprocess

    from runner.environment import PROJECT_ROOT, environment

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    env = environment()
    assert env["env_git_commit"] == head and env["env_git_dirty"] in (True, False)
    monkeypatch.setenv("LLM_BENCH_GIT_COMMIT", "0123abc")  # the GPU machine's copy: its .git may lag
    env = environment()
    assert env["env_git_commit"] == "0123abc" and env["env_git_dirty"] is None
