"""SGLang: offline batches through its ``Engine`` with streamed outputs, every token stamped as it reaches this
process (``engine.py``), and its OpenAI server for scenario=serving (``server.py``). There is no CPU build:
on the CPU machine only the pure parts (config, request building, stamping arithmetic) are tested; the engine
itself has GPU-marked tests.

This module is the engine's typed config (``engine.*`` keys, conf/engine/sglang.yaml), light to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engines.base import ConfigError, DType, EngineConfig, Requirement

ADAPTER = "engines.sglang.engine:SGLangEngine"
SERVER = "engines.sglang.server:SGLangServer"
# 0.5.15: the newest SGLang whose torch pin (2.11.0) is the GPU machine's; 0.5.18 pins 2.13, 0.5.23 2.14.1
SGLANG = Requirement("sglang", "pip install sglang==0.5.15 on a CUDA machine with torch 2.11 (SGLang has no CPU build)")


@dataclass
class SGLangEngineConfig(EngineConfig):
    name: str = "sglang"
    dtype: DType = DType.auto  # auto: SGLang's choice from the checkpoint
    mem_fraction_static: Optional[float] = None  # share of GPU memory for weights + KV cache; None: SGLang's choice
    context_length: Optional[int] = None  # None: the model's
    max_running_requests: Optional[int] = None  # None: SGLang's default
    tensor_parallel_size: int = 1  # SGLang's tp_size
    attention_backend: Optional[str] = None  # None: SGLang's default (FlashAttention 3 on H100/H200)
    disable_cuda_graph: bool = False
    # Off, as vLLM's prefix caching: SGLang's radix cache would let repeated and warm-up prompts skip prefill
    enable_prefix_caching: bool = False
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static <= 1:
            raise ConfigError(f"engine.mem_fraction_static={self.mem_fraction_static}: must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"engine.tensor_parallel_size={self.tensor_parallel_size}: must be at least 1")


CONFIG = SGLangEngineConfig
