"""Outlier migration as an ONNX rewrite: FP32-exact, ranges of the migrated tensors, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tinymodel
from onnx import TensorProto, helper, numpy_helper

from calib.batching import encode, iter_batches
from calib.errors import InputError
from calib.fakequant import output_error
from calib.methods import compute_ranges
from calib.model import load_tokenizer
from calib.placement import weighted_matmuls
from calib.smooth import (
    SUFFIX,
    _relative_output_delta,
    find_attention_folds,
    max_output_delta,
    parse_alpha,
    plan_migration,
    smooth_model,
    smoothing_scales,
)
from calib.stats import ActivationStats, StatsConfig, collect_statistics

LN = "embeddings/LayerNorm_out"


def _outlier_model(tmp_path):
    """The tiny classifier with two embedding channels blown up 30x (BERT-like outlier channels)."""
    model = tinymodel.build_model()
    for t in model.graph.initializer:
        if t.name in ("emb_ln_g", "layer.0.ln1_g"):
            g = numpy_helper.to_array(t).copy()
            g[[3, 11]] = 30.0
            t.CopyFrom(numpy_helper.from_array(g, t.name))
    path = tmp_path / "outliers.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def encoded(tiny_spec):
    texts, _ = tinymodel.make_texts(60, seed=3)
    return encode(load_tokenizer(tiny_spec.tokenizer_dir), texts, max_length=tiny_spec.max_length)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, tiny_spec, encoded):
    path = _outlier_model(tmp_path_factory.mktemp("smooth"))
    stats = collect_statistics(path, encoded, config=StatsConfig(batch_size=16, sample_rows=256))
    return path, stats


def _feeds(tiny_spec, encoded, n=3):
    return [b.feeds for b, _ in zip(iter_batches(encoded, tiny_spec.input_dtypes, 16), range(n))]


def test_parse_alpha():
    assert parse_alpha("auto") == "auto" and parse_alpha("0.5") == 0.5 and parse_alpha(None) is None
    for bad in ("0", "1", "1.5", "-0.2", "nan", "high", 0.0, 1.0):
        with pytest.raises(InputError):
            parse_alpha(bad)


def test_scales_formula():
    s = smoothing_scales(np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]), 0.5)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])


@pytest.mark.parametrize("alpha", [0.5, 0.8, "auto"])
def test_rewrite_keeps_fp32_outputs(tiny_spec, encoded, outlier, tmp_path, alpha):
    path, stats = outlier
    result = smooth_model(path, stats, tmp_path / "s.onnx", alpha)
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert result.parent_sha256 != result.sha256
    migrated = result.migrated
    if alpha != "auto":  # every weighted MatMul input with channel statistics, incl. GELU -> FFN down
        assert set(migrated) == set(weighted_matmuls(onnx.load(str(path))))
    assert LN in migrated  # the outlier tensor is always worth migrating
    readers = [n for n in model.graph.node if LN + SUFFIX in n.input]
    assert {n.name for n in readers} == {f"layer.0/attention/{p}/MatMul" for p in ("query", "key", "value")}
    assert any(n.op_type == "Add" and LN in n.input for n in model.graph.node)  # the residual keeps X
    delta = max_output_delta(path, result.path, _feeds(tiny_spec, encoded))
    assert set(delta) == {"logits", "embedding"} and max(delta.values()) < 1e-4, delta


def test_migrated_range_and_error_drop(tiny_spec, encoded, outlier, tmp_path):
    path, stats = outlier
    result = smooth_model(path, stats, tmp_path / "s.onnx", 0.5)
    t = next(t for t in result.plan.migrated if t.tensor == LN)
    assert t.absmax_after < t.absmax_before / 3  # the 30x channels were flattened
    # the range of the migrated tensor, recomputed on the rewritten model, is max_j absmax_j / s_j
    again = collect_statistics(result.path, encoded, [t.smoothed], config=StatsConfig(batch_size=16, channel_stats=False))
    assert compute_ranges(again, "minmax").amax[t.smoothed] == pytest.approx(t.absmax_after, rel=1e-5)
    # simulated INT8 error at the Q/K/V outputs drops
    ch = stats.channels(LN)
    model = onnx.load(str(path))
    w = np.concatenate([numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == m.weight))
                        for m in weighted_matmuls(model)[LN]], axis=1).astype(np.float64)
    s = result.plan.scales[LN]
    x = ch.sample.astype(np.float64)
    assert output_error(x / s, w * s[:, None], t.absmax_after, reference=x @ w) < 0.5 * output_error(x, w, t.absmax_before)
    auto = smooth_model(path, stats, tmp_path / "a.onnx", "auto")
    ta = next(t for t in auto.plan.tensors if t.tensor == LN)
    assert ta.alpha is not None and ta.error_after < ta.error_before
    for t in auto.plan.tensors:
        if t.alpha is None:
            assert t.tensor not in auto.migrated and t.tensor in auto.plan.not_migrated


def test_bad_input(tiny_spec, encoded, outlier, tmp_path):
    path, stats = outlier
    with pytest.raises(InputError, match="between 0 and 1"):
        smooth_model(path, stats, tmp_path / "x.onnx", 1.2)
    # statistics written before per-channel statistics existed
    stats.save(tmp_path / "old")
    old = ActivationStats(stats.model_sha256, tuple(t for t in ActivationStats.load(tmp_path / "old").tensors), stats.bins,
                          stats.histogram, stats.texts, stats.tokens, stats.batches, stats.seconds, has_channels=False)
    with pytest.raises(InputError, match="calib calibrate --calibration-set cs-1"):
        plan_migration(onnx.load(str(path)), old, 0.5, recompute="calib calibrate --calibration-set cs-1")
    assert not (tmp_path / "x.onnx").exists()


def test_graph_without_a_migratable_pattern_says_nothing_was_migrated(tmp_path, encoded, tiny_spec):
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Add", ["f", "one"], ["logits"], name="add")]
    graph = helper.make_graph(nodes, "plain", [x], [y], [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "plain.onnx"))
    stats = ActivationStats("sha", (), 4096, "stream", 0, 0, 0, 0.0)
    result = smooth_model(tmp_path / "plain.onnx", stats, tmp_path / "p.onnx", 0.5)
    assert not result.migrated and "nothing was migrated" in result.summary()


def _mul_count(path) -> int:
    return sum(n.op_type == "Mul" for n in onnx.load(str(path)).graph.node)


def test_attention_folds_are_exact_and_add_no_op(tiny_spec, encoded, outlier, tmp_path):
    path, stats = outlier
    folds = find_attention_folds(onnx.load(str(path)))
    assert [(f.kind, f.matmul) for f in folds] == [
        (kind, f"layer.{i}/attention/{name}/MatMul") for i in range(2) for kind, name in (("qk", "scores"), ("pv", "context"))]
    smooth_model(path, stats, tmp_path / "plain.onnx", 0.5)
    feeds = _feeds(tiny_spec, encoded)
    folded = smooth_model(path, stats, tmp_path / "fold.onnx", 0.5, attention=True, check_feeds=feeds)
    assert not folded.attention_dropped
    assert {f.kind for f in folded.plan.attention} == {"qk", "pv"}
    contexts = [t for t in folded.plan.migrated if t.via == "fold"]
    assert {t.tensor for t in contexts} == {f"layer.{i}/attention/context_merge_out" for i in range(2)}
    assert all(t.smoothed == t.tensor for t in contexts)
    # the contexts' Mul ops are gone: their scales live in V's weights and biases
    assert _mul_count(tmp_path / "fold.onnx") == _mul_count(tmp_path / "plain.onnx") - len(contexts)
    assert _relative_output_delta(path, folded.path, feeds) < 5e-4  # float rounding (scores of this outlier model are large)
    # the folds rescale Q, K and V: their values change, and those tensors are listed for re-ranging
    changed = set(folded.plan.changed_tensors)
    assert {"layer.0/attention/q_t_out", "layer.0/attention/k_t_out", "layer.0/attention/v_t_out"} <= changed
    again = collect_statistics(folded.path, encoded, ["layer.0/attention/v_t_out"],
                               config=StatsConfig(batch_size=16, channel_stats=False))
    assert again["layer.0/attention/v_t_out"].absmax != pytest.approx(stats["layer.0/attention/v_t_out"].absmax, rel=1e-3)
    # Q/K: the exponent is chosen by simulated score error and never makes it worse
    for fold in folded.plan.attention:
        if fold.kind == "qk" and fold.exponent is not None:
            assert fold.error_after < fold.error_before


def test_attention_fold_on_another_head_layout_is_dropped(tiny_spec, encoded, outlier, tmp_path):
    """K split as (dh, heads) instead of (heads, dh): Q's channel c no longer meets K's channel c, so
    folding the same per-channel scales into both would change the scores. The check drops the folds."""
    path, stats = outlier
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 8, 2], np.int64), "shape_heads_swapped"))
    for node in model.graph.node:
        if node.output[0] == "layer.0/attention/k_reshape_out":
            node.input[1] = "shape_heads_swapped"
        if node.output[0] == "layer.0/attention/k_t_out":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("perm", [0, 3, 2, 1]))
    swapped = tmp_path / "swapped.onnx"
    onnx.save(model, str(swapped))
    swapped_stats = collect_statistics(swapped, encoded, config=StatsConfig(batch_size=16, sample_rows=256))
    feeds = _feeds(tiny_spec, encoded)
    result = smooth_model(swapped, swapped_stats, tmp_path / "s.onnx", 0.5, attention=True, check_feeds=feeds)
    assert "dropped" in result.attention_dropped and not result.plan.attention
    assert all(t.via == "mul" for t in result.plan.migrated)
    assert _relative_output_delta(swapped, result.path, feeds) < 1e-5
    with pytest.raises(InputError, match="calibration feeds"):
        smooth_model(path, stats, tmp_path / "n.onnx", 0.5, attention=True)
