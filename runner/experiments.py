"""The report's view of an experiment (conf/experiment/<name>.yaml, `+experiment=NAME`): its study's table in
the source's layout, configurations by batch size, and where the grid's time went."""

from __future__ import annotations

import pandas as pd

TIME_FIELDS = {"model_prepare_s": "model preparation", "load_s": "engine starts (model loads)",
               "warmup_s": "warm-ups", "measured_region_s": "measured regions"}


def _number(value) -> str:
    return f"{value:,.1f}" if pd.notna(value) else "—"


def _point(row: pd.Series) -> str:
    """out tok/s [95 % interval], or the status of a point that did not finish."""
    if row["status"] != "ok":
        return str(row["status"])
    low, high = row.get("output_tok_s_ci_low"), row.get("output_tok_s_ci_high")
    interval = f" [{_number(low)}, {_number(high)}]" if pd.notna(low) and pd.notna(high) else ""
    return _number(row["output_tok_s"]) + interval


def experiment_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (runner.results.configuration), one column per batch size: output tok/s with
    its 95 % interval; a failed point shows its status. `rows`: one experiment's offline rows, labelled."""
    cells = rows.assign(point=rows.apply(_point, axis=1))
    grid = cells.pivot_table(index="configuration", columns="batch_size", values="point", aggfunc="first")
    grid = grid.reindex(columns=sorted(grid.columns))
    grid.columns = [f"batch {b:.0f}" for b in grid.columns]
    order = cells.drop_duplicates("configuration")["configuration"]  # the order the report sorts rows in
    return grid.reindex(order).fillna("—").reset_index()


def time_split(rows: pd.DataFrame) -> str:
    """Seconds summed over the experiment's points, by phase (the fields each record has), and the rest of
    the points' wall time (process starts, quality passes, writing)."""
    phases = {label: rows[field].sum() for field, label in TIME_FIELDS.items() if field in rows}
    parts = [f"{label} {seconds:,.1f} s" for label, seconds in phases.items()]
    if "point_wall_s" in rows and rows["point_wall_s"].notna().all():
        total = rows["point_wall_s"].sum()
        parts += [f"everything else {total - sum(phases.values()):,.1f} s (of {total:,.1f} s in all)"]
    return f"Time over its {len(rows)} points: " + ", ".join(parts) + "."


def experiments(df: pd.DataFrame) -> list[str]:
    """The experiment names the rows carry, in order."""
    return sorted(df["experiment"].dropna().unique()) if "experiment" in df else []
