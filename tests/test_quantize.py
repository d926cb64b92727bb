"""Q/DQ models from our ranges (calib.quantize) on the tiny BERT-like model."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import tinymodel
from absmax import absmax_ranges, run_both

from calib.engines.ort import OrtEngine, OrtSessionLoader, optimized_op_counts
from calib.errors import InputError
from calib.placement import Placement
from calib.quantize import quantize_qdq, quantized_around

NORM_OPS = ("LayerNormalization", "Softmax")


@pytest.fixture(scope="module")
def amax(tiny_spec):
    texts, _ = tinymodel.make_texts(64, seed=7)
    return absmax_ranges(tiny_spec, texts, preset="all")


@pytest.fixture(scope="module")
def eval_texts():
    return tinymodel.make_texts(120, seed=1)[0]


@pytest.fixture(scope="module")
def trt_qdq(tiny_spec, amax, tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq") / "trt.onnx"
    return quantize_qdq(tiny_spec.onnx_path, amax, Placement("tensorrt"), out)


def _fp32(spec):
    return OrtEngine(OrtSessionLoader(spec.onnx_path, threads=1))


def test_tensorrt_preset_agrees_with_fp32(tiny_spec, trt_qdq, eval_texts):
    # Tolerances for a 16-wide random model (coarser than MiniLM): top-1 agreement >= 95 %,
    # mean embedding cosine >= 0.98, worst >= 0.95, mean |logit diff| below 25 % of mean |logit| (measured: 15 %).
    a, b = run_both(_fp32(tiny_spec), OrtEngine(OrtSessionLoader(trt_qdq.path, threads=1)), tiny_spec, eval_texts)
    cos = np.sum(a["embedding"] * b["embedding"], axis=1)
    assert np.mean(a["logits"].argmax(1) == b["logits"].argmax(1)) >= 0.95
    assert cos.mean() >= 0.98 and cos.min() >= 0.95
    assert np.abs(a["logits"] - b["logits"]).mean() <= 0.25 * np.abs(a["logits"]).mean()
    assert not np.allclose(a["logits"], b["logits"], atol=1e-6)  # it really is quantized


def test_tensorrt_preset_keeps_layernorm_softmax_and_residuals_float(trt_qdq, tiny_spec, amax, tmp_path):
    model = onnx.load(str(trt_qdq.path))
    assert quantized_around(model, NORM_OPS) == {}
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    readers = {n.op_type for n in model.graph.node if any(i in dq_outputs for i in n.input)}
    assert readers == {"MatMul"}  # residual Adds, LayerNorm, Softmax, GELU read float values
    # the graph outputs are still produced by float ops, not by a DequantizeLinear
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert {producers[o.name] for o in model.graph.output} <= {"Add", "Div"}
    # the check itself fails on a placement that does quantize them
    every = quantize_qdq(tiny_spec.onnx_path, amax, Placement("all"), tmp_path / "all.onnx")
    around = quantized_around(onnx.load(str(every.path)), NORM_OPS)
    assert any("LayerNorm" in name for name in around)


def test_symmetric_int8_per_channel_weights_no_bias_quantization(trt_qdq):
    model = onnx.load(str(trt_qdq.path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # weights keep their float values behind a Q -> DQ pair (AddQDQPairToWeight, as TensorRT wants)
    weight_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
    assert len(weight_q) == len(trt_qdq.quantized_nodes) - 4  # all but the 4 activation-only attention MatMuls
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: zero point must be int8 0"
    for q in weight_q:
        weight, scale = inits[q.input[0]], inits[q.input[1]]
        assert weight.dtype == np.float32 and scale.shape == (weight.shape[1],)  # one scale per output channel
        assert {a.name: a.i for a in q.attribute}.get("axis") == 1
        assert np.allclose(scale, np.abs(weight).max(axis=0) / 127, rtol=1e-6)  # symmetric
    assert not any(t.dtype == np.int32 for t in inits.values())  # biases stay float


def test_onnxruntime_runs_integer_kernels(trt_qdq):
    ops = optimized_op_counts(trt_qdq.path)
    integer = ops.get("MatMulIntegerToFloat", 0) + ops.get("QLinearMatMul", 0)
    assert integer == len([n for n in trt_qdq.quantized_nodes if "MatMul" in n and "classifier" not in n])
    assert ops.get("MatMul", 0) == 0  # no float MatMul left behind a DequantizeLinear


def test_nonfinite_and_zero_ranges_are_left_in_float(tiny_spec, amax, tmp_path):
    assert np.isinf(amax["mask/where_out"])  # Where(mask, 0, -inf)
    ranges = dict(amax, **{"embeddings/add0_out": 0.0})
    result = quantize_qdq(tiny_spec.onnx_path, ranges, Placement("all"), tmp_path / "all.onnx")
    assert "non-finite" in result.skipped_tensors["mask/where_out"]
    assert "zero" in result.skipped_tensors["embeddings/add0_out"]
    assert "layer.0/attention/scores/Add" in result.excluded_nodes
    assert "embeddings/add1" in result.excluded_nodes  # needs embeddings/add0_out
    assert "layer.0/attention/scores/Add" not in result.quantized_nodes
    assert result.rangeless_tensors == ()  # unusable ranges are not missing ones
    assert result.blocked_nodes["embeddings/add1"] == ("embeddings/add0_out",)
    OrtEngine(OrtSessionLoader(result.path, threads=1))  # still a valid model


def test_missing_and_unknown_ranges_are_listed(tiny_spec, amax, tmp_path):
    ranges = {k: v for k, v in amax.items() if k != "layer.1/output/dense/MatMul_out"}
    ranges.pop("layer.1/intermediate/gelu/Mul_1_out")
    ranges["no/such/tensor"] = 1.0
    with pytest.warns(UserWarning, match="no/such/tensor"):
        result = quantize_qdq(tiny_spec.onnx_path, ranges, Placement("tensorrt"), tmp_path / "q.onnx")
    assert result.unknown_tensors == ("no/such/tensor",)
    assert result.skipped_tensors["layer.1/intermediate/gelu/Mul_1_out"].startswith("no range")
    assert "layer.1/output/dense/MatMul" in result.excluded_nodes
    assert "layer.1/output/dense/MatMul" not in result.quantized_nodes
    assert "layer.0/output/dense/MatMul" in result.quantized_nodes
    # typed, so no caller matches the reason text: which tensors had no range, which nodes they kept in float
    assert "layer.1/intermediate/gelu/Mul_1_out" in result.rangeless_tensors
    assert "layer.1/intermediate/gelu/Mul_1_out" in result.blocked_nodes["layer.1/output/dense/MatMul"]
    assert set(result.blocked_nodes) <= set(result.excluded_nodes)


def test_exclusions_by_name_and_unsupported_ops_are_recorded(tiny_spec, amax, tmp_path):
    placement = Placement("tensorrt", exclude_nodes=("layer.0/attention/*",), include_op_types=("MatMul", "Shape"))
    result = quantize_qdq(tiny_spec.onnx_path, amax, placement, tmp_path / "q.onnx")
    assert result.excluded_nodes["layer.0/attention/query/MatMul"] == "excluded by name"
    assert "not supported" in result.excluded_nodes["embeddings/shape"]
    model = onnx.load(str(result.path))
    node = next(n for n in model.graph.node if n.name == "layer.0/attention/query/MatMul")
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in node.input)
    assert "layer.1/attention/query/MatMul" in result.quantized_nodes


def test_bad_inputs(tiny_spec, amax, tmp_path):
    with pytest.raises(InputError, match="no ranges"):
        quantize_qdq(tiny_spec.onnx_path, {}, Placement("tensorrt"), tmp_path / "q.onnx")
    with pytest.raises(InputError, match="no node"):
        quantize_qdq(tiny_spec.onnx_path, amax, Placement("tensorrt", include_nodes=("nothing*",)), tmp_path / "q.onnx")
    with pytest.raises(InputError, match="unknown placement"):
        quantize_qdq(tiny_spec.onnx_path, amax, Placement("fastest"), tmp_path / "q.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean range set raises no warning
        quantize_qdq(tiny_spec.onnx_path, amax, Placement("tensorrt"), tmp_path / "q.onnx")
    assert not list(tmp_path.glob(".*tmp"))


def test_every_preset_has_a_title():
    from calib.placement import PRESET_TITLES, PRESETS

    assert set(PRESET_TITLES) == set(PRESETS) and all(PRESET_TITLES[p].startswith(p) for p in PRESETS)
