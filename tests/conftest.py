"""Shared fixtures: the real SmolLM2 model, engines loaded once per session, one shared sweep, the CLI in a
subprocess. Constants and plain helpers are in tests/helpers.py.

Two tiers: tests marked `slow` run the real CLI in a subprocess or load a real engine; `pytest -m "not slow"`
is the fast tier, plain `pytest` runs everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import FAST, IN_PROCESS, run_runner, smollm2_spec
from tests.sharing import pin_worker_to_its_cpu, assign_worker_groups, run_alone_or_beside


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(config, items):
    """GPU-marked tests are end to end (slow) and run only where CUDA is present (the device machine), never
    silently elsewhere."""
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.slow)
    assign_worker_groups(items)
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


def pytest_configure(config):
    pin_worker_to_its_cpu()  # under pytest-xdist; before any test module imports torch (tests/sharing.py)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of a test (its fixtures included) under the workers' shared lock: a test marked
    `exclusive` holds it alone, on every CPU (tests/sharing.py)."""
    with run_alone_or_beside(exclusive="exclusive" in item.keywords,
                             keep=nextitem is not None and "exclusive" in nextitem.keywords):
        yield


def pytest_runtest_logreport(report):
    """LLM_BENCH_INSTANT_FAILURES=1: print a failure's traceback at once (the GPU suite's calls have a hard time
    limit, and pytest's end-of-session summary is lost when a call is cut)."""
    if report.failed and os.environ.get("LLM_BENCH_INSTANT_FAILURES"):
        print(f"\n--- {report.nodeid} ({report.when}) failed:\n{report.longreprtext[-4000:]}", flush=True)


@pytest.fixture(scope="session")
def cache_dir() -> str:
    """The converted-model cache shared by all tests (and by users of this machine): convert once."""
    return os.environ.get("LLM_BENCH_CACHE") or str(Path("~/.cache/llm-bench").expanduser())


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


@pytest.fixture
def run_cli(tmp_path, cache_dir):
    """Run `python -m runner <args>` in tmp_path (so outputs/ lands there); returns the CompletedProcess."""

    def _run(*args: str, timeout: float = 900):
        return run_runner(tmp_path, cache_dir, *args, timeout=timeout)

    return _run


# ---------------------------------------------------------------- engines loaded once per session
# Tests only read from these (generate, score): none changes an engine's state. A test that closes an engine
# or needs other settings loads its own.
@pytest.fixture(scope="session")
def hf_engine(smollm2_hf):
    """HF transformers, float32 on the CPU: the reference the other engines are compared with."""
    from engines.hf.engine import HFEngine
    from engines.base import DType, Device
    from engines.hf import HFEngineConfig

    engine = HFEngine(HFEngineConfig(dtype=DType.float32, device=Device.cpu))
    engine.load(smollm2_hf)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_default_engine(smollm2_hf, request):
    """HF with the default config (dtype and device auto). Without CUDA that resolves to float32 on the CPU,
    which is hf_engine itself; with CUDA it is its own engine (float16 on the GPU)."""
    import torch

    if not torch.cuda.is_available():
        yield request.getfixturevalue("hf_engine")
        return
    from engines.hf.engine import HFEngine
    from engines.hf import HFEngineConfig

    engine = HFEngine(HFEngineConfig())
    engine.load(smollm2_hf)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def ct2_fp32(smollm2_hf, cache_dir):
    """CTranslate2 float32 on the CPU (the ct2 conversion is cached in cache_dir)."""
    pytest.importorskip("ctranslate2")  # the optional [ctranslate2] extra
    from engines.ctranslate2.engine import CTranslate2Engine
    from engines.base import Device
    from engines.ctranslate2 import CT2ComputeType, CTranslate2EngineConfig
    from runner.models import prepare

    config = CTranslate2EngineConfig(compute_type=CT2ComputeType.float32, device=Device.cpu)
    engine = CTranslate2Engine(config)
    engine.load(prepare(smollm2_spec(), "ct2", cache_dir, CTranslate2Engine.model_variant(config)).path)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm2_rtn(smollm2_hf, tmp_path_factory) -> str:
    """SmolLM2 packed to GPTQ w4g128 by round-to-nearest (runner.gptq), made once per session."""
    from runner import gptq

    out = tmp_path_factory.mktemp("smollm2-rtn")
    gptq.rtn_checkpoint(smollm2_hf, out, gptq.parse_variant("gptq-w4g128"))
    return str(out)


# ---------------------------------------------------------------- one real sweep, read by several modules
@pytest.fixture(scope="session")
def sweep(tmp_path_factory, cache_dir) -> Path:
    """One small real sweep (the CLI in a subprocess): hf and llama.cpp at batch 1 and 2, in-process points."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_runner(cwd, cache_dir, "-m", "engine=hf,llamacpp", "batch_size=1,2", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "outputs" / "multirun"


@pytest.fixture(scope="session")
def records(sweep):
    """The sweep as load_results reads it (a DataFrame)."""
    from runner.results import load_results

    return load_results(sweep)


@pytest.fixture(scope="session")
def raw(sweep) -> list[dict]:
    """The sweep's records as the runner wrote them (JSON dicts), to derive other workloads from."""
    from runner.results import record_paths

    return [json.loads(path.read_text()) for path in record_paths(sweep)]
