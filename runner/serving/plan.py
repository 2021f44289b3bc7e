"""scenario=serving, before anything starts: check the config, read and tokenize the prompts."""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Union

from runner.config import BenchConfig, ConfigError
from runner.serving.backends import Backend, backend_for
from runner.serving.client import RAMPS, SCHEDULES

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_serving(cfg: BenchConfig) -> None:
    """Checks beyond types for scenario=serving (called from runner.config.validate). Raises ConfigError."""
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
    backend_for(cfg)  # an engine without a server fails here, listing the ones that have one


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


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServingWorkload:
    backend: Backend
    prompt_ids: list[list[int]]  # the dataset slice, cycled to serving.num_requests
    prompts: list[Union[str, list[int]]]  # what goes in the request: token ids or their decoded text
    warmup_prompts: list[Union[str, list[int]]]


def plan(cfg: BenchConfig) -> ServingWorkload:
    """Validate, then tokenize the dataset slice with the model's tokenizer. Loads no weights, starts nothing."""
    from runner.config import validate

    validate(cfg)
    backend = backend_for(cfg)
    from transformers import AutoTokenizer

    from runner.data import load_prompts
    from runner.models import tokenizer_source

    source, kwargs = tokenizer_source(cfg.model, cfg.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    slice_ids = load_prompts(cfg.dataset, tokenizer)
    count = cfg.serving.num_requests
    prompt_ids = [slice_ids[i % len(slice_ids)] for i in range(count)]
    if backend.token_prompts:
        prompts: list[Union[str, list[int]]] = [list(p) for p in prompt_ids]
    else:  # the server tokenizes again; our count of input tokens is the dataset's
        prompts = [tokenizer.decode(p) for p in prompt_ids]
    warmup = prompts[:cfg.serving.warmup_requests]
    return ServingWorkload(backend=backend, prompt_ids=prompt_ids, prompts=prompts, warmup_prompts=warmup)
