"""Build with outlier migration, bias correction and the residual-Add placement (tiny model)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tinymodel
from onnx import numpy_helper

from calib.build import SMOOTH_FILE, BuildConfig, EngineArtifact, build
from calib.calibrate import CalibrateConfig, RangesRef, calibrate
from calib.errors import InputError
from calib.io import sha256_file
from calib.placement import Placement, residual_add_nodes, resolve_placement
from calib.stats import ActivationStats
from calib.trtcache import read_trt_cache
from tests.test_calibrate_demo import tiny_calibset  # noqa: F401 - fixture

LN = "embeddings/LayerNorm_out"


@pytest.fixture()
def calibration(tiny_calibset, tmp_path):  # noqa: F811
    _, cs_dir = tiny_calibset
    return calibrate(CalibrateConfig(calibration_set=str(cs_dir), methods=("minmax", "percentile"),
                                     placement="tensorrt-residual"), tmp_path / "cal")


def _build(calibration, tiny_spec, out, method="minmax", **kw):
    return build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(calibration.dir), method), **kw), out)


def _bias(model_path, name):
    return next(numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer if t.name == name)


def test_smoothed_build_records_identity_ranges_and_fp32_equivalence(calibration, tiny_spec, tmp_path):
    art = _build(calibration, tiny_spec, tmp_path / "e", method="minmax", smooth="0.5")
    assert art.smoothing_summary == art.smooth_record["summary"] and art.smoothing_migrated
    assert art.smoothing_output_delta == max(art.smooth_record["max_abs_output_delta"].values()) < 1e-3
    assert art.bias_corrected_nodes == 0
    meta = art.meta
    sm = meta["smooth"]
    assert sm["file"] == SMOOTH_FILE and sm["sha256"] == sha256_file(tmp_path / "e" / SMOOTH_FILE)
    assert sm["parent_sha256"] == tiny_spec.sha256 == art.model_sha256  # validation compares against the original
    assert sm["migrated"] == sm["candidates"] > 0 and max(sm["max_abs_output_delta"].values()) < 1e-4
    smoothed = LN + "::smooth"
    assert smoothed in meta["quantized_tensors"] and LN not in meta["quantized_tensors"]
    row = next(t for t in sm["tensors"] if t["tensor"] == LN)
    # minmax range of the migrated tensor, recomputed on the rewritten model = max_j absmax_j / s_j
    assert sm["migrated_amax"][smoothed] == pytest.approx(row["absmax_after"], rel=1e-5)
    cache = read_trt_cache(tmp_path / "e" / "calibration.cache")
    assert cache.scales[smoothed] == pytest.approx(row["absmax_after"] / 127, rel=1e-5)
    assert "--onnx=model.smooth.onnx" in (tmp_path / "e" / "trtexec.sh").read_text()
    fp32, int8 = art.engine("fp32"), art.engine("int8")
    feeds = {"input_ids": np.array([[2, 7, 9, 11, 3]]), "attention_mask": np.ones((1, 5), np.int64),
             "token_type_ids": np.zeros((1, 5), np.int64)}
    assert np.abs(fp32.run(feeds)["logits"] - int8.run(feeds)["logits"]).max() < 0.5


def test_bias_correction_folds_the_weight_shift(calibration, tiny_spec, tmp_path):
    plain = _build(calibration, tiny_spec, tmp_path / "p", method="minmax")
    corrected = _build(calibration, tiny_spec, tmp_path / "c", method="minmax", bias_correction=True)
    bc = corrected.meta["bias_correction"]
    assert bc["nodes"] == sum(1 for n in plain.quantized_nodes if not n.startswith("layer.") or "dense" in n
                              or any(p in n for p in ("query", "key", "value")) or n == "classifier/MatMul")
    # b' = b - mean(X) @ (Q(W) - W) for the Q projection of layer 0
    mean = ActivationStats.load(calibration.dir).channels(LN).mean
    model = onnx.load(str(tiny_spec.onnx_path))
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "layer.0/attention/query.weight")
    scale = np.abs(w).max(axis=0) / 127
    shift = mean @ (np.round(w / scale) * scale - w)
    got = _bias(corrected.qdq_path, "layer.0/attention/query.bias") - _bias(plain.qdq_path, "layer.0/attention/query.bias")
    np.testing.assert_allclose(got, -shift, rtol=1e-3, atol=1e-7)
    both = _build(calibration, tiny_spec, tmp_path / "b", method="percentile", smooth="auto", bias_correction=True)
    assert both.meta["bias_correction"]["nodes"] == bc["nodes"]


def test_residual_placement_quantizes_residual_add_inputs_only(calibration, tiny_spec, tmp_path):
    model = onnx.load(str(tiny_spec.onnx_path))
    residuals = residual_add_nodes(model)
    assert residuals == {f"layer.{i}/{p}/residual" for i in range(2) for p in ("attention/output", "output")}
    resolved = resolve_placement(model, Placement("tensorrt-residual"))
    assert residuals <= set(resolved.nodes) and "layer.0/attention/scores/Add" not in resolved.nodes
    art = _build(calibration, tiny_spec, tmp_path / "r", method="minmax", placement=Placement("tensorrt-residual"))
    assert residuals <= set(art.quantized_nodes)
    qdq = onnx.load(str(art.qdq_path))
    producer = {o: n for n in qdq.graph.node for o in n.output}
    for node in qdq.graph.node:
        if node.name in residuals:
            assert all(producer[i].op_type == "DequantizeLinear" for i in node.input)
            assert all(r.op_type != "QuantizeLinear" for r in qdq.graph.node if node.output[0] in r.input)
        if node.op_type == "Add" and node.name.endswith("dense/Add"):  # bias Adds stay float
            assert producer[node.input[0]].op_type == "MatMul"


def test_bad_requests(calibration, tiny_spec, tmp_path):
    for kw, match in (({"smooth": "1.5"}, "between 0 and 1"), ({"smooth": "0"}, "between 0 and 1"),
                      ({"smooth": "x"}, "alpha")):
        with pytest.raises(InputError, match=match):
            _build(calibration, tiny_spec, tmp_path / "x", method="minmax", **kw)
    calibration.ranges("minmax").save(tmp_path / "r.json")
    with pytest.raises(InputError, match="need a calibration run"):
        build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(tmp_path / "r.json")), smooth="auto"), tmp_path / "x")
    # a calibration run written before per-channel statistics existed
    meta = json.loads((calibration.dir / "stats.json").read_text())
    meta.pop("has_channels")
    (calibration.dir / "stats.json").write_text(json.dumps(meta))
    for kw in ({"smooth": "auto"}, {"bias_correction": True}):
        with pytest.raises(InputError, match="calib calibrate --calibration-set") as info:
            _build(calibration, tiny_spec, tmp_path / "x", method="minmax", **kw)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_cli_build_smooth_flag(tiny_calibset, workspace, capsys):  # noqa: F811
    from calib.cli import main

    run_id, _ = tiny_calibset
    root = str(workspace.root)
    assert main(["--workspace", root, "calibrate", "--calibration-set", run_id, "--method", "minmax"]) == 0
    capsys.readouterr()
    assert main(["--workspace", root, "build", "--calibration", "latest", "--method", "minmax", "--smooth"]) == 0
    out = capsys.readouterr().out
    assert "weighted-MatMul inputs migrated (alpha auto" in out and "FP32 outputs unchanged" in out
    art = EngineArtifact.load(workspace.run_dir(workspace.find_run_id("latest", stage="build")))
    assert art.meta["smooth"]["alpha"] == "auto"


def test_auto_ranges_with_auto_migration(tiny_calibset, tiny_spec, tmp_path):  # noqa: F811
    _, cs_dir = tiny_calibset
    cal = calibrate(CalibrateConfig(calibration_set=str(cs_dir), methods=("auto",)), tmp_path / "cal")
    art = _build(cal, tiny_spec, tmp_path / "e", method="auto", smooth="auto")
    sm = art.meta["smooth"]
    if sm["migrated"]:  # the migrated tensors' ranges are chosen by auto on the rewritten model too
        assert set(sm["migrated_choices"]) == set(sm["migrated_amax"])
        assert all(c["criterion"] == "matmul-output" for c in sm["migrated_choices"].values())
    assert art.meta["ranges"]["method"] == "auto" and len(art.quantized_nodes) > 0


def test_smooth_attention_build_reranges_the_folded_tensors(calibration, tiny_spec, tmp_path):
    plain = _build(calibration, tiny_spec, tmp_path / "p", method="minmax", smooth="0.5").meta
    art = _build(calibration, tiny_spec, tmp_path / "a", method="minmax", smooth="0.5", smooth_attention=True)
    sm = art.meta["smooth"]
    assert "pv" in {a["kind"] for a in sm["attention"]}
    assert max(sm["max_abs_output_delta"].values()) < 1e-4 and "attention:" in sm["summary"]
    context = "layer.0/attention/context_merge_out"  # migrated through V: quantized under its own name, no Mul
    assert context in art.meta["quantized_tensors"] and context + "::smooth" in plain["quantized_tensors"]
    # V's values were rescaled by the fold, so its range was recomputed on the rewritten model
    v = "layer.0/attention/v_t_out"
    assert sm["migrated_amax"][v] != pytest.approx(calibration.ranges("minmax").amax[v], rel=1e-3)


def test_a_build_from_a_calibration_names_the_classes_its_set_knew(workspace, tiny_model_path, tiny_tokenizer_dir,
                                                                    tiny_csv, tiny_spec, tmp_path):
    """engine.json records the class names the calibration set was given, which a validation without
    --labels reads; none given (or a ranges file): none recorded, and the eval data names them."""
    from tests.test_calibrate_demo import _assemble

    labelled = _assemble(workspace, tiny_model_path, tiny_tokenizer_dir, str(tiny_csv), 32, 64,
                         labels=tinymodel.LABELS)
    cal = calibrate(CalibrateConfig(calibration_set=str(workspace.run_dir(labelled)), methods=("minmax",)),
                    tmp_path / "cal")
    art = _build(cal, tiny_spec, tmp_path / "e")
    assert art.labels == tuple(tinymodel.LABELS)
    plain = tmp_path / "plain.json"
    cal.ranges("minmax").save(plain)
    assert build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(plain))), tmp_path / "p").labels == ()


def test_a_search_of_a_build_starts_from_what_the_build_changed(calibration, tiny_spec, tmp_path):
    """A build that migrated outliers (or corrected biases) is searched from the build itself, so every
    candidate is that build with nodes in float; a plain build from its range set and placement."""
    from calib.sensitivity import search_start

    plain = _build(calibration, tiny_spec, tmp_path / "plain", placement=Placement("tensorrt"))
    assert search_start(plain) == {"ranges": plain.config.ranges, "placement": Placement("tensorrt")}
    smoothed = _build(calibration, tiny_spec, tmp_path / "smooth", smooth="0.5", placement=Placement("tensorrt"))
    assert search_start(smoothed) == {"start_from": str(smoothed.dir)}
    corrected = _build(calibration, tiny_spec, tmp_path / "bias", bias_correction=True, placement=Placement("tensorrt"))
    assert search_start(corrected) == {"start_from": str(corrected.dir)}
