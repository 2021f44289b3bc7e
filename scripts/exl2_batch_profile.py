"""Why does ExLlamaV2 decode slower per token at batch 64 than at batch 16? One GPU run, Llama-2-7B widths.

    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3.12 scripts/exl2_batch_profile.py [--layers 4]

A Llama-2-7B-wide model (hidden 4096, MLP 11008, 32 heads, vocab 32000) with only ``--layers`` layers and
random weights is RTN-packed to GPTQ w4g128 (runner/gptq.py), then driven through the engine's own batched
loop. Printed: the median time per decoding step at each batch size (prompt 128 tokens, 32 new tokens
forced), per step and per row; then the CUDA kernels that take the most time in 8 decoding steps at batch
16 and 64 (torch.profiler). ExLlamaV2's GPTQ matmul takes at most 4 rows per pass over a weight below
33 rows and dequantizes the whole weight to fp16 before a cuBLAS GEMM from 33 rows on
(exllamav2_ext/cuda/q_gemm.cu); this shows what that costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCHES = (1, 4, 8, 16, 32, 33, 48, 64)
PROMPT_TOKENS, NEW_TOKENS = 128, 32


def build(work: Path, layers: int) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from runner import gptq
    from runner.random_model import llama_config

    hf_dir, packed = work / "hf", work / "gptq"
    config = llama_config("llama2-7b", bos_token_id=1, eos_token_id=2)  # the seed's shapes, fewer layers
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).half()
    model.save_pretrained(hf_dir)
    del model
    torch.cuda.empty_cache()
    packed.mkdir()
    gptq.rtn_checkpoint(str(hf_dir), packed, gptq.parse_variant("gptq-w4g128"))
    return packed


def prompts_of(batch: int) -> list[list[int]]:
    """``batch`` distinct prompts of PROMPT_TOKENS ids, equal lengths (no padding)."""
    return [[1 + (i * 7 + j) % 31000 for j in range(PROMPT_TOKENS)] for i in range(batch)]


def step_ms(engine, batch: int) -> float:
    """Median gap between consecutive decoding steps, in ms (the engine stamps each step's tokens)."""
    from engines.base import SamplingSpec

    prompts = prompts_of(batch)
    sampling = SamplingSpec(NEW_TOKENS, ignore_eos=True, temperature=0.0)
    engine.generate(prompts, sampling)  # warm-up: cache made, kernels loaded
    times = engine.generate(prompts, sampling)[0].token_times
    return statistics.median(b - a for a, b in zip(times, times[1:])) * 1e3


def top_kernels(engine, batch: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engines.base import SamplingSpec

    prompts = prompts_of(batch)
    engine.generate(prompts, SamplingSpec(8, ignore_eos=True, temperature=0.0))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(prompts, SamplingSpec(8, ignore_eos=True, temperature=0.0))
        torch.cuda.synchronize()
    print(f"\nbatch {batch}: CUDA kernels over a prefill + 8 decoding steps, by total time")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    from engines import get_engine_class
    from engines.exllamav2 import ExLlamaV2EngineConfig

    packed = build(Path(tempfile.mkdtemp(prefix="exl2-profile-")), args.layers)
    engine = get_engine_class("exllamav2")(ExLlamaV2EngineConfig(max_batch_size=max(BATCHES)))
    engine.load(str(packed))
    print(f"{args.layers} layers of Llama-2-7B width, GPTQ w4g128 (RTN); prompt {PROMPT_TOKENS}, {NEW_TOKENS} new")
    print("batch | ms per decoding step | ms per step per row")
    for batch in BATCHES:
        ms = step_ms(engine, batch)
        print(f"{batch:5d} | {ms:8.3f} | {ms / batch:8.4f}", flush=True)
    for batch in (16, 64):
        top_kernels(engine, batch)
    engine.close()


if __name__ == "__main__":
    main()
