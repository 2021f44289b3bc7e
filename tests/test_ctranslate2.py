"""The CTranslate2 engine on the real SmolLM2: token counting, EOS, agreement with HF greedy, the CLI."""

from __future__ import annotations

import json

import pytest

from engines.base import SamplingSpec
from engines.ctranslate2.engine import CTranslate2Engine
from runner.config import ConfigError
from engines.base import Device
from engines.ctranslate2 import CT2ComputeType, CTranslate2EngineConfig
from runner.models import prepare
from tests.helpers import FAST, IN_PROCESS, chat_ids, skip_module_without, smollm2_spec

skip_module_without("ctranslate2", "[ctranslate2]")

SMOLLM2 = smollm2_spec()
EOS = 2  # <|im_end|>, SmolLM2-Instruct's eos_token_id


def _engine(compute_type: str, cache_dir: str) -> CTranslate2Engine:
    config = CTranslate2EngineConfig(compute_type=CT2ComputeType(compute_type), device=Device.cpu)
    engine = CTranslate2Engine(config)
    engine.load(prepare(SMOLLM2, "ct2", cache_dir, CTranslate2Engine.model_variant(config)).path)
    return engine


@pytest.fixture(scope="module")
def fp32(ct2_fp32):
    """float32, loaded once per session (conftest: test_perplexity scores with it too)."""
    return ct2_fp32


@pytest.fixture(scope="module")
def int8(smollm2_hf, cache_dir):
    engine = _engine("int8", cache_dir)
    yield engine
    engine.close()


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer("The capital of France is")["input_ids"], chat_ids(tokenizer, "Name a colour."),
            tokenizer("Once upon a time, in a small village by the sea, there lived an old fisherman who")["input_ids"]]


@pytest.mark.slow
def test_resolved_device_compute_type_and_weights(fp32, int8):
    assert fp32.resolved == {"device": "cpu", "dtype": "float32"}
    assert int8.resolved == {"device": "cpu", "dtype": "int8_float32"}
    # 134.5M parameters: 4 bytes each in float32, ~1 in int8 (plus per-row scales and float32 norms).
    assert 530e6 < fp32.weights_bytes() < 545e6
    assert 130e6 < int8.weights_bytes() < 145e6


@pytest.mark.slow
def test_forced_length_counts_exactly_the_requested_tokens(fp32, tokenizer):
    gens = fp32.generate(_prompts(tokenizer), SamplingSpec(12, ignore_eos=True, temperature=0.0))
    for gen in gens:
        assert len(gen.token_ids) == 12
        assert len(gen.token_times) == 12
        assert gen.token_times == sorted(gen.token_times)
        assert EOS not in gen.token_ids  # EOS suppressed, not merely counted


@pytest.mark.slow
def test_without_token_timestamps_the_same_tokens_and_no_stamps(fp32, tokenizer):
    """engine.token_timestamps=false drops CTranslate2's per-token callback: same greedy tokens, no stamps."""
    spec, prompts = SamplingSpec(12, ignore_eos=True, temperature=0.0), _prompts(tokenizer)
    stamped = fp32.generate(prompts, spec)
    fp32.config.token_timestamps = False
    try:
        unstamped = fp32.generate(prompts, spec)
    finally:
        fp32.config.token_timestamps = True
    assert [g.token_ids for g in unstamped] == [g.token_ids for g in stamped]
    assert all(g.token_times is None for g in unstamped)
    # ...and the record says so (engine_streams_tokens), where the runner asks the class
    assert CTranslate2Engine.stamps_tokens(CTranslate2EngineConfig(token_timestamps=False)) is False
    assert CTranslate2Engine.stamps_tokens(CTranslate2EngineConfig()) is True


@pytest.mark.slow
def test_eos_allowed_stops_each_sequence_at_its_own_eos(fp32, tokenizer):
    short = chat_ids(tokenizer, "Reply with the single word: yes")
    long = tokenizer("Write a long story about the sea. Once upon a time")["input_ids"]
    stopped, running = fp32.generate([short, long], SamplingSpec(48, ignore_eos=False, temperature=0.0))
    assert stopped.token_ids[-1] == EOS and stopped.token_ids.count(EOS) == 1  # ends at its EOS, nothing after
    assert len(stopped.token_ids) < 48
    assert len(stopped.token_times) == len(stopped.token_ids)
    assert len(running.token_ids) == len(running.token_times) == 48


