"""Artifacts written by calib 0.1 (commit 7b17aef) on the tiny test model, read with today's typed API.

tests/fixtures/v1/bench is a ``calib bench`` run folder (``bench.json``) written by that commit's CLI:
assemble (32 texts of tests/tinymodel.make_texts(240, seed=1), max length 64) -> calibrate (minmax,
percentile) -> build (percentile) -> ``calib bench --max-texts 16 --batch-size 1 8 --repeats 1
--threads 1``. Its absolute paths point at the scratch folder it was generated in (/tmp/gen01b); nothing
here opens them.

0.1 had no calibrator-comparison stage (``calib validate --method all``, calib.compare) and no
classifier-head stage (``calib head fit``, calib.head): both came later (94776df and 6180f26), so there
is no 0.1 artifact of either to read and no fixture for them in tests/fixtures/v1.

tests/fixtures/first holds them instead, each written by the FIRST version that wrote it (run from a git
worktree of that commit, with that commit's tests/tinymodel.py inputs, which today's builds byte for byte):

- tests/fixtures/first/compare: a ``compare`` run folder written by 94776df (``comparison.json`` plus
  ``<method>/engine`` and ``<method>/evaluation`` for minmax and percentile): assemble (32 texts of
  make_texts(240, seed=1), max length 64, ``--strategy uniform``) -> calibrate ``--method minmax
  percentile`` -> ``calib validate --calibration RUN --method all --labels neg,pos --max-length 64 --limit 40
  --bootstrap 50 --no-layers`` (default budget). Its paths point at /tmp/genfirst/cmp; nothing here opens
  them (the FP32 and INT8 runs below use the session's tiny model, checked by sha256, and the folder's own
  Q/DQ file). Its rows' ``engine`` paths name the run's staging folder, as that version recorded them.
- tests/fixtures/first/head: a ``head`` run folder written by 6180f26 (``card.json``, ``model.onnx``):
  ``calib head fit`` on build_model(encoder_only=True) with texts make_texts(90, seed=7) labelled
  alpha/beta/gamma by word count mod 3 (column review, label column y), ``--max-length 64 --folds 3``.
  Its paths point at /tmp/genfirst/head; nothing here opens them.
- tests/fixtures/first/{compare,head}.stdout.json: what that version's CLI printed with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
BENCH = FIXTURES / "bench"


def _raw_bench() -> dict:
    return json.loads((BENCH / "bench.json").read_text())


def test_the_bench_fixture_is_in_0_1s_layout():
    """Guards the fixture itself: 0.1 wrote a flat config (tokenizer, max_length, max_texts beside the
    engine; no model part) and rows without today's per-pass spread."""
    raw = _raw_bench()
    assert raw["format"] == "calib.bench/1"
    assert {"tokenizer", "max_length", "max_texts", "data", "split", "text_column"} <= set(raw["config"])
    assert "model" not in raw["config"] and "limit" not in raw["config"]
    assert raw["rows"] and all("pass_spread" not in r for r in raw["rows"])


def test_bench_result_of_0_1_loads_with_todays_accessors():
    from calib.bench import BenchResult

    raw = _raw_bench()
    result = BenchResult.load(BENCH)
    assert result.rows == raw["rows"]
    assert result.batch_sizes == tuple(raw["config"]["batch_sizes"]) == (1, 8)
    assert result.repeats == raw["config"]["repeats"] == 1
    assert result.sizes_mb == pytest.approx(raw["sizes"])
    assert set(result.sizes_mb) == {"fp32_model_mb", "qdq_model_mb", "int8_weights_mb"}
    assert result.lengths == raw["lengths"]
    assert result.lengths["p50"] <= result.lengths["p95"] <= result.lengths["max"] <= raw["config"]["max_length"]

    # the speed-ups, recomputed from the raw rows
    throughput = {(r["kind"], r["batch_size"]): r["texts_per_s"] for r in raw["rows"]}
    expected = {b: throughput["int8", b] / throughput["fp32", b] for b in raw["config"]["batch_sizes"]}
    assert result.speedups() == pytest.approx(expected)
    assert set(result.speedups()) == {1, 8}
    for b, s in expected.items():
        assert result.speedup(b) == pytest.approx(s)
    assert result.speedup(16) is None  # not measured
    assert result.summary() == {f"speedup_b{b}": round(s, 3) for b, s in expected.items()}

    # every row names one of the two engines and ran all the texts
    assert {r["kind"] for r in result.rows} == {"fp32", "int8"}
    assert all(r["texts"] == raw["config"]["max_texts"] for r in result.rows)


