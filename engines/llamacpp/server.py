"""llama-cpp-python's OpenAI server (0.3.x), launched through ``engines.llamacpp.serve``.

What shaped the request fields: it takes text prompts only (``prompt: str | list[str]``), has no ``ignore_eos``
and no usage in streams. Its ``min_tokens`` only masks the vocabulary's EOS token, and sent together with
``logit_bias`` both are silently dropped (llama.py: ``logits_processor = logits_processor.extend(...)`` assigns
None). So only ``logit_bias`` is sent, masking every end-of-generation token (SmolLM2: <|endoftext|>,
<|im_end|>, <reponame>). ``logprobs`` would give a count per chunk but costs ~70 ms per token there (a softmax
over the vocabulary in Python; SmolLM2 TPOT 25 -> 93 ms), so none is asked: a chunk with text is one token,
and a stream that ends with finish_reason "length" produced exactly max_tokens (held-back text makes fewer,
longer ITL gaps). It serves one request at a time and by default *cancels* a streaming request when another
arrives: launched with ``--interrupt_requests false`` so queued requests wait instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

from engines.base import Requirement, own_code_env, require
from engines.llamacpp import LLAMA_CPP
from engines.llamacpp.engine import end_of_generation_ids, gguf_file, physical_cores, use_extra_buffers
from engines.server import Server

SERVING = "pip install -e '.[serving]'"


class LlamaCppServer(Server):
    name = "llamacpp"
    model_format = "gguf"
    token_prompts = False
    packages = ("llama-cpp-python", "fastapi", "uvicorn", "sse-starlette")
    requires = (LLAMA_CPP, *(Requirement(m, SERVING, "scenario=serving engine=llamacpp") for m in
                             ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")))

    def __init__(self, config):
        super().__init__(config)
        self._eog_ids: Optional[list[int]] = None

    def command(self, model_path: str, port: int, served_name: str) -> list[str]:
        engine = self.config
        gguf = gguf_file(model_path)
        self._eog_ids = _vocab_end_of_generation_ids(str(gguf))
        n_ctx = engine.n_ctx or 4096  # one request at a time: the longest prompt + output must fit
        command = [sys.executable, "-m", "engines.llamacpp.serve", "--model", str(gguf), "--model_alias", served_name,
                   "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
                   "--n_gpu_layers", str(engine.n_gpu_layers), "--flash_attn", str(engine.flash_attn),
                   "--interrupt_requests", "false", "--seed", "0"]
        if engine.n_batch:
            command += ["--n_batch", str(engine.n_batch)]
        # The server's own default is half the logical CPUs; the offline engine's is the physical cores.
        threads = engine.n_threads or physical_cores()
        return command + ["--n_threads", str(threads), "--n_threads_batch", str(threads)]

    def env(self) -> dict[str, str]:
        # serve.py sets llama.cpp's extra CPU buffers from this, as the offline engine sets them
        return own_code_env({**os.environ,
                             "LLM_BENCH_LLAMACPP_EXTRA_BUFFERS": "1" if use_extra_buffers(self.config) else "0"})

    def forcing_fields(self, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
        if not ignore_eos:
            return {}
        # llama.cpp's sampler adds the bias to the logit; -1e9 is as good as -inf and valid JSON.
        return {"logit_bias": {str(t): -1e9 for t in self._eog_ids or []}}


def _vocab_end_of_generation_ids(gguf: str) -> list[int]:
    """The GGUF's end-of-generation tokens, read from its vocabulary alone (no weights loaded)."""
    lib = require(LLAMA_CPP)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as the engine: no vocabulary dump
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(gguf.encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {gguf}")
    try:
        return end_of_generation_ids(lib, lib.llama_model_get_vocab(model))
    finally:
        lib.llama_model_free(model)
