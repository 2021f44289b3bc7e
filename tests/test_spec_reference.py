"""Speculative decoding's exactness reference (the same engine without speculation) and the figures a
speculative row must not carry: on the real SmolLM2-135M, HF on the CPU."""

from __future__ import annotations

from tests.helpers import spec


def test_vllm_with_a_draft_model_gives_no_perplexity_and_says_where_it_is():
    """vLLM 0.26 on the GPU scored 3.1e48 for SmolLM2 with its draft loaded (25.76 without): the row's
    perplexity is empty with the reason, and never a wrong figure."""
    from engines.vllm import VLLMEngineConfig
    from engines.vllm.engine import VLLMEngine
    from runner.perplexity import perplexity_fields

    fields = perplexity_fields(VLLMEngine(VLLMEngineConfig(speculative=spec("draft"))), [[1, 2, 3]], count=1)
    assert fields["perplexity"] is None and "engine.speculative.method=none" in fields["perplexity_note"]


def test_the_plain_reference_made_in_a_child_process_equals_the_one_made_here(tmp_path, cache_dir, monkeypatch):
    """On a GPU the same engine without speculation runs in a child process of its own (the memory it took goes
    back to the driver when it exits: runner.quality.cached_in_own_process). Forced here on the CPU, the child
    must give what this process gives."""
    import runner.quality
    import runner.speculative
    from engines.hf import HFEngineConfig
    from runner.config import BenchConfig, GenerationConfig, SyntheticConfig
    from runner.models import prepare
    from runner.plan import plan
    from tests.helpers import smollm2_spec

    cfg = BenchConfig(engine=HFEngineConfig(speculative=spec("prompt_lookup")), model=smollm2_spec(),
                      dataset=SyntheticConfig(limit=2, input_len=16), generation=GenerationConfig(max_new_tokens=8),
                      cache_dir=cache_dir)
    work = plan(cfg)
    model_path = prepare(cfg.model, "hf", cache_dir).path
    made = {}
    for where in ("here", "child"):
        monkeypatch.setattr(runner.speculative, "cache_root", lambda _, where=where: tmp_path / where)
        monkeypatch.setattr(runner.quality, "on_cuda", lambda where=where: where == "child")
        made[where] = runner.speculative.plain_reference(cfg, work, model_path, make_room=lambda: None)
    assert made["child"] == made["here"] and len(made["here"]["outputs"]) == 2
    assert all(len(out) == 8 for out in made["here"]["outputs"])
    assert (tmp_path / "child" / "references").is_dir()  # the parent wrote the child's result to the cache


def test_a_point_without_speculation_is_the_reference_of_the_speculative_points_after_it(tmp_path, cache_dir,
                                                                                      monkeypatch):
    """The none point leaves its greedy heads where the speculative point of the same engine, model, prompts and
    batches looks for its reference: that point then starts no engine of its own for it (on an H200 each such
    start cost vLLM 35-55 s), and the outputs are those the reference engine gives."""
    import runner.speculative
    from engines.hf import HFEngineConfig
    from runner.config import BenchConfig, GenerationConfig, SyntheticConfig
    from runner.models import prepare
    from runner.plan import plan
    from runner.point import run_point
    from tests.helpers import smollm2_spec

    def config(method: str) -> BenchConfig:
        return BenchConfig(engine=HFEngineConfig(speculative=spec(method)), model=smollm2_spec(),
                           dataset=SyntheticConfig(limit=2, input_len=16), generation=GenerationConfig(max_new_tokens=8),
                           cache_dir=cache_dir)

    monkeypatch.setattr(runner.speculative, "cache_root", lambda _: tmp_path / "remembered")
    record = run_point(config("none"), plan(config("none")), tmp_path / "run", [])
    assert record["status"] == "ok", record.get("error")

    def no_engine():
        raise AssertionError("a reference engine was started although the none point left its outputs")

    cfg = config("prompt_lookup")
    remembered = runner.speculative.plain_reference(cfg, plan(cfg), "unused", make_room=no_engine)
    assert remembered["reference"].endswith("(the measured run of that point)")
    monkeypatch.setattr(runner.speculative, "cache_root", lambda _: tmp_path / "made")
    made = runner.speculative.plain_reference(cfg, plan(cfg), prepare(cfg.model, "hf", cache_dir).path,
                                              make_room=lambda: None)
    assert remembered["outputs"] == made["outputs"] and len(made["outputs"]) == 2
