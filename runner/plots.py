"""PNG plots of successful runs: one line per configuration and workload (colour: configuration; marker:
workload), batch size on a log2 axis, one panel per model.

Reads a DataFrame of records (runner.results); never measures. Figures are built with matplotlib's
object API (Figure, no pyplot) so the Agg renderer draws them without a display and no global state leaks
between plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

PERCENTILES = [("p50", "-"), ("p90", "--"), ("p99", ":")]
MARKERS = "osD^vP*Xph"


@dataclass
class Palette:
    """The same in every plot of a report: a colour per configuration, a marker per workload."""
    colors: dict[str, tuple]
    markers: dict[str, str]


def palette(df: pd.DataFrame) -> Palette:
    """Colours (tab10, then tab20 beyond ten) and markers of the `configuration` and `workload` labels in df."""
    from matplotlib import colormaps

    configurations, workloads = sorted(df["configuration"].unique()), sorted(df["workload"].unique())
    cmap = colormaps["tab10" if len(configurations) <= 10 else "tab20"]
    return Palette({name: cmap(i % cmap.N) for i, name in enumerate(configurations)},
                   {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(workloads)})


def series(df: pd.DataFrame):
    """The lines of a panel: ((configuration, workload), runs by batch size). Runs of different workloads at one
    batch size measured different work, so they are never one line (a vertical stroke between them)."""
    return df.sort_values("batch_size").groupby(["configuration", "workload"], sort=True)


def _batch_axis(ax, batch_sizes) -> None:
    """Log2 x axis labelled with the batch sizes that ran (1, 2, 4 … not 2^0, 2^1)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(batch_sizes))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size (log2 scale)")
    ax.grid(True, which="major", alpha=0.3)


def _panels(df: pd.DataFrame, rows: int = 1, height: float = 4.2) -> tuple[Figure, list, list]:
    """A figure with one column of axes per model; returns it, the models and the axes grid [row][model]."""
    models = sorted(df["model_name"].unique())
    fig = Figure(figsize=(6.4 * len(models), height * rows), layout="constrained")
    axes = fig.subplots(rows, len(models), squeeze=False)
    return fig, models, axes


def _lines(ax, group: pd.DataFrame, y: Callable[[pd.DataFrame], pd.Series], palette: Palette, **style) -> None:
    for (name, work), runs in series(group):
        ax.plot(runs["batch_size"], y(runs), color=palette.colors[name], label=f"{name} · {work}",
                **{"marker": palette.markers[work], **style})


def _legend(fig: Figure, df: pd.DataFrame, palette: Palette, extra: list[Line2D] = ()) -> None:
    """One legend for the whole figure, beside the panels: colours mean the same configuration in each, and
    markers the same workload (listed when there are several)."""
    several = len(palette.markers) > 1  # then markers are workloads, and colours go without one
    handles = [Line2D([], [], color=color, marker=None if several else "o", label=c)
               for c, color in palette.colors.items()]
    if several:
        handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=w) for w, m in palette.markers.items()]
    fig.legend(handles=[*handles, *extra], loc="outside right upper", title="configuration", fontsize="small")


def per_batch_plot(df: pd.DataFrame, palette: Palette, path: Path, title: str, ylabel: str,
                   y: Callable[[pd.DataFrame], pd.Series], extra: Callable | None = None,
                   log_y: bool = False, note: str = "") -> Path:
    """per_batch_figure, saved as `path`."""
    fig = per_batch_figure(df, palette, title, ylabel, y, extra, log_y, note)
    fig.savefig(path, dpi=110)
    return path


def per_batch_figure(df: pd.DataFrame, palette: Palette, title: str, ylabel: str,
                     y: Callable[[pd.DataFrame], pd.Series], extra: Callable | None = None,
                     log_y: bool = False, note: str = "") -> Figure:
    """One panel per model: y(runs) against batch size, one line per configuration and workload; `note` above."""
    fig, models, axes = _panels(df)
    if note:
        fig.suptitle(note, fontsize="medium")
    for ax, model in zip(axes[0], models):
        group = df[df["model_name"] == model]
        _lines(ax, group, y, palette)
        if extra:
            extra(ax, group, palette)
        _batch_axis(ax, group["batch_size"])
        if log_y:  # engines differ by 10-100x; on a linear axis the slow ones lie flat on zero
            ax.set_yscale("log")
            ax.set_ylabel(f"{ylabel}, log scale")
        else:
            ax.set_ylim(bottom=0)
            ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {model}")
    _legend(fig, df, palette)
    return fig


