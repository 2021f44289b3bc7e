"""llama.cpp through llama-cpp-python's C bindings: a GGUF model decoded for the whole batch at once.

The high-level ``Llama`` class runs one sequence at a time, so this adapter drives the C API itself,
as llama.cpp's examples/batched and examples/parallel do: each prompt is its own sequence (seq_id) in
one KV cache, all prompts are prefilled through ``llama_decode`` (chunks of at most ``n_batch``
tokens), then every step decodes one token of each live sequence in a single ``llama_decode`` call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import psutil

from engines.base import ConfigError, Engine, Generation, SamplingSpec, now, require
from engines.llamacpp import LLAMA_CPP
from engines.llamacpp.convert import gguf_ftype
from engines.llamacpp.speculative import PromptLookup

SCORE_CHUNK = 512  # positions scored per llama_decode: all their logits are held at once (n_vocab floats each)
CTX_ROUND = 256  # llama.cpp pads the context to 256 cells anyway; rounding up avoids re-creating it often


class LlamaCppEngine(Engine):
    name = "llamacpp"
    model_format = "gguf"
    streams_tokens = True
    packages = ("llama-cpp-python",)
    requires = (LLAMA_CPP,)

    @classmethod
    def model_variant(cls, config) -> Optional[str]:
        if not config.quant_type:
            return None
        gguf_ftype(config.quant_type)  # a name llama.cpp does not know fails here, before any run
        return config.quant_type.lower()

    def load(self, model_path: str) -> None:
        cfg = self.config
        cfg.validate()  # also here: the adapter can be built from a config that never went through the runner
        self.lib = lib = require(LLAMA_CPP)
        # llama_cpp routes llama.cpp's log through this logger, which prints everything by default; its
        # level map is off by one (INFO arrives as WARNING), so ERROR is what Llama(verbose=False) sets too.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = cfg.n_gpu_layers
        params.use_extra_bufts = use_extra_buffers(cfg)
        self._ctx_kwargs = self._apply_kwargs(params, lib.llama_context_default_params())
        path = gguf_file(model_path)
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        self.eog = np.array(end_of_generation_ids(lib, vocab), dtype=np.int64)
        self.eog_set = frozenset(self.eog.tolist())
        self.ctx, self.batch = None, None
        self.ctx_seqs = self.ctx_cells_per_seq = 0
        self.rng = np.random.default_rng(0)
        self.speculation = PromptLookup(cfg.speculative) if cfg.speculative.on else None
        on_gpu = lib.llama_supports_gpu_offload() and cfg.n_gpu_layers != 0
        self.resolved = {
            "device": "cuda" if on_gpu else "cpu",
            "dtype": lib.llama_ftype_name(lib.llama_model_ftype(self.model)).decode(),
            "n_gpu_layers": cfg.n_gpu_layers if on_gpu else 0,
            "batching": "batched",
            "extra_buffers": bool(params.use_extra_bufts),
        }

    def _apply_kwargs(self, model_params, ctx_params) -> dict:
        """Split ``engine_kwargs`` between the model and the context parameter structs, by field name."""
        ctx_kwargs = {}
        for key, value in self.config.engine_kwargs.items():
            if key in dict(type(model_params)._fields_):
                setattr(model_params, key, value)
            elif key in dict(type(ctx_params)._fields_):
                ctx_kwargs[key] = value
            else:
                raise ConfigError(f"engine.engine_kwargs.{key}: not a llama_model_params or llama_context_params field")
        return ctx_kwargs

    def _ensure_context(self, n_seqs: int, cells_per_seq: int) -> None:
        """A context with a KV stream per sequence, big enough for this batch; made again only to grow."""
        cfg, lib = self.config, self.lib
        if self.ctx and n_seqs <= self.ctx_seqs and cells_per_seq <= self.ctx_cells_per_seq:
            return
        if n_seqs > lib.llama_max_parallel_sequences():
            raise ConfigError(f"batch_size={n_seqs}: llama.cpp decodes at most "
                              f"{lib.llama_max_parallel_sequences()} sequences at once")
        self._free_context()
        n_seqs = max(n_seqs, self.ctx_seqs)
        needed, cells_per_seq = cells_per_seq, max(cells_per_seq, self.ctx_cells_per_seq)
        cells_per_seq = -(-cells_per_seq // CTX_ROUND) * CTX_ROUND
        params = lib.llama_context_default_params()
        params.n_seq_max = n_seqs
        params.n_ctx = cfg.n_ctx or n_seqs * cells_per_seq
        if cfg.n_batch:
            params.n_batch = cfg.n_batch
            params.n_ubatch = min(params.n_ubatch, cfg.n_batch)
        params.n_threads = params.n_threads_batch = cfg.n_threads or physical_cores()
        # Explicit either way: llama.cpp's default "auto" decides per machine, off the record.
        params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn
                                  else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        for key, value in self._ctx_kwargs.items():
            setattr(params, key, value)
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} cells for {n_seqs} sequences")
        self.n_batch = lib.llama_n_batch(self.ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.ctx_seqs, self.ctx_cells_per_seq = n_seqs, lib.llama_n_ctx_seq(self.ctx)
        if self.ctx_cells_per_seq < needed:  # only a fixed engine.n_ctx can be too small
            raise ConfigError(f"engine.n_ctx={cfg.n_ctx}: {self.ctx_cells_per_seq} cells per sequence for {n_seqs} "
                              f"sequences; this batch needs {needed} (longest prompt + max_new_tokens)")
        self.resolved.update(n_ctx=lib.llama_n_ctx(self.ctx), n_seq_max=n_seqs, n_batch=self.n_batch,
                             n_threads=lib.llama_n_threads(self.ctx))

    def _submit(self, entries: list[tuple[int, int, int, bool]], outs: list[Generation],
                sampling: SamplingSpec) -> None:
        """Decode (token, pos, seq_id, wants_logits) entries; every sequence that asked for logits gets its next
        token, stamped when its ``llama_decode`` call's logits were read (``decode_picks``)."""
        for seq, token, stamp in self.decode_picks(entries, sampling):
            outs[seq].token_ids.append(token)
            outs[seq].token_times.append(stamp)

    def decode_picks(self, entries: list[tuple[int, int, int, bool]], sampling: SamplingSpec
                     ) -> list[tuple[int, int, float]]:
        """Decode (token, pos, seq_id, wants_logits) entries, at most n_batch per ``llama_decode`` call; for each
        entry that wants logits, in order: (seq_id, the token picked from its logits, the time they were read)."""
        lib, batch, picks = self.lib, self.batch, []
        for start in range(0, len(entries), self.n_batch):
            part = entries[start:start + self.n_batch]
            for i, (token, pos, seq, logits) in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                batch.seq_id[i][0] = seq
            batch.n_tokens = len(part)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code} (1: no room in the KV cache; raise engine.n_ctx)")
            wanted = [seq for _, _, seq, logits in part if logits]
            if not wanted:
                continue
            # One view of all output rows, in batch order (one llama_get_logits_ith call per row costs more
            # than the decode step at large batches). _pick may write into it: the next decode overwrites it.
            logits = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(len(wanted), self.n_vocab))
            tokens = self._pick(logits, sampling)
            stamp = now()
            picks += [(seq, token, stamp) for seq, token in zip(wanted, tokens)]
        return picks

    def _pick(self, logits: np.ndarray, sampling: SamplingSpec) -> list[int]:
        """Greedy argmax (temperature 0) or a draw from softmax(logits / temperature); EOG masked if ignored."""
        if sampling.ignore_eos:
            logits[:, self.eog] = -np.inf
        if sampling.temperature <= 0:
            return logits.argmax(axis=1).tolist()
        scaled = logits / sampling.temperature
        probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return [int(self.rng.choice(self.n_vocab, p=row)) for row in probs]

    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        self._ensure_context(len(prompts), max(map(len, prompts)) + sampling.max_new_tokens)
        # Metadata only: freed cells are masked out, and their buffers were zeroed when the context was made.
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)
        outs = [Generation(token_ids=[], token_times=[]) for _ in prompts]
        # Prefill: all prompts in one stream of entries, logits only for each prompt's last token.
        prefill = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        self._submit(prefill, outs, sampling)
        # Then one entry per live sequence and step: its last token, at the position after its history.
        while live := [seq for seq, out in enumerate(outs) if not self.done(out, sampling)]:
            if self.speculation is not None:  # drafts verified in the same one call (engines/llamacpp/speculative.py)
                self.speculation.step(self, live, prompts, outs, sampling)
                continue
            step = [(outs[seq].token_ids[-1], len(prompts[seq]) + len(outs[seq].token_ids) - 1, seq, True)
                    for seq in live]
            self._submit(step, outs, sampling)
        return outs

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """Each prompt alone as sequence 0, logits requested for every position, at most n_batch per call."""
        lib, out = self.lib, []
        for prompt in prompts:
            self._ensure_context(1, len(prompt))
            lib.llama_memory_clear(lib.llama_get_memory(self.ctx), False)
            scores: list[float] = []
            chunk = min(self.n_batch, SCORE_CHUNK)
            for start in range(0, len(prompt), chunk):
                part = prompt[start:start + chunk]
                for i, token in enumerate(part):
                    self.batch.token[i], self.batch.pos[i], self.batch.n_seq_id[i] = token, start + i, 1
                    self.batch.seq_id[i][0], self.batch.logits[i] = 0, True
                self.batch.n_tokens = len(part)
                if lib.llama_decode(self.ctx, self.batch) != 0:
                    raise RuntimeError("llama_decode failed while scoring a prompt")
                logits = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(len(part), self.n_vocab))
                scores.extend(_log_softmax_at(logits, prompt[start + 1:start + len(part) + 1]))
            out.append(scores)
        return out

    def done(self, out: Generation, sampling: SamplingSpec) -> bool:
        if len(out.token_ids) >= sampling.max_new_tokens:
            return True
        return not sampling.ignore_eos and out.token_ids[-1] in self.eog_set

    def take_spec_counts(self):
        return self.speculation.take_counts() if self.speculation is not None else None

    def synchronize(self) -> None:
        if self.ctx:
            self.lib.llama_synchronize(self.ctx)

    def weights_bytes(self) -> Optional[int]:
        return self.lib.llama_model_size(self.model)

    def _free_context(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def close(self) -> None:
        if getattr(self, "model", None):
            self._free_context()
            self.lib.llama_model_free(self.model)
        super().close()


def _log_softmax_at(logits: np.ndarray, targets: list[int]) -> list[float]:
    """ln softmax(row)[target] for the first len(targets) rows (the last row of a prompt has no target)."""
    rows = logits[:len(targets)].astype(np.float64)
    peak = rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
    return (rows[np.arange(len(targets)), targets] - log_norm).tolist()


def end_of_generation_ids(lib, vocab) -> list[int]:
    """Every end-of-generation token (SmolLM2: <|endoftext|>, <|im_end|>, ...), not only the vocab's EOS."""
    return [t for t in range(lib.llama_vocab_n_tokens(vocab)) if lib.llama_vocab_is_eog(vocab, t)]


def use_extra_buffers(config) -> bool:
    """llama.cpp's extra CPU buffer types (AMX tiles, repacked weights): engine.extra_buffers, or by default
    on except on a CPU with AMX, where llama.cpp's AMX matmul segfaults at the first decode (llama.cpp issue
    20824, machine-dependent; seen here with llama-cpp-python 0.3.36 on an AMX Xeon, in
    ggml_backend_amx_mul_mat)."""
    if config.extra_buffers is not None:
        return config.extra_buffers
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "amx_int8" not in flags


def physical_cores() -> int:
    """llama.cpp's tools default to the physical cores; its library default (4) oversubscribes small
    machines: on 2 cores, 4 threads decoded SmolLM2 at 37 tok/s where 2 threads gave 123."""
    usable = len(os.sched_getaffinity(0))
    return min(usable, psutil.cpu_count(logical=False) or usable)


def gguf_file(model_path: str) -> Path:
    """The GGUF file itself; a converted cache entry is a directory holding exactly one."""
    path = Path(model_path)
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise ConfigError(f"model path {path}: expected one .gguf file there, found {len(found)}")
    return found[0]
