#!/usr/bin/env bash
# The CPU table of docs/results/: every CPU engine x batch 1/4/16 on SmolLM2-135M, real ShareGPT prompts.
#   bash scripts/cpu_table.sh [OUTDIR]      (default outputs/cpu-table)
set -uo pipefail
out=${1:-outputs/cpu-table}
common="dataset.limit=16 generation.max_new_tokens=32"
python -m runner -m hydra.sweep.dir="$out/hf" engine=hf engine.dtype=float32 engine.quantization=none,int8,nf4 batch_size=1,4,16 $common
python -m runner -m hydra.sweep.dir="$out/llamacpp" engine=llamacpp batch_size=1,4,16 $common
python -m runner -m hydra.sweep.dir="$out/ct2" engine=ctranslate2 engine.compute_type=int8,float32 batch_size=1,4,16 $common
python -m runner.report "$out" --csv "$out/table.csv"
