"""The serving part of ``python -m runner.report``: one row per scenario=serving run, and the rate-sweep plot.

Offline columns (batch size, batch latency) mean nothing for a server under load, so serving records get
their own table; runner.report splits the records by ``scenario`` and calls in here. Reads records only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# (column, record field, decimals). Columns in OPTIONAL are shown only when some run has a value.
COLUMNS = [
    ("rate req/s", "serving_request_rate", None),  # the end rate of a ramp; "inf": every request at once
    ("ramp", "ramp", None),
    ("concurrency", "serving_max_concurrency", 0),
    ("completed", "completed_requests", 0),
    ("failed", "failed_requests", 0),
    ("req/s", "requests_per_s", 3),
    ("req/h", "requests_per_hour", 0),
    ("out tok/s", "output_tok_s", 1),
    ("TTFT p50 ms", "ttft_ms_p50", 1),
    ("TTFT p95 ms", "ttft_ms_p95", 1),
    ("TPOT p50 ms", "tpot_ms_p50", 2),
    ("TPOT p95 ms", "tpot_ms_p95", 2),
    ("ITL p95 ms", "itl_ms_p95", 2),
    ("E2EL p95 ms", "e2el_ms_p95", 0),
    ("goodput req/s", "goodput_requests_per_s", 3),
    ("SLOs", "slos", None),
    ("server peak MiB", "server_peak_rss_mib", 0),
    ("device peak MiB", "device_peak_used_mib", 0),
]
OPTIONAL = {"ramp", "concurrency", "device peak MiB"}
DIGITS = {name: digits for name, _, digits in COLUMNS}
SLO_FIELDS = (("TTFT", "serving_slo_ttft_ms"), ("TPOT", "serving_slo_tpot_ms"), ("E2EL", "serving_slo_e2el_ms"))
PLOT_NAME = "serving_sweep.png"
PLOT_CAPTION = ("Serving: output tokens/s against p95 E2EL, one line per configuration, each point labelled with "
                "its request rate (runner.serving.plot).")


def is_serving(df: pd.DataFrame) -> pd.Series:
    """Which rows are scenario=serving records (records older than the scenario key are offline)."""
    if "scenario" not in df:
        return pd.Series(False, index=df.index)
    return df["scenario"] == "serving"


def latest_serving(df: pd.DataFrame) -> pd.DataFrame:
    """The latest run of each serving configuration: the same run_key (a hash of the whole config, serving.*
    included) counts once. results.latest keys on the offline config groups and would fold a rate sweep."""
    if df.empty:
        return df
    keys = df["run_key"].fillna(df["run_id"]) if "run_key" in df else df["run_id"]
    return df[~keys.duplicated(keep="last").to_numpy()].reset_index(drop=True)


def _model(row: pd.Series) -> str:
    attached = row.get("server_backend") == "openai"  # the name the server was asked for, not the model group
    return row.get("server_model") if attached else row.get("model_name")


def _engine(row: pd.Series) -> str:
    if row.get("server_backend") == "openai":  # attach mode: the engine group is not what served
        return f"attached {row.get('server_url')}"
    from runner.results import configuration

    return configuration(row)


def _ramp(row: pd.Series):
    ramp = row.get("serving_ramp")
    return f"{ramp} from {row.get('serving_ramp_start_rate'):g}/s" if isinstance(ramp, str) else None


def _slos(row: pd.Series) -> str:
    set_ = [f"{name} ≤ {row[field]:g} ms" for name, field in SLO_FIELDS if pd.notna(row.get(field))]
    return ", ".join(set_) or "none"


def serving_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run, the records' values unrounded: model, engine, status, then COLUMNS."""
    rows = rows.assign(model=rows.apply(_model, axis=1), engine=rows.apply(_engine, axis=1),
                       ramp=rows.apply(_ramp, axis=1), slos=rows.apply(_slos, axis=1),
                       rate=pd.to_numeric(rows["serving_request_rate"].replace("inf", float("inf"))))
    rows = rows.sort_values(["model", "engine", "rate"], kind="stable")
    present = [(name, field) for name, field, _ in COLUMNS if field in rows
               and not (name in OPTIONAL and rows[field].isna().all())]
    out = rows[["model", "engine", "status", *(f for _, f in present)]].copy()
    out.columns = ["model", "engine", "status", *(n for n, _ in present)]
    return out.reset_index(drop=True)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    digits = DIGITS.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}" if digits is not None else f"{value:g}"
    return str(value)


def serving_markdown(rows: pd.DataFrame) -> str:
    """The serving table as markdown, numbers rounded to each column's decimals."""
    table = serving_table(rows)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(c, v) for c, v in zip(table.columns, row)) + " |")
    return "\n".join(lines)


def serving_section(rows: pd.DataFrame) -> str:
    """The report.md section: what the columns mean, the table, the failed runs."""
    parts = [
        "## Serving runs (scenario=serving)",
        "Streaming requests to an OpenAI-compatible server, vLLM benchmark_serving's definitions. `rate` is "
        "the offered load (with a ramp: the rate it ends at); `req/s`, `req/h` and `out tok/s` are completed "
        "requests and their output tokens over the measured phase's wall time; failed requests are counted and "
        "left out of every latency figure. TTFT/TPOT/E2EL per request, ITL pooled over token gaps. `goodput` = "
        "requests per second meeting every SLO listed (`—` without SLOs). `server peak` = the server's process "
        "tree RSS; `device peak` = NVML used memory during the load.",
        serving_markdown(rows),
    ]
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        parts += ["Failed serving runs:", "\n".join(
            f"- {_engine(r)} · rate {r.get('serving_request_rate')}: **{r['status']}** — "
            f"{str(r.get('error')).strip().splitlines()[-1]} (`{r.get('run_dir')}`)" for _, r in failed.iterrows())]
    return "\n\n".join(parts)


def serving_plots(rows: pd.DataFrame, out: Path) -> list[Path]:
    """The rate-sweep plot (throughput vs p95 E2EL) of the successful serving runs; [] if there are none."""
    from runner.serving.plot import plot_rate_sweep

    if rows.empty or not (rows["status"] == "ok").any():
        return []
    return [plot_rate_sweep(rows, out / PLOT_NAME)]
