"""How far a run is from the hardware: memory-bandwidth utilization (MBU) and FLOP utilization (MFU).

    MBU = (weight bytes + KV-cache bytes read per decoding step) / TPOT / peak memory bandwidth
    MFU = 2 · parameters · tokens/s / peak FLOP/s            (decode and prefill separately)

Decoding one step of a batch reads every weight once and, for each sequence, its KV cache so far; the
step takes one TPOT. "parameters" are those that multiply activations (every linear layer and the LM
head; not the embedding lookup), so 2 · parameters FLOPs per token (attention's own FLOPs are left out,
as in the PaLM/gpt-fast convention). Each figure is given twice: against the vendor's datasheet peak
(table below, matched on the device name) and against what this machine measured (a device-to-device
copy for bandwidth, a large matmul for FLOP/s), measured once per machine and cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# Datasheet peaks: memory bandwidth in GB/s (10^9 B/s) and dense (no sparsity) FP16/BF16 tensor TFLOP/s
# with FP32 accumulation. Matched in order on the NVML/torch device name, so the specific patterns first.
GPU_PEAKS: list[tuple[str, str, float, float]] = [
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM 3.35 TB/s, 989 TF BF16 (1,979 sparse);
    # PCIe 2.0 TB/s, 756 TF (1,513 sparse); NVL 3.9 TB/s, 835 TF (1,671 sparse).
    (r"H100.*PCIe", "H100 PCIe", 2000.0, 756.0),
    (r"H100 NVL", "H100 NVL", 3900.0, 835.0),
    (r"H100", "H100 SXM", 3350.0, 989.4),
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM 4.8 TB/s, 989 TF BF16 (1,979 sparse).
    (r"H200", "H200 SXM", 4800.0, 989.4),
    # NVIDIA B200 (DGX B200 datasheet, per GPU): 8 TB/s, 2.25 PF dense BF16.
    (r"B200", "B200", 8000.0, 2250.0),
    # NVIDIA A100 datasheet: 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s, 40GB 1,555 GB/s; 312 TF BF16 dense.
    (r"A100.*80GB.*PCIe|A100-PCIE-80GB", "A100 80GB PCIe", 1935.0, 312.0),
    (r"A100.*80", "A100 80GB SXM", 2039.0, 312.0),
    (r"A100", "A100 40GB", 1555.0, 312.0),
    # NVIDIA L40S datasheet: 864 GB/s, 362.05 TF BF16 dense (733 sparse).
    (r"L40S", "L40S", 864.0, 362.05),
    # NVIDIA L4 datasheet: 300 GB/s, 121 TF BF16 dense (242 sparse).
    (r"\bL4\b", "L4", 300.0, 121.0),
    # NVIDIA A10 datasheet: 600 GB/s, 125 TF BF16 dense (250 sparse).
    (r"\bA10G?\b", "A10", 600.0, 125.0),
    # Ada whitepaper (RTX 4090): 1,008 GB/s, 165.2 TF FP16/BF16 dense with FP32 accumulate.
    (r"RTX 4090", "RTX 4090", 1008.0, 165.2),
    # Blackwell RTX whitepaper (RTX 5090): 1,792 GB/s, 209.5 TF FP16/BF16 dense with FP32 accumulate.
    (r"RTX 5090", "RTX 5090", 1792.0, 209.5),
    # NVIDIA V100 SXM2 datasheet: 900 GB/s, 125 TF FP16 tensor.
    (r"V100", "V100", 900.0, 125.0),
]


@dataclass(frozen=True)
class Peak:
    name: str
    bandwidth_gb_s: float
    tflops: float


def table_peak(device_name: Optional[str]) -> Optional[Peak]:
    """The datasheet peak of a GPU named as NVML or torch names it; None when it is not in the table."""
    for pattern, name, bandwidth, tflops in GPU_PEAKS:
        if device_name and re.search(pattern, device_name, re.IGNORECASE):
            return Peak(name, bandwidth, tflops)
    return None


# ---------------------------------------------------------------- the model's shape
@dataclass(frozen=True)
class ModelShape:
    matmul_params: int  # weights that multiply activations per token: every linear layer and the LM head
    kv_values_per_token: int  # K and V values stored per token: 2 · layers · kv heads · head dim

    @classmethod
    def of(cls, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
           vocab: int) -> "ModelShape":
        """A Llama-style decoder: q, k, v, o projections, a gated MLP (gate, up, down), an LM head."""
        attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        mlp = 3 * hidden * intermediate
        return cls(matmul_params=layers * (attention + mlp) + vocab * hidden,
                   kv_values_per_token=2 * layers * kv_heads * head_dim)


def shape_from_hf_config(config: dict) -> Optional[ModelShape]:
    try:
        heads = config["num_attention_heads"]
        return ModelShape.of(layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                             kv_heads=config.get("num_key_value_heads") or heads,
                             head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                             intermediate=config["intermediate_size"], vocab=config["vocab_size"])
    except KeyError:
        return None


def shape_from_gguf(path: Path) -> Optional[ModelShape]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types and field.types[0].name == "STRING" else int(part[0])

    arch = value("general.architecture")
    heads = value(f"{arch}.attention.head_count")
    hidden = value(f"{arch}.embedding_length")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = value(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    needed = (value(f"{arch}.block_count"), hidden, heads, value(f"{arch}.feed_forward_length"), vocab)
    if None in needed:
        return None
    return ModelShape.of(layers=needed[0], hidden=hidden, heads=heads,
                         kv_heads=value(f"{arch}.attention.head_count_kv") or heads,
                         head_dim=value(f"{arch}.attention.key_length") or hidden // heads,
                         intermediate=needed[3], vocab=vocab)


def model_shape(model_path: str) -> Optional[ModelShape]:
    """From the prepared model: its config.json, the HF entry beside a converted one, or GGUF metadata."""
    path = Path(model_path)
    for candidate in (path / "config.json", path.parent / "hf" / "config.json"):
        if candidate.is_file():
            shape = shape_from_hf_config(json.loads(candidate.read_text()))
            if shape:
                return shape
    ggufs = [path] if path.is_file() else sorted(path.glob("*.gguf")) if path.is_dir() else []
    return shape_from_gguf(ggufs[0]) if ggufs else None


def kv_element_bytes(dtype: Optional[str]) -> int:
    """Bytes per cached K/V value: 4 where activations are float32 (HF/CTranslate2 float32, int8_float32),
    else 2 (float16/bfloat16 activations; llama.cpp's KV cache is f16 whatever the weights)."""
    return 4 if dtype and "float32" in dtype.lower() else 2


# ---------------------------------------------------------------- measured peaks
def _measure_cpu(repeats: int = 5) -> tuple[float, float]:
    import numpy as np
    import torch

    src = np.ones(256 * 2**20 // 8)  # 256 MiB: far beyond any last-level cache
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    bandwidth = 2 * src.nbytes / best / 1e9  # read + write
    a = torch.randn(1024, 1024)
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return bandwidth, 2 * 1024**3 / best / 1e12


def _measure_cuda(repeats: int = 10) -> tuple[float, float]:
    """Best of ``repeats`` 1 GiB device-to-device copies (read + write) and 8192² bf16 matmuls. Each buffer
    lives in its helper's scope only, and the allocator's cache is returned afterwards."""
    import torch

    def best(fn) -> float:
        fn()  # untimed first call: kernel selection, allocator growth
        return min(_timed(lambda: (fn(), torch.cuda.synchronize())) for _ in range(repeats))

    def copy_gb_s() -> float:
        src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        return 2 * src.numel() / best(lambda: dst.copy_(src)) / 1e9

    def matmul_tflops(n: int = 8192) -> float:
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        return 2 * n**3 / best(lambda: a @ a) / 1e12

    try:
        return copy_gb_s(), matmul_tflops()
    finally:
        torch.cuda.empty_cache()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measured_peak(device: str, device_name: str, cache: Path) -> Peak:
    """Copy bandwidth and matmul FLOP/s of ``device`` ("cpu"/"cuda"), measured once per machine, cached."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-")[:60]
    path = cache / "roofline" / f"{device}-{slug}-{host}.json"
    if path.is_file():
        data = json.loads(path.read_text())
    else:
        bandwidth, tflops = _measure_cuda() if device == "cuda" else _measure_cpu()
        data = {"device_name": device_name, "bandwidth_gb_s": bandwidth, "tflops": tflops,
                "method": "best of repeated 1 GiB device copies (read + write) and 8192² bf16 matmuls"
                if device == "cuda" else "best of 5 numpy copies of 256 MiB (read + write), 1024² fp32 matmuls"}
        from runner.records import write_json_atomic

        write_json_atomic(path, data)
    return Peak(data["device_name"], data["bandwidth_gb_s"], data["tflops"])


# ---------------------------------------------------------------- the figures
def mbu(bytes_per_step: float, tpot_ms: float, bandwidth_gb_s: float) -> float:
    return bytes_per_step / (tpot_ms / 1e3) / (bandwidth_gb_s * 1e9)


def mfu(params: int, tok_s: float, tflops: float) -> float:
    return 2 * params * tok_s / (tflops * 1e12)


def roofline_fields(weights_bytes: Optional[int], shape: Optional[ModelShape], kv_bytes: int, summary: dict,
                    table: Optional[Peak], measured: Optional[Peak]) -> dict[str, Any]:
    """The record's roofline fields from the run's summary (flattened names) and the two peaks."""
    out: dict[str, Any] = {"matmul_params": shape.matmul_params if shape else None,
                           "kv_bytes_per_token": shape.kv_values_per_token * kv_bytes if shape else None,
                           "decode_bytes_per_step": None, "decode_tok_s": None, "prefill_tok_s": None}
    for peak in ("table", "measured"):
        for name in ("mbu", "mfu_decode", "mfu_prefill"):
            out[f"{name}_{peak}"] = None
    notes = []
    tpot, batches = summary.get("tpot_ms_mean"), summary.get("batches")
    if shape is None:
        notes.append("model shape unknown (no Llama-style config.json or GGUF metadata)")
    if weights_bytes is None:
        notes.append("the engine does not report its weight bytes")
    if not tpot:
        notes.append("no TPOT (the engine gives no per-token timestamps)")
    if tpot and batches:
        batch = summary["prompts"] / batches
        out["decode_tok_s"] = batch * 1e3 / tpot
        if shape and weights_bytes is not None:
            # Mean context while decoding: the prompt plus half the output, per sequence of the batch.
            context = (summary["input_tokens"] + summary["output_tokens"] / 2) / summary["prompts"]
            out["decode_bytes_per_step"] = weights_bytes + batch * context * out["kv_bytes_per_token"]
    prefill_s = sum(b["prefill_ms"] for b in summary.get("batch_samples") or [] if b.get("prefill_ms")) / 1e3
    if prefill_s > 0:
        out["prefill_tok_s"] = summary["input_tokens"] / prefill_s
    for label, peak in (("table", table), ("measured", measured)):
        if peak is None:
            continue
        if out["decode_bytes_per_step"]:
            out[f"mbu_{label}"] = mbu(out["decode_bytes_per_step"], tpot, peak.bandwidth_gb_s)
        if shape and out["decode_tok_s"]:
            out[f"mfu_decode_{label}"] = mfu(shape.matmul_params, out["decode_tok_s"], peak.tflops)
        if shape and out["prefill_tok_s"]:
            out[f"mfu_prefill_{label}"] = mfu(shape.matmul_params, out["prefill_tok_s"], peak.tflops)
    out.update({
        "peak_device": table.name if table else None,
        "peak_bandwidth_gb_s_table": table.bandwidth_gb_s if table else None,
        "peak_tflops_table": table.tflops if table else None,
        "peak_bandwidth_gb_s_measured": measured.bandwidth_gb_s if measured else None,
        "peak_tflops_measured": measured.tflops if measured else None,
        "roofline_note": "; ".join(notes) or None,
    })
    return out
