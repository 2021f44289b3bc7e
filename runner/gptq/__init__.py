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

from runner.gptq.calibrated import GPTQMODEL, calibration_prompts, gptqmodel_checkpoint
from runner.gptq.layout import (CALIBRATION, CalibrationSpec, GPTQSpec, cache_variant, dynamic_overrides,
                                module_group_size, pack, parse_variant, prequantized, quantization_config, unpack)
from runner.gptq.rtn import dequantize, dequantized_reference, pack_linear, rtn_checkpoint, rtn_quantize

__all__ = ["CALIBRATION", "GPTQMODEL", "CalibrationSpec", "GPTQSpec", "cache_variant", "calibration_prompts",
           "dequantize", "dequantized_reference", "dynamic_overrides", "gptqmodel_checkpoint", "module_group_size",
           "pack", "pack_linear", "parse_variant", "prequantized", "quantization_config", "rtn_checkpoint",
           "rtn_quantize", "unpack"]