def test_bench_config_of_0_1_reads_as_todays_bench_config():
    from calib.bench import BenchConfig
    from calib.pipeline import config_from_params, config_params

    raw = _raw_bench()["config"]
    config = config_from_params(BenchConfig, raw)
    assert config.engine == raw["engine"]
    assert config.model.tokenizer == raw["tokenizer"]
    assert config.model.max_length == raw["max_length"] == 64
    assert config.model.model == ""  # 0.1 benchmarked against the build's own FP32 model
    assert config.limit == raw["max_texts"] == 16
    assert config.data.source == raw["data"]
    assert config.data.split == raw["split"]
    assert config.data.text_column == raw["text_column"]
    assert config.data.workspace == raw["workspace"]
    assert config.batch_sizes == tuple(raw["batch_sizes"])
    assert config.repeats == raw["repeats"] and config.threads == raw["threads"]
    # and once read, it is written and read back in today's layout unchanged
    assert config_from_params(BenchConfig, config_params(config)) == config


# --- the first calibrator comparison (94776df) and the first classifier head (6180f26) -----------------

FIRST = Path(__file__).parent / "fixtures" / "first"
COMPARE = FIRST / "compare"
HEAD = FIRST / "head"
COMPARE_METHODS = ("minmax", "percentile")  # the order 94776df ran them in
HEAD_CLASSES = ("alpha", "beta", "gamma")


def _raw_comparison() -> dict:
    return json.loads((COMPARE / "comparison.json").read_text())


def _raw_engine(method: str) -> dict:
    return json.loads((COMPARE / method / "engine" / "engine.json").read_text())


def _raw_evaluation(method: str) -> dict:
    return json.loads((COMPARE / method / "evaluation" / "evaluation.json").read_text())


def _raw_card() -> dict:
    return json.loads((HEAD / "card.json").read_text())


def _printed(name: str) -> dict:
    """What the first version's CLI printed with --json (tests/fixtures/first/<name>.stdout.json)."""
    return json.loads((FIRST / f"{name}.stdout.json").read_text())


def test_the_comparison_fixture_is_in_94776ds_layout():
    """Guards the fixture itself: 94776df's comparison rows have no ``model_kind`` in their headline, its
    buckets no embedding figures, and its builds recorded no settings (``config``)."""
    raw = _raw_comparison()
    assert raw["schema"] == "calib.comparison/1"
    assert [r["calibrator"] for r in raw["rows"]] == list(COMPARE_METHODS)
    assert all("model_kind" not in r["headline"] for r in raw["rows"])
    assert all(set(b) == {"bucket", "n", "top1_agreement", "accuracy_drop_points"}
               for r in raw["rows"] for b in r["bucket_drops"])
    for method in COMPARE_METHODS:
        assert {p.name for p in (COMPARE / method / "engine").iterdir()} == {
            "engine.json", "model.qdq.onnx", "calibration.cache", "trtexec.sh"}
        assert {p.name for p in (COMPARE / method / "evaluation").iterdir()} == {"evaluation.json", "predictions.npz"}
        assert "config" not in _raw_engine(method) and "engine" not in _raw_engine(method)
        assert _raw_evaluation(method)["layers"] is None  # validated with --no-layers: no layers.json


