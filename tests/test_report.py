"""The report and the runner.results helpers, on records the real CLI wrote (SmolLM2 on CPU; no mocks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from runner.plots import add_roofline, palette, per_batch_figure
from runner.records import RECORD_NAME, write_json_atomic
from runner.report import COLUMNS, configuration, decode_rate_caption, main, markdown, prepare, table
from runner.results import (PROMPTS_HASH, RAW_SAMPLE_COLUMNS, compare, export, labelled, latest, load_results,
                            record_paths, select, speedup)
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


@pytest.fixture(scope="module")
def raw(sweep) -> list[dict]:
    """The sweep's records as the runner wrote them (JSON dicts), to derive other workloads from."""
    return [json.loads(path.read_text()) for path in record_paths(sweep)]


def rerun(records: list[dict], minutes: int = 1, **changes) -> list[dict]:
    """Copies of records as if run `minutes` later with `changes` (e.g. another workload: dataset_offset=4)."""
    return [{**r, **changes, "run_id": f"{r['run_id']}-{uuid.uuid4().hex[:8]}",
             "started_at": (pd.Timestamp(r["started_at"]) + pd.Timedelta(minutes=minutes)).isoformat()}
            for r in records]


def write_records(root, records: list[dict]):
    for i, record in enumerate(records):
        write_json_atomic(root / f"{i:03d}" / RECORD_NAME, record)
    return root


def frame(*runs: list[dict]) -> pd.DataFrame:
    """A DataFrame of the records, as load_results makes it (through files; the labels come with it)."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_results(write_records(Path(tmp), [r for records in runs for r in records]))


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
    rows = markdown_rows((report / "report.md").read_text(), "| model | configuration | status | batch | workload")
    assert len(rows) == len(records) == 4
    by_key = {(configuration(r), r.batch_size): r for _, r in records.iterrows()}
    for row in rows:
        record = by_key[(row["configuration"], int(row["batch"]))]
        assert row["status"] == "ok" and row["workload"] == "sharegpt[0:4] 8 tok"  # tests.conftest.FAST
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
    proc = run_cli("engine.device=cuda", *FAST)
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


def test_plots_draw_one_line_per_configuration_and_workload(raw):
    rows = prepare(frame(raw, rerun(raw, dataset_offset=4)))
    colours = palette(rows)
    fig = per_batch_figure(rows, colours, "output throughput", "tok/s", lambda runs: runs["output_tok_s"])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4  # 2 configurations x 2 workloads; one line of each never joins two workloads
    assert all(list(line.get_xdata()) == [1, 2] for line in lines)
    assert {line.get_marker() for line in lines} == set(colours.markers.values()) and len(colours.markers) == 2
    for line in lines:  # each line holds its own runs' values
        name, work = line.get_label().split(" · ")
        runs = rows[(rows.configuration == name) & (rows.workload == work)].sort_values("batch_size")
        assert list(line.get_ydata()) == runs.output_tok_s.tolist()


def test_compare_on_reruns_says_a_fix_that_works(raw, records):
    """Several workloads, a rerun and a config that differs only in a setting the short label leaves out:
    compare(df) refuses, and the call it suggests, compare(latest(df), ...), works."""
    hf = [r for r in raw if r["engine_name"] == "hf"]
    df = frame(raw, rerun(raw, dataset_offset=4), rerun(hf, engine_attn_implementation="eager"),
               rerun(raw[:1], minutes=2, dataset_offset=4))  # the last: a rerun
    with pytest.raises(ValueError, match=re.escape("compare(latest(df), ...)")):
        compare(df, "tpot_ms_p50")
    table = compare(latest(df), "tpot_ms_p50")
    sdpa, eager = (f"hf float32 engine_attn_implementation={a}" for a in ("sdpa", "eager"))  # one label each
    assert set(table.columns) == {("sharegpt[0:4] 8 tok", sdpa), ("sharegpt[0:4] 8 tok", eager),
                                  ("sharegpt[0:4] 8 tok", "llamacpp Q4_1"), ("sharegpt[4:8] 8 tok", sdpa),
                                  ("sharegpt[4:8] 8 tok", "llamacpp Q4_1")}
    assert table.loc[1, ("sharegpt[0:4] 8 tok", "llamacpp Q4_1")] == records[
        (records.engine_name == "llamacpp") & (records.batch_size == 1)].tpot_ms_p50.iloc[0]


def test_speedup_refusals_say_a_fix_that_works(raw):
    hf = [r for r in raw if r["engine_name"] == "hf"]
    reruns = frame(raw, rerun(hf))  # the HF runs twice each
    with pytest.raises(ValueError, match=re.escape("speedup(latest(df), ...)")):
        speedup(reruns, "output_tok_s", "engine_name=hf")
    assert speedup(latest(reruns), "output_tok_s", "engine_name=hf").notna().all()
    quantized = frame(raw, rerun(hf, engine_quantization="int8", quantization="int8"))
    with pytest.raises(ValueError, match="engine_quantization") as error:
        speedup(quantized, "output_tok_s", "engine_name=hf")
    query = re.search(r"e\.g\. (\S+)$", str(error.value)).group(1)
    assert query == "engine_name=hf,engine_quantization=none"
    ratio = speedup(quantized, "output_tok_s", query)
    assert (ratio[(quantized.engine_name == "hf") & (quantized.quantization != "int8")] == 1.0).all()


def test_speedup_and_latest_keep_workloads_apart(raw):
    df = frame(raw, rerun(raw, generation_max_new_tokens=16))
    assert len(latest(df)) == 8 and set(df.workload) == {"sharegpt[0:4] 8 tok", "sharegpt[0:4] 16 tok"}
    ratio = speedup(df, "output_tok_s", "engine_name=hf")
    for i, r in df.iterrows():
        base = df[(df.engine_name == "hf") & (df.batch_size == r.batch_size) & (df.workload == r.workload)]
        assert ratio[i] == r.output_tok_s / base.output_tok_s.iloc[0]


def test_readme_pivot_never_averages_two_workloads(raw):
    """The README's pivot groups by the labels load_results adds; short labels that would collide (only the
    length filter differs) get the differing column appended."""
    df = frame(raw, rerun(raw, dataset_max_prompt_tokens=64))
    pivot = df.pivot_table(index=["model_name", "workload", "batch_size"], columns="configuration",
                           values="tpot_ms_p50")
    assert pivot.notna().sum().sum() == len(df) == 8  # one run per cell: nothing averaged
    assert set(df.workload) == {"sharegpt[0:4] 8 tok dataset_max_prompt_tokens=128",
                                "sharegpt[0:4] 8 tok dataset_max_prompt_tokens=64"}


def test_prompts_fingerprint_is_part_of_the_workload_where_present(raw):
    old = [{k: v for k, v in r.items() if k != PROMPTS_HASH} for r in raw]  # records older than the field
    assert PROMPTS_HASH not in frame(old) and len(latest(frame(old))) == 4
    df = frame([{**r, PROMPTS_HASH: "a" * 64} for r in old], rerun(old, **{PROMPTS_HASH: "b" * 64}))
    assert len(latest(df)) == 8
    assert {w.split()[-1] for w in df.workload} == {f"{PROMPTS_HASH}=aaaaaaaa", f"{PROMPTS_HASH}=bbbbbbbb"}


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
