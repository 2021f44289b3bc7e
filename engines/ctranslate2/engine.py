"""CTranslate2's ``Generator`` on a converted model: static batches, a callback timestamps every token.

CTranslate2 takes prompts as token strings; the converted directory's ``vocabulary.json`` lists them by
id (the converter checks that), so ids map to strings by position and CTranslate2 maps them straight back.
With ``include_prompt_in_result=False`` it prefills every prompt up to the shortest prompt's length in
one forward pass; the rest of a longer prompt is fed one token per step, so in a batch of mixed lengths
the longer prompts' first tokens come later. The timestamps show this; it is how CTranslate2 batches.
"""

from __future__ import annotations

import ctypes
import json
import threading
from pathlib import Path
from typing import Optional

from engines.base import ConfigError, Engine, Generation, SamplingSpec, now, require
from engines.ctranslate2 import CTRANSLATE2

# What compute_type=auto picks, by device, as CTranslate2's resolve_compute_type (src/types.cc) does.
# We resolve it ourselves because the choice also picks the stored weights, before anything is loaded.
AUTO_ORDER = {"cuda": ["int8_float16", "int8_float32", "float16", "float32"],
              "cpu": ["int8_float32", "int16", "float32"]}


def _resolve(config) -> tuple[str, str]:
    """The device and the concrete compute type this config runs with. Raises ConfigError."""
    config.validate()
    ct2 = require(CTRANSLATE2)
    device = config.device.value
    if device == "auto":
        device = "cuda" if ct2.get_cuda_device_count() > 0 else "cpu"
    try:
        supported = ct2.get_supported_compute_types(device)
    except RuntimeError as exc:  # e.g. device=cuda on a machine without a usable GPU
        raise ConfigError(f"engine.device={device}: CTranslate2 cannot use it ({exc})") from None
    wanted = config.compute_type.value
    if wanted == "default":  # "the stored type", and for it we store the lossless float32 conversion
        return device, "float32"
    if wanted == "auto":
        return device, next(t for t in AUTO_ORDER[device] if t in supported)
    if wanted not in supported:
        raise ConfigError(f"engine.compute_type={wanted}: not supported on {device}; "
                          f"supported there: {', '.join(sorted(supported))}")
    return device, wanted


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    model_format = "ct2"
    streams_tokens = True
    packages = ("ctranslate2",)
    requires = (CTRANSLATE2,)

    @classmethod
    def model_variant(cls, config) -> Optional[str]:
        # Weights are stored at the compute type they run at, one cache entry per type. CTranslate2
        # would convert any stored copy while loading, but then model.bin would not be what is held in
        # memory; stored == run makes weights_bytes() a file size, and a load converts nothing.
        return _resolve(config)[1]

    @classmethod
    def stamps_tokens(cls, config) -> bool:
        return config.token_timestamps  # false: no per-token callback (its cost: engines/ctranslate2/__init__.py)

    def load(self, model_path: str) -> None:
        cfg = self.config
        device, compute_type = _resolve(cfg)
        ct2 = require(CTRANSLATE2)
        self.model = ct2.Generator(model_path, device=device, compute_type=compute_type,
                                   inter_threads=cfg.inter_threads, intra_threads=cfg.intra_threads,
                                   **cfg.engine_kwargs)
        path = Path(model_path)
        self.vocab: list[str] = json.loads((path / "vocabulary.json").read_text(encoding="utf-8"))
        self.end_ids = _end_ids(path, self.vocab)
        self.weights_file = path / "model.bin"
        # What CTranslate2 reports, e.g. int8 -> int8_float32 (int8 weights, float32 activations).
        self.resolved = {"device": self.model.device, "dtype": self.model.compute_type}

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        n, stamped = sampling.max_new_tokens, self.config.token_timestamps
        # CTranslate2 quirk: when the shortest prompt has one token nothing is prefilled, and then it
        # returns the other prompts' tokens after the first (and counts them in max_length). Skip that
        # echo and stop each sequence at n new tokens from the callback instead.
        echo = [len(p) - 1 for p in prompts] if min(map(len, prompts)) == 1 else [0] * len(prompts)
        seen = [0] * len(prompts)
        times: list[list[float]] = [[] for _ in prompts]

        def on_token(step) -> bool:  # called once per sequence and step, with the token already on the host
            _keep_thread_state()
            i = step.batch_id
            seen[i] += 1
            if seen[i] > echo[i]:
                times[i].append(now())
            return len(times[i]) == n

        sample = sampling.temperature > 0
        results = self.model.generate_batch(
            [[self.vocab[t] for t in p] for p in prompts],
            max_length=n + max(echo),  # new tokens only: the prompt does not count (see the quirk above)
            min_length=n + max(echo) if sampling.ignore_eos else 0,  # disables the end ids until then
            end_token=self.end_ids,
            return_end_token=True,  # keep the EOS: it is a generated token the runner counts
            sampling_topk=0 if sample else 1,  # 0: the whole vocabulary
            sampling_temperature=sampling.temperature if sample else 1.0,
            include_prompt_in_result=False,
            return_scores=False,
            callback=on_token if stamped else None,
        )
        return [Generation(token_ids=r.sequences_ids[0][skip:][:n], token_times=t if stamped else None)
                for r, skip, t in zip(results, echo, times)]

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """``Generator.score_batch``: the log-probability of each token after the first, given its prefix."""
        results = self.model.score_batch([[self.vocab[t] for t in p] for p in prompts])
        return [list(r.log_probs) for r in results]

    def weights_bytes(self) -> Optional[int]:
        return self.weights_file.stat().st_size  # stored at the compute type in use (see model_variant)


_worker = threading.local()  # per thread, and gone with the thread's Python state: says whether that state is kept


def _keep_thread_state() -> None:
    """Keep the calling thread's Python thread state alive from now on (once per thread; a no-op after).

    CTranslate2 calls the per-token callback from its own worker thread through pybind11, which creates a Python
    thread state for that thread before every call and deletes it after (pybind11 issue #6179). That churn was
    the callback's cost: 10-13 us a call on the CPU machine, 0-3 us once kept (scripts/ct2_callback_cost.py);
    15-25 us on the H200's (3-4 % of a batch-16 step there). One ``PyGILState_Ensure`` that is never released holds
    the state's count above zero, so pybind11 reuses it: one thread state per CTranslate2 worker thread, as a Python
    thread has."""
    if not getattr(_worker, "kept", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _worker.kept = True


def _end_ids(path: Path, vocab: list[str]) -> list[int]:
    """The EOS ids of generation_config.json (as the HF engine uses), else the converter's eos_token."""
    gen_config = path / "generation_config.json"
    eos = json.loads(gen_config.read_text()).get("eos_token_id") if gen_config.is_file() else None
    if eos is None:
        return [vocab.index(json.loads((path / "config.json").read_text())["eos_token"])]
    return eos if isinstance(eos, list) else [eos]
