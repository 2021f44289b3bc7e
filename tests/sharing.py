"""Two pytest-xdist workers on the 2-core CI machine without slowing each other's engines.

Engines spin their threads (OpenMP in torch, ggml's pool in llama.cpp): two processes that each start one
thread per core on a shared pair of cores wait on each other at every step (the default benchmark, 41 s alone,
was still running after 11 min beside a served llama.cpp). So each worker is pinned to a core of its own, and
what it starts inherits that: torch, llama.cpp (engines/llamacpp: physical_cores) and the runner size their
threads from the CPUs they may use. A test that holds wall-clock times to milliseconds (a served load's send
schedule, a hand-timed request) is marked `exclusive`: it waits until no other test runs, then runs alone on
every CPU, as a user's run does. A ratio of two figures measured alternately on one core (the fidelity tests:
runner against the engine's bare loop) needs no exclusivity: both sides share that core alike. Without xdist
(plain `pytest`) none of this does anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from pathlib import Path

_ALL_CPUS = sorted(os.sched_getaffinity(0))


def _worker_index() -> int | None:
    name = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    return int(name[2:]) if name else None


def _use_cpus(cpus: list[int]) -> None:
    os.sched_setaffinity(0, cpus)
    torch = sys.modules.get("torch")  # its thread count was read from the affinity when it was first imported
    if torch is not None:
        torch.set_num_threads(len(cpus))


def pin_worker_to_its_cpu() -> None:
    index = _worker_index()
    if index is not None and len(_ALL_CPUS) > 1:
        _use_cpus([_ALL_CPUS[index % len(_ALL_CPUS)]])


def _lock_file(name: str):
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    return open(Path(tempfile.gettempdir()) / f"llm-bench-tests-{run}.{name}", "a")


# Session fixtures several modules share: their modules go to one worker (`--dist loadgroup`), which builds it once
_SHARED_FIXTURES = ("sweep", "records", "raw")


def assign_worker_groups(items: list) -> None:
    """Each test's xdist group, and the exclusive tests first (in place).

    The `exclusive` tests form one group that runs first, back to back: one wait for the other worker's first
    test, then the whole machine for all of them (each waiting for the other worker's test in flight cost
    minutes). A test of their modules that shares a module fixture with them joins them (built once). The
    others: their module's group (module fixtures built once), or one group for every module that uses the
    shared sweep."""
    import pytest

    def module_fixtures(item) -> set[str]:
        return {name for name, defs in item._fixtureinfo.name2fixturedefs.items() if defs[-1].scope == "module"}

    exclusive = [item for item in items if "exclusive" in item.keywords]
    with_them = set().union(*(module_fixtures(item) for item in exclusive)) if exclusive else set()
    first = {item for item in items if "exclusive" in item.keywords or module_fixtures(item) & with_them}
    sharing = {item.module.__name__ for item in items if set(item.fixturenames) & set(_SHARED_FIXTURES)}
    groups: dict[str, list] = {}
    for item in items:
        module = item.module.__name__
        group = "exclusive" if item in first else "shared-sweep" if module in sharing else module
        item.add_marker(pytest.mark.xdist_group(group))
        groups.setdefault(group, []).append(item)
    # Then the groups with the most end-to-end (slow, not GPU) tests, so that no long group starts last
    # (`--no-loadscope-reorder` keeps this order)
    rest = sorted((g for name, g in groups.items() if name != "exclusive"),
                  key=lambda g: -sum("slow" in item.keywords and "gpu" not in item.keywords for item in g))
    items[:] = groups.get("exclusive", []) + [item for g in rest for item in g]


_held = None  # the lock file an exclusive test keeps for the next one (module doc: consecutive exclusive tests)


@contextlib.contextmanager
def run_alone_or_beside(exclusive: bool, keep: bool = False):
    """A readers-writer lock across the worker processes (flock): every test holds it shared, an `exclusive`
    one alone. The turnstile keeps a waiting exclusive test from being overtaken by the other worker's next
    tests; an exclusive test followed by another keeps the lock for it (keep)."""
    global _held
    if _worker_index() is None:
        yield
        return
    tests = _held
    if tests is None:
        tests = _lock_file("tests")
        with _lock_file("turnstile") as turnstile:
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            fcntl.flock(tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    _held = None
    if exclusive:
        _use_cpus(_ALL_CPUS)
    try:
        yield
    finally:
        if exclusive:
            pin_worker_to_its_cpu()
        if exclusive and keep:
            _held = tests
        else:
            tests.close()  # releases the lock
