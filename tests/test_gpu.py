"""GPU checks of every engine on the real SmolLM2 (run on the device machine: scripts/gpu_suite.sh tests)."""

from __future__ import annotations

import pytest

from engines import get_engine_class
from engines.base import DType, SamplingSpec
from engines.ctranslate2 import CT2ComputeType, CTranslate2EngineConfig
from engines.hf import BnbQuantization, HFEngineConfig
from engines.llamacpp import LlamaCppEngineConfig
from runner.models import prepare
from runner.results import load_results
from tests.helpers import FAST, chat_ids, smollm2_spec

pytestmark = pytest.mark.gpu

CASES = [
    ("hf", HFEngineConfig(dtype=DType.float16)),
    ("hf", HFEngineConfig(dtype=DType.float16, quantization=BnbQuantization.int8)),
    ("hf", HFEngineConfig(dtype=DType.float16, quantization=BnbQuantization.nf4)),
    ("llamacpp", LlamaCppEngineConfig()),
    ("ctranslate2", CTranslate2EngineConfig(compute_type=CT2ComputeType.float16)),
    ("ctranslate2", CTranslate2EngineConfig(compute_type=CT2ComputeType.int8_float16)),
]


@pytest.mark.parametrize("name, config", CASES, ids=lambda c: getattr(c, "name", None) or str(c))
def test_engine_runs_on_the_gpu(name, config, cache_dir, tokenizer):
    cls = get_engine_class(name)
    engine = cls(config)
    engine.load(prepare(smollm2_spec(), cls.model_format, cache_dir, cls.model_variant(config)).path)
    try:
        prompts = [tokenizer("The capital of France is")["input_ids"], chat_ids(tokenizer, "Name a colour.")]
        gens = engine.generate(prompts, SamplingSpec(16, ignore_eos=True, temperature=0.0))
        assert [len(g.token_ids) for g in gens] == [16, 16]
        assert all(len(g.token_times) == 16 for g in gens)
        assert tokenizer.decode(gens[0].token_ids).startswith(" Paris")
        assert engine.resolved["device"] == "cuda"
    finally:
        engine.close()


