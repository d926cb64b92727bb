"""Stage ``head``: attach a classification head to an encoder (``calib head fit``).

``fit_head(HeadConfig, out_dir)`` runs the FP32 encoder over a labelled text set, pools its output
into one embedding per text (:class:`calib.model.OutputRoles`: an already pooled (B, D) output, or
(B, T, D) token states pooled with the attention mask), fits a scikit-learn logistic regression on
those embeddings with ``C`` chosen by stratified cross-validation, and writes a :class:`HeadArtifact`:

    model.onnx   encoder + pooling + linear head; outputs ``logits`` (B, C) and ``embedding`` (B, D)
    card.json    classes (logit order), chosen C and cross-validated FP32 accuracy, training accuracy,
                 the largest |ONNX − scikit-learn| logit difference, data provenance, sha256 of both models

The logits are the regression's decision function (for two classes, ``(−z/2, z/2)`` so that their
softmax is the regression's probability), so ``argmax`` is its prediction. The demo's classifiers
are built with the same two functions, :func:`logistic_head` and :func:`attach_head`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calib.batching import encode
from calib.data import DataSpec, fingerprint, label_ids, label_names, load_rows, texts_of
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.errors import InputError
from calib.evaluation import run_engine
from calib.formatting import percent
from calib.io import atomic_path, atomic_write_json, read_artifact_json, sha256_file
from calib.model import ModelRef, OutputRoles, load_tokenizer, read_onnx
from calib.pipeline import config_params
from calib.workspace import ProgressFn

CARD_SCHEMA = "calib.head/1"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
LOGITS_OUTPUT = "logits"
EMBEDDING_OUTPUT = "embedding"
DEFAULT_C_VALUES = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_HEAD_ERROR = 1e-3  # |ONNX logits − scikit-learn decision function| beyond this is a bug, refused


@dataclass(frozen=True)
class HeadConfig:
    """The encoder, the labelled texts to fit on, and the cross-validation grid.

    ``embedding_output`` / ``pooling``: which encoder output is the embedding (detected when
    unambiguous; ``pooling`` ``mean`` or ``cls`` for (B, T, D) token states). ``c_values``: inverse
    regularisation strengths tried; ``folds``: stratified folds (fewer when a class has fewer texts).
    """

    model: ModelRef  # the encoder (its embedding output and pooling: detected when unambiguous)
    data: DataSpec  # the labelled texts (label_column must be set)
    c_values: tuple[float, ...] = DEFAULT_C_VALUES
    folds: int = 5
    seed: int = 0
    batch_size: int = 16
    threads: int | None = None


def head_weights(coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted logistic regression's ``coef_`` / ``intercept_`` as a head ``weight`` (C, D) and
    ``bias`` (C,) float32 whose logits are its decision function (two classes: ``(−z/2, z/2)``)."""
    weight, bias = np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32)
    if n_classes == 2:  # one logit z for class 1: logits (-z/2, z/2) give softmax = sigmoid(z)
        weight = np.concatenate([-weight / 2, weight / 2])
        bias = np.concatenate([-bias / 2, bias / 2])
    return weight, bias


