"""A server process the runner launched: started in its own process group, waited on until it answers,
and always stopped (terminate, then kill) — after the run, on an exception, on Ctrl-C and on SIGTERM.

Servers spawn children (vLLM's engine core, its tokenizer workers); signalling the whole process group
is what leaves no orphan behind. Memory is the resident set of that whole process tree.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import psutil

from runner.serving.auth import AUTH_REFUSED, NO_AUTH, Auth

MIB = 2**20

_live: set["ServerProcess"] = set()  # stopped at interpreter exit or SIGTERM if the run did not get to it


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerAuthError(RuntimeError):
    """The server answered 401/403: the message names server.api_key_env and its variable, never the key."""


def models_status(base_url: str, auth: Auth = NO_AUTH, timeout_s: float = 2.0) -> Optional[int]:
    """The HTTP status of GET <base_url>/models (OpenAI-compatible servers list their models there), None
    when nothing answers. The key goes as an unredirected header: urllib would copy a plain one to
    wherever a redirect points, another host included."""
    request = urllib.request.Request(f"{base_url}/models")
    for name, value in auth.headers().items():
        request.add_unredirected_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def models_ready(base_url: str, auth: Auth = NO_AUTH, timeout_s: float = 2.0) -> bool:
    """True when GET <base_url>/models answers 200; a 401/403 raises (waiting would not change it)."""
    status = models_status(base_url, auth, timeout_s)
    if status in AUTH_REFUSED:
        raise ServerAuthError(auth.refused(status, f"{base_url}/models"))
    return status == 200


class DeviceUsed:
    """NVML used memory summed over the GPUs visible to this run (the server's allocations live in another
    process; a launcher job that claimed one GPU counts that one)."""

    def __init__(self):
        from runner.memory import nvml

        self._nvml, self._handles, self.note = nvml()

    def bytes(self) -> Optional[int]:
        from runner.memory import device_used_bytes

        return device_used_bytes(self._nvml, self._handles) if self._handles else None


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with the tail of its log."""


class ServerProcess:
    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, base_url: str,
                 auth: Auth = NO_AUTH):
        self.command, self.env, self.log_path, self.base_url = command, env, log_path, base_url
        self.auth = auth
        self.popen: Optional[subprocess.Popen] = None
        self._rss_peak_bytes = 0
        self._sampling = threading.Event()
        self._sampler: Optional[threading.Thread] = None

    def start(self, timeout_s: float) -> float:
        """Launch and wait until the server answers; returns the seconds that took."""
        _install_handlers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            # start_new_session: a process group of its own, so stop() reaches every child it spawns.
            self.popen = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        _live.add(self)
        while not models_ready(self.base_url, self.auth):
            if self.popen.poll() is not None:
                raise ServerStartError(f"server exited with code {self.popen.returncode} before answering: "
                                       f"{' '.join(self.command)}; log tail: {self.log_tail()}")
            if time.perf_counter() - started > timeout_s:
                raise ServerStartError(f"server.startup_timeout_s={timeout_s}: no answer from {self.base_url}/models"
                                       f"; log tail: {self.log_tail()}")
            time.sleep(0.25)
        return time.perf_counter() - started

    @property
    def pid(self) -> Optional[int]:
        return self.popen.pid if self.popen else None

    def exit_note(self) -> str:
        """What a failed request cannot say ("Cannot connect"): the server died, with its exit code and log tail."""
        if self.popen is None or self.popen.poll() is None:
            return ""
        return f" (the server exited with code {self.popen.returncode}; log tail: {self.log_tail(300)})"

    def log_tail(self, chars: int = 800) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text[-chars:].splitlines())

    # ------------------------------------------------------------ memory
    def tree_rss_bytes(self) -> int:
        if not self.popen:
            return 0
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def start_memory_sampler(self, hz: float = 10.0) -> None:
        """Samples the tree's RSS (and NVML used memory) in a thread that sleeps between samples."""
        self.device = DeviceUsed()
        self._rss_peak_bytes = self.tree_rss_bytes()
        self._device_peak_bytes = self.device.bytes()

        def loop() -> None:
            while not self._sampling.wait(1.0 / hz):
                self._rss_peak_bytes = max(self._rss_peak_bytes, self.tree_rss_bytes())
                used = self.device.bytes()
                if used is not None:
                    self._device_peak_bytes = max(self._device_peak_bytes or 0, used)

        self._sampling.clear()
        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def stop_memory_sampler(self) -> dict[str, Optional[float]]:
        """Peaks since start_memory_sampler(): the server tree's resident MiB, the devices' used MiB."""
        self._sampling.set()
        if self._sampler:
            self._sampler.join()
        device = self._device_peak_bytes
        return {"server_peak_rss_mib": max(self._rss_peak_bytes, self.tree_rss_bytes()) / MIB,
                "device_peak_used_mib": device / MIB if device is not None else None,
                "device_memory_note": self.device.note}

    # ------------------------------------------------------------ stop
    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL to what is left after ``grace_s``; idempotent."""
        _live.discard(self)
        if not self.popen:
            return
        pgid = self.popen.pid  # the group leader's pid is the group id (start_new_session)
        members = _group_members(pgid)
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(members, timeout=max(0.0, 2.0))
        if self.popen.poll() is None or alive:
            _signal_group(pgid, signal.SIGKILL)
            for proc in alive:  # a child that left the group still dies
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            self.popen.wait(timeout=10)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            pass
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_all(grace_s: float = 5.0) -> None:
    for server in list(_live):
        server.stop(grace_s=grace_s)


_handlers_installed = False


def _install_handlers() -> None:
    """Stop live servers at exit and on SIGTERM (Ctrl-C raises KeyboardInterrupt, which the run's finally sees)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop_all()
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
