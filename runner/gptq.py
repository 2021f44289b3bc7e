"""GPTQ checkpoints (variant ``gptq-w<bits>g<group>``) made from an HF model, for vLLM and ExLlamaV2.

The output is the classic GPTQ ("v1") layout that vLLM's gptq / gptq_marlin kernels and ExLlamaV2 load:
per quantized linear ``qweight`` (int32, 32/bits values packed along the input dim), ``qzeros`` (int32,
packed along the output dim, stored as zero - 1: the v1 "zero minus one" quirk; readers add the 1 back),
``scales`` (float16, one row per group) and ``g_idx`` (int32, group of each input channel), and a
``quantization_config`` in config.json (sym=True, desc_act=False). Embeddings, norms and the LM head stay
float16.

Two ways to get there:

* Real weights (``model.hf`` / ``model.gguf``): gptqmodel's GPTQ, calibrated on ShareGPT prompts from
  ``CALIBRATION`` (prompts 4096.. after the length filter: far past the benchmark's default slice 0..16
  and any sweep's first few hundred, so the model is never calibrated on the prompts it is timed on).
* Random weights (``model.random``): calibration means nothing there and gptqmodel would take many minutes
  on a 7B, so each weight is rounded to nearest (RTN) in torch, on the GPU when there is one, and packed
  into the same layout: per group, scale = 2 * max|w| / (2^bits - 1) (GPTQ's symmetric scale), zero point
  2^(bits-1) (8 for 4-bit), q = clamp(round(w / scale) + zero, 0, 2^bits - 1), so w ~ scale * (q - zero).
  Speed and memory are then those of a real GPTQ model of the same shapes.

A linear whose input size the group size does not divide (e.g. SmolLM2's 576) gets groups of 64 (or 32,
else one group per output channel) and one whose sizes the packing does not divide (tiny-llama's 172)
stays float16; both are written as gptqmodel ``dynamic`` overrides, which vLLM reads.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engines.base import Requirement, require
from runner.config import ConfigError

GPTQMODEL = Requirement("gptqmodel", "pip install -e '.[gptq]'")  # GPTQ of real weights (random ones: RTN here)
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


# ---------------------------------------------------------------- per-module layout
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


# ---------------------------------------------------------------- round-to-nearest packing
def rtn_quantize(weight, spec: GPTQSpec, group_size: int):
    """(q [in, out] int32 in 0..2^bits-1, scales [groups, out] float16) of a [out, in] weight."""
    import torch

    w = weight.t().float()
    in_features, out_features = w.shape
    group = in_features if group_size == -1 else group_size
    grouped = w.reshape(in_features // group, group, out_features)
    maxq = 2**spec.bits - 1
    amax = grouped.abs().amax(dim=1)
    # Stored float16 first, so q is rounded against exactly the scale a reader multiplies by.
    scales = torch.where(amax > 0, 2 * amax / maxq, torch.ones_like(amax)).half()
    zero = 2 ** (spec.bits - 1)
    q = torch.clamp(torch.round(grouped / scales.float()[:, None, :]) + zero, 0, maxq)
    return q.reshape(in_features, out_features).to(torch.int32), scales


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


def pack_linear(weight, spec: GPTQSpec, group_size: int) -> dict:
    """The GPTQ v1 tensors of one linear layer (RTN): qweight, qzeros, scales, g_idx."""
    import torch

    q, scales = rtn_quantize(weight, spec, group_size)
    in_features = q.shape[0]
    group = in_features if group_size == -1 else group_size
    zeros = torch.full_like(scales, 2 ** (spec.bits - 1) - 1, dtype=torch.int32)  # zero - 1 (v1)
    g_idx = torch.arange(in_features, dtype=torch.int32, device=q.device) // group
    return {"qweight": pack(q, spec.bits, 0), "qzeros": pack(zeros, spec.bits, 1), "scales": scales,
            "g_idx": g_idx}


def dequantize(tensors: dict, bits: int):
    """The [out, in] float32 weight a GPTQ v1 reader computes: scale * (q - (stored zero + 1))."""
    q = unpack(tensors["qweight"], bits, 0).float()
    zeros = unpack(tensors["qzeros"], bits, 1).float() + 1
    g_idx = tensors["g_idx"].long()
    scales = tensors["scales"].float()
    return (scales[g_idx] * (q - zeros[g_idx])).t()


def rtn_checkpoint(hf_dir: str, out: Path, spec: GPTQSpec) -> None:
    """Pack every 2-D weight of the decoder layers of ``hf_dir`` with RTN into a GPTQ directory ``out``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device=device) as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                module = name.removesuffix(".weight")
                if ".layers." in name and name.endswith(".weight") and tensor.dim() == 2:
                    out_features, in_features = tensor.shape
                    shapes[module] = (out_features, in_features)
                    group = module_group_size(in_features, out_features, spec)
                    if group is not None:
                        for key, value in pack_linear(tensor, spec, group).items():
                            tensors[f"{module}.{key}"] = value.cpu()
                        continue
                tensors[name] = (tensor.half() if tensor.is_floating_point() else tensor).cpu()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_config(hf_dir, out, spec, dynamic_overrides(shapes, spec))


