"""Calibrators against hand-computed and analytic cases, and against a literal loop implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_kl

from calib.calibrators import (
    entropy_amax,
    entropy_divergences,
    mse_amax,
    mse_errors,
    percentile_amax,
)
from calib.errors import InputError
from calib.methods import compute_ranges
from calib.stats import ActivationStats, TensorStats, tensor_stats_from_arrays


def make_stats(hist, width: float = 1.0, absmax: float | None = None, name: str = "t", **counts) -> TensorStats:
    hist = np.asarray(hist, dtype=np.int64)
    if absmax is None:
        absmax = (np.flatnonzero(hist)[-1] + 0.5) * width if hist.any() else 0.0
    return TensorStats(name=name, producer="n", op_type="MatMul", axis_roles=("batch", "seq", "fixed"),
                       count=int(hist.sum()), nan=counts.get("nan", 0), posinf=counts.get("posinf", 0),
                       neginf=counts.get("neginf", 0), min=-absmax, max=absmax, hist=hist,
                       hist_range=width * len(hist))


def reference_kl(hist: np.ndarray, i: int, levels: int = 128, damp: bool = True) -> float:
    """TensorRT's published EntropyCalibration2 step for one candidate, written as plainly as possible."""
    bins = hist.astype(np.float64).copy()
    if damp:
        bins[0] = bins[1]
    p = bins[:i].copy()
    p[i - 1] += bins[i:].sum()
    q = np.zeros(i)
    level = (np.arange(i) * levels) // i
    for lvl in range(levels):
        members = level == lvl
        nonempty = members & (bins[:i] > 0)
        if nonempty.any():
            q[nonempty] = bins[:i][members].sum() / nonempty.sum()
    return float(scipy_kl(p, q))  # normalises both; inf where q == 0 < p


def hand_histogram() -> np.ndarray:
    """256 unit bins: 100 and 300 alternating over bins 0..127, one outlier in bin 255."""
    hist = np.zeros(256, np.int64)
    hist[0:128:2], hist[1:128:2] = 100, 300
    hist[255] = 1
    return hist


def test_entropy_hand_derived_threshold():
    # i = 128: one bin per level, so Q is bins[:128] and P differs only by the outlier folded into
    # bin 127 (301 instead of 300); T = 25601, sum(Q) = 25600.
    # 128 < i < 256: the last kept bin is empty but holds the folded outlier -> Q = 0 < P -> infinite.
    # i = 256: levels pair bins (2l, 2l+1) -> Q = 200 where P has 100 / 300 -> KL = 64 (100 ln 1/2 + 300 ln 3/2) / T.
    hist = hand_histogram()
    t = 25601.0
    kl_128 = (25600 - 300) / t * math.log(25600 / t) + 301 / t * math.log(301 * 25600 / (300 * t))
    kl_256 = 64 * (100 * math.log(0.5) + 300 * math.log(1.5)) / t
    cands, kl = entropy_divergences(hist, damp_zero_bin=False)
    assert cands[0] == 128 and cands[-1] == 256
    assert kl[0] == pytest.approx(kl_128, rel=1e-9, abs=1e-12)
    assert kl[-1] == pytest.approx(kl_256, rel=1e-9)
    assert np.isinf(kl[1:-1]).all()
    assert entropy_amax(make_stats(hist), damp_zero_bin=False) == 128.0


def test_entropy_matches_loop_reference(rng):
    for trial in range(4):
        k = int(rng.integers(200, 400))
        hist = rng.poisson(2000 * np.exp(-np.arange(k) / rng.uniform(10, 80))).astype(np.int64)
        hist[rng.random(k) < 0.2] = 0  # empty bins inside the range
        hist[-1] = 3  # a far outlier
        damp = trial % 2 == 0
        cands, kl = entropy_divergences(hist, damp_zero_bin=damp)
        ref = np.array([reference_kl(hist, int(i), damp=damp) for i in cands])
        finite = np.isfinite(ref)
        assert (np.isfinite(kl) == finite).all()
        np.testing.assert_allclose(kl[finite], ref[finite], rtol=1e-7, atol=1e-11)
        best = cands[np.flatnonzero(ref == ref[finite].min())[-1]]
        st = make_stats(hist)
        assert entropy_amax(st, damp_zero_bin=damp) == pytest.approx(min(float(best), st.absmax))


def test_entropy_damping_changes_the_zero_spike():
    hist = np.zeros(2048, np.int64)
    hist[0] = 10**7  # a spike of exact zeros
    hist[1:1200] = 50
    hist[1200:2048:97] = 1
    damped = entropy_amax(make_stats(hist), damp_zero_bin=True)
    plain = entropy_amax(make_stats(hist), damp_zero_bin=False)
    assert damped != plain
    cands, _ = entropy_divergences(hist, damp_zero_bin=True)
    assert cands[0] == 128 and cands[-1] == 2048


