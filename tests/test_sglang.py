"""SGLang (issue 20). It has no CPU build: here its pure parts (config checks, the Engine's and the server's
settings, the request, the stamping of streamed updates) and the one-line refusal when it is missing; on the
GPU machine the engine itself on the real SmolLM2 (gpu-marked)."""

from __future__ import annotations

import importlib.util

import pytest

from engines.base import ConfigError, DType, SamplingSpec
from engines.sglang import SGLangEngineConfig
from engines.sglang.engine import (SchedulerFailed, engine_kwargs, loaded_dtype, sampling_params, scheduler_failed,
                                   stamp_stream)
from engines.sglang.server import SGLangServer


@pytest.mark.parametrize("changes, message", [
    ({"mem_fraction_static": 1.5}, "engine.mem_fraction_static=1.5: must be in (0, 1]"),
    ({"tensor_parallel_size": 0}, "engine.tensor_parallel_size=0: must be at least 1"),
    ({"engine_kwargs": {"tp_size": 2, "seed": 1}}, "engine.engine_kwargs.seed: duplicates the typed key engine.seed"),
])
def test_bad_settings_are_refused_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SGLangEngineConfig(**changes).validate()


def test_the_engine_gets_prefix_caching_off_and_skips_the_tokenizer_only_without_one(smollm2_hf, tmp_path):
    kwargs = engine_kwargs(SGLangEngineConfig(), smollm2_hf)
    assert kwargs["disable_radix_cache"] is True and kwargs["skip_tokenizer_init"] is False
    assert kwargs["tp_size"] == 1 and kwargs["random_seed"] == 0 and "mem_fraction_static" not in kwargs
    assert "disable_decode_cuda_graph" not in kwargs  # SGLang's default: CUDA graphs on
    random_weights = engine_kwargs(SGLangEngineConfig(disable_cuda_graph=True, mem_fraction_static=0.8,
                                                      engine_kwargs={"chunked_prefill_size": 4096}), str(tmp_path))
    assert random_weights["skip_tokenizer_init"] is True and random_weights["mem_fraction_static"] == 0.8
    assert random_weights["disable_decode_cuda_graph"] is random_weights["disable_prefill_cuda_graph"] is True
    assert random_weights["chunked_prefill_size"] == 4096  # engine_kwargs pass through as they are
    assert "context_length" not in random_weights  # no config.json: SGLang's own


def test_the_context_length_is_always_explicit_so_prefill_graphs_stay_within_the_model(tmp_path):
    """SGLang clamps its prefill CUDA graphs to an explicit context length only; a Llama-2 shape (4,096
    positions) failed in the capture at 8,192 tokens without it."""
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 4096, "torch_dtype": "float32"}')
    assert engine_kwargs(SGLangEngineConfig(), str(tmp_path))["context_length"] == 4096
    assert engine_kwargs(SGLangEngineConfig(context_length=2048), str(tmp_path))["context_length"] == 2048


def test_a_failed_scheduler_is_the_runs_error_not_a_sigkill_of_the_tree():
    """SGLang's scheduler SIGQUITs its parent when it fails and SGLang's own handler SIGKILLs the tree (the run read
    as "killed by SIGKILL", the OOM killer's signature, on the H200); the adapter's handler raises instead."""
    import signal

    previous = signal.signal(signal.SIGQUIT, scheduler_failed)
    try:
        with pytest.raises(SchedulerFailed, match="after 'Scheduler hit an exception'"):
            signal.raise_signal(signal.SIGQUIT)
    finally:
        signal.signal(signal.SIGQUIT, previous)


@pytest.mark.parametrize("config, asked, loaded", [
    ('{"torch_dtype": "bfloat16"}', "auto", "bfloat16"),
    ('{"torch_dtype": "float32"}', "auto", "float16"),  # SGLang casts float32 checkpoints to float16
    ('{"dtype": "float32", "model_type": "gemma2"}', "auto", "bfloat16"),  # ... but Gemma to bfloat16
    ("{}", "auto", "float16"),
    ('{"torch_dtype": "bfloat16"}', "float16", "float16"),
])
def test_the_record_names_the_dtype_sglang_loads_not_auto(tmp_path, config, asked, loaded):
    (tmp_path / "config.json").write_text(config)
    assert loaded_dtype(asked, str(tmp_path)) == loaded


def test_the_forced_length_is_ignore_eos_without_min_new_tokens():
    """SGLang refuses min_new_tokens without a tokenizer (random weights); ignore_eos with max_new_tokens
    forces the length alone."""
    assert sampling_params(SamplingSpec(200, True, 0.0), seed=0) == {
        "max_new_tokens": 200, "temperature": 0.0, "ignore_eos": True}
    assert sampling_params(SamplingSpec(16, False, 0.7), seed=3) == {
        "max_new_tokens": 16, "temperature": 0.7, "ignore_eos": False, "sampling_seed": 3}
    server = SGLangServer(SGLangEngineConfig())
    assert server.forcing_fields(200, True) == {"ignore_eos": True} and server.forcing_fields(200, False) == {}


