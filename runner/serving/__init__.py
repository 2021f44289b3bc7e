"""scenario=serving: benchmarks of an OpenAI-compatible server under load (launched here or attached to).

plan(cfg) checks and tokenizes before anything starts; execute(cfg, work, run_dir, overrides) writes the
record. Modules: backends (per-server launch and request fields), server (process lifecycle, memory),
client (streaming requests, arrival schedule and ramp), metrics (vLLM's definitions), plot (rate sweeps),
report (the serving table of `python -m runner.report`).
"""

from runner.serving.execute import execute
from runner.serving.plan import plan

__all__ = ["execute", "plan"]
