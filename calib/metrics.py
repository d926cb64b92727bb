"""Task, agreement and embedding metrics for FP32 vs INT8 outputs, overall and per token-length bucket.

Everything here works on fixed arrays (no model runs), so it is tested on predictions with known
answers. Shapes: ``logits`` (N, C) float, ``labels`` (N,) int class ids (-1 = unlabelled),
``lengths`` (N,) untruncated token counts, ``embedding_cosine`` (N,) per-row cosines, embeddings
(N, D) float.

Classifiers get task metrics and FP32/INT8 agreement on the logits. Embedding models get
:func:`embedding_row_metrics`: per text, the cosine of its FP32 and INT8 embeddings, whether it keeps
its FP32 nearest neighbours within the evaluated set (recall@1, recall@k), the Spearman correlation
of its similarities to every other text, and (when labelled) whether a leave-one-out k-NN vote
classifies it correctly on FP32 and on INT8 embeddings; groups report means with bootstrap CIs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from calib.buckets import DEFAULT_EDGES, bucket_index, bucket_labels
from calib.errors import InputError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, computed in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def row_cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of each row pair of two (N, D) arrays; (N,) float64. Zero rows give 1 if both are zero."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    dot = np.einsum("nd,nd->n", a, b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < eps) & (nb < eps)
    cos = dot / np.maximum(na * nb, eps)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/support and the confusion matrix (rows = truth)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    classes = list(range(n_classes))
    if len(labels) == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None, "precision": [None] * n_classes,
                "recall": [None] * n_classes, "support": [0] * n_classes,
                "confusion": np.zeros((n_classes, n_classes), dtype=np.int64).tolist()}
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, average=None, zero_division=0)
    # macro-F1 over the classes present in truth or prediction, as scikit-learn does by default
    present = sorted(set(labels.tolist()) | set(predictions.tolist()))
    return {
        "n": len(labels),
        "accuracy": float(np.mean(labels == predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        "precision": [float(x) for x in precision],
        "recall": [float(x) for x in recall],
        "support": [int(x) for x in support],
        "confusion": confusion_matrix(labels, predictions, labels=classes).astype(np.int64).tolist(),
    }


def agreement_metrics(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> dict:
    """Top-1 agreement, mean logit cosine, max/mean |diff| and mean KL(softmax FP32 ‖ softmax INT8) in nats."""
    a = np.asarray(fp32_logits, dtype=np.float64)
    b = np.asarray(int8_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"FP32 logits {a.shape} and INT8 logits {b.shape} differ in shape")
    if len(a) == 0:
        return {"n": 0, "top1_agreement": None, "logit_cosine": None, "max_abs_diff": None,
                "mean_abs_diff": None, "kl_softmax": None}
    diff = np.abs(a - b)
    p, q = softmax(a), softmax(b)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))), axis=1)
    return {
        "n": len(a),
        "top1_agreement": float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))),
        "logit_cosine": float(np.mean(row_cosine(a, b))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "kl_softmax": float(np.mean(np.maximum(kl, 0.0))),
    }


def paired_bootstrap_diff(
    fp32_correct: np.ndarray,
    int8_correct: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired bootstrap CI of accuracy(INT8) − accuracy(FP32), in accuracy units (not points).

    The same resampled rows are used for both models, so shared hard examples cancel out.
    Reproducible: the same ``seed`` gives the same interval.
    """
    x = np.asarray(fp32_correct, dtype=np.float64)
    y = np.asarray(int8_correct, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"paired bootstrap needs the same rows for both models, got {x.shape} and {y.shape}")
    n = len(x)
    if n and n_resamples <= 0:  # point estimate only
        return {"diff": float(np.mean(y - x)), "low": None, "high": None, "n_resamples": 0,
                "confidence": confidence, "seed": seed}
    if n == 0:
        return {"diff": None, "low": None, "high": None, "n_resamples": 0, "confidence": confidence, "seed": seed}
    per_row = y - x
    low, high = bootstrap_mean_ci(per_row, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"diff": float(per_row.mean()), "low": low, "high": high,
            "n_resamples": int(n_resamples), "confidence": float(confidence), "seed": int(seed)}


