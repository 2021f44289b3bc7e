"""scenario=serving's config checks, beyond types (runner.config.validate calls them)."""

from __future__ import annotations

import math
import re
import urllib.parse

import engines
from engines.base import ConfigError
from runner.serving.client import RAMPS, SCHEDULES

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_serving(cfg) -> None:
    """Checks beyond types for scenario=serving (called from runner.config.validate). Raises ConfigError.
    Imports no runner module but the client's constants, so runner.config can call it."""
    serving, server = cfg.serving, cfg.server
    if serving is None or server is None:
        raise ConfigError("scenario=serving: the serving and server keys are missing; "
                          "select the config group option scenario=serving")
    if not (serving.request_rate > 0 or math.isinf(serving.request_rate)) or math.isnan(serving.request_rate):
        raise ConfigError(f"serving.request_rate={serving.request_rate}: must be > 0 requests/s, or inf")
    for key in ("burstiness", "time_limit_s", "num_requests"):
        if getattr(serving, key) <= 0:
            raise ConfigError(f"serving.{key}={getattr(serving, key)}: must be greater than 0")
    if math.isinf(serving.time_limit_s):
        raise ConfigError("serving.time_limit_s=inf: every serving run is bounded; give seconds")
    _validate_ramp(serving)
    if serving.schedule not in SCHEDULES:
        raise ConfigError(f"serving.schedule={serving.schedule}: unknown; valid choices: {', '.join(SCHEDULES)}")
    if serving.max_concurrency is not None and serving.max_concurrency < 1:
        raise ConfigError(f"serving.max_concurrency={serving.max_concurrency}: must be >= 1, or null (no limit)")
    if serving.warmup_requests < 0:
        raise ConfigError(f"serving.warmup_requests={serving.warmup_requests}: must be >= 0")
    for key in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"):
        value = getattr(serving, key)
        if value is not None and value <= 0:
            raise ConfigError(f"serving.{key}={value}: must be greater than 0, or null (no SLO)")
    spec = getattr(cfg.engine, "speculative", None)
    if spec is not None and spec.method.value != "none":  # the servers are launched without it, and count nothing
        raise ConfigError(f"engine.speculative.method={spec.method.value}: offline runs only (scenario=offline); "
                          "scenario=serving launches the engine's server without speculative decoding")
    if server.startup_timeout_s <= 0:
        raise ConfigError(f"server.startup_timeout_s={server.startup_timeout_s}: must be greater than 0")
    if server.api_key_env is not None and not ENV_NAME.fullmatch(server.api_key_env):
        # The value is not echoed: one that is no variable name may well be the key itself.
        raise ConfigError("server.api_key_env: not an environment variable name (letters, digits, _); "
                          "give the variable's name (e.g. OPENAI_API_KEY), never the key itself")
    if server.url:
        parsed = urllib.parse.urlparse(server.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"server.url={server.url}: not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if not server.model:
            raise ConfigError("server.model: needed with server.url (the model name the server lists at /v1/models)")
    if not server.url and cfg.engine.name not in engines.with_server():
        raise ConfigError(f"engine={cfg.engine.name}: has no server to benchmark; {no_server_hint()}")


def _validate_ramp(serving) -> None:
    if serving.ramp is None:
        if serving.ramp_start_rate is not None:  # a forgotten serving.ramp would silently run at one rate
            raise ConfigError(f"serving.ramp_start_rate={serving.ramp_start_rate}: only with serving.ramp "
                              f"({', '.join(RAMPS)})")
        return
    if serving.ramp not in RAMPS:
        raise ConfigError(f"serving.ramp={serving.ramp}: unknown; valid choices: {', '.join(RAMPS)}, or null (no ramp)")
    if math.isinf(serving.request_rate):
        raise ConfigError(f"serving.ramp={serving.ramp}: needs a finite serving.request_rate (the rate it ends at)")
    start = serving.ramp_start_rate
    if start is None or not 0 < start < serving.request_rate:
        raise ConfigError(f"serving.ramp_start_rate={start}: serving.ramp={serving.ramp} needs a start rate "
                          f"> 0 and < serving.request_rate={serving.request_rate} requests/s")


def no_server_hint() -> str:
    return (f"engines with a server: {', '.join(engines.with_server())}; "
            "or attach to a running one with server.url and server.model")
