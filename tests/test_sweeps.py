"""Sweeps that survive failures: rows for OOM and a killed child, resume after a SIGKILLed sweep, worker mode.

Real HF engine on SmolLM2; faults are injected by tests/fault_runner.py (test-only, outside the runner).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from runner.results import load_results
from tests.helpers import IN_PROCESS, ROOT, TINY, run_runner

pytestmark = pytest.mark.slow  # real CLI sweeps in subprocesses


def _records(root):
    return load_results(str(root / "**" / "record.json"))


def test_oom_and_sigkill_become_rows_then_resume_retries_only_failures(tmp_path, cache_dir):
    # 3 prompts: batch_size=2 gives a batch of 2 (OOM), batch_size=3 one of 3 (SIGKILL), batch_size=1 is clean.
    args = ["-m", "batch_size=1,2,3", "isolation=process", "dataset.limit=3", *TINY[1:]]
    os.environ["LLM_BENCH_TEST_FAULTS"] = "2:oom,3:sigkill"
    try:
        proc = run_runner(tmp_path, cache_dir, *args, module="tests.fault_runner")
    finally:
        del os.environ["LLM_BENCH_TEST_FAULTS"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    df = _records(tmp_path / "outputs").set_index("batch_size")
    assert df.loc[1, "status"] == "ok" and df.loc[1, "output_tokens"] == 3 * 4
    assert df.loc[2, "status"] == "oom" and "CUDA out of memory" in df.loc[2, "error"]
    assert df.loc[3, "status"] == "crashed" and "SIGKILL" in df.loc[3, "error"]
    assert df.loc[3, "engine_name"] == "hf" and df.loc[3, "env_python"]  # a full row though the child died
    assert "2 run(s) failed" in proc.stderr and "oom:" in proc.stderr and "crashed:" in proc.stderr

    # Same sweep without faults: the ok point is skipped, the failed ones are retried (the default). Where the
    # retries run is not the subject here (isolation is not part of the run key): in this process.
    proc = run_runner(tmp_path, cache_dir, *[IN_PROCESS if a == "isolation=process" else a for a in args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 point(s) skipped" in proc.stdout
    df = _records(tmp_path / "outputs")
    assert len(df) == 5
    ok = df[df.status == "ok"]
    assert sorted(ok.batch_size) == [1, 2, 3] and ok.run_key.is_unique


def test_sigkilled_sweep_reruns_to_one_complete_record_per_point(tmp_path, cache_dir):
    args = ["-m", "batch_size=1,2,4", "isolation=worker", *TINY]
    env = {**os.environ, "LLM_BENCH_CACHE": cache_dir, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((tmp_path / "outputs").rglob("record.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    # The sweep and its worker child (own process group; it dies with its parent) killed mid-sweep.
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    time.sleep(1)
    first = _records(tmp_path / "outputs")
    assert 1 <= len(first) < 3 and set(first.status) == {"ok"}

    proc = run_runner(tmp_path, cache_dir, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(first)} point(s) skipped" in proc.stdout
    df = _records(tmp_path / "outputs")  # every record.json parses (load_results reads them all)
    # 2 prompts: the batch_size=4 point runs one batch of 2 (batch_size records what ran)
    assert len(df) == 3 and sorted(df.batch_size_requested) == [1, 2, 4] and set(df.status) == {"ok"}
    assert df.run_key.is_unique
    # worker mode: the second point of one worker reused the loaded model
    assert df.engine_reused.any() or len(first) == 2


def test_worker_figures_equal_isolated_ones(tmp_path, cache_dir):
    """Same points in worker and process mode: identical tokens (greedy), timings within loose noise."""
    rows = {}
    for mode in ("worker", "process"):
        proc = run_runner(tmp_path, cache_dir, "-m", "batch_size=1,2", f"isolation={mode}", "resume=false",
                          f"outputs_root=outputs/{mode}", "measure.reused_warmup_tokens=2", *TINY)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[mode] = _records(tmp_path / "outputs" / mode).set_index("batch_size")
    worker, isolated = rows["worker"], rows["process"]
    assert list(worker.engine_reused) == [False, True]
    assert (worker.run_key == isolated.run_key).all()  # isolation is not part of the run key
    for batch in (1, 2):
        w, p = worker.loc[batch], isolated.loc[batch]
        assert (w.input_tokens, w.output_tokens) == (p.input_tokens, p.output_tokens)
        assert [r["output_head"] for r in w.request_samples] == [r["output_head"] for r in p.request_samples]
        # 2 shared cores: timings only loosely (another process may be running); memory within 30 %
        assert 0.25 < w.batch_latency_ms_p50 / p.batch_latency_ms_p50 < 4
        assert w.host_peak_rss_mib == pytest.approx(p.host_peak_rss_mib, rel=0.3)
    # the reused engine loads nothing; a fresh process loads the model (0.4 s to 1.1 s seen on 2 cores)
    assert worker.loc[2, "load_s"] < 0.05 and isolated.loc[2, "load_s"] > 5 * worker.loc[2, "load_s"]
    # the reused engine's point warms up with measure.reused_warmup_tokens new tokens, the others in full
    assert list(worker.warmup_new_tokens) == [4, 2] and list(isolated.warmup_new_tokens) == [4, 4]


def test_run_past_timeout_is_killed_and_recorded(tmp_path, cache_dir):
    """timeout_s=2: the child (loading, or generating 200 tokens: longer than 2 s, though its imports overlapped
    the planning) is killed with its process group; a timeout row."""
    proc = run_runner(tmp_path, cache_dir, "timeout_s=2", *TINY, "generation.max_new_tokens=200")
    assert proc.returncode == 1, proc.stderr[-3000:]
    row = _records(tmp_path / "outputs").iloc[0]
    assert row.status == "timeout" and "timeout_s=2" in row.error
    assert "timeout:" in proc.stderr


def test_a_dropped_worker_says_why(capsys):
    """A worker that held an engine and is replaced: stderr names the changed keys, or the ended process."""
    from runner import isolation

    isolation._worker = isolation._start(keep_engine=True, key={"engine_dtype": "float32", "model_name": "m"})
    try:
        assert isolation._worker_fits({"engine_dtype": "float32", "model_name": "m"})
        assert capsys.readouterr().err == ""
        isolation._worker.jobs = 1  # as if it had run a point (a worker without jobs holds no engine: silent)
        assert not isolation._worker_fits({"engine_dtype": "bfloat16", "model_name": "m"})
        assert ("a new engine start, the engine/model config changed: engine_dtype 'float32' -> 'bfloat16'"
                in capsys.readouterr().err)
        isolation._worker.kill()
        assert not isolation._worker_fits({"engine_dtype": "float32", "model_name": "m"})
        assert "a new engine start, its process ended (exit code -9)" in capsys.readouterr().err
    finally:
        isolation.kill_children()
