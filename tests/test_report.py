"""The report and the runner.results helpers, on records the real CLI wrote (SmolLM2 on CPU; no mocks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from runner.report import COLUMNS, configuration, main
from runner.results import RAW_SAMPLE_COLUMNS, compare, export, latest, load_results, select, speedup
from tests.conftest import FAST, ROOT, run_runner

PLOTS = ["throughput.png", "memory.png", "latency.png", "decode_rate.png"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    """One small real sweep shared by the module: hf and llama.cpp at batch 1 and 2."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_runner(cwd, cache_dir, "-m", "engine=hf,llamacpp", "batch_size=1,2", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "outputs" / "multirun"


@pytest.fixture(scope="module")
def records(sweep) -> pd.DataFrame:
    return load_results(sweep)


@pytest.fixture(scope="module")
def report(sweep, cache_dir):
    """The report directory made by the real CLI, with llama.cpp compared to HF."""
    out = sweep.parent / "report"
    proc = run_runner(sweep.parent, cache_dir, str(sweep), "--baseline", "engine_name=hf", "--out", str(out),
                      module="runner.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def markdown_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the first markdown table whose header line starts with `header_start`, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


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
    rows = markdown_rows((report / "report.md").read_text(), "| model | configuration | status | batch | prompts")
    assert len(rows) == len(records) == 4
    by_key = {(configuration(r), r.batch_size): r for _, r in records.iterrows()}
    for row in rows:
        record = by_key[(row["configuration"], int(row["batch"]))]
        assert row["status"] == "ok"
        for name, field, digits in COLUMNS:
            if field in records and pd.notna(record[field]):
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
    proc = run_cli("engine.device=cuda", *FAST)
    assert proc.returncode == 1
    out = tmp_path / "report"
    assert main([str(tmp_path / "outputs"), str(sweep), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = markdown_rows(text, "| model | configuration | status | batch | prompts")
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 5 and len(failed) == 1
    assert failed[0]["status"] == "error" and failed[0]["out tok/s"] == "—"
    assert "## Failed runs" in text and "**error**" in text
    assert "error" in set(pd.read_csv(out / "results.csv").status)
    assert all((out / name).stat().st_size > 10_000 for name in PLOTS)  # the four ok runs are still plotted


def test_latest_keeps_the_newest_run_of_each_configuration(records):
    assert len(latest(records)) == len(records)  # four configurations, one run each
    rerun = records.iloc[[0]].assign(run_id="rerun", status="error", output_tok_s=float("nan"),
                                     started_at=records.started_at.max() + pd.Timedelta(seconds=1),
                                     run_dir="elsewhere", overrides="other overrides")
    kept = latest(pd.concat([records, rerun], ignore_index=True))
    assert len(kept) == len(records)
    assert "rerun" in set(kept.run_id) and records.run_id.iloc[0] not in set(kept.run_id)
    other = rerun.assign(run_id="other batch", batch_size=64)  # a different configuration is kept beside
    assert len(latest(pd.concat([records, other], ignore_index=True))) == len(records) + 1


def test_compare_pivots_configuration_by_batch_size(records):
    table = compare(records, "tpot_ms_p50")
    assert list(table.index) == [1, 2] and sorted(table.columns) == ["hf float32", "llamacpp Q4_1"]
    for _, r in records.iterrows():
        assert table.loc[r.batch_size, configuration(r)] == r.tpot_ms_p50
    # a confidence interval, when the records carry one, comes along
    with_ci = records.assign(tpot_ms_p50_ci_low=records.tpot_ms_p50 * 0.9,
                             tpot_ms_p50_ci_high=records.tpot_ms_p50 * 1.1)
    ci = compare(with_ci, "tpot_ms_p50")
    assert set(ci.columns.get_level_values(0)) == {"tpot_ms_p50", "tpot_ms_p50_ci_low", "tpot_ms_p50_ci_high"}
    assert (ci["tpot_ms_p50_ci_low"] < ci["tpot_ms_p50"]).all().all()
    with pytest.raises(ValueError, match="latest"):
        compare(pd.concat([records, records.iloc[[0]]]), "tpot_ms_p50")


def test_speedup_against_a_baseline(records):
    ratio = speedup(records, "output_tok_s", "engine_name=hf")
    hf = records.engine_name == "hf"
    assert (ratio[hf] == 1.0).all()
    for i, r in records[~hf].iterrows():
        base = records[hf & (records.batch_size == r.batch_size)].output_tok_s.iloc[0]
        assert ratio[i] == r.output_tok_s / base
    assert select(records, "engine_name=llamacpp,batch_size=2").sum() == 1
    with pytest.raises(ValueError, match="no successful run"):
        speedup(records, "output_tok_s", "engine_name=vllm")
    with pytest.raises(ValueError, match="several runs"):  # both engines at the same batch size
        speedup(records, "output_tok_s", "model_name=smollm2-135m")


def test_export_round_trips_through_csv_and_parquet(records, tmp_path):
    parquet = pd.read_parquet(export(records, tmp_path / "runs.parquet"))
    assert list(parquet.columns) == list(records.columns)
    assert parquet.output_tok_s.tolist() == records.output_tok_s.tolist()
    csv = pd.read_csv(export(records, tmp_path / "runs.csv"))
    assert csv.ttft_ms_p99.tolist() == records.ttft_ms_p99.tolist()
    for back in (parquet, csv):  # raw samples survive as JSON text
        assert [json.loads(s) for s in back.request_samples] == records.request_samples.tolist()
        assert back.run_id.tolist() == records.run_id.tolist()
    with pytest.raises(ValueError, match="csv or .parquet"):
        export(records, tmp_path / "runs.xlsx")


def test_example_script_reproduces_the_table_and_a_plot(sweep, tmp_path):
    png = tmp_path / "throughput.png"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "compare_engines.py"), str(sweep), str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| model | configuration | status | batch" in proc.stdout and "llamacpp Q4_1" in proc.stdout
    assert png.stat().st_size > 10_000
