"""Prompts: real ShareGPT, synthetic exact-length, HF `datasets` (offline, from a local directory)."""

from __future__ import annotations

import json

import pytest

from runner.config import ConfigError, HFDatasetConfig, ShareGPTConfig, SyntheticConfig
from runner.data import load_prompts


def test_sharegpt_slices_are_consistent_and_filtered(tokenizer):
    first = load_prompts(ShareGPTConfig(limit=6, max_prompt_tokens=256), tokenizer)
    shifted = load_prompts(ShareGPTConfig(offset=2, limit=4, max_prompt_tokens=256), tokenizer)
    assert len(first) == 6 and shifted == first[2:]
    assert all(4 <= len(p) <= 256 for p in first)
    text = tokenizer.decode(first[0])
    assert "Jeff Walker" in text  # the first human turn of the first ShareGPT V3 conversation


def test_sharegpt_slice_past_the_end_is_an_error(tokenizer, tmp_path):
    path = tmp_path / "small.json"
    conversations = [{"id": str(i), "conversations": [{"from": "human", "value": f"question number {i} here"},
                                                      {"from": "gpt", "value": "answer"}]} for i in range(5)]
    path.write_text(json.dumps(conversations))
    assert len(load_prompts(ShareGPTConfig(path=str(path), limit=5), tokenizer)) == 5
    with pytest.raises(ConfigError, match="past the end of 'sharegpt', which has 5 prompts"):
        load_prompts(ShareGPTConfig(path=str(path), offset=3, limit=3), tokenizer)


def test_truncated_sharegpt_file_keeps_its_complete_conversations(tokenizer, tmp_path):
    path = tmp_path / "cut.json"
    whole = json.dumps([{"conversations": [{"from": "human", "value": f"a question about item {i}"}]}
                        for i in range(3)])
    path.write_text(whole[: whole.rindex("item 2") + 3])  # cut inside the last conversation
    assert len(load_prompts(ShareGPTConfig(path=str(path), limit=2), tokenizer)) == 2


def test_synthetic_prompts_have_the_exact_length_and_are_stable(tokenizer):
    prompts = load_prompts(SyntheticConfig(input_len=37, limit=5, seed=3), tokenizer)
    assert [len(p) for p in prompts] == [37] * 5
    assert load_prompts(SyntheticConfig(input_len=37, limit=2, offset=3, seed=3), tokenizer) == prompts[3:]
    assert not set(tokenizer.all_special_ids) & {t for p in prompts for t in p}


def test_hf_dataset_from_a_local_directory(tokenizer, tmp_path):
    """The TinyStories path through `datasets`, offline: a local directory with a validation split."""
    data = tmp_path / "tinystories"
    data.mkdir()
    stories = [{"text": f"Once upon a time there was a little cat number {i}."} for i in range(30)]
    (data / "validation.jsonl").write_text("\n".join(json.dumps(s) for s in stories))
    cfg = HFDatasetConfig(path=str(data), split="validation[:20]", offset=5, limit=10)
    prompts = load_prompts(cfg, tokenizer)
    assert len(prompts) == 10
    assert tokenizer.decode(prompts[0]).endswith("cat number 5.")
    with pytest.raises(ConfigError, match="past the end of 'tinystories', which has 20 prompts"):
        load_prompts(HFDatasetConfig(path=str(data), split="validation[:20]", offset=15, limit=10), tokenizer)
    with pytest.raises(ConfigError, match="dataset.text_field=story: not a column; columns: text"):
        load_prompts(HFDatasetConfig(path=str(data), split="validation", text_field="story"), tokenizer)
