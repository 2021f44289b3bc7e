"""Where a run executes: in this process, in a fresh child, or in a long-lived worker child reused by a grid.

isolation=process (default): a fresh 'spawn' child per run. Nothing carries over between runs (host peak
  RSS, allocator caches, CUDA context, an engine's leaked threads), and a segfault, SIGKILL or hang of the
  engine costs one row, not the sweep. The parent blocks in Connection.poll(timeout_s); no busy-wait.
  The child starts while the parent plans the point (prestart), so its imports overlap the planning.
isolation=worker: the fast grid. One child per (engine config, model) key stays alive across the jobs of a
  multirun (Hydra's basic launcher calls main() once per job in one process) and keeps the model loaded;
  each point only warms up and times its batches (prompt log-probs for perplexity, the same at every point,
  are computed once). Peaks are reset per point (runner/memory.py: VmHWM via
  clear_refs, the device sampler's baseline, torch's peak counters). A point after the first records
  load_s of ~0 and engine_reused=true. A different key, a failure or a timeout ends the worker.
isolation=none: in this process (debugging, profilers); a crash ends the sweep.

Children run in their own process group so that a timeout kills the engine's own children too (vLLM's
engine core), and use the 'spawn' context: forking a process that holds CUDA or threads is unsafe.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from runner.config import BenchConfig

_SPAWN = mp.get_context("spawn")


# ---------------------------------------------------------------- child side
def _child_setup() -> None:
    """Own process group (a timeout kills the whole tree), and a parent death ends us (no orphans)."""
    os.setpgrp()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a dead parent leaves the child until its run ends


def _serve(conn: Connection, keep_engine: bool, preload: tuple[str, ...] = ()) -> None:
    """Child main loop: receive (cfg, work, run_dir, overrides), send back the record; None ends it."""
    _child_setup()
    import importlib

    for module in preload:  # imported while the parent still plans the first point (prestart)
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the job itself reports a missing package, with the pip command that fixes it
    from runner.point import run_point
    from runner.session import EngineSession

    kept: Optional[EngineSession] = None
    try:
        while True:
            job = conn.recv()
            if job is None:
                break
            cfg, work, run_dir, overrides = job
            try:
                if keep_engine and kept is None:
                    kept = EngineSession(work.engine_cls(cfg.engine))
                record = run_point(cfg, work, run_dir, overrides, session=kept)
                if kept is not None:
                    kept.warm = record.get("status") == "ok"
            except BaseException as exc:  # run_point keeps its own errors; this is a bug around it
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()}
            conn.send(record)
            if keep_engine and record.get("status") != "ok":
                break  # an engine that failed may be in any state: the next point gets a fresh worker
    finally:
        if kept is not None:
            kept.close()


# ---------------------------------------------------------------- parent side
@dataclass(eq=False)
class _Child:
    process: Any
    conn: Connection
    key: Any  # a worker's: worker_key(); a fresh child's: the GPU it may use
    jobs: int = 0  # jobs sent: a worker that got none holds no engine and may still be importing

    def kill(self) -> None:
        """SIGKILL the child's whole process group (the engine's own children too), then reap it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.is_alive():  # killed before it made its own group
            self.process.kill()
        self.process.join(10)
        self.conn.close()
        _live.discard(self)

    def stop(self) -> None:
        """Ask a worker to finish (it closes its engine), kill it if it does not within 30 s."""
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        self.kill()


_live: set[_Child] = set()  # every run child of this process not yet reaped (kill_children's list)


def _start(keep_engine: bool, key: Any, preload: tuple[str, ...] = ()) -> _Child:
    parent_conn, child_conn = _SPAWN.Pipe()
    process = _SPAWN.Process(target=_serve, args=(child_conn, keep_engine, preload), daemon=False,
                             name="bench-run")
    process.start()
    child_conn.close()
    child = _Child(process, parent_conn, key)
    _live.add(child)
    return child


_worker: Optional[_Child] = None  # the one live worker of this process (isolation=worker)


def kill_children() -> None:
    """Ctrl-C / SIGTERM: SIGKILL every run child's process group now (its engine's processes with it)."""
    global _worker, _prestarted
    _worker = _prestarted = None
    for child in list(_live):
        child.kill()


def shutdown_worker() -> None:
    """End the kept worker and an unused prestarted child (at exit, or before a worker of another key)."""
    global _worker, _prestarted
    if _worker is not None and _worker.jobs:
        _worker.stop()
    elif _worker is not None:  # prestarted for a point that resume then skipped: waiting on its imports costs
        _worker.kill()         # seconds per skipped engine, and it has nothing to close
    if _prestarted is not None:
        _prestarted.kill()  # it never got a job: nothing to close, and it may still be importing
    _worker = _prestarted = None


atexit.register(shutdown_worker)


