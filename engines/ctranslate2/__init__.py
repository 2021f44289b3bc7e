"""CTranslate2: its ``Generator`` on a converted model (``engine.py``); the HF -> CTranslate2 conversion
(``convert.py``). This module is the engine's typed config (``engine.*`` keys, conf/engine/ctranslate2.yaml),
light to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from engines.base import ConfigError, Device, EngineConfig, Requirement

ADAPTER = "engines.ctranslate2.engine:CTranslate2Engine"
CTRANSLATE2 = Requirement("ctranslate2", "pip install -e '.[ctranslate2]'")


class CT2ComputeType(str, Enum):
    """CTranslate2's compute types: weight type, then activation type for the int8 ones."""

    default = "default"  # the type the weights are stored in (we store float32 for it)
    auto = "auto"  # the fastest the device supports (CPU: int8_float32; CUDA: int8_float16)
    int8 = "int8"  # int8 weights, the stored float type for the rest
    int8_float32 = "int8_float32"
    int8_float16 = "int8_float16"
    int8_bfloat16 = "int8_bfloat16"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


@dataclass
class CTranslate2EngineConfig(EngineConfig):
    name: str = "ctranslate2"
    compute_type: CT2ComputeType = CT2ComputeType.default  # also picks the stored weights (model variant)
    device: Device = Device.auto
    inter_threads: int = 1  # batches run in parallel; the runner sends one at a time
    intra_threads: int = 0  # OpenMP threads per batch; 0: CTranslate2's default
    # Per-token stamps come from generate_batch's callback: one Python call per sequence and step. It cost
    # 2.5-4 % at batch 16 on the H200 until the engine kept the worker thread's Python state alive (engine.py,
    # _keep_thread_state): 0.994 of the bare loop since (docs/results/fidelity-ctranslate2-h200-2026-12-03.md).
    # False drops the callback: whole-batch figures only (no TTFT/TPOT/ITL).
    token_timestamps: bool = True

    def validate(self) -> None:
        super().validate()
        if self.inter_threads < 1:
            raise ConfigError(f"engine.inter_threads={self.inter_threads}: must be >= 1")
        if self.intra_threads < 0:
            raise ConfigError(f"engine.intra_threads={self.intra_threads}: must be >= 0 (0: CTranslate2's default)")


CONFIG = CTranslate2EngineConfig