def dequantized_reference(hf_dir: str, packed_dir: Path, out: Path) -> None:
    """An HF directory ``out`` holding exactly the weights a GPTQ reader of ``packed_dir`` sees (quantized
    linears dequantized, the rest as in ``hf_dir``): comparing an engine on ``packed_dir`` with HF on ``out``
    isolates the engine from the quantization error. ``packed_dir`` must be an RTN checkpoint (one file)."""
    from safetensors.torch import load_file, save_file

    packed = load_file(str(Path(packed_dir) / "model.safetensors"))
    bits = json.loads((Path(packed_dir) / "config.json").read_text())["quantization_config"]["bits"]
    for item in Path(hf_dir).iterdir():
        if item.suffix != ".safetensors" and item.is_file():
            shutil.copy(item, Path(out) / item.name)
    weights = {}
    for path in Path(hf_dir).glob("*.safetensors"):
        for name, tensor in load_file(str(path)).items():
            module = name.removesuffix(".weight")
            if f"{module}.qweight" in packed:
                parts = {key: packed[f"{module}.{key}"] for key in ("qweight", "qzeros", "scales", "g_idx")}
                tensor = dequantize(parts, bits).to(tensor.dtype)
            weights[name] = tensor.contiguous()
    save_file(weights, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})


def _write_config(hf_dir: str, out: Path, spec: GPTQSpec, dynamic: dict[str, dict]) -> None:
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float16"
    config["quantization_config"] = quantization_config(spec, dynamic)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in COPIED_FILES:
        if (Path(hf_dir) / name).is_file():
            shutil.copy(Path(hf_dir) / name, out / name)


# ---------------------------------------------------------------- gptqmodel (real weights)
def calibration_prompts(hf_dir: str, calibration: CalibrationSpec) -> list[list[int]]:
    from transformers import AutoTokenizer

    from runner.config import ShareGPTConfig
    from runner.data import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    dataset = ShareGPTConfig(offset=calibration.offset, limit=calibration.samples,
                             min_prompt_tokens=calibration.min_tokens, max_prompt_tokens=calibration.max_tokens)
    return load_prompts(dataset, tokenizer)


def gptqmodel_checkpoint(hf_dir: str, out: Path, spec: GPTQSpec,
                         calibration: CalibrationSpec = CALIBRATION) -> None:
    """GPTQ with gptqmodel on ShareGPT calibration prompts; ``GPTQMODEL_CPU_WORKERS`` defaults to the cores."""
    import os

    import torch

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(len(os.sched_getaffinity(0))))
    gptqmodel = require(GPTQMODEL)
    prompts = calibration_prompts(hf_dir, calibration)
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    shapes = _linear_shapes(config)
    # act_group_aware off: gptqmodel refuses it on the per-channel (group_size -1) modules.
    # mse=2.4: each group's scale from the GPTQ paper's clipping search (shrink max|w| while the L^2.4 error
    # falls), not max|w|. Without it GPTQ's result is chaotic in float rounding: the same code and calibration
    # on other matmul kernels (AMX or not, 1 or 2 threads, bf16 or fp32) changes ~19% of the 4-bit codes, and
    # 2 of 9 such SmolLM2 builds (this machine's AMX bf16 one among them) lost " Paris" and fell below RTN in
    # tests/test_gptq.py, though held-out KL to float32 was 0.50-0.54 in all (RTN 0.57). With it, 6 of 6
    # builds: KL 0.37-0.39, " Paris" by a wider logit margin than RTN's. Costs ~3x the CPU time.
    quantize_config = gptqmodel.QuantizeConfig(bits=spec.bits, group_size=spec.group_size, sym=True,
                                               desc_act=False, act_group_aware=False, mse=2.4,
                                               dynamic=dynamic_overrides(shapes, spec) or None)
    # gptqmodel calibrates in bfloat16 on any CPU (its auto_dtype) and saves the unquantized tensors so;
    # float32 (no slower here with mse) keeps them exact until the float16 cast below, as rtn_checkpoint does.
    dtype = {} if torch.cuda.is_available() else {"dtype": torch.float32}
    model = gptqmodel.GPTQModel.load(hf_dir, quantize_config, **dtype)
    model.quantize([{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
                    for ids in prompts], batch_size=1)
    model.save(str(out))
    _to_float16(out)
    saved = json.loads((out / "config.json").read_text())
    saved["quantization_config"].setdefault("checkpoint_format", "gptq")
    saved["torch_dtype"] = saved["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    for name in COPIED_FILES:
        if (Path(hf_dir) / name).is_file() and not (out / name).exists():
            shutil.copy(Path(hf_dir) / name, out / name)


def _to_float16(out: Path) -> None:
    """Cast the unquantized float tensors gptqmodel saved in the model dtype (embeddings, norms, LM head) to
    float16, as vLLM's gptq kernels and ExLlamaV2 expect; qweight/qzeros/g_idx are ints, scales float16."""
    import os

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    total = 0
    for path in sorted(out.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if any(t.is_floating_point() and t.dtype != torch.float16 for t in tensors.values()):
            tensors = {name: t.half() if t.is_floating_point() else t for name, t in tensors.items()}
            save_file(tensors, f"{path}.tmp", metadata=metadata)
            os.replace(f"{path}.tmp", path)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = out / "model.safetensors.index.json"
    if index.is_file():  # sharded: its total_size counts the bytes the cast changed
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))


def _linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of a Llama-type decoder layer's linears, from config.json (for the dynamic overrides)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    return {"q_proj": (heads * head_dim, hidden), "k_proj": (kv * head_dim, hidden),
            "v_proj": (kv * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
            "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
