"""A report directory from run records: report.md (seed-style tables, environment), PNG plots, results.csv.

Offline runs get the batch tables below; scenario=serving runs their own table (runner.serving.report).

    python -m runner.report outputs/multirun/2026-11-22/ [more paths or globs] [--baseline engine_name=hf]
                            [--out DIR] [--csv table.csv]

Reads records; never measures.
"""

from __future__ import annotations

import argparse
import numbers
import sys
from pathlib import Path

import pandas as pd

from runner.experiments import experiment_table, experiments, published_figures, time_split
from runner.results import RAW_SAMPLE_COLUMNS, export, labelled, latest, load_results, speedup
from runner.results import configuration  # noqa: F401  (moved to runner.results; imported from here by others)
from runner.spec_report import COLUMNS as SPEC_COLUMNS, PLOT_CAPTIONS as SPEC_CAPTIONS, paired, spec_plots, spec_section

# (column in the table, record field, decimals). Fields a record lacks are left out of the table, and so are
# the OPTIONAL ones no run has a value for.
KEY_COLUMNS = [("batch", "batch_size", 0), ("workload", "workload", None)]  # workload: runner.results.labelled
COLUMNS = KEY_COLUMNS + [
    ("prompts", "prompts", 0),
    ("in tok", "input_tokens", 0),
    ("out tok", "output_tokens", 0),
    ("batch p50 ms", "batch_latency_ms_p50", 0),
    ("TTFT p50 ms", "ttft_ms_p50", 1),
    ("TPOT p50 ms", "tpot_ms_p50", 2),
    ("out tok/s", "output_tok_s", 1),
    ("CI low", "output_tok_s_ci_low", 1),  # 95 % interval of out tok/s (runner.stats.mean_ci), and its CV
    ("CI high", "output_tok_s_ci_high", 1),
    ("CV", "output_tok_s_cv", 3),
    # MBU against the datasheet bandwidth (GPUs in runner.roofline's table) and against the copy bandwidth
    # measured on the machine (every device): which peak the figure divides by is in the column's name.
    ("MBU datasheet", "mbu_table", 2),
    ("MBU measured", "mbu_measured", 2),
    ("speed-up", "output_tok_s_speedup", 2),  # only with a baseline (runner.results.speedup)
    ("load s", "load_s", 1),
    ("weights MiB", "weights_mib", 0),
    ("host peak MiB", "host_peak_rss_mib", 0),
    ("device peak MiB", "device_peak_used_mib", 0),
    ("torch alloc MiB", "torch_peak_allocated_mib", 0),
    ("greedy agree", "greedy_agreement", 2),
    ("perplexity", "perplexity", 2),
    ("J/tok", "joules_per_output_token", 3),
]
OPTIONAL = {"mbu_table", "mbu_measured"}
LATENCY_COLUMNS = KEY_COLUMNS + [
    (f"{name} {q} ms", f"{field}_{q}", digits)
    for name, field, digits in [("TTFT", "ttft_ms", 1), ("TPOT", "tpot_ms", 2), ("ITL", "itl_ms", 2),
                                ("E2EL", "e2el_ms", 0)]
    for q in ("p50", "p90", "p99")
]
WORKLOAD = {"model_name": "model", "workload": "workload", "dataset_name": "dataset", "prompts": "prompts",
            "input_tokens": "in tok", "generation_max_new_tokens": "new tok per prompt",
            "generation_ignore_eos": "ignore EOS", "measure_warmup_batches": "warm-up batches"}
PLOT_CAPTIONS = {
    "throughput.png": "Output tokens/s against batch size.",
    "memory.png": "Peak memory against batch size (the axis says which: device NVML peak, or host RSS).",
    "latency.png": "TTFT and TPOT per request, p50 (solid), p90 (dashed), p99 (dotted); log scales.",
}
PEAKS = {"mbu_table": "the datasheet bandwidth (`peak_bandwidth_gb_s_table`)",
         "mbu_measured": "the copy bandwidth measured on the machine (`peak_bandwidth_gb_s_measured`)"}


def decode_rate_caption(rows: pd.DataFrame) -> str:
    """What decode_rate.png shows, the roofline's peak included: the records' own MBU figures decide."""
    from runner.plots import roofline_mbu

    _, field = roofline_mbu(rows[rows["status"] == "ok"])
    achieved = "Achieved decode rate, batch × 1000 / TPOT p50 (solid). "
    if field is None:
        return achieved + ("No roofline: no run has an MBU (`roofline_note` in results.csv says why: no peak "
                           "bandwidth, model shape or TPOT).")
    fallback = " where the records have it, else against the measured one" if field == "mbu_table" else ""
    return achieved + (f"Dashed: the memory-bandwidth roofline, decode tok/s ÷ MBU, i.e. the rate at which "
                       f"reading the weights and KV cache once per step takes all of {PEAKS[field]}{fallback}.")


