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
    """A DataFrame of every run record found, one row per run (empty if there are none), with the
    `workload` and `configuration` labels of labelled()."""
    rows = []
    for path in record_paths(paths_or_globs):
        with open(path, encoding="utf-8") as f:
            rows.append(json.load(f))
    df = pd.DataFrame(rows)
    if "started_at" in df:
        df["started_at"] = pd.to_datetime(df["started_at"])
        df = df.sort_values("started_at", kind="stable").reset_index(drop=True)
    return labelled(df)


# Prefixes of the resolved config's columns (runner.records.flatten of the config groups), plus batch_size.
CONFIG_PREFIXES = ("engine_", "model_", "dataset_", "generation_", "measure_")
# Columns under those prefixes that describe what happened on one run, not what was asked for: the first run
# of a configuration converts the model (model_prepare_s > 0, no cache hit) and later ones do not.
RUN_OUTCOME_COLUMNS = {"model_prepare_s", "model_cache_hit", "model_path", "engine_streams_tokens", "engine_reused"}
# Raw per-batch and per-request samples: lists of dicts, too large for a summary table.
RAW_SAMPLE_COLUMNS = ["batch_samples", "request_samples"]


# What work a run did: the prompts (dataset, slice, length filters, synthetic length and seed) and what was
# generated from them. Runs that differ here measured different things: never compared, averaged or joined.
WORKLOAD_PREFIXES = ("dataset_", "generation_")
# Fingerprint of the exact prompt token ids (the same config can read other prompts: a new ShareGPT file, another
# tokenizer). Records older than it lack the column: then the config columns alone define the workload.
PROMPTS_HASH = "prompts_sha256"


def config_columns(df: pd.DataFrame) -> list[str]:
    """The columns that identify a configuration: the resolved config, never run_id/run_dir/started_at/overrides."""
    return [c for c in df.columns
            if (c.startswith(CONFIG_PREFIXES) or c == "batch_size") and c not in RUN_OUTCOME_COLUMNS]


def identity_columns(df: pd.DataFrame) -> list[str]:
    """What makes two runs the same point: the config columns (batch size and workload included) and the
    prompts' fingerprint where the records have one. latest() keeps one run per identity."""
    return config_columns(df) + [PROMPTS_HASH] * (PROMPTS_HASH in df)


def workload_columns(df: pd.DataFrame) -> list[str]:
    """The columns of the records that define the workload (see WORKLOAD_PREFIXES, PROMPTS_HASH)."""
    return [c for c in df.columns if c.startswith(WORKLOAD_PREFIXES) or c == PROMPTS_HASH]


def _encode_nested(df: pd.DataFrame) -> pd.DataFrame:
    """Lists and dicts as JSON text, so that the frame can be hashed, grouped and written to Parquet."""
    out = df.copy()
    for column in out.columns[out.dtypes == object]:
        if out[column].map(lambda v: isinstance(v, (list, dict))).any():
            out[column] = out[column].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    return out


