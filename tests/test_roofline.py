"""Roofline figures (MBU, MFU) against arithmetic worked out by hand, and the datasheet table."""

from __future__ import annotations

import json

import pytest

from runner.roofline import (ModelShape, Peak, kv_element_bytes, mbu, measured_peak, mfu, model_shape,
                             roofline_fields, shape_from_hf_config, table_peak)

# Llama-2-7B: 32 layers, hidden 4096, 32 heads (no GQA), head dim 128, MLP 11008, vocab 32000.
LLAMA2_7B = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 11008, "vocab_size": 32000}
H100_SXM = Peak("H100 SXM", 3350.0, 989.4)


def test_mbu_of_a_7b_fp16_model_by_hand():
    # 13.48 GB of fp16 weights read once per step; TPOT 5 ms -> 13.48e9 / 0.005 = 2.696e12 B/s;
    # on 3.35 TB/s that is 2.696 / 3.35 = 0.80478.
    assert mbu(13.48e9, 5.0, 3350.0) == pytest.approx(0.80478, rel=1e-4)


def test_mfu_by_hand():
    # 2 · 7e9 params · 100 tok/s = 1.4e12 FLOP/s of 989.4e12 -> 0.0014150
    assert mfu(7_000_000_000, 100.0, 989.4) == pytest.approx(1.4e12 / 989.4e12)
    assert mfu(7_000_000_000, 100.0, 989.4) == pytest.approx(0.0014150, rel=1e-4)


def test_llama2_7b_shape_by_hand():
    shape = shape_from_hf_config(LLAMA2_7B)
    # per layer: q,k,v,o 4 · 4096² = 67,108,864; MLP 3 · 4096 · 11008 = 135,266,304 -> 202,375,168;
    # · 32 layers = 6,476,005,376; + LM head 32000 · 4096 = 131,072,000 -> 6,607,077,376
    assert shape.matmul_params == 6_607_077_376
    # K and V · 32 layers · 32 heads · 128 = 262,144 values per token (512 KiB at fp16)
    assert shape.kv_values_per_token == 262_144


def test_smollm2_shape_from_its_prepared_model(smollm2_hf):
    shape = model_shape(smollm2_hf)
    # 30 layers of hidden 576, 9 heads, 3 KV heads of 64, MLP 1536: per layer 331,776 (q) + 221,184 (k, v)
    # + 331,776 (o) + 2,654,208 (MLP) = 3,538,944; · 30 = 106,168,320; + LM head 49152 · 576 = 28,311,552.
    assert shape == ModelShape(matmul_params=134_479_872, kv_values_per_token=2 * 30 * 3 * 64)


def test_gguf_metadata_gives_the_same_shape(smollm2_hf):
    from runner.models import gguf_path
    from tests.helpers import smollm2_spec

    assert model_shape(str(gguf_path(smollm2_spec()))) == model_shape(smollm2_hf)


def test_roofline_fields_of_a_batched_7b_decode_by_hand():
    shape = shape_from_hf_config(LLAMA2_7B)
    # 4 prompts in one batch, 100 input and 200 output tokens each; TPOT 20 ms; first token of the batch at 20 ms, of every sequence (the whole prefill) at 50 ms.
    summary = {"prompts": 4, "batches": 1, "input_tokens": 400, "output_tokens": 800, "tpot_ms_mean": 20.0,
               "batch_samples": [{"ttft_ms": 20.0, "prefill_ms": 50.0}]}
    out = roofline_fields(13_480_000_000, shape, kv_element_bytes("float16"), summary, H100_SXM, None)
    # KV read per step: 4 sequences · mean context (100 + 200 / 2 = 200) · 524,288 B = 419,430,400 B
    assert out["kv_bytes_per_token"] == 524_288
    assert out["decode_bytes_per_step"] == 13_480_000_000 + 419_430_400
    # 13,899,430,400 B / 0.020 s / 3.35e12 B/s = 0.207454
    assert out["mbu_table"] == pytest.approx(0.207454, rel=1e-5)
    # decode: 4 · 1000 / 20 = 200 tok/s; 2 · 6,607,077,376 · 200 / 989.4e12 = 0.0026711
    assert out["decode_tok_s"] == pytest.approx(200.0)
    assert out["mfu_decode_table"] == pytest.approx(0.0026711, rel=1e-4)
    # prefill: 400 tokens / 0.050 s = 8000 tok/s -> 0.106848
    assert out["mfu_prefill_table"] == pytest.approx(0.106848, rel=1e-4)
    assert out["mbu_measured"] is None and out["peak_bandwidth_gb_s_table"] == 3350.0


def test_roofline_without_timestamps_is_empty_with_a_reason():
    out = roofline_fields(100, ModelShape(10, 2), 2, {"prompts": 1, "batches": 1, "tpot_ms_mean": None}, H100_SXM,
                          None)
    assert out["mbu_table"] is None and "no TPOT" in out["roofline_note"]


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA A100-SXM4-40GB", "A100 40GB"), ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 5090", "RTX 5090"), ("AMD EPYC", None),
])
def test_datasheet_table_matches_nvml_names(name, expected):
    peak = table_peak(name)
    assert (peak.name if peak else None) == expected


def test_kv_element_bytes_follow_the_activation_type():
    assert [kv_element_bytes(d) for d in ("float32", "int8_float32", "float16", "bfloat16", "Q4_1", None)] == \
        [4, 4, 2, 2, 2, 2]


def test_measured_peak_is_measured_once_and_cached(tmp_path):
    first = measured_peak("cpu", "test cpu", tmp_path)
    assert first.bandwidth_gb_s > 0.1 and first.tflops > 0.001
    cached = list((tmp_path / "roofline").glob("cpu-test-cpu-*.json"))
    assert len(cached) == 1
    data = json.loads(cached[0].read_text())
    data["bandwidth_gb_s"] = 123.0  # a second call reads the file, it does not measure again
    cached[0].write_text(json.dumps(data))
    assert measured_peak("cpu", "test cpu", tmp_path).bandwidth_gb_s == 123.0