def worker_key(cfg: BenchConfig) -> dict[str, Any]:
    """What a worker keeps loaded: the engine config and the model (batch size, dataset slice... may vary)."""
    from runner.records import flatten

    return {**flatten(cfg.engine, "engine"), **flatten(cfg.model, "model"),
            "cache_dir": cfg.cache_dir, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _failure(status: str, error: str) -> dict[str, Any]:
    return {"status": status, "error": error}


def _describe_exit(exitcode: Optional[int]) -> dict[str, Any]:
    """A child gone without a record: killed by a signal (crashed), or exited (host OOM killer is SIGKILL)."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        return _failure("crashed", f"run process killed by {name} (signal {-exitcode}); "
                                   "SIGKILL is often the kernel's OOM killer: see dmesg")
    return _failure("crashed", f"run process exited with code {exitcode} before sending its record")


def _run_in_child(child: _Child, job: tuple, timeout_s: Optional[float]) -> tuple[dict[str, Any], bool]:
    """Send one job and wait for its record; returns (record, child still usable)."""
    child.jobs += 1
    try:
        child.conn.send(job)
    except (BrokenPipeError, OSError):
        child.process.join(5)
        return _describe_exit(child.process.exitcode), False
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:  # poll in slices only to notice a child that died without closing the pipe (its own children)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            child.kill()
            return _failure("timeout", f"run exceeded timeout_s={timeout_s:g}; its process group was killed"), False
        ready = child.conn.poll(5.0 if left is None else min(5.0, left))
        if ready:
            try:
                record = child.conn.recv()
            except (EOFError, OSError):
                child.process.join(5)
                return _describe_exit(child.process.exitcode), False
            return record, record.get("status") == "ok"
        if not child.process.is_alive():
            return _describe_exit(child.process.exitcode), False


_prestarted: Optional[_Child] = None  # isolation=process: the next point's child, importing while we plan


def _preload(cfg: BenchConfig) -> tuple[str, ...]:
    from engines import adapter_module

    return tuple(filter(None, ("torch", "transformers", adapter_module(cfg.engine.name))))


def _fresh_child_key() -> str:
    return f"fresh:{os.environ.get('CUDA_VISIBLE_DEVICES')}"  # the GPU a launcher job claims is inherited


def prestart(cfg: BenchConfig) -> None:
    """Start the point's child or worker now, so that its imports (torch, transformers, the engine: seconds)
    overlap the parent's planning of the point instead of following it. Nothing is timed yet."""
    global _worker, _prestarted
    if cfg.isolation == "process":
        if _prestarted is None or not _prestarted.process.is_alive():
            _prestarted = _start(keep_engine=False, key=_fresh_child_key(), preload=_preload(cfg))
        return
    if cfg.isolation != "worker":
        return
    key = worker_key(cfg)
    if _worker_fits(key):
        return
    shutdown_worker()
    _worker = _start(keep_engine=True, key=key, preload=_preload(cfg))


def _worker_fits(key: dict[str, Any]) -> bool:
    """Can the kept worker run a point of this key? If it held an engine and cannot, say why on stderr: the
    point's load_s then counts a new engine start, and a user should see what caused it."""
    if _worker is None:
        return False
    alive = _worker.process.is_alive()
    if alive and _worker.key == key:
        return True
    if _worker.jobs:
        if not alive:
            reason = f"its process ended (exit code {_worker.process.exitcode})"
        else:
            old = _worker.key
            changed = sorted(k for k in old.keys() | key.keys() if old.get(k) != key.get(k))
            reason = "the engine/model config changed: " + ", ".join(
                f"{k} {old.get(k)!r} -> {key.get(k)!r}" for k in changed)
        print(f"isolation=worker: a new engine start, {reason}", file=sys.stderr, flush=True)
    return False


def _fresh_child() -> _Child:
    """The prestarted child if it suits this point (alive, same GPU), else a new one."""
    global _prestarted
    child, _prestarted = _prestarted, None
    if child is not None and child.key == _fresh_child_key() and child.process.is_alive():
        return child
    if child is not None:
        child.kill()
    return _start(keep_engine=False, key=None)


def run_isolated(cfg: BenchConfig, work: Any, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one point as cfg.isolation says; always returns a record (a failure is a record with its status)."""
    global _worker
    job = (cfg, work, run_dir, overrides)
    if cfg.isolation == "process":
        child = _fresh_child()
        try:
            record, _ = _run_in_child(child, job, cfg.timeout_s)
        except BaseException:  # Ctrl-C / SIGTERM: the child (own process group, no terminal signal) dies now
            child.kill()
            raise
        child.stop()
        return record
    key = worker_key(cfg)
    if _worker is not None and not _worker_fits(key):
        shutdown_worker()
    if _worker is None:
        _worker = _start(keep_engine=True, key=key)
    try:
        record, usable = _run_in_child(_worker, job, cfg.timeout_s)
    except BaseException:
        kill_children()
        raise
    if not usable:
        _worker.kill()
        _worker = None
    return record
