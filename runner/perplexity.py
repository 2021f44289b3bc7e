"""Perplexity of the engine under test on the run's first prompts: is a fast quantization still right?

    perplexity = exp(- mean over scored tokens of ln p(token | its prefix))

over the first ``measure.perplexity_prompts`` prompts of the run (the dataset slice, tokenized once, so
every engine and quantization of a sweep scores the same token ids), token 0 of each prompt unscored.
Computed after the timed region; an engine that cannot score gives an empty figure and the reason.
"""

from __future__ import annotations

import math
from typing import Any

from engines.base import Engine


def perplexity(logprobs: list[list[float]]) -> tuple[float, int]:
    """(perplexity, scored tokens) from per-prompt natural-log probabilities."""
    values = [lp for prompt in logprobs for lp in prompt]
    return math.exp(-sum(values) / len(values)), len(values)


def perplexity_fields(engine: Engine, prompts: list[list[int]], count: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"perplexity": None, "perplexity_tokens": 0, "perplexity_prompts": 0,
                              "perplexity_note": None}
    scored = [p for p in prompts[:count] if len(p) >= 2]
    if count == 0:
        fields["perplexity_note"] = "disabled (measure.perplexity_prompts=0)"
        return fields
    if not scored:
        fields["perplexity_note"] = "no prompt of two or more tokens to score"
        return fields
    try:
        logprobs = engine.prompt_logprobs(scored)
    except NotImplementedError as exc:
        fields["perplexity_note"] = str(exc)
        return fields
    value, tokens = perplexity(logprobs)
    fields.update(perplexity=value, perplexity_tokens=tokens, perplexity_prompts=len(scored))
    return fields
