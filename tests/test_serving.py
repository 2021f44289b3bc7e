"""scenario=serving end to end: llama-cpp-python's real server on the real SmolLM2, on loopback.

A few minutes on 2 cores: a 3-rate sweep and a ramp run (shared by the module, with one offline run beside
them for the report), the report's serving table against the records, a failing run and an interrupted run
(the server must be gone after each), and config errors. Attach mode is in test_serving_attach.py, the
metric arithmetic and the arrival schedule in test_serving_schedule.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from tests.helpers import FAST, ROOT, markdown_rows, process_gone, read_records, run_runner

pytestmark = pytest.mark.slow  # real CLI runs and servers in subprocesses

SERVE = ["scenario=serving", "engine=llamacpp", "serving.num_requests=4", *FAST]

RAMP = ["serving.ramp=linear", "serving.ramp_start_rate=1", "serving.request_rate=8",
        "serving.slo_ttft_ms=5000", "serving.slo_tpot_ms=1000"]

OFFLINE_ONLY_FIGURES_OFF = ["measure.agreement_prompts=0", "measure.perplexity_prompts=0", "isolation=none"]


@pytest.fixture(scope="module")
def serving_outputs(tmp_path_factory, cache_dir) -> Path:
    """One outputs/ for the module: a 3-rate sweep, a linear ramp with SLOs, and one offline llama.cpp run."""
    cwd = tmp_path_factory.mktemp("serving")
    for args in (["-m", *SERVE, "serving.request_rate=2,8,inf"], [*SERVE, *RAMP], ["engine=llamacpp", *FAST, *OFFLINE_ONLY_FIGURES_OFF]):
        proc = run_runner(cwd, cache_dir, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd / "outputs"


def _serving_records(outputs: Path, ramp: bool) -> list[dict]:
    return [r for r in read_records(outputs) if r["scenario"] == "serving" and bool(r["serving_ramp"]) == ramp]


@pytest.mark.exclusive  # the send schedule to 50 ms (the module's sweep runs in the first of these)
def test_rate_sweep_end_to_end(serving_outputs, tmp_path):
    from runner.results import load_results

    df = load_results(serving_outputs / "multirun")
    assert len(df) == 3 and set(df["status"]) == {"ok"}
    assert sorted(map(str, df["serving_request_rate"])) == ["2.0", "8.0", "inf"]
    for record in _serving_records(serving_outputs, ramp=False):
        assert process_gone(record["server_pid"]), "the launched server outlived its run"
        samples = record["request_samples"]
        rate = record["serving_request_rate"]
        assert [s["target_rate_rps"] for s in samples] == [None if rate == "inf" else rate] * 4
        assert all(0 <= s["sent_s"] <= record["measured_s"] for s in samples)
        # vLLM's schedule: the last of 4 requests goes out at 4 / rate, so the rate offered is the rate asked
        # for (the sleep overruns by a few ms at most); rate inf has none
        if rate == "inf":
            assert record["offered_rate_rps"] is None
        else:
            assert max(s["sent_s"] for s in samples) == pytest.approx(4 / rate, abs=0.05)
            assert record["offered_rate_rps"] == pytest.approx(rate, rel=0.02)
        assert record["completed_requests"] == 4 and record["failed_requests"] == 0
        assert record["output_tokens"] == 4 * 8  # forced length: EOG tokens masked, counted from the server
        for s in samples:
            assert s["output_tokens"] == 8 and s["finish_reason"] == "length"
            assert 0 < s["ttft_ms"] <= s["e2el_ms"]
            assert s["tpot_ms"] == pytest.approx((s["e2el_ms"] - s["ttft_ms"]) / 7)
        assert record["ttft_ms_mean"] == pytest.approx(sum(s["ttft_ms"] for s in samples) / 4)
        assert record["requests_per_s"] == pytest.approx(4 / record["measured_s"])
        assert record["output_tok_s"] == pytest.approx(32 / record["measured_s"])
        assert record["server_peak_rss_mib"] > 50  # the server's process tree holds the model
        assert record["ttft_ms_p50"] <= record["ttft_ms_p95"] <= record["ttft_ms_p99"]
    from runner.serving.plot import plot_rate_sweep

    assert plot_rate_sweep(df, tmp_path / "sweep.png").stat().st_size > 1000


@pytest.mark.exclusive
def test_ramp_end_to_end(serving_outputs):
    from runner.serving.client import arrival_gaps_s, target_rates_rps

    (record,) = _serving_records(serving_outputs, ramp=True)
    assert record["status"] == "ok" and process_gone(record["server_pid"])
    assert (record["serving_ramp"], record["serving_ramp_start_rate"], record["serving_request_rate"]) == \
        ("linear", 1.0, 8.0)
    samples = record["request_samples"]
    rates = [s["target_rate_rps"] for s in samples]
    assert rates == target_rates_rps(4, 8.0, "linear", 1.0) == pytest.approx([1.0, 1 + 7 / 3, 1 + 14 / 3, 8.0])
    # Sent no earlier than the seeded schedule (the sleeps only overrun), and not long after it
    # (one llama.cpp request at a time; no max_concurrency, so nothing waits for a slot).
    for sample, due in zip(samples, np.cumsum(arrival_gaps_s(4, 8.0, 1.0, 0, "linear", 1.0))):
        assert due - 0.005 <= sample["sent_s"] <= due + 1.0, (due, sample["sent_s"])
    assert record["completed_requests"] == 4 and record["goodput_share"] == 1.0  # generous SLOs
    assert record["goodput_requests_per_s"] == pytest.approx(record["requests_per_s"])


def test_report_shows_serving_runs_in_their_own_table(serving_outputs, cache_dir):
    from runner.results import load_results
    from runner.serving.report import COLUMNS

    out = serving_outputs.parent / "report"
    proc = run_runner(serving_outputs.parent, cache_dir, str(serving_outputs), "--out", str(out),
                      "--csv", str(out / "table.csv"), module="runner.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "report.md").read_text()
    for header in ("| model | configuration | status | batch", "| model | engine | status | rate"):
        assert header in proc.stdout  # both tables printed
    (offline,) = markdown_rows(text, "| model | configuration | status | batch")  # serving runs stay out of it
    assert offline["configuration"].startswith("llamacpp")
    rows = markdown_rows(text, "| model | engine | status | rate req/s")
    records = {(r["serving_request_rate"], r["serving_ramp"]): r for r in read_records(serving_outputs)
               if r["scenario"] == "serving"}
    assert [(row["rate req/s"], row["ramp"]) for row in rows] == [
        ("2", "—"), ("8", "—"), ("8", "linear from 1/s"), ("inf", "—")]
    for row in rows:
        record = records[(float(row["rate req/s"]) if row["rate req/s"] != "inf" else "inf",
                          None if row["ramp"] == "—" else "linear")]
        assert row["model"] == "smollm2-135m" and row["engine"].startswith("llamacpp") and row["status"] == "ok"
        for name, field, digits in COLUMNS:
            if digits is not None and name in row:
                value = record[field]
                assert row[name] == ("—" if value is None else f"{value:,.{digits}f}"), (name, row)
        assert row["SLOs"] == ("TTFT ≤ 5000 ms, TPOT ≤ 1000 ms" if record["serving_ramp"] else "none")
    assert "concurrency" not in rows[0] and "device peak MiB" not in rows[0]  # no run set them
    assert rows[2]["goodput req/s"] == f"{records[(8.0, 'linear')]['goodput_requests_per_s']:,.3f}"
    # --csv: the offline table at the path, the serving table beside it, unrounded
    serving_csv = pd.read_csv(out / "table.serving.csv")
    assert len(pd.read_csv(out / "table.csv")) == 1 and len(serving_csv) == 4
    by_rate = {(str(r["serving_request_rate"]), bool(r["serving_ramp"])): r for r in records.values()}
    for _, row in serving_csv.iterrows():
        record = by_rate[(str(row["rate req/s"]), row["ramp"] == row["ramp"])]  # NaN: no ramp
        for column in ("req/s", "req/h", "out tok/s", "TTFT p95 ms", "TPOT p95 ms", "ITL p95 ms", "E2EL p95 ms"):
            field = next(f for n, f, _ in COLUMNS if n == column)
            assert row[column] == record[field]
    assert (out / "serving_sweep.png").stat().st_size > 1000 and "](serving_sweep.png)" in text
    assert len(load_results(serving_outputs)) == len(pd.read_csv(out / "results.csv")) == 5


def test_failing_run_leaves_no_server(run_cli, tmp_path):
    # A 32-cell context cannot hold these prompts: the server answers every request with an error.
    proc = run_cli(*SERVE, "engine.n_ctx=32", "dataset.min_prompt_tokens=40")
    assert proc.returncode == 1
    (record,) = read_records(tmp_path / "outputs")
    assert record["status"] == "error" and "request failed" in record["error"]
    assert process_gone(record["server_pid"])


def _is_server(proc: psutil.Process) -> bool:
    try:
        return "engines.llamacpp.serve" in " ".join(proc.cmdline())
    except psutil.Error:  # a short-lived child (a compiler probe, ...) that ended meanwhile
        return False


def test_a_server_that_died_says_so_with_its_exit_code(tmp_path):
    """A request to a dead server only says "Cannot connect"; the run's error adds the exit code and log tail."""
    from runner.serving.server import ServerProcess, ServerStartError

    crashing = ServerProcess([sys.executable, "-c", "import sys; print('bad model file'); sys.exit(3)"],
                             dict(os.environ), tmp_path / "crash.log", "http://127.0.0.1:9")
    with pytest.raises(ServerStartError):
        crashing.start(timeout_s=30)
    assert crashing.exit_note().startswith(" (the server exited with code 3; log tail: bad model file")
    alive = ServerProcess(["sleep", "30"], dict(os.environ), tmp_path / "alive.log", "http://127.0.0.1:9")
    alive.popen = subprocess.Popen(alive.command)
    try:
        assert alive.exit_note() == ""  # running: nothing to add to a request's own error
    finally:
        alive.popen.kill()
        alive.popen.wait()
    assert "exited with code -9" in alive.exit_note()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_server(tmp_path, cache_dir, sig):
    env = {**os.environ, "LLM_BENCH_CACHE": cache_dir, "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen([sys.executable, "-m", "runner", *SERVE, "serving.num_requests=500",
                               "serving.request_rate=1", "serving.time_limit_s=300"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, servers = time.time() + 120, []
        while not servers and time.time() < deadline:
            time.sleep(0.5)
            servers = [p for p in psutil.Process(runner.pid).children(recursive=True) if _is_server(p)]
        assert servers, "the server never started"
        time.sleep(3)  # let it take requests
        runner.send_signal(sig)
        runner.wait(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 128 + sig
    assert all(process_gone(p.pid) for p in servers)
    assert read_records(tmp_path / "outputs") == []  # an interrupted run is no result: nothing half-done is written


@pytest.mark.parametrize("args, message", [
    (["engine=hf"], "engine=hf: has no server to benchmark; engines with a server: llamacpp, sglang, vllm"),
    (["server.url=http://127.0.0.1:9/v1"], "server.model: needed with server.url"),
    (["serving.request_rate=0"], "serving.request_rate=0.0: must be > 0 requests/s, or inf"),
    (["serving.max_concurrency=0"], "serving.max_concurrency=0: must be >= 1"),
    (["serving.ramp=step"], "serving.ramp=step: unknown; valid choices: linear, exponential, or null"),
    (["server.api_key_env=sk-live-0123"], "server.api_key_env: not an environment variable name"),  # key not echoed
    (["scenario=nope"], "valid choices"),
])
def test_bad_serving_config_is_one_line(run_cli, tmp_path, args, message):
    proc = run_cli("scenario=serving", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "sk-live-0123" not in proc.stderr  # a value that may be the key itself is never echoed
    assert not (tmp_path / "outputs").exists()



@pytest.mark.gpu
def test_vllm_server_rate_sweep(run_cli, tmp_path):
    """vLLM's own OpenAI server (launched by the runner) on the GPU machine: token-id prompts, usage counts."""
    proc = run_cli("-m", "scenario=serving", "engine=vllm", "serving.num_requests=16", *FAST,
                   "serving.request_rate=4,inf", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_records(tmp_path / "outputs")
    assert len(records) == 2
    for record in records:
        assert record["status"] == "ok" and record["output_tokens"] == 16 * 8
        assert {s["token_count_source"] for s in record["request_samples"]} == {"usage"}
        assert process_gone(record["server_pid"])
