"""Random-weights models with a real architecture's exact shapes, built from a preset (``model.random``).

With output length forced (``generation.ignore_eos``), an engine does the same work on random weights as
on the real ones, so speed and memory are measured faithfully without downloading any checkpoint. Each
preset is saved as a plain HF directory (LlamaConfig, seeded weights as safetensors, the trained
Llama-2-like tokenizer of ``runner.sp_tokenizer``, generation_config with its BOS/EOS), from which every
other format is converted as for any HF model.

Built directly on the GPU in float16 where CUDA is available. On CPU only small presets build (float32):
a 7B model's random init in float16 takes very long there. Build one anyway, then point ``model.hf`` at it:
``python -m runner.random_model llama2-7b <out_dir> --force-cpu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from runner import sp_tokenizer
from runner.config import ConfigError
from runner.presets import PRESETS, preset

SEED = 0
CPU_MAX_PARAMS = 1_000_000_000  # bigger presets are refused on CPU unless forced (minutes of init, GiBs of RAM)


def source_id(name: str) -> str:
    """Everything that decides a preset's weights and tokenizer, for the model cache key."""
    return f"random:{name}:{preset(name)}:seed={SEED}:tokenizer=sharegpt-{sp_tokenizer.CORPUS_MIB}mib"


def tokenizer_dir(name: str, cache_dir: Optional[str]) -> Path:
    """The preset's tokenizer alone (trained on first use): the runner tokenizes before any weights exist."""
    return sp_tokenizer.tokenizer_dir(preset(name).vocab_size, cache_dir)


def llama_config(name: str, bos_token_id: int, eos_token_id: int):
    """The preset's LlamaConfig (Llama-2's: untied embeddings, multi-head attention)."""
    from transformers import LlamaConfig

    return LlamaConfig(**dataclasses.asdict(preset(name)), tie_word_embeddings=False,
                       bos_token_id=bos_token_id, eos_token_id=eos_token_id)


def build_random_model(name: str, out_dir: Path, cache_dir: Optional[str], force_cpu: bool = False) -> None:
    """Save preset ``name`` with seeded random weights as an HF directory in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    shapes = preset(name)
    cuda = torch.cuda.is_available()
    big = shapes.n_params() > CPU_MAX_PARAMS
    if big and not cuda and not force_cpu:
        raise ConfigError(f"model.random={name}: {shapes.n_params() / 1e9:.1f}B parameters are built on a CUDA GPU, "
                          f"and none is here; to build on CPU anyway: python -m runner.random_model {name} "
                          "<dir> --force-cpu, then model.hf=<dir>")
    tokenizer_files = tokenizer_dir(name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_files)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = llama_config(name, **special)
    torch.manual_seed(SEED)
    # Initialized where it is made: no float32 CPU copy of 7B parameters first (27 GB, minutes).
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16 if cuda or big else torch.float32)
    model.generation_config = GenerationConfig(**special)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)  # safetensors
    # The caller may be the runner's parent process, which then starts a server (scenario=serving): vLLM's failed
    # with CUDA OOM when the 13 GB of a just-built Llama-2-7B stayed in this process's CUDA caching allocator.
    del model
    if cuda:
        torch.cuda.empty_cache()
    for path in tokenizer_files.iterdir():
        shutil.copy2(path, out_dir / path.name)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Save a random-weights preset as an HF directory.")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cache-dir", default=None, help="where the trained tokenizer is cached")
    parser.add_argument("--force-cpu", action="store_true", help="build a big preset without a GPU (slow)")
    args = parser.parse_args(argv)
    build_random_model(args.preset, args.out_dir, args.cache_dir, args.force_cpu)


if __name__ == "__main__":
    main()
