"""An engine as the runner holds it across points: what it has loaded, whether it has run, its prompt scores.

A fresh process makes one per point. A worker (isolation=worker) keeps one across the points of a grid, so a
point after the first finds the model loaded (``load`` of the same path does nothing) and ``warm`` set: the
measurement then keeps the allocator's cache and the device baseline (runner.measure.measure_run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engines.base import Engine


@dataclass(eq=False)
class EngineSession:
    engine: Engine
    loaded_path: Optional[str] = None
    warm: bool = False  # an earlier point ran this engine to completion
    # NVML's device memory in use before this engine was loaded: a warm engine's points count from it too
    device_baseline_bytes: Optional[int] = None
    _logprobs: dict[tuple, list[list[float]]] = field(default_factory=dict)

    def load(self, model_path: str) -> None:
        """Load ``model_path`` unless it is the one loaded."""
        if self.loaded_path != model_path:
            self.engine.load(model_path)
            self.loaded_path = model_path
            self._logprobs.clear()
            self.warm = False

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """The same model scores the same prompts the same way at every point: scored once per session."""
        key = tuple(map(tuple, prompts))
        if key not in self._logprobs:
            self._logprobs[key] = self.engine.prompt_logprobs(prompts)
        return self._logprobs[key]

    def unload(self) -> None:
        """Close the engine's model, if one is loaded, and hold a fresh engine of the same config: its device
        memory is free until the next load (a worker makes room this way for a reference beside an engine that
        pre-allocates, such as vLLM)."""
        if self.loaded_path is None:
            return
        self.close()
        self.engine = type(self.engine)(self.engine.config)
        self._logprobs.clear()
        self.warm = False

    def close(self) -> None:
        self.engine.close()
        self.loaded_path = None