def logistic_head(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, c: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression with a fixed ``c`` on (N, D) embeddings → head ``weight`` (C, D), ``bias`` (C,)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    clf.fit(embeddings, labels)
    if list(clf.classes_) != list(range(n_classes)):
        raise InputError(f"the training texts lack some classes (have {list(clf.classes_)} of {n_classes})")
    return head_weights(clf.coef_, clf.intercept_, n_classes)


def cross_validated_head(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, c_values: tuple[float, ...],
                         folds: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Logistic regression with ``C`` chosen by stratified ``folds``-fold cross-validated accuracy,
    refitted on every text. Returns the fitted classifier and what was chosen (C, CV accuracy per C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = np.bincount(labels, minlength=n_classes)
    if counts.min() < 2:
        raise InputError(f"class {int(np.argmin(counts))} has {int(counts.min())} training text(s); "
                         "every class needs at least 2 to fit and cross-validate a head")
    k = int(min(folds, counts.min()))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = {}
    for c in c_values:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        scores[c] = float(np.mean(cross_val_score(clf, embeddings, labels, cv=splitter, scoring="accuracy")))
    best = max(c_values, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    clf = LogisticRegression(C=best, max_iter=3000, random_state=seed).fit(embeddings, labels)
    return clf, {"C": best, "cv_folds": k, "cv_accuracy": scores[best],
                 "cv_accuracy_per_C": {repr(c): s for c, s in scores.items()}}


def attach_head(encoder: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray, *,
                embedding_output: str = EMBEDDING_OUTPUT, pooling: str = "none",
                graph_name: str | None = None) -> onnx.ModelProto:
    """The encoder graph plus pooling (if asked) and ``logits = embedding @ weight.T + bias``.

    ``weight`` (C, D), ``bias`` (C,) float32. ``embedding_output`` (B, D), or (B, T, D) token states
    pooled over the ``attention_mask`` (``mean``) or at the first token (``cls``). Outputs:
    ``logits`` (batch, C) and ``embedding`` (batch, D); the encoder's other outputs are dropped.
    """
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    n_classes, hidden = weight.shape
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    if embedding_output not in {o.name for o in graph.output}:
        raise InputError(f"the encoder has no output {embedding_output!r} to attach a head to")
    if LOGITS_OUTPUT in {n for node in graph.node for n in node.output}:
        raise InputError(f"the encoder already produces a tensor named {LOGITS_OUTPUT!r}; it already has a head")
    pooled = embedding_output
    if pooling in ("mean", "cls"):
        pooled = "/head/pooled"
        if pooling == "cls":
            graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "/head/zero"),
                                      numpy_helper.from_array(np.array([1], np.int64), "/head/one")])
            graph.node.extend([
                helper.make_node("Slice", [embedding_output, "/head/zero", "/head/one", "/head/one"],
                                 ["/head/first"], name="/head/first_token"),
                helper.make_node("Squeeze", ["/head/first", "/head/one"], [pooled], name="/head/squeeze")])
        else:
            graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "/head/axis1"),
                                      numpy_helper.from_array(np.array([2], np.int64), "/head/axis2"),
                                      numpy_helper.from_array(np.array(1.0, np.float32), "/head/one_f")])
            graph.node.extend([
                helper.make_node("Cast", ["attention_mask"], ["/head/mask"], name="/head/mask_cast", to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", ["/head/mask", "/head/axis2"], ["/head/mask3"], name="/head/mask_unsqueeze"),
                helper.make_node("Mul", [embedding_output, "/head/mask3"], ["/head/masked"], name="/head/mask_mul"),
                helper.make_node("ReduceSum", ["/head/masked", "/head/axis1"], ["/head/sum"], name="/head/sum",
                                 keepdims=0),
                helper.make_node("ReduceSum", ["/head/mask3", "/head/axis1"], ["/head/count"], name="/head/count",
                                 keepdims=0),
                helper.make_node("Max", ["/head/count", "/head/one_f"], ["/head/count1"], name="/head/count_floor"),
                helper.make_node("Div", ["/head/sum", "/head/count1"], [pooled], name="/head/mean")])
    elif pooling != "none":
        raise InputError(f"unknown pooling {pooling!r} (choose none, mean or cls)")
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(weight.T), "head.weight"),  # (D, C)
        numpy_helper.from_array(bias, "head.bias"),
    ])
    if pooled != EMBEDDING_OUTPUT:
        graph.node.append(helper.make_node("Identity", [pooled], [EMBEDDING_OUTPUT], name="/head/embedding"))
    graph.node.extend([
        helper.make_node("MatMul", [EMBEDDING_OUTPUT, "head.weight"], ["/head/MatMul_output_0"], name="/head/MatMul"),
        helper.make_node("Add", ["/head/MatMul_output_0", "head.bias"], [LOGITS_OUTPUT], name="/head/Add"),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", n_classes]),
        helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", hidden]),
    ])
    if graph_name:
        graph.name = graph_name
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class HeadArtifact:
    """A saved head fit: ``model.onnx`` (encoder + pooling + head) and ``card.json``."""

    dir: Path
    card: dict

    @classmethod
    def load(cls, directory: str | Path) -> HeadArtifact:
        directory = Path(directory)
        return cls(directory, read_artifact_json(directory / CARD_FILE, CARD_SCHEMA, "give a head fit run folder"))

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    def summary(self) -> dict:
        return {"classes": len(self.classes), "C": self.card["head"]["C"],
                "cv_accuracy": self.card["fp32"]["cv_accuracy"], "rows": self.card["data"]["rows"]}


