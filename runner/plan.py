"""Before anything loads: validate the config, check the packages, read and tokenize the prompts."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from engines import get_engine_class
from engines.base import SamplingSpec
from runner.config import BenchConfig, ConfigError, validate
from runner.data import data_file_fingerprint, load_prompts, prompts_fingerprint
from runner.models import preparation_requirements, tokenizer_source
from runner.speculative import check_draft


@dataclass
class Workload:
    """Everything decided before a model is loaded; building it is where bad input fails."""

    engine_cls: type
    model_variant: Optional[str]  # the engine's model-format variant (checked here, e.g. a compute type)
    prompts: list[list[int]]
    sampling: SamplingSpec


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str, kwargs: tuple):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **dict(kwargs))


def _source_key(model, cache_dir) -> tuple[str, tuple]:
    source, kwargs = tokenizer_source(model, cache_dir)
    return source, tuple(sorted(kwargs.items()))


@dataclass(frozen=True)
class _Slice:
    """A dataset config as a cache key: its repr (the config dataclasses are not hashable)."""

    key: str
    dataset: Any = field(compare=False, hash=False)


def _prompts(dataset: Any, source: str, kwargs: tuple) -> list[list[int]]:
    """The slice's token ids; the next points of a multirun (one process runs them all) reuse them."""
    return [list(p) for p in _slice_ids(_Slice(repr(dataset), dataset), source, kwargs)]


@functools.lru_cache(maxsize=1)  # one slice at a time is what a grid over batch sizes needs
def _slice_ids(dataset: _Slice, source: str, kwargs: tuple) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(p) for p in load_prompts(dataset.dataset, _tokenizer(source, kwargs)))


def _engine_class(cfg: BenchConfig) -> type:
    try:
        return get_engine_class(cfg.engine.name)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None


def check_requirements(cfg: BenchConfig) -> None:
    """Every optional package this point needs is installed, or a ConfigError naming the install command.

    Run for every point of a sweep before the first starts (runner.__main__), and again by ``plan``: a
    missing package must not cost a run, a failed record or a half-made run directory.
    """
    needed = []
    if cfg.scenario == "serving":
        from runner.serving.backends import requirements

        needed += requirements(cfg)
    if not (cfg.scenario == "serving" and cfg.server.url):  # attach mode: the server is someone else's
        engine_cls = _engine_class(cfg)
        needed += engine_cls.requirements(cfg.engine)
        if all(r.installed() for r in needed):  # the variant may need the engine's package (CT2 compute types)
            variant = engine_cls.model_variant(cfg.engine)
            needed += preparation_requirements(cfg.model, engine_cls.model_format, cfg.cache_dir, variant)
    missing = [r for r in needed if not r.installed()]
    if missing:
        first = missing[0]
        raise ConfigError(f"{first.needed_by or f'engine={cfg.engine.name}'} needs the '{first.module}' package, "
                          f"which is not installed: {first.install}")


def plan(cfg: BenchConfig) -> Workload:
    """Validate the config, read and tokenize the prompts. Raises ConfigError, loads no model weights."""
    validate(cfg)
    check_requirements(cfg)
    if cfg.scenario == "serving":  # requests to an OpenAI-compatible server: runner/serving
        from runner.serving.plan import plan as plan_serving

        return plan_serving(cfg)
    engine_cls = _engine_class(cfg)
    variant = engine_cls.model_variant(cfg.engine)
    prompts = _prompts(cfg.dataset, *_source_key(cfg.model, cfg.cache_dir))
    check_draft(cfg, lambda model: _tokenizer(*_source_key(model, cfg.cache_dir)))  # engine.speculative.draft
    sampling = SamplingSpec(
        max_new_tokens=cfg.generation.max_new_tokens,
        ignore_eos=cfg.generation.ignore_eos,
        temperature=cfg.generation.temperature,
    )
    return Workload(engine_cls=engine_cls, model_variant=variant, prompts=prompts, sampling=sampling)


def fingerprints(cfg: BenchConfig, work: Any) -> dict[str, Optional[str]]:
    """What exactly ran: the prompt token ids (part of the run key: edited prompts are a new point) and the
    data file they came from (provenance)."""
    prompts = work.prompt_ids if cfg.scenario == "serving" else work.prompts
    return {"prompts_sha256": prompts_fingerprint(prompts), "dataset_file_sha256": data_file_fingerprint(cfg.dataset)}
