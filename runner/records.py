"""One flat JSON record per run, written atomically (temp file + rename)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates its file 0600; a record is an ordinary file, readable as the user's umask says (0644 for 022)
_FILE_MODE = 0o666 & ~_umask()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclasses/dicts to one level, keys joined with '_' (engine.dtype -> engine_dtype).

    Lists stay whole (they are raw samples); enums become their value.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict) and obj:
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(flatten(value, f"{prefix}_{key}" if prefix else str(key)))
        return flat
    if isinstance(obj, Enum):
        obj = obj.value
    elif isinstance(obj, list):
        obj = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in obj]
    elif isinstance(obj, dict):  # an empty dict keeps its key
        obj = None
    return {prefix: obj}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash at any instant) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False, default=str)
            f.flush()
            os.fchmod(f.fileno(), _FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

