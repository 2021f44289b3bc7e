"""llama.cpp through llama-cpp-python: GGUF models, offline batches (``engine.py``), llama-cpp-python's
OpenAI server for scenario=serving (``server.py``, launched through ``serve.py``), and the GGUF conversions
(``convert.py``: HF -> GGUF with llama.cpp's own script, requantization with its library).

This module is the engine's typed config (``engine.*`` keys, conf/engine/llamacpp.yaml), light to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engines.base import ConfigError, EngineConfig, Requirement
from engines.speculative import SpeculativeConfig

ADAPTER = "engines.llamacpp.engine:LlamaCppEngine"
SERVER = "engines.llamacpp.server:LlamaCppServer"
LLAMA_CPP = Requirement("llama_cpp", "pip install -e '.[llamacpp]'")
# llama-cpp-python's draft class LlamaPromptLookupDecoding, verified in this adapter's batched loop. The
# binding ships no draft-model class (its LlamaDraftModel is an interface): no method=draft here.
SPECULATIVE_METHODS = ("prompt_lookup",)


@dataclass
class LlamaCppEngineConfig(EngineConfig):
    name: str = "llamacpp"
    n_gpu_layers: int = -1  # layers offloaded to the GPU (-1: all, 0: none); matters only on a GPU build
    n_ctx: Optional[int] = None  # KV cells in all; None/0: batch_size x (longest prompt + max_new_tokens)
    n_batch: Optional[int] = None  # most tokens per llama_decode call (prefill chunk); None: llama.cpp's 2048
    n_threads: Optional[int] = None  # CPU threads; None: the physical cores this process may use
    flash_attn: bool = True  # what llama.cpp's 'auto' picks on CPU and CUDA; 1.1-1.7x faster decode on H100
    quant_type: Optional[str] = None  # GGUF type to run (e.g. q8_0), made from the model's GGUF; None: as shipped
    # llama.cpp's extra CPU buffer types (AMX, repacked weights). None: on, except on a CPU with AMX, where
    # llama.cpp's AMX matmul crashes (engines/llamacpp/engine.py: use_extra_buffers)
    extra_buffers: Optional[bool] = None
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)  # engines/speculative.py

    def validate(self) -> None:
        super().validate()
        for key in ("n_batch", "n_threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"engine.{key}={getattr(self, key)}: must be >= 1 (or null for the default)")
        if self.n_ctx is not None and self.n_ctx < 0:
            raise ConfigError(f"engine.n_ctx={self.n_ctx}: must be >= 0 (0 or null: derived from the batch)")
        self.speculative.validate(self.name, SPECULATIVE_METHODS)


CONFIG = LlamaCppEngineConfig
