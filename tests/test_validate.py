"""Validation stage on the tiny model: metrics, per-layer analysis, bad inputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import tinymodel

from calib.errors import InputError, ModelMismatchError
from calib.pipeline import config_from_params


def absmax_ranges(spec, texts, preset):
    """Per-tensor absmax from an FP32 run with the placement's activations exposed."""
    from calib.batching import encode, iter_batches
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.model import load_tokenizer
    from calib.placement import Placement, resolve_placement

    res = resolve_placement(onnx.load(str(spec.onnx_path)), Placement(preset))
    engine = OrtEngine(OrtSessionLoader(spec.onnx_path, intermediates=res.activation_tensors))
    enc = encode(load_tokenizer(str(spec.tokenizer_dir)), texts, max_length=spec.max_length)
    amax: dict[str, float] = {}
    for batch in iter_batches(enc, spec.input_dtypes, 16):
        out = engine.run(batch.feeds, list(res.activation_tensors))
        for name in res.activation_tensors:
            v = np.abs(out[name])
            v = v[np.isfinite(v)]
            amax[name] = max(amax.get(name, 0.0), float(v.max()) if v.size else 0.0)
    return amax


@pytest.fixture(scope="module")
def tiny_qdq(tiny_spec, tmp_path_factory):
    from calib.placement import Placement
    from calib.quantize import quantize_qdq

    texts, _ = tinymodel.make_texts(64, seed=3)
    amax = absmax_ranges(tiny_spec, texts, "tensorrt")
    path = tmp_path_factory.mktemp("qdq") / "tiny.qdq.onnx"
    quantize_qdq(tiny_spec.onnx_path, amax, Placement("tensorrt"), path)
    return path


def vconfig(tiny_spec, engine, data, **kw):
    from calib.validate import ValidateConfig

    return config_from_params(ValidateConfig, dict(engine=str(engine), model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir),
                          data=str(data), labels=tinymodel.LABELS, max_length=64, edges=(0, 8, 16, 32), **kw))


def test_validate_tiny(tiny_spec, tiny_qdq, tiny_csv, tmp_path):
    from calib.validate import Evaluation, validate

    ev = validate(vconfig(tiny_spec, tiny_qdq, tiny_csv, limit=120, bootstrap=200), tmp_path / "ev")
    again = Evaluation.load(tmp_path / "ev")
    s = again.summary()
    assert s["rows"] == 120 and s["labelled"]
    assert 0.9 <= s["top1_agreement"] <= 1.0 and s["embedding_cosine"] > 0.95
    assert s["accuracy_drop_points"] == pytest.approx(100 * (s["accuracy_fp32"] - s["accuracy_int8"]))
    assert [b["bucket"] for b in ev.buckets] == ["0-7", "8-15", "16-31", "32+"]
    assert sum(b["n"] for b in ev.buckets) == 120
    pred = ev.predictions()
    assert pred["fp32_logits"].shape == (120, 2) and pred["lengths"].shape == (120,)
    # per-layer: every quantized activation has an error row, in network order, with the engine amax
    rows = [r for r in ev.layers["tensors"] if r.get("quantized")]
    assert rows and [r["order"] for r in rows] == sorted(r["order"] for r in rows)
    for r in rows:
        assert r["sqnr_db"] is not None and r["sqnr_db"] > 10
        assert 0.9 < r["cosine"] <= 1.0 + 1e-9
        assert r["ranges"]["methods"]["engine"]["amax"] > 0
        assert r["ranges"]["fp32_p9999"] <= r["ranges"]["fp32_absmax"] * 1.02
    assert ev.data["model"]["sha256"] == tiny_spec.sha256
    assert ev.data["dataset"]["rows_evaluated"] == 120 and ev.data["dataset"]["fingerprint"]


def test_layer_error_finds_a_broken_range(tiny_spec, tiny_csv, tmp_path):
    """A tensor given a tiny amax saturates: its saturation rate and SQNR show it, and it is the first degraded."""
    from calib.placement import Placement
    from calib.quantize import quantize_qdq
    from calib.validate import validate

    texts, _ = tinymodel.make_texts(64, seed=3)
    amax = absmax_ranges(tiny_spec, texts, "tensorrt")
    target = "layer.1/intermediate/gelu/Mul_1_out"
    amax[target] /= 40
    quantize_qdq(tiny_spec.onnx_path, amax, Placement("tensorrt"), tmp_path / "bad.onnx")
    ev = validate(vconfig(tiny_spec, tmp_path / "bad.onnx", tiny_csv, limit=80, bootstrap=0), tmp_path / "ev")
    row = next(r for r in ev.layers["tensors"] if r["tensor"] == target)
    assert row["ranges"]["methods"]["engine"]["saturation_rate"] > 0.3
    assert row["sqnr_db"] < 10 and row["local_sqnr_db"] < 10
    assert ev.layers["first_degraded"] == target


