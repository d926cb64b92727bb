"""Metrics on fixed predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from calib.errors import InputError
from calib.metrics import (
    agreement_metrics,
    bucketed_comparison,
    classification_metrics,
    paired_bootstrap_diff,
    row_cosine,
    softmax,
)


def test_classification_metrics_known_answer():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(labels, preds, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert m["recall"] == pytest.approx([0.5, 1.0, 0.5])
    # F1 per class: 0.5, 0.8, 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["support"] == [2, 2, 2]


def test_agreement_metrics_known_answer():
    a = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    m = agreement_metrics(a, b)
    assert m["top1_agreement"] == pytest.approx(2 / 3)
    assert m["max_abs_diff"] == pytest.approx(1.0)
    assert m["mean_abs_diff"] == pytest.approx(2 / 6)
    # row 2 cosine is 0, the others 1
    assert m["logit_cosine"] == pytest.approx(2 / 3)
    p, q = softmax(a[1:2])[0], softmax(b[1:2])[0]
    assert m["kl_softmax"] == pytest.approx(float(np.sum(p * np.log(p / q))) / 3)


def test_identical_logits_agree_perfectly():
    x = np.random.default_rng(0).standard_normal((50, 4))
    m = agreement_metrics(x, x.copy())
    assert m["top1_agreement"] == 1.0 and m["kl_softmax"] == pytest.approx(0.0, abs=1e-12)
    assert m["logit_cosine"] == pytest.approx(1.0)
    assert row_cosine(np.zeros((2, 3)), np.zeros((2, 3))).tolist() == [1.0, 1.0]


def test_paired_bootstrap_reproducible_and_sensible():
    rng = np.random.default_rng(1)
    fp32 = rng.random(400) < 0.9
    int8 = fp32.copy()
    int8[:20] = False  # INT8 loses up to 20 texts
    a = paired_bootstrap_diff(fp32, int8, n_resamples=500, seed=7)
    b = paired_bootstrap_diff(fp32, int8, n_resamples=500, seed=7)
    assert a == b and a["seed"] == 7 and a["n_resamples"] == 500
    assert a["diff"] == pytest.approx(np.mean(int8) - np.mean(fp32))
    assert a["low"] <= a["diff"] <= a["high"] < 0
    same = paired_bootstrap_diff(fp32, fp32, n_resamples=200, seed=0)
    assert same["low"] == same["high"] == 0.0
    with pytest.raises(InputError):
        paired_bootstrap_diff(fp32, int8[:10])


def test_bucketed_comparison_isolates_the_long_bucket():
    n = 60
    lengths = np.array([10] * 20 + [100] * 20 + [600] * 20)
    labels = np.zeros(n, dtype=np.int64)
    fp32 = np.tile([[2.0, 0.0]], (n, 1))
    int8 = fp32.copy()
    int8[40:50] = [[0.0, 2.0]]  # half of the long texts flip
    res = bucketed_comparison(fp32, int8, labels, lengths, 2, edges=(0, 32, 64, 128, 256, 512),
                              embedding_cosine=np.ones(n), n_resamples=200, seed=0)
    by = {b["bucket"]: b for b in res["buckets"]}
    assert by["0-31"]["n"] == 20 and by["0-31"]["accuracy_drop_points"] == 0.0
    assert by["512+"]["accuracy_drop_points"] == pytest.approx(50.0)
    assert by["512+"]["agreement"]["top1_agreement"] == pytest.approx(0.5)
    assert by["32-63"]["n"] == 0 and by["32-63"]["agreement"]["top1_agreement"] is None
    assert res["overall"]["accuracy_drop_points"] == pytest.approx(100 * 10 / 60)
    assert res["overall"]["embedding_cosine"]["mean"] == 1.0


def test_bucketed_comparison_without_labels_and_bad_shapes():
    lengths = np.array([5, 40])
    res = bucketed_comparison(np.eye(2), np.eye(2), None, lengths, 2)
    assert "fp32" not in res["overall"] and res["overall"]["agreement"]["top1_agreement"] == 1.0
    with pytest.raises(InputError):
        bucketed_comparison(np.eye(2), np.eye(3)[:2, :2], np.array([0]), lengths, 2)
    with pytest.raises(InputError):
        bucketed_comparison(np.eye(2), np.eye(2), np.array([0, -1]), lengths, 2)
    with pytest.raises(InputError):
        agreement_metrics(np.eye(2), np.eye(3))