def test_cli_records_device_memory_on_the_gpu(run_cli, tmp_path):
    proc = run_cli("engine.dtype=float16", "batch_size=2", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert row["device"] == "cuda" and row["dtype"] == "float16"  # row.dtype is the Series' own
    assert row.torch_peak_allocated_mib > row.weights_mib > 200
    # Our processes' own NVML figure: the device-wide one also moves with what other processes free meanwhile
    # (on the device, probably the pytest process freeing an earlier test's engine: 64 MiB seen for 257 MiB of
    # weights on 2026-11-22).
    assert row.device_peak_process_mib > row.weights_mib
    assert row.device_peak_used_mib is not None and not row.device_memory_note
    assert row.env_gpu and row.env_gpu_driver and row.env_cuda


@pytest.mark.parametrize("compiled", [False, True], ids=["static", "static-compiled"])
def test_hf_static_cache_and_compile_on_the_gpu(run_cli, tmp_path, compiled):
    """The optimized HF mode on the GPU: a static cache (compiled decode step or not), uneven batches; nothing
    compiles inside the timed region, and the event clock gives every token a time."""
    proc = run_cli("model=tiny-llama-random", "dataset=synthetic", "dataset.input_len=32", "dataset.limit=5",
                   "batch_size=2", "generation.max_new_tokens=16", "engine.cache_implementation=static",
                   f"engine.compile={str(compiled).lower()}", "measure.repetitions=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert row["compiled"] == compiled and row.recompiles_measured == 0 and not row.compile_note
    assert (row.compiled_graphs > 0) == compiled and (row.compile_s > 0) == compiled
    assert row.warmup_batches_run == 2  # the longest-prompt batch, and the uneven last one (1 prompt)
    for request in row.request_samples:
        assert request["output_tokens"] == 16 and len(request["itl_ms"]) == 15 and min(request["itl_ms"]) > 0


def test_worker_sweep_of_every_gpu_engine(run_cli, tmp_path):
    """seed_engines' shape on SmolLM2 in one warm worker per engine, batch 1/4/16/64, vLLM first: its batch-4
    point needs a greedy reference not yet cached, which must not load a second model beside vLLM's
    pre-allocated GPU (issue 18: out of memory at batch 64). Every point ends ok. ExLlamaV2 and vLLM GPTQ need a
    GPTQ checkpoint of SmolLM2's real weights (gptqmodel, not on the GPU machine): their GPU tests run an RTN pair."""
    engines_in_order = "vllm,hf,hf_int8,hf_nf4,llamacpp,ctranslate2_fp16"
    proc = run_cli("-m", "+experiment=seed_engines", "model=smollm2-135m", f"engine={engines_in_order}",
                   "batch_size=1,4,16,64", "generation.max_new_tokens=16", "measure.repetitions=1",
                   "measure.perplexity_prompts=0", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = load_results(tmp_path / "outputs").sort_values("started_at")
    assert len(rows) == 24 and set(rows.status) == {"ok"}, rows[["engine_name", "batch_size", "status", "error"]]
    assert (rows.device == "cuda").all()
    engine_points = [rows.iloc[i:i + 4] for i in range(0, 24, 4)]  # the sweep is engine-major
    assert all(list(points.batch_size_requested) == [1, 4, 16, 64] for points in engine_points)
    reused = [list(points.engine_reused) for points in engine_points]
    # vLLM's batch-4 point made room for its new reference (a reload); by then later engines find them cached
    assert reused[0] == [False, False, True, True]
    assert all(flags == [False, True, True, True] for flags in reused[1:]), reused
    # a kept engine's device peak counts from before its load, as a fresh one's: its weights are in it
    kept = rows[rows.engine_reused]
    assert (kept.device_peak_used_mib >= 0.9 * kept.weights_mib).all(), kept[["engine_name", "device_peak_used_mib"]]


@pytest.mark.parametrize("name, method", [("hf", "prompt_lookup"), ("hf", "draft"), ("llamacpp", "prompt_lookup"),
                                          ("vllm", "prompt_lookup"), ("vllm", "draft")])
def test_speculative_decoding_on_the_gpu(name, method, cache_dir, tokenizer):
    """Each engine with and without speculation (one after another), SmolLM2 as its own draft: the counts come
    from the engine, and the greedy output agrees (printed: float16 verification of several tokens at once may
    round differently from one token at a time, which is what the runner's spec_exact flags)."""
    from dataclasses import replace

    import engines
    from engines.speculative import SpeculativeConfig, SpecMethod

    cls = get_engine_class(name)
    base = replace(engines.config_class(name)(), **({"dtype": DType.float16} if name == "hf" else {}),
                   **({"gpu_memory_utilization": 0.4} if name == "vllm" else {}))
    path = prepare(smollm2_spec(), cls.model_format, cache_dir).path
    prompts = [chat_ids(tokenizer, "Repeat this sentence exactly: 'The quick brown fox jumps over the lazy dog.'"),
               chat_ids(tokenizer, "Correct the spelling: 'The quik brown fox jumpd over the lazy dog.'")]
    outputs = {}
    for spec in (SpeculativeConfig(), SpeculativeConfig(method=SpecMethod(method), draft="smollm2-135m")):
        engine = cls(replace(base, speculative=spec))
        engine.use_draft(prepare(smollm2_spec(), "hf", cache_dir).path)
        engine.load(path)
        try:
            outputs[spec.method.value] = [g.token_ids for g in engine.generate(prompts, SamplingSpec(24, False, 0.0))]
            counts = engine.take_spec_counts()
        finally:
            engine.close()
    assert counts.drafts > 0 and counts.drafted_tokens >= counts.accepted_tokens > 0
    same = sum(a == b for x, y in zip(outputs["none"], outputs[method]) for a, b in zip(x, y))
    print(f"{name} {method}: acceptance {counts.accepted_tokens / counts.drafted_tokens:.3f}, greedy agreement "
          f"{same}/{sum(map(len, outputs['none']))}")
    assert same >= 0.9 * sum(map(len, outputs["none"]))


def test_a_run_names_the_gpu_it_was_given_and_counts_only_its_memory(monkeypatch):
    """hydra/launcher=gpus hands each job one GPU through CUDA_VISIBLE_DEVICES (NVML ignores that variable and
    numbers every GPU of the host): the record names that GPU, and served runs count that GPU's memory only."""
    import pynvml

    from runner.environment import environment
    from runner.serving.server import DeviceUsed

    pynvml.nvmlInit()
    last = str(pynvml.nvmlDeviceGetCount() - 1)  # GPU 1 on a 2-GPU machine, GPU 0 on one
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", last)
    env = environment()
    assert env["env_gpu_index"] == int(last) and env["env_cuda_visible_devices"] == last
    assert env["env_gpu_count"] == pynvml.nvmlDeviceGetCount()
    assert len(DeviceUsed()._handles) == 1
