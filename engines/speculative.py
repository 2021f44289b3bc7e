"""Speculative decoding as an engine option (``engine.speculative.*``): the typed config that the engines which
have it share, and the counts an engine reports of what was drafted and what the target model accepted.

An engine that has it lists its methods in ``Engine.speculative_methods`` and adds a ``speculative`` field of
type :class:`SpeculativeConfig` to its config; the others have no such key (the runner's one-line refusal names
the engines that do). Counting follows vLLM's spec-decode metrics: a *draft* is one sequence's verification
of at least one drafted token by one forward pass of the target model; a step that drafted nothing (prompt
lookup found no match) is a plain decoding step and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from engines.base import ConfigError


class SpecMethod(str, Enum):
    none = "none"
    # n-gram match of the last tokens in the prompt + output so far; the tokens that followed it are the draft
    # (HF prompt_lookup_num_tokens, vLLM method "ngram", llama-cpp-python's LlamaPromptLookupDecoding)
    prompt_lookup = "prompt_lookup"
    draft = "draft"  # a draft model (engine.speculative.draft) proposes; the target verifies


@dataclass
class SpeculativeConfig:
    method: SpecMethod = SpecMethod.none
    num_tokens: int = 4  # tokens drafted per step (HF num_assistant_tokens, constant; vLLM num_speculative_tokens)
    # method=draft: a model config name (conf/model/<name>.yaml), prepared like any model (converted once,
    # cached); its tokenizer must be the target's. Ignored by the other methods, so that one sweep
    # (method=none,prompt_lookup,draft) can name it once
    draft: Optional[str] = None
    max_ngram: int = 3  # prompt_lookup: the longest n-gram matched (down to 1); vLLM prompt_lookup_max

    def validate(self, engine: str, methods: tuple[str, ...]) -> None:
        method = self.method.value
        if method != "none" and method not in methods:
            raise ConfigError(f"engine.speculative.method={method}: not available on engine {engine}; valid choices: "
                              f"{', '.join(('none', *methods))}")
        for key in ("num_tokens", "max_ngram"):
            if getattr(self, key) < 1:
                raise ConfigError(f"engine.speculative.{key}={getattr(self, key)}: must be >= 1")
        if method == "draft" and not self.draft:
            raise ConfigError("engine.speculative.method=draft: needs engine.speculative.draft, a model config name "
                              "(conf/model/<name>.yaml), e.g. engine.speculative.draft=smollm2-135m")

    @property
    def on(self) -> bool:
        return self.method != SpecMethod.none


@dataclass
class SpecCounts:
    """What an engine drafted and the target accepted, summed over the drafts since the counts were taken."""

    source: str  # where the numbers come from (the engine's own counters, or how the adapter counted)
    drafts: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_hist: list[int] = field(default_factory=list)  # index k: the drafts that accepted k tokens

    def add(self, drafted: int, accepted: int) -> None:
        """One sequence's verification step; a step that drafted nothing is no draft (see the module's doc)."""
        if drafted <= 0:
            return
        self.drafts += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        if len(self.accepted_hist) <= accepted:
            self.accepted_hist.extend([0] * (accepted + 1 - len(self.accepted_hist)))
        self.accepted_hist[accepted] += 1