def memory_column(df: pd.DataFrame) -> tuple[str, str]:
    """Device peak (NVML) where the runs have it, else the host's peak RSS; with the axis label saying which."""
    if "device_peak_used_mib" in df and df["device_peak_used_mib"].notna().any():
        return "device_peak_used_mib", "device peak used, NVML (MiB)"
    return "host_peak_rss_mib", "host peak RSS (MiB)"


def roofline_mbu(df: pd.DataFrame) -> tuple[pd.Series, Optional[str]]:
    """Each run's MBU against the datasheet bandwidth where it has one, else against the bandwidth measured on
    the machine (CPUs have no datasheet entry), and which of the two fields leads: None when no run has either."""
    empty = pd.Series(float("nan"), index=df.index)
    table, measured = (df[f] if f in df else empty for f in ("mbu_table", "mbu_measured"))
    field = "mbu_table" if table.notna().any() else "mbu_measured" if measured.notna().any() else None
    return table.fillna(measured), field


def add_roofline(ax, group: pd.DataFrame, palette: Palette) -> None:
    """The memory-bandwidth roofline of each line, dashed in its colour: the decode rate at which reading the
    weights and the KV cache once per step takes the peak bandwidth, i.e. the achieved decode rate divided by its
    MBU (runner.roofline; roofline_mbu says which peak). Nothing is drawn where the records have no MBU."""
    if "decode_tok_s" not in group:
        return
    group = group.assign(roofline_tok_s=group["decode_tok_s"] / roofline_mbu(group)[0])
    group = group.dropna(subset=["roofline_tok_s"])
    _lines(ax, group, lambda runs: runs["roofline_tok_s"], palette, linestyle="--", marker=None, alpha=0.7)


def latency_percentiles(df: pd.DataFrame, palette: Palette, path: Path) -> Path:
    """TTFT (top row) and TPOT (bottom row) p50/p90/p99 per configuration against batch size."""
    fig, models, axes = _panels(df, rows=2, height=4.0)
    metrics = [("ttft_ms", "TTFT (ms)", "time to first token"), ("tpot_ms", "TPOT (ms)", "time per output token")]
    for row, (metric, ylabel, name) in enumerate(metrics):
        for ax, model in zip(axes[row], models):
            group = df[df["model_name"] == model]
            for q, linestyle in PERCENTILES:  # markers on p50 only: the tails are context, not the point
                _lines(ax, group, lambda runs: runs[f"{metric}_{q}"], palette, linestyle=linestyle,
                       **({} if q == "p50" else {"marker": None, "alpha": 0.6}))
            _batch_axis(ax, group["batch_size"])
            ax.set_yscale("log")  # engines differ by 10-100x; a linear axis flattens the fast ones
            ax.set_ylabel(f"{ylabel}, log scale")
            ax.set_title(f"{name} p50/p90/p99: {model}")
    _legend(fig, df, palette, [Line2D([], [], color="grey", linestyle=s, label=q) for q, s in PERCENTILES])
    fig.savefig(path, dpi=110)
    return path


def write_plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """Every plot of the report for the successful runs in df (with runner.results.labelled's `configuration`
    and `workload` columns); [] if none."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return []
    colours = palette(ok)
    memory, memory_label = memory_column(ok)
    peak = {"mbu_table": "datasheet", "mbu_measured": "measured"}.get(roofline_mbu(ok)[1])
    return [
        per_batch_plot(ok, colours, out / "throughput.png", "output throughput", "output tokens/s",
                       lambda runs: runs["output_tok_s"], log_y=True),
        per_batch_plot(ok, colours, out / "memory.png", "peak memory", memory_label,
                       lambda runs: runs[memory]),
        latency_percentiles(ok, colours, out / "latency.png"),
        per_batch_plot(ok, colours, out / "decode_rate.png", "achieved decode rate",
                       "batch × 1000 / TPOT p50 (tok/s)",
                       lambda runs: runs["batch_size"] * 1000.0 / runs["tpot_ms_p50"], extra=add_roofline,
                       log_y=True, note=f"solid: achieved; dashed: {peak} bandwidth roofline" if peak else ""),
    ]
