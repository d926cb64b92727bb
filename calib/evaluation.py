"""The evaluation core shared by validate, sensitivity, bench and report.

Three typed steps, each usable on its own:

- :func:`load_eval_data` — read, check and tokenise the evaluation rows of a :class:`~calib.data.DataSpec`
  for a :class:`~calib.model.ModelSpec` (a seeded sample of ``limit`` rows), mapping labels onto
  the model's classes: an :class:`EvalData`;
- :func:`run_engine` — run any :class:`~calib.engines.base.Engine` over those texts in length-bucketed
  batches and keep only the small per-row outputs the model's :class:`~calib.model.OutputRoles` name
  (logits (N, C), an embedding (N, D), token states pooled with the attention mask): an
  :class:`EngineOutputs`;
- :func:`compare` — FP32 vs INT8 metrics overall and per token-length bucket: a :class:`Metrics`,
  whose ``to_dict()`` is the ``metrics`` block of ``evaluation.json`` (and ``Metrics.from_dict``
  reads the blocks older versions wrote).

No stage builds another stage's config to reach this code: each passes its own ``DataSpec``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calib.batching import Encoded, encode, iter_batches
from calib.buckets import DEFAULT_EDGES, check_edges
from calib.cluster import Cluster
from calib.data import DataSpec, fingerprint, label_ids, label_names, load_table, texts_of
from calib.errors import InputError, check_choice
from calib.metrics import bucketed_comparison, bucketed_embedding_comparison, row_cosine
from calib.model import ModelSpec, OutputRoles, load_tokenizer
from calib.verdict import MIN_BUCKET_TEXTS
from calib.workspace import ProgressFn

CLASSIFIER = "classifier"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class EvalSettings:
    """How an FP32-vs-INT8 evaluation runs, whichever engine it scores (validate, and compare per method).

    ``limit``: a seeded random sample of this many eval rows (0 = all). ``edges``: token-length bucket
    edges. ``bootstrap``: resamples for the 95 % CI of the accuracy drop (0 = none). ``layers`` /
    ``layer_rows``: the per-layer analysis and its rows (0 = every evaluated row). ``threads``: ONNX
    Runtime intra-op threads (None: its default). ``cluster``: a :mod:`calib.cluster` spec (None: here).
    """

    edges: tuple[int, ...] = DEFAULT_EDGES
    batch_size: int = 16
    limit: int = 0
    layers: bool = True
    layer_rows: int = 128
    bootstrap: int = 1000
    seed: int = 0
    threads: int | None = None
    cluster: str | None = None

    def check(self) -> tuple[int, ...]:
        """Refuse impossible settings in one line each; return the checked bucket edges."""
        edges = check_edges(self.edges)
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.limit < 0 or self.layer_rows < 0:
            raise InputError("limit and layer rows must be 0 (all) or positive")
        if self.bootstrap < 0:
            raise InputError(f"bootstrap resamples must be 0 (no confidence interval) or more, got {self.bootstrap}")
        if self.seed < 0:
            raise InputError(f"seed must be 0 or positive, got {self.seed}")
        Cluster.parse(self.cluster)
        return edges


# -- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalData:
    """Encoded evaluation texts with their labels (or none) and where they came from.

    ``labels`` (N,) are class ids into ``classes`` (None: the set has no labels); ``rows`` (N,) the
    row numbers in the source split; ``info`` the provenance written into artifacts.
    """

    encoded: Encoded
    labels: np.ndarray | None
    classes: tuple[str, ...]
    rows: np.ndarray
    info: dict = field(compare=False)

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) token counts before truncation (what length buckets use)."""
        return self.encoded.full_lengths

    def subset(self, index: Sequence[int] | np.ndarray) -> EvalData:
        """The rows ``index`` (positions in this set), same classes and provenance."""
        index = np.asarray(index, dtype=np.int64)
        return EvalData(self.encoded.subset(index), None if self.labels is None else self.labels[index],
                        self.classes, self.rows[index], self.info)


SAMPLINGS = ("random", "spread")


def sample_rows(total: int, limit: int, seed: int = 0, how: str = "random") -> np.ndarray:
    """Sorted row numbers of ``limit`` of ``total`` rows (all rows when 0 or ≥ total): a seeded
    random sample, or ``spread``: every k-th row (keeps a split's order-dependent mix, used by bench)."""
    if not limit or limit >= total:
        return np.arange(total)
    if how == "spread":
        return np.linspace(0, total - 1, limit).astype(np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))


