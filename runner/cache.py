"""The cache of everything made once and reused: converted models, tokenizers, tools, quality references.

Entries are directories built in a temporary sibling and renamed into place, so an interrupted build never
leaves a half-written entry. A lock file beside each entry makes parallel jobs (hydra/launcher=gpus) that need the
same entry build it once: the others wait for it and reuse it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional


def cache_root(cache_dir: Optional[str]) -> Path:
    root = cache_dir or os.environ.get("LLM_BENCH_CACHE") or "~/.cache/llm-bench"
    return Path(root).expanduser()


def build_dir_atomically(target: Path, fill: Callable[[Path], None]) -> bool:
    """Make directory ``target`` unless it exists: ``fill`` writes into a temporary sibling renamed into place.

    Returns whether it was built now. An interrupted build never leaves a half-written ``target``.
    """
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.exists():  # another job built it while this one waited
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fill(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True
