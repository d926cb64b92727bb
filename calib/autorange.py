"""Calibration method ``auto``: each tensor's amax chosen among the calibrators' candidates by the
error it causes downstream, not by its own histogram alone.

Candidates per tensor (all from the one statistics pass): minmax, percentile 99.9 / 99.99 / 99.999,
MSE and entropy. The criterion depends on what reads the tensor:

- **input X of weighted MatMuls** (``X @ W``, W constant; per-channel statistics exist): the relative
  squared error of the simulated INT8 MatMul output, ``||Q(X) Q(W) - X W||^2 / ||X W||^2``, over the
  sampled token vectors plus the outlier tokens of :class:`calib.stats.ChannelStats` (weighted so
  the sum estimates the whole calibration set), all readers' weights at once. This is where a
  per-tensor range costs most: an outlier channel meeting a large weight row.
- **anything else** (the activation x activation MatMuls of attention, residual-Add inputs, model
  outputs): the relative squared quantization error of the tensor itself, from its histogram. For
  ``Y = A @ B`` with the other factor independent of A's rounding, ``E||dA B||^2`` is proportional
  to ``E||dA||^2``, so this *is* the output criterion under that approximation; for an Add it is exact.

The chosen method, every candidate's amax and error, and the criterion are recorded per tensor in
the ranges JSON (``choice``) and shown by ``calib ranges diff``. Cost: a few float32 GEMMs of
(rows x K) x (K x N) per weighted tensor and candidate; memory bounded by the stored samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from calib.calibrators import entropy_amax, mse_amax, mse_errors, percentile_amax
from calib.errors import InputError
from calib.fakequant import fake_quant_activation, fake_quant_weight, output_error
from calib.placement import weighted_matmuls
from calib.stats import ActivationStats, TensorStats

CANDIDATES = ("minmax", "percentile-99.9", "percentile-99.99", "percentile-99.999", "mse", "entropy")
DEFAULTS: dict[str, Any] = {"rows": 256}  # sampled token vectors per tensor (plus the stored outlier tokens)


def candidate_amax(stats: TensorStats) -> dict[str, float]:
    """Every candidate's amax for one tensor (0 for a tensor without finite non-zero values)."""
    if stats.absmax == 0:
        return dict.fromkeys(CANDIDATES, 0.0)
    return {"minmax": stats.absmax, "percentile-99.9": percentile_amax(stats, 99.9),
            "percentile-99.99": percentile_amax(stats, 99.99), "percentile-99.999": percentile_amax(stats, 99.999),
            "mse": mse_amax(stats), "entropy": entropy_amax(stats)}


def own_errors(stats: TensorStats, amax: Mapping[str, float]) -> dict[str, float]:
    """Relative squared INT8 error of the tensor itself per candidate (histogram at bin centres)."""
    hist = stats.covering_hist().astype(np.float64)
    centres = np.arange(len(hist)) + 0.5
    energy = float((hist * centres * centres).sum()) or 1.0
    names = list(amax)
    bins = np.array([min(amax[n] / stats.width, stats.absmax / stats.width) for n in names])
    errors = mse_errors(hist, np.maximum(bins, 1e-9))
    return {n: float(e) / energy for n, e in zip(names, errors)}


def check_params(params: Mapping[str, Any]) -> None:
    rows = params["rows"]
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise InputError(f"auto rows must be a positive integer, got {rows!r}")


def choose_ranges(stats: ActivationStats, model: onnx.ModelProto | None, *, rows: int = DEFAULTS["rows"]
                  ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Per-tensor amax chosen by downstream error, and the record of each choice.

    ``model``: the calibrated ONNX model with its weights (for the weighted MatMuls' W)."""
    if model is None:
        raise InputError("calibration method 'auto' needs the model's weights (pass model= to compute_ranges)")
    if not stats.has_channels:
        stats.channels("")  # statistics from before per-channel statistics: one line naming the command
    readers = weighted_matmuls(model)
    inits = {t.name: t for t in model.graph.initializer}
    amax: dict[str, float] = {}
    record: dict[str, dict[str, Any]] = {}
    for t in stats.tensors:
        cands = candidate_amax(t)
        if t.absmax == 0:
            amax[t.name] = 0.0
            record[t.name] = {"method": "minmax", "criterion": "zero range", "error": 0.0}
            continue
        if t.channels is not None and len(t.channels.sample) and t.name in readers:
            errors = _matmul_errors(t, cands, readers[t.name], inits, rows)
            criterion = "matmul-output"
        else:
            errors = own_errors(t, cands)
            criterion = "own-histogram"
        best = min(CANDIDATES, key=lambda n: (errors[n], -cands[n]))  # ties: the larger range (less clipping)
        amax[t.name] = float(cands[best])
        record[t.name] = {"method": best, "criterion": criterion, "error": errors[best],
                          "candidates": {n: {"amax": float(cands[n]), "error": errors[n]} for n in CANDIDATES}}
    return amax, record


def _matmul_errors(t: TensorStats, cands: Mapping[str, float], mms, inits, rows: int) -> dict[str, float]:
    x, row_weights = t.channels.weighted_rows(rows)
    x = x.astype(np.float32)
    ws = [numpy_helper.to_array(inits[m.weight]).astype(np.float32) for m in mms]
    w = np.concatenate([v.T if m.transposed else v for v, m in zip(ws, mms)], axis=1)
    if w.shape[0] != x.shape[1]:
        raise InputError(f"tensor {t.name!r}: its readers' weights have {w.shape[0]} rows for {x.shape[1]} channels")
    wq = fake_quant_weight(w)
    if w.shape[0] >= w.shape[1]:  # K >= N: the direct GEMM per candidate is the cheaper one
        reference = x @ w
        return {n: output_error(x, w, a, reference=reference, wq=wq, row_weights=row_weights) for n, a in cands.items()}
    # K < N: with D = Q(X) - X and C = X (Q(W) - W), the error Q(X) Q(W) - X W = D Q(W) + C has per-row
    # squared norm d G d^T + 2 d . p + |c|^2 (G = Q(W) Q(W)^T, K x K; p = C Q(W)^T): one K x K GEMM per candidate
    c = x @ (wq - w)
    gram, p = wq @ wq.T, c @ wq.T
    const = np.square(c, dtype=np.float64).sum(axis=1)
    energy = float((np.square(x @ w, dtype=np.float64).sum(axis=1) * row_weights).sum()) or 1.0
    out = {}
    for n, a in cands.items():
        d = fake_quant_activation(x, a) - x
        rows_err = (np.einsum("ij,ij->i", d @ gram, d, dtype=np.float64) + 2 * np.einsum("ij,ij->i", d, p, dtype=np.float64)
                    + const)
        out[n] = float((np.maximum(rows_err, 0.0) * row_weights).sum()) / energy
    return out
