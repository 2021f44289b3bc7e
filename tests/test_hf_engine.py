"""The HF engine on the real SmolLM2: token counting with EOS forced and allowed, timestamps, bitsandbytes."""

from __future__ import annotations

import pytest

from engines.base import SamplingSpec
from engines.hf import BnbQuantization, HFEngineConfig
from engines.hf.engine import HFEngine
from runner.results import load_results
from tests.helpers import IN_PROCESS, chat_ids


@pytest.fixture(scope="module")
def engine(hf_default_engine):
    """HFEngineConfig() on SmolLM2, loaded once per session (conftest)."""
    return hf_default_engine


@pytest.mark.slow
def test_greedy_answer_is_paris(engine, tokenizer):
    [gen] = engine.generate([tokenizer("The capital of France is")["input_ids"]], SamplingSpec(4, True, 0.0))
    assert tokenizer.decode(gen.token_ids).startswith(" Paris")


@pytest.mark.slow
def test_forced_length_counts_exactly_the_requested_tokens(engine, tokenizer):
    prompts = [chat_ids(tokenizer, "Say hi."), tokenizer("A much longer prompt, so the batch needs left padding: "
                                                        "one two three four five six seven")["input_ids"]]
    gens = engine.generate(prompts, SamplingSpec(24, ignore_eos=True, temperature=0.0))
    for gen in gens:
        assert len(gen.token_ids) == 24
        assert len(gen.token_times) == 24
        assert gen.token_times == sorted(gen.token_times)
    assert engine.eos_ids.isdisjoint(gens[0].token_ids)  # EOS suppressed, not merely counted


@pytest.mark.slow
def test_eos_allowed_stops_each_sequence_at_its_own_eos(engine, tokenizer):
    short = chat_ids(tokenizer, "Reply with the single word: yes")
    long = tokenizer("Write a long story about the sea. Once upon a time")["input_ids"]
    gens = engine.generate([short, long], SamplingSpec(48, ignore_eos=False, temperature=0.0))
    stopped, running = gens
    assert stopped.token_ids[-1] in engine.eos_ids  # the EOS is the last token counted...
    assert len(stopped.token_ids) < 48  # ...and nothing after it (HF pads the finished row)
    assert sum(t in engine.eos_ids for t in stopped.token_ids) == 1
    assert len(stopped.token_times) == len(stopped.token_ids)
    assert len(running.token_ids) == 48


@pytest.mark.slow
def test_greedy_batch_matches_single_prompt_output(engine, tokenizer):
    prompts = [tokenizer("The capital of France is")["input_ids"], chat_ids(tokenizer, "Name a colour.")]
    batched = engine.generate(prompts, SamplingSpec(8, True, 0.0))
    alone = engine.generate(prompts[:1], SamplingSpec(8, True, 0.0))
    assert batched[0].token_ids == alone[0].token_ids


@pytest.mark.slow
def test_no_kv_cache_gives_the_same_greedy_tokens(smollm2_hf, engine, tokenizer):
    prompt = [tokenizer("The capital of France is")["input_ids"]]
    no_cache = HFEngine(HFEngineConfig(use_cache=False))
    no_cache.load(smollm2_hf)
    try:
        assert no_cache.generate(prompt, SamplingSpec(6, True, 0.0))[0].token_ids == \
            engine.generate(prompt, SamplingSpec(6, True, 0.0))[0].token_ids
    finally:
        no_cache.close()


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_bitsandbytes_quantization_shrinks_the_weights(smollm2_hf, engine, tokenizer, quantization):
    pytest.importorskip("bitsandbytes")  # the optional [bnb] extra
    quantized = HFEngine(HFEngineConfig(quantization=BnbQuantization(quantization)))
    quantized.load(smollm2_hf)
    try:
        [gen] = quantized.generate([tokenizer("The capital of France is")["input_ids"]], SamplingSpec(4, True, 0.0))
        assert len(gen.token_ids) == 4
        assert tokenizer.decode(gen.token_ids).startswith(" Paris")
        assert quantized.weights_bytes() < 0.5 * engine.weights_bytes()
        assert quantized.resolved["quantization"] == quantization
    finally:
        quantized.close()


def test_a_missing_engine_package_names_the_install_command():
    from engines.base import MissingEnginePackage, Requirement, require

    with pytest.raises(MissingEnginePackage, match=r"'no_such_engine_package' package is missing: pip install -e '\.\[nope\]'"):
        require(Requirement("no_such_engine_package", "pip install -e '.[nope]'"))


@pytest.mark.slow
def test_static_cache_compiled_on_the_cpu_compiles_only_in_the_warm_up(run_cli, tmp_path):
    """engine.compile on a CPU (transformers compiles only on CUDA unless told): compile time is its own field,
    spent in the warm-up, which covers the uneven last batch too; no graph is compiled while timing."""
    proc = run_cli("engine.cache_implementation=static", "engine.compile=true", "engine.compile_mode=default",
                   "dataset.limit=3", "batch_size=2", "dataset.max_prompt_tokens=64", "generation.max_new_tokens=4",
                   "measure.perplexity_prompts=0", "measure.agreement_prompts=0", IN_PROCESS, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert row["compiled"] and row.cache_implementation == "static"
    assert row.compiled_graphs >= 1 and row.compile_s > 0 and row.warmup_s >= row.compile_s
    assert row.recompiles_measured == 0 and row.compile_note is None
    assert row.warmup_batches_run == 2 and row.output_tokens == 3 * 4


@pytest.mark.slow
def test_compile_needs_a_static_cache(run_cli, tmp_path):
    proc = run_cli("engine.compile=true")
    assert proc.returncode == 2
    assert "engine.compile=true: needs engine.cache_implementation=static or offloaded_static" in proc.stderr
