"""A finished result is never deleted, overwritten or lost: reruns into the same directories, Ctrl-C and
SIGTERM, edited prompts. Real CLI subprocesses on the real SmolLM2 model (issue 15, items 1-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import IN_PROCESS, TINY, run_runner, runner_env

pytestmark = pytest.mark.slow  # real CLI runs in subprocesses
# The rerun tests are about which records are kept, not about where a point runs: their points run in-process.
QUIET = [*TINY, IN_PROCESS]


def _records(root) -> dict[str, dict]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("record.json")}


def _index_paths(root) -> list[str]:
    return [json.loads(line)["path"] for line in (root / "run_index.jsonl").read_text().splitlines()]


def test_rerun_into_its_own_sweep_dir_keeps_every_result(tmp_path, cache_dir):
    outputs = tmp_path / "outputs"
    sweep = ["-m", "hydra.sweep.dir=outputs/sweep", *QUIET]
    assert run_runner(tmp_path, cache_dir, *sweep, "batch_size=1").returncode == 0
    first = _records(outputs)
    assert list(first) == ["sweep/0/record.json"]

    # The same sweep dir, grown by a point: job 0 is skipped and must stay; job 1 runs.
    proc = run_runner(tmp_path, cache_dir, *sweep, "batch_size=1,2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 point(s) skipped" in proc.stdout
    after = _records(outputs)
    assert after["sweep/0/record.json"] == first["sweep/0/record.json"]  # untouched, byte for byte in content
    assert after["sweep/1/record.json"]["batch_size"] == 2
    assert (outputs / "sweep/0/.hydra/config.yaml").is_file()
    assert all(os.path.exists(p) for p in _index_paths(outputs))  # the index points only at files that exist

    # resume=false reruns job 0 into the same sweep dir: beside the old result, never over it.
    proc = run_runner(tmp_path, cache_dir, *sweep, "batch_size=1", "resume=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _records(outputs)
    assert after["sweep/0/record.json"] == first["sweep/0/record.json"]
    assert after["sweep/0.2/record.json"]["run_key"] == first["sweep/0/record.json"]["run_key"]
    assert after["sweep/0.2/record.json"]["run_id"] != first["sweep/0/record.json"]["run_id"]


def test_rerun_into_a_fixed_run_dir_and_from_another_sweep_dir(tmp_path, cache_dir):
    outputs = tmp_path / "outputs"
    single = ["hydra.run.dir=outputs/mine", *QUIET]
    assert run_runner(tmp_path, cache_dir, *single).returncode == 0
    first = _records(outputs)["mine/record.json"]
    proc = run_runner(tmp_path, cache_dir, *single)  # resumed: skipped, nothing written or removed
    assert proc.returncode == 0 and "skipped" in proc.stdout
    assert _records(outputs) == {"mine/record.json": first}
    proc = run_runner(tmp_path, cache_dir, *single, "resume=false")  # rerun: a sibling directory
    assert proc.returncode == 0
    assert set(_records(outputs)) == {"mine/record.json", "mine.2/record.json"}
    # The same point from another sweep dir: skipped, and that new sweep dir leaves nothing behind.
    proc = run_runner(tmp_path, cache_dir, "-m", "hydra.sweep.dir=outputs/other", *QUIET)
    assert proc.returncode == 0 and "1 point(s) skipped" in proc.stdout
    assert not (outputs / "other").exists()
    assert _records(outputs)["mine/record.json"] == first
    # A sweep dir outside outputs_root, run again from another working directory (a copy on another machine,
    # its outputs/ empty): the finished point is found in the sweep dir itself.
    elsewhere, fresh = tmp_path / "elsewhere", tmp_path / "fresh"
    sweep = ["-m", f"hydra.sweep.dir={elsewhere}", *QUIET, "generation.max_new_tokens=3"]
    assert run_runner(tmp_path, cache_dir, *sweep).returncode == 0
    done = _records(elsewhere)
    fresh.mkdir()
    proc = run_runner(fresh, cache_dir, *sweep)
    assert proc.returncode == 0 and "1 point(s) skipped" in proc.stdout, proc.stdout[-2000:]
    assert _records(elsewhere) == done and not (fresh / "outputs").exists()


def test_edited_prompts_are_a_new_point_not_a_resumed_one(tmp_path, cache_dir):
    prompts = tmp_path / "my prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the number {i}."}) + "\n" for i in range(2)))
    args = ["dataset=file", f"dataset.path='{prompts}'", *QUIET]
    assert run_runner(tmp_path, cache_dir, *args).returncode == 0
    proc = run_runner(tmp_path, cache_dir, *args)
    assert "skipped" in proc.stdout  # unchanged file: resumed
    prompts.write_text(prompts.read_text().replace("number 1", "number 7"))
    proc = run_runner(tmp_path, cache_dir, *args)
    assert proc.returncode == 0 and "skipped" not in proc.stdout
    records = sorted(_records(tmp_path / "outputs").values(), key=lambda r: r["started_at"])
    assert len(records) == 2 and records[0]["run_key"] != records[1]["run_key"]
    assert records[0]["prompts_sha256"] != records[1]["prompts_sha256"]
    assert records[0]["dataset_file_sha256"] != records[1]["dataset_file_sha256"]
    assert {r["dataset_name"] for r in records} == {"my prompts.jsonl"}


def _start_sweep(tmp_path, cache_dir, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=runner_env(cache_dir), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("isolation, sig", [("process", signal.SIGINT), ("worker", signal.SIGTERM)])
def test_a_signal_stops_the_sweep_within_seconds_and_keeps_finished_points(tmp_path, cache_dir, isolation, sig):
    # Long enough points (64 tokens, 4 prompts one at a time) that the signal lands inside the second one.
    args = ["-m", "batch_size=1,2", f"isolation={isolation}", "dataset.limit=4", "dataset.max_prompt_tokens=64",
            "generation.max_new_tokens=64", "measure.perplexity_prompts=0", "measure.agreement_prompts=0"]
    sweep = _start_sweep(tmp_path, cache_dir, *args)
    outputs = tmp_path / "outputs"
    deadline = time.monotonic() + 600
    while not list(outputs.rglob("record.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the second point's child is loading or generating
    children = psutil.Process(sweep.pid).children(recursive=True)
    assert children, "the run child should be alive"
    sent = time.monotonic()
    sweep.send_signal(sig)  # to the parent only, as `kill` does; its children are in their own process group
    stdout, stderr = sweep.communicate(timeout=60)
    took = time.monotonic() - sent
    assert sweep.returncode == 128 + sig, stderr[-2000:]
    assert took < 10, f"stopped after {took:.1f} s"
    assert "Traceback" not in stderr and stderr.count("interrupted by") == 1, stderr[-2000:]
    assert f"interrupted by {signal.Signals(sig).name}" in stderr and "again to resume" in stderr
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    records = list(outputs.rglob("record.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "ok"
    # nothing half-done: every point directory left holds a record
    point_dirs = [p for p in outputs.rglob("*") if p.is_dir() and (p / ".hydra").exists()]
    assert all((p / "record.json").exists() for p in point_dirs)

    # The same command again finishes the sweep: the finished point is skipped.
    proc = run_runner(tmp_path, cache_dir, *args)
    assert proc.returncode == 0 and "1 point(s) skipped" in proc.stdout, proc.stderr[-2000:]
    assert sorted(json.loads(p.read_text())["batch_size"] for p in outputs.rglob("record.json")) == [1, 2]


def test_a_worker_that_got_no_job_is_ended_at_once(tmp_path, monkeypatch):
    """A resumed sweep prestarts a worker for each engine whose first point it then skips; ending that worker
    must not wait for its imports (it was ~10 s per skipped engine on the GPU: torch, the engine)."""
    from runner import isolation

    (tmp_path / "slow_import_for_test.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a spawn child takes the parent's sys.path
    worker = isolation._start(keep_engine=True, key="skipped", preload=("slow_import_for_test",))
    monkeypatch.setattr(isolation, "_worker", worker)
    time.sleep(1)  # the child is inside its preload now
    start = time.monotonic()
    isolation.shutdown_worker()
    assert time.monotonic() - start < 5
    assert not worker.process.is_alive() and isolation._worker is None
