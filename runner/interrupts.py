"""Ctrl-C and SIGTERM: the first one stops the sweep (as an ``Interrupted`` exception in the main thread), one
more while it cleans up ends the process at once. Inside :func:`deferred` (writing a finished record) the
signal waits until the block ends, so an interrupt never separates a finished result from its record.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

_state: dict[str, Optional[int]] = {"deferring": 0, "pending": None}
_on_exit_now: list[Callable[[], None]] = []


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal (SIGINT from Ctrl-C, or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def install(on_exit_now: Callable[[], None]) -> None:
    """Take over SIGINT and SIGTERM in this (main) process; ``on_exit_now`` runs before a second signal's exit."""
    if on_exit_now not in _on_exit_now:  # a second install in one process (tests run the CLI in theirs)
        _on_exit_now.append(on_exit_now)
    signal.signal(signal.SIGINT, _first)
    signal.signal(signal.SIGTERM, _first)


def _first(signum: int, frame) -> None:
    if _state["deferring"]:
        _state["pending"] = signum
        return
    signal.signal(signal.SIGINT, _second)  # cleaning up now: it must not be cut short, nor print more tracebacks
    signal.signal(signal.SIGTERM, _second)
    raise Interrupted(signum)


def _second(signum: int, frame) -> None:
    for callback in _on_exit_now:
        callback()
    os._exit(128 + signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold an interrupt until the block ends (Python runs signal handlers in the main thread only, so a flag
    is enough; blocking the signal in one thread would not stop another thread from taking it)."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and not _state["deferring"]:
            _first(pending, None)
