"""HF transformers ``generate`` on static, left-padded batches."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Optional

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from engines.base import Engine, Generation, Requirement, SamplingSpec, now, require
from engines.hf import BITSANDBYTES
from engines.hf.speculative import HFSpeculation


class _StepClock(StoppingCriteria):
    """Stamps each decoding step without making the host wait for the device.

    ``generate`` calls its stopping criteria once per new token, right after choosing it. On CUDA the clock
    records an event on the stream there (read after ``generate`` returns, against an event recorded at the
    start, whose host time is known); on a CPU the step has finished when Python gets here, so the host
    clock is read. A streamer would need the tokens copied to the host (``.cpu()``) every step, which on
    CUDA is a synchronization of its own.
    """

    def __init__(self, device: torch.device, batch_size: int):
        self.cuda = device.type == "cuda"
        self._never = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self._stamps: list = []
        # Sequence length at each call (host metadata, no sync): assisted decoding adds several tokens a step
        self._lengths: list[int] = []
        self.prompt_width = 0  # set once the batch is padded
        if self.cuda:
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record()
        self._start_time = now()

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        self._lengths.append(input_ids.shape[1])
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._stamps.append(event)
        else:
            self._stamps.append(now())
        return self._never  # never stops a sequence: the length is generate's max/min_new_tokens

    def step_times(self) -> list[float]:
        """Host clock time of every token, each the time of the step that made it (after ``generate`` returned:
        its output is on the host by then)."""
        if not self.cuda:
            times = self._stamps
        else:
            self._stamps[-1].synchronize() if self._stamps else None
            times = [self._start_time + self._start_event.elapsed_time(e) / 1e3 for e in self._stamps]
        widths = [b - a for a, b in zip([self.prompt_width, *self._lengths], self._lengths)]
        return [t for t, width in zip(times, widths) for _ in range(width)]


class HFEngine(Engine):
    name = "hf"
    model_format = "hf"
    streams_tokens = True
    packages = ("transformers", "accelerate", "bitsandbytes")
    device: Optional[torch.device] = None  # set by load

    @classmethod
    def requirements(cls, config) -> tuple[Requirement, ...]:
        quantization = config.quantization.value
        return () if quantization == "none" else (replace(BITSANDBYTES, needed_by=f"engine.quantization={quantization}"),)

    @classmethod
    def batches_sequentially(cls, config) -> bool:
        return config.speculative.on  # transformers' assisted decoding: batch 1 only

    def load(self, model_path: str) -> None:
        cfg = self.config
        device = cfg.device.value
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = cfg.dtype.value
        if dtype == "auto":
            dtype = "float16" if device == "cuda" else "float32"
        self.device = torch.device(device)
        quantization = cfg.quantization.value
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=getattr(torch, dtype),
            attn_implementation=cfg.attn_implementation.value,
            device_map=device,
            quantization_config=self._bnb_config(dtype) if quantization != "none" else None,
            **cfg.engine_kwargs,
        )
        self.model.eval()
        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.pad_id = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else min(self.eos_ids, default=0)
        self.resolved = {"device": device, "dtype": dtype, "quantization": quantization,
                         "cache_implementation": cfg.cache_implementation.value, "compiled": cfg.compile}
        self.speculation = None
        if cfg.speculative.on:  # assisted decoding: one sequence per generate call (engines/hf/speculative.py)
            self.speculation = HFSpeculation(cfg.speculative, self.model, self.draft_path, getattr(torch, dtype), device)
            self.resolved["batching"] = "sequential"

    def _bnb_config(self, dtype: str):
        """bitsandbytes as a quantization option of this engine (not an engine of its own)."""
        require(BITSANDBYTES)
        from transformers import BitsAndBytesConfig

        cfg = self.config
        if cfg.quantization.value == "int8":
            # LLM.int8() casts activations to float16 by design and warns on every matmul call.
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            return BitsAndBytesConfig(load_in_8bit=True)
        compute = dtype if cfg.compute_dtype.value == "auto" else cfg.compute_dtype.value
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quantization.value,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute),
        )

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        if self.speculation is None:
            return self._generate(prompts, sampling)
        kwargs = self.speculation.generate_kwargs()  # transformers: assisted decoding takes one sequence a call
        return [self._generate([prompt], sampling, **kwargs)[0] for prompt in prompts]

    def _generate(self, prompts: list[list[int]], sampling: SamplingSpec, **extra) -> list[Generation]:
        clock = _StepClock(self.device, len(prompts))  # first: the inputs' copy to the device counts too
        input_ids, attention_mask = self._left_pad(prompts)
        clock.prompt_width = input_ids.shape[1]
        sample = sampling.temperature > 0
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.max_new_tokens if sampling.ignore_eos else None,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=None,
            top_k=None,
            use_cache=self.config.use_cache,
            **self._cache_kwargs(),
            pad_token_id=self.pad_id,
            stopping_criteria=StoppingCriteriaList([clock]),
            **extra,
        )
        new_tokens = out[:, input_ids.shape[1]:].tolist()
        step_times = clock.step_times()
        return [self._trim(row, step_times, sampling.ignore_eos) for row in new_tokens]

    def _cache_kwargs(self) -> dict:
        """generate's cache and compile arguments. transformers compiles the decode step of a static cache on
        its own on CUDA: engine.compile=false turns that off, so the key means what it says on every device."""
        cfg = self.config
        cache = cfg.cache_implementation.value
        if cache == "dynamic":
            return {}
        if not cfg.compile:
            return {"cache_implementation": cache, "disable_compile": True}
        from transformers import CompileConfig

        compile_config = CompileConfig(mode=cfg.compile_mode)
        # transformers compiles on CUDA only unless told otherwise through this flag ("useful for testing")
        compile_config._compile_all_devices = self.device.type != "cuda"
        return {"cache_implementation": cache, "compile_config": compile_config}

    @property
    def shape_specialized(self) -> bool:
        return "static" in self.config.cache_implementation.value

    def _trim(self, row: list[int], step_times: list[float], ignore_eos: bool) -> Generation:
        """Keep the tokens this sequence really generated: up to its first EOS, never the padding after."""
        length = len(row)
        if not ignore_eos:
            length = next((i + 1 for i, tok in enumerate(row) if tok in self.eos_ids), length)
        return Generation(token_ids=row[:length], token_times=step_times[:length])

    @torch.inference_mode()
    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """One forward pass per prompt (no padding to get wrong); log-softmax in float32."""
        out = []
        for prompt in prompts:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            out.append(logprobs.gather(1, ids[0, 1:, None]).squeeze(1).tolist())
        return out

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def take_spec_counts(self):
        return self.speculation.take_counts() if self.speculation is not None else None

    def weights_bytes(self) -> Optional[int]:
        # Parameters and buffers as stored: packed 4/8-bit tensors count their real bytes (a draft model's too).
        return self.model.get_memory_footprint() + (self.speculation.weights_bytes() if self.speculation else 0)

    def device_memory(self) -> dict[str, Optional[float]]:
        if self.device.type != "cuda":
            return {}
        mib = 2**20
        return {
            "torch_peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / mib,
            "torch_peak_reserved_mib": torch.cuda.max_memory_reserved(self.device) / mib,
        }

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        self.__dict__.pop("speculation", None)
        super().close()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