def test_unlabelled_eval_set_gives_agreement_only(tiny_spec, tiny_qdq, tmp_path):
    from calib.validate import validate

    texts, _ = tinymodel.make_texts(30, seed=5)
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "nolabels.csv", index=False)
    ev = validate(vconfig(tiny_spec, tiny_qdq, tmp_path / "nolabels.csv", layers=False), tmp_path / "ev")
    assert not ev.labelled and "agreement-only" in ev.data["dataset"]["note"]
    assert "fp32" not in ev.overall and ev.overall["agreement"]["top1_agreement"] is not None
    assert "accuracy_drop_points" not in ev.summary()


def test_bad_inputs_are_refused_before_writing(tiny_spec, tiny_qdq, tiny_csv, tmp_path):
    from calib.validate import validate

    texts, _ = tinymodel.make_texts(20, seed=5)
    pd.DataFrame({"text": texts, "label": ["neg", "pos", "meh", "neg"] * 5}).to_csv(tmp_path / "odd.csv", index=False)
    with pytest.raises(InputError, match="meh"):
        validate(vconfig(tiny_spec, tiny_qdq, tmp_path / "odd.csv"), tmp_path / "a")
    # an engine made from another model (different weights) is refused
    other = tmp_path / "other.onnx"
    onnx.save(tinymodel.build_model(seed=9), str(other))
    from calib.model import load_model
    from calib.placement import Placement
    from calib.quantize import quantize_qdq

    other_spec = load_model(other, tiny_spec.tokenizer_dir, max_length=64)
    amax = absmax_ranges(other_spec, texts, "tensorrt")
    quantize_qdq(other, amax, Placement("tensorrt"), tmp_path / "other.qdq.onnx")
    with pytest.raises(ModelMismatchError):
        validate(vconfig(tiny_spec, tmp_path / "other.qdq.onnx", tiny_csv), tmp_path / "b")
    # a build folder recording another model's sha256 is refused too
    build = tmp_path / "build"
    build.mkdir()
    (build / "model.qdq.onnx").write_bytes(tiny_qdq.read_bytes())
    from calib.build import FORMAT  # an engine record as calib build writes it, of another model

    (build / "engine.json").write_text(json.dumps({"format": FORMAT, "qdq": {"file": "model.qdq.onnx"},
                                                   "model": {"sha256": "0" * 64, "path": str(other)}}))
    with pytest.raises(ModelMismatchError):
        validate(vconfig(tiny_spec, build, tiny_csv), tmp_path / "c")
    with pytest.raises(InputError, match="neither"):
        validate(vconfig(tiny_spec, tmp_path / "missing.txt", tiny_csv), tmp_path / "d")
    with pytest.raises(InputError, match="text column"):
        validate(vconfig(tiny_spec, tiny_qdq, tiny_csv, text_column="nope"), tmp_path / "e")
    for name in "abcde":
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())


def test_label_count_must_match_logits(tiny_spec, tiny_qdq, tmp_path):
    from calib.validate import ValidateConfig, validate

    texts, _ = tinymodel.make_texts(12, seed=5)
    pd.DataFrame({"text": texts, "label": ["a", "b", "c"] * 4}).to_csv(tmp_path / "three.csv", index=False)
    config = config_from_params(ValidateConfig, dict(engine=str(tiny_qdq), model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir),
                            data=str(tmp_path / "three.csv"), max_length=64))
    with pytest.raises(InputError, match="3 classes"):
        validate(config, tmp_path / "x")


def test_cli_validate_report_gate(tiny_spec, tiny_qdq, tiny_csv, tmp_path, capsys):
    from calib.cli import main

    ws = str(tmp_path / "ws")
    base = ["--workspace", ws]
    common = ["--model", str(tiny_spec.onnx_path), "--tokenizer", str(tiny_spec.tokenizer_dir), "--data", str(tiny_csv),
              "--labels", "neg,pos", "--max-length", "64", "--limit", "60"]
    assert main(base + ["validate", "--engine", str(tiny_qdq), *common, "--bootstrap", "100", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["run"]
    assert main(base + ["report", run]) == 0
    out = capsys.readouterr().out
    report_json = next(line.strip() for line in out.splitlines() if line.strip().endswith("report.json"))
    assert main(base + ["gate", report_json, "--max-drop", "100", "--min-agreement", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main(base + ["gate", report_json, "--min-agreement", "1.01"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("FAIL: top-1 agreement") and "\n" not in err
    assert main(base + ["gate", report_json]) == 2  # no budget given: a usage error
