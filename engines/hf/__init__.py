"""HF transformers ``generate`` (fp16/fp32, bitsandbytes int8/nf4/fp4, static cache + compiled decode step).

This module is the engine's typed config (``engine.*`` keys, conf/engine/hf*.yaml) and is light to import;
the adapter is ``engines.hf.engine`` (it imports torch and transformers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from engines.base import ConfigError, Device, DType, EngineConfig, Requirement
from engines.speculative import SpeculativeConfig

ADAPTER = "engines.hf.engine:HFEngine"
BITSANDBYTES = Requirement("bitsandbytes", "pip install -e '.[bnb]'")
# torch.compile modes for the decode step (reduce-overhead adds CUDA graphs on a GPU); strings, not an Enum:
# OmegaConf matches Enum names, and these have hyphens
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# generate's assisted decoding: prompt_lookup_num_tokens, or assistant_model (a draft model); batch 1 only in
# transformers, so a larger batch runs its prompts one after another (the record says batching=sequential)
SPECULATIVE_METHODS = ("prompt_lookup", "draft")


class AttnImplementation(str, Enum):
    sdpa = "sdpa"
    eager = "eager"


class BnbQuantization(str, Enum):
    """bitsandbytes weight quantization (LLM.int8(), or 4-bit NormalFloat / float)."""

    none = "none"
    int8 = "int8"
    nf4 = "nf4"
    fp4 = "fp4"


class HFCacheImplementation(str, Enum):
    """transformers' KV caches: dynamic grows per step; static is preallocated (its shapes fixed, so the decode
    step can be compiled); the offloaded ones keep layers on the host (memory, not speed)."""

    dynamic = "dynamic"
    static = "static"
    offloaded = "offloaded"
    offloaded_static = "offloaded_static"


@dataclass
class HFEngineConfig(EngineConfig):
    name: str = "hf"
    dtype: DType = DType.auto
    device: Device = Device.auto
    attn_implementation: AttnImplementation = AttnImplementation.sdpa
    use_cache: bool = True  # False recomputes the whole sequence every step (a seed experiment)
    quantization: BnbQuantization = BnbQuantization.none  # bitsandbytes; needs `pip install -e '.[bnb]'`
    double_quant: bool = False  # 4-bit only: quantize the quantization constants too
    compute_dtype: DType = DType.auto  # 4-bit only: matmul dtype (auto: the engine's dtype)
    # The optimized mode transformers recommends: a static cache and a compiled decode step. Compile time is
    # spent in the warm-up (record: compile_s), which covers every shape the timed batches use.
    cache_implementation: HFCacheImplementation = HFCacheImplementation.dynamic
    compile: bool = False  # torch.compile the decode step (needs a static cache)
    compile_mode: str = "reduce-overhead"  # one of COMPILE_MODES
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)  # engines/speculative.py

    def validate(self) -> None:
        super().validate()
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"engine.compile_mode={self.compile_mode}: unknown; valid choices: "
                              f"{', '.join(COMPILE_MODES)}")
        if self.compile and "static" not in self.cache_implementation.value:
            raise ConfigError(f"engine.compile=true: needs engine.cache_implementation=static or offloaded_static "
                              f"(a {self.cache_implementation.value} cache changes shape every step)")
        self.speculative.validate(self.name, SPECULATIVE_METHODS)
        if self.speculative.on and (not self.use_cache or self.cache_implementation.value != "dynamic"):
            raise ConfigError(f"engine.speculative.method={self.speculative.method.value}: transformers' assisted "
                              "decoding needs engine.use_cache=true and engine.cache_implementation=dynamic")


CONFIG = HFEngineConfig
