"""GPTQ of real weights with gptqmodel, calibrated on ShareGPT prompts far from any benchmark slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engines.base import Requirement, require
from runner.gptq.layout import (CALIBRATION, COPIED_FILES, CalibrationSpec, GPTQSpec, dynamic_overrides,
                                linear_shapes)

GPTQMODEL = Requirement("gptqmodel", "pip install -e '.[gptq]'")  # GPTQ of real weights (random ones: RTN)

def calibration_prompts(hf_dir: str, calibration: CalibrationSpec) -> list[list[int]]:
    from transformers import AutoTokenizer

    from runner.config import ShareGPTConfig
    from runner.data import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    dataset = ShareGPTConfig(offset=calibration.offset, limit=calibration.samples,
                             min_prompt_tokens=calibration.min_tokens, max_prompt_tokens=calibration.max_tokens)
    return load_prompts(dataset, tokenizer)


def gptqmodel_checkpoint(hf_dir: str, out: Path, spec: GPTQSpec,
                         calibration: CalibrationSpec = CALIBRATION) -> None:
    """GPTQ with gptqmodel on ShareGPT calibration prompts; ``GPTQMODEL_CPU_WORKERS`` defaults to the cores (at least 2)."""
    import os

    import torch

    # gptqmodel 7.6's model loader takes 2 workers from its CPU pool and refuses a pool of 1 (what it makes of one
    # core, e.g. a CI worker pinned to its own core): never fewer than 2
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, len(os.sched_getaffinity(0)))))
    gptqmodel = require(GPTQMODEL)
    prompts = calibration_prompts(hf_dir, calibration)
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    shapes = linear_shapes(config)
    # act_group_aware off: gptqmodel refuses it on the per-channel (group_size -1) modules.
    # mse=2.4: each group's scale from the GPTQ paper's clipping search (shrink max|w| while the L^2.4 error
    # falls), not max|w|. Without it GPTQ's result is chaotic in float rounding: the same code and calibration
    # on other matmul kernels (AMX or not, 1 or 2 threads, bf16 or fp32) changes ~19% of the 4-bit codes, and
    # 2 of 9 such SmolLM2 builds (this machine's AMX bf16 one among them) lost " Paris" and fell below RTN in
    # tests/test_gptq.py, though held-out KL to float32 was 0.50-0.54 in all (RTN 0.57). With it, 6 of 6
    # builds: KL 0.37-0.39, " Paris" by a wider logit margin than RTN's. Costs ~3x the CPU time.
    quantize_config = gptqmodel.QuantizeConfig(bits=spec.bits, group_size=spec.group_size, sym=True,
                                               desc_act=False, act_group_aware=False, mse=2.4,
                                               dynamic=dynamic_overrides(shapes, spec) or None)
    # gptqmodel calibrates in bfloat16 on any CPU (its auto_dtype) and saves the unquantized tensors so;
    # float32 (no slower here with mse) keeps them exact until the float16 cast below, as rtn_checkpoint does.
    dtype = {} if torch.cuda.is_available() else {"dtype": torch.float32}
    model = gptqmodel.GPTQModel.load(hf_dir, quantize_config, **dtype)
    model.quantize([{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
                    for ids in prompts], batch_size=1)
    model.save(str(out))
    _to_float16(out)
    saved = json.loads((out / "config.json").read_text())
    saved["quantization_config"].setdefault("checkpoint_format", "gptq")
    saved["torch_dtype"] = saved["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(saved, indent=2))
    for name in COPIED_FILES:
        if (Path(hf_dir) / name).is_file() and not (out / name).exists():
            shutil.copy(Path(hf_dir) / name, out / name)


def _to_float16(out: Path) -> None:
    """Cast the unquantized float tensors gptqmodel saved in the model dtype (embeddings, norms, LM head) to
    float16, as vLLM's gptq kernels and ExLlamaV2 expect; qweight/qzeros/g_idx are ints, scales float16."""
    import os

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    total = 0
    for path in sorted(out.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        if any(t.is_floating_point() and t.dtype != torch.float16 for t in tensors.values()):
            tensors = {name: t.half() if t.is_floating_point() else t for name, t in tensors.items()}
            save_file(tensors, f"{path}.tmp", metadata=metadata)
            os.replace(f"{path}.tmp", path)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = out / "model.safetensors.index.json"
    if index.is_file():  # sharded: its total_size counts the bytes the cast changed
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))
