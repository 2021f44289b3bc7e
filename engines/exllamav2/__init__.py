"""ExLlamaV2 0.3.2 on GPTQ 4-bit weights, CUDA only (``engine.py``). This module is the engine's typed config
(``engine.*`` keys, conf/engine/exllamav2.yaml), light to import."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from engines.base import EngineConfig, Requirement

ADAPTER = "engines.exllamav2.engine:ExLlamaV2Engine"
EXLLAMAV2 = Requirement("exllamav2", "pip install -e '.[exllamav2]' (CUDA only)")


class ExLlamaV2CacheDType(str, Enum):
    fp16 = "fp16"
    q8 = "q8"
    q6 = "q6"
    q4 = "q4"


@dataclass
class ExLlamaV2EngineConfig(EngineConfig):
    name: str = "exllamav2"
    max_seq_len: Optional[int] = None  # KV tokens per sequence; None: longest prompt + max_new_tokens of the batch
    cache_dtype: ExLlamaV2CacheDType = ExLlamaV2CacheDType.fp16  # KV cache: fp16 or ExLlamaV2's Q8/Q6/Q4
    max_batch_size: int = 64  # scratch buffers are sized for it at load; a bigger batch is refused
    paged: bool = False  # True: the dynamic generator's paged attention (needs flash-attn, absent here)


CONFIG = ExLlamaV2EngineConfig