def table(df: pd.DataFrame, columns: list[tuple[str, str, int | None]] = COLUMNS) -> pd.DataFrame:
    """One row per run: model, configuration, status, then the `columns` the records have, renamed; the
    workload and configuration labels of runner.results.labelled tell apart runs that differ in anything."""
    df = labelled(df)
    present = [(name, field, digits) for name, field, digits in columns
               if field in df and not (field in OPTIONAL and df[field].isna().all())]
    out = df[["model_name", "configuration", "status", *(f for _, f, _ in present)]].copy()
    out.columns = ["model", "configuration", "status", *(n for n, _, _ in present)]
    order = [c for c in ("model", "workload", "configuration", "batch") if c in out]
    return out.sort_values(order, kind="stable").reset_index(drop=True)


DIGITS = {name: digits for name, _, digits in COLUMNS + LATENCY_COLUMNS + SPEC_COLUMNS if digits is not None}


def cell(column: str, value) -> str:
    """A table cell: numbers rounded to the column's decimals with thousands separators, missing as '—'."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and column in DIGITS:
        return f"{value:,.{DIGITS[column]}f}"
    return str(value)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |")
    return "\n".join(lines)


def environment(df: pd.DataFrame) -> str:
    """The env_* columns as a table: each field's distinct values (several when the runs differ)."""
    rows = []
    for column in (c for c in df.columns if c.startswith("env_")):
        values = [str(v) for v in df[column].dropna().unique()]
        rows.append({"field": column.removeprefix("env_"), "value": "; ".join(values) or "—"})
    return markdown(pd.DataFrame(rows, columns=["field", "value"]))


def code_versions(runs: pd.DataFrame) -> str | None:
    """A warning when the rows were measured by more than one version of the code: resume skips a finished point
    whatever code measured it, so a sweep resumed after an upgrade mixes them."""
    if "env_git_commit" not in runs:
        return None
    counts = runs["env_git_commit"].fillna("unknown").value_counts()
    if len(counts) < 2:
        return None
    listed = ", ".join(f"`{commit}` ({n} rows)" for commit, n in counts.items())
    return (f"**Measured by {len(counts)} versions of the code:** {listed}. A sweep resumed after an upgrade keeps "
            "its finished points; compare rows of one commit (`env_git_commit`), or rerun with `resume=false`.")


def failures(df: pd.DataFrame) -> str:
    failed = df[df["status"] != "ok"]
    lines = [f"- {r.model_name} · {r.configuration} · {r.workload} · batch {r.batch_size}: **{r.status}** — "
             f"{str(r.error).strip().splitlines()[-1] if isinstance(r.error, str) else 'no error recorded'} "
             f"(`{r.run_dir}`)" for r in failed.itertuples()]
    return "\n".join(lines)


def report_markdown(df: pd.DataFrame, paths: list[str], superseded: int, baseline: str | None,
                    plots: list[Path], serving: pd.DataFrame | None = None) -> str:
    """The whole report.md for the offline rows of df (latest run per configuration, with `configuration`)
    and the serving rows (runner.serving.report); either may be empty."""
    from runner.serving.report import PLOT_CAPTION, PLOT_NAME, serving_section

    serving = serving if serving is not None else df.iloc[0:0]
    runs = pd.concat([f for f in (df, serving) if not f.empty] or [df], ignore_index=True)
    ok = runs["status"] == "ok"
    started = runs["started_at"].dropna()
    span = f", {started.min():%Y-%m-%d %H:%M} to {started.max():%Y-%m-%d %H:%M} UTC" if len(started) else ""
    parts = [
        f"# Benchmark report: {', '.join(sorted(runs['model_name'].unique()))}",
        f"{len(runs)} runs ({ok.sum()} ok, {(~ok).sum()} failed) from the records under "
        f"{', '.join(f'`{p}`' for p in paths)}{span}. Each row is the latest run of its configuration"
        + (f" ({superseded} older runs of the same configurations left out)" if superseded else "")
        + ". Made by `python -m runner.report`, which reads the records and measures nothing.",
    ]
    mixed = code_versions(runs)
    if mixed:
        parts.append(mixed)
    if not df.empty:
        parts += offline_sections(df, baseline)
    for name in experiments(df):  # offline studies (serving ones have the rate table below)
        rows = df[df["experiment"] == name]
        figures, source = published_figures(name) or (None, None)
        parts += [f"## Experiment `{name}`: output tok/s [95 % interval] by configuration and batch size",
                  markdown(experiment_table(rows, figures))]
        parts += [f"`source` columns: {source}"] if source else []
        parts.append(time_split(rows))
    if not serving.empty:
        parts.append(serving_section(serving))
    if plots:
        parts.append("## Plots (successful runs only)")
        captions = {**PLOT_CAPTIONS, **SPEC_CAPTIONS, "decode_rate.png": decode_rate_caption(df), PLOT_NAME: PLOT_CAPTION}
        parts += [f"![{p.stem}]({p.name})\n\n{captions.get(p.name, '')}" for p in plots]
    parts += ["## Environment", environment(runs), "Full precision values, one row per run: `results.csv`."]
    return "\n\n".join(parts) + "\n"


