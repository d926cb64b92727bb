"""Bring your own model: output roles, embedding models end to end, hand-checked neighbour metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import tinymodel

from calib.errors import InputError
from calib.model import OutputRoles, TensorInfo, resolve_roles
from calib.pipeline import config_from_params


def out(name: str, *shape, dtype: str = "float32") -> TensorInfo:
    return TensorInfo(name, dtype, tuple(shape))


def test_roles_detected_only_when_unambiguous():
    classifier = [out("logits", "batch", 2), out("embedding", "batch", 16)]
    assert resolve_roles(classifier) == OutputRoles("logits", "embedding", "none")
    encoder = [out("last_hidden_state", "batch", "seq", 16), out("sentence_embedding", "batch", 16),
               out("token_ids", "batch", "seq", dtype="int64")]
    assert resolve_roles(encoder) == OutputRoles(None, "sentence_embedding", "none")
    assert resolve_roles(encoder, embedding="last_hidden_state", pooling="mean") == \
        OutputRoles(None, "last_hidden_state", "mean")
    assert resolve_roles(encoder[:1] + encoder[2:], pooling="mean") == OutputRoles(None, "last_hidden_state", "mean")
    # a generic (B, C) output is the logits when the model's labels say how many classes there are
    assert resolve_roles([out("output", "batch", 3)], n_labels=3).logits == "output"
    # two pooled outputs, none named like an embedding, and no logits: ambiguous
    with pytest.raises(InputError, match="--logits-output NAME or the sentence embedding with --embedding-output"):
        resolve_roles([out("a", "batch", 8), out("b", "batch", 8)])
    # token states only: say how to pool them
    with pytest.raises(InputError, match="--embedding-output last_hidden_state --pooling mean"):
        resolve_roles(encoder[:1] + encoder[2:])
    with pytest.raises(InputError, match="token states.*--pooling mean"):
        resolve_roles(encoder, embedding="last_hidden_state")
    with pytest.raises(InputError, match="not \\(batch, classes\\) logits.*--embedding-output last_hidden_state --pooling mean"):
        resolve_roles(encoder, logits="last_hidden_state")
    with pytest.raises(InputError, match="int64, not float"):
        resolve_roles(encoder, embedding="token_ids")
    with pytest.raises(InputError, match="already pooled"):
        resolve_roles(encoder, embedding="sentence_embedding", pooling="mean")
    with pytest.raises(InputError, match="no output 'nope'"):
        resolve_roles(encoder, logits="nope")


def _unit(degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_neighbour_metrics_hand_computed():
    """Four texts on the unit circle; INT8 moves text 2 from 60° to 30°.

    FP32 neighbours (nearest first): 0 → 1,2,3; 1 → 0,2,3; 2 → 3,1,0; 3 → 2,1,0.
    INT8 neighbours:                 0 → 1,2,3; 1 → 0,2,3; 2 → 1,0,3; 3 → 2,1,0.
    recall@1 = 3/4; recall@2: text 2 keeps {1} of {3, 1} → (1 + 1 + 0.5 + 1) / 4 = 0.875.
    Spearman of text 2's similarities to (0, 1, 3): ranks (1, 2, 3) vs (2, 3, 1) → 1 − 6·6/(3·8) = −0.5;
    mean (1 + 1 − 0.5 + 1) / 4 = 0.625. 1-NN with labels (0, 0, 1, 1): FP32 4/4, INT8 3/4 (text 2 → text 1).
    """
    from calib.metrics import bucketed_embedding_comparison, embedding_row_metrics

    fp32, int8 = _unit([0, 10, 60, 90]), _unit([0, 10, 30, 90])
    labels = np.array([0, 0, 1, 1])
    rows = embedding_row_metrics(fp32, int8, labels, k=2, knn_k=1)
    np.testing.assert_allclose(rows["cosine"], [1, 1, np.cos(np.radians(30)), 1])
    assert rows["recall_at_1"].tolist() == [1, 1, 0, 1]
    assert rows["recall_at_k"].tolist() == [1, 1, 0.5, 1]
    np.testing.assert_allclose(rows["spearman"], [1, 1, -0.5, 1])
    assert rows["knn_correct_fp32"].tolist() == [True] * 4
    assert rows["knn_correct_int8"].tolist() == [True, True, False, True]

    block, cos = bucketed_embedding_comparison(fp32, int8, labels, np.array([5, 5, 40, 40]), edges=(0, 32), k=2,
                                               knn_k=1, n_resamples=200)
    o = block["overall"]
    assert o["neighbours"]["recall_at_1"] == 0.75 and o["neighbours"]["recall_at_k"] == 0.875 and o["neighbours"]["k"] == 2
    assert o["similarity_spearman"]["mean"] == pytest.approx(0.625)
    assert o["embedding_cosine"]["min"] == pytest.approx(np.cos(np.radians(30)))
    assert o["knn"]["accuracy_fp32"] == 1.0 and o["knn"]["accuracy_int8"] == 0.75
    assert o["knn"]["accuracy_drop_points"] == pytest.approx(25.0)
    low, high = o["neighbours"]["recall_at_1_ci"]
    assert 0 <= low <= 0.75 <= high <= 1
    short, long = block["buckets"]
    assert short["neighbours"]["recall_at_1"] == 1.0 and long["neighbours"]["recall_at_1"] == 0.5
    assert long["similarity_spearman"]["mean"] == pytest.approx(0.25)
    assert cos.shape == (4,)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """The tiny encoder (token states + pooled embedding + int pass-through), its tokenizer and data."""
    root = tmp_path_factory.mktemp("encoder")
    onnx.save(tinymodel.build_model(encoder_only=True), str(root / "encoder.onnx"))
    tinymodel.write_tokenizer(root / "tokenizer")
    texts, labels = tinymodel.make_texts(160, seed=4)
    pd.DataFrame({"text": texts, "label": [tinymodel.LABELS[i] for i in labels]}).to_csv(root / "data.csv", index=False)
    return root


@pytest.fixture()
def encoder_cli(encoder, tmp_path, capsys):
    """(run, workspace args, model args, data args) for the CLI on the tiny encoder in a fresh
    workspace; ``run`` asserts exit 0 and returns stdout."""
    from calib.cli import main

    ws = ["--workspace", str(tmp_path / "ws")]
    model = ["--model", str(encoder / "encoder.onnx"), "--tokenizer", str(encoder / "tokenizer"), "--max-length", "64"]
    data = ["--data", str(encoder / "data.csv")]

    def run(*argv) -> str:
        assert main([*ws, *argv]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    return run, ws, model, data


def test_encoder_only_model_through_the_cli(encoder_cli, tmp_path, capsys):
    from calib.cli import main

    run, ws, model, data = encoder_cli
    # naming token states as the logits is refused at the first stage, in one line
    assert main([*ws, "assemble", *model, *data, "--size", "32", "--logits-output", "last_hidden_state"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--embedding-output last_hidden_state --pooling mean" in err
    out = run("assemble", *model, *data, "--size", "48")
    calset = out.split()[1].rstrip(":")
    manifest = json.loads((tmp_path / "ws" / "runs" / calset / "manifest.json").read_text())
    assert manifest["model"]["roles"] == {"logits": None, "embedding": "sentence_embedding", "pooling": "none"}
    calibration = run("calibrate", "--calibration-set", calset, "--method", "minmax").split()[1].rstrip(":")
    from calib.calibrate import recorded_roles  # later stages read the roles the calibration set recorded

    assert recorded_roles(tmp_path / "ws" / "runs" / calibration) == {
        "logits_output": None, "embedding_output": "sentence_embedding", "pooling": "none"}
    engine = run("build", "--calibration", calibration, "--method", "minmax").split()[1].rstrip(":")
    out = run("validate", "--engine", engine, *model, *data, "--limit", "80", "--bootstrap", "50")
    assert "embedding model (output 'sentence_embedding')" in out and "recall@1" in out and "agreement" not in out
    evaluation = out.split()[1].rstrip(":")
    ev = json.loads((tmp_path / "ws" / "runs" / evaluation / "evaluation.json").read_text())
    overall = ev["metrics"]["overall"]
    assert ev["metrics"]["kind"] == "embedding" and "agreement" not in overall
    assert overall["embedding_cosine"]["mean"] > 0.9 and 0 <= overall["neighbours"]["recall_at_k"] <= 1
    assert overall["knn"]["accuracy_fp32"] is not None  # the data is labelled: k-NN accuracy on both
    # token states pooled with the attention mask: the same mean pooling the graph does, before its L2 norm
    out = run("validate", "--engine", engine, *model, *data, "--limit", "40", "--bootstrap", "0", "--no-layers",
              "--embedding-output", "last_hidden_state", "--pool", "mean")
    assert "embedding model (output 'last_hidden_state')" in out
    out = run("sensitivity", *model, *data, "--ranges", calibration, "--method", "minmax", "--limit", "40",
              "--max-evaluations", "4")
    assert "budget: embedding model (no logits): mean FP32-vs-INT8 embedding cosine >= 0.99" in out
    assert "searched on 40 of 160 rows" in out and "full split may differ" in out
    sensitivity = out.split()[1].rstrip(":")
    out = run("report", evaluation, "--sensitivity", sensitivity)
    report_json = next(line.strip() for line in out.splitlines() if line.strip().endswith("report.json"))
    report = json.loads(Path(report_json).read_text())
    assert report["headline"]["model_kind"] == "embedding" and report["headline"]["neighbour_recall_at_1"] is not None
    md = (Path(report_json).parent / "report.md").read_text()
    assert "Embedding model" in md and "nearest-neighbour recall@1" in md and "top-1 agreement" not in md
    assert main([*ws, "gate", report_json, "--min-embedding-cosine", "0.5"]) == 0
    capsys.readouterr()
    assert main([*ws, "gate", report_json, "--min-agreement", "0.9"]) == 1
    assert "no top-1 agreement" in capsys.readouterr().err
    # the report's own verdict judges the embedding model on its cosine (no agreement or accuracy criteria)
    assert [c["name"] for c in report["verdict"]["criteria"]] == ["min_embedding_cosine"]


def test_head_fit_round_trip(encoder, tmp_path, capsys):
    """calib head fit: the classifier's ONNX logits equal scikit-learn's decision function (1e-5)."""
    from sklearn.linear_model import LogisticRegression

    from calib.batching import encode
    from calib.cli import main
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import run_engine
    from calib.head import HeadArtifact
    from calib.model import load_model, load_tokenizer

    texts, _ = tinymodel.make_texts(90, seed=7)
    classes = ("alpha", "beta", "gamma")
    y = [classes[len(t.split()) % 3] for t in texts]  # learnable from the embedding: length leaks into it
    pd.DataFrame({"review": texts, "y": y}).to_csv(tmp_path / "train.csv", index=False)
    tok = str(encoder / "tokenizer")
    assert main(["--workspace", str(tmp_path / "ws"), "head", "fit", "--model", str(encoder / "encoder.onnx"),
                 "--tokenizer", tok, "--data", str(tmp_path / "train.csv"), "--text-column", "review",
                 "--label-column", "y", "--folds", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    head = HeadArtifact.load(payload["dir"])
    card = head.card
    assert head.classes == classes and card["model"]["outputs"] == ["logits", "embedding"]
    assert card["encoder"]["embedding_output"] == "sentence_embedding" and card["head"]["cv_folds"] == 3
    assert 0 <= card["fp32"]["cv_accuracy"] <= 1 and card["head"]["C"] in card["head"]["c_values"]
    # the classifier loads as one: logits and embedding detected, classes from the card
    spec = load_model(head.model_path, tok, labels=head.classes)
    assert (spec.logits_output, spec.embedding_output) == ("logits", "embedding")
    # independent check: the encoder's embeddings, a scikit-learn fit with the chosen C, its decision function
    encoder_spec = load_model(encoder / "encoder.onnx", tok)
    encoded = encode(load_tokenizer(tok), texts, max_length=128)
    emb = run_engine(OrtEngine(OrtSessionLoader(encoder / "encoder.onnx")), encoded, encoder_spec.input_dtypes,
                     encoder_spec.roles, batch_size=16).embedding
    labels = np.array([classes.index(v) for v in y])
    clf = LogisticRegression(C=card["head"]["C"], max_iter=3000, random_state=0).fit(emb, labels)
    out = run_engine(OrtEngine(OrtSessionLoader(head.model_path)), encoded, spec.input_dtypes, spec.roles,
                     batch_size=16)
    np.testing.assert_allclose(out.logits, clf.decision_function(emb), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.embedding, emb, atol=1e-6)


def test_head_on_token_states_pools_with_the_mask(encoder, tmp_path):
    """--embedding-output last_hidden_state --pooling mean: the classifier's embedding is the masked mean,
    i.e. the encoder's own sentence embedding before its L2 normalisation (cosine 1)."""
    from calib.batching import encode
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.evaluation import run_engine
    from calib.head import HeadConfig, fit_head
    from calib.metrics import row_cosine
    from calib.model import load_model, load_tokenizer

    tok = str(encoder / "tokenizer")
    messages: list[str] = []
    head = fit_head(config_from_params(HeadConfig, dict(model=str(encoder / "encoder.onnx"), tokenizer=tok, data=str(encoder / "data.csv"),
                               embedding_output="last_hidden_state", pooling="mean", c_values=(1.0,), folds=2)),
                    tmp_path / "h", progress=lambda f, m: messages.append(m))
    assert head.card["encoder"]["pooling"] == "mean"
    # the one number formatter: a percentage with its unit after a space ("51.25 %"), as everywhere else
    assert re.search(r"cross-validated FP32 accuracy \d+\.\d\d %$", messages[-1]), messages[-1]
    texts = pd.read_csv(encoder / "data.csv")["text"].tolist()[:20]
    encoded = encode(load_tokenizer(tok), texts, max_length=128)
    spec = load_model(head.model_path, tok)
    mine = run_engine(OrtEngine(OrtSessionLoader(head.model_path)), encoded, spec.input_dtypes, spec.roles,
                      batch_size=7).embedding
    enc_spec = load_model(encoder / "encoder.onnx", tok)
    ref = run_engine(OrtEngine(OrtSessionLoader(encoder / "encoder.onnx")), encoded, enc_spec.input_dtypes,
                     enc_spec.roles, batch_size=7).embedding
    np.testing.assert_allclose(row_cosine(mine, ref), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="at least 2"):
        pd.DataFrame({"text": texts[:5], "label": ["a"] * 5}).to_csv(tmp_path / "one.csv", index=False)
        fit_head(config_from_params(HeadConfig, dict(model=str(encoder / "encoder.onnx"), tokenizer=tok, data=str(tmp_path / "one.csv"))),
                 tmp_path / "x")


