"""What an ExLlamaV2 model directory's config.json says, read where ExLlamaV2 0.3.2 reads it wrong or not at all:
transformers 5's RoPE keys, the MLP width its kernels cannot pad, the EOS ids, the quantization's name."""

from __future__ import annotations

import json
from pathlib import Path


def check_intermediate_size(config) -> None:
    """ExLlamaV2 pads gate/up outputs to a multiple of 32 but not down_proj's input (float16 or quantized
    alike), so such an MLP fails mid-forward with a matmul shape error; say so at load instead."""
    size = getattr(config, "intermediate_size", None)
    if isinstance(size, int) and size % 32:
        raise RuntimeError(f"the exllamav2 engine needs intermediate_size divisible by 32 (ExLlamaV2 pads the "
                           f"MLP to 32); this model has {size}")


def config_json(config) -> dict:
    """The model directory's config.json as written (ExLlamaV2Config keeps only the keys it knows)."""
    return json.loads((Path(config.model_dir) / "config.json").read_text())


def rope_from_rope_parameters(config) -> None:
    """transformers >= 5 saves RoPE as ``rope_parameters: {rope_theta, rope_type, ...}``; ExLlamaV2 0.3.2 reads
    only the old top-level ``rope_theta`` / ``rope_scaling`` and silently falls back to theta 10,000. For
    SmolLM2 (theta 100,000) that wrong theta put its prompt log-probs 0.35 nats/token off HF's on the same
    weights, so carry the theta over, and refuse a scaled RoPE rather than run it unscaled."""
    raw = config_json(config)
    params = raw.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in raw or "rope_scaling" in raw:
        return
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise RuntimeError(f"the exllamav2 engine cannot read rope_parameters.rope_type={rope_type} from "
                           f"{config.model_dir}/config.json (ExLlamaV2 0.3.2 reads only the old rope_scaling key); "
                           f"add rope_scaling with the same fields there")
    if "rope_theta" in params:
        config.rotary_embedding_base = float(params["rope_theta"])


def eos_ids_of(config) -> list[int]:
    """config.json's EOS and generation_config.json's (a list there for chat models)."""
    eos = [getattr(config, "eos_token_id", None)]
    eos += (getattr(config, "generation_config", None) or {}).get("eos_token_id") or []
    return sorted({token for token in eos if token is not None})


def quantization_name(config) -> str:
    quant = config_json(config).get("quantization_config", {})
    if quant.get("quant_method") == "exl2":
        return f"exl2-{quant.get('bits')}bpw"
    if quant:
        return f"gptq-w{quant.get('bits')}g{quant.get('group_size')}"
    return "none"
