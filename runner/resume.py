"""Resume: a point whose complete record already exists under the outputs root is skipped.

A run key is a hash of the resolved config (engine, model, dataset slice, generation, measure, batch size,
scenario...) and of the exact prompt token ids, never of where or how it runs (outputs_root, isolation,
timeout_s, resume, cache_dir).
Only status=ok records count as complete: failed points (oom, error, crashed, timeout) are retried on the
next run of the sweep, since a failure is often transient or fixed in between. resume=false reruns all.

Lookup is an index, ``<outputs_root>/run_index.jsonl`` (one line per record: key, status, path), kept
honest by a glob of record.json paths (stat only, no reading): a record that a killed sweep wrote just
before its index line is read once and indexed. Lines are appended with one write each (atomic on a local
file system, so parallel launcher jobs do not interleave).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from runner.records import RECORD_NAME, flatten

INDEX_NAME = "run_index.jsonl"
NOT_IN_KEY = {"outputs_root", "isolation", "timeout_s", "resume", "cache_dir", "experiment"}


def run_key(cfg: Any, prompts_sha256: Optional[str] = None) -> str:
    """The point's identity: its resolved config and the fingerprint of the exact prompt token ids it runs
    (so that an edited prompts file, or another tokenizer, is a new point, not a resumed one)."""
    fields = {k: v for k, v in flatten(cfg).items() if k not in NOT_IN_KEY}
    fields["prompts_sha256"] = prompts_sha256
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_index(root: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    try:
        with open(root / INDEX_NAME, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
                entries[entry["path"]] = entry
    except FileNotFoundError:
        pass
    return entries


def index_record(root: Path, record_path: Path, record: dict[str, Any]) -> None:
    line = json.dumps({"key": record.get("run_key"), "status": record.get("status"),
                       "path": str(record_path.resolve())}) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / INDEX_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _sync_index(root: Path) -> dict[str, dict[str, Any]]:
    """The index, with every record.json on disk that it misses read and added."""
    entries = _read_index(root)
    for path in root.rglob(RECORD_NAME):
        resolved = str(path.resolve())
        if resolved in entries:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # not ours to judge; records are written atomically, so this is foreign
        index_record(root, path, record)
        entries[resolved] = {"key": record.get("run_key"), "status": record.get("status"), "path": resolved}
    return entries


def find_complete(root: Path, key: str) -> Optional[dict[str, Any]]:
    """The existing status=ok record with this run key, re-read from disk to be sure; None if there is none."""
    if not root.is_dir():
        return None
    for entry in _sync_index(root).values():
        if entry.get("key") != key or entry.get("status") != "ok":
            continue
        try:
            with open(entry["path"], encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # deleted or moved since it was indexed
        if record.get("run_key") == key and record.get("status") == "ok":
            return record
    return None
