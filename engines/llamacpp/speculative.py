"""Prompt lookup decoding in the batched llama.cpp loop: llama-cpp-python's own draft class
(``llama_cpp.llama_speculative.LlamaPromptLookupDecoding``, the one its ``Llama(draft_model=...)`` takes)
proposes each sequence's draft, and one ``llama_decode`` call verifies every sequence's draft at once.

A step submits, per live sequence, its last token and its draft at the positions after it, all wanting logits.
The target's token at each position is picked as in plain decoding (``_pick``: argmax, or a draw at a
temperature); drafted tokens are accepted while they equal the picks. The emitted tokens are therefore exactly
the ones plain decoding picks at each position, given the same history (greedy output unchanged; with
sampling, each token is still a draw from the target, since a draft of one fixed token is accepted exactly when
the draw equals it). The KV cells of rejected drafts are removed (``llama_memory_seq_rm``).

llama.cpp keeps no counts of this: the adapter runs the verification, so it counts what it verified (a step
that drafted nothing is no draft, as in vLLM's metrics).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from engines.base import Generation, SamplingSpec
from engines.speculative import SpecCounts, SpeculativeConfig

SOURCE = ("this adapter's verification loop (llama.cpp has no counters): drafted = LlamaPromptLookupDecoding's "
          "proposal, accepted = drafted tokens equal to the target's picks that entered the output")


class PromptLookup:
    def __init__(self, config: SpeculativeConfig):
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.propose = LlamaPromptLookupDecoding(max_ngram_size=config.max_ngram, num_pred_tokens=config.num_tokens)
        self.counts = SpecCounts(source=SOURCE)

    def step(self, engine, live: list[int], prompts: list[list[int]], outs: list[Generation],
             sampling: SamplingSpec) -> None:
        """One decoding step of every live sequence, drafts included (``engine``: the LlamaCppEngine)."""
        entries, drafts = [], {}
        for seq in live:
            history = prompts[seq] + outs[seq].token_ids
            room = sampling.max_new_tokens - len(outs[seq].token_ids) - 1  # the target's own token comes too
            draft = self.propose(np.array(history, dtype=np.intc))[:max(room, 0)].tolist()
            start = len(history) - 1  # the last token's position: its KV cell is written in this call
            entries += [(token, start + i, seq, True) for i, token in enumerate([history[-1], *draft])]
            drafts[seq] = (start, draft)
        picked = defaultdict(list)
        for seq, token, stamp in engine.decode_picks(entries, sampling):
            picked[seq].append((token, stamp))
        memory = engine.lib.llama_get_memory(engine.ctx)
        for seq in live:
            start, draft = drafts[seq]
            matched = next((i for i, d in enumerate(draft) if picked[seq][i][0] != d), len(draft))
            out, emitted = outs[seq], 0
            for token, stamp in picked[seq][:matched + 1]:  # the matched drafts, then the target's next token
                out.token_ids.append(token)
                out.token_times.append(stamp)
                emitted += 1
                if engine.done(out, sampling):
                    break
            self.counts.add(len(draft), min(matched, emitted))
            if matched < len(draft):  # the rejected drafts' cells: from the first rejected position on
                engine.lib.llama_memory_seq_rm(memory, seq, start + 1 + matched, -1)

    def take_counts(self) -> SpecCounts:
        counts, self.counts = self.counts, SpecCounts(source=SOURCE)
        return counts
