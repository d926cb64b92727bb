"""Calibrators: per-tensor amax from the |x| histograms of one statistics pass, vectorised with numpy.

The formulas only; :mod:`calib.methods` registers them as calibration methods (names, defaults,
parameter checks, TensorRT cache algorithm).

- ``minmax``: amax = max |x| over finite values.
- ``entropy``: TensorRT's EntropyCalibration2 (GTC 2017 S7310; NVIDIA pytorch-quantization's
  ``_compute_amax_entropy``). For each candidate ``i`` (number of kept bins) the reference P is
  ``bins[:i]`` with every count beyond ``i`` folded into bin ``i-1``; Q merges ``bins[:i]`` into
  128 levels (bin ``j`` -> level ``floor(j*128/i)``) and spreads each level's mass uniformly over its
  non-empty bins. KL(P||Q) skips P=0 terms; P>0 where Q=0 (the last kept bin empty while outliers
  were folded into it) makes the divergence infinite, so that candidate is never chosen. The
  smallest KL wins, ties (within float rounding) go to the larger ``i`` as NVIDIA's code takes the
  last minimum; amax = ``i * bin width`` (the upper edge of the last kept bin), capped at absmax.
  ``damp_zero_bin`` (default True, as NVIDIA's implementation) sets ``bins[0] = bins[1]`` first so a
  spike of exact zeros does not dominate. Candidates span thresholds ``[absmax/16, absmax]``, i.e.
  ``i`` from 128 to 2048 on TensorRT's 2048-bin histogram, scaled when the histogram is finer.
  All candidates are evaluated at once from cumulative sums: with level masses ``m_l`` and non-empty
  counts ``n_l``, ``sum_j p_j log q_j = sum_l m_l log(m_l/n_l) + outliers * log q_{i-1}``.
- ``percentile``: amax where the cumulative |x| count reaches p % (linear inside the bin).
- ``mse``: amax minimising the squared error of symmetric INT8 fake quantisation
  (``clip(round(x/s), -127, 127) * s``, ``s = amax/127``) summed over the histogram at bin centres,
  rounding and clipping error included; every bin edge is a candidate. Per candidate the 128 output
  levels partition the bins, so the error is a sum over levels of prefix-sum differences.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from calib.errors import InputError
from calib.stats import TensorStats

QMAX = 127  # symmetric INT8
ENTROPY_LEVELS = 128
TRT_BINS = 2048  # TensorRT's histogram size; sets the smallest candidate threshold (absmax / 16)
_BLOCK = 128  # candidates per block: keeps the (block, 129) work arrays in cache


def _table_size(nbins: int) -> int:
    """Edge tables are cached per power of two so every tensor of a run shares one."""
    return max(4096, 1 << int(nbins - 1).bit_length())


def entropy_start(nbins: int, levels: int = ENTROPY_LEVELS) -> int:
    """Fewest kept bins considered: ``levels`` on a 2048-bin histogram, scaled for finer ones."""
    return min(nbins, max(levels, math.ceil(nbins * levels / TRT_BINS)))


@functools.lru_cache(maxsize=8)
def _entropy_edges(levels: int, max_bins: int) -> np.ndarray:
    """Row ``i``: first bin of each level (and ``i`` at the end) when ``i`` bins merge into ``levels``:
    ``ceil(l * i / levels)`` for l = 0..levels. Shape (max_bins + 1, levels + 1), int32."""
    i = np.arange(max_bins + 1, dtype=np.int64)[:, None]
    return ((np.arange(levels + 1)[None, :] * i + levels - 1) // levels).astype(np.int32)


def entropy_divergences(hist: np.ndarray, *, levels: int = ENTROPY_LEVELS, damp_zero_bin: bool = True,
                        start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of every candidate. ``hist``: (K,) counts covering [0, absmax].

    Returns (candidates: numbers of kept bins, shape (C,); divergences, shape (C,), +inf when Q=0 where P>0).
    """
    bins = np.asarray(hist, dtype=np.float64).copy()
    k = len(bins)
    if damp_zero_bin and k > 1:
        bins[0] = bins[1]
    total = bins.sum()
    if k <= levels or total <= 0:
        return np.array([k]), np.zeros(1)
    first = entropy_start(k, levels) if start is None else min(max(int(start), levels), k)
    cands = np.arange(first, k + 1, dtype=np.int64)
    cum = np.concatenate([[0.0], np.cumsum(bins)])
    cum_nonempty = np.concatenate([[0.0], np.cumsum(bins > 0, dtype=np.float64)])
    xlogx = np.zeros_like(bins)
    pos = bins > 0
    xlogx[pos] = bins[pos] * np.log(bins[pos])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx)])

    # sum_l m_l log(m_l / n_l) per candidate, in cache-sized blocks of candidates
    edges_all = _entropy_edges(levels, _table_size(k))
    level_sum = np.empty(len(cands))
    mass_last = np.empty(len(cands))
    count_last = np.empty(len(cands))
    for s in range(0, len(cands), _BLOCK):
        edges = edges_all[cands[s : s + _BLOCK]]
        mass = np.diff(cum[edges], axis=1)  # (c, levels)
        count = np.diff(cum_nonempty[edges], axis=1)
        mass_last[s : s + _BLOCK] = mass[:, -1]
        count_last[s : s + _BLOCK] = count[:, -1]
        np.maximum(count, 1.0, out=count)
        ratio = np.divide(mass, count)
        np.maximum(ratio, 1e-300, out=ratio)  # empty level: mass 0, term 0 (0 * finite log)
        np.log(ratio, out=ratio)
        ratio *= mass
        level_sum[s : s + _BLOCK] = ratio.sum(axis=1)

    kept = cum[cands]
    outliers = np.maximum(total - kept, 0.0)
    last = bins[cands - 1]
    p_last = last + outliers
    sum_p_log_p = cum_xlogx[cands - 1] + p_last * np.log(np.maximum(p_last, 1e-300))
    q_last = mass_last / np.maximum(count_last, 1.0)
    infinite = ((outliers > 0) & (last == 0)) | (kept <= 0)
    sum_p_log_q = level_sum + np.where((outliers > 0) & (last > 0), outliers * np.log(np.maximum(q_last, 1e-300)), 0.0)
    kl = (sum_p_log_p - sum_p_log_q) / total - np.log(total) + np.log(np.maximum(kept, 1e-300))
    kl[infinite] = np.inf
    return cands, np.maximum(kl, 0.0)


