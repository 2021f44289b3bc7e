"""The contract every engine adapter implements.

An engine loads one model in the format it declares (``model_format``), generates a batch of
already-tokenized prompts, and reports, per sequence, the token ids it really produced and, where it
can, the clock time at which each token became available. The runner derives every latency figure
from those timestamps, so an engine never computes metrics itself and never needs to know which
runner called it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is one line naming the key."""


class MissingEnginePackage(ImportError):
    """An optional engine package is not installed; the message names the pip command that fixes it."""


@dataclass(frozen=True)
class Requirement:
    """An optional package an engine (or one of its options) needs, and the command that installs it."""

    module: str  # the import name, looked up without importing it
    install: str  # e.g. "pip install -e '.[llamacpp]'"
    needed_by: str = ""  # the option that needs it, e.g. "engine.quantization=nf4" (empty: the engine itself)

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken one
            return False


def require(requirement: Requirement):
    """Import an optional package, or fail with the install command that provides it."""
    try:
        return importlib.import_module(requirement.module)
    except ImportError as exc:
        raise MissingEnginePackage(f"the '{requirement.module}' package is missing: {requirement.install} ({exc})"
                                   ) from exc


class DType(str, Enum):
    auto = "auto"  # float16 on CUDA, float32 on CPU
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Device(str, Enum):
    auto = "auto"  # cuda when present, else cpu
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class EngineConfig:
    """The keys every engine has; each engine's package subclasses it with its own typed keys (``engine.*``).
    Hydra checks names and types while composing; ``validate`` checks what a type cannot say."""

    name: str = MISSING
    # Escape hatch: passed as-is to the engine's loader. Keys that duplicate a typed field are refused.
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ConfigError for a value that cannot work (subclasses add their checks, calling this one)."""
        duplicated = set(self.engine_kwargs) & {f for f in vars(self) if f != "engine_kwargs"}
        if duplicated:
            key = sorted(duplicated)[0]
            raise ConfigError(f"engine.engine_kwargs.{key}: duplicates the typed key engine.{key}; set that instead")


def value_of(option: Any) -> Any:
    """An Enum option's value, anything else as it is."""
    return option.value if isinstance(option, Enum) else option


@dataclass(frozen=True)
class SamplingSpec:
    """What to generate: the same for every engine of a sweep."""

    max_new_tokens: int
    ignore_eos: bool  # True: exactly max_new_tokens tokens per sequence (EOS suppressed)
    temperature: float  # 0.0 = greedy


@dataclass
class Generation:
    """One sequence's output.

    ``token_ids`` holds only tokens the engine generated (never prompt or padding), up to and
    including the first EOS when EOS was allowed. ``token_times`` holds, for each of those tokens, the
    ``time.perf_counter()`` reading at which the host had it, after the device was synchronized; None
    when the engine cannot time tokens (then only whole-batch figures exist).
    """

    token_ids: list[int]
    token_times: Optional[list[float]] = None


