"""Round-to-nearest GPTQ packing in torch, for random weights (runner.gptq's docstring says why and how)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner.gptq.layout import GPTQSpec, dynamic_overrides, module_group_size, pack, unpack, write_config

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
    write_config(hf_dir, out, spec, dynamic_overrides(shapes, spec))


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
