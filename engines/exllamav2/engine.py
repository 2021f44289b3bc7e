"""ExLlamaV2 0.3.2 on GPTQ 4-bit weights (CUDA only), decoded step by step so every token gets a timestamp.

The runner prepares the model as the ``gptq-w4g128`` variant (runner/gptq/); a ``model.hf`` that is
already an EXL2 or GPTQ directory (config.json ``quantization_config``, or EXL2's ``quantization_config``
block) is loaded as it is. Token ids go in on the CPU (ExLlamaV2 keeps the embedding there).

Two decoding paths:

* ``paged=False`` (default; flash-attn is absent): ExLlamaV2's dynamic generator allows only batch 1
  unpaged, so this adapter runs the batch itself as ExLlamaV2's base generator does: prompts left-padded,
  an additive padding mask and per-row position offsets, one ``model.forward`` for the prefill and one per
  decoding step over a batch-sized cache; greedy argmax or temperature sampling on the logits. Attention is
  ExLlamaV2's matmul path (``no_sdpa``): its SDPA path drops the causal mask.
* ``paged=True`` (needs flash-attn >= 2.5.7): ``ExLlamaV2DynamicGenerator`` with one job per prompt, no
  stop conditions and ``min_new_tokens`` when the length is forced; tokens are stamped per ``iterate()``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Optional

from engines.base import Engine, Generation, SamplingSpec, now, require, safetensors_bytes
from engines.exllamav2 import EXLLAMAV2
from engines.exllamav2.checkpoint import (check_intermediate_size, eos_ids_of, quantization_name,
                                          rope_from_rope_parameters)

MIB = 2**20
GPTQ_VARIANT = "gptq-w4g128"
PAD_MASK = -65505.0 * 2  # ExLlamaV2 tokenizer.padding_mask's additive bias at padded positions
CACHE_CLASSES = {"fp16": "ExLlamaV2Cache", "q8": "ExLlamaV2Cache_Q8", "q6": "ExLlamaV2Cache_Q6",
                 "q4": "ExLlamaV2Cache_Q4"}


class ExLlamaV2Engine(Engine):
    name = "exllamav2"
    model_format = "hf"
    streams_tokens = True
    packages = ("exllamav2", "torch", "flash-attn")
    requires = (EXLLAMAV2,)

    @classmethod
    def model_variant(cls, config: Any) -> Optional[str]:
        return GPTQ_VARIANT  # runner.models.prepare passes an already GPTQ/EXL2 model.hf through as it is

    def load(self, model_path: str) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the exllamav2 engine needs a CUDA GPU (ExLlamaV2 has no CPU kernels); none is visible")
        self.exl2 = exl2 = require(EXLLAMAV2)
        self.model_path = model_path
        cfg = self.config
        config = exl2.ExLlamaV2Config(model_path)
        config.arch_compat_overrides()
        rope_from_rope_parameters(config)
        config.max_seq_len = cfg.max_seq_len or config.max_seq_len
        # Scratch buffers are sized at load for max_batch_size rows of max_input_len tokens (prefill chunk).
        config.max_batch_size = cfg.max_batch_size
        config.max_input_len = min(config.max_input_len, config.max_seq_len)
        config.max_attention_size = config.max_input_len ** 2
        config.no_flash_attn = not cfg.paged
        # ExLlamaV2 0.3.2's SDPA branch (_attn_torch) passes no mask at all for causal layers (it asks for the
        # block-diagonal mask, None without cu_seqlens): prefill attends to future tokens and padding, and the
        # output is garbage. Its matmul branch builds the causal + padding mask, so use that one.
        config.no_sdpa = True
        for key, value in cfg.engine_kwargs.items():  # e.g. no_sdpa, low_mem: ExLlamaV2Config attributes
            if not hasattr(config, key):
                raise ValueError(f"engine.engine_kwargs.{key}: not an ExLlamaV2Config attribute")
            setattr(config, key, value)
        check_intermediate_size(config)
        self.model = exl2.ExLlamaV2(config)
        self.model.load(progress=False)  # one GPU; the KV cache is made per batch shape (_ensure_cache)
        self.cache, self.cache_shape, self.generator = None, (0, 0), None
        self.eos_ids = eos_ids_of(config)
        torch.cuda.synchronize()
        self.resolved = {"device": "cuda", "dtype": "float16", "quantization": quantization_name(config),
                         "exllamav2_cache": _value(cfg.cache_dtype), "exllamav2_paged": cfg.paged,
                         "exllamav2_max_seq_len": config.max_seq_len}

    def _ensure_cache(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """A KV cache for this batch (made again only to grow): one row per sequence unpaged, or one
        page table for all jobs (whole 256-token pages) paged; engine.max_seq_len fixes the length."""
        cfg, exl2 = self.config, self.exl2
        if len(prompts) > cfg.max_batch_size:
            raise ValueError(f"batch of {len(prompts)} > engine.max_batch_size={cfg.max_batch_size}")
        per_seq = cfg.max_seq_len or max(len(ids) for ids in prompts) + max_new_tokens
        rows, length = (1, len(prompts) * per_seq) if cfg.paged else (len(prompts), per_seq)
        length = -(-length // 256) * 256
        if rows <= self.cache_shape[0] and length <= self.cache_shape[1]:
            return
        rows, length = max(rows, self.cache_shape[0]), max(length, self.cache_shape[1])
        self.cache = self.generator = None
        cache_class = getattr(exl2, CACHE_CLASSES[_value(cfg.cache_dtype)])
        self.cache = cache_class(self.model, batch_size=rows, max_seq_len=length)
        self.cache_shape = (rows, length)
        if cfg.paged:
            from exllamav2.generator import ExLlamaV2DynamicGenerator

            self.generator = ExLlamaV2DynamicGenerator(
                model=self.model, cache=self.cache, tokenizer=exl2.ExLlamaV2Tokenizer(self.model.config),
                max_batch_size=cfg.max_batch_size, max_seq_len=min(per_seq, self.model.config.max_seq_len),
                paged=True)
        self.resolved.update(exllamav2_cache_rows=rows, exllamav2_cache_tokens=length)

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        self._ensure_cache(prompts, sampling.max_new_tokens)
        if self.config.paged:
            return self._generate_paged(prompts, sampling)
        return self._generate_unpaged(prompts, sampling)

    def _generate_unpaged(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        import torch

        # inference mode, as ExLlamaV2's own generators run: the logits are then edited in place (outside it they
        # are inference tensors, and an in-place edit needs a copy first)
        with torch.inference_mode():
            decoding = self._prefill(prompts)
            gens = [Generation(token_ids=[], token_times=[]) for _ in prompts]
            for _ in range(sampling.max_new_tokens):
                if not self._decode_step(decoding, sampling, gens):
                    break
        return gens

    def _prefill(self, prompts: list[list[int]]) -> "_Decoding":
        """All but the last prompt token into the cache, left-padded; the first decoding step feeds that one."""
        ids, mask, offsets = _left_padded(prompts)
        self.cache.current_seq_len = 0
        if ids.shape[1] > 1:
            self.model.forward(ids[:, :-1], self.cache, input_mask=mask, preprocess_only=True,
                               position_offsets=offsets)
        return _Decoding(last=ids[:, -1:], mask=mask, offsets=offsets, done=[False] * len(prompts))

    def _decode_step(self, decoding: "_Decoding", sampling: SamplingSpec, gens: list[Generation]) -> bool:
        """One token for every sequence, stamped once it is on the host; False when every sequence has ended.
        (scripts/step_ab.py runs this very step against ExLlamaV2's bare one, block by block.)"""
        logits = self.model.forward(decoding.last, self.cache, input_mask=decoding.mask,
                                    position_offsets=decoding.offsets)[:, -1, :]
        if sampling.ignore_eos:
            logits[:, self.eos_ids] = float("-inf")
        tokens = _pick(logits, sampling.temperature).cpu()  # .cpu() waits for the step
        stamp = now()
        for row, token in enumerate(tokens.tolist()):
            if not decoding.done[row]:
                gens[row].token_ids.append(token)
                gens[row].token_times.append(stamp)
                decoding.done[row] = token in self.eos_ids
        decoding.last = tokens.view(-1, 1)  # argmax and multinomial give int64 ids
        return not all(decoding.done)

    def _generate_paged(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        import torch
        from exllamav2.generator import ExLlamaV2DynamicJob, ExLlamaV2Sampler

        settings = ExLlamaV2Sampler.Settings.greedy() if sampling.temperature == 0 else \
            ExLlamaV2Sampler.Settings(temperature=sampling.temperature, top_k=0, top_p=1.0)
        gens = {}
        for index, ids in enumerate(prompts):
            job = ExLlamaV2DynamicJob(input_ids=torch.tensor([ids], dtype=torch.long), gen_settings=settings,
                                      max_new_tokens=sampling.max_new_tokens,
                                      min_new_tokens=sampling.max_new_tokens if sampling.ignore_eos else 0,
                                      # below min_new_tokens the job blocks its stop tokens: forced length
                                      stop_conditions=list(self.eos_ids),
                                      identifier=index, decode_special_tokens=True)
            self.generator.enqueue(job)
            gens[index] = Generation(token_ids=[], token_times=[])
        while self.generator.num_remaining_jobs():
            results = self.generator.iterate()  # returns after the step's tokens were sampled on the host
            stamp = now()
            for result in results:
                new = result.get("token_ids")
                if new is not None and new.numel():
                    gen = gens[result["identifier"]]
                    gen.token_ids.extend(new.flatten().tolist())
                    gen.token_times.extend([stamp] * new.numel())
        return [gens[index] for index in range(len(prompts))]

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        import torch

        scores = []
        self._ensure_cache([max(prompts, key=len)], 0)
        for ids in prompts:  # one at a time: no padding to reason about, never timed
            self.cache.current_seq_len = 0
            tokens = torch.tensor([ids], dtype=torch.long)
            logits = self.model.forward(tokens[:, :-1], self.cache, last_id_only=False).float()[0]
            logprobs = torch.log_softmax(logits, dim=-1)
            targets = tokens[0, 1:].to(logprobs.device)
            scores.append(logprobs.gather(1, targets.view(-1, 1)).flatten().tolist())
        self.cache.current_seq_len = 0
        return scores

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()

    def weights_bytes(self) -> Optional[int]:
        # Not the modules' tensors: those include scratch and padding buffers (33.8 GB for a 4-bit 7B).
        return safetensors_bytes(self.model_path)

    def device_memory(self) -> dict[str, Optional[float]]:
        import torch

        return {"torch_peak_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
                "torch_peak_reserved_mib": torch.cuda.max_memory_reserved() / MIB}

    def reset_peak_memory(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        import torch

        model = self.__dict__.pop("model", None)
        if model is not None:
            model.unload()
        self.__dict__.pop("cache", None)
        self.__dict__.pop("generator", None)
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class _Decoding:
    """An unpaged batch between decoding steps: the tokens to feed next ([B, 1] long, on the CPU, where
    ExLlamaV2 keeps the embedding), the padding mask and position offsets, and which sequences have ended."""

    last: Any
    mask: Any
    offsets: Any
    done: list[bool]


def _left_padded(prompts: list[list[int]]):
    """(ids [B, T] long, additive mask [B, T] half or None, position offsets [B] int or None), as
    ExLlamaV2's base generator builds them: padding on the left, masked, positions shifted back."""
    import torch

    longest = max(len(ids) for ids in prompts)
    pads = [longest - len(ids) for ids in prompts]
    ids = torch.tensor([[0] * pad + list(p) for pad, p in zip(pads, prompts)], dtype=torch.long)
    if not any(pads):
        return ids, None, None
    mask = torch.tensor([[PAD_MASK] * pad + [0.0] * len(p) for pad, p in zip(pads, prompts)]).half()
    return ids, mask, torch.tensor([-pad for pad in pads], dtype=torch.int)


def _pick(logits, temperature: float):
    import torch

    if temperature == 0:
        return logits.argmax(dim=-1)  # on the float16 logits: converting first changes no index, and costs a kernel
    return torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1).flatten()


def _value(option: Any) -> Any:
    return getattr(option, "value", option)