class Engine(ABC):
    """Base class of engine adapters. Subclasses set the class attributes and implement three methods.

    Class attributes (capabilities, asked by the runner instead of engine names):
        name: the registry name (``engine=<name>`` on the command line).
        model_format: the weights format ``load`` expects, e.g. ``"hf"`` (a transformers directory).
        streams_tokens: True when ``generate`` fills ``Generation.token_times``.
        packages: the distributions whose versions go on every record (``env_<package>``).
        requires: the optional packages it needs (``Requirement``); ``requirements(config)`` adds the ones
            an option needs. The runner checks them before any point of a sweep runs.
    """

    name: ClassVar[str]
    model_format: ClassVar[str]
    streams_tokens: ClassVar[bool] = False
    packages: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[Requirement, ...]] = ()

    def __init__(self, config: Any):
        self.config = config
        # What the engine really ran with, filled by load() (e.g. {"device": "cpu", "dtype": "float32"});
        # it goes on the record beside the requested config.
        self.resolved: dict[str, Any] = {}
        self.draft_path: Optional[str] = None  # engine.speculative.method=draft: the draft model (use_draft)

    @classmethod
    def requirements(cls, config: Any) -> tuple[Requirement, ...]:
        """The optional packages this config needs (the class's ``requires`` unless an option adds some)."""
        return cls.requires

    @classmethod
    def model_variant(cls, config: Any) -> Optional[str]:
        """The variant of ``model_format`` this config needs (e.g. a GGUF quant type), or None."""
        return None

    @classmethod
    def stamps_tokens(cls, config: Any) -> bool:
        """Whether ``generate`` fills ``token_times`` with this config (an engine may let it be turned off)."""
        return cls.streams_tokens

    @classmethod
    def batches_sequentially(cls, config: Any) -> bool:
        """True when this config makes ``generate`` run a batch's prompts one after another (HF's assisted
        decoding takes one sequence at a time): then batch 1 is its like-for-like comparison."""
        return False

    @abstractmethod
    def load(self, model_path: str) -> None:
        """Load the model.

        Args:
            model_path: the model in this engine's ``model_format`` (a directory or a file).
        """

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[Generation]:
        """Generate for one batch, all prompts at once.

        Args:
            prompts: token ids of each prompt (unpadded; the engine pads as it needs).
            sampling: the output length and decoding settings.
        Returns:
            One Generation per prompt, in order.
        """

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """Log-probabilities of each prompt's own tokens, for perplexity (never inside a timed region).

        Args:
            prompts: token ids, each at least two tokens long.
        Returns:
            Per prompt, the natural-log probability of tokens 1 .. n-1, each given the tokens before it
            (n - 1 values; token 0 has no prefix and is not scored).
        Raises:
            NotImplementedError: the engine cannot score tokens; the message says why.
        """
        raise NotImplementedError(f"the {self.name} engine adapter does not expose token log-probabilities")

    def use_draft(self, path: str) -> None:
        """The draft model for engine.speculative.method=draft, in this engine's ``model_format``; the runner
        prepares it like the target and calls this before ``load``."""
        self.draft_path = path

    def take_spec_counts(self) -> Optional[Any]:
        """Speculative decoding's counts (an ``engines.speculative.SpecCounts``) since the last call, which
        starts new ones; None where speculation is off or the engine has none."""
        return None

    def close(self) -> None:
        """Release the model and its memory. The default drops references; override to do more."""
        self.__dict__.pop("model", None)

    @property
    def shape_specialized(self) -> bool:
        """True when compiled code specializes to batch shapes (a compiled decode step, a static cache): the
        runner's warm-up then runs every batch size and the longest prompt, so no compile lands in the timing."""
        return False

    def synchronize(self) -> None:
        """Wait for queued device work, so a clock read after it is honest. No-op on CPU engines."""

    def weights_bytes(self) -> Optional[int]:
        """Bytes of weights the engine actually holds, when it can tell."""
        return None

    def device_memory(self) -> dict[str, Optional[float]]:
        """Allocator figures in MiB (e.g. torch peak allocated/reserved); empty when not applicable."""
        return {}

    def reset_peak_memory(self) -> None:
        """Start a fresh peak for ``device_memory`` (called after load, before measuring)."""


def now() -> float:
    """The one clock every timestamp uses: monotonic, high resolution, in seconds."""
    return time.perf_counter()


def own_code_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ``python -m runner.X`` / ``engines.X`` helper process: this very copy of the project first on
    its path. A checkout run without ``pip install -e``, or beside an install of another copy, would otherwise
    fail to start the helper or start another version's code."""
    here = str(Path(__file__).resolve().parent.parent)
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def has_tokenizer(model_dir: str) -> bool:
    """Random-weight models are saved without one: an engine then skips its tokenizer (token ids in and out)."""
    return any((Path(model_dir) / name).exists() for name in TOKENIZER_FILES)


def safetensors_bytes(model_dir: str) -> Optional[int]:
    """Bytes of every tensor in the directory's safetensors files, read from their headers (no loading).

    For engines whose weights cannot be summed from here (vLLM's live in its engine-core process) or whose
    modules also hold scratch buffers (ExLlamaV2): the checkpoint is what they load, packed GPTQ int32
    tensors counted at their real size.
    """
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(header_len))
        total += sum(end - start for key, meta in header.items() if key != "__metadata__"
                     for start, end in [meta["data_offsets"]])
    return total
