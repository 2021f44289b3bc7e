"""scenario=serving, before anything starts: check the config, read and tokenize the prompts."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Union

from runner.config import BenchConfig, validate
from runner.serving.backends import Backend, backend_for


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
