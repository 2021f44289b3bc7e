"""Prompts: real ShareGPT, synthetic exact-length, HF `datasets` (offline, from a local directory), the user's
own files (dataset=file); fingerprints of the prompts and of the data file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from runner.config import ConfigError, FileDatasetConfig, HFDatasetConfig, ShareGPTConfig, SyntheticConfig
from runner.data import data_file_fingerprint, load_prompts, prompts_fingerprint

from tests.helpers import ROOT


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


# ---------------------------------------------------------------- dataset=file
QUESTIONS = [f"Question number {i}: what is {i} plus {i}?" for i in range(8)]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return path


def test_file_jsonl_text_field_any_path_and_slices(tokenizer, tmp_path):
    rows = [{"id": i, "prompt": q} for i, q in enumerate(QUESTIONS)]
    path = _write_jsonl(tmp_path / "mes prompts é [v1]/données.jsonl", rows)  # [ ] would be a glob to `datasets`
    cfg = FileDatasetConfig(path=str(path), limit=8)
    assert cfg.name == "données.jsonl"
    prompts = load_prompts(cfg, tokenizer)
    assert prompts == tokenizer(QUESTIONS)["input_ids"]
    assert load_prompts(FileDatasetConfig(path=str(path), offset=3, limit=4), tokenizer) == prompts[3:7]
    with pytest.raises(ConfigError, match="past the end of 'données.jsonl', which has 8 prompts"):
        load_prompts(FileDatasetConfig(path=str(path), offset=6, limit=4), tokenizer)
    # the length filter comes before the slice, as for every dataset
    short = FileDatasetConfig(path=str(path), max_prompt_tokens=len(prompts[0]), limit=1)
    assert load_prompts(short, tokenizer) == [p for p in prompts if len(p) <= len(prompts[0])][:1]


def test_file_name_comes_from_the_path_when_the_config_is_composed(tmp_path):
    from hydra import compose, initialize_config_dir

    from runner.config import register_configs, to_bench_config

    register_configs()
    path = _write_jsonl(tmp_path / "my prompts é.jsonl", [{"text": "hello there, model"}])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        bench = to_bench_config(compose("config", overrides=["dataset=file", f'dataset.path="{path}"']))
    assert isinstance(bench.dataset, FileDatasetConfig)
    assert (bench.dataset.name, bench.dataset.path) == ("my prompts é.jsonl", str(path))


def test_file_openai_messages_render_with_the_chat_template(tokenizer, tmp_path):
    chats = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q},
              {"role": "assistant", "content": "an answer to drop"}] for q in QUESTIONS[:3]]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([{"messages": c, "source": "test"} for c in chats]))
    prompts = load_prompts(FileDatasetConfig(path=str(path), limit=3), tokenizer)
    expected = [tokenizer.apply_chat_template(c[:2], add_generation_prompt=True, tokenize=True, return_dict=True)
                ["input_ids"] for c in chats]
    assert prompts == expected
    assert tokenizer.decode(prompts[0]).endswith("<|im_start|>assistant\n")
    plain = load_prompts(FileDatasetConfig(path=str(path), limit=3, chat_template=False), tokenizer)
    assert plain == tokenizer(QUESTIONS[:3])["input_ids"]  # the first user turn, as text
    # OpenAI content as a list of parts: its text parts are the text
    parts = [[{"role": "user", "content": [{"type": "text", "text": q}, {"type": "image_url", "image_url": {}}]}]
             for q in QUESTIONS[:3]]
    path.write_text(json.dumps([{"messages": c} for c in parts]))
    assert load_prompts(FileDatasetConfig(path=str(path), limit=3, chat_template=False), tokenizer) == plain


def test_file_sharegpt_conversations_are_the_same_chats(tokenizer, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": "dropped"}]} for q in QUESTIONS]
    path = _write_jsonl(tmp_path / "sharegpt style.jsonl", rows)
    as_openai = _write_jsonl(tmp_path / "openai.jsonl", [{"messages": [{"role": "user", "content": q}]}
                                                          for q in QUESTIONS])
    assert load_prompts(FileDatasetConfig(path=str(path), limit=8), tokenizer) == \
        load_prompts(FileDatasetConfig(path=str(as_openai), limit=8), tokenizer)


def test_file_csv_parquet_txt(tokenizer, tmp_path):
    import pandas as pd

    texts = ['A "quoted", comma-laden prompt', "NA", "null", *QUESTIONS[:3]]  # NA and null stay prompts
    pd.DataFrame({"question": texts, "n": range(6)}).to_csv(tmp_path / "p.csv", index=False)
    expected = tokenizer(texts)["input_ids"]
    assert load_prompts(FileDatasetConfig(path=str(tmp_path / "p.csv"), limit=6, min_prompt_tokens=1), tokenizer) \
        == expected

    pd.DataFrame({"instruction": texts}).to_parquet(tmp_path / "p.parquet")
    assert load_prompts(FileDatasetConfig(path=str(tmp_path / "p.parquet"), limit=6, min_prompt_tokens=1),
                        tokenizer) == expected
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": "x"}] for q in QUESTIONS[:2]]
    pd.DataFrame({"conversation": chats}).to_parquet(tmp_path / "chats.parquet")
    assert load_prompts(FileDatasetConfig(path=str(tmp_path / "chats.parquet"), limit=2), tokenizer) == \
        [tokenizer.apply_chat_template(c[:1], add_generation_prompt=True, tokenize=True, return_dict=True)
         ["input_ids"] for c in chats]

    (tmp_path / "p.txt").write_text("\n".join([QUESTIONS[0], "", "   ", QUESTIONS[1], ""]) + "\n")
    assert load_prompts(FileDatasetConfig(path=str(tmp_path / "p.txt"), limit=2), tokenizer) == \
        tokenizer(QUESTIONS[:2])["input_ids"]


def test_file_named_fields(tokenizer, tmp_path):
    path = _write_jsonl(tmp_path / "two.jsonl", [{"prompt": "the wrong column here", "body": q} for q in QUESTIONS])
    assert load_prompts(FileDatasetConfig(path=str(path), text_field="body", limit=2), tokenizer) == \
        tokenizer(QUESTIONS[:2])["input_ids"]


def _one_line_error(cfg, tokenizer) -> str:
    with pytest.raises(ConfigError) as info:
        load_prompts(cfg, tokenizer)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_file_errors_name_the_key_and_the_choices(tokenizer, tmp_path):
    path = _write_jsonl(tmp_path / "p q.jsonl", [{"body": q, "id": 1} for q in QUESTIONS])
    assert _one_line_error(FileDatasetConfig(), tokenizer).startswith("dataset.path: set it to your prompts file")
    missing = str(tmp_path / "nope é.jsonl")
    assert _one_line_error(FileDatasetConfig(path=missing), tokenizer) == \
        f"dataset.path={missing}: No such file or directory"
    message = _one_line_error(FileDatasetConfig(path=str(tmp_path / "p.xlsx")), tokenizer)
    assert message.startswith(f"dataset.path={tmp_path / 'p.xlsx'}: unknown extension '.xlsx'; valid: .jsonl, .json")
    assert ".csv" in message and ".parquet" in message and ".txt" in message
    assert _one_line_error(FileDatasetConfig(path=str(path)), tokenizer) == (
        f"dataset.path={path}: no prompt column found; set dataset.text_field or dataset.messages_field to one of "
        "the columns of p q.jsonl: body, id")
    assert _one_line_error(FileDatasetConfig(path=str(path), text_field="prompt"), tokenizer) == \
        "dataset.text_field=prompt: not a column; columns of p q.jsonl: body, id"
    assert _one_line_error(FileDatasetConfig(path=str(path), messages_field="chat"), tokenizer) == \
        "dataset.messages_field=chat: not a column; columns of p q.jsonl: body, id"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": oops}\n')
    assert _one_line_error(FileDatasetConfig(path=str(bad)), tokenizer).startswith(
        f"dataset.path={bad}: not a valid .jsonl file of prompts: ")
    chats = _write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"speaker": "me", "text": "hi"}]}])
    assert "expected {role, content} (OpenAI) or {from, value} (ShareGPT)" in \
        _one_line_error(FileDatasetConfig(path=str(chats)), tokenizer)
    assert "for chat messages set dataset.messages_field=messages" in \
        _one_line_error(FileDatasetConfig(path=str(chats), text_field="messages"), tokenizer)


def test_file_chat_template_needs_one(tokenizer, tmp_path):
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    path = _write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS])
    assert "set dataset.chat_template=false" in _one_line_error(FileDatasetConfig(path=str(path)), bare)
    assert load_prompts(FileDatasetConfig(path=str(path), chat_template=False, limit=2), bare) == \
        tokenizer(QUESTIONS[:2])["input_ids"]


# ---------------------------------------------------------------- fingerprints
def test_prompts_fingerprint_is_the_exact_ids():
    prompts = [[1, 2, 3], [4, 5]]
    fingerprint = prompts_fingerprint(prompts)
    assert len(fingerprint) == 16 and fingerprint == prompts_fingerprint([[1, 2, 3], [4, 5]])
    assert fingerprint == prompts_fingerprint([np.array([1, 2, 3]), np.array([4, 5])])
    assert fingerprint != prompts_fingerprint([[1, 2, 3], [4, 6]])  # one token
    assert fingerprint != prompts_fingerprint([[1, 2], [3, 4, 5]])  # the same ids, other boundaries
    assert fingerprint != prompts_fingerprint([[4, 5], [1, 2, 3]])  # the same prompts, other order
    code = "from runner.data import prompts_fingerprint; print(prompts_fingerprint([[1, 2, 3], [4, 5]]))"
    other_process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                                   env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other_process.stdout.strip() == fingerprint


def test_data_file_fingerprint_hashes_the_bytes_once(tmp_path):
    path = _write_jsonl(tmp_path / "fp é.jsonl", [{"prompt": q} for q in QUESTIONS])
    cfg = FileDatasetConfig(path=str(path))
    assert data_file_fingerprint(cfg) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data_file_fingerprint(SyntheticConfig()) is None and data_file_fingerprint(HFDatasetConfig()) is None
    assert data_file_fingerprint(ShareGPTConfig(path=str(path))) == data_file_fingerprint(cfg)
    # cached by (path, size, mtime): bytes changed behind an unchanged size and mtime are not read again ...
    stat = path.stat()
    path.write_bytes(path.read_bytes().replace(b"Question", b"Qvestion"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data_file_fingerprint(cfg) == hashlib.sha256(path.read_bytes().replace(b"Qvestion", b"Question")).hexdigest()
    # ... and a new mtime is a new hash
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert data_file_fingerprint(cfg) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="dataset.path=/no/such.jsonl: No such file"):
        data_file_fingerprint(FileDatasetConfig(path="/no/such.jsonl"))


def test_sharegpt_package_file_fingerprint():
    first = data_file_fingerprint(ShareGPTConfig())
    assert len(first) == 64 and data_file_fingerprint(ShareGPTConfig()) == first


def test_a_prompts_file_given_to_the_other_loaders_points_to_dataset_file(tokenizer, tmp_path):
    from runner.config import HFDatasetConfig, ShareGPTConfig

    path = _write_jsonl(tmp_path / "mine.jsonl", [{"prompt": "hello"}])
    for cfg in (ShareGPTConfig(path=str(path)), HFDatasetConfig(path=str(path))):
        with pytest.raises(ConfigError, match=r"For your own prompts file use dataset=file|for your own prompts file "
                                              r"use dataset=file"):
            load_prompts(cfg, tokenizer)