def bootstrap_mean_ci(values: np.ndarray, *, n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of (N,) per-row values; (None, None) without resamples."""
    per_row = np.asarray(values, dtype=np.float64)
    n = len(per_row)
    if n == 0 or n_resamples <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = per_row[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def compare_outputs(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: np.ndarray | None,
    n_classes: int,
    *,
    embedding_cosine: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """All metrics for one group of rows: FP32 and INT8 task metrics (if labelled), agreement,
    embedding cosine (if given) and the paired bootstrap CI of the accuracy difference."""
    fp32_pred = np.asarray(fp32_logits).argmax(axis=1)
    int8_pred = np.asarray(int8_logits).argmax(axis=1)
    out: dict = {"n": len(fp32_pred), "agreement": agreement_metrics(fp32_logits, int8_logits)}
    if embedding_cosine is not None:
        cos = np.asarray(embedding_cosine, dtype=np.float64)
        out["embedding_cosine"] = {"mean": float(cos.mean()) if len(cos) else None,
                                   "min": float(cos.min()) if len(cos) else None}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        out["fp32"] = classification_metrics(labels, fp32_pred, n_classes)
        out["int8"] = classification_metrics(labels, int8_pred, n_classes)
        acc_fp32, acc_int8 = out["fp32"]["accuracy"], out["int8"]["accuracy"]
        out["accuracy_drop_points"] = (None if acc_fp32 is None else 100.0 * (acc_fp32 - acc_int8))
        out["accuracy_diff_ci"] = paired_bootstrap_diff(fp32_pred == labels, int8_pred == labels,
                                                        n_resamples=n_resamples, seed=seed)
    return out


def bucketed_comparison(
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    labels: np.ndarray | None,
    lengths: np.ndarray,
    n_classes: int,
    *,
    edges: Sequence[int] = DEFAULT_EDGES,
    embedding_cosine: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """:func:`compare_outputs` overall and for each token-length bucket (untruncated ``lengths``).

    Returns ``{"overall": {...}, "buckets": [{"bucket": "0-31", "low": 0, "high": 32, ...}, ...]}``;
    empty buckets are listed with ``n = 0`` so every report shows the same rows.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    for name, arr in (("FP32 logits", fp32_logits), ("INT8 logits", int8_logits), ("labels", labels),
                      ("embedding cosine", embedding_cosine)):
        if arr is not None and len(arr) != n:
            raise InputError(f"{name} have {len(arr)} rows but there are {n} lengths")
    if labels is not None and np.any(np.asarray(labels) < 0):
        raise InputError("labels hold ids < 0 (unknown classes); map every label to a model class first")
    edges = tuple(edges)
    index = bucket_index(lengths, edges)
    names = bucket_labels(edges)
    bounds = list(zip(edges, (*edges[1:], None)))

    def group(rows: np.ndarray) -> dict:
        return compare_outputs(
            np.asarray(fp32_logits)[rows], np.asarray(int8_logits)[rows],
            None if labels is None else np.asarray(labels)[rows], n_classes,
            embedding_cosine=None if embedding_cosine is None else np.asarray(embedding_cosine)[rows],
            n_resamples=n_resamples, seed=seed)

    buckets = []
    for b, (name, (low, high)) in enumerate(zip(names, bounds)):
        rows = np.flatnonzero(index == b)
        buckets.append({"bucket": name, "low": low, "high": high, **group(rows)})
    return {"edges": list(edges), "overall": group(np.arange(n)), "buckets": buckets}


# -- embedding models ----------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along axis 1 of a (c, M) array."""
    from scipy.stats import rankdata

    return rankdata(x, axis=1)


def embedding_row_metrics(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None, *,
                          k: int = 10, knn_k: int = 5, chunk: int = 256) -> dict[str, np.ndarray]:
    """Per-text comparison of FP32 and INT8 embeddings (N, D); every array returned is (N,).

    Neighbours are the other texts of the set ranked by cosine similarity (self excluded):
    ``recall_at_1`` 1 when the INT8 nearest neighbour is the FP32 one; ``recall_at_k`` the share of
    the FP32 top-``k`` (``k`` capped at N − 1) found in the INT8 top-``k``; ``spearman`` the rank
    correlation of the text's N − 1 similarities under FP32 and INT8; ``knn_correct_fp32`` /
    ``knn_correct_int8`` (with ``labels``) whether a leave-one-out vote of the ``knn_k`` nearest
    texts (ties go to the nearer neighbours) gives the text's label. Memory O(chunk × N).
    """
    a, b = _unit_rows(fp32), _unit_rows(int8)
    if a.shape != b.shape:
        raise InputError(f"FP32 embeddings {a.shape} and INT8 embeddings {b.shape} differ in shape")
    n = len(a)
    out: dict[str, np.ndarray] = {"cosine": np.clip(np.einsum("nd,nd->n", a, b), -1.0, 1.0)}
    if n < 2:
        return out
    kk, vk = min(k, n - 1), min(knn_k, n - 1)
    r1, rk, rho = np.zeros(n), np.zeros(n), np.zeros(n)
    knn32 = np.zeros(n, dtype=bool) if labels is not None else None
    knn8 = np.zeros(n, dtype=bool) if labels is not None else None
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    n_classes = 0 if lab is None else int(lab.max()) + 1
    cols = np.arange(n - 1)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        others = cols[None, :] + (cols[None, :] >= rows[:, None])  # (c, N-1): every index but the row's own
        s32 = np.take_along_axis(a[rows] @ a.T, others, axis=1)
        s8 = np.take_along_axis(b[rows] @ b.T, others, axis=1)
        top32 = np.take_along_axis(others, np.argsort(-s32, axis=1, kind="stable")[:, :max(kk, vk)], axis=1)
        top8 = np.take_along_axis(others, np.argsort(-s8, axis=1, kind="stable")[:, :max(kk, vk)], axis=1)
        r1[rows] = top32[:, 0] == top8[:, 0]
        hit = (top32[:, :kk, None] == top8[:, None, :kk]).any(axis=2)
        rk[rows] = hit.sum(axis=1) / kk
        q32, q8 = _rank_rows(s32), _rank_rows(s8)
        q32 -= q32.mean(axis=1, keepdims=True)
        q8 -= q8.mean(axis=1, keepdims=True)
        denom = np.sqrt((q32 ** 2).sum(axis=1) * (q8 ** 2).sum(axis=1))
        rho[rows] = np.where(denom > 0, (q32 * q8).sum(axis=1) / np.where(denom > 0, denom, 1.0), 1.0)
        if lab is not None:
            weights = 1.0 + 1e-6 * np.arange(vk, 0, -1)  # one vote each; nearer neighbours break ties
            for top, correct in ((top32, knn32), (top8, knn8)):
                votes = np.zeros((len(rows), n_classes))
                np.add.at(votes, (np.repeat(np.arange(len(rows)), vk), lab[top[:, :vk]].ravel()),
                          np.tile(weights, len(rows)))
                correct[rows] = votes.argmax(axis=1) == lab[rows]
    out.update(recall_at_1=r1, recall_at_k=rk, spearman=rho)
    out["k"] = np.asarray(kk)
    if lab is not None:
        out["knn_correct_fp32"], out["knn_correct_int8"] = knn32, knn8
        out["knn_k"] = np.asarray(vk)
    return out


def _mean_with_ci(values: np.ndarray, n_resamples: int, seed: int) -> dict:
    if len(values) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None}
    low, high = bootstrap_mean_ci(values, n_resamples=n_resamples, seed=seed)
    return {"mean": float(np.mean(values)), "ci_low": low, "ci_high": high}


