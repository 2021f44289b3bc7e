"""The report's view of an experiment (conf/experiment/<name>.yaml, `+experiment=NAME`): its study's table in
the source's layout, configurations by batch size, the source's published figures beside ours where the preset
has them (conf/experiment/<name>.published.csv), and where the grid's time went."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd

PRESETS_DIR = Path(__file__).resolve().parent.parent / "conf" / "experiment"

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


def published_figures(name: str) -> Optional[tuple[pd.DataFrame, str]]:
    """The preset's published figures (engine option, batch_size, output_tok_s, source_label) and the file's
    comment saying where they come from and how far they compare; None when the preset has none."""
    path = PRESETS_DIR / f"{name}.published.csv"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    source = " ".join(line.lstrip("# ").strip() for line in lines if line.startswith("#"))
    return pd.read_csv(path, comment="#"), source


def _engine_option(overrides) -> Optional[str]:
    """The conf/engine option a point ran (`engine=vllm_gptq` in its overrides), which the published rows name."""
    found = re.search(r"(?:^|\s)engine=(\S+)", overrides) if isinstance(overrides, str) else None
    return found.group(1) if found else None


def experiment_table(rows: pd.DataFrame, published: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per configuration (runner.results.configuration), one column per batch size: output tok/s with
    its 95 % interval; a failed point shows its status. `rows`: one experiment's offline rows, labelled.
    With `published` (published_figures), a column per published batch size holds the source's figure for the
    engine option the configuration ran, with the source's row name."""
    cells = rows.assign(point=rows.apply(_point, axis=1))
    grid = cells.pivot_table(index="configuration", columns="batch_size", values="point", aggfunc="first")
    grid = grid.reindex(columns=sorted(grid.columns))
    grid.columns = [f"batch {b:.0f}" for b in grid.columns]
    order = cells.drop_duplicates("configuration")["configuration"]  # the order the report sorts rows in
    grid = grid.reindex(order)
    if published is not None and "overrides" in cells:
        options = cells.assign(option=cells["overrides"].map(_engine_option)).groupby("configuration")["option"].first()
        for batch, figures in published.groupby("batch_size"):
            by_option = {r.engine: f"{r.output_tok_s:,g} ({r.source_label})" for r in figures.itertuples()}
            grid[f"source, batch {batch}"] = [by_option.get(options.get(c)) for c in grid.index]
    return grid.fillna("—").reset_index()


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
