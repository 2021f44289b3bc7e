"""Perplexity on the real SmolLM2 through every CPU engine: the same token ids, comparable figures."""

from __future__ import annotations

import math

import pytest

from engines.base import Engine
from engines.llamacpp import LlamaCppEngineConfig
from runner.models import gguf_path
from runner.perplexity import perplexity, perplexity_fields
from tests.helpers import smollm2_spec

TEXTS = ["The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
         "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"]


def test_perplexity_is_exp_of_minus_the_mean_log_probability():
    # Two prompts, three scored tokens: ln p = -1, -2 | -3 -> mean -2 -> perplexity e^2.
    value, tokens = perplexity([[-1.0, -2.0], [-3.0]])
    assert (value, tokens) == (pytest.approx(math.exp(2.0)), 3)


def test_an_engine_that_cannot_score_gives_an_empty_figure_and_the_reason():
    class NoScores(Engine):
        name, model_format = "none", "hf"

        def load(self, model_path):
            pass

        def generate(self, prompts, sampling):
            return []

    fields = perplexity_fields(NoScores(None), [[1, 2, 3]], 4)
    assert fields["perplexity"] is None and "does not expose token log-probabilities" in fields["perplexity_note"]
    assert perplexity_fields(NoScores(None), [[1, 2, 3]], 0)["perplexity_note"].startswith("disabled")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def hf_logprobs(hf_engine, prompts):
    return hf_engine.prompt_logprobs(prompts)  # HF float32 on the CPU


@pytest.mark.slow
def test_hf_scores_tokens_one_to_n_minus_one(hf_logprobs, prompts):
    assert [len(lp) for lp in hf_logprobs] == [len(p) - 1 for p in prompts]
    assert all(lp <= 0 for row in hf_logprobs for lp in row)
    assert 1 < perplexity(hf_logprobs)[0] < 100  # a real model on plain English and code


@pytest.mark.slow
def test_ctranslate2_float32_matches_hf_float32(hf_logprobs, prompts, ct2_fp32):
    ct2 = ct2_fp32.prompt_logprobs(prompts)  # the fixture skips without the optional [ctranslate2] extra
    assert [len(lp) for lp in ct2] == [len(lp) for lp in hf_logprobs]
    # Same weights, same precision: the same figure up to float32 rounding.
    assert perplexity(ct2)[0] == pytest.approx(perplexity(hf_logprobs)[0], rel=1e-3)


@pytest.mark.slow
def test_llamacpp_is_of_the_same_order_as_hf(hf_logprobs, prompts):
    pytest.importorskip("llama_cpp")  # the optional [llamacpp] extra
    from engines.llamacpp.engine import LlamaCppEngine

    engine = LlamaCppEngine(LlamaCppEngineConfig(n_threads=2))
    engine.load(str(gguf_path(smollm2_spec())))
    try:
        llama = engine.prompt_logprobs(prompts)
    finally:
        engine.close()
    assert [len(lp) for lp in llama] == [len(lp) for lp in hf_logprobs]
    # HF runs the GGUF's Q4_1 weights dequantized to float32; llama.cpp runs them as Q4_1 (with its own
    # int8 activation quantization): close, not equal.
    assert perplexity(llama)[0] == pytest.approx(perplexity(hf_logprobs)[0], rel=0.15)