def test_entropy_candidates_scale_with_finer_histograms():
    cands, _ = entropy_divergences(np.ones(4096, np.int64))
    assert cands[0] == 256 and cands[-1] == 4096  # thresholds from absmax/16, as 128 of 2048


def test_minmax_is_absmax(rng):
    x = rng.standard_normal(50_000).astype(np.float32) * 3
    x[17] = -25.25
    st = tensor_stats_from_arrays("t", [x[:20_000], x[20_000:]])
    stats = ActivationStats("sha", (st,), 4096, "stream", 1, 1, 1, 0.0)
    assert compute_ranges(stats, "minmax").amax["t"] == 25.25 == float(np.abs(x).max())


def test_percentile_uniform_histogram_is_exact():
    st = make_stats(np.full(1000, 7), width=0.001, absmax=1.0)
    assert percentile_amax(st, 99.9) == pytest.approx(0.999, abs=1e-12)
    assert percentile_amax(st, 50) == pytest.approx(0.5, abs=1e-12)
    assert percentile_amax(st, 100) == pytest.approx(1.0)
    with pytest.raises(InputError):
        percentile_amax(st, 0)


def test_percentile_and_mse_on_exponential_samples(rng):
    # |x| ~ Exp(1): the 99.99th percentile is -ln(1e-4) = 9.21. The INT8 MSE optimum balances the
    # rounding noise (a/127)^2/12 against the clipping error 2 e^-a: a/(6 * 127^2) = 2 e^-a -> a = 9.88.
    x = rng.exponential(1.0, 4_000_000).astype(np.float32) * np.where(rng.random(4_000_000) < 0.5, -1, 1)
    st = tensor_stats_from_arrays("t", np.array_split(x, 7))
    assert percentile_amax(st, 99.99) == pytest.approx(-math.log(1e-4), abs=0.1)
    assert percentile_amax(st, 99.9) == pytest.approx(-math.log(1e-3), abs=0.05)
    a = np.linspace(5, 15, 100_001)
    analytic = a[np.argmin((a / 127) ** 2 / 12 * (1 - np.exp(-a)) + 2 * np.exp(-a))]
    assert analytic == pytest.approx(9.88, abs=0.02)
    assert mse_amax(st) == pytest.approx(analytic, abs=0.35)
    assert mse_amax(st) < st.absmax


def test_mse_uniform_keeps_nearly_everything():
    # uniform |x| on [0, 1]: clipping (1-a)^3/3 vs rounding a^2/(12*127^2) -> optimum a ~ 0.9968
    st = make_stats(np.full(4096, 100), width=1 / 4096, absmax=1.0)
    assert mse_amax(st) == pytest.approx(0.9968, abs=0.0015)


def test_mse_errors_match_brute_force_fake_quant(rng):
    hist = rng.poisson(50, 300).astype(np.float64)
    centres = np.arange(300) + 0.5
    cands = np.array([1.0, 17.0, 128.0, 200.0, 299.0, 299.7, 300.0])
    got = mse_errors(hist, cands)
    for amax, value in zip(cands, got):
        s = amax / 127
        q = np.clip(np.floor(centres / s + 0.5), -127, 127) * s  # round half up (ties give equal error)
        assert value == pytest.approx(float(((centres - q) ** 2 * hist).sum()), rel=1e-9)


def test_nonfinite_and_zero_range_flags():
    x = np.array([1.0, -2.0, np.nan, np.inf, -np.inf, -np.inf, 0.5], np.float32)
    st = tensor_stats_from_arrays("a", x)
    assert (st.count, st.nan, st.posinf, st.neginf, st.absmax) == (3, 1, 1, 2, 2.0)
    assert st.hist.sum() == 3
    zeros = tensor_stats_from_arrays("z", np.array([0.0, -np.inf, 0.0], np.float32))
    stats = ActivationStats("sha", (st, zeros), 4096, "stream", 1, 1, 1, 0.0)
    for method in ("entropy", "minmax", "percentile", "mse"):
        r = compute_ranges(stats, method)
        assert math.isfinite(r.amax["a"]) and 0 < r.amax["a"] <= 2.0
        assert r.amax["z"] == 0.0
        assert r.flags["a"]["nonfinite"] == {"nan": 1, "posinf": 1, "neginf": 2}
        assert r.flags["z"]["zero_range"] is True
    with pytest.raises(InputError):
        compute_ranges(stats, "kl")
    with pytest.raises(InputError):
        compute_ranges(stats, "percentile", percentile=120)


def test_entropy_all_tensors_fast():
    import time

    hists = [np.random.default_rng(i).poisson(1000 * np.exp(-np.arange(4096) / 300)) for i in range(60)]
    stats = ActivationStats("sha", tuple(make_stats(h, name=f"t{i}") for i, h in enumerate(hists)),
                            4096, "stream", 1, 1, 1, 0.0)
    compute_ranges(stats, "entropy")  # edge tables built once per process
    start = time.perf_counter()
    compute_ranges(stats, "entropy")
    assert time.perf_counter() - start < 3.0  # ~0.4 s on a quiet 2-core machine; loose for shared CI