@pytest.mark.slow
def test_one_token_prompt_in_a_batch_changes_nothing(fp32, tokenizer):
    """With a 1-token prompt CTranslate2 prefills nothing and echoes the other prompts; the engine undoes it."""
    one, longer = [504], tokenizer("The capital of France is")["input_ids"]
    for ignore_eos in (True, False):
        sampling = SamplingSpec(8, ignore_eos=ignore_eos, temperature=0.0)
        batched = fp32.generate([one, longer], sampling)
        alone = [fp32.generate([p], sampling)[0] for p in (one, longer)]
        assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
        assert all(len(g.token_times) == len(g.token_ids) for g in batched)


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["fp32", "int8"])
def test_greedy_answer_is_paris(request, tokenizer, engine_name):
    engine = request.getfixturevalue(engine_name)
    [gen] = engine.generate([tokenizer("The capital of France is")["input_ids"]], SamplingSpec(4, True, 0.0))
    assert tokenizer.decode(gen.token_ids).startswith(" Paris")


def _agreeing(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy outputs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.slow
def test_greedy_agrees_with_hf_transformers(hf_engine, fp32, int8, tokenizer):
    prompts, sampling = _prompts(tokenizer), SamplingSpec(16, ignore_eos=True, temperature=0.0)
    reference = [g.token_ids for g in hf_engine.generate(prompts, sampling)]  # HF float32 on the CPU
    fp32_agree = [_agreeing(g.token_ids, ref) for g, ref in zip(fp32.generate(prompts, sampling), reference)]
    int8_agree = [_agreeing(g.token_ids, ref) for g, ref in zip(int8.generate(prompts, sampling), reference)]
    print(f"\nleading tokens agreeing with HF float32 greedy (of 16): float32 {fp32_agree}, int8 {int8_agree}")
    assert sum(n == 16 for n in fp32_agree) >= 2
    # int8 changes the weights, so it may diverge anywhere; recorded above, not asserted.


def test_compute_type_the_device_lacks_is_a_one_line_error():
    import ctranslate2

    unsupported = next(t for t in ("float16", "bfloat16", "int8_float16")
                       if t not in ctranslate2.get_supported_compute_types("cpu"))
    config = CTranslate2EngineConfig(compute_type=CT2ComputeType(unsupported), device=Device.cpu)
    with pytest.raises(ConfigError, match=rf"^engine.compute_type={unsupported}: not supported on cpu; "
                                          r"supported there: .*float32") as info:
        CTranslate2Engine.model_variant(config)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_cli_end_to_end_int8_batch_2(run_cli, tmp_path):
    proc = run_cli("engine=ctranslate2", "engine.compute_type=int8", "batch_size=2", IN_PROCESS, *FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [path] = tmp_path.glob("outputs/runs/*/*/record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok", record["error"]
    assert record["output_tokens"] == 4 * 8
    assert record["dtype"] == "int8_float32" and record["model_format"] == "ct2"
    assert record["model_path"].endswith("ct2-int8")
    assert all(r["ttft_ms"] is not None and len(r["itl_ms"]) == 7 for r in record["request_samples"])  # timed


def test_the_callbacks_worker_thread_keeps_its_python_state(fp32, tokenizer):
    """pybind11 makes CTranslate2's worker thread a new Python thread state for every callback and deletes it after
    (what made the per-token stamps cost 3-4 % at batch 16 on the H200). A thread-local set in one callback shows
    it: gone at the next call, until the engine's _keep_thread_state keeps the state. A fresh Generator: its own
    worker thread, whose state nothing kept yet."""
    import threading

    import ctranslate2

    from engines.ctranslate2.engine import _keep_thread_state

    generator = ctranslate2.Generator(str(fp32.weights_file.parent), device="cpu", compute_type="float32")
    prompts = [[fp32.vocab[t] for t in p] for p in _prompts(tokenizer)]

    seen = threading.local()  # its value for a thread lives in that thread's Python state

    def fresh_states(keep: bool) -> tuple[int, int]:
        calls, fresh = [0], [0]

        def callback(step) -> bool:
            calls[0] += 1
            if not getattr(seen, "here", False):
                fresh[0] += 1
                seen.here = True
                if keep:
                    _keep_thread_state()
            return False

        generator.generate_batch(prompts, max_length=16, min_length=16, sampling_topk=1,
                                 include_prompt_in_result=False, callback=callback)
        return fresh[0], calls[0]

    churned, calls = fresh_states(keep=False)
    assert calls == 48 and churned == calls  # a new thread state at every call
    kept, calls = fresh_states(keep=True)
    assert calls == 48 and kept == 1  # one, kept from the first call on
    assert fresh_states(keep=False)[0] == 0  # and still kept in the next generate


def test_the_callback_cost_script_times_all_three_ways(cache_dir):
    """scripts/ct2_callback_cost.py (the figures in _keep_thread_state's docstring) runs and prints each way."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ct2_callback_cost.py"), "--batch-size", "4",
                           "--new-tokens", "16", "--rounds", "2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LLM_BENCH_CACHE": cache_dir})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["none", "clock only", "clock, state kept"], proc.stdout
