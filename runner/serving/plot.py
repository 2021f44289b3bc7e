"""Rate sweeps from serving records: throughput against tail latency, one line per configuration.

    from runner.results import load_results
    from runner.serving.plot import plot_rate_sweep
    plot_rate_sweep(load_results("outputs/multirun/2026-11-22/06-30-00"), "sweep.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import pandas as pd

# What tells one sweep line from another (the request rate is the point along the line).
LINE_KEYS = ("engine_name", "model_name", "server_backend", "serving_max_concurrency", "serving_burstiness",
             "serving_ramp")  # a ramp's request_rate is where it ends: its own line, not a point of a sweep


def rate_sweep_table(df: pd.DataFrame, latency: str = "e2el_ms_p95") -> pd.DataFrame:
    """The successful serving runs, one row per point: line label, rate, throughputs, the latency column."""
    runs = df[(df.get("scenario") == "serving") & (df["status"] == "ok")].copy()
    keys = [k for k in LINE_KEYS if k in runs]
    labels = runs[keys].apply(lambda column: column.map(str))  # astype(str) keeps NaN in pandas' string dtype
    runs["line"] = labels.agg(" · ".join, axis=1) if keys else "serving"
    runs["rate"] = pd.to_numeric(runs["serving_request_rate"].replace("inf", float("inf")))
    columns = ["line", "rate", "requests_per_s", "output_tok_s", latency, "failed_requests"]
    return runs[columns].sort_values(["line", "rate"]).reset_index(drop=True)


def plot_rate_sweep(df: pd.DataFrame, out: Union[str, Path], latency: str = "e2el_ms_p95",
                    throughput: str = "output_tok_s") -> Path:
    """Throughput (x) against ``latency`` (y) per line, each point labelled with its request rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rate_sweep_table(df, latency)
    if table.empty:
        raise ValueError("no successful scenario=serving runs in these records")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for line, points in table.groupby("line", sort=False):
        ax.plot(points[throughput], points[latency], marker="o", label=line)
        for _, point in points.iterrows():
            ax.annotate(f"{point['rate']:g}/s", (point[throughput], point[latency]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(throughput.replace("_", " "))
    ax.set_ylabel(latency.replace("_", " "))
    ax.set_title("serving: throughput vs latency per request rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
