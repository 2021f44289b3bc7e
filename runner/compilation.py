"""torch.compile's work, counted around the warm-up and the timed region (engines that compile in this process).

A graph compiled inside the timed region means the warm-up missed a shape: its seconds of compilation would
be timed as generation. The record says how much compiling the warm-up did (``compile_s``) and how many graphs
were compiled while timing (``recompiles_measured``, which should be 0).
"""

from __future__ import annotations

import sys
from typing import Any, Optional


def snapshot() -> Optional[tuple[int, float]]:
    """(graphs compiled so far, seconds spent compiling) in this process; None if torch.compile never loaded."""
    if "torch._dynamo" not in sys.modules:
        return None
    try:
        from torch._dynamo.utils import compilation_time_metrics, counters
    except ImportError:
        return None
    return int(counters["stats"].get("unique_graphs", 0)), float(sum(compilation_time_metrics.get(
        "_compile.compile_inner", ())))


def fields(before_warmup: Optional[tuple[int, float]], before_timing: Optional[tuple[int, float]],
           after_timing: Optional[tuple[int, float]]) -> dict[str, Any]:
    """compile_s and compiled graphs of the load and warm-up; graphs compiled while timing, with a note if any."""
    zero = (0, 0.0)
    start, mid, end = before_warmup or zero, before_timing or zero, after_timing or zero
    recompiles = end[0] - mid[0]
    return {
        "compile_s": mid[1] - start[1] if before_timing else None,
        "compiled_graphs": mid[0] - start[0] if before_timing else None,
        "recompiles_measured": recompiles if after_timing else None,
        "compile_note": (f"{recompiles} graph(s) compiled inside the timed region ({end[1] - mid[1]:.1f} s): the "
                         "warm-up missed a shape, and these timings include compiling" if recompiles else None),
    }
