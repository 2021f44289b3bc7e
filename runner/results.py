"""Load run records into pandas: one row per run, flat columns with units in their names."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from runner.records import RECORD_NAME

PathLike = Union[str, os.PathLike]


def record_paths(paths_or_globs: Union[PathLike, Iterable[PathLike]]) -> list[Path]:
    """Every record.json under the given directories, files or glob patterns, sorted, without duplicates."""
    if isinstance(paths_or_globs, (str, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    found: set[Path] = set()
    for item in paths_or_globs:
        for match in glob.glob(os.path.expanduser(str(item)), recursive=True) or [str(item)]:
            path = Path(match)
            if path.is_dir():
                found.update(path.rglob(RECORD_NAME))
            elif path.name == RECORD_NAME and path.is_file():
                found.add(path)
    return sorted(found)


def load_results(paths_or_globs: Union[PathLike, Iterable[PathLike]] = "outputs/") -> pd.DataFrame:
    """A DataFrame of every run record found, one row per run (empty if there are none)."""
    rows = []
    for path in record_paths(paths_or_globs):
        with open(path, encoding="utf-8") as f:
            rows.append(json.load(f))
    df = pd.DataFrame(rows)
    if "started_at" in df:
        df["started_at"] = pd.to_datetime(df["started_at"])
        df = df.sort_values("started_at", kind="stable").reset_index(drop=True)
    return df


# Prefixes of the resolved config's columns (runner.records.flatten of the config groups), plus batch_size.
CONFIG_PREFIXES = ("engine_", "model_", "dataset_", "generation_", "measure_")
# Columns under those prefixes that describe what happened on one run, not what was asked for: the first run
# of a configuration converts the model (model_prepare_s > 0, no cache hit) and later ones do not.
RUN_OUTCOME_COLUMNS = {"model_prepare_s", "model_cache_hit", "model_path", "engine_streams_tokens"}
# Raw per-batch and per-request samples: lists of dicts, too large for a summary table.
RAW_SAMPLE_COLUMNS = ["batch_samples", "request_samples"]


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration: the resolved config, never run_id/run_dir/started_at/overrides."""
    return [c for c in df.columns
            if (c.startswith(CONFIG_PREFIXES) or c == "batch_size") and c not in RUN_OUTCOME_COLUMNS]


def _encode_nested(df: pd.DataFrame) -> pd.DataFrame:
    """Lists and dicts as JSON text, so that the frame can be hashed, grouped and written to Parquet."""
    out = df.copy()
    for column in out.columns[out.dtypes == object]:
        if out[column].map(lambda v: isinstance(v, (list, dict))).any():
            out[column] = out[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return out


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The latest run of each configuration (config columns + batch_size equal), whatever its status.

    A failed rerun therefore replaces an older successful run; use `latest(df[df.status == "ok"])` for the
    latest successful one. Rows keep load_results' order (by started_at).
    """
    if df.empty:
        return df
    keys = _encode_nested(df[config_columns(df)])
    keep = ~keys.duplicated(keep="last")  # NaN equals NaN here: engines without a setting still match
    return df[keep.to_numpy()].reset_index(drop=True)


def compare(df: pd.DataFrame, metric: str, index: str = "batch_size") -> pd.DataFrame:
    """`metric` as a pivot: one row per `index` value, one column per configuration (runner.report.configuration).

    When the frame holds several models the columns are (model_name, configuration) pairs. When the records
    carry a confidence interval for the metric (`<metric>_ci_low` and `<metric>_ci_high`: runner.stats.mean_ci),
    those come too: the columns are then (value name, configuration...) with the value names metric, *_ci_low and
    *_ci_high. Each cell is one run: repeated runs of a configuration raise ValueError (use latest(df)).
    """
    from runner.report import configuration  # report imports this module; import here to avoid a cycle

    values = [metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in df]
    if len(values) == 2:  # half an interval is not an interval
        values = [metric]
    df = df.assign(configuration=df.apply(configuration, axis=1) if len(df) else [])
    columns = ["model_name", "configuration"] if df["model_name"].nunique() > 1 else ["configuration"]
    repeated = df.duplicated([index, *columns], keep=False)
    if repeated.any():
        raise ValueError(f"several runs for {df.loc[repeated, [index, *columns]].drop_duplicates().values.tolist()}"
                         "; pick one per configuration first, e.g. compare(latest(df), ...)")
    table = df.pivot(index=index, columns=columns, values=values if len(values) > 1 else metric)
    return table.dropna(axis=1, how="all")  # failed runs: configurations with no value at all


def select(df: pd.DataFrame, query: str) -> pd.Series:
    """Rows matching a query like "engine=hf" (= "engine_name=hf") or "engine=hf,quantization=none" (every term
    holds)."""
    mask = pd.Series(True, index=df.index)
    for term in query.split(","):
        key, sep, value = (part.strip() for part in term.partition("="))
        if key in ("engine", "model", "dataset"):  # the command line's group names: engine=hf
            key = f"{key}_name"
        if not sep or key not in df:
            raise ValueError(f"baseline term {term!r}: expected column=value with a column of the records "
                             f"(e.g. engine_name=hf)")
        column = df[key]
        if pd.api.types.is_bool_dtype(column):
            mask &= column.astype(str).str.lower() == value.lower()
        elif pd.api.types.is_numeric_dtype(column):
            mask &= column == float(value)
        else:
            mask &= column.astype(str) == value
    return mask


def speedup(df: pd.DataFrame, metric: str, baseline: str) -> pd.Series:
    """Each row's `metric` divided by the baseline row's with the same model and batch size (NaN without one).

    `baseline` selects the baseline rows, e.g. "engine_name=hf" (see select()); it must pick one run per model
    and batch size, else ValueError names the candidates. For a throughput the ratio is the speed-up; for a
    latency, below 1 is faster. The baseline rows themselves get exactly 1.0.
    """
    from runner.report import configuration

    keys = ["model_name", "batch_size"]
    base = df[select(df, baseline) & (df["status"] == "ok")]
    if base.empty:
        raise ValueError(f"no successful run matches baseline {baseline!r}")
    repeated = base.duplicated(keys, keep=False)
    if repeated.any():
        names = sorted(set(base[repeated].apply(configuration, axis=1)))
        raise ValueError(f"baseline {baseline!r} matches several runs per model and batch size ({', '.join(names)});"
                         " add a term, e.g. engine_name=hf,quantization=none, or use latest(df)")
    reference = df[keys].merge(base[[*keys, metric]], on=keys, how="left")[metric].to_numpy()
    return (df[metric] / reference).rename(f"{metric}_speedup")


def export(df: pd.DataFrame, path: PathLike) -> Path:
    """Write the frame as CSV or Parquet, by the file's extension; list/dict columns become JSON text."""
    path = Path(path)
    out = _encode_nested(df)
    if path.suffix == ".csv":
        out.to_csv(path, index=False)
    elif path.suffix in (".parquet", ".pq"):
        out.to_parquet(path, index=False)
    else:
        raise ValueError(f"{path}: export writes .csv or .parquet")
    return path