def test_calibrator_comparison_of_94776df_loads_with_todays_accessors():
    from calib.compare import CalibratorComparison, ComparisonRow
    from calib.errors import InputError
    from calib.stages import STAGES
    from calib.verdict import Recommendation, ReleaseBudget, Verdict

    raw = _raw_comparison()
    assert STAGES["compare"].artifact_type() is CalibratorComparison
    comparison = CalibratorComparison.load(COMPARE)
    assert comparison.methods == [r["calibrator"] for r in raw["rows"]] == list(COMPARE_METHODS)
    assert comparison.rows == raw["rows"]
    assert comparison.placement == raw["placement"] == "tensorrt"
    assert comparison.budget == ReleaseBudget(**raw["budget"])
    assert comparison.budget.to_dict() == raw["budget"]

    entries = comparison.entries
    assert [type(e) for e in entries] == [ComparisonRow] * len(raw["rows"])
    for entry, row in zip(entries, raw["rows"]):
        assert entry.record == row
        assert entry.calibrator == row["calibrator"]
        assert entry.texts == row["rows"] == raw["dataset"]["rows_evaluated"] == 40
        verdict = entry.verdict
        assert isinstance(verdict, Verdict)
        assert verdict.passed == row["verdict"]["passed"]
        assert verdict.status == row["verdict"]["status"]
        assert verdict.reason == row["verdict"]["reason"]
        assert verdict.budget == ReleaseBudget(**row["verdict"]["budget"]) == comparison.budget
        assert [(c.name, c.threshold, c.value, c.passed, c.status) for c in verdict.criteria] == [
            (c["name"], c["threshold"], c["value"], c["passed"], c["status"]) for c in row["verdict"]["criteria"]]
        assert verdict.to_dict() == row["verdict"]
        for name in ("top1_agreement", "accuracy_drop_points", "drop_ci_low_points", "drop_ci_high_points",
                     "embedding_cosine", "kl_softmax", "accuracy_fp32", "accuracy_int8"):
            assert entry.figure(name) == pytest.approx(row[name]), name
        assert entry.figure("neighbour_recall_at_1") is None  # a classifier's row: not measured
        assert entry.headline == row["headline"]
        assert entry.headline["top1_agreement"] == row["top1_agreement"]
        assert entry.is_embedding is False  # no model_kind recorded: a classifier, as it is
    assert comparison.is_embedding is False

    rec = raw["recommendation"]
    assert comparison.recommendation == Recommendation(**rec)
    assert (comparison.recommendation.index, comparison.recommendation.name, comparison.recommendation.passes) == (
        rec["index"], rec["name"], rec["passes"])
    assert comparison.recommended.calibrator == rec["name"] == raw["rows"][rec["index"]]["calibrator"]
    assert comparison.recommended.record == comparison.recommended_row == raw["rows"][rec["index"]]
    assert comparison.recommended_evaluation == COMPARE / rec["name"] / "evaluation"
    assert comparison.recommended_evaluation == COMPARE / raw["rows"][rec["index"]]["evaluation"]
    assert comparison.evaluation_dirs() == [COMPARE / rec["name"] / "evaluation",
                                            *[COMPARE / m / "evaluation" for m in COMPARE_METHODS if m != rec["name"]]]
    assert comparison.evaluation_dirs(recommended_first=False) == [COMPARE / m / "evaluation" for m in COMPARE_METHODS]
    with pytest.raises(InputError, match="no method 'entropy'"):
        comparison.evaluation_dir("entropy")

    expected = {"recommended": rec["name"], "recommended_passes": rec["passes"], "methods": list(COMPARE_METHODS),
                "passing": [r["calibrator"] for r in raw["rows"] if r["verdict"]["passed"]],
                "placement": raw["placement"], "model_sha256": raw["model_sha256"]}
    assert comparison.summary() == {**expected, "verdict": "PASS" if rec["passes"] else "FAIL"}  # verdict: added since
    # and what 94776df itself printed as the run's summary
    printed = _printed("compare")
    assert {k: printed[k] for k in expected} == expected
    assert printed["recommendation"] == rec