def test_sensitivity_of_an_embedding_model_searches_on_cosine(encoder, tmp_path):
    """Broken ranges on the encoder: ranked by each unit's share of the embedding error (no KL), searched
    against the default cosine budget, recommendation within it."""
    from test_validate import absmax_ranges

    from calib.model import load_model
    from calib.sensitivity import DEFAULT_EMBEDDING_COSINE, SensitivityConfig, analyze_sensitivity

    spec = load_model(encoder / "encoder.onnx", encoder / "tokenizer", max_length=64)
    texts, _ = tinymodel.make_texts(64, seed=1)
    amax = absmax_ranges(spec, texts, "tensorrt")
    amax["layer.0/intermediate/gelu/Mul_1_out"] /= 40
    amax["layer.1/attention/context_merge_out"] /= 40
    path = tmp_path / "amax.json"
    path.write_text(json.dumps(amax))
    res = analyze_sensitivity(config_from_params(SensitivityConfig, dict(
        model=str(spec.onnx_path), tokenizer=str(spec.tokenizer_dir), data=str(encoder / "data.csv"), ranges=str(path),
        max_length=64, limit=96, ranking="quantize-one", max_evaluations=10)), tmp_path / "s")
    budget = res.data["budget"]
    assert budget["model_kind"] == "embedding" and budget["min_embedding_cosine"] == DEFAULT_EMBEDDING_COSINE
    assert "embedding model (no logits)" in budget["statement"]
    base = res.data["baseline"]
    assert "top1_agreement" not in base and base["embedding_cosine"] < DEFAULT_EMBEDDING_COSINE and not base["passes"]
    assert all(r["kl_share"] == 0 and r["embedding_error_share"] is not None for r in res.data["ranking"])
    # the two MatMuls reading the broken tensors, and nothing else
    assert res.found and set(res.exclusions) == {"layer.0/output/dense/MatMul", "layer.1/attention/output/dense/MatMul"}
    assert res.data["recommended"]["embedding_cosine"] >= DEFAULT_EMBEDDING_COSINE


