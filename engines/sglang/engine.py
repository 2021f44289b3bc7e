"""SGLang's offline ``Engine``, its outputs streamed so every token gets its own host timestamp.

``Engine.generate(input_ids=[...], stream=True)`` yields one dict per update of one request of the batch:
``index`` (its place in the batch; absent for a batch of one), ``output_ids`` (everything generated so far: SGLang
streams cumulative outputs unless ``incremental_streaming_output`` is set) and ``meta_info`` (``finish_reason``
set on the last). A stamp is the moment the update reached this process; with SGLang's default
``stream_interval=1`` that is one update per token, so TTFT, TPOT and ITL read as vLLM's do. Written against the
sources of sglang 0.5.15 (``sglang/srt/entrypoints/engine.py``, ``managers/tokenizer_manager.py``); run on an H200
on SmolLM2 (tests/test_sglang.py's GPU test, 2026-12-02).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from engines.base import Engine, Generation, SamplingSpec, has_tokenizer, now, require, safetensors_bytes, value_of
from engines.sglang import SGLANG

def engine_kwargs(cfg: Any, model_path: str) -> dict[str, Any]:
    """``sglang.Engine(**...)`` for this config; None keeps SGLang's default."""
    kwargs = {
        "model_path": model_path,
        "dtype": value_of(cfg.dtype),
        "mem_fraction_static": cfg.mem_fraction_static,
        # Passed even when it is the model's own: SGLang clamps its prefill CUDA graphs to an explicit context
        # length only, else captures them up to the chunked-prefill size (8,192 tokens on an H200). On the H200
        # a Llama-2-shaped model (4,096 positions) failed in that capture (CUBLAS_STATUS_EXECUTION_FAILED at
        # 8,192 tokens); SGLang 0.5.15 clamps to 4,096 itself only for paths containing "llama-2", and sglang#21112
        # reports graphs longer than the model's buffers failing. Not yet rerun on the GPU with this clamp.
        "context_length": cfg.context_length or model_config(model_path).get("max_position_embeddings"),
        "max_running_requests": cfg.max_running_requests,
        "tp_size": cfg.tensor_parallel_size,
        "attention_backend": cfg.attention_backend,
        # 0.5.15 deprecates disable_cuda_graph for these two
        "disable_prefill_cuda_graph": cfg.disable_cuda_graph or None,
        "disable_decode_cuda_graph": cfg.disable_cuda_graph or None,
        "disable_radix_cache": not cfg.enable_prefix_caching,
        "random_seed": cfg.seed,
        "skip_tokenizer_init": not has_tokenizer(model_path),
        "log_level": "error",
    }
    return {**{key: value for key, value in kwargs.items() if value is not None}, **cfg.engine_kwargs}


def model_config(model_path: str) -> dict[str, Any]:
    """The checkpoint's config.json ({} without one)."""
    path = Path(model_path) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sampling_params(sampling: SamplingSpec, seed: int) -> dict[str, Any]:
    """SGLang's sampling parameters. ``ignore_eos`` with ``max_new_tokens`` forces the length: SGLang refuses
    ``min_new_tokens`` without a tokenizer (it needs the EOS id), and needs it for nothing else here."""
    params: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                              "ignore_eos": sampling.ignore_eos}
    if sampling.temperature > 0:
        params["sampling_seed"] = seed
    return params


def stamp_stream(chunks: Iterable[dict], count: int, clock: Callable[[], float] = now
                 ) -> tuple[list[list[int]], list[list[float]]]:
    """Each request's final token ids and, per token, the arrival time of the update that brought it.

    An update's ``output_ids`` may be SGLang's own list, which it goes on extending: only its length is read on
    arrival, and the ids are copied from the final update."""
    ids: list[list[int]] = [[] for _ in range(count)]
    times: list[list[float]] = [[] for _ in range(count)]
    for chunk in chunks:
        stamp = clock()
        index = chunk.get("index", 0)
        output = chunk["output_ids"]
        times[index].extend([stamp] * (len(output) - len(times[index])))
        if chunk["meta_info"].get("finish_reason") is not None:
            ids[index] = list(output)
    return ids, times


def loaded_dtype(dtype: Any, model_path: str) -> str:
    """The dtype SGLang loads: its server info keeps "auto" as asked, and auto means the checkpoint's own 16-bit
    dtype, float32 (or none stated) cast to float16 (bfloat16 for Gemma), as sglang/srt/configs/model_config.py."""
    if str(dtype) != "auto":
        return str(dtype)
    config = model_config(model_path)
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    if stored != "float32":
        return str(stored)
    return "bfloat16" if str(config.get("model_type", "")).startswith("gemma") else "float16"


class SchedulerFailed(RuntimeError):
    """SGLang's scheduler process died; it logs its own traceback ("Scheduler hit an exception") and signals us."""


def scheduler_failed(signum: int, frame: Any) -> None:
    """SGLang's scheduler sends SIGQUIT to its parent when it fails, and SGLang's own handler then SIGKILLs this
    whole process tree: the run would read "killed by SIGKILL" as if the host ran out of memory. Raising here
    instead turns it into the run's error, naming where the real one is."""
    raise SchedulerFailed("SGLang's scheduler process failed; its traceback is in this run's log, after "
                          "'Scheduler hit an exception'")


class SGLangEngine(Engine):
    name = "sglang"
    model_format = "hf"
    streams_tokens = True
    packages = ("sglang", "sglang-kernel", "flashinfer-python", "torch", "transformers")
    requires = (SGLANG,)

    def load(self, model_path: str) -> None:
        sglang = require(SGLANG)
        self.model_path = model_path
        try:
            self.engine = sglang.Engine(**engine_kwargs(self.config, model_path),
                                        custom_sigquit_handler=scheduler_failed)
        except SchedulerFailed:
            # SGLang's other processes (multiprocessing children) may hold the GPU; not every child of this
            # process: the runner's memory sampler is one too, and reads on after this error
            for child in multiprocessing.active_children():
                child.kill()
            raise
        info = self.engine.get_server_info()
        self.resolved = {
            "device": "cuda",
            "dtype": loaded_dtype(info.get("dtype", value_of(self.config.dtype)), model_path),
            "quantization": str(info.get("quantization") or "none"),
            "sglang_version": sglang.__version__,
            "sglang_attention_backend": info.get("attention_backend"),
            "sglang_mem_fraction_static": info.get("mem_fraction_static"),
            "sglang_max_total_num_tokens": info.get("max_total_num_tokens"),
            "sglang_cuda_graph": not info.get("disable_decode_cuda_graph", self.config.disable_cuda_graph),
        }

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        chunks = self.engine.generate(input_ids=[list(p) for p in prompts],
                                      sampling_params=sampling_params(sampling, self.config.seed), stream=True)
        ids, times = stamp_stream(chunks, len(prompts))
        return [Generation(token_ids=token_ids, token_times=stamps) for token_ids, stamps in zip(ids, times)]

    def weights_bytes(self) -> Optional[int]:
        return safetensors_bytes(self.model_path)

    def close(self) -> None:
        """Shut the scheduler and detokenizer processes down; SGLang waits until the GPU is released."""
        engine = self.__dict__.pop("engine", None)
        if engine is not None:
            engine.shutdown()
