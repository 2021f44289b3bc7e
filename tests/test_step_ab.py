"""scripts/step_ab.py: the runner's step clock and memory sampler switched on and off inside HF's decoding loop."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))


def test_the_effects_survive_a_host_that_swings_between_groups():
    """Known slowdowns (clock 2 %, sampler 5 %) under group levels that swing ±25 % (the H200's host) and 1 %
    noise per block: each effect is recovered inside its interval, and an unfinished group is left out."""
    import step_ab

    rng = np.random.default_rng(1)
    blocks = []
    for group in range(40):
        level = 0.03 * rng.uniform(0.75, 1.25)
        for clock, sampler in step_ab.STATES:
            step = level * (1.02 if clock else 1) * (1.05 if sampler else 1) * rng.normal(1, 0.01)
            blocks.append({"group": group, "clock": clock, "sampler": sampler, "step_s": step})
    blocks.append({"group": 40, "clock": True, "sampler": True, "step_s": 9.0})  # a group cut short: ignored
    out = step_ab.effects(blocks)
    assert out["groups"] == 40
    for name, truth in (("clock", 0.02), ("sampler", 0.05), ("runner", 1.02 * 1.05 - 1)):
        assert out[name]["ci_low"] < truth < out[name]["ci_high"], (name, out[name])
        assert out[name]["ci_high"] - out[name]["ci_low"] < 0.02  # the swings between groups cancel
    assert out["between_groups_cv"] > 0.1 and out["within_group_sd"] < 0.02


@pytest.mark.slow
def test_the_runner_adds_nothing_measurable_inside_hfs_loop(cache_dir, monkeypatch):
    """Real SmolLM2 on this CPU, both parts switched in every group of four blocks; the sampler really stops
    while its state is off: it takes 0.5-0.75 of the samples it would running throughout (a resumed sampler
    samples at once), where one never stopped takes them all."""
    pytest.importorskip("transformers")
    import step_ab

    monkeypatch.setenv("LLM_BENCH_CACHE", cache_dir)
    r = step_ab.measure("hf", batch_size=1, seconds=8, block_s=0.25,
                        overrides=["dataset=synthetic", "dataset.input_len=32"])
    print({k: v for k, v in r.items() if k != "blocks"})
    assert r["groups"] >= 4 and len(r["blocks"]) == 4 * r["groups"]
    for group in range(r["groups"]):
        states = {(b["clock"], b["sampler"]) for b in r["blocks"] if b["group"] == group}
        assert states == set(step_ab.STATES)
    assert 0.3 < r["sampler_running_share"] < 0.9, r["sampler_running_share"]
    assert abs(r["runner"]["slowdown"]) < 0.05, r["runner"]
    assert math.isfinite(r["runner"]["ci_low"]) and r["runner"]["ci_low"] < r["runner"]["ci_high"]
    assert r["clock_read_share_of_call"] < 0.01


def test_pooled_runs_keep_their_groups_apart():
    """--pool: two runs of the same configuration count every group of both; another batch size stays apart."""
    import step_ab

    def run(batch_size, groups, slow):
        blocks = [{"group": g, "clock": c, "sampler": s, "step_s": 0.03 * (1 + g / 10) * (slow if s else 1)}
                  for g in range(groups) for c, s in step_ab.STATES]
        return {"config": "hf", "batch_size": batch_size, "blocks": blocks}

    pooled = step_ab.pool([run(1, 3, 1.1), run(1, 5, 1.1), run(16, 4, 1.0)])
    assert pooled["hf", 1]["groups"] == 8 and pooled["hf", 16]["groups"] == 4
    assert pooled["hf", 1]["sampler"]["slowdown"] == pytest.approx(0.1)
    assert pooled["hf", 16]["runner"]["slowdown"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.gpu
def test_exllamav2_runner_step_against_the_bare_step_in_place(smollm2_rtn, monkeypatch, cache_dir):
    """The ExLlamaV2 A/B on SmolLM2 RTN: every group holds the four states, and the runner's step (its stamp and
    bookkeeping) costs no more than a few per cent of a ~1-2 ms step."""
    import step_ab

    monkeypatch.setenv("LLM_BENCH_CACHE", cache_dir)
    r = step_ab.measure("exllamav2", batch_size=1, seconds=6, block_s=0.05,
                        overrides=[f"model.hf={smollm2_rtn}", "model.gguf=null", "dataset=synthetic",
                                   "dataset.input_len=32"])
    print({k: v for k, v in r.items() if k != "blocks"})
    assert r["groups"] >= 8 and len(r["blocks"]) == 4 * r["groups"]
    for group in range(r["groups"]):
        assert {(b["clock"], b["sampler"]) for b in r["blocks"] if b["group"] == group} == set(step_ab.STATES)
    assert abs(r["runner"]["slowdown"]) < 0.05, r["runner"]
