"""Hydra launchers: a Ray-launched and a submitit-local-launched multirun each give loadable rows; the joblib
launcher refuses parallel jobs on a CPU-only machine."""

from __future__ import annotations

import pytest

from runner.results import load_results
from tests.helpers import IN_PROCESS, TINY, run_runner

pytestmark = pytest.mark.slow  # real CLI sweeps in subprocesses


@pytest.mark.parametrize("launcher, package", [("ray_local", "ray"), ("submitit_local", "submitit")])
def test_launcher_multirun_rows_load(tmp_path, cache_dir, launcher, package):
    pytest.importorskip(package, reason=f"pip install -e '.[{package}]'")
    proc = run_runner(tmp_path, cache_dir, "-m", f"hydra/launcher={launcher}", "batch_size=1,2", IN_PROCESS,
                      *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_results(str(tmp_path / "outputs" / "multirun" / "**" / "record.json"))
    assert sorted(df.batch_size) == [1, 2] and set(df.status) == {"ok"}
    assert (df.output_tokens == 2 * 4).all()


def test_joblib_parallel_refused_on_cpu(tmp_path, cache_dir):
    pytest.importorskip("joblib")
    import torch

    if torch.cuda.is_available():
        pytest.skip("refusal is for CPU-only machines")
    proc = run_runner(tmp_path, cache_dir, "-m", "hydra/launcher=gpus", "hydra.launcher.n_jobs=2",
                      "batch_size=1,2", *TINY)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "hydra.launcher.n_jobs=2" in proc.stderr and "one GPU each" in proc.stderr
    assert not list((tmp_path / "outputs").rglob("record.json"))
