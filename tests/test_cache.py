"""The cache's entries: built once, atomically, also when parallel jobs ask for the same one at once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from runner.cache import build_dir_atomically


def _build(target: str, log: str) -> bool:
    def fill(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # a conversion: long enough for the other job to arrive while it runs
        (tmp / "weights").write_text("w")

    return build_dir_atomically(Path(target), fill)


def test_two_jobs_asking_for_one_entry_build_it_once(tmp_path):
    target, log = tmp_path / "models" / "m" / "gguf", tmp_path / "fills.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        built = pool.starmap(_build, [(str(target), str(log))] * 2)
    assert sorted(built) == [False, True] and log.read_text() == "built\n"
    assert (target / "weights").read_text() == "w"
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".gguf-")] == []  # no temporary left


def test_a_failed_build_leaves_no_entry_and_the_next_one_builds_it(tmp_path):
    target = tmp_path / "entry"

    def failing(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("conversion failed")

    try:
        build_dir_atomically(target, failing)
    except RuntimeError:
        pass
    assert not target.exists()
    assert build_dir_atomically(target, lambda tmp: (tmp / "ok").write_text("y")) is True
    assert (target / "ok").read_text() == "y"
