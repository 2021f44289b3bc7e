"""The GPTQ checkpoint layout both ways of making one share: variants, group sizes per module, the packed int32
words, config.json's quantization_config."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from runner.config import ConfigError

VARIANT_PATTERN = re.compile(r"gptq-w(?P<bits>[48])g(?P<group>\d+)")
# vLLM fuses these projections, and matches `dynamic` patterns against the fused name.
FUSED_NAMES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
               "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
COPIED_FILES = ("generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class GPTQSpec:
    bits: int
    group_size: int

    @property
    def pack_factor(self) -> int:
        return 32 // self.bits


@dataclass(frozen=True)
class CalibrationSpec:
    """Which ShareGPT prompts calibrate gptqmodel: ``samples`` prompts from ``offset`` (after the filter)."""

    offset: int = 4096
    samples: int = 32
    min_tokens: int = 32
    max_tokens: int = 256

    def key(self) -> str:
        return f"sharegpt{self.offset}+{self.samples}x{self.min_tokens}-{self.max_tokens}"


CALIBRATION = CalibrationSpec()


def parse_variant(variant: str) -> GPTQSpec:
    match = VARIANT_PATTERN.fullmatch(variant)
    if not match:
        raise ConfigError(f"model variant={variant}: not a GPTQ variant; valid: gptq-w4g<group>, gptq-w8g<group>")
    return GPTQSpec(bits=int(match["bits"]), group_size=int(match["group"]))


def prequantized(model_path: str) -> bool:
    """Whether a local HF directory already holds quantized (GPTQ, EXL2, ...) weights: used as it is."""
    config = Path(model_path).expanduser() / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def cache_variant(variant: str, random_weights: bool, calibration: CalibrationSpec = CALIBRATION) -> str:
    """The cache entry name: the variant plus how it was made (RTN, or gptqmodel and its calibration)."""
    parse_variant(variant)
    return f"{variant}-sym-rtn" if random_weights else f"{variant}-sym-gptqmodel-mse-{calibration.key()}"


def module_group_size(in_features: int, out_features: int, spec: GPTQSpec) -> Optional[int]:
    """The group size a linear gets, or None: it stays float16.

    The variant's group size where it divides the input size, else the next smaller of 64 and 32 that
    does (group sizes vLLM's Marlin kernels take too), else -1 (one group per output channel).
    """
    if in_features % spec.pack_factor or out_features % spec.pack_factor:
        return None
    fitting = [g for g in (spec.group_size, 64, 32) if g <= spec.group_size and in_features % g == 0]
    return fitting[0] if fitting else -1


def dynamic_overrides(shapes: dict[str, tuple[int, int]], spec: GPTQSpec) -> dict[str, dict]:
    """gptqmodel/vLLM ``dynamic`` entries for the modules that deviate: "-:" skips, "+:" overrides.

    ``shapes``: linear module name -> (out_features, in_features). Decided per leaf name (q_proj, ...),
    since every decoder layer has the same shapes; the pattern also matches vLLM's fused name.
    """
    overrides: dict[str, dict] = {}
    for leaf, (out_features, in_features) in sorted({n.rsplit(".", 1)[-1]: s for n, s in shapes.items()}.items()):
        group = module_group_size(in_features, out_features, spec)
        if group == spec.group_size:
            continue
        names = "|".join(sorted({leaf, FUSED_NAMES.get(leaf, leaf)}))
        pattern = rf".*\.(?:{names})$"
        if group is None:
            overrides[f"-:{pattern}"] = {}
        else:
            overrides[f"+:{pattern}"] = {"group_size": group}
    return overrides


def quantization_config(spec: GPTQSpec, dynamic: dict[str, dict]) -> dict:
    config = {"quant_method": "gptq", "bits": spec.bits, "group_size": spec.group_size, "desc_act": False,
              "sym": True, "checkpoint_format": "gptq", "lm_head": False, "true_sequential": True}
    if dynamic:
        config["dynamic"] = dynamic
    return config


def pack(values, bits: int, dim: int):
    """Pack 32/bits small unsigned ints along ``dim`` into int32, first value in the low bits."""
    import torch

    per_word = 32 // bits
    values = values.movedim(dim, 0).to(torch.int64)
    values = values.reshape(values.shape[0] // per_word, per_word, *values.shape[1:])
    shifts = (torch.arange(per_word, device=values.device) * bits).view(-1, *[1] * (values.dim() - 2))
    words = (values << shifts).sum(dim=1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement into int32's range
    return words.to(torch.int32).movedim(0, dim).contiguous()


def unpack(words, bits: int, dim: int):
    """The inverse of ``pack``."""
    import torch

    per_word = 32 // bits
    words = words.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per_word, device=words.device) * bits).view(1, -1, *[1] * (words.dim() - 1))
    values = (words.unsqueeze(1) >> shifts) & (2**bits - 1)
    values = values.reshape(words.shape[0] * per_word, *words.shape[1:])
    return values.to(torch.int32).movedim(0, dim).contiguous()


def write_config(hf_dir: str, out: Path, spec: GPTQSpec, dynamic: dict[str, dict]) -> None:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float16"
    config["quantization_config"] = quantization_config(spec, dynamic)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in COPIED_FILES:
        if (Path(hf_dir) / name).is_file():
            shutil.copy(Path(hf_dir) / name, out / name)


# ---------------------------------------------------------------- gptqmodel (real weights)


def linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of a Llama-type decoder layer's linears, from config.json (for the dynamic overrides)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    return {"q_proj": (heads * head_dim, hidden), "k_proj": (kv * head_dim, hidden),
            "v_proj": (kv * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
            "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
