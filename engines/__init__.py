"""Engine adapters behind one interface (engines.base.Engine), found through a lazy registry.

The registry maps a name to "module:Class" and imports the module on first use, so importing the
runner never imports an engine package (vllm, llama_cpp, ...) that the user did not ask for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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


def get_engine_class(name: str) -> type["Engine"]:
    try:
        target = ENGINES[name]
    except KeyError:
        raise KeyError(f"engine.name={name}: unknown engine; known engines: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def require(module: str, extra: str):
    """Import an optional engine package, or fail with the install command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingEnginePackage(
            f"the '{extra}' engine needs the '{module}' package: pip install -e '.[{extra}]' ({exc})"
        ) from exc
