"""Every YAML option composes; bad values fail with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from runner.config import BenchConfig, ConfigError, register_configs, validate

CONF = Path(__file__).resolve().parent.parent / "conf"
register_configs()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{group}={name}" for group in ("engine", "model", "dataset") for name in _options(group)]
)
def test_every_yaml_option_composes_into_its_schema(override):
    bench = OmegaConf.to_object(_compose(override))
    assert isinstance(bench, BenchConfig)
    group, name = override.split("=")
    # An engine option may be a preset of an engine (hf_int8 is hf with int8 weights): named after it.
    assert getattr(bench, group).name == (name.split("_")[0] if group == "engine" else name)


def test_defaults_are_hf_smollm2_sharegpt():
    bench = OmegaConf.to_object(_compose())
    assert (bench.engine.name, bench.model.name, bench.dataset.name) == ("hf", "smollm2-135m", "sharegpt")


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigCompositionException, match="engine.nonexistent"):
        _compose("engine.nonexistent=1")


def test_bad_enum_value_lists_the_valid_choices():
    with pytest.raises(ConfigCompositionException) as info:
        _compose("engine.dtype=fp8")
    assert "float32" in str(info.value.__cause__) and "bfloat16" in str(info.value.__cause__)


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        _compose("batch_size=many")


def test_unknown_engine_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match="Available options in 'engine'") as info:
        _compose("engine=nope")
    assert "hf" in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("batch_size=0", "batch_size=0: must be greater than 0"),
        ("batch_size=-3", "batch_size=-3: must be greater than 0"),
        ("generation.max_new_tokens=0", "generation.max_new_tokens=0"),
        ("dataset.limit=0", "dataset.limit=0"),
        ("dataset.offset=-1", "dataset.offset=-1"),
        ("model.hf=/no/such/model/dir", "model.hf=/no/such/model/dir: no such local directory"),
        ("model.gguf=/no/such/file.gguf", "model.gguf=/no/such/file.gguf: no such file"),
        ("+engine.engine_kwargs.dtype=float16", "engine.engine_kwargs.dtype: duplicates the typed key engine.dtype"),
    ],
)
def test_impossible_values_fail_validation_naming_the_key(override, message):
    bench = OmegaConf.to_object(_compose(override))
    with pytest.raises(ConfigError) as info:
        validate(bench)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_reused_worker_engine_warms_up_at_full_length_unless_asked_for_less():
    """A short warm-up on a reused engine left eager HF's KV-cache growth for the new batch shape to the first
    timed repetition (2.5x slower on an H200): the full length is the default."""
    from types import SimpleNamespace

    from engines.base import SamplingSpec
    from runner.measure import _warmup_sampling

    sampling, engine = SamplingSpec(200, True, 0.0), SimpleNamespace(shape_specialized=False)
    bench = OmegaConf.to_object(_compose())
    assert _warmup_sampling(bench, sampling, engine, warm=True).max_new_tokens == 200
    short = OmegaConf.to_object(_compose("measure.reused_warmup_tokens=4"))
    assert _warmup_sampling(short, sampling, engine, warm=True).max_new_tokens == 4
    assert _warmup_sampling(short, sampling, engine, warm=False).max_new_tokens == 200
