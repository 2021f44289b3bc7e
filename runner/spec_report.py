"""The report's speculative-decoding section: every speculative row paired with the same point without
speculation (the same engine config but ``engine.speculative.*``, model, prompts, generation settings and batch
size), its speed-up, acceptance and greedy exactness by method and batch size; and two plots.

Reads records (runner.results); never measures.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner.results import identity_columns, keys
from runner.stats import ratio_of_means_ci

SPEC = "engine_speculative_"
PLOT_CAPTIONS = {
    "spec_speedup.png": "Speculative decoding: output tok/s over the same point without speculation (1 = no gain, "
                        "dotted), against batch size.",
    "spec_acceptance.png": "Speculative decoding: accepted / drafted tokens against batch size.",
}
# (column, record field, decimals)
COLUMNS = [("method", "engine_speculative_method", None), ("k", "engine_speculative_num_tokens", 0),
           ("draft", "engine_speculative_draft", None), ("batch", "batch_size", 0), ("workload", "workload", None),
           ("out tok/s", "output_tok_s", 1), ("without spec", "spec_baseline_tok_s", 1),
           ("speed-up", "spec_speedup", 2), ("speed-up low", "spec_speedup_ci_low", 2), ("speed-up high", "spec_speedup_ci_high", 2),
           ("acceptance", "spec_acceptance_rate", 3), ("accepted/step", "spec_accepted_tokens_per_step_mean", 2),
           ("steps", "spec_verify_steps", 0), ("drafted", "spec_drafted_tokens", 0),
           ("accepted", "spec_accepted_tokens", 0), ("exact", "spec_greedy_agreement", 2)]


def speculative_rows(df: pd.DataFrame) -> pd.Series:
    """Rows that ran with speculation (engines without the option have no value: not speculative)."""
    if f"{SPEC}method" not in df:
        return pd.Series(False, index=df.index)
    return df[f"{SPEC}method"].fillna("none") != "none"


def paired(rows: pd.DataFrame) -> pd.DataFrame:
    """rows with, on every speculative row whose baseline ran: spec_baseline_tok_s, spec_speedup (out tok/s over
    the baseline's) and its 95 % interval (bootstrap of both rows' per-repetition tok/s; needs >= 2 each).
    `rows`: one run per configuration (runner.results.latest), so a point has at most one baseline."""
    out = rows.assign(spec_baseline_tok_s=float("nan"), spec_speedup=float("nan"),
                      spec_speedup_ci_low=float("nan"), spec_speedup_ci_high=float("nan"))
    spec = speculative_rows(rows)
    if not spec.any():
        return out
    point = keys(rows, [c for c in identity_columns(rows) if not c.startswith(SPEC)])
    baselines = rows.index[~spec & (rows["status"] == "ok")]
    baseline_of = dict(zip(point[baselines], baselines))
    for i in rows.index[spec & (rows["status"] == "ok")]:
        j = baseline_of.get(point[i])
        if j is None:
            continue
        mine, theirs = rows.at[i, "output_tok_s"], rows.at[j, "output_tok_s"]
        ci = ratio_of_means_ci(_samples(rows.at[i, "output_tok_s_samples"]), _samples(rows.at[j, "output_tok_s_samples"]))
        out.loc[i, ["spec_baseline_tok_s", "spec_speedup"]] = [theirs, mine / theirs]
        if ci:
            out.loc[i, ["spec_speedup_ci_low", "spec_speedup_ci_high"]] = list(ci)
    return out


def _samples(value) -> list[float]:
    return list(value) if isinstance(value, (list, tuple)) else []


def spec_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The section's table: one row per speculative run, sorted by model, engine, method and batch size."""
    spec = rows[speculative_rows(rows)]
    present = [(name, field) for name, field, _ in COLUMNS if field in spec]
    table = spec[["model_name", "configuration", "status", *(f for _, f in present)]].copy()
    table.columns = ["model", "configuration", "status", *(n for n, _ in present)]
    if "draft" in table:  # a sweep names its draft once; only method=draft rows use it
        table["draft"] = table["draft"].where(table["method"] == "draft")
    inexact = table["exact"].lt(1.0) if "exact" in table else pd.Series(False, index=table.index)
    table["flag"] = inexact.map({True: "NOT EXACT", False: ""})
    order = [c for c in ("model", "configuration", "workload", "batch") if c in table]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def spec_section(rows: pd.DataFrame, markdown) -> list[str]:
    """The report's markdown parts (empty when no row ran speculation); `markdown` renders a table."""
    if not speculative_rows(rows).any():
        return []
    return ["## Speculative decoding: acceptance and speed-up by method and batch size",
            "Each speculative row is paired with the same point without speculation (same engine settings but "
            "`engine.speculative.*`, model, prompts, generation and batch size): `without spec` is its out tok/s, "
            "`speed-up` the ratio (95 % interval: bootstrap over both rows' repetitions, `—` below 2 each; `—` "
            "throughout when that point did not run). `acceptance` = accepted / drafted tokens; `accepted/step` = "
            "accepted tokens per verification step (the raw distribution: `spec_accepted_tokens_per_step_hist` in "
            "results.csv); counts from the engine's own counters (`spec_counts_source`). `exact` = greedy agreement "
            "with the same engine without speculation; below 1.00 is flagged NOT EXACT.",
            markdown(spec_table(rows))]


def spec_plots(rows: pd.DataFrame, out: Path) -> list[Path]:
    """spec_speedup.png and spec_acceptance.png for the successful speculative rows ([] without any)."""
    from runner.plots import palette, per_batch_plot

    spec = rows[speculative_rows(rows) & (rows["status"] == "ok")]
    if spec.empty:
        return []
    colours, paths = palette(spec), []
    speedups = spec.dropna(subset=["spec_speedup"])
    if not speedups.empty:
        paths.append(per_batch_plot(speedups, colours, out / "spec_speedup.png", "speculative speed-up",
                                    "out tok/s ÷ same point without speculation", lambda r: r["spec_speedup"],
                                    extra=lambda ax, group, _: ax.axhline(1.0, color="grey", linestyle=":")))
    accepted = spec.dropna(subset=["spec_acceptance_rate"])
    if not accepted.empty:
        paths.append(per_batch_plot(accepted, colours, out / "spec_acceptance.png", "speculative acceptance",
                                    "accepted / drafted tokens", lambda r: r["spec_acceptance_rate"]))
    return paths
