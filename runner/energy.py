"""Energy of the measured region: NVML's total-energy counter on NVIDIA GPUs, else Intel RAPL on the host.

NVML: ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded; Volta and newer),
summed over the visible GPUs, read right before and right after the measured batches. RAPL:
``/sys/class/powercap/intel-rapl:N/energy_uj`` of each CPU package (microjoules, wrapping at
``max_energy_range_uj``), when readable (usually root only). Where neither works the fields are empty and
``energy_note`` says why; never an estimate.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Callable, Optional

from runner.memory import nvml

RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"  # packages only (sub-zones have a second colon)


def _rapl_zones() -> list[Path]:
    zones = [Path(z) for z in sorted(glob.glob(RAPL_GLOB)) if z.count(":") == 1]
    readable = []
    for zone in zones:
        try:
            int((zone / "energy_uj").read_text())
            readable.append(zone)
        except (OSError, ValueError):
            pass
    return readable


class EnergyMeter:
    """``start()`` before the measured region, ``stop()`` after it; then ``fields(output_tokens, seconds)``."""

    def __init__(self) -> None:
        self._read: Optional[Callable[[], list[int]]] = None
        self._wrap: list[int] = []
        self.source: Optional[str] = None
        self.note: Optional[str] = None
        self._start: list[int] = []
        self._stop: list[int] = []
        pynvml, handles, why = nvml()
        if handles:
            try:
                for h in handles:
                    pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
                self._read = lambda: [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) * 1000 for h in handles]  # µJ
                self._wrap = [0] * len(handles)
                self.source = f"NVML total energy, {len(handles)} GPU(s)"
                return
            except Exception as exc:  # pre-Volta GPU, or the counter is not exposed
                why = f"NVML energy counter unavailable ({type(exc).__name__})"
        zones = _rapl_zones()
        if zones:
            self._read = lambda: [int((z / "energy_uj").read_text()) for z in zones]
            self._wrap = [int((z / "max_energy_range_uj").read_text()) for z in zones]
            self.source = f"RAPL, {len(zones)} CPU package(s) (host energy, not the accelerator)"
            return
        self.note = f"{why}; CPU: RAPL (/sys/class/powercap) absent or not readable"
        if handles:
            self.note = why

    def start(self) -> None:
        self._start = self._read() if self._read else []

    def stop(self) -> None:
        self._stop = self._read() if self._read else []

    def joules(self) -> Optional[float]:
        if not self._start or not self._stop:
            return None
        total = 0
        for before, after, wrap in zip(self._start, self._stop, self._wrap):
            total += after - before if after >= before else after + wrap - before  # RAPL wrapped once
        return total / 1e6

    def fields(self, output_tokens: int, seconds: float) -> dict[str, Any]:
        return energy_fields(self.joules(), output_tokens, seconds, self.source, self.note)


def energy_fields(joules: Optional[float], output_tokens: int, seconds: float, source: Optional[str],
                  note: Optional[str]) -> dict[str, Any]:
    """Energy, energy per output token and mean power; empty with the reason when not measured."""
    if joules is None:
        return {"energy_j": None, "joules_per_output_token": None, "avg_power_w": None, "energy_source": None,
                "energy_note": note or "not measured"}
    return {
        "energy_j": joules,
        "joules_per_output_token": joules / output_tokens if output_tokens else None,
        "avg_power_w": joules / seconds if seconds > 0 else None,
        "energy_source": source,
        "energy_note": None,
    }
