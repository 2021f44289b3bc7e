"""scenario=serving: prepare the model, start (or attach to) the server, warm up, send the load, write the record.

The record has the offline record's shape (same base fields, flattened config with ``serving_*`` and
``server_*``, the same latency names plus p95), so ``runner.results.load_results`` reads a rate sweep
as one DataFrame. A launched server is always stopped, whatever happens.
"""

from __future__ import annotations

import asyncio
import math
import traceback
from pathlib import Path
from typing import Any

from runner.config import BenchConfig
from runner.environment import environment
from runner.serving.auth import Auth
from runner.serving.client import request_body, run_load, send_times_s, target_rates_rps
from runner.serving.metrics import offered_rate_rps, request_samples, summarize_serving
from runner.serving.plan import ServingWorkload, is_loopback
from runner.serving.server import ServerProcess, free_loopback_port, models_ready

SERVER_LOG = "server.log"


def execute(cfg: BenchConfig, work: ServingWorkload, run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """One serving run; fills ``record`` (the point's head, from runner.run) and returns it. runner.run writes it."""
    backend = work.backend
    record.update({
        "model_format": backend.model_format, "engine_streams_tokens": True, "server_backend": backend.name,
        # offline-only figures, present so readers of either kind of record find the same columns
        "batches": None, "batch_latency_ms_p50": None, "batch_latency_ms_p90": None, "batch_latency_ms_p99": None,
        "load_s": None, "host_peak_rss_mib": None, "host_peak_rss_method": "server process tree RSS (psutil)",
    })
    # Launch mode sends the key too when the variable is set: the runner's own server is started without
    # one (harmless, loopback only), and a server told to check one (server.extra_args, vLLM's
    # VLLM_API_KEY) then works with server.api_key_env naming that variable. One rule for both modes.
    auth = Auth.from_environment(cfg.server.api_key_env)
    record["server_auth"] = auth.scheme
    server = None
    try:
        server, base_url, served_name = _start_or_attach(cfg, work, run_dir, record, auth)
        url = f"{base_url}/completions"
        forcing = backend.forcing_fields(cfg.generation.max_new_tokens, cfg.generation.ignore_eos)
        extras = {**backend.request_extras, **forcing}

        def bodies(prompts):
            return [request_body(served_name, p, cfg.generation.max_new_tokens, cfg.generation.temperature, extras)
                    for p in prompts]

        if work.warmup_prompts:  # one at a time, untimed: first-request costs (graph capture, caches) land here
            warm, _, _ = asyncio.run(run_load(url, bodies(work.warmup_prompts), [0] * len(work.warmup_prompts),
                                              [0.0] * len(work.warmup_prompts), 1, cfg.serving.time_limit_s, auth))
            failed = [r.error for r in warm if not r.ok]
            if failed:
                raise RuntimeError(f"warm-up request failed: {failed[0]}{server.exit_note() if server else ''}")
        serving = cfg.serving
        send_at = send_times_s(len(work.prompts), serving.request_rate, serving.burstiness, serving.seed,
                               serving.ramp, serving.ramp_start_rate, serving.schedule)
        # JSON has no infinity: "all at once" has no per-request rate
        rates = (None if math.isinf(serving.request_rate) else
                 target_rates_rps(len(work.prompts), serving.request_rate, serving.ramp, serving.ramp_start_rate))
        if server:
            server.start_memory_sampler()
        results, start, end = asyncio.run(run_load(url, bodies(work.prompts), [len(p) for p in work.prompt_ids],
                                                   send_at, cfg.serving.max_concurrency, cfg.serving.time_limit_s, auth))
        if server:  # device memory: whole-device NVML peak during the load (absolute, not minus a baseline)
            record.update(server.stop_memory_sampler())
            record["host_peak_rss_mib"] = record["server_peak_rss_mib"]
        record.update(summarize_serving(results, end - start, serving.slo_ttft_ms, serving.slo_tpot_ms,
                                        serving.slo_e2el_ms))
        record["request_samples"] = request_samples(results, start, rates)
        record["offered_rate_rps"] = offered_rate_rps(results, start, serving.request_rate)
        errors = sorted({r.error for r in results if not r.ok})
        record["request_errors"] = errors[:5]
        if record["completed_requests"] == 0:
            raise RuntimeError(f"every request failed: {errors[0] if errors else 'unknown'}"
                               f"{server.exit_note() if server else ''}")
        record["status"] = "ok"
    except Exception as exc:
        record["status"] = "oom" if "out of memory" in str(exc).lower() else "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    except BaseException:  # Ctrl-C / SIGTERM: the server goes, no record (an interrupted run is not a result)
        if server is not None:
            server.stop(grace_s=2.0)
        raise
    _finish(record, server, backend, run_dir, auth)
    _print(record)
    return record


def _finish(record, server, backend, run_dir: Path, auth: Auth) -> None:
    if server is not None:
        server.stop()
        record["server_log"] = str(run_dir / SERVER_LOG)
    record.update(environment(backend.packages))
    # Our own texts never hold the key; a server's error body or a library's message might echo it.
    record.update(auth.scrub(record))


def _start_or_attach(cfg: BenchConfig, work: ServingWorkload, run_dir: Path, record: dict[str, Any],
                     auth: Auth) -> tuple[ServerProcess | None, str, str]:
    if cfg.server.url:  # attach: traffic goes only to the URL given
        base_url = cfg.server.url.rstrip("/")
        record.update(server_loopback=is_loopback(base_url), server_pid=None)
        if not models_ready(base_url, auth, timeout_s=10):  # a 401/403 raises, naming server.api_key_env
            raise RuntimeError(f"server.url={base_url}: GET {base_url}/models did not answer 200")
        return None, base_url, cfg.server.model
    from runner.models import prepare

    from engines import get_engine_class

    # The engine's own variant (e.g. vllm quantization=gptq -> a GPTQ checkpoint), as the offline run loads.
    variant = get_engine_class(cfg.engine.name).model_variant(cfg.engine)
    prepared = prepare(cfg.model, work.backend.model_format, cfg.cache_dir, variant)
    record.update(model_path=prepared.path, model_prepare_s=prepared.prepare_s, model_cache_hit=prepared.cache_hit)
    port = free_loopback_port()
    served_name = cfg.server.model or cfg.model.name
    base_url = f"http://127.0.0.1:{port}/v1"
    command = work.backend.command(prepared.path, port, served_name) + list(cfg.server.extra_args)
    server = ServerProcess(command, work.backend.env(), run_dir / SERVER_LOG, base_url, auth)
    record.update(server_command=" ".join(command), server_loopback=True)
    try:
        record["server_startup_s"] = record["load_s"] = server.start(cfg.server.startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    record["server_pid"] = server.pid
    return server, base_url, served_name


def _print(record: dict[str, Any]) -> None:
    if record["status"] != "ok":
        return
    rate = record.get("serving_request_rate")
    if record.get("serving_ramp"):
        rate = f"{record['serving_ramp']} ramp {record['serving_ramp_start_rate']}→{rate}"
    print(f"serving · {record.get('server_backend')} · rate {rate}/s · concurrency "
          f"{record.get('serving_max_concurrency') or '∞'}: {record['completed_requests']} ok, "
          f"{record['failed_requests']} failed in {record['measured_s']:.2f} s; "
          f"{record['requests_per_s']:.3f} req/s, {record['output_tok_s']:.1f} output tok/s; "
          f"TTFT p50/p95 {record['ttft_ms_p50']:.0f}/{record['ttft_ms_p95']:.0f} ms, "
          f"TPOT p50/p95 {_f(record['tpot_ms_p50'])}/{_f(record['tpot_ms_p95'])} ms, "
          f"E2EL p95 {record['e2el_ms_p95']:.0f} ms", flush=True)


def _f(value) -> str:
    return "—" if value is None else f"{value:.1f}"
