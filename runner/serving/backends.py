"""Which server a serving run talks to: the engine's own (``engines/<name>/server.py``, launch mode) or any
OpenAI-compatible server given by URL (attach mode, ``server.url``)."""

from __future__ import annotations

from engines import server_class
from engines.base import ConfigError, Requirement
from engines.server import USAGE_ON_EVERY_CHUNK, Server
from runner.config import BenchConfig
from runner.serving.checks import no_server_hint

CLIENT = (Requirement("aiohttp", "pip install -e '.[serving]'", "scenario=serving"),)  # the load generator's HTTP


class AttachedServer(Server):
    """A server given by URL: vLLM's extra fields are sent (others usually ignore them); nothing is launched."""

    name = "openai"
    model_format = None
    token_prompts = False
    request_extras = USAGE_ON_EVERY_CHUNK


Backend = Server  # what a serving run's plan holds


def backend_for(cfg: BenchConfig) -> Server:
    if cfg.server.url:
        return AttachedServer(cfg.engine)
    cls = server_class(cfg.engine.name)
    if cls is None:
        raise ConfigError(f"engine={cfg.engine.name}: has no server to benchmark; {no_server_hint()}")
    return cls(cfg.engine)


def requirements(cfg: BenchConfig) -> tuple[Requirement, ...]:
    """The client's packages and, in launch mode, the server's."""
    return CLIENT + backend_for(cfg).requires
