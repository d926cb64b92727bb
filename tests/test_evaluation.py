"""The evaluation core (calib.evaluation) and artifacts written by earlier versions."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import tinymodel

from calib.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "v1"  # written by the version before calib.evaluation existed


def test_artifacts_of_the_previous_version_still_load(tmp_path):
    from calib.evaluation import CLASSIFIER
    from calib.report import Report, ReportConfig, make_report
    from calib.sensitivity import SensitivityResult
    from calib.validate import Evaluation

    ev = Evaluation.load(FIXTURES / "validate")
    m = ev.metrics
    assert m.kind == CLASSIFIER and m.n == 40 and m.labelled
    assert m.top1_agreement == pytest.approx(0.925) and m.accuracy_drop_points == pytest.approx(7.5)
    assert ev.summary()["top1_agreement"] == m.top1_agreement and ev.summary()["embedding_cosine"] == m.embedding_cosine
    assert m.worst_bucket() == {"bucket": "0-7", "n": 11, "accuracy_drop_points": pytest.approx(27.2727, abs=1e-3)}
    assert ev.predictions()["fp32_logits"].shape == (40, 2)
    sens = SensitivityResult.load(FIXTURES / "sensitivity")
    assert sens.summary()["evaluations"] == sens.data["evaluations_used"] and sens.placement().preset == "all"
    old = Report.load(FIXTURES / "report")
    assert old.summary()["labelled"] is True
    # today's report stage reads the old validate and sensitivity runs
    rep = make_report(ReportConfig(evaluations=(str(FIXTURES / "validate"),), sensitivity=str(FIXTURES / "sensitivity")),
                      tmp_path / "r")
    assert rep.data["headline"]["top1_agreement"] == pytest.approx(0.925)
    assert rep.data["headline"]["accuracy_drop_points"] == old.data["headline"]["accuracy_drop_points"]
    # the typed Metrics give every figure the old report held, unchanged (new ones added beside them)
    assert {k: rep.data["headline"][k] for k in old.data["headline"]} == old.data["headline"]
    assert rep.data["per_class"] == old.data["per_class"] and rep.data["confusion"] == old.data["confusion"]
    assert m.per_class(list(ev.model.classes)) == old.data["per_class"] and m.has_embedding
    assert m.confusion("int8") == old.data["confusion"]["int8"] and m.agreement("no such figure") is None


def test_provenance_of_an_old_evaluation_and_sensitivity_reads_typed():
    """What was compared (model, engine, data) reads through typed parts, also from 0.1's JSON, which
    recorded no output roles (the logits output only) and no exclusions."""
    from calib.model import OutputRoles
    from calib.sensitivity import SensitivityResult
    from calib.validate import Evaluation

    ev = Evaluation.load(FIXTURES / "validate")
    raw = ev.data
    assert ev.model.sha256 == raw["model"]["sha256"] and ev.model.classes == ("neg", "pos")
    assert ev.model.roles == OutputRoles(logits="logits") and ev.model.max_length == 64
    assert ev.engine.name == "onnxruntime-int8" and ev.engine.backend == "ort" and ev.engine.kind == "onnx"
    assert ev.engine.placement_preset is None and ev.engine.excluded_node_names == [] and ev.calibrator is None
    assert ev.dataset.fingerprint == raw["dataset"]["fingerprint"] and ev.dataset.note == "" and ev.labelled
    assert ev.first_degraded_tensor == raw["layers"]["first_degraded"] == ev.layer_report.first_degraded
    assert ev.layer_report.degraded_sqnr_db == 20.0 and ev.layer_report.degraded_cosine == 0.99
    assert ev.layer_report.rows == ev.layers["rows"] == 8
    sens = SensitivityResult.load(FIXTURES / "sensitivity")
    rec, raw_nodes = sens.recommended, tuple(sens.data["recommended"]["exclude_nodes"])
    assert rec.passes and rec.top1_agreement == 1.0 and rec.exclude_nodes == raw_nodes
    assert sens.exclusions == raw_nodes and sens.baseline.top1_agreement == pytest.approx(0.925)
    assert [r.to_dict() for r in sens.ranking] == sens.data["ranking"] and sens.ranking_method == "local"
    assert sens.model_sha256 == ev.model.sha256 and sens.evaluations_used == 4 and sens.max_evaluations == 4
    assert sens.granularity == "node" and sens.budget_record["max_drop"] == 0.5 and sens.placement_record["preset"] == "all"
    assert sens.ranking_rows == 0 and sens.ranking_evaluations_used == 0 and sens.searches == []
    assert sens.ranking_check is None and sens.speed_curve is None and sens.start_config is None
    assert sens.seconds == sens.data["seconds"]


def test_engine_provenance_reads_every_recorded_form():
    from calib.validate import EvaluatedEngine

    built = EvaluatedEngine.from_dict({"kind": "build", "path": "/r/b1", "backend": "tensorrt", "calibrator": "entropy",
                                       "placement": {"preset": "bert"}, "exclusions": {"n2": "why", "n1": "why"}})
    assert built.placement_preset == "bert" and built.excluded_node_names == ["n1", "n2"] and built.backend == "tensorrt"
    old = EvaluatedEngine.from_dict({"path": "x.onnx", "placement": "all", "exclusions": ["b", "a"]})
    assert old.placement_preset == "all" and old.excluded_node_names == ["a", "b"] and old.backend == "ort"
    today = EvaluatedEngine.from_dict({"path": "x.onnx", "excluded_nodes": {"n": "why"}})  # engine.json's name
    assert today.excluded_nodes == {"n": "why"}


def test_no_stage_builds_another_stages_config():
    import calib.bench
    import calib.sensitivity

    for module in (calib.sensitivity, calib.bench):
        source = inspect.getsource(module)
        assert "ValidateConfig" not in source and "calib.validate" not in source


def test_sample_rows():
    from calib.evaluation import sample_rows

    assert sample_rows(10, 0, 0).tolist() == list(range(10))
    assert sample_rows(10, 20, 0).tolist() == list(range(10))
    a = sample_rows(100, 10, seed=3)
    assert len(a) == 10 and (np.diff(a) > 0).all() and a.tolist() == sample_rows(100, 10, seed=3).tolist()
    assert sample_rows(10, 4, how="spread").tolist() == [0, 3, 6, 9]


def test_eval_data_subset_and_engine_run(tiny_spec, tiny_csv):
    from calib.data import DataSpec
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import EngineOutputs, compare, load_eval_data, run_engine

    data = load_eval_data(DataSpec(str(tiny_csv)), tiny_spec, limit=50, seed=1)
    assert len(data) == 50 and data.labels.shape == (50,) and data.classes == tinymodel.LABELS
    assert data.info["rows_evaluated"] == 50 and data.info["labelled"]
    part = data.subset([3, 1])
    assert part.rows.tolist() == data.rows[[3, 1]].tolist() and part.lengths.tolist() == data.lengths[[3, 1]].tolist()
    engine = OrtEngine(OrtSessionLoader(tiny_spec.onnx_path, threads=1))
    out = run_engine(engine, data.encoded, tiny_spec.input_dtypes, tiny_spec.roles, batch_size=7)
    assert isinstance(out, EngineOutputs) and out.logits.shape == (50, 2) and out.embedding.shape == (50, 16)
    # row order is the data's, whatever the batch order: one text alone gives the same outputs
    alone = run_engine(engine, data.encoded.subset([5]), tiny_spec.input_dtypes, tiny_spec.roles, batch_size=1)
    np.testing.assert_allclose(alone.logits[0], out.logits[5], rtol=1e-5, atol=1e-5)
    same = compare(out, out, data, edges=(0, 16), n_resamples=0)
    assert same.top1_agreement == 1.0 and same.embedding_cosine == pytest.approx(1.0)
    assert same.accuracy_drop_points == 0.0 and same.worst_bucket()["accuracy_drop_points"] == 0.0
    assert same.row_cosine.shape == (50,)
    with pytest.raises(InputError, match="limit"):
        load_eval_data(DataSpec(str(tiny_csv)), tiny_spec, limit=-1)


def test_pool_tokens_uses_the_mask():
    from calib.evaluation import pool_tokens

    states = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(pool_tokens(states, mask, "mean"), [[1.0, 2.0], [6.0, 7.0]])
    np.testing.assert_allclose(pool_tokens(states, mask, "cls"), [[0.0, 1.0], [6.0, 7.0]])


def test_metrics_round_trip_and_worst_bucket():
    from calib.evaluation import EngineOutputs, EvalData, Metrics, compare

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 3))
    noisy = logits.copy()
    noisy[:5] = -noisy[:5]  # the 5 shortest texts change their prediction
    lengths = np.arange(40)
    data = EvalData(_FakeEncoded(lengths), rng.integers(0, 3, 40), ("a", "b", "c"), np.arange(40), {})
    m = compare(EngineOutputs(logits, None), EngineOutputs(noisy, None), data, edges=(0, 10, 20), n_resamples=0)
    again = Metrics.from_dict(m.to_dict())
    assert again == m and again.to_dict() == m.to_dict()
    worst = m.worst_bucket()
    assert worst is not None and worst["bucket"] == "0-9"
    legacy = {k: v for k, v in m.to_dict().items() if k != "kind"}
    assert Metrics.from_dict(legacy).kind == "classifier"


class _FakeEncoded:
    """Only what compare() reads: the untruncated lengths."""

    def __init__(self, lengths):
        self.full_lengths = np.asarray(lengths)

    def __len__(self):
        return len(self.full_lengths)


def test_bucket_figures_read_each_bucket_of_an_old_evaluation():
    """Per-bucket figures are typed like the overall ones: each reader returns the number stored in that
    bucket of evaluation.json (here one written by the previous version), None where the bucket has none."""
    from calib.evaluation import BucketFigures
    from calib.validate import Evaluation
    from calib.verdict import MIN_BUCKET_TEXTS

    ev = Evaluation.load(FIXTURES / "validate")
    figures = ev.metrics.bucket_figures
    assert [b.bucket for b in figures] == [b["bucket"] for b in ev.buckets]
    for typed, raw in zip(figures, ev.buckets, strict=True):
        assert isinstance(typed, BucketFigures)
        assert (typed.n, typed.low, typed.high) == (raw["n"], raw["low"], raw["high"])
        assert typed.few_texts == (raw["n"] < MIN_BUCKET_TEXTS) and typed.empty == (raw["n"] == 0)
        if typed.empty:
            continue
        assert typed.top1_agreement == raw["agreement"]["top1_agreement"]
        assert typed.kl_softmax == raw["agreement"]["kl_softmax"]
        assert typed.accuracy_fp32 == raw["fp32"]["accuracy"] and typed.accuracy_int8 == raw["int8"]["accuracy"]
        assert typed.accuracy_drop_points == raw["accuracy_drop_points"]
        assert typed.accuracy_diff_ci == raw.get("accuracy_diff_ci", {})
        assert typed.neighbour_recall_at_k is None and typed.knn is None  # a classifier's bucket has none
    worst = ev.metrics.worst_bucket()
    assert worst["accuracy_drop_points"] == max(b.accuracy_drop_points for b in figures if not b.empty)


def test_embedding_bucket_figures():
    from calib.evaluation import EngineOutputs, EvalData, compare

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((30, 8))
    noisy = emb + 0.01 * rng.standard_normal((30, 8))
    noisy[:4] = rng.standard_normal((4, 8))  # the 4 shortest texts lose their direction
    data = EvalData(_FakeEncoded(np.arange(30)), None, (), np.arange(30), {})
    m = compare(EngineOutputs(None, emb), EngineOutputs(None, noisy), data, edges=(0, 10, 20), n_resamples=0, k=3)
    short, middle, long_ = m.bucket_figures
    assert not m.is_classifier and short.bucket == "0-9" and long_.high is None
    assert short.embedding_cosine < middle.embedding_cosine and middle.embedding_cosine > 0.99
    assert short.top1_agreement is None and not short.has_agreement and short.neighbour_k == 3
    assert m.worst_bucket() == {"bucket": "0-9", "n": 10, "embedding_cosine": short.embedding_cosine}


def test_calibration_set_calibration_and_build_of_the_previous_version_still_load():
    """tests/fixtures/v1/{calibset,calibrate,engine} were written by calib 0.1 (flat configs, a build's ranges as
    calibration + method) on the tiny test model; today's code reads each, and recomputing the ranges from the
    old statistics gives the old ranges, bit for bit."""
    from calib.build import BuildConfig, EngineArtifact
    from calib.calibrate import CalibrateConfig, Calibration
    from calib.calibset import CalibrationSet
    from calib.methods import compute_ranges
    from calib.pipeline import config_from_params
    from calib.placement import Placement
    from calib.stats import ActivationStats

    cset = CalibrationSet.load(FIXTURES / "calibset")
    assert cset.size == 32 and cset.config.strategy == "uniform" and cset.config.model.max_length == 64
    assert cset.config.model.labels == ("neg", "pos") and cset.config.data.source.endswith("data.csv")
    assert cset.summary()["max_length"] == 64

    cal = Calibration.load(FIXTURES / "calibrate")
    assert cal.methods == ("minmax", "percentile") and cal.summary()["texts"] == 32
    config = config_from_params(CalibrateConfig, cal.meta["config"])
    assert config.placement == Placement("tensorrt") and config.methods == ("minmax", "percentile")
    stats = ActivationStats.load(FIXTURES / "calibrate")
    for method in cal.methods:
        old = cal.ranges(method)
        new = compute_ranges(stats, method, **config.method_params(method))
        assert new.names == old.names and new.amax == old.amax, method

    engine = EngineArtifact.load(FIXTURES / "engine")
    assert len(engine.quantized_nodes) == engine.summary()["quantized_nodes"] == 11
    build_config = BuildConfig.from_params(engine.meta["config"])
    assert build_config.ranges.method == "percentile" and build_config.ranges.source.endswith("calibrate")
    assert build_config.placement == Placement("tensorrt", exclude_nodes=("layer.0/attention/*",))


def test_a_saved_calibration_and_layer_analysis_read_typed():
    """0.1's calibration record and per-layer analysis read through typed accessors, equal to the raw JSON."""
    from calib.calibrate import CalibrateConfig, Calibration
    from calib.layers import ENGINE_RANGE
    from calib.pipeline import config_from_params
    from calib.validate import EvaluatedCalibration, Evaluation

    cal = Calibration.load(FIXTURES / "calibrate")
    assert cal.config == config_from_params(CalibrateConfig, cal.meta["config"]) and cal.config.batch_size == 16
    assert cal.tensor_count == cal.meta["tensors"] == 18 and cal.pass_record["tokens"] == 672
    assert cal.calibration_set_record["strategy"] == "uniform" and cal.calibration_set_dir.endswith("calibset")
    assert cal.cache_file("minmax") == cal.meta["methods"]["minmax"]["cache"] and cal.nonfinite_counts == {}
    assert cal.stats_seconds == cal.meta["timings"]["stats_seconds"]

    ev = Evaluation.load(FIXTURES / "validate")
    raw = ev.layers["tensors"]
    tensors = ev.layer_report.tensors
    assert [t.tensor for t in tensors] == [r["tensor"] for r in raw] and [t.order for t in tensors] == [r["order"] for r in raw]
    quantized = ev.layer_report.quantized
    assert quantized and [t.tensor for t in quantized] == [r["tensor"] for r in raw if r.get("quantized")]
    first = next(r for r in raw if r.get("quantized"))
    assert quantized[0].sqnr_db == first["sqnr_db"] and quantized[0].amax[ENGINE_RANGE] == first["engine_amax"]
    assert quantized[0].row()["amax"] == {m: v["amax"] for m, v in first["ranges"]["methods"].items()}

    shown = EvaluatedCalibration.from_dict({"folder": "runs/cal", "methods": ["entropy"],
                                            "calibration_set": {"dir": "/nowhere", "strategy": "match", "size": 8}})
    assert shown.only_method == "entropy" and shown.calibration_set_dir is None
    assert shown.describe_set() == "match × 8 (nowhere)"
    assert EvaluatedCalibration.from_dict({"folder": "f", "methods": ["a", "b"]}).only_method is None
    assert EvaluatedCalibration.from_dict({"folder": "f", "methods": ["a", "b"]}).describe_set() == "f"


