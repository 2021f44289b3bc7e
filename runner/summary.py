"""The one-screen table printed at the end of a run. Reads a record; measures nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_summary(record: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    title = f"{record.get('engine_name')} · {record.get('model_name')} · batch {record.get('batch_size')}"
    if record["status"] != "ok":
        console.print(f"[bold red]{title}: {record['status']}[/] {record['error']}")
        console.print(f"record: {record['run_dir']}/record.json")
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
        ("output tok/s", _fmt(record["output_tok_s"])),
        ("total tok/s", _fmt(record["total_tok_s"])),
        ("requests/s", _fmt(record["requests_per_s"], 3)),
        ("batch latency ms p50 / p90 / p99", " / ".join(
            _fmt(record[f"batch_latency_ms_{q}"]) for q in ("p50", "p90", "p99"))),
        ("TTFT ms mean / p99", f"{_fmt(record['ttft_ms_mean'])} / {_fmt(record['ttft_ms_p99'])}"),
        ("TPOT ms mean / p99", f"{_fmt(record['tpot_ms_mean'], 2)} / {_fmt(record['tpot_ms_p99'], 2)}"),
        ("weights MiB", _fmt(record.get("weights_mib"))),
        ("host peak RSS MiB", _fmt(record["host_peak_rss_mib"])),
        ("device peak used MiB", _fmt(record.get("device_peak_used_mib"))),
        ("torch peak allocated / reserved MiB",
         f"{_fmt(record.get('torch_peak_allocated_mib'))} / {_fmt(record.get('torch_peak_reserved_mib'))}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"record: {record['run_dir']}/record.json")
