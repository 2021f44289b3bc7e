"""The runner.results helpers (latest, compare, speedup, select, export, workload labels) on the records of
the shared real sweep (conftest's `sweep`), and on copies of them as other workloads and reruns."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from runner.plots import palette, per_batch_figure
from runner.report import configuration, prepare
from runner.results import PROMPTS_HASH, compare, export, latest, select, speedup
from tests.helpers import frame, rerun

pytestmark = pytest.mark.slow  # every test reads the real sweep (CLI subprocesses)


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