def test_a_saved_calibration_set_reads_typed(tiny_spec, tiny_csv, tmp_path):
    """A set's recorded output roles read back the way ModelRef names them (none recorded: {}, detected again)."""
    from calib.calibset import AssembleConfig, CalibrationSet, assemble
    from calib.data import DataSpec
    from calib.model import ModelRef

    old = CalibrationSet.load(FIXTURES / "calibset")
    roles = old.manifest["model"]["roles"]
    assert old.role_fields == {"logits_output": roles["logits"], "embedding_output": roles["embedding"],
                               "pooling": roles["pooling"]}
    bare = CalibrationSet(old.dir, {**old.manifest, "model": {k: v for k, v in old.manifest["model"].items() if k != "roles"}})
    assert bare.role_fields == {}
    assert old.seed == old.manifest["seed"] and old.stratified == old.manifest["stratify"]
    assert old.dataset_record["source"] == old.dataset_source and old.target_record["kind"] == old.target_kind
    made = assemble(AssembleConfig(model=ModelRef.of(tiny_spec), data=DataSpec(str(tiny_csv)), size=16), tmp_path / "cs")
    assert made.role_fields == {"logits_output": tiny_spec.logits_output, "embedding_output": tiny_spec.embedding_output,
                                "pooling": tiny_spec.pooling}
    assert made.model_spec().roles == tiny_spec.roles
