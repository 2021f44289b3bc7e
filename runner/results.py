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