def logits_width(spec: ModelSpec) -> int | None:
    """Number of classes of the model's logits output when its shape says so (else None)."""
    name = spec.roles.logits
    for out in spec.outputs:
        if out.name == name and len(out.shape) == 2 and isinstance(out.shape[1], int):
            return int(out.shape[1])
    return None


def load_eval_data(data: DataSpec, spec: ModelSpec, *, limit: int = 0, seed: int = 0,
                   sampling: str = "random") -> EvalData:
    """Load, check and encode the evaluation rows; map labels onto the model's classes.

    ``data.label_column`` may be None or absent from the set: then there are no labels and
    ``info["note"]`` says what that means for the report. Raises :class:`InputError` for labels
    that are not classes of the model or a class count that differs from the logits' width.
    """
    if limit < 0:
        raise InputError("limit must be 0 (all) or positive")
    check_choice(sampling, SAMPLINGS, "sampling")
    base = dataclasses.replace(data, label_column=None)
    ds, loaded = load_table(data, label_optional=True)
    total = len(ds)
    data_fingerprint = fingerprint(ds)
    note = ""
    label_column = loaded.label_column
    without = ("agreement-only report (no accuracy, F1 or accuracy drop)" if spec.roles.logits
               else "embedding comparison without the k-NN accuracy")
    if data.label_column is not None and label_column is None:
        note = f"the eval set has no label column {data.label_column!r}: {without}"
    elif label_column is None:
        note = f"no label column given: {without}"
    rows = sample_rows(total, limit, seed, sampling)
    if len(rows) < total:
        ds = ds.select(rows.tolist())
    labelled = dataclasses.replace(base, label_column=label_column)

    n_logits = logits_width(spec)
    classes = tuple(spec.labels)
    labels = None
    if label_column is not None:
        data_classes = label_names(ds, labelled)
        if classes:
            unknown = [c for c in data_classes if c not in classes]
            if unknown:
                raise InputError(
                    f"eval set {base.describe()} column {label_column!r} has labels {unknown} that are not "
                    f"classes of the model ({list(classes)}); use the model's label names")
        else:
            if n_logits is not None and len(data_classes) != n_logits:
                raise InputError(
                    f"eval set {base.describe()} column {label_column!r} has {len(data_classes)} classes "
                    f"{data_classes} but the model outputs {n_logits} logits; give the model's labels in logit order")
            classes = tuple(data_classes)
        labels = label_ids(ds, labelled, list(classes))
        bad = int(np.count_nonzero(labels < 0))
        if bad:
            raise InputError(f"eval set {base.describe()} column {label_column!r} has {bad} rows with an empty or "
                             "unknown label; clean them or drop the column for an agreement-only report")
    if classes and n_logits is not None and len(classes) != n_logits:
        raise InputError(f"the model has {len(classes)} labels {list(classes)} but outputs {n_logits} logits")
    texts, pairs = texts_of(ds, base)
    encoded = encode(load_tokenizer(str(spec.tokenizer_dir)), texts, pairs, max_length=spec.max_length)
    info = {
        "source": data.source, "split": data.split, "fingerprint": data_fingerprint, "rows_total": total,
        "rows_evaluated": len(rows), "limit": limit, "seed": seed, "text_column": data.text_column,
        "label_column": label_column, "labelled": labels is not None, "note": note,
        "truncation_rate": encoded.truncation_rate, "max_length": spec.max_length,
        "resolved": loaded.resolved, "split_used": loaded.split, "hygiene": loaded.to_dict(),
        "notes": loaded.notes(),
    }
    return EvalData(encoded, labels, classes, rows, info)


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineOutputs:
    """Per-row outputs of one engine, in row order: ``logits`` (N, C) and/or ``embedding`` (N, D)."""

    logits: np.ndarray | None
    embedding: np.ndarray | None

    def __len__(self) -> int:
        for values in (self.logits, self.embedding):
            if values is not None:
                return len(values)
        return 0

    def subset(self, index: Sequence[int] | np.ndarray) -> EngineOutputs:
        index = np.asarray(index, dtype=np.int64)
        return EngineOutputs(None if self.logits is None else self.logits[index],
                             None if self.embedding is None else self.embedding[index])


