"""The seed-style table from run records: one row per configuration and batch size. Reads; never measures.

    python -m runner.report outputs/multirun/2026-11-22/ [more paths or globs] [--csv results.csv]
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from runner.results import load_results

# (column in the table, record field, decimals)
COLUMNS = [
    ("batch", "batch_size", 0),
    ("prompts", "prompts", 0),
    ("in tok", "input_tokens", 0),
    ("out tok", "output_tokens", 0),
    ("batch p50 ms", "batch_latency_ms_p50", 0),
    ("TTFT p50 ms", "ttft_ms_p50", 1),
    ("TPOT p50 ms", "tpot_ms_p50", 2),
    ("out tok/s", "output_tok_s", 1),
    ("load s", "load_s", 1),
    ("weights MiB", "weights_mib", 0),
    ("host peak MiB", "host_peak_rss_mib", 0),
    ("device peak MiB", "device_peak_used_mib", 0),
    ("torch alloc MiB", "torch_peak_allocated_mib", 0),
    ("greedy agree", "greedy_agreement", 2),
]


def configuration(row: pd.Series) -> str:
    """A short label of what ran: engine plus the settings that change its numbers."""
    parts = [row.get("engine_name"), row.get("dtype")]
    for key in ("quantization", "engine_quant_type"):
        value = row.get(key)
        if isinstance(value, str) and value not in ("none", ""):
            parts.append(value)
    if row.get("batching") == "sequential":
        parts.append("sequential")
    return " ".join(str(p) for p in parts if isinstance(p, str) and p)


def table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(configuration=df.apply(configuration, axis=1))
    present = [(name, field, digits) for name, field, digits in COLUMNS if field in df]
    out = df[["model_name", "configuration", "status", *(f for _, f, _ in present)]].copy()
    out.columns = ["model", "configuration", "status", *(n for n, _, _ in present)]
    return out.sort_values(["model", "configuration", "batch"], kind="stable").reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    digits = {name: d for name, _, d in COLUMNS}

    def cell(column: str, value) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "—"
        if isinstance(value, (int, float)) and column in digits:
            return f"{value:,.{digits[column]}f}"
        return str(value)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in df.columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories, record.json files, or globs")
    parser.add_argument("--csv", help="also write the table as CSV here")
    args = parser.parse_args(argv)
    df = load_results(args.paths)
    if df.empty:
        print(f"no records under {' '.join(args.paths)}", file=sys.stderr)
        return 1
    result = table(df)
    print(markdown(result))
    if args.csv:
        result.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
