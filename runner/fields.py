"""The record's fields: one list, the README's field table generated from it, and a check that a record has
no field the table does not explain.

    python -m runner.fields             # the README table (markdown)
    python -m runner.fields --write     # rewrite that table in README.md

A row names its fields in backticks: a plain name, ``prefix_*`` for a family (a config group flattened, the
environment), ``name_{a,b}`` for the listed suffixes. tests/test_record_fields.py holds README.md to this
table and every key of real records to these names.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple


class Field(NamedTuple):
    names: str  # the table's first column: backticked names
    meaning: str


RECORD_FIELDS = (
    Field('`run_id`, `status`, `error`, `traceback`',
          '`status` is `ok`, `error`, `oom`, `crashed` or `timeout`; a failed run keeps its config and '
          'environment'),
    Field('`started_at`, `run_dir`, `overrides`, `run_key`',
          'when (UTC), where, the command-line overrides, and the resume key (config + `prompts_sha256`)'),
    Field('`engine_*`, `model_*`, `dataset_*`, `generation_*`, `measure_*`, `cache_dir`',
          'the resolved config, flattened (`engine.dtype` → `engine_dtype`)'),
    Field('`scenario`, `isolation`, `timeout_s`, `resume`, `outputs_root`, `experiment`, `serving`, `server`, '
          '`serving_*`, `server_*`',
          'the top-level config keys (`experiment`: the preset of `+experiment=NAME` a run came from); `serving` and `server` are empty outside `scenario=serving`, whose rows '
          'have them flattened (`serving_request_rate`, `server_url`) and what the server did '
          '(`server_backend`, `server_pid`, `server_command`, `server_log`, `server_startup_s`, '
          '`server_peak_rss_mib`, `server_auth`)'),
    Field('`batch_size`, `batch_size_requested`, `batch_size_note`',
          'the batch size really run (the largest batch), the one asked for, and why they differ or the '
          'last batch was smaller (`batch_size=16 dataset.limit=4` runs one batch of 4: `batch_size` is '
          '4)'),
    Field('`prompts_sha256`, `dataset_file_sha256`',
          'sha256 of the exact prompt token ids run (first 16 hex digits; part of `run_key`), and of the '
          'data file they came from (sharegpt, file datasets)'),
    Field('`device`, `dtype`, `quantization`, `cache_implementation`, `compiled`, `n_gpu_layers`, '
          '`n_ctx`, `n_seq_max`, `n_batch`, `n_threads`, `batching`, `extra_buffers`, `exllamav2_*`, '
          '`vllm_*`, `sglang_*`',
          'what the engine really ran with, as it reports it (e.g. `dtype=float32` for '
          "`engine.dtype=auto` on CPU; CTranslate2's `int8_float32`; llama.cpp's GGUF type `Q4_1`, its "
          'context and threads, `batching`: `batched` = all sequences in one `llama_decode` per step; '
          "HF's cache and compile mode; ExLlamaV2's cache; vLLM's version, KV-cache dtype, blocks and "
          "MiB; SGLang's version, attention backend, memory share, KV-cache tokens and CUDA graphs)"),
    Field('`model_format`, `model_path`, `model_prepare_s`, `model_cache_hit`',
          'the format loaded, where from, conversion seconds on this run (0 when cached)'),
    Field('`engine_streams_tokens`',
          'whether the engine timestamps tokens (per-request latencies exist)'),
    Field('`load_s`, `engine_reused`',
          'model load time, device synchronized; whether the model was already loaded (a worker\'s later '
          'point: `load_s` ~0)'),
    Field('`point_wall_s`',
          'wall time of the whole point, from its start to its record: a child or worker start, the model '
          'preparation and load, warm-up, measurement, quality passes'),
    Field('`weights_mib`',
          'bytes of weights the engine holds (HF: parameters + buffers as stored; GGUF/CT2: the loaded '
          'weights)'),
    Field('`prompts`, `batches`, `input_tokens`, `output_tokens`',
          'the measured workload (warm-up excluded)'),
    Field('`measured_s`',
          'sum of the measured batch latencies'),
    Field('`output_tok_s`, `total_tok_s`, `requests_per_s`',
          'output tokens, input + output tokens, prompts, each divided by `measured_s`'),
    Field('`offered_rate_rps`, `requests_sent`, `completed_requests`, `failed_requests`, `request_errors`, '
          '`requests_per_hour`, `goodput_share`, `goodput_requests_per_s`',
          'serving rows: the rate really offered (requests sent over the time to the last send; null for rate '
          'inf), what was sent, completed and failed (failed ones are left out of every latency and token '
          'figure; `request_errors` lists them), requests per hour, and the share and rate of requests '
          'meeting every SLO set (`serving.slo_*`)'),
    Field('`batch_latency_ms_{mean,p50,p90,p95,p99}`',
          'one `generate` call, device synchronized on both sides'),
    Field('`ttft_ms_*`',
          "time to first token: batch start → the request's first token (`_mean`, `_p50`, `_p90`, `_p95`,"
          ' `_p99`; every latency family has these five)'),
    Field('`tpot_ms_*`',
          'time per output token: (E2EL − TTFT) / (tokens − 1), per request'),
    Field('`itl_ms_*`',
          'inter-token latency: every gap between consecutive tokens, pooled'),
    Field('`e2el_ms_*`',
          "end-to-end latency: batch start → the request's last token"),
    Field('`latency_note`',
          'why the per-request latencies are empty, when they are (an engine without per-token '
          'timestamps)'),
    Field('`stop_reason`, `stopped_at_cap`',
          'why the repetitions stopped: `repetitions`, `min_duration_s`, `target_rel_ci`, or '
          '`max_repetitions` (the cap: the target was not met, and the row says so)'),
    Field('`warmup_s`, `warmup_batches_run`, `compile_s`, `compiled_graphs`, `recompiles_measured`, '
          '`compile_note`',
          "the warm-up's wall time and batches; torch.compile's seconds and graphs during load and "
          'warm-up; graphs compiled inside the timed region (0 expected; the note says when not)'),
    Field('`repetitions`, `measured_region_s`, `warmup_new_tokens`',
          'how many times all batches were measured (`measure.repetitions`, more while under '
          '`measure.min_duration_s`; warm-up once before the first); wall time of that region; new tokens'
          " per warm-up batch (the run's length, or `measure.reused_warmup_tokens` on a reused worker)"),
    Field('`output_tok_s_samples`',
          'output tok/s of each repetition (its tokens / its summed batch latencies)'),
    Field('`output_tok_s_ci_low`, `output_tok_s_ci_high`, `output_tok_s_cv`, `output_tok_s_ci_unit`, '
          '`output_tok_s_ci_method`',
          '95 % interval and coefficient of variation (sd, ddof 1, / mean) of output tok/s, over '
          "repetitions when there are ≥ 2, else over batches. Method `t` (Student's t, mean ± t(0.975, "
          'n−1)·sd/√n, low end clipped at 0) below 10 units, `bootstrap` (percentile, 2,000 resamples, '
          'numpy seed 0; batches resample tokens and seconds together) from 10: a bootstrap of 3 '
          'repetitions covers the mean only ~75 % of the time'),
    Field('`ttft_ms_mean_ci_low`, `ttft_ms_mean_ci_high`, `ttft_ms_cv` (and `tpot_ms_…`), '
          '`latency_ci_unit`',
          '95 % interval of the mean over batches (each batch of each repetition is one unit: the '
          'requests of one static batch share one clock, so they are not independent samples; one batch '
          'gives no interval), the same t / bootstrap rule; the CV of the per-request values'),
    Field('`steady_state`, `steady_state_note`',
          "False when the second half of the repetitions' tok/s differs from the first half by more than "
          'the width of the 95 % bootstrap interval of their mean (drift: warming, throttling, a '
          'neighbour), or when the first repetition lies outside the 99 % prediction interval of the others '
          '(a warm-up that did not cover the workload: raise `measure.warmup_batches`); empty below 5 '
          'repetitions (with 3 or 4 the check cannot fail), the note says so'),
    Field('`host_peak_rss_mib`, `host_peak_rss_method`',
          'peak resident memory of the process from model load on (kernel `VmHWM`, reset at load)'),
    Field('`host_peak_rss_tree_mib`',
          'peak of the summed RSS of this process and all its children (psutil, sampled), from model load'
          ' on'),
    Field('`device_peak_used_mib`, `device_memory_note`',
          'NVML used memory of the whole device(s), peak minus the reading before load (a kept worker engine: '
          'before its first load); the note says why'
          ' it is empty (no GPU). Device-wide: memory another process frees or takes meanwhile moves it, '
          'so prefer the next field where NVML gives it'),
    Field('`device_peak_process_mib`, `device_process_memory_note`',
          'peak of the GPU memory NVML attributes to this process and its children '
          '(`nvmlDeviceGetComputeRunningProcesses`); the note says why it is empty'),
    Field('`memory_samples`, `memory_sample_hz_target`, `memory_sample_hz_achieved`',
          'how many memory samples the sampler process took (it sleeps between them), the rate it aimed at '
          '(`measure.memory_sample_hz`; at most 10 Hz without a GPU, where it shares the CPU with the engine) '
          'and the rate it reached'),
    Field('`torch_peak_allocated_mib`, `torch_peak_reserved_mib`',
          'PyTorch allocator peaks during the measured batches (CUDA only)'),
    Field('`energy_j`, `joules_per_output_token`, `avg_power_w`, `energy_source`, `energy_note`',
          'NVML total-energy counter (summed over GPUs; RAPL package counters on a CPU host where '
          'readable) read around the measured region; J / output tokens; J / `measured_region_s`; empty '
          'with the reason where unavailable'),
    Field('`perplexity`, `perplexity_tokens`, `perplexity_prompts`, `perplexity_note`',
          'exp(− mean ln p(token \\| prefix)) of the engine under test over the first '
          '`measure.perplexity_prompts` prompts (token 0 unscored), after the timed region; empty with '
          'the reason where the engine cannot score'),
    Field('`matmul_params`, `kv_bytes_per_token`',
          'weights that multiply activations (all linear layers and the LM head), and K+V bytes cached '
          'per token (2 · layers · KV heads · head dim · 4 B for float32 activations, else 2 B), from the'
          " model's config.json or GGUF metadata"),
    Field('`decode_tok_s`, `prefill_tok_s`, `decode_bytes_per_step`',
          'batch × 1000 / TPOT mean; input tokens / summed batch TTFT; weight bytes + batch × mean '
          'context (prompt + half the output) × `kv_bytes_per_token`'),
    Field('`mbu_table`, `mbu_measured`',
          '`decode_bytes_per_step` / TPOT mean / peak memory bandwidth (datasheet, or measured here)'),
    Field('`mfu_decode_table`, `mfu_prefill_table`, `mfu_decode_measured`, `mfu_prefill_measured`',
          '2 · `matmul_params` · (decode or prefill) tok/s / peak FLOP/s (datasheet dense BF16, or '
          'measured here)'),
    Field('`roofline_device_name`, `peak_device`, `peak_bandwidth_gb_s_table`, `peak_tflops_table`, '
          '`peak_bandwidth_gb_s_measured`, `peak_tflops_measured`, `roofline_note`',
          "the device matched against `runner/roofline.py`'s datasheet table (GPUs only); copy bandwidth "
          '(read + write) and matmul FLOP/s measured once per machine and cached in `<cache>/roofline/`; '
          'why a figure is empty'),
    Field('`greedy_agreement`',
          'share of identical tokens, position by position, among the first 32 greedy tokens of the first'
          ' `measure.agreement_prompts` prompts, against the reference below (1.0: the same text)'),
    Field('`greedy_reference`, `greedy_agreement_prompts`, `greedy_agreement_note`',
          'the reference (HF transformers at float32 on CPU / float16 on CUDA, each prompt alone, '
          'cached), how many prompts, and why the figure is empty when it is (sampling, disabled)'),
    Field('`spec_verify_steps`, `spec_drafted_tokens`, `spec_accepted_tokens`, `spec_acceptance_rate`, '
          '`spec_accepted_tokens_per_step_mean`, `spec_accepted_tokens_per_step_hist`, `spec_counts_source`',
          'speculative decoding (`engine_speculative_method`, `_num_tokens`, `_draft`, `_max_ngram`), measured region '
          "only, from the engine's own counters where it has them (`spec_counts_source` says which): verification "
          'steps (one sequence checking ≥ 1 drafted token in one target forward pass; a step that drafted nothing '
          'is not one), tokens drafted and accepted, accepted / drafted, accepted per step (mean, and the raw '
          'distribution: element k = steps that accepted k tokens). Speed-up against the same point without '
          'speculation: the report pairs the rows (`spec_speedup`)'),
    Field('`spec_draft_path`, `spec_draft_prepare_s`',
          "the draft model (`engine.speculative.draft`) in the engine's format, and its conversion seconds on "
          'this run (0 when cached)'),
    Field('`spec_greedy_agreement`, `spec_exact`, `spec_reference`, `spec_agreement_note`',
          'greedy exactness: agreement (as `greedy_agreement`) of the first `measure.agreement_prompts` outputs '
          'with the same engine and batches without speculation (`spec_reference`; cached); `spec_exact` False '
          'and the note say when it is below 1.0'),
    Field('`batch_samples`, `request_samples`',
          'raw per-batch (`ttft_ms`, `decode_ms`, `latency_ms`, `repetition`) and per-request samples '
          '(TTFT, E2EL, TPOT, every ITL, the first 32 output ids, `repetition`)'),
    Field('`env_*`',
          'hostname hash, platform, CPU model and cores (logical, physical, usable), GPU '
          'name/count/driver/memory, CUDA driver version, max SM/memory clocks and current SM clock, '
          'power limit (each when NVML answers), python, torch, CUDA, numpy, transformers and engine '
          'versions, git commit and dirty flag'),
)
HEADER = "| field | meaning |\n|---|---|\n"
README = Path(__file__).resolve().parent.parent / "README.md"


def markdown_table() -> str:
    return HEADER + "".join(f"| {f.names} | {f.meaning} |\n" for f in RECORD_FIELDS)


def _name_pattern(name: str) -> str:
    if match := re.fullmatch(r"(.*)\{(.*)\}(.*)", name):
        head, choices, tail = match.groups()
        return "|".join(re.escape(head + choice + tail) for choice in choices.split(","))
    return re.escape(name[:-1]) + ".+" if name.endswith("*") else re.escape(name)


FIELD_NAMES = re.compile("|".join(f"(?:{_name_pattern(name)})" for field in RECORD_FIELDS
                                  for name in re.findall(r"`([^`]+)`", field.names)))


def undocumented(record: dict) -> list[str]:
    """The keys of a record that no row of the table names."""
    return [key for key in record if not FIELD_NAMES.fullmatch(key)]


def readme_with_table(text: str) -> str:
    """README.md's text with its record table replaced by markdown_table() (the table after "## The record")."""
    start = text.index(HEADER, text.index("## The record"))
    end = start + len(HEADER)
    while text.startswith("| ", end):
        end = text.index("\n", end) + 1
    return text[:start] + markdown_table() + text[end:]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(markdown_table(), end="")
