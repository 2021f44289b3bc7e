"""The layout's rules (docs/architecture.md), checked on the source: imports run one way, engines stand alone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 300


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle():
    graph = _import_graph()
    edges = graph.edges()
    assert len(edges) > 40 and sum(map(len, edges.values())) > 100  # the walk found the project's modules
    assert graph.circles(edges) == []


def test_a_circle_is_found():
    """The check itself: a planted circle is reported."""
    assert _import_graph().circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_engines_never_import_the_runner():
    edges = _import_graph().edges()
    back = [f"{source} -> {target}" for source, targets in edges.items() if source.startswith("engines")
            for target in targets if target.startswith("runner")]
    assert back == []


def test_no_file_is_long():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for folder in ("runner", "engines", "scripts", "tests")
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) >= MAX_LINES]
    assert long == []


def test_every_engine_is_one_package_with_its_config_and_yaml():
    import engines
    from engines.base import EngineConfig

    names = engines.names()
    assert {"hf", "llamacpp", "ctranslate2", "vllm", "exllamav2"} <= set(names)
    for name in names:
        config = engines.config_class(name)
        assert issubclass(config, EngineConfig) and config().name == name
        assert (ROOT / "conf" / "engine" / f"{name}.yaml").is_file()
    assert engines.with_server() == ["llamacpp", "sglang", "vllm"]
    with pytest.raises(KeyError, match="known engines: ctranslate2, exllamav2, hf"):
        engines.config_class("nope")


def test_the_registry_and_configs_import_no_engine_package():
    """Composing a config (every engine's schema) must not import torch or any engine's own package."""
    code = ("import sys, engines\n"
            "from runner.config import register_configs\n"
            "register_configs()\n"
            "heavy = {'torch', 'transformers', 'vllm', 'llama_cpp', 'ctranslate2', 'exllamav2', 'bitsandbytes'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _engine_names() -> list[str]:
    import engines

    return engines.names()


@pytest.mark.parametrize("name", _engine_names())
def test_closing_an_engine_that_never_loaded_does_nothing(name):
    """A run that fails before its load (a bad path, an interrupt) still closes its engine: that must not raise
    over the real error (HF's close read the device its load sets)."""
    import engines

    engine = engines.get_engine_class(name)(engines.config_class(name)())
    engine.close()
    engine.close()
