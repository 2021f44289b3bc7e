"""The llama.cpp server launcher (engines/llamacpp/serve.py): every call into llama.cpp on one thread, whatever
the requests' overlap (the docstring there says why: a second OpenMP team made the server 2.6x slower)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from tests.helpers import skip_module_without

skip_module_without("llama_cpp", "[llamacpp]")


def test_overlapping_streams_and_calls_run_on_one_thread():
    from engines.llamacpp.serve import pin_llama_calls

    server_app = SimpleNamespace()
    pin_llama_calls(server_app)
    threads: list[int] = []

    def tokens(request: int):  # a stream: each step holds its thread a while, as a llama_decode does
        for step in range(5):
            threads.append(threading.get_ident())
            time.sleep(0.002)
            yield request, step

    def completion(request: int):
        threads.append(threading.get_ident())
        return request

    async def stream(request: int) -> list:
        iterator = await server_app.run_in_threadpool(tokens, request)  # the server creates the iterator so
        return [item async for item in server_app.iterate_in_threadpool(iterator)]

    async def overlapping():
        return await asyncio.gather(stream(0), stream(1), stream(2), server_app.run_in_threadpool(completion, 3))

    *streams, single = asyncio.run(overlapping())
    assert streams == [[(r, s) for s in range(5)] for r in range(3)] and single == 3  # complete, in order
    assert len(threads) == 16 and len(set(threads)) == 1 and threads[0] != threading.get_ident()


def test_the_server_module_still_takes_the_names_it_replaces():
    """serve.py swaps two names in llama_cpp.server.app: a llama-cpp-python that stops using them would
    silently undo the pinning."""
    pytest.importorskip("fastapi")
    import inspect

    from llama_cpp.server import app

    streaming = inspect.getsource(app.get_event_publisher)
    assert "await run_in_threadpool(" in streaming and "iterate_in_threadpool(iterator)" in streaming
    assert "await run_in_threadpool(llama, **kwargs)" in inspect.getsource(app.create_completion)
