"""One streaming /v1/completions request, timed chunk by chunk, and the load that sends many of them.

Each token-carrying chunk is stamped with ``time.perf_counter()`` when it is parsed. Tokens per chunk
come from the server: the running ``usage.completion_tokens`` (vLLM's continuous usage stats), else the
chunk's ``logprobs.tokens``, else one per chunk with text; a final usage block sets the total, and
without usage a stream that ended with finish_reason "length" produced exactly ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from runner.serving.auth import AUTH_REFUSED, NO_AUTH, Auth


@dataclass
class RequestResult:
    index: int  # position in the measured sequence of requests
    input_tokens: int
    sent_at: float  # perf_counter seconds
    ok: bool = False
    error: Optional[str] = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each token-carrying chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in each of those chunks
    output_tokens: int = 0
    finish_reason: Optional[str] = None
    token_count_source: Optional[str] = None  # usage | finish_length | chunks


def request_body(model: str, prompt: Union[str, list[int]], max_tokens: int, temperature: float,
                 extras: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, **extras}


def _chunk_tokens(chunk: dict[str, Any], seen_usage: int) -> tuple[int, Optional[int]]:
    """(tokens this chunk adds, running usage total if the chunk carries one)."""
    usage = chunk.get("usage") or {}
    if usage.get("completion_tokens") is not None:
        total = int(usage["completion_tokens"])
        return total - seen_usage, total
    choices = chunk.get("choices") or []
    if not choices:
        return 0, None
    logprobs = choices[0].get("logprobs") or {}
    if isinstance(logprobs.get("tokens"), list):
        return len(logprobs["tokens"]), None
    # No count from the server: a chunk with text is one token; a finish-only chunk (empty text) is none.
    return (1 if choices[0].get("text") else 0), None


async def stream_completion(session, url: str, body: dict[str, Any], result: RequestResult,
                            auth: Auth = NO_AUTH) -> RequestResult:
    """POST ``body`` to ``url`` and fill ``result`` as the stream arrives; errors are kept, never raised.

    The key travels in the session's headers; ``auth`` only words a 401/403 (the body is left out: a
    server may echo the request back)."""
    usage_total = 0
    try:
        result.sent_at = time.perf_counter()
        async with session.post(url, json=body) as response:
            if response.status in AUTH_REFUSED:
                result.error = auth.refused(response.status, url)
                return result
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return result
            async for raw in response.content:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue  # SSE comments and pings
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                arrived = time.perf_counter()
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = f"server error: {str(chunk['error'])[:300]}"
                    return result
                added, usage = _chunk_tokens(chunk, usage_total)
                if usage is not None:
                    usage_total = usage
                if added > 0:
                    result.chunk_times.append(arrived)
                    result.chunk_tokens.append(added)
                for choice in chunk.get("choices") or []:
                    result.finish_reason = choice.get("finish_reason") or result.finish_reason
        if usage_total:
            result.output_tokens, result.token_count_source = usage_total, "usage"
        elif result.finish_reason == "length" and body.get("max_tokens"):
            result.output_tokens, result.token_count_source = int(body["max_tokens"]), "finish_length"
        else:
            result.output_tokens, result.token_count_source = sum(result.chunk_tokens), "chunks"
        result.ok = result.output_tokens > 0
        if not result.ok:
            result.error = "no tokens streamed"
    except asyncio.CancelledError:
        result.error = "cancelled: serving.time_limit_s reached"
    except Exception as exc:  # a refused connection, a dropped stream, bad JSON: a failed request
        result.error = f"{type(exc).__name__}: {exc}"
    return result


RAMPS = ("linear", "exponential")


def target_rates_rps(count: int, request_rate: float, ramp: Optional[str] = None,
                     ramp_start_rate: Optional[float] = None) -> list[float]:
    """The rate each request is scheduled at: ``request_rate``, or with a ramp rising from ``ramp_start_rate``.

    As vLLM's ``--ramp-up-strategy``, the ramp follows the request's position in the run, progress
    p = i / (count - 1): linear ``start + (end - start) * p``, exponential ``start * (end / start) ** p``.
    In wall time a linear ramp therefore lingers at the low rates (their gaps are longer).
    """
    if ramp is None:
        return [request_rate] * count
    progress = np.arange(count) / max(count - 1, 1)
    if ramp == "linear":
        rates = ramp_start_rate + (request_rate - ramp_start_rate) * progress
    elif ramp == "exponential":
        rates = ramp_start_rate * (request_rate / ramp_start_rate) ** progress
    else:
        raise ValueError(f"ramp={ramp!r}: expected one of {RAMPS} or None")
    return rates.tolist()


def arrival_gaps_s(count: int, request_rate: float, burstiness: float, seed: int, ramp: Optional[str] = None,
                   ramp_start_rate: Optional[float] = None) -> list[float]:
    """Seconds to wait before each request: gamma(shape=burstiness, mean=1/rate), vLLM's benchmark_serving.

    burstiness 1 gives exponential gaps (a Poisson process); rate inf sends everything at once. With a ramp
    each gap's mean is 1 / that request's target rate (target_rates_rps).
    """
    if request_rate == float("inf"):
        return [0.0] * count
    # numpy's legacy generator, as vLLM's benchmark (np.random.seed(seed), then one gamma draw per request): the
    # same seed sends the same schedule as `vllm bench serve --seed`, so the two can be compared request for request
    rng = np.random.RandomState(seed)
    rates = np.asarray(target_rates_rps(count, request_rate, ramp, ramp_start_rate))
    return rng.gamma(shape=burstiness, scale=1.0 / (rates * burstiness)).tolist()


SCHEDULES = ("vllm", "raw")


def send_times_s(count: int, request_rate: float, burstiness: float, seed: int, ramp: Optional[str] = None,
                 ramp_start_rate: Optional[float] = None, schedule: str = "vllm") -> list[float]:
    """When each request goes out, in seconds after the load starts: the cumulative arrival gaps.

    ``vllm`` (vLLM's benchmark): without a ramp the cumulative times are rescaled so that the last request
    goes out at ``count / request_rate``, so the rate offered is the rate asked for whatever the draws (raw
    gamma gaps of 16 requests at 1 req/s ended at 21.8 s once: 0.73 req/s offered). ``raw``: the gamma
    process as drawn, its duration random.
    """
    times = np.cumsum(arrival_gaps_s(count, request_rate, burstiness, seed, ramp, ramp_start_rate))
    if schedule == "vllm" and ramp is None and count and times[-1] > 0:
        times *= (count / request_rate) / times[-1]
    return times.tolist()


async def run_load(url: str, bodies: list[dict[str, Any]], input_tokens: list[int], send_at_s: list[float],
                   max_concurrency: Optional[int], time_limit_s: float,
                   auth: Auth = NO_AUTH) -> tuple[list[RequestResult], float, float]:
    """Send every body at its arrival time (open loop), at most ``max_concurrency`` in flight, each with
    ``auth``'s header (aiohttp drops it on a redirect to another host).

    Returns the results, and the start and end (perf_counter) of the measured phase. Requests not sent, or
    still running, at ``time_limit_s`` are cancelled and counted as failed.
    """
    import aiohttp

    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0)  # the load decides concurrency, not the connection pool
    results = [RequestResult(index=i, input_tokens=n, sent_at=float("nan")) for i, n in enumerate(input_tokens)]
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False,
                                     headers=auth.headers()) as session:

        async def one(i: int) -> None:
            if limit is None:
                await stream_completion(session, url, bodies[i], results[i], auth)
                return
            async with limit:
                await stream_completion(session, url, bodies[i], results[i], auth)

        async def launch_all() -> None:
            tasks = []
            for i, offset in enumerate(send_at_s):  # to a fixed schedule: a late send does not delay the rest
                wait = start + offset - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

        start = time.perf_counter()
        driver = asyncio.create_task(launch_all())
        done, _ = await asyncio.wait({driver}, timeout=time_limit_s)
        if not done:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        end = time.perf_counter()
    for result in results:
        if not result.ok and result.error is None:
            result.error = "not sent: serving.time_limit_s reached"
    return results, start, end
