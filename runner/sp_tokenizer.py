"""A Llama-2-like tokenizer for random-weights models: SentencePiece BPE trained here on ShareGPT text.

Real Llama-2 has a 32000-piece SentencePiece BPE vocabulary with byte fallback; it cannot be downloaded
here, so one of the same kind is trained (seconds) on the first few MiB of ShareGPT prompts and cached
under ``<cache>/tokenizers/``, once per machine. The directory holds the SentencePiece model
(``tokenizer.model``, which llama.cpp's convert_hf_to_gguf.py reads) and the same vocabulary and merges
as an HF ``LlamaTokenizer`` (``tokenizer.json``, which transformers and CTranslate2 read); the two
tokenize identically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator, Optional

from runner.cache import build_dir_atomically, cache_root
from runner.config import ConfigError, ShareGPTConfig
from runner.data import _sharegpt_texts

CORPUS_MIB = 8  # ShareGPT's first human turns hold ~13 MiB; 8 MiB trains 32000 pieces in ~2 s on 2 cores

# Llama-2's trainer settings, as its tokenizer.model records them (trainer_spec), but the corpus.
LLAMA2_TRAINER = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=0.99995,
    max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
)


def tokenizer_dir(vocab_size: int, cache_dir: Optional[str], corpus_mib: int = CORPUS_MIB) -> Path:
    """The directory of the trained tokenizer (HF files and ``tokenizer.model``), trained on first use."""
    target = cache_root(cache_dir) / "tokenizers" / f"sentencepiece-bpe-{vocab_size}-sharegpt-{corpus_mib}mib"
    if not target.exists():
        try:  # read before training: an error raised inside SentencePiece's trainer comes out as RuntimeError
            lines = list(_corpus_lines(corpus_mib << 20))
        except ConfigError as exc:  # e.g. on a machine without the data: a copied-in tokenizer works too
            raise ConfigError(f"model.random: training its tokenizer needs ShareGPT text ({exc}), "
                              f"or a trained tokenizer copied to {target}") from None
        build_dir_atomically(target, lambda out: _train(out, vocab_size, lines))
    return target


def _train(out: Path, vocab_size: int, lines: list[str]) -> None:
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        max_sentence_length=1 << 16,  # SentencePiece skips longer lines (its default: 4192 bytes)
        num_threads=os.cpu_count() or 1, minloglevel=2, **LLAMA2_TRAINER,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    # The protobuf-free extractor: vocab by id and BPE merges rebuilt from the pieces' ranks.
    vocab, _, merges = SentencePieceExtractor(str(out / "tokenizer.model")).extract()
    # Llama-2's tokenizer adds <s> and never </s>; ids go to the engines as made here.
    LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False).save_pretrained(out)


def _corpus_lines(max_bytes: int) -> Iterator[str]:
    """Non-empty lines of ShareGPT's first human turns, in file order, up to ``max_bytes`` of UTF-8."""
    size = 0
    for text in _sharegpt_texts(ShareGPTConfig()):
        for line in filter(str.strip, text.splitlines()):
            yield line
            size += len(line.encode())
            if size >= max_bytes:
                return
