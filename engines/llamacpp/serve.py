"""``python -m engines.llamacpp.serve <llama_cpp.server arguments>``: llama-cpp-python's OpenAI-compatible
server, with two changes that keep it at its own speed:

1. llama.cpp's extra CPU buffer types set as the offline engine sets them. The server has no flag for
   ``llama_model_params.use_extra_bufts``, and on a CPU with AMX its default (on) segfaults at the first request
   (engines/llamacpp/engine.py: use_extra_buffers). LLM_BENCH_LLAMACPP_EXTRA_BUFFERS ("1" / "0", set by the
   serving backend) replaces the default parameters the server's Llama class asks for.
2. Every call into llama.cpp on one thread. The stock server runs each step of a stream on whichever worker
   thread of its pool is free, and with requests overlapping that becomes a second thread. A llama.cpp built
   with OpenMP (the PyPI build) then gets a second OpenMP team, and once the teams hold more threads than the
   machine has cores, libgomp stops spin-waiting in all of them (its throttled spin count). Every llama.cpp op
   then waits on a futex wake-up until the pool retires the extra thread (anyio: after 10 s idle, so never
   under steady load). Measured on 2 cores, SmolLM2 Q4_1: TPOT 11.3 ms, then 29-34 ms after two overlapping
   requests, even for requests sent one at a time (OMP_WAIT_POLICY=PASSIVE gives 34 ms). The server serves one
   request at a time behind its locks anyway, so one thread costs it nothing; the slow state it removes hit
   2 of 3 rounds of the served-load fidelity check at 1 req/s (scripts/llamacpp_server_probe.py shows it).
"""

import asyncio
import functools
import os
import runpy
from concurrent.futures import ThreadPoolExecutor

import llama_cpp.llama_cpp as lib

_LLAMA_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
_END = object()


def set_extra_buffers(flag: str) -> None:
    """Make the server's Llama models load with ``use_extra_bufts`` = (flag == "1")."""
    defaults = lib.llama_model_default_params

    def model_params():
        params = defaults()
        params.use_extra_bufts = flag == "1"
        return params

    lib.llama_model_default_params = model_params  # llama_cpp.Llama looks it up on this module per model


async def run_in_llama_thread(func, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(_LLAMA_THREAD, functools.partial(func, *args, **kwargs))


async def iterate_in_llama_thread(iterator):
    while (item := await run_in_llama_thread(next, iterator, _END)) is not _END:
        yield item


def pin_llama_calls(server_app) -> None:
    """The server module took these names from starlette.concurrency at import; only its calls into llama change."""
    server_app.run_in_threadpool = run_in_llama_thread
    server_app.iterate_in_threadpool = iterate_in_llama_thread


if __name__ == "__main__":
    from llama_cpp.server import app

    if (flag := os.environ.get("LLM_BENCH_LLAMACPP_EXTRA_BUFFERS")) is not None:
        set_extra_buffers(flag)
    pin_llama_calls(app)
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