def entropy_amax(stats: TensorStats, *, levels: int = ENTROPY_LEVELS, damp_zero_bin: bool = True) -> float:
    """TensorRT EntropyCalibration2 threshold of one tensor."""
    if stats.absmax == 0:
        return 0.0
    cands, kl = entropy_divergences(stats.covering_hist(), levels=levels, damp_zero_bin=damp_zero_bin)
    best = float(kl.min())
    tied = np.flatnonzero(kl <= best + 1e-12 + 1e-9 * abs(best))
    return min(float(cands[tied[-1]]) * stats.width, stats.absmax)


def check_percentile(value: object) -> float:
    """A percentile in (0, 100], or a one-line InputError."""
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"percentile must be a number in (0, 100], got {value!r}") from None
    if not (math.isfinite(p) and 0 < p <= 100):
        raise InputError(f"percentile must be in (0, 100], got {value}")
    return p


def percentile_amax(stats: TensorStats, percentile: float) -> float:
    """amax below which ``percentile`` % of finite |x| fall (linear interpolation inside the bin)."""
    percentile = check_percentile(percentile)
    if stats.absmax == 0:
        return 0.0
    hist = stats.hist
    cum = np.cumsum(hist)
    target = percentile / 100.0 * cum[-1]
    j = int(np.searchsorted(cum, target, side="left"))
    j = min(j, len(hist) - 1)
    before = float(cum[j - 1]) if j > 0 else 0.0
    frac = (target - before) / hist[j] if hist[j] else 1.0
    return min((j + frac) * stats.width, stats.absmax)


