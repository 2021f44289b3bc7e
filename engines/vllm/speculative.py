"""engine.speculative on vLLM: its ``speculative_config`` (method "ngram", or "draft_model" with the draft's path;
vLLM's docs, features/speculative_decoding) and the counts from its own spec-decode metrics.

vLLM's scheduler observes, per request and step that had drafted tokens, the drafted and accepted counts
(``SpecDecodingStats.observe_draft``) and publishes them as Prometheus counters: ``vllm:spec_decode_num_drafts``,
``..._num_draft_tokens``, ``..._num_accepted_tokens`` and ``..._num_accepted_tokens_per_pos`` (position i: the
drafts that accepted more than i tokens). ``LLM.get_metrics()`` reads them (stats must be on:
``disable_log_stats=False``); a generate's counts are the difference of two readings. Acceptance is a prefix, so
the drafts that accepted exactly k tokens are per_pos[k-1] - per_pos[k].
"""

from __future__ import annotations

from typing import Any, Optional

from engines.speculative import SpecCounts, SpeculativeConfig

SOURCE = "vLLM's spec-decode metrics (vllm:spec_decode_num_drafts, _num_draft_tokens, _num_accepted_tokens_per_pos)"
PREFIX = "vllm:spec_decode_"


def speculative_config(config: SpeculativeConfig, draft_path: Optional[str]) -> Optional[dict[str, Any]]:
    """The ``speculative_config`` vLLM's LLM(...) takes, or None without speculation."""
    method = config.method.value
    if method == "none":
        return None
    if method == "prompt_lookup":
        return {"method": "ngram", "num_speculative_tokens": config.num_tokens,
                "prompt_lookup_max": config.max_ngram, "prompt_lookup_min": 1}
    return {"method": "draft_model", "model": draft_path, "num_speculative_tokens": config.num_tokens}


def totals(metrics: list[Any]) -> dict[str, Any]:
    """The spec-decode counters of a ``get_metrics()`` snapshot, summed over label sets (engines)."""
    out: dict[str, Any] = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "per_pos": []}
    for metric in metrics:
        if not metric.name.startswith(PREFIX):
            continue
        name = metric.name.removeprefix(PREFIX)
        if name == "num_accepted_tokens_per_pos":
            out["per_pos"] = _add(out["per_pos"], [int(v) for v in metric.values])
        elif name in out:
            out[name] += int(metric.value)
    return out


def _add(a: list[int], b: list[int]) -> list[int]:
    """Element-wise sum, the shorter list padded with zeros."""
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(max(len(a), len(b)))]


def counts_between(before: dict[str, Any], after: dict[str, Any]) -> SpecCounts:
    """What happened between two ``totals`` readings, as SpecCounts (the histogram from the per-position counts)."""
    drafts = after["num_drafts"] - before["num_drafts"]
    per_pos = _add(after["per_pos"], [-v for v in before["per_pos"]])
    at_least = [drafts, *per_pos, 0]  # drafts that accepted at least k tokens, k = 0, 1, ...
    hist = [at_least[k] - at_least[k + 1] for k in range(len(at_least) - 1)]
    while len(hist) > 1 and hist[-1] == 0:
        hist.pop()
    return SpecCounts(source=SOURCE, drafts=drafts,
                      drafted_tokens=after["num_draft_tokens"] - before["num_draft_tokens"],
                      accepted_tokens=after["num_accepted_tokens"] - before["num_accepted_tokens"],
                      accepted_hist=hist if drafts else [])
