"""SGLang's OpenAI server (``python -m sglang.launch_server``). Its /v1/completions takes token-id prompts and
``ignore_eos``, and with ``stream_options={"include_usage": true, "continuous_usage_stats": true}`` puts the running
``completion_tokens`` on every chunk, as vLLM's does (run on an H200: docs/results/sglang-h200-2026-12-03.md)."""

from __future__ import annotations

import sys
from typing import Any

from engines.base import value_of
from engines.server import USAGE_ON_EVERY_CHUNK, Server
from engines.sglang import SGLANG
from engines.sglang.engine import engine_kwargs


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")  # SGLang derives its flags from ServerArgs' field names


class SGLangServer(Server):
    name = "sglang"
    model_format = "hf"
    token_prompts = True
    packages = ("sglang", "sglang-kernel", "flashinfer-python")
    requires = (SGLANG,)
    request_extras = USAGE_ON_EVERY_CHUNK

    def command(self, model_path: str, port: int, served_name: str) -> list[str]:
        command = [sys.executable, "-m", "sglang.launch_server", "--host", "127.0.0.1", "--port", str(port),
                   "--served-model-name", served_name]
        for key, value in engine_kwargs(self.config, model_path).items():  # the offline engine's settings
            if value is True:
                command.append(flag(key))
            elif value is not False:
                command += [flag(key), str(value_of(value))]
        return command

    def forcing_fields(self, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
        # ignore_eos alone forces max_tokens; SGLang refuses min_tokens without a tokenizer (random weights)
        return {"ignore_eos": True} if ignore_eos else {}
