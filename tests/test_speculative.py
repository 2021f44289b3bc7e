"""Speculative decoding (issue 19) on the real SmolLM2-135M: greedy output unchanged, the counts filled from the
engine's own counters, the one-line refusals, and the report's pairing with the point without speculation."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from engines.base import Device, DType, SamplingSpec
from runner.config import ConfigError
from tests.helpers import GREEDY, IN_PROCESS, QUESTIONS, assert_counts_consistent, chat_ids, run_runner, spec

# The sweep of the issue, small: 2 edit requests of ShareGPT, EOS allowed, 8 new tokens
SPEC_SWEEP = ["dataset.match='(?i)^(rewrite|rephrase|paraphrase|proofread|correct|fix|edit|improve)[^a-z]'",
              "dataset.limit=2", "dataset.min_prompt_tokens=32", "dataset.max_prompt_tokens=128",
              "generation.max_new_tokens=8", "generation.ignore_eos=false", "measure.perplexity_prompts=0",
              "measure.agreement_prompts=2", "engine.speculative.draft=smollm2-135m"]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [chat_ids(tokenizer, q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_spec(smollm2_hf):
    """HF engines with prompt lookup and with a draft model (SmolLM2 as its own draft: the only offline model
    with its tokenizer), float32 on the CPU like conftest's hf_engine."""
    from engines.hf import HFEngineConfig
    from engines.hf.engine import HFEngine

    engines = {}
    for method in ("prompt_lookup", "draft"):
        engine = HFEngine(HFEngineConfig(dtype=DType.float32, device=Device.cpu, speculative=spec(method, num_tokens=3)))
        engine.use_draft(smollm2_hf)
        engine.load(smollm2_hf)
        engines[method] = engine
    yield engines
    for engine in engines.values():
        engine.close()


@pytest.mark.parametrize("method", ["prompt_lookup", "draft"])
def test_hf_speculation_keeps_the_greedy_output_and_counts_from_transformers(hf_spec, hf_engine, prompts, method):
    engine = hf_spec[method]
    engine.take_spec_counts()
    plain = [g.token_ids for g in hf_engine.generate(prompts[:1], GREEDY)] + \
            [g.token_ids for g in hf_engine.generate(prompts[1:], GREEDY)]  # batch 1 each: no padding
    generations = engine.generate(prompts, GREEDY)  # a batch of 2: one sequence at a time (batching=sequential)
    assert [g.token_ids for g in generations] == plain
    assert all(len(g.token_times) == len(g.token_ids) for g in generations)  # every token stamped
    counts = engine.take_spec_counts()
    assert_counts_consistent(counts, num_tokens=3)
    assert "transformers" in counts.source and engine.resolved["batching"] == "sequential"
    if method == "draft":  # the target as its own draft: greedy drafts are the target's own tokens
        assert counts.accepted_tokens / counts.drafted_tokens > 0.9
    assert engine.take_spec_counts().drafts == 0  # taking the counts starts new ones


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_llamacpp_prompt_lookup_keeps_the_greedy_output_of_the_batch(smollm2_gguf_engine, prompts, ignore_eos):
    plain, speculative = smollm2_gguf_engine
    sampling = SamplingSpec(max_new_tokens=16, ignore_eos=ignore_eos, temperature=0.0)
    expected = plain.generate(prompts, sampling)
    speculative.take_spec_counts()
    got = speculative.generate(prompts, sampling)
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert all(len(g.token_times) == len(g.token_ids) for g in got)
    counts = speculative.take_spec_counts()
    assert_counts_consistent(counts, num_tokens=4)
    assert counts.accepted_tokens > 0  # the answers quote the prompts


@pytest.fixture(scope="module")
def smollm2_gguf_engine():
    """llama.cpp on the shipped Q4_1 GGUF, without and with prompt lookup (4 tokens a step)."""
    pytest.importorskip("llama_cpp")  # the optional [llamacpp] extra
    from engines.llamacpp import LlamaCppEngineConfig
    from engines.llamacpp.engine import LlamaCppEngine
    from runner.models import gguf_path
    from tests.helpers import smollm2_spec

    engines = [LlamaCppEngine(LlamaCppEngineConfig(speculative=spec(m))) for m in ("none", "prompt_lookup")]
    for engine in engines:
        engine.load(str(gguf_path(smollm2_spec())))
    yield engines
    for engine in engines:
        engine.close()


def test_vllm_receives_its_speculative_config():
    from engines.vllm.speculative import speculative_config

    assert speculative_config(spec("none"), None) is None
    assert speculative_config(spec("prompt_lookup", num_tokens=5, max_ngram=4), None) == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    assert speculative_config(spec("draft", num_tokens=3, draft="smollm2-135m"), "/cache/draft") == {
        "method": "draft_model", "model": "/cache/draft", "num_speculative_tokens": 3}


def test_vllm_counts_are_the_difference_of_its_counters_worked_by_hand():
    from engines.vllm.speculative import counts_between

    before = {"num_drafts": 2, "num_draft_tokens": 6, "num_accepted_tokens": 3, "per_pos": [2, 1, 0]}
    # 4 drafts since: accepted 0, 1, 3 and 3 tokens of 3 each -> at least 1: 3, at least 2: 2, at least 3: 2
    after = {"num_drafts": 6, "num_draft_tokens": 18, "num_accepted_tokens": 10, "per_pos": [5, 3, 2]}
    counts = counts_between(before, after)
    assert (counts.drafts, counts.drafted_tokens, counts.accepted_tokens) == (4, 12, 7)
    assert counts.accepted_hist == [1, 1, 0, 2]


