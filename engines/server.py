"""The contract of an engine's own OpenAI-compatible server, for scenario=serving (launch mode).

The runner picks a free port, prepares the model in ``model_format``, starts ``command(...)`` with ``env()``
as its environment, waits for ``GET /v1/models``, then streams ``/v1/completions`` requests at it: each request
carries ``request_extras`` and ``forcing_fields(...)``, and its prompt goes as token ids (``token_prompts``)
or as text. An engine package names its server class in ``SERVER`` ("module:Class").
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from engines.base import EngineConfig, Requirement

# vLLM's way to put the running completion_tokens on every streamed chunk (token counts from the server)
USAGE_ON_EVERY_CHUNK = {"stream_options": {"include_usage": True, "continuous_usage_stats": True}}


class Server:
    name: ClassVar[str]
    model_format: ClassVar[str]  # the prepared format the server loads
    token_prompts: ClassVar[bool]  # True: prompts go as token ids; False: as text (the model's tokenizer)
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions go on the record
    requires: ClassVar[tuple[Requirement, ...]] = ()  # optional packages the server needs
    request_extras: ClassVar[dict[str, Any]] = {}  # added to every request body

    def __init__(self, config: EngineConfig):
        self.config = config

    def command(self, model_path: str, port: int, served_name: str) -> list[str]:
        """The command line that serves ``model_path`` on 127.0.0.1:``port`` as ``served_name``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The server's environment."""
        return dict(os.environ)

    def forcing_fields(self, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
        """Request fields that make the output exactly ``max_tokens`` long (when ignore_eos is asked)."""
        return {"ignore_eos": True, "min_tokens": max_tokens} if ignore_eos else {}
