"""The report (runner.report, its CLI and plots) on records the real CLI wrote (SmolLM2 on CPU; no mocks).
The shared sweep (hf and llama.cpp at batch 1 and 2) is conftest's `sweep` fixture."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

from runner.plots import add_roofline, palette, per_batch_figure
from runner.report import COLUMNS, configuration, decode_rate_caption, main, markdown, table
from runner.results import RAW_SAMPLE_COLUMNS, labelled
from tests.helpers import FAST, IN_PROCESS, ROOT, markdown_rows, rerun, run_runner, write_records

pytestmark = pytest.mark.slow  # every test reads the real sweep (CLI subprocesses)

PLOTS = ["throughput.png", "memory.png", "latency.png", "decode_rate.png"]


@pytest.fixture(scope="module")
def report(sweep, cache_dir):
    """The report directory made by the real CLI, with llama.cpp compared to HF."""
    out = sweep.parent / "report"
    proc = run_runner(sweep.parent, cache_dir, str(sweep), "--baseline", "engine_name=hf", "--out", str(out),
                      module="runner.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_results_csv_holds_the_records_values_exactly(report, records):
    csv = pd.read_csv(report / "results.csv").set_index("run_id")
    expected = records.set_index("run_id")
    assert sorted(csv.index) == sorted(expected.index) and len(csv) == 4
    metrics = [c for c in expected.columns if pd.api.types.is_numeric_dtype(expected[c])
               and not pd.api.types.is_bool_dtype(expected[c])]
    assert {"output_tok_s", "ttft_ms_p99", "host_peak_rss_mib", "greedy_agreement"} <= set(metrics)
    for column in metrics:
        pd.testing.assert_series_equal(csv[column].loc[expected.index], expected[column], check_dtype=False,
                                       check_exact=True, obj=column)
    assert not set(RAW_SAMPLE_COLUMNS) & set(csv.columns)  # the committed report holds no raw samples


def test_markdown_table_holds_the_same_rounded_numbers(report, records):
    rows = markdown_rows((report / "report.md").read_text(), "| model | configuration | status | batch | workload")
    assert len(rows) == len(records) == 4
    by_key = {(configuration(r), r.batch_size): r for _, r in records.iterrows()}
    for row in rows:
        record = by_key[(row["configuration"], int(row["batch"]))]
        assert row["status"] == "ok" and row["workload"] == "sharegpt[0:4] 8 tok"  # tests.helpers.FAST
        for name, field, digits in COLUMNS:
            if digits is not None and field in records and pd.notna(record[field]):
                assert row[name] == f"{record[field]:,.{digits}f}", (name, row)
        # speed-up against the HF run of the same batch size, to 2 decimals
        hf = records[(records.engine_name == "hf") & (records.batch_size == record.batch_size)].iloc[0]
        assert row["speed-up"] == f"{record.output_tok_s / hf.output_tok_s:,.2f}"
    assert {r["greedy agree"] for r in rows if r["configuration"].startswith("hf")} == {"1.00"}


def test_report_holds_plots_and_environment(report, records):
    text = (report / "report.md").read_text()
    for name in PLOTS:
        assert (report / name).stat().st_size > 10_000, name
        assert f"]({name})" in text
    assert f"| torch | {records.env_torch.iloc[0]} |" in text
    assert "## Latency percentiles" in text and "smollm2-135m" in text.splitlines()[0]
    # small enough to commit: four PNGs, the markdown and the CSV
    assert sum(f.stat().st_size for f in report.iterdir()) < 2_000_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="engine.device=cuda only fails where there is no CUDA")
def test_failed_run_appears_as_failed(run_cli, tmp_path, sweep, capsys):
    proc = run_cli("engine.device=cuda", IN_PROCESS, *FAST)
    assert proc.returncode == 1
    out = tmp_path / "report"
    assert main([str(tmp_path / "outputs"), str(sweep), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = markdown_rows(text, "| model | configuration | status | batch | workload")
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 5 and len(failed) == 1
    assert failed[0]["status"] == "error" and failed[0]["out tok/s"] == "—"
    assert "## Failed runs" in text and "**error**" in text
    assert "error" in set(pd.read_csv(out / "results.csv").status)
    assert all((out / name).stat().st_size > 10_000 for name in PLOTS)  # the four ok runs are still plotted


# ---------------------------------------------------------------- several workloads (issue 15)
def test_report_keeps_two_workloads_at_one_batch_size_apart(raw, tmp_path):
    """The sweep again on prompts 4-8: each configuration has two rows at batch 1, told apart by their workload,
    with the speed-up taken against the baseline run of the same workload."""
    write_records(tmp_path / "runs", raw + rerun(raw, dataset_offset=4))
    assert main([str(tmp_path / "runs"), "--baseline", "engine_name=hf", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    rows = markdown_rows(text, "| model | configuration | status | batch | workload")
    assert len(rows) == 8 and len({(r["configuration"], r["batch"], r["workload"]) for r in rows}) == 8
    hf_1 = [r for r in rows if r["configuration"] == "hf float32" and r["batch"] == "1"]
    assert sorted(r["workload"] for r in hf_1) == ["sharegpt[0:4] 8 tok", "sharegpt[4:8] 8 tok"]
    assert {r["speed-up"] for r in hf_1} == {"1.00"}  # each against itself, not against the other workload
    assert len(markdown_rows(text, "| model | workload | dataset")) == 2  # the Workload section
    assert "older runs" not in text and "8 runs (8 ok" in text  # none superseded: other work, not a rerun


def test_rows_of_two_code_versions_are_flagged(raw, tmp_path):
    """A sweep resumed after an upgrade: half its rows from another commit. The report says so, once."""
    write_records(tmp_path / "runs", raw[:2] + rerun(raw[2:], env_git_commit="0123abc"))
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert text.count("Measured by 2 versions of the code") == 1 and "`0123abc` (2 rows)" in text
    write_records(tmp_path / "one", raw)
    assert main([str(tmp_path / "one"), "--out", str(tmp_path / "report-one")]) == 0
    assert "versions of the code" not in (tmp_path / "report-one" / "report.md").read_text()


def test_mbu_from_the_measured_bandwidth_where_no_datasheet_has_one(records):
    rows = labelled(records.assign(mbu_table=None, mbu_measured=0.3, peak_bandwidth_gb_s_measured=12.0))
    shown = table(rows)
    assert "MBU datasheet" not in shown and shown["MBU measured"].tolist() == [0.3] * 4
    assert "| 0.30 |" in markdown(shown)
    caption = decode_rate_caption(rows)
    assert "measured on the machine" in caption and "do not carry" not in caption
    fig = per_batch_figure(rows, palette(rows), "decode", "tok/s", lambda r: r["decode_tok_s"], extra=add_roofline)
    dashed = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 2  # the roofline of each configuration: decode tok/s / MBU
    for line in dashed:
        runs = rows[rows.configuration == line.get_label().split(" · ")[0]].sort_values("batch_size")
        assert list(line.get_ydata()) == pytest.approx((runs.decode_tok_s / 0.3).tolist())


def test_example_script_reproduces_the_table_and_a_plot(sweep, tmp_path):
    png = tmp_path / "throughput.png"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "compare_engines.py"), str(sweep), str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| model | configuration | status | batch" in proc.stdout and "llamacpp Q4_1" in proc.stdout
    assert png.stat().st_size > 10_000
