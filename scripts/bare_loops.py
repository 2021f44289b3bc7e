"""Each engine's own generation loop, written as its documentation shows it: plain public API, no runner code.

``scripts/fidelity.py`` times these beside the runner. Each function takes the engine adapter the runner
loaded (only to reach the engine's own model object, so both sides run the very same weights in the same
process), the batches of prompt token ids and the forced output length, and returns (output tokens, seconds)
of one pass over the batches, the device synchronized around each batch.
"""

from __future__ import annotations

import time

import numpy as np


def _timed(run_batch, batches) -> tuple[int, float]:
    tokens, seconds = 0, 0.0
    for batch in batches:
        start = time.perf_counter()
        tokens += run_batch(batch)
        seconds += time.perf_counter() - start
    return tokens, seconds


def hf(engine, batches, new_tokens: int) -> tuple[int, float]:
    """``model.generate`` on a left-padded batch, length forced with min_new_tokens, cache as configured."""
    import torch

    model, cfg = engine.model, engine.config
    extra = {}
    if cfg.cache_implementation.value != "dynamic":
        extra["cache_implementation"] = cfg.cache_implementation.value
        if not cfg.compile:
            extra["disable_compile"] = True
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else 0

    def run_batch(batch) -> int:
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, **extra)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return (out.shape[1] - width) * len(batch)

    return _timed(run_batch, batches)


def ctranslate2(engine, batches, new_tokens: int, stamp: bool = False) -> tuple[int, float]:
    """``Generator.generate_batch`` with greedy search, EOS kept out by min_length, no callback (``stamp``: with
    a callback that only reads the clock, CTranslate2's own way to stream tokens)."""
    vocab = engine.vocab
    stamps: list[float] = []

    def on_token(step) -> bool:
        stamps.append(time.perf_counter())
        return False

    def run_batch(batch) -> int:
        results = engine.model.generate_batch([[vocab[t] for t in p] for p in batch], max_length=new_tokens,
                                              min_length=new_tokens, sampling_topk=1,
                                              include_prompt_in_result=False, callback=on_token if stamp else None)
        return sum(len(r.sequences_ids[0]) for r in results)

    return _timed(run_batch, batches)


def ctranslate2_stamped(engine, batches, new_tokens: int) -> tuple[int, float]:
    return ctranslate2(engine, batches, new_tokens, stamp=True)


def vllm(engine, batches, new_tokens: int) -> tuple[int, float]:
    """``LLM.generate`` with token-id prompts and ignore_eos (what `vllm bench throughput` does)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0.0,
                            detokenize=False)

    def run_batch(batch) -> int:
        outs = engine.llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    return _timed(run_batch, batches)


def sglang(engine, batches, new_tokens: int) -> tuple[int, float]:
    """``Engine.generate`` with token-id prompts, ignore_eos, no streaming (what `sglang.bench_offline_throughput`
    does)."""
    params = {"max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0}

    def run_batch(batch) -> int:
        outs = engine.engine.generate(input_ids=[list(p) for p in batch], sampling_params=params)
        return sum(o["meta_info"]["completion_tokens"] for o in outs)

    return _timed(run_batch, batches)


def llamacpp(engine, batches, new_tokens: int) -> tuple[int, float]:
    """llama.cpp's C API as examples/batched uses it: one sequence per prompt, one llama_decode per step, the
    next token of each by argmax over its logits row (end-of-generation tokens masked: the forced length)."""
    lib = engine.lib
    ctx = engine.ctx  # the adapter's context: same size and threads as the timed runs; its own batch below
    n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(engine.model))
    eog = engine.eog

    def decode(entries) -> np.ndarray:
        batch = lib.llama_batch_init(len(entries), 0, 1)
        try:
            for i, (token, pos, seq, logits) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                batch.seq_id[i][0] = seq
            batch.n_tokens = len(entries)
            assert lib.llama_decode(ctx, batch) == 0
            rows = sum(1 for e in entries if e[3])
            return np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(rows, n_vocab))
        finally:
            lib.llama_batch_free(batch)

    def run_batch(prompts) -> int:
        lib.llama_memory_clear(lib.llama_get_memory(ctx), False)
        logits = decode([(t, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, t in enumerate(p)])
        lengths = [len(p) for p in prompts]
        for step in range(new_tokens):
            logits[:, eog] = -np.inf
            tokens = logits.argmax(axis=1).tolist()
            if step == new_tokens - 1:
                break
            logits = decode([(t, lengths[s] + step, s, True) for s, t in enumerate(tokens)])
        return new_tokens * len(prompts)

    return _timed(run_batch, batches)


def exllamav2_step(engine, last, mask, offsets):
    """One greedy token per sequence from ExLlamaV2's ``model.forward``, EOS masked (the forced length): the next
    ids, [B, 1] on the CPU, where its embedding lives (the engine waits for the device there too)."""
    logits = engine.model.forward(last, engine.cache, input_mask=mask, position_offsets=offsets)[:, -1, :]
    logits[:, engine.eos_ids] = float("-inf")  # a sorted list already (checkpoint.eos_ids_of)
    return logits.argmax(dim=-1, keepdim=True).cpu()


def exllamav2(engine, batches, new_tokens: int) -> tuple[int, float]:
    """ExLlamaV2's forward loop as its base generator runs it on token ids: prefill the left-padded batch into
    the cache, then one ``model.forward`` per token (``exllamav2_step``)."""
    import torch

    from engines.exllamav2.engine import (
        _left_padded,  # the padding/mask layout ExLlamaV2's generator builds
    )

    @torch.inference_mode()  # as ExLlamaV2's own generators run
    def run_batch(batch) -> int:
        engine._ensure_cache(batch, new_tokens)  # a cache of the batch's shape, as the timed runs have
        ids, mask, offsets = _left_padded(batch)
        engine.cache.current_seq_len = 0
        engine.model.forward(ids[:, :-1], engine.cache, input_mask=mask, preprocess_only=True,
                             position_offsets=offsets)
        last = ids[:, -1:]
        for _ in range(new_tokens):
            last = exllamav2_step(engine, last, mask, offsets)
        torch.cuda.synchronize()
        return new_tokens * len(batch)

    return _timed(run_batch, batches)


def adapter(engine, batches, new_tokens: int) -> tuple[int, float]:
    """Not an engine's own loop: the runner's adapter called directly, greedy, length forced, without the runner's
    measurement around it. ``--bare-loop adapter`` thus weighs the runner's measurement alone (sampler, loop,
    records), for any engine, where the engine's own loop weighs the adapter too."""
    from engines.base import SamplingSpec

    sampling = SamplingSpec(max_new_tokens=new_tokens, ignore_eos=True, temperature=0.0)

    def run_batch(batch) -> int:
        generations = engine.generate(batch, sampling)
        engine.synchronize()
        return sum(len(g.token_ids) for g in generations)

    return _timed(run_batch, batches)


LOOPS = {"adapter": adapter, "hf": hf, "ctranslate2": ctranslate2, "ctranslate2_stamped": ctranslate2_stamped, "vllm": vllm, "sglang": sglang, "llamacpp": llamacpp, "exllamav2": exllamav2}
