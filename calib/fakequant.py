"""Simulated (fake) INT8 quantization in numpy, as the build quantizes: one home for the arithmetic
that migration (:mod:`calib.smooth`), range choice (:mod:`calib.autorange`) and tests share.

Symmetric INT8 throughout: activations per tensor, ``clip(round(x / s), -127, 127) * s`` with
``s = amax / 127``; weights per output channel (columns of a (K, N) MatMul weight) with
``s_n = max_k |W[k, n]| / 127``. ``np.round`` rounds half to even, as QuantizeLinear does.
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def fake_quant_weight(w: np.ndarray) -> np.ndarray:
    """Symmetric INT8 per output channel (columns of a (K, N) weight)."""
    amax = np.abs(w).max(axis=0, keepdims=True)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(w.dtype)
    return np.clip(np.round(w / scale), -QMAX, QMAX) * scale


def fake_quant_activation(x: np.ndarray, amax: float) -> np.ndarray:
    """Symmetric INT8 per tensor with range [-amax, amax] (all zeros for amax <= 0)."""
    if not amax > 0:
        return np.zeros_like(x)
    scale = x.dtype.type(amax / QMAX)
    return np.clip(np.round(x / scale), -QMAX, QMAX) * scale


def output_error(x: np.ndarray, w: np.ndarray, amax: float, *, reference: np.ndarray | None = None,
                 wq: np.ndarray | None = None, row_weights: np.ndarray | None = None) -> float:
    """Relative squared error of one MatMul in INT8: ``sum_r c_r ||Q(x_r) @ Q(w) - x_r @ w||^2 /
    sum_r c_r ||x_r @ w||^2`` for rows x (n, K), weight w (K, N), row weights c (default 1).
    ``reference`` (x @ w) and ``wq`` (Q(w)) can be passed in when they are reused."""
    ref = x @ w if reference is None else reference
    approx = fake_quant_activation(x, amax) @ (fake_quant_weight(w) if wq is None else wq)
    err = np.square(approx - ref, dtype=np.float64).sum(axis=1)
    energy = np.square(ref, dtype=np.float64).sum(axis=1)
    if row_weights is not None:
        err, energy = err * row_weights, energy * row_weights
    return float(err.sum()) / (float(energy.sum()) or 1.0)