def pool_tokens(states: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """(B, T, D) token states → (B, D): ``mean`` over real tokens (``mask`` (B, T) bool) or ``cls`` (first token)."""
    if pooling == "cls":
        return np.asarray(states[:, 0, :], dtype=np.float32)
    m = mask[:, : states.shape[1], None].astype(np.float32)
    return (np.sum(states * m, axis=1) / np.maximum(m.sum(axis=1), 1.0)).astype(np.float32)


def batch_outputs(values: Mapping[str, np.ndarray], mask: np.ndarray, roles: OutputRoles) -> dict[str, np.ndarray]:
    """One batch's outputs that ``roles`` names, each (B, n): token states (B, T, D) named as the embedding
    pooled with the batch's attention ``mask`` (B, T) as ``roles.pooling`` says; any other shape refused in
    one line naming the option that reads it right."""
    out = {}
    for name in roles.names:
        v = np.asarray(values[name])
        if name == roles.embedding and roles.pooling != "none" and v.ndim == 3:
            v = pool_tokens(v, mask, roles.pooling)
        if v.ndim != 2:
            option = (f"--embedding-output {name} --pooling mean" if v.ndim == 3 else "--logits-output / --embedding-output")
            role = "logits" if name == roles.logits else "embedding"
            raise InputError(f"output {name!r} read as the {role} gives shape {v.shape}, not (batch, n); "
                             f"use {option}")
        out[name] = v
    return out


class OutputsCollector:
    """Per-row outputs of ``n`` texts gathered batch by batch (:func:`batch_outputs` of each, at its rows)."""

    def __init__(self, n: int, roles: OutputRoles) -> None:
        self.n, self.roles = n, roles
        self._out: dict[str, np.ndarray] = {}

    def add(self, values: Mapping[str, np.ndarray], batch) -> None:
        """One batch's graph outputs (``batch``: its ``rows`` and ``mask``)."""
        for name, v in batch_outputs(values, batch.mask, self.roles).items():
            if name not in self._out:
                self._out[name] = np.zeros((self.n, *v.shape[1:]), dtype=np.float32)
            self._out[name][batch.rows] = v

    def outputs(self) -> EngineOutputs:
        r = self.roles
        return EngineOutputs(self._out.get(r.logits) if r.logits else None,
                             self._out.get(r.embedding) if r.embedding else None)


def run_engine(engine, encoded: Encoded, input_dtypes: Mapping[str, type], roles: OutputRoles, *,
               batch_size: int, progress: ProgressFn | None = None, start: float = 0.0,
               span: float = 1.0) -> EngineOutputs:
    """Run ``engine`` over ``encoded`` in length-bucketed batches; keep the outputs ``roles`` name.

    Token states (B, T, D) named as the embedding are pooled per batch with the attention mask as
    ``roles.pooling`` says, so nothing of size N × T × D is ever held.
    """
    n = len(encoded)
    collected = OutputsCollector(n, roles)
    done = 0
    for batch in iter_batches(encoded, input_dtypes, batch_size):
        collected.add(engine.run(batch.feeds, list(roles.names)), batch)
        done += len(batch.rows)
        if progress is not None:
            progress(start + span * done / max(n, 1), f"{done}/{n} texts")
    return collected.outputs()


# -- comparing ---------------------------------------------------------------------------------


class GroupFigures:
    """Typed reads of one group's FP32-vs-INT8 numbers (all texts, or one length bucket).

    The group's numbers are a dict (``_values``, the JSON form): ``n``; for classifiers ``agreement``
    (top-1, KL, logit differences), ``embedding_cosine`` {mean, min} when the model also has an
    embedding, and ``fp32``/``int8``/``accuracy_drop_points``/``accuracy_diff_ci`` when labelled; for
    embedding models ``embedding_cosine`` {mean, p1, min, CI}, ``neighbours`` {k, recall_at_1,
    recall_at_k, CIs}, ``similarity_spearman`` {mean, CI} and, when labelled, ``knn`` {k, accuracy_fp32,
    accuracy_int8, accuracy_drop_points, accuracy_diff_ci} (see :mod:`calib.metrics`). Every reader
    returns None (or empty) for a figure the group does not have.
    """

    __slots__ = ()

    @property
    def _values(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def _part(self, name: str) -> Mapping[str, Any]:
        return self._values.get(name) or {}

    @property
    def n(self) -> int:
        return int(self._values["n"])

    @property
    def labelled(self) -> bool:
        return "fp32" in self._values

    @property
    def has_agreement(self) -> bool:
        """Whether logits were compared (classifiers)."""
        return "agreement" in self._values

    @property
    def has_embedding(self) -> bool:
        """Whether the embedding cosine was measured (an embedding model, or a classifier that has one)."""
        return "embedding_cosine" in self._values

    def agreement(self, name: str) -> float | None:
        """One logit-agreement figure: ``top1_agreement``, ``kl_softmax``, ``logit_cosine``,
        ``max_abs_diff`` or ``mean_abs_diff`` (None for embedding models)."""
        return self._part("agreement").get(name)

    @property
    def top1_agreement(self) -> float | None:
        return self.agreement("top1_agreement")

    @property
    def kl_softmax(self) -> float | None:
        return self.agreement("kl_softmax")

    @property
    def accuracy_fp32(self) -> float | None:
        return self._part("fp32").get("accuracy")

    @property
    def accuracy_int8(self) -> float | None:
        return self._part("int8").get("accuracy")

    @property
    def accuracy_drop_points(self) -> float | None:
        """FP32 − INT8 accuracy in points (None unlabelled)."""
        return self._values.get("accuracy_drop_points")

    @property
    def accuracy_diff_ci(self) -> dict:
        """The paired-bootstrap interval of INT8 − FP32 accuracy (fractions): {low, high, confidence,
        n_resamples}; empty when unlabelled."""
        return dict(self._part("accuracy_diff_ci"))

    @property
    def macro_f1_fp32(self) -> float | None:
        return self._part("fp32").get("macro_f1")

    @property
    def macro_f1_int8(self) -> float | None:
        return self._part("int8").get("macro_f1")

    def per_class(self, classes: Sequence[str]) -> list[dict]:
        """Per class (in logit order): support, precision and recall on FP32 and INT8 (labelled classifiers;
        else empty)."""
        fp32, int8 = self._part("fp32"), self._part("int8")
        if not fp32 or not int8:
            return []
        return [{"class": name, "support": fp32["support"][i], "precision_fp32": fp32["precision"][i],
                 "recall_fp32": fp32["recall"][i], "precision_int8": int8["precision"][i],
                 "recall_int8": int8["recall"][i]} for i, name in enumerate(classes)]

    def confusion(self, side: str) -> list[list[int]] | None:
        """The confusion matrix (rows: true class, columns: predicted) of ``fp32`` or ``int8``; None unlabelled."""
        return self._part(side).get("confusion")

    @property
    def embedding_cosine(self) -> float | None:
        """Mean per-text embedding cosine FP32 vs INT8 (None without an embedding output)."""
        return self._part("embedding_cosine").get("mean")

    @property
    def embedding_cosine_min(self) -> float | None:
        return self._part("embedding_cosine").get("min")

    @property
    def embedding_cosine_p1(self) -> float | None:
        return self._part("embedding_cosine").get("p1")

    @property
    def neighbour_recall_at_1(self) -> float | None:
        return self._part("neighbours").get("recall_at_1")

    @property
    def neighbour_recall_at_k(self) -> float | None:
        return self._part("neighbours").get("recall_at_k")

    @property
    def neighbour_k(self) -> int | None:
        return self._part("neighbours").get("k")

    @property
    def similarity_spearman(self) -> float | None:
        return self._part("similarity_spearman").get("mean")

    @property
    def knn(self) -> dict | None:
        """k-NN accuracy on FP32 vs INT8 embeddings (labelled embedding models), else None."""
        return self._values.get("knn")

    @property
    def knn_accuracy_drop_points(self) -> float | None:
        return (self.knn or {}).get("accuracy_drop_points")


@dataclass(frozen=True)
class BucketFigures(GroupFigures):
    """One token-length bucket's figures: its label (``"64-127"``), bounds [``low``, ``high``) in
    tokens (``high`` None for the open last bucket) and the group's numbers (see :class:`GroupFigures`)."""

    bucket: str
    low: int
    high: int | None
    values: Mapping[str, Any] = field(repr=False)

    @property
    def _values(self) -> Mapping[str, Any]:
        return self.values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BucketFigures:
        """Read one entry of ``metrics.buckets`` in ``evaluation.json``."""
        return cls(str(data["bucket"]), int(data.get("low") or 0), data.get("high"), data)

    @property
    def empty(self) -> bool:
        return self.n == 0

    @property
    def few_texts(self) -> bool:
        """Too few texts (< ``MIN_BUCKET_TEXTS``) for its figures to carry weight."""
        return self.n < MIN_BUCKET_TEXTS


@dataclass(frozen=True)
class Metrics(GroupFigures):
    """FP32-vs-INT8 metrics overall (read through :class:`GroupFigures`) and per length bucket
    (:attr:`bucket_figures`). ``overall`` and each of ``buckets`` are the JSON dicts of
    ``evaluation.json``; ``row_cosine`` (N,) is the per-text embedding cosine (not in the JSON).
    """

    kind: str  # CLASSIFIER or EMBEDDING
    edges: tuple[int, ...]
    overall: dict
    buckets: tuple[dict, ...]
    row_cosine: np.ndarray | None = field(default=None, compare=False)

    @property
    def _values(self) -> Mapping[str, Any]:
        return self.overall

    def to_dict(self) -> dict:
        """The ``metrics`` block of ``evaluation.json``."""
        return {"kind": self.kind, "edges": list(self.edges), "overall": self.overall, "buckets": list(self.buckets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        """Read a ``metrics`` block, including those written before ``kind`` was recorded (classifiers)."""
        kind = data.get("kind") or (CLASSIFIER if "agreement" in data["overall"] else EMBEDDING)
        return cls(kind, tuple(data.get("edges") or ()), dict(data["overall"]), tuple(data["buckets"]))

    @property
    def is_classifier(self) -> bool:
        return self.kind == CLASSIFIER

    @property
    def bucket_figures(self) -> tuple[BucketFigures, ...]:
        """Each length bucket's figures, shortest first (empty buckets included)."""
        return tuple(BucketFigures.from_dict(b) for b in self.buckets)

    def headline(self) -> dict:
        """The flat numbers budgets are checked on (sensitivity, run listings): agreement, KL and the
        accuracy drop for classifiers; cosine, neighbour recall, similarity correlation and the k-NN
        accuracy for embedding models."""
        out: dict[str, Any] = {}
        if self.is_classifier:
            out.update(top1_agreement=self.top1_agreement, kl_softmax=self.kl_softmax,
                       accuracy_drop_points=self.accuracy_drop_points)
            if self.labelled:
                out.update(accuracy_fp32=self.accuracy_fp32, accuracy_int8=self.accuracy_int8)
            if self.has_embedding:
                out["embedding_cosine"] = self.embedding_cosine
            return out
        out.update(embedding_cosine=self.embedding_cosine, embedding_cosine_p1=self.embedding_cosine_p1,
                   neighbour_recall_at_1=self.neighbour_recall_at_1, neighbour_recall_at_k=self.neighbour_recall_at_k,
                   similarity_spearman=self.similarity_spearman)
        if self.knn:
            out.update(knn_accuracy_fp32=self.knn["accuracy_fp32"], knn_accuracy_int8=self.knn["accuracy_int8"],
                       knn_accuracy_drop_points=self.knn["accuracy_drop_points"])
        return out

    def worst_bucket(self) -> dict | None:
        """The length bucket that fares worst (largest accuracy drop, else lowest agreement, else lowest
        cosine; the first of equals), or None when every bucket is empty."""
        rows = [b for b in self.bucket_figures if not b.empty]
        if self.labelled:
            name, worst = "accuracy_drop_points", max
        elif self.has_agreement:
            name, worst = "top1_agreement", min
        else:
            name, worst = "embedding_cosine", min
        if not rows:
            return None
        b = worst(rows, key=lambda r: getattr(r, name))
        return {"bucket": b.bucket, "n": b.n, name: getattr(b, name)}


def compare(fp32: EngineOutputs, int8: EngineOutputs, data: EvalData, *, edges: Sequence[int] = DEFAULT_EDGES,
            n_resamples: int = 1000, seed: int = 0, k: int = 10, knn_k: int = 5) -> Metrics:
    """Bucketed FP32-vs-INT8 metrics. A classifier (logits on both sides): agreement/KL and task
    metrics on the logits (when labelled), plus the per-text embedding cosine when both sides have an
    embedding. An embedding model: cosine, neighbour recall@1/@``k``, similarity Spearman and (when
    labelled) ``knn_k``-NN accuracy, each with bootstrap CIs."""
    if fp32.logits is None or int8.logits is None:
        if fp32.embedding is None or int8.embedding is None:
            raise InputError("the model has neither logits nor an embedding to compare; name one with "
                             "--logits-output or --embedding-output")
        block, cos = bucketed_embedding_comparison(fp32.embedding, int8.embedding, data.labels, data.lengths,
                                                   edges=edges, k=k, knn_k=knn_k, n_resamples=n_resamples,
                                                   seed=seed)
        return Metrics(EMBEDDING, tuple(block["edges"]), block["overall"], tuple(block["buckets"]), cos)
    cos = None
    if fp32.embedding is not None and int8.embedding is not None:
        cos = row_cosine(fp32.embedding, int8.embedding)
    block = bucketed_comparison(fp32.logits, int8.logits, data.labels, data.lengths, fp32.logits.shape[1],
                                edges=edges, embedding_cosine=cos, n_resamples=n_resamples, seed=seed)
    return Metrics(CLASSIFIER, tuple(block["edges"]), block["overall"], tuple(block["buckets"]), cos)