def test_each_method_of_94776ds_comparison_reads_as_todays_evaluation_and_engine():
    import numpy as np

    from calib.build import EngineArtifact
    from calib.compare import CalibratorComparison
    from calib.io import sha256_file
    from calib.validate import Evaluation

    raw = _raw_comparison()
    comparison = CalibratorComparison.load(COMPARE)
    for entry, row in zip(comparison.entries, raw["rows"]):
        method = entry.calibrator
        raw_ev, raw_engine = _raw_evaluation(method), _raw_engine(method)

        ev = Evaluation.load(comparison.evaluation_dir(method))
        m = ev.metrics
        assert m.top1_agreement == entry.figure("top1_agreement") == row["top1_agreement"]
        assert m.top1_agreement == raw_ev["metrics"]["overall"]["agreement"]["top1_agreement"]
        assert m.accuracy_drop_points == pytest.approx(row["accuracy_drop_points"])
        assert m.accuracy_fp32 == row["accuracy_fp32"] == raw_ev["metrics"]["overall"]["fp32"]["accuracy"]
        assert m.accuracy_int8 == row["accuracy_int8"] == raw_ev["metrics"]["overall"]["int8"]["accuracy"]
        assert m.embedding_cosine == pytest.approx(row["embedding_cosine"])
        assert m.kl_softmax == pytest.approx(row["kl_softmax"])
        assert m.n == entry.texts and m.is_classifier and m.labelled
        assert [(b.bucket, b.n, b.top1_agreement) for b in m.bucket_figures] == [
            (b["bucket"], b["n"], b["top1_agreement"]) for b in row["bucket_drops"]]
        assert ev.calibrator == method == ev.engine.calibrator
        assert ev.model.sha256 == raw["model_sha256"] == raw_ev["model"]["sha256"]
        assert dict(ev.dataset.record) == raw["dataset"] == raw_ev["dataset"]
        assert ev.engine.qdq_sha256 == raw_ev["engine"]["qdq_sha256"] == raw_engine["qdq"]["sha256"]
        assert ev.calibration is not None and ev.calibration.methods == COMPARE_METHODS
        assert ev.calibration.folder == raw["calibration"]
        assert ev.layer_report is None and ev.first_degraded_tensor is None
        assert ev.summary()["top1_agreement"] == row["top1_agreement"]
        # the saved predictions give the recorded figures
        pred = ev.predictions()
        assert len(pred["rows"]) == m.n
        fp32, int8 = pred["fp32_logits"].argmax(1), pred["int8_logits"].argmax(1)
        assert float(np.mean(fp32 == int8)) == pytest.approx(row["top1_agreement"])
        assert float(np.mean(fp32 == pred["labels"])) == pytest.approx(row["accuracy_fp32"])
        assert float(np.mean(pred["embedding_cosine"])) == pytest.approx(row["embedding_cosine"])

        engine = EngineArtifact.load(COMPARE / method / "engine")
        assert engine.method == method == raw_engine["ranges"]["method"]
        assert engine.config is None  # 94776df recorded no build settings
        assert engine.ranges_record == raw_engine["ranges"]
        assert engine.placement_record == raw_engine["placement"]
        assert engine.placement_record["preset"] == comparison.placement
        assert engine.model_sha256 == raw["model_sha256"]
        assert engine.model_path == Path(raw_engine["model"]["path"])  # recorded, not opened
        assert engine.quantized_nodes == tuple(raw_engine["quantized_nodes"])
        assert engine.excluded_nodes == raw_engine["excluded_nodes"] == {}
        assert engine.labels == ()  # not recorded by 94776df
        assert engine.qdq_path == COMPARE / method / "engine" / raw_engine["qdq"]["file"]
        assert sha256_file(engine.qdq_path) == raw_engine["qdq"]["sha256"]
        assert engine.qdq_bytes == engine.qdq_path.stat().st_size
        assert engine.cache_header == raw_engine["calibration_cache"]["header"]
        assert engine.cache_tensors == raw_engine["calibration_cache"]["tensors"]
        profile = raw_engine["profile"]
        assert (engine.profile.min_batch, engine.profile.opt_batch, engine.profile.max_batch) == (
            profile["min_batch"], profile["opt_batch"], profile["max_batch"])
        assert (engine.profile.min_seq, engine.profile.opt_seq, engine.profile.max_seq) == (
            profile["min_seq"], profile["opt_seq"], profile["max_seq"])
        assert engine.backend == raw_engine["backend"] == engine.engine_backend == "ort"
        assert engine.engine_path == engine.qdq_path  # before engine.json named its engine file
        assert engine.provenance()["method"] == method and engine.provenance()["config"] is None
        assert engine.summary()["method"] == method