def test_calibrators_side_by_side_on_an_embedding_model(encoder_cli, tmp_path):
    """`calib validate --method all` on a model without logits: judged and recommended on its cosine,
    the table shows embedding metrics and no agreement or accuracy columns."""
    run, _, model, data = encoder_cli
    calset = run("assemble", *model, *data, "--size", "48").split()[1].rstrip(":")
    calibration = run("calibrate", "--calibration-set", calset, "--method", "minmax", "percentile").split()[1].rstrip(":")
    out = run("validate", "--calibration", calibration, "--method", "all", *model, *data, "--limit", "40",
              "--bootstrap", "0", "--no-layers")
    header = next(line for line in out.splitlines() if line.startswith("calibrator"))
    assert "emb cos" in header and "recall@1" in header and "agreement" not in header and "acc INT8" not in header
    assert "best embedding cosine" in out or "no calibrator passes" in out
    comparison = json.loads(next((tmp_path / "ws" / "runs").glob("compare-*/comparison.json")).read_text())
    for row in comparison["rows"]:
        assert [c["name"] for c in row["verdict"]["criteria"]] == ["min_embedding_cosine"]
        assert all("embedding_cosine" in b and "top1_agreement" not in b for b in row["bucket_drops"])


def test_the_validate_page_shows_an_embedding_models_own_tiles(encoder_cli, tmp_path, monkeypatch):
    """An encoder's validation opens on the Validate page with its cosine and neighbour tiles, not a
    classifier's agreement and accuracy."""
    import sys

    from streamlit.testing.v1 import AppTest

    run, _, model, data = encoder_cli
    calset = run("assemble", *model, *data, "--size", "32").split()[1].rstrip(":")
    calibration = run("calibrate", "--calibration-set", calset, "--method", "minmax").split()[1].rstrip(":")
    engine = run("build", "--calibration", calibration, "--method", "minmax").split()[1].rstrip(":")
    evaluation = run("validate", "--engine", engine, *model, *data, "--limit", "40", "--bootstrap", "0",
                     "--no-layers").split()[1].rstrip(":")
    app = Path(__file__).resolve().parents[1] / "app"
    monkeypatch.syspath_prepend(str(app))
    monkeypatch.setenv("CALIB_WORKSPACE", str(tmp_path / "ws"))
    assert str(app) in sys.path
    at = AppTest.from_file(str(app / "Home.py"), default_timeout=60).run()
    at.switch_page("pages/1_Project.py").run()
    at.radio(key="project-mode").set_value("My own model").run()
    at.text_input(key="project-onnx-path").set_value(model[1])
    at.text_input(key="project-tok-path").set_value(model[3])
    at.text_input(key="project-data-path").set_value(data[1]).run()
    at.number_input(key="project-maxlen").set_value(64)
    at.button(key="project-apply").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.switch_page("pages/5_Validate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert "Embedding cosine (mean)" in labels and "Neighbour recall@1" in labels
    assert "Top-1 agreement" not in labels and "INT8 accuracy" not in labels
    assert any(f"`{evaluation}`" in c.value for c in at.caption) and any("embedding model" in c.value for c in at.caption)