def keys(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each row's values of `columns` as one string, to group or match rows on: missing values (NaN, None)
    equal each other, so that engines without a setting still match."""
    values = _encode_nested(df[columns]).astype(object)
    values = values.where(values.notna(), None).to_numpy().tolist()
    return pd.Series([json.dumps(row, default=str) for row in values] if columns else "", index=df.index, dtype=object)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def configuration(row: pd.Series) -> str:
    """A short label of what ran: engine plus the settings that change its numbers (`hf float32 nf4`)."""
    parts = [row.get("engine_name"), row.get("dtype")]
    for key in ("quantization", "engine_quant_type"):
        value = row.get(key)
        if isinstance(value, str) and value not in ("none", ""):
            parts.append(value)
    if row.get("batching") == "sequential":
        parts.append("sequential")
    method = row.get("engine_speculative_method")
    if isinstance(method, str) and method != "none":  # speculative decoding: method[:draft] and tokens per step
        draft = row.get("engine_speculative_draft") if method == "draft" else None
        parts.append(f"{method}{f':{draft}' if isinstance(draft, str) else ''} k={row['engine_speculative_num_tokens']:.0f}")
    return " ".join(str(p) for p in parts if isinstance(p, str) and p)


def workload(row: pd.Series) -> str:
    """A short label of the work: `sharegpt[0:16] 64 tok` (dataset[prompt slice], new tokens per prompt),
    `synthetic-128[…]` for 128-token random prompts, `≤64 tok` when EOS may stop early, `T=0.7` when sampling."""
    name = str(row.get("dataset_name", ""))
    if not _missing(row.get("dataset_input_len")):
        name += f"-{row['dataset_input_len']:.0f}"
    offset, limit = row.get("dataset_offset"), row.get("dataset_limit")
    if not (_missing(offset) or _missing(limit)):
        name += f"[{offset:.0f}:{offset + limit:.0f}]"
    parts = [name]
    new_tokens, ignore_eos = row.get("generation_max_new_tokens"), row.get("generation_ignore_eos")
    if not _missing(new_tokens):
        parts.append(f"{'≤' if not _missing(ignore_eos) and not ignore_eos else ''}{new_tokens:.0f} tok")
    temperature = row.get("generation_temperature")
    if not _missing(temperature) and temperature > 0:
        parts.append(f"T={temperature:g}")
    return " ".join(p for p in parts if p)


def _value_text(column: str, value) -> str:
    if _missing(value):
        return f"{column}=unset"
    return f"{column}={str(value)[:8] if column.endswith('_sha256') else value}"  # a hash prefix suffices


def _distinct(df: pd.DataFrame, short: pd.Series, within: list[str], columns: list[str]) -> pd.Series:
    """`short` labels made unique per identity: where rows that differ in `columns` share a short label (and
    their `within` columns), each gets the columns that tell them apart appended (`hf float32
    engine_attn_implementation=eager`). Rows of one identity keep one label, so a pivot on the labels pools
    reruns of a configuration and nothing else."""
    out = short.to_numpy(dtype=object).copy()
    identity = keys(df, columns).to_numpy()
    for positions in pd.Series(range(len(df))).groupby(keys(df, within).to_numpy() + short.to_numpy()).groups.values():
        positions = list(positions)
        if len(set(identity[positions])) < 2:
            continue
        group = df.iloc[positions]
        differing = [c for c in columns if keys(group, [c]).nunique() > 1]
        for position, (_, row) in zip(positions, group.iterrows()):
            out[position] = " ".join([out[position], *(_value_text(c, row[c]) for c in differing)])
    return pd.Series(out, index=df.index, dtype=object)


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """df with two label columns, each unique per what it names, so that grouping on them never mixes runs:
    `workload` (workload() made longer where different workloads share a short label) and `configuration`
    (configuration() likewise, per model: the config columns other than the workload and batch size)."""
    if df.empty:
        return df.assign(workload=pd.Series(dtype=object), configuration=pd.Series(dtype=object))
    work = workload_columns(df)
    others = [c for c in identity_columns(df) if c not in work and c not in ("batch_size", "model_name")]
    model = ["model_name"] if "model_name" in df else []
    return df.assign(  # arrays, not Series: a frame from pd.concat may repeat index labels
        workload=_distinct(df, df.apply(workload, axis=1), [], work).to_numpy(),
        configuration=_distinct(df, df.apply(configuration, axis=1), model, others).to_numpy())


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The latest run of each configuration (identity_columns equal: workload and batch size included),
    whatever its status.

    A failed rerun therefore replaces an older successful run; use `latest(df[df.status == "ok"])` for the
    latest successful one. Rows keep load_results' order (by started_at).
    """
    if df.empty:
        return df
    keep = ~keys(df, identity_columns(df)).duplicated(keep="last")
    return df[keep.to_numpy()].reset_index(drop=True)


def compare(df: pd.DataFrame, metric: str, index: str = "batch_size") -> pd.DataFrame:
    """`metric` as a pivot: one row per `index` value, one column per configuration (labelled()).

    When the frame holds several models or workloads the columns are (model_name, workload, configuration)
    tuples, the levels that vary: different workloads are never one column. When the records carry a confidence
    interval for the metric (`<metric>_ci_low` and `<metric>_ci_high`: runner.stats.mean_ci), those come too:
    the columns are then (value name, ...) with the value names metric, *_ci_low and *_ci_high. Each cell is one
    run: repeated runs of a configuration raise ValueError (compare(latest(df), ...) picks the latest).
    """
    values = [metric] + [c for c in (f"{metric}_ci_low", f"{metric}_ci_high") if c in df]
    if len(values) == 2:  # half an interval is not an interval
        values = [metric]
    df = labelled(df)
    columns = [c for c in ("model_name", "workload") if df[c].nunique() > 1] + ["configuration"]
    repeated = df.duplicated([index, *columns], keep=False)
    if repeated.any():
        cells = df.loc[repeated, [index, *columns]].drop_duplicates().values.tolist()
        # The labels tell identities apart, so with index=batch_size only reruns of one identity collide.
        same = keys(df[repeated], [index, *columns]).nunique() == keys(df[repeated], identity_columns(df)).nunique()
        fix = ("pick one per configuration first, e.g. compare(latest(df), ...)" if same else
               f"runs of different batch sizes share an {index!r} value; pivot on batch_size or select first")
        raise ValueError(f"several runs for {cells}; {fix}")
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
    """Each row's `metric` divided by the baseline row's with the same model, workload and batch size (NaN
    without one).

    `baseline` selects the baseline rows, e.g. "engine_name=hf" (see select()); it must pick one run per model,
    workload and batch size, else ValueError says how to narrow it. For a throughput the ratio is the speed-up;
    for a latency, below 1 is faster. The baseline rows themselves get exactly 1.0.
    """
    point = keys(df, ["model_name", *workload_columns(df), "batch_size"])
    chosen = select(df, baseline) & (df["status"] == "ok")
    if not chosen.any():
        raise ValueError(f"no successful run matches baseline {baseline!r}")
    repeated = chosen & point.where(chosen).duplicated(keep=False)
    if repeated.any():
        raise ValueError(f"baseline {baseline!r} matches several runs per model, workload and batch size; "
                         + _narrower(df[repeated], point[repeated], baseline))
    reference = point.map(pd.Series(df.loc[chosen, metric].to_numpy(), index=point[chosen].to_numpy()))
    return (df[metric] / reference.astype(float)).rename(f"{metric}_speedup")


def _narrower(candidates: pd.DataFrame, point: pd.Series, baseline: str) -> str:
    """How to make a baseline pick one run per point (model, workload, batch size): latest() where the
    candidates are reruns of one configuration, else a longer query with the first candidate's values of the
    config columns that differ within a point."""
    names = ", ".join(sorted(set(labelled(candidates)["configuration"])))
    differing = [c for c in identity_columns(candidates)
                 if any(keys(group, [c]).nunique() > 1 for _, group in candidates.groupby(point.to_numpy()))]
    if not differing:
        return f"reruns of {names}: use speedup(latest(df), ...)"
    first = candidates.iloc[0]
    terms = [f"{c}={first[c]}" for c in differing if not _missing(first[c])]
    return f"they differ in {', '.join(differing)} ({names}); add a term, e.g. {','.join([baseline, *terms])}"


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