def test_todays_figures_verdicts_and_recommendation_from_94776ds_evaluations():
    """Today's comparison code, given the first version's evaluation folders, reaches the same figures,
    verdicts and recommendation as that version wrote."""
    from calib.compare import CalibratorComparison
    from calib.report import compare_evaluations
    from calib.validate import Evaluation
    from calib.verdict import Recommendation, judge, recommend

    raw = _raw_comparison()
    comparison = CalibratorComparison.load(COMPARE)
    evaluations = [Evaluation.load(d) for d in comparison.evaluation_dirs(recommended_first=False)]
    rows = compare_evaluations(evaluations)
    assert evaluations[0].default_budget().to_dict() == raw["budget"]  # it ran with the default budget
    for row, old in zip(rows, raw["rows"]):
        for key in ("calibrator", "placement", "rows", "labelled", "accuracy_fp32", "accuracy_int8",
                    "accuracy_drop_points", "ci_low_points", "ci_high_points", "drop_ci_low_points",
                    "drop_ci_high_points", "top1_agreement", "kl_softmax", "embedding_cosine", "dataset_fingerprint"):
            assert row[key] == pytest.approx(old[key]), key
        assert judge(row, comparison.budget).to_dict() == old["verdict"]
    assert recommend(rows, comparison.budget) == Recommendation(**raw["recommendation"])


def test_todays_engines_reproduce_94776ds_saved_logits(tiny_model_path, tiny_tokenizer_dir, tiny_csv, tiny_spec):
    """The folder's Q/DQ model, run through today's EngineArtifact.engine(), and the FP32 model rebuilt by
    tests/tinymodel.py (the same bytes: checked by sha256) give the logits 94776df saved."""
    import numpy as np
    import pandas as pd

    from calib.batching import encode
    from calib.build import EngineArtifact
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import run_engine
    from calib.io import sha256_file
    from calib.model import load_tokenizer
    from calib.validate import Evaluation

    raw = _raw_comparison()
    assert sha256_file(tiny_model_path) == raw["model_sha256"]
    frame = pd.read_csv(tiny_csv)
    assert len(frame) == raw["dataset"]["rows_total"]
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    fp32_engine = OrtEngine(OrtSessionLoader(tiny_model_path), name="onnxruntime-fp32")
    for method in COMPARE_METHODS:
        pred = Evaluation.load(COMPARE / method / "evaluation").predictions()
        picked = frame.iloc[pred["rows"]]
        np.testing.assert_array_equal(pred["labels"], [("neg", "pos").index(v) for v in picked["label"]])
        encoded = encode(tokenizer, picked["text"].tolist(), max_length=raw["dataset"]["max_length"])
        np.testing.assert_array_equal(encoded.lengths, pred["lengths"])
        engine = EngineArtifact.load(COMPARE / method / "engine").engine("int8", threads=1)
        int8 = run_engine(engine, encoded, tiny_spec.input_dtypes, tiny_spec.roles, batch_size=16)
        np.testing.assert_allclose(int8.logits, pred["int8_logits"], atol=2e-3, rtol=0)
        np.testing.assert_array_equal(int8.logits.argmax(1), pred["int8_logits"].argmax(1))
        fp32 = run_engine(fp32_engine, encoded, tiny_spec.input_dtypes, tiny_spec.roles, batch_size=16)
        np.testing.assert_allclose(fp32.logits, pred["fp32_logits"], atol=1e-5, rtol=0)