def fit_head(config: HeadConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> HeadArtifact:
    """Fit a logistic-regression head on the encoder's FP32 embeddings and write the classifier."""
    report = progress or (lambda fraction, message="": None)
    t0 = time.monotonic()
    if not config.c_values or min(config.c_values) <= 0:
        raise InputError(f"C values must be positive, got {list(config.c_values)}")
    if config.folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {config.folds}")
    if not config.data.label_column:
        raise InputError("a head is fitted on labelled texts: give --label-column")
    spec = config.model.load()
    roles = spec.roles
    if roles.embedding is None:
        raise InputError(f"ONNX model {config.model.model} has no embedding output to fit a head on; name it with "
                         "--embedding-output (and --pooling mean for (B, T, D) token states)")
    data = config.data
    rows = load_rows(data)
    classes = label_names(rows, data)
    labels = label_ids(rows, data, classes)
    if len(classes) < 2:
        raise InputError(f"dataset {data.describe()} column {data.label_column!r} has {len(classes)} class(es); "
                         "a classifier needs at least 2")
    texts, pairs = texts_of(rows, data)

    encoded = encode(load_tokenizer(str(spec.tokenizer_dir)), texts, pairs, max_length=spec.max_length)
    report(0.02, f"embedding {len(texts)} texts")
    encoder = OrtEngine(OrtSessionLoader(spec.onnx_path, threads=config.threads), name="onnxruntime-fp32")
    embeddings = run_engine(encoder, encoded, spec.input_dtypes, OutputRoles(None, roles.embedding, roles.pooling),
                            batch_size=config.batch_size, progress=report, start=0.02, span=0.78).embedding
    report(0.8, f"cross-validating C over {list(config.c_values)}")
    clf, chosen = cross_validated_head(embeddings, labels, len(classes), tuple(config.c_values), config.folds,
                                       config.seed)
    weight, bias = head_weights(clf.coef_, clf.intercept_, len(classes))
    train_accuracy = float(np.mean(clf.predict(embeddings) == labels))
    model = attach_head(read_onnx(spec.onnx_path), weight, bias, embedding_output=roles.embedding,
                        pooling=roles.pooling)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        onnx.save(model, str(tmp))
        # the written classifier must give the regression's decision function (checked on up to 256 texts)
        check = np.arange(min(len(texts), 256))
        logits = run_engine(OrtEngine(OrtSessionLoader(tmp, threads=config.threads)), encoded.subset(check),
                            spec.input_dtypes, OutputRoles(LOGITS_OUTPUT, None), batch_size=config.batch_size).logits
        expected = clf.decision_function(embeddings[check])
        got = logits[:, 1] - logits[:, 0] if len(classes) == 2 else logits
        head_error = float(np.max(np.abs(got - expected)))
        if head_error > MAX_HEAD_ERROR:
            raise InputError(f"the ONNX head disagrees with scikit-learn by {head_error:.3g}; the encoder's "
                             "embedding output may depend on the batch (report this model)")

    card = {
        "schema": CARD_SCHEMA,
        "classes": list(classes),
        "model": {"file": MODEL_FILE, "sha256": sha256_file(out_dir / MODEL_FILE), "outputs": [LOGITS_OUTPUT,
                                                                                               EMBEDDING_OUTPUT]},
        "encoder": {"path": str(spec.onnx_path), "sha256": spec.sha256, "tokenizer": str(spec.tokenizer_dir),
                    "max_length": spec.max_length, "embedding_output": roles.embedding, "pooling": roles.pooling},
        "data": {"source": data.source, "resolved": str(Path(data.source).resolve()) if Path(data.source).exists()
                 else data.source, "split": data.split, "fingerprint": fingerprint(rows), "rows": len(rows),
                 "text_column": data.text_column, "label_column": data.label_column,
                 "class_counts": np.bincount(labels, minlength=len(classes)).tolist()},
        "head": {"type": "logistic_regression", **chosen, "c_values": list(config.c_values),
                 "max_abs_diff_vs_sklearn": head_error},
        "fp32": {"cv_accuracy": chosen["cv_accuracy"], "train_accuracy": train_accuracy},
        "config": config_params(config),
        "seconds": round(time.monotonic() - t0, 2),
    }
    atomic_write_json(out_dir / CARD_FILE, card)
    report(1.0, f"C {chosen['C']:g}: cross-validated FP32 accuracy {percent(chosen['cv_accuracy'])}")
    return HeadArtifact.load(out_dir)