def embedding_group(per_row: dict[str, np.ndarray], rows: np.ndarray, *, n_resamples: int = 1000,
                    seed: int = 0) -> dict:
    """Metrics of one group of rows from :func:`embedding_row_metrics` (means with bootstrap CIs)."""
    cos = per_row["cosine"][rows]
    out: dict = {"n": len(rows), "embedding_cosine": {
        **_mean_with_ci(cos, n_resamples, seed),
        "p1": float(np.percentile(cos, 1)) if len(cos) else None,
        "min": float(cos.min()) if len(cos) else None}}
    if "recall_at_1" in per_row:
        r1, rk = _mean_with_ci(per_row["recall_at_1"][rows], n_resamples, seed), \
            _mean_with_ci(per_row["recall_at_k"][rows], n_resamples, seed)
        out["neighbours"] = {"k": int(per_row["k"]), "recall_at_1": r1["mean"], "recall_at_1_ci": [r1["ci_low"], r1["ci_high"]],
                             "recall_at_k": rk["mean"], "recall_at_k_ci": [rk["ci_low"], rk["ci_high"]]}
        out["similarity_spearman"] = _mean_with_ci(per_row["spearman"][rows], n_resamples, seed)
    if "knn_correct_fp32" in per_row:
        c32, c8 = per_row["knn_correct_fp32"][rows], per_row["knn_correct_int8"][rows]
        acc32 = float(c32.mean()) if len(rows) else None
        acc8 = float(c8.mean()) if len(rows) else None
        out["knn"] = {"k": int(per_row["knn_k"]), "accuracy_fp32": acc32, "accuracy_int8": acc8,
                      "accuracy_drop_points": None if acc32 is None else 100.0 * (acc32 - acc8),
                      "accuracy_diff_ci": paired_bootstrap_diff(c32, c8, n_resamples=n_resamples, seed=seed)}
    return out


def bucketed_embedding_comparison(
    fp32_embedding: np.ndarray,
    int8_embedding: np.ndarray,
    labels: np.ndarray | None,
    lengths: np.ndarray,
    *,
    edges: Sequence[int] = DEFAULT_EDGES,
    k: int = 10,
    knn_k: int = 5,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict, np.ndarray]:
    """:func:`embedding_group` overall and per token-length bucket (same layout as
    :func:`bucketed_comparison`). Neighbours are always searched in the whole set; a bucket averages
    its own texts. Also returns the per-text cosines (N,)."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    for name, arr in (("FP32 embeddings", fp32_embedding), ("INT8 embeddings", int8_embedding), ("labels", labels)):
        if arr is not None and len(arr) != n:
            raise InputError(f"{name} have {len(arr)} rows but there are {n} lengths")
    if labels is not None and np.any(np.asarray(labels) < 0):
        raise InputError("labels hold ids < 0 (unknown classes); map every label to a model class first")
    per_row = embedding_row_metrics(fp32_embedding, int8_embedding, labels, k=k, knn_k=knn_k)
    edges = tuple(edges)
    index = bucket_index(lengths, edges)
    bounds = list(zip(edges, (*edges[1:], None)))
    buckets = []
    for b, (name, (low, high)) in enumerate(zip(bucket_labels(edges), bounds)):
        rows = np.flatnonzero(index == b)
        buckets.append({"bucket": name, "low": low, "high": high,
                        **embedding_group(per_row, rows, n_resamples=n_resamples, seed=seed)})
    overall = embedding_group(per_row, np.arange(n), n_resamples=n_resamples, seed=seed)
    return {"edges": list(edges), "overall": overall, "buckets": buckets}, per_row["cosine"]