def test_the_head_fixture_is_in_6180f26s_layout():
    """Guards the fixture itself: 6180f26 wrote its config flat (model, tokenizer and data as strings,
    max_length and the data's columns beside them), before HeadConfig held a ModelRef and a DataSpec."""
    card = _raw_card()
    assert card["schema"] == "calib.head/1"
    assert {p.name for p in HEAD.iterdir()} == {"card.json", "model.onnx"}
    config = card["config"]
    assert isinstance(config["model"], str) and isinstance(config["data"], str)
    assert {"tokenizer", "max_length", "label_column", "text_column", "embedding_output", "pooling"} <= set(config)


def test_head_artifact_of_6180f26_loads_with_todays_accessors(tiny_tokenizer_dir):
    from calib.head import CARD_FILE, HeadArtifact, HeadConfig
    from calib.io import sha256_file
    from calib.model import load_model
    from calib.pipeline import config_from_params, config_params
    from calib.stages import STAGES

    card = _raw_card()
    assert STAGES["head"].artifact_type() is HeadArtifact
    head = HeadArtifact.load(HEAD)
    assert head.card == card
    assert head.classes == tuple(card["classes"]) == HEAD_CLASSES
    assert head.model_path == HEAD / card["model"]["file"]
    assert sha256_file(head.model_path) == card["model"]["sha256"]
    assert (head.dir / CARD_FILE).is_file()
    expected = {"classes": len(card["classes"]), "C": card["head"]["C"], "cv_accuracy": card["fp32"]["cv_accuracy"],
                "rows": card["data"]["rows"]}
    assert head.summary() == expected
    printed = _printed("head")["summary"]  # what 6180f26 printed (its JSON rounds floats)
    assert printed["classes"] == expected["classes"] and printed["rows"] == expected["rows"]
    assert printed["C"] == expected["C"] and printed["cv_accuracy"] == pytest.approx(expected["cv_accuracy"], abs=1e-9)

    # its flat config reads as today's HeadConfig (ModelRef + DataSpec)
    raw = card["config"]
    config = config_from_params(HeadConfig, raw)
    assert config.model.model == raw["model"] == card["encoder"]["path"]
    assert config.model.tokenizer == raw["tokenizer"] == card["encoder"]["tokenizer"]
    assert config.model.max_length == raw["max_length"] == card["encoder"]["max_length"] == 64
    assert config.model.embedding_output == raw["embedding_output"] is None  # detected: sentence_embedding
    assert config.model.pooling == raw["pooling"] is None
    assert config.data.source == raw["data"] == card["data"]["source"]
    assert config.data.text_column == raw["text_column"] == card["data"]["text_column"] == "review"
    assert config.data.label_column == raw["label_column"] == card["data"]["label_column"] == "y"
    assert config.data.text_pair_column == raw["text_pair_column"] and config.data.split == raw["split"]
    assert config.data.workspace == raw["workspace"]
    assert config.c_values == tuple(raw["c_values"]) == tuple(card["head"]["c_values"])
    assert config.folds == raw["folds"] and config.seed == raw["seed"] and config.batch_size == raw["batch_size"]
    assert config.threads == raw["threads"]
    assert config_from_params(HeadConfig, config_params(config)) == config

    # today's model loader sees the written classifier as one: logits and embedding, classes from the card
    spec = load_model(head.model_path, tiny_tokenizer_dir, max_length=card["encoder"]["max_length"],
                      labels=head.classes)
    assert (spec.roles.logits, spec.roles.embedding) == tuple(card["model"]["outputs"]) == ("logits", "embedding")
    assert spec.sha256 == card["model"]["sha256"]