@functools.lru_cache(maxsize=8)
def _mse_edges(qmax: int, max_bins: int) -> np.ndarray:
    """Row ``i`` (amax = i bins): first bin whose centre ``j + 0.5`` reaches each output level's
    lower bound ``(k - 0.5) * i / qmax``, k = 0..qmax. Shape (max_bins + 1, qmax + 1), int32."""
    i = np.arange(max_bins + 1, dtype=np.int64)[:, None]
    num = (2 * np.arange(qmax + 1)[None, :] - 1) * i - qmax  # j >= num / (2 qmax)
    return np.maximum(-((-num) // (2 * qmax)), 0).astype(np.int32)


def _level_errors(s0, s1, s2, edges: np.ndarray, amax_bins: np.ndarray, qmax: int) -> np.ndarray:
    """Squared error (in bin-width units) per candidate for the given level edges (c, qmax+2)."""
    n0, n1, n2 = (np.diff(a[edges], axis=1) for a in (s0, s1, s2))
    level = np.arange(qmax + 1)[None, :] * (amax_bins[:, None] / qmax)
    return np.maximum(n2 - 2.0 * level * n1 + level * level * n0, 0.0).sum(axis=1)


def mse_errors(hist: np.ndarray, amax_bins: np.ndarray, qmax: int = QMAX) -> np.ndarray:
    """Summed squared error of symmetric fake quantisation ``clip(round(x/s), -qmax, qmax) * s`` with
    ``s = amax / qmax`` for each candidate amax (given in bin widths), shape (C,), in bin-width² units.

    Values are taken at bin centres ``j + 0.5``; output level ``k`` collects the centres in
    ``[(k-0.5)s, (k+0.5)s)``, the top level everything from ``(qmax-0.5)s`` up (clipped to amax).
    """
    counts = np.asarray(hist, dtype=np.float64)
    k = len(counts)
    centres = np.arange(k) + 0.5
    s0 = np.concatenate([[0.0], np.cumsum(counts)])
    s1 = np.concatenate([[0.0], np.cumsum(counts * centres)])
    s2 = np.concatenate([[0.0], np.cumsum(counts * centres * centres)])
    amax_bins = np.asarray(amax_bins, dtype=np.float64)
    whole = (amax_bins == np.round(amax_bins)) & (amax_bins <= k)
    table = _mse_edges(qmax, _table_size(k)) if whole.any() else None
    out = np.empty(len(amax_bins))
    for s in range(0, len(amax_bins), _BLOCK):
        a = amax_bins[s : s + _BLOCK]
        w = whole[s : s + _BLOCK]
        edges = np.empty((len(a), qmax + 2), np.int64)
        if table is not None and w.any():
            edges[w, : qmax + 1] = table[a[w].astype(np.int64)]
        if (~w).any():  # amax off the bin grid (absmax itself): edges from the float bounds
            lower = (np.arange(qmax + 1)[None, :] - 0.5) * (a[~w, None] / qmax)
            edges[~w, : qmax + 1] = np.clip(np.ceil(lower - 0.5), 0, k)
        np.minimum(edges, k, out=edges)
        edges[:, 0] = 0
        edges[:, -1] = k
        out[s : s + _BLOCK] = _level_errors(s0, s1, s2, edges, a, qmax)
    return out


def mse_amax(stats: TensorStats, qmax: int = QMAX) -> float:
    """amax (a bin edge, or absmax) minimising the INT8 squared error over the histogram."""
    if stats.absmax == 0:
        return 0.0
    hist = stats.covering_hist()
    top = stats.absmax / stats.width  # absmax in bin widths, in (K-1, K]
    cands = np.arange(1, len(hist) + 1, dtype=np.float64)
    cands[-1] = top
    cands = np.minimum(cands, top)
    err = mse_errors(hist, cands, qmax)
    best = float(err.min())
    tied = np.flatnonzero(err <= best * (1 + 1e-12) + 1e-300)
    return float(min(cands[tied[-1]] * stats.width, stats.absmax))


def __getattr__(name: str):
    """``METHODS``, ``DEFAULT_PARAMS``, ``tensor_amax``, ``tensor_flags`` and ``compute_ranges`` live in
    :mod:`calib.methods` (the method registry); these names are forwarded for older imports."""
    from calib import methods

    if name == "METHODS":
        return methods.method_names()
    if name == "DEFAULT_PARAMS":
        return {n: dict(m.defaults) for n, m in methods.REGISTRY.items()}
    if name in ("tensor_amax", "tensor_flags", "compute_ranges"):
        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
