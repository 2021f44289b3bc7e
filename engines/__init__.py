"""Engines, one package each (``engines/<name>/``), found by name through a lazy registry.

A package's ``__init__`` is its typed config and is light to import: it defines ``CONFIG`` (the config
dataclass, a subclass of ``engines.base.EngineConfig``), ``ADAPTER`` ("module:Class" of its
``engines.base.Engine``) and, when the engine has an OpenAI-compatible server, ``SERVER`` ("module:Class" of
its ``engines.server.Server``). The adapter and server modules, which import the engine's own package
(vllm, llama_cpp, ...), are imported only when asked for. Adding an engine is one package plus one YAML
under conf/engine/. Nothing here imports the runner.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from engines.base import Engine, EngineConfig
    from engines.server import Server


def names() -> list[str]:
    """Every engine name (``engine=<name>``): the packages under engines/."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def _package(name: str) -> ModuleType:
    if name not in names():
        raise KeyError(f"engine.name={name}: unknown engine; known engines: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def _load(target: str):
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def config_class(name: str) -> type["EngineConfig"]:
    return _package(name).CONFIG


def get_engine_class(name: str) -> type["Engine"]:
    return _load(_package(name).ADAPTER)


def server_class(name: str) -> Optional[type["Server"]]:
    """The engine's own server, or None when it has none."""
    target = getattr(_package(name), "SERVER", None)
    return _load(target) if target else None


def with_server() -> list[str]:
    """The engines that have a server (without importing any)."""
    return [name for name in names() if getattr(_package(name), "SERVER", None)]


def with_key(key: str) -> list[str]:
    """The engines whose config has the top-level key ``engine.<key>`` (e.g. speculative), without importing any
    adapter: the one-line refusal of a key an engine lacks names the engines that have it."""
    import dataclasses

    return [name for name in names() if key in {f.name for f in dataclasses.fields(config_class(name))}]


def adapter_module(name: str) -> str:
    """The adapter's module name (imported in a worker before it forks, without importing it here)."""
    return _package(name).ADAPTER.split(":")[0]