def test_an_engine_without_it_refuses_the_key_naming_those_that_have_it():
    from hydra import compose, initialize_config_dir

    from runner.__main__ import CONF_DIR, _one_line
    from runner.config import to_bench_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        with pytest.raises(Exception) as info:
            compose("config", overrides=["engine=ctranslate2", "engine.speculative.method=prompt_lookup"])
        line = _one_line(info.value)
        with pytest.raises(ConfigError) as added:  # `+engine.speculative...` reaches the runner's own check
            to_bench_config(compose("config", overrides=["engine=exllamav2", "+engine.speculative.method=draft"]))
    assert line.startswith("engine.speculative: engine ctranslate2 has no speculative option")
    assert "engines that have it: hf, llamacpp, vllm" in line and "\n" not in line
    assert "engine exllamav2 has no speculative option; engines that have it: hf, llamacpp, vllm" in str(added.value)


def test_a_method_the_engine_lacks_and_a_draft_of_another_tokenizer_are_refused(cache_dir):
    from runner.config import BenchConfig, ServerConfig, ServingConfig, SyntheticConfig, validate
    from engines.hf import HFEngineConfig
    from engines.llamacpp import LlamaCppEngineConfig
    from runner.plan import plan
    from tests.helpers import smollm2_spec

    with pytest.raises(ConfigError, match="engine.speculative.method=draft: not available on engine llamacpp; "
                                          "valid choices: none, prompt_lookup"):
        LlamaCppEngineConfig(speculative=spec("draft", draft="smollm2-135m")).validate()
    with pytest.raises(ConfigError, match="needs engine.speculative.draft"):
        HFEngineConfig(speculative=spec("draft")).validate()
    cfg = BenchConfig(engine=HFEngineConfig(speculative=spec("draft", draft="tiny-llama-random")),
                      model=smollm2_spec(), dataset=SyntheticConfig(limit=1, input_len=8), cache_dir=cache_dir)
    with pytest.raises(ConfigError) as info:
        plan(cfg)
    assert str(info.value).startswith("engine.speculative.draft=tiny-llama-random: its tokenizer differs from "
                                      "model smollm2-135m's") and "\n" not in str(info.value)
    cfg.engine.speculative.draft = "no-such-model"
    with pytest.raises(ConfigError, match="no such model config; valid choices: .*smollm2-135m"):
        plan(cfg)
    served = dataclasses.replace(cfg, scenario="serving", serving=ServingConfig(), server=ServerConfig(),
                                 engine=HFEngineConfig(speculative=spec("prompt_lookup")))
    with pytest.raises(ConfigError, match="engine.speculative.method=prompt_lookup: offline runs only"):
        validate(served)


@pytest.mark.slow
def test_cli_refusal_exits_2_in_one_line(run_cli):
    proc = run_cli("engine=ctranslate2", "engine.speculative.method=prompt_lookup")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "engines that have it: hf, llamacpp, vllm" in proc.stderr


@pytest.fixture(scope="module")
def spec_sweep(tmp_path_factory, cache_dir):
    """The issue's sweep from the CLI, small: hf without speculation, with prompt lookup and with a draft model,
    batch 1 and 2, then the report."""
    cwd = tmp_path_factory.mktemp("spec")
    proc = run_runner(cwd, cache_dir, "-m", "engine=hf", "engine.speculative.method=none,prompt_lookup,draft",
                      "batch_size=1,2", IN_PROCESS, *SPEC_SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cwd / "report"
    proc = run_runner(cwd, cache_dir, str(cwd / "outputs" / "multirun"), "--out", str(out), module="runner.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "outputs" / "multirun", out


@pytest.mark.slow
def test_the_sweep_records_counts_and_exactness_and_the_report_pairs_the_rows(spec_sweep):
    from runner.fields import undocumented
    from runner.results import record_paths

    records = [json.loads(p.read_text()) for p in record_paths(spec_sweep[0])]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert not undocumented(r)
        if r["engine_speculative_method"] == "none":
            assert "spec_verify_steps" not in r
            continue
        assert r["spec_exact"] is True and r["spec_greedy_agreement"] == 1.0
        assert r["spec_verify_steps"] == sum(r["spec_accepted_tokens_per_step_hist"]) > 0
        assert r["spec_acceptance_rate"] == r["spec_accepted_tokens"] / r["spec_drafted_tokens"]
        assert (r.get("spec_draft_path") is not None) == (r["engine_speculative_method"] == "draft")
    csv = pd.read_csv(spec_sweep[1] / "results.csv")
    spec_rows = csv[csv["engine_speculative_method"] != "none"]
    for _, row in spec_rows.iterrows():  # the speed-up is over the same batch size without speculation
        base = csv[(csv["engine_speculative_method"] == "none") & (csv["batch_size"] == row["batch_size"])]
        assert row["spec_speedup"] == pytest.approx(row["output_tok_s"] / base["output_tok_s"].item(), rel=1e-12)
    report = (spec_sweep[1] / "report.md").read_text()
    assert "## Speculative decoding: acceptance and speed-up by method and batch size" in report
    assert "| NOT EXACT |" not in report  # the flag column (the prose above the table names the flag)
    assert (spec_sweep[1] / "spec_speedup.png").is_file() and (spec_sweep[1] / "spec_acceptance.png").is_file()
