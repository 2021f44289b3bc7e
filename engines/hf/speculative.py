"""Speculative decoding in transformers' ``generate`` (its assisted decoding): prompt lookup
(``prompt_lookup_num_tokens``) or a draft model (``assistant_model``), counted through transformers' own hooks.

transformers keeps no running totals, but for every verification step it calls two methods of the candidate
generator it builds for that ``generate`` call: ``get_candidates`` (the drafted sequence: its length minus the
input's is the number of drafted tokens) and ``update_candidate_strategy(input_ids, scores, num_matches)``
(``num_matches``: the drafted tokens the target accepted, after transformers' own crop at EOS and at the length
limit). The counts here are those two values, read from a wrapper around that generator; nothing is
recomputed. transformers runs assisted decoding for one sequence at a time ("assisted generate is only
supported for batch_size = 1"), so the engine runs a batch's prompts one after another.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers import AutoModelForCausalLM

from engines.speculative import SpecCounts, SpeculativeConfig

SOURCE = ("transformers' candidate generator: drafted = get_candidates' new length, accepted = the num_matches "
          "generate passes to update_candidate_strategy")


class _Counting:
    """The candidate generator of one ``generate`` call, with what it drafted and what was accepted counted."""

    def __init__(self, inner: Any, counts: SpecCounts):
        self._inner, self._counts, self._drafted = inner, counts, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_candidates(self, input_ids: torch.LongTensor, **kwargs):
        candidates, logits = self._inner.get_candidates(input_ids, **kwargs)
        self._drafted = candidates.shape[1] - input_ids.shape[1]
        return candidates, logits

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, num_matches: int):
        self._counts.add(self._drafted, int(num_matches))
        return self._inner.update_candidate_strategy(input_ids, scores, num_matches)


class HFSpeculation:
    """The generate arguments of engine.speculative for one loaded target model, and the counts."""

    def __init__(self, config: SpeculativeConfig, model: Any, draft_path: Optional[str], dtype: torch.dtype,
                 device: str):
        self.config = config
        self.counts = SpecCounts(source=SOURCE)
        self.draft = None
        if config.method.value == "draft":
            self.draft = AutoModelForCausalLM.from_pretrained(draft_path, dtype=dtype, device_map=device).eval()
            gen = self.draft.generation_config
            # Exactly num_tokens per step: transformers' defaults adapt the count (heuristic schedule) and stop a
            # draft early below a confidence threshold; both would make num_tokens a starting value only.
            gen.num_assistant_tokens = config.num_tokens
            gen.num_assistant_tokens_schedule = "constant"
            gen.assistant_confidence_threshold = 0.0
        original = model._get_candidate_generator
        model._get_candidate_generator = lambda *a, **kw: _Counting(original(*a, **kw), self.counts)

    def generate_kwargs(self) -> dict[str, Any]:
        if self.draft is not None:
            return {"assistant_model": self.draft}
        return {"prompt_lookup_num_tokens": self.config.num_tokens, "max_matching_ngram_size": self.config.max_ngram}

    def take_counts(self) -> SpecCounts:
        counts, self.counts = self.counts, SpecCounts(source=SOURCE)
        return counts

    def weights_bytes(self) -> int:
        return self.draft.get_memory_footprint() if self.draft is not None else 0