def offline_sections(df: pd.DataFrame, baseline: str | None) -> list[str]:
    ok = df["status"] == "ok"
    parts = [
        "## Workload", "`workload` = dataset[prompt slice] and new tokens per prompt (`≤` when EOS may end a "
        "request early), longer where two workloads would otherwise look alike; rows of different workloads are "
        "never compared.",
        markdown(df.loc[ok, [c for c in WORKLOAD if c in df]].drop_duplicates().rename(columns=WORKLOAD)),
        "## Results",
        "`batch p50 ms` is one `generate` call for the whole batch; TTFT/TPOT are per request; `out tok/s` = all "
        "output tokens / sum of batch latencies. `weights` = what the engine holds; `host peak` = peak RSS from "
        "model load on; `device peak` = NVML used memory, peak minus the reading before load; `torch alloc` = "
        "PyTorch's peak allocated. `greedy agree` (when the records have it) = share of identical greedy tokens "
        "against the reference (`greedy_reference` in results.csv). `MBU datasheet` / `MBU measured` (when some "
        "run has one) = decode bytes per step / TPOT mean / peak bandwidth: the datasheet's (GPUs in "
        "runner/roofline.py's table), or the copy bandwidth measured on the machine (CPUs too). Failed runs keep "
        "their row, status not `ok`, figures `—`.",
    ]
    if baseline:
        parts.append(f"`speed-up` = out tok/s divided by that of the baseline run (`{baseline}`) of the same "
                     "model, workload and batch size (`—` where the baseline did not run that workload).")
    parts += [markdown(table(df)), "## Latency percentiles (ms, per request; ITL pooled over every token gap)",
              markdown(table(df, LATENCY_COLUMNS)), *spec_section(df, markdown)]
    if (~ok).any():
        parts += ["## Failed runs", failures(df)]
    return parts


def prepare(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The report's rows: the latest run of each configuration, labelled, sorted, with the speed-up column."""
    rows = paired(labelled(latest(df)))  # speculative rows get their speed-up (runner/spec_report.py)
    rows = rows.sort_values(["model_name", "workload", "configuration", "batch_size"], kind="stable")
    rows = rows.reset_index(drop=True)
    if baseline:
        rows["output_tok_s_speedup"] = speedup(rows, "output_tok_s", baseline)
    return rows


def write_report(rows: pd.DataFrame, out: Path, paths: list[str], superseded: int = 0,
                 baseline: str | None = None, serving: pd.DataFrame | None = None) -> list[Path]:
    """report.md, results.csv and the plots of prepare()'s rows and the serving rows, written into `out`."""
    from runner.plots import write_plots  # matplotlib only when a report is written
    from runner.serving.report import serving_plots

    out.mkdir(parents=True, exist_ok=True)
    serving = serving if serving is not None else rows.iloc[0:0]
    plots = (write_plots(rows, out) + spec_plots(rows, out) if not rows.empty else []) + serving_plots(serving, out)
    report = out / "report.md"
    report.write_text(report_markdown(rows, paths, superseded, baseline, plots, serving), encoding="utf-8")
    # The records keep the raw samples and tracebacks; the report stays small enough to commit.
    runs = pd.concat([f for f in (rows, serving) if not f.empty] or [rows], ignore_index=True)
    csv = export(runs.drop(columns=[*RAW_SAMPLE_COLUMNS, "traceback"], errors="ignore"), out / "results.csv")
    return [report, csv, *plots]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories, record.json files, or globs")
    parser.add_argument("--baseline", help="runs to divide throughput by, per model and batch size, "
                                           "e.g. engine_name=hf or engine_name=hf,quantization=none")
    parser.add_argument("--out", type=Path, help="report directory (default: <first path>/report, or report/)")
    parser.add_argument("--csv", help="also write the main table as CSV here (serving runs: their table; with "
                                      "both kinds, the serving table goes beside it as <name>.serving.csv)")
    args = parser.parse_args(argv)
    df = load_results(args.paths)
    if df.empty:
        print(f"no records under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    from runner.serving.report import is_serving, latest_serving, serving_markdown, serving_table

    serving = latest_serving(df[is_serving(df)])
    offline = df[~is_serving(df)]
    try:
        rows = prepare(offline, args.baseline) if not offline.empty else offline
    except ValueError as exc:  # a baseline that matches nothing, or several runs per model and batch size
        parser.error(str(exc))
    first = Path(args.paths[0])
    out = args.out or (first / "report" if first.is_dir() else Path("report"))
    files = write_report(rows, out, args.paths, len(df) - len(rows) - len(serving), args.baseline, serving)
    csv = Path(args.csv) if args.csv else None
    if not rows.empty:
        print(markdown(table(rows)))
        if csv:
            table(rows).to_csv(csv, index=False)
            csv = csv.with_suffix(".serving.csv")
    if not serving.empty:
        print(serving_markdown(serving))
        if csv:
            serving_table(serving).to_csv(csv, index=False)
    print(f"report: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