def test_todays_code_applies_6180f26s_head(tiny_tokenizer_dir):
    """The saved classifier, run through today's engine and fitting code on the texts it was fitted on
    (rebuilt by tests/tinymodel.py, as 6180f26's were): its predictions give the card's training accuracy,
    today's cross-validation picks the card's C with its scores, and today's head of that C is the head
    in the ONNX file."""
    import numpy as np
    import onnx
    import tinymodel
    from onnx import numpy_helper

    from calib.batching import encode
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import run_engine
    from calib.head import HeadArtifact, cross_validated_head, logistic_head
    from calib.model import load_model, load_tokenizer

    card = _raw_card()
    head = HeadArtifact.load(HEAD)
    texts, _ = tinymodel.make_texts(90, seed=7)
    labels = np.array([len(t.split()) % 3 for t in texts])  # alpha, beta, gamma by word count
    assert len(texts) == card["data"]["rows"]
    assert np.bincount(labels, minlength=3).tolist() == card["data"]["class_counts"]

    spec = load_model(head.model_path, tiny_tokenizer_dir, max_length=card["encoder"]["max_length"],
                      labels=head.classes)
    encoded = encode(load_tokenizer(str(tiny_tokenizer_dir)), texts, max_length=card["encoder"]["max_length"])
    out = run_engine(OrtEngine(OrtSessionLoader(head.model_path, threads=1)), encoded, spec.input_dtypes, spec.roles,
                     batch_size=16)
    assert out.logits.shape == (90, len(head.classes)) and out.embedding.shape[0] == 90
    assert float(np.mean(out.logits.argmax(1) == labels)) == pytest.approx(card["fp32"]["train_accuracy"])

    clf, chosen = cross_validated_head(out.embedding, labels, len(head.classes), tuple(card["head"]["c_values"]),
                                       card["config"]["folds"], card["config"]["seed"])
    assert chosen["C"] == card["head"]["C"] and chosen["cv_folds"] == card["head"]["cv_folds"]
    assert chosen["cv_accuracy"] == pytest.approx(card["head"]["cv_accuracy"], abs=1.5 / 90)
    assert chosen["cv_accuracy_per_C"] == pytest.approx(card["head"]["cv_accuracy_per_C"], abs=1.5 / 90)

    weight, bias = logistic_head(out.embedding, labels, len(head.classes), card["head"]["C"])
    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(head.model_path)).graph.initializer}
    # the fit is an iterative solver's answer (tolerance 1e-4), which moves with the machine's floating
    # point: today's head and the saved one are the same optimum of the same objective (equal within the
    # solver's tolerance) and classify every text alike
    today = out.embedding @ weight.T + bias
    np.testing.assert_allclose(today, out.logits, atol=2e-2, rtol=0)
    assert (today.argmax(1) == out.logits.argmax(1)).all()

    def objective(w, b):  # sklearn's multinomial objective: 0.5 ||W||² + C · Σ log-loss
        z = out.embedding @ w.T + b
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return 0.5 * float((w ** 2).sum()) - card["head"]["C"] * float(log_p[np.arange(len(labels)), labels].sum())

    # (the weights themselves may differ by more along directions the objective barely sees)
    assert objective(weight, bias) == pytest.approx(objective(saved["head.weight"].T, saved["head.bias"]), rel=1e-4)
    assert objective(weight * 1.05, bias) > objective(weight, bias) * (1 + 1e-4)  # the check can tell heads apart
    # the saved head applied by hand to a few embeddings gives the classifier's logits (the card's
    # "logits = embedding @ weight.T + bias", weight stored transposed) and its classes in the card's order
    few = out.embedding[:8]
    by_hand = few @ saved["head.weight"] + saved["head.bias"]
    np.testing.assert_allclose(by_hand, out.logits[:8], atol=1e-4, rtol=0)
    assert [head.classes[i] for i in by_hand.argmax(1)] == [head.classes[i] for i in clf.predict(few)]


def test_bench_rows_of_0_1_read_typed():
    """0.1's rows (no per-pass spread) read as typed BenchRows; peak memory is one figure per engine process."""
    from calib.bench import BenchResult

    raw = _raw_bench()["rows"]
    result = BenchResult.load(BENCH)
    typed = result.measurements
    assert [(m.kind, m.batch_size, m.texts_per_s, m.p50_ms) for m in typed] == [
        (r["kind"], r["batch_size"], r["texts_per_s"], r["p50_ms"]) for r in raw]
    assert all(m.pass_spread is None for m in typed) and result.texts == raw[0]["texts"]
    assert result.peak_memory_mb == {k: max(r["peak_rss_mb"] for r in raw if r["kind"] == k) for k in ("fp32", "int8")}