def test_every_token_gets_the_arrival_time_of_the_update_that_brought_it():
    """Updates of a batch of two interleave; SGLang hands its own growing list in intermediate updates, so
    only the length counts on arrival and the ids come from the final update."""
    growing = [7]
    chunks = [
        {"index": 1, "output_ids": [5], "meta_info": {"finish_reason": None}},
        {"index": 0, "output_ids": growing, "meta_info": {"finish_reason": None}},
        {"index": 1, "output_ids": [5, 6, 4], "meta_info": {"finish_reason": None}},  # two tokens in one update
        {"index": 0, "output_ids": [7, 8], "meta_info": {"finish_reason": {"type": "length"}}},
        {"index": 1, "output_ids": [5, 6, 4, 2], "meta_info": {"finish_reason": {"type": "stop"}}},
    ]

    def updates():
        for chunk in chunks:
            yield chunk
            if chunk["output_ids"] is growing:
                growing.append(99)  # SGLang extends its list after handing it over

    clock = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    ids, times = stamp_stream(updates(), 2, clock=lambda: next(clock))
    assert ids == [[7, 8], [5, 6, 4, 2]]
    assert times == [[2.0, 4.0], [1.0, 3.0, 3.0, 5.0]]
    one = [{"output_ids": [3], "meta_info": {"finish_reason": None}},  # a batch of one: no "index"
           {"output_ids": [3, 4], "meta_info": {"finish_reason": {"type": "length"}}}]
    assert stamp_stream(iter(one), 1, clock=iter([1.0, 2.0]).__next__) == ([[3, 4]], [[1.0, 2.0]])


def test_the_server_command_carries_the_offline_settings():
    command = SGLangServer(SGLangEngineConfig(context_length=512, disable_cuda_graph=True)).command("/m", 8123, "name")
    assert command[1:3] == ["-m", "sglang.launch_server"]
    line = " ".join(command)
    for part in ("--port 8123", "--served-model-name name", "--model-path /m", "--context-length 512",
                 "--disable-radix-cache", "--disable-decode-cuda-graph", "--skip-tokenizer-init", "--random-seed 0"):
        assert part in line


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed here")
def test_a_missing_sglang_is_refused_in_one_line_naming_the_install(cache_dir):
    from runner.config import BenchConfig, SyntheticConfig
    from runner.plan import check_requirements
    from tests.helpers import smollm2_spec

    cfg = BenchConfig(engine=SGLangEngineConfig(), model=smollm2_spec(), dataset=SyntheticConfig(limit=2),
                      cache_dir=cache_dir)
    with pytest.raises(ConfigError) as refused:
        check_requirements(cfg)
    assert str(refused.value) == ("engine=sglang needs the 'sglang' package, which is not installed: pip install "
                                  "sglang==0.5.15 on a CUDA machine with torch 2.11 (SGLang has no CPU build)")


@pytest.mark.gpu
def test_sglang_on_the_gpu_forces_the_length_stamps_every_token_and_agrees_with_hf(smollm2_hf, tokenizer):
    """The real SmolLM2, bfloat16 as SGLang picks it: three prompts, 16 tokens forced, then greedy with EOS
    allowed against HF float16 (printed; SGLang's kernels may round differently)."""
    pytest.importorskip("sglang")
    import torch

    from engines.hf import HFEngineConfig
    from engines.hf.engine import HFEngine
    from engines.sglang.engine import SGLangEngine
    from tests.helpers import chat_ids

    prompts = [chat_ids(tokenizer, q) for q in ("Name a colour.", "What is 2 + 2?", "Write a haiku about rain.")]
    engine = SGLangEngine(SGLangEngineConfig(mem_fraction_static=0.4))
    engine.load(smollm2_hf)
    try:
        forced = engine.generate(prompts, SamplingSpec(16, True, 0.0))
        greedy = [g.token_ids for g in engine.generate(prompts, SamplingSpec(16, False, 0.0))]
        resolved = engine.resolved
    finally:
        engine.close()
    for gen in forced:
        assert len(gen.token_ids) == len(gen.token_times) == 16 and gen.token_times == sorted(gen.token_times)
    assert resolved["sglang_version"] == "0.5.15"
    hf = HFEngine(HFEngineConfig(dtype=DType.float16))
    hf.load(smollm2_hf)
    try:
        reference = [hf.generate([p], SamplingSpec(16, False, 0.0))[0].token_ids for p in prompts]
    finally:
        hf.close()
        torch.cuda.empty_cache()
    same = sum(a == b for x, y in zip(reference, greedy) for a, b in zip(x, y))
    print(f"sglang greedy agreement with HF float16: {same}/{sum(map(len, reference))}; resolved {resolved}")
    assert same >= 0.5 * sum(map(len, reference))
