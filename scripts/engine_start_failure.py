"""How long the runner takes to turn an engine that dies while starting into an error row (issue 18).

Starts `python -m runner <overrides>`, waits for a process of the run's tree whose name or command line contains
--kill-name (vLLM's engine core is "VLLM::EngineCore", a tensor-parallel worker "VllmWorker"), SIGKILLs it
--after seconds later, and reports the seconds from that kill to the runner's exit, its exit code, the record's
status and error, and any process of the tree still alive.

    python scripts/engine_start_failure.py engine=vllm engine.enforce_eager=true engine.dtype=float32 \
        engine.max_model_len=512 batch_size=2 dataset.limit=4 generation.max_new_tokens=8
    python scripts/engine_start_failure.py --kill-name VllmWorker model=llama2-7b-random engine=vllm \
        engine.tensor_parallel_size=2          # a 2-GPU machine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _find(root: psutil.Process, name: str) -> psutil.Process | None:
    for proc in root.children(recursive=True):
        try:
            if name in proc.name() or name in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-name", default="EngineCore")
    parser.add_argument("--after", type=float, default=3.0, help="seconds between finding it and killing it")
    parser.add_argument("--wait", type=float, default=600.0, help="give up finding it after this long")
    parser.add_argument("--grace", type=float, default=300.0, help="a runner still alive this long after is a hang")
    args, overrides = parser.parse_known_args()
    cwd = Path(tempfile.mkdtemp(prefix="engine-start-failure-"))
    runner = subprocess.Popen([sys.executable, "-m", "runner", *overrides], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root, started = psutil.Process(runner.pid), time.monotonic()
    target = None
    while target is None and runner.poll() is None and time.monotonic() - started < args.wait:
        target = _find(root, args.kill_name)
        time.sleep(0.2)
    if target is None:
        runner.kill()
        print(f"no process named {args.kill_name!r} appeared (runner exit code {runner.wait()})")
        return 2
    time.sleep(args.after)
    tree = [root, *root.children(recursive=True)]
    target.kill()
    killed = time.monotonic()
    try:
        output, _ = runner.communicate(timeout=args.grace)
    except subprocess.TimeoutExpired:
        runner.kill()
        output, _ = runner.communicate()
        print(f"HANG: the runner was still running {args.grace:.0f} s after the kill")
    took = time.monotonic() - killed
    time.sleep(1.0)
    alive = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    records = [json.loads(p.read_text()) for p in cwd.rglob("record.json")]
    print(f"killed {args.kill_name} (pid {target.pid}) {killed - started:.1f} s after the start; the runner exited "
          f"{took:.1f} s later with code {runner.returncode}; processes of the run still alive: {alive or 'none'}")
    for record in records:
        print(f"record: status={record['status']} error={(record.get('error') or '')[:300]}")
    if not records:
        print("no record written\n" + output[-2000:])
    return 0 if records and not alive and took < 30 else 1


if __name__ == "__main__":
    sys.exit(main())
