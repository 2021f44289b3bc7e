"""Experiment presets (conf/experiment/): each composes and validates for every point of its grid, a CPU one
runs end to end, and the report tables it in its study's layout."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from runner.config import register_configs, to_bench_config
from runner.experiments import PRESETS_DIR, experiment_table, published_figures, time_split
from tests.helpers import IN_PROCESS, ROOT, TINY

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def _compose(overrides: list[str], hydra_config: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=hydra_config)


def _grid(preset: str) -> dict[str, str]:
    return dict(_compose([f"+experiment={preset}"], hydra_config=True).hydra.sweeper.params)


def test_the_seed_studies_and_a_cpu_one_are_presets():
    assert {"seed_engines", "seed_quantization", "seed_serving", "cpu_engines"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_point_of_a_preset_grid_is_a_valid_config(preset):
    """Each value of each swept key, composed with the preset, passes the same checks a run makes."""
    grid = _grid(preset)
    assert grid, f"{preset} sweeps nothing"
    for key, values in grid.items():
        for value in str(values).split(","):
            cfg = _compose([f"+experiment={preset}", f"{key}={value}"])
            bench = to_bench_config(cfg)  # the typed schemas: unknown keys, wrong types
            assert bench.experiment == preset
            bench.engine.validate()


def test_seed_engines_is_the_eight_engine_table():
    grid = _grid("seed_engines")
    assert grid["engine"].split(",") == ["hf", "hf_int8", "hf_nf4", "llamacpp", "ctranslate2_fp16", "exllamav2",
                                         "vllm", "vllm_gptq"]
    assert grid["batch_size"] == "1,4,16,64"
    cfg = to_bench_config(_compose(["+experiment=seed_engines", "engine=ctranslate2_fp16"]))
    assert cfg.engine.compute_type.value == "float16" and cfg.generation.max_new_tokens == 200
    assert cfg.model.name == "llama2-7b-random" and cfg.dataset.limit == cfg.batch_size  # one batch a point


def test_the_experiment_table_puts_configurations_by_batch_size():
    rows = pd.DataFrame([
        {"configuration": "vllm float16", "batch_size": 1, "status": "ok", "output_tok_s": 215.5,
         "output_tok_s_ci_low": 214.0, "output_tok_s_ci_high": 217.0, "load_s": 100.0, "measured_region_s": 5.0,
         "point_wall_s": 120.0},
        {"configuration": "vllm float16", "batch_size": 64, "status": "oom", "output_tok_s": None,
         "output_tok_s_ci_low": None, "output_tok_s_ci_high": None, "load_s": 90.0, "measured_region_s": None,
         "point_wall_s": 95.0},
        {"configuration": "hf float16", "batch_size": 1, "status": "ok", "output_tok_s": 42.7,
         "output_tok_s_ci_low": None, "output_tok_s_ci_high": None, "load_s": 10.0, "measured_region_s": 8.0,
         "point_wall_s": 20.0},
    ])
    table = experiment_table(rows)
    assert list(table.columns) == ["configuration", "batch 1", "batch 64"]
    assert table.values.tolist() == [["vllm float16", "215.5 [214.0, 217.0]", "oom"], ["hf float16", "42.7", "—"]]
    assert time_split(rows) == ("Time over its 3 points: engine starts (model loads) 200.0 s, "
                                "measured regions 13.0 s, everything else 22.0 s (of 235.0 s in all).")


def test_published_figures_name_options_and_batch_sizes_of_their_preset():
    """A preset's published figures (conf/experiment/<name>.published.csv) can only name engine options and
    batch sizes its grid sweeps, or the report would match them to nothing."""
    files = sorted(PRESETS_DIR.glob("*.published.csv"))
    assert [f.name for f in files] == ["seed_engines.published.csv"]
    for path in files:
        name = path.name.removesuffix(".published.csv")
        figures, source = published_figures(name)
        grid = _grid(name)
        assert set(figures.engine) <= set(grid["engine"].split(",")), figures.engine
        assert set(figures.batch_size.astype(str)) <= set(grid["batch_size"].split(","))
        assert (figures.output_tok_s > 0).all() and figures.source_label.notna().all()
        assert "A100" in source  # the comment says where the figures come from
    assert published_figures("cpu_engines") is None


def test_the_source_figure_sits_beside_ours_by_engine_option():
    rows = pd.DataFrame([
        {"configuration": "vllm float16 gptq_marlin", "batch_size": 1, "status": "ok", "output_tok_s": 273.1,
         "overrides": "engine=vllm_gptq batch_size=1 +experiment=seed_engines"},
        {"configuration": "vllm float16", "batch_size": 1, "status": "ok", "output_tok_s": 209.4,
         "overrides": "engine=vllm batch_size=1 +experiment=seed_engines"},
        {"configuration": "vllm float16", "batch_size": 4, "status": "ok", "output_tok_s": 823.4,
         "overrides": "engine=vllm batch_size=4 +experiment=seed_engines"},
        {"configuration": "hf float16", "batch_size": 1, "status": "ok", "output_tok_s": 29.5,
         "overrides": "+experiment=seed_engines"},  # the preset's default engine: no option to match
    ])
    published = pd.DataFrame({"engine": ["vllm", "vllm_gptq"], "batch_size": [1, 1], "output_tok_s": [81.32, 81.65],
                              "source_label": ["vLLM", "vLLM + GPTQ"]})
    table = experiment_table(rows, published)
    assert list(table.columns) == ["configuration", "batch 1", "batch 4", "source, batch 1"]
    assert table.values.tolist() == [["vllm float16 gptq_marlin", "273.1", "—", "81.65 (vLLM + GPTQ)"],
                                     ["vllm float16", "209.4", "823.4", "81.32 (vLLM)"],
                                     ["hf float16", "29.5", "—", "—"]]


@pytest.mark.slow
def test_the_cpu_preset_runs_and_the_report_tables_it(run_cli, tmp_path):
    """`batch_size=1` on the command line narrows the preset's grid (command-line overrides win)."""
    proc = run_cli("-m", "+experiment=cpu_engines", "batch_size=1", "measure.repetitions=2", IN_PROCESS, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("outputs/multirun/*/*/*/record.json")]
    assert sorted(r["engine_name"] for r in records) == ["ctranslate2", "hf", "llamacpp"]
    assert all(r["status"] == "ok" and r["experiment"] == "cpu_engines" and r["batch_size"] == 1 for r in records)
    from runner.report import main

    assert main([str(tmp_path / "outputs"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    section = report[report.index("## Experiment `cpu_engines`"):]
    assert "| configuration | batch 1 |" in section
    for record in records:
        assert f"{record['output_tok_s']:,.1f} [" in section  # its figure, with its interval (2 repetitions)
    assert "Time over its 3 points" in section and "everything else" in section
    assert all(r["point_wall_s"] > r["load_s"] + r["measured_region_s"] for r in records)
