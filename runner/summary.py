"""The one-screen table printed at the end of a run. Reads a record; measures nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ci(record: dict[str, Any], value_key: str, ci_prefix: str, cv_key: str, digits: int = 1) -> str:
    """"value [low, high] CV x %": the 95 % interval (runner.stats.mean_ci) and the coefficient of variation."""
    text = _fmt(record.get(value_key), digits)
    low, high = record.get(f"{ci_prefix}_ci_low"), record.get(f"{ci_prefix}_ci_high")
    if low is not None and high is not None:
        text += f" [{_fmt(low, digits)}, {_fmt(high, digits)}]"
    if record.get(cv_key) is not None:
        text += f" CV {record[cv_key] * 100:.1f}%"
    return text


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _interval_label(record: dict[str, Any]) -> str:
    method, unit = record.get("output_tok_s_ci_method"), record.get("output_tok_s_ci_unit")
    return f"95% CI, {method} by {unit}" if method else f"no interval: one {unit or 'sample'}"


def print_summary(record: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    title = escape(f"{record.get('engine_name')} · {record.get('model_name')} · batch {record.get('batch_size')}")
    if record["status"] != "ok":
        # escape: an error text such as "pip install -e '.[llamacpp]'" is not rich markup
        console.print(f"[bold red]{title}: {record['status']}[/] {escape(str(record['error']))}")
        _print_path(record)
        return
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("device / dtype", f"{record.get('device')} / {record.get('dtype')}"),
        ("dataset slice", f"{record['dataset_name']} [{record['dataset_offset']}:"
                          f"{record['dataset_offset'] + record['dataset_limit']}]"),
        ("prompts / batches", f"{record['prompts']} / {record['batches']}"),
        ("tokens in / out", f"{record['input_tokens']:,} / {record['output_tokens']:,}"),
        ("model prepare s (not timed)", _fmt(record.get("model_prepare_s"), 2)),
        ("load s", _fmt(record["load_s"], 2)),
        ("repetitions / steady state", f"{record.get('repetitions')} / {_fmt(record.get('steady_state'))}"),
        (f"output tok/s [{_interval_label(record)}]", _ci(record, "output_tok_s", "output_tok_s", "output_tok_s_cv")),
        ("total tok/s", _fmt(record["total_tok_s"])),
        ("requests/s", _fmt(record["requests_per_s"], 3)),
        ("batch latency ms p50 / p90 / p99", " / ".join(
            _fmt(record[f"batch_latency_ms_{q}"]) for q in ("p50", "p90", "p99"))),
        ("TTFT ms mean [95% CI] / p99", f"{_ci(record, 'ttft_ms_mean', 'ttft_ms_mean', 'ttft_ms_cv')} / "
                                        f"{_fmt(record['ttft_ms_p99'])}"),
        ("TPOT ms mean [95% CI] / p99", f"{_ci(record, 'tpot_ms_mean', 'tpot_ms_mean', 'tpot_ms_cv', 2)} / "
                                        f"{_fmt(record['tpot_ms_p99'], 2)}"),
        ("MBU datasheet / measured peak", f"{_pct(record.get('mbu_table'))} / {_pct(record.get('mbu_measured'))}"),
        ("MFU decode / prefill (measured peak)",
         f"{_pct(record.get('mfu_decode_measured'))} / {_pct(record.get('mfu_prefill_measured'))}"),
        ("perplexity (tokens)", f"{_fmt(record.get('perplexity'), 2)} ({record.get('perplexity_tokens')})"),
        ("energy J / J per token / W", " / ".join(_fmt(record.get(k), d) for k, d in
                                                  (("energy_j", 1), ("joules_per_output_token", 3),
                                                   ("avg_power_w", 0)))),
        ("weights MiB", _fmt(record.get("weights_mib"))),
        ("host peak RSS MiB self / process tree",
         f"{_fmt(record['host_peak_rss_mib'])} / {_fmt(record.get('host_peak_rss_tree_mib'))}"),
        ("device peak used MiB device / our processes",
         f"{_fmt(record.get('device_peak_used_mib'))} / {_fmt(record.get('device_peak_process_mib'))}"),
        ("torch peak allocated / reserved MiB",
         f"{_fmt(record.get('torch_peak_allocated_mib'))} / {_fmt(record.get('torch_peak_reserved_mib'))}"),
    ]
    if record.get("batch_size_note"):
        rows.insert(0, ("batch size", str(record["batch_size_note"])))
    if record.get("steady_state") is False:  # why not: drift, or a first repetition the warm-up did not cover
        rows.append(("not steady", str(record.get("steady_state_note"))))
    if "spec_verify_steps" in record:  # engine.speculative: the counts and exactness (runner/speculative.py)
        exact = {True: "exact", False: "NOT EXACT", None: "not checked"}[record.get("spec_exact")]
        rows.append(("speculative acceptance / accepted per step",
                     f"{_pct(record['spec_acceptance_rate'])} / {_fmt(record['spec_accepted_tokens_per_step_mean'], 2)}"
                     f" ({record['spec_verify_steps']} steps; {exact})"))
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    console.print(table)
    _print_path(record)


def _print_path(record: dict[str, Any]) -> None:
    # print(), not rich: a path wrapped at the terminal's (or a pipe's 80-column) width cannot be copied
    print(f"record: {record['run_dir']}/record.json", flush=True)
