"""Sampling by token length (properties and shortfall handling) and coverage statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from calib.buckets import DEFAULT_EDGES, bucket_counts
from calib.coverage import TABLE_HEADERS, Coverage, coverage
from calib.errors import InputError
from calib.sampling import largest_remainder, sample

EDGES = DEFAULT_EDGES
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw, min_size=1, max_size=400):
    """A pool of token lengths (log-uniform over 2..900, like real text) with labels 0..C-1."""
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    classes = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(2), np.log(900), n)).astype(np.int64)
    labels = rng.integers(0, classes, n)
    return lengths, labels, rng


# -- properties ---------------------------------------------------------------------------------

@SETTINGS
@given(pool=pools(), data=st.data(), strategy=st.sampled_from(["natural", "match", "uniform", "custom"]),
       stratify=st.booleans(), shortfall=st.sampled_from(["neighbours", "replace"]))
def test_requested_size_is_always_met(pool, data, strategy, stratify, shortfall):
    lengths, labels, rng = pool
    limit = len(lengths) * (3 if shortfall == "replace" else 1)
    size = data.draw(st.integers(1, limit))
    target = np.exp(rng.uniform(np.log(2), np.log(900), 50)).astype(np.int64)
    weights = rng.integers(0, 4, len(EDGES)).astype(float)
    weights[0] += 1  # a positive sum
    result = sample(lengths, labels, size, strategy, edges=EDGES, target=target, weights=weights,
                    stratify=stratify, shortfall=shortfall, seed=data.draw(st.integers(0, 1000)))
    assert result.size == size == len(result.rows)
    assert result.rows.min() >= 0 and result.rows.max() < len(lengths)
    assert result.bucket_counts.sum() == size
    if shortfall == "neighbours":
        assert len(np.unique(result.rows)) == size, "no repeats without replacement"
        assert result.repeats == 0
    if size > len(lengths):
        assert result.repeats >= size - len(lengths)


@SETTINGS
@given(pool=pools(min_size=10), strategy=st.sampled_from(["natural", "match", "uniform", "custom"]),
       stratify=st.booleans(), seed=st.integers(0, 2**31))
def test_same_seed_same_rows(pool, strategy, stratify, seed):
    lengths, labels, rng = pool
    target = rng.integers(2, 600, 80)
    kwargs = {"edges": EDGES, "target": target, "weights": [1, 2, 3, 1, 0, 1], "stratify": stratify, "seed": seed}
    a = sample(lengths, labels, len(lengths) // 2, strategy, **kwargs)
    b = sample(lengths, labels, len(lengths) // 2, strategy, **kwargs)
    np.testing.assert_array_equal(a.rows, b.rows)
    assert a.notes == b.notes


@SETTINGS
@given(seed=st.integers(0, 2**31), n_short=st.integers(200, 1500), n_long=st.integers(40, 200),
       size=st.integers(16, 40), target_long=st.floats(0.3, 0.9))
def test_match_reduces_ks_against_the_target_on_skewed_pools(seed, n_short, n_long, size, target_long):
    """A pool of mostly short texts, a target with many long ones: match must beat natural."""
    rng = np.random.default_rng(seed)
    pool = np.concatenate([rng.integers(4, 64, n_short), rng.integers(128, 700, n_long)])
    m_long = int(400 * target_long)
    target = np.concatenate([rng.integers(4, 64, 400 - m_long), rng.integers(128, 700, m_long)])
    natural = sample(pool, None, size, "natural", edges=EDGES, seed=seed)
    match = sample(pool, None, size, "match", edges=EDGES, target=target, seed=seed)
    ks_natural = stats.ks_2samp(pool[natural.rows], target).statistic
    ks_match = stats.ks_2samp(pool[match.rows], target).statistic
    assert ks_match < ks_natural
    # a sample of `size` texts cannot get closer than its own sampling noise: the 95 % KS critical
    # value 1.36 / sqrt(size) is 0.21-0.34 here (seed 140, size 27 gave 0.213 against a 0.2 bound)
    assert ks_match < max(0.2, 1.36 / np.sqrt(size))


@SETTINGS
@given(pool=pools(min_size=50), data=st.data(), strategy=st.sampled_from(["natural", "match", "uniform"]),
       use_target_labels=st.booleans())
def test_stratification_keeps_label_shares_within_one_sample(pool, data, strategy, use_target_labels):
    lengths, labels, rng = pool
    classes = int(labels.max()) + 1
    target = rng.integers(2, 600, 120)
    if use_target_labels:
        # target shares each label can supply: no label asks for more than the pool has
        target_labels = rng.integers(0, classes, 120)
        size = data.draw(st.integers(1, min(len(lengths), 60)))
        counts = np.bincount(target_labels, minlength=classes)
        assert counts.sum() == 120
        expected = counts / 120 * size
        if (np.ceil(expected) > np.bincount(labels, minlength=classes)).any():
            return  # the pool cannot honour these shares; covered by the shortfall test
    else:
        target_labels = None
        size = data.draw(st.integers(1, len(lengths)))
        expected = np.bincount(labels, minlength=classes) / len(lengths) * size
    result = sample(lengths, labels, size, strategy, edges=EDGES, target=target, stratify=True,
                    target_labels=target_labels, seed=data.draw(st.integers(0, 99)))
    got = np.bincount(labels[result.rows], minlength=classes)
    assert got.sum() == size
    assert (np.abs(got - expected) <= 1).all(), (got, expected)


@given(shares=st.lists(st.floats(0, 10), min_size=1, max_size=8), total=st.integers(0, 500))
def test_largest_remainder_sums_and_stays_within_one(shares, total):
    shares = np.asarray(shares)
    counts = largest_remainder(shares, total)
    if shares.sum() == 0:
        assert counts.sum() == 0
        return
    assert counts.sum() == total
    assert (np.abs(counts - shares / shares.sum() * total) < 1 + 1e-9).all()


# -- strategies and shortfall ---------------------------------------------------------------------

def _pool():
    rng = np.random.default_rng(7)
    lengths = np.concatenate([rng.integers(2, 32, 300), rng.integers(32, 64, 100), rng.integers(64, 128, 50),
                              rng.integers(128, 256, 20), rng.integers(256, 512, 5)])
    return lengths, rng.integers(0, 2, len(lengths))


def test_uniform_gives_every_bucket_its_share_when_it_can():
    lengths, labels = _pool()
    result = sample(lengths, labels, 50, "uniform", edges=(0, 32, 64, 128), seed=0)
    np.testing.assert_array_equal(result.bucket_counts, [13, 13, 12, 12])
    assert result.notes == ()


def test_neighbours_take_the_shortfall_and_say_so():
    lengths, labels = _pool()
    result = sample(lengths, labels, 60, "uniform", edges=EDGES, seed=0)
    # 512+ is empty: left out; 256-511 has 5 texts for a share of 12
    assert any("left out (512+)" in n for n in result.notes)
    note = next(n for n in result.notes if n.startswith("bucket 256-511"))
    assert "5 texts in the pool for a share of 12" in note and "took 7 from neighbouring buckets (128-255: 7)" in note
    assert result.bucket_counts[4] == 5 and result.bucket_counts[3] == 12 + 7
    # the stand-ins are the texts closest to the short bucket: the longest of 128-255
    chosen = np.sort(lengths[result.rows][(lengths[result.rows] >= 128) & (lengths[result.rows] < 256)])
    pool_128 = np.sort(lengths[(lengths >= 128) & (lengths < 256)])
    assert (chosen[-7:] == pool_128[-7:]).all()
    assert len(np.unique(result.rows)) == 60


def test_replace_draws_repeats_and_says_so():
    lengths, labels = _pool()
    result = sample(lengths, labels, 60, "uniform", edges=EDGES, shortfall="replace", seed=0)
    note = next(n for n in result.notes if n.startswith("bucket 256-511"))
    assert "drew 7 repeats (sampling with replacement)" in note
    assert result.bucket_counts[4] == 12 and result.repeats == 7


def test_size_larger_than_pool():
    lengths, labels = _pool()
    with pytest.raises(InputError, match="pool has only 475.*replace"):
        sample(lengths, labels, 476, "natural", seed=0)
    result = sample(lengths, labels, 600, "natural", shortfall="replace", seed=0)
    assert result.size == 600 and result.repeats == 125
    assert any("drew 125 repeats" in n for n in result.notes)


def test_custom_weights():
    lengths, labels = _pool()
    result = sample(lengths, labels, 40, "custom", edges=(0, 32, 64, 128), weights=[0, 1, 1, 2], seed=1)
    np.testing.assert_array_equal(result.bucket_counts, [0, 10, 10, 20])
    with pytest.raises(InputError, match="one weight per bucket"):
        sample(lengths, labels, 40, "custom", edges=(0, 32, 64, 128), weights=[1, 1], seed=1)
    with pytest.raises(InputError, match="positive sum"):
        sample(lengths, labels, 40, "custom", edges=(0, 32, 64, 128), weights=[0, 0, 0, 0], seed=1)


def test_match_follows_the_target_buckets():
    lengths, labels = _pool()
    target = np.repeat([20, 40, 100, 200], [10, 10, 10, 10])
    result = sample(lengths, labels, 40, "match", edges=EDGES, target=target, seed=0)
    np.testing.assert_array_equal(result.bucket_counts, [10, 10, 10, 10, 0, 0])
    # inside a bucket the texts closest to the target's lengths are chosen
    chosen = lengths[result.rows][lengths[result.rows] >= 128]
    pool_128 = lengths[(lengths >= 128) & (lengths < 256)]
    assert np.sort(np.abs(chosen - 200)).tolist() == np.sort(np.abs(pool_128 - 200))[:10].tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"lengths": np.zeros(0, np.int64), "size": 1}, "pool is empty"),
    ({"size": 0}, "positive integer"),
    ({"strategy": "longest"}, "unknown sampling strategy"),
    ({"shortfall": "skip"}, "unknown shortfall"),
    ({"strategy": "match"}, "needs target lengths"),
    ({"stratify": True, "labels": None}, "needs a label column"),
    ({"edges": (0, 64, 32)}, "edges"),
])
def test_bad_sampling_requests(kwargs, message):
    args = {"lengths": np.arange(10, 20), "labels": np.zeros(10, int), "size": 5, "strategy": "natural"}
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        sample(args.pop("lengths"), args.pop("labels"), args.pop("size"), args.pop("strategy"), **args)


def test_a_label_short_of_its_share_lends_to_the_others():
    lengths = np.arange(100) + 5
    labels = np.array([0] * 95 + [1] * 5)
    target_labels = np.array([0] * 50 + [1] * 50)
    result = sample(lengths, labels, 40, "natural", stratify=True, target_labels=target_labels,
                    target=lengths[:100], seed=0, label_names=["a", "b"])
    assert result.label_counts == {0: 35, 1: 5}
    assert any("label 'b': 5 texts in the pool for a share of 20" in n for n in result.notes)


# -- coverage ---------------------------------------------------------------------------------------

def test_warns_about_long_texts_missing_from_calibration():
    calib = np.full(100, 100)
    target = np.concatenate([np.full(59, 100), np.full(41, 300)])
    cov = coverage(calib, target, EDGES, max_length=512)
    assert cov.warnings[0].startswith(
        "no calibration text longer than 100 tokens while 41 % of evaluation texts are")
    assert cov.longest_covered == 100 and cov.target_share_beyond == pytest.approx(0.41)
    assert cov.ks == pytest.approx(0.41)
    assert cov.wasserstein == pytest.approx(0.41 * 200)
    assert cov.target_stats["max"] == 300 and cov.target_stats["p95"] == 300


def test_lengths_beyond_max_length_count_as_max_length():
    # the model truncates at 128: a 128-token calibration text covers the 300-token ones
    calib = np.concatenate([np.full(60, 100), np.full(40, 150)])
    target = np.concatenate([np.full(59, 100), np.full(41, 300)])
    cov = coverage(calib, target, EDGES, max_length=128)
    # no long-tail warning; only the share of texts cut at max length is worth saying
    assert cov.warnings == (("41 % of evaluation texts and 40 % of calibration texts are longer than the max length "
                            "of 128 tokens and are truncated: the model never sees their ends (raise --max-length if "
                            "the model allows it)"),)
    assert cov.longest_covered == 128 and cov.target_share_beyond == 0
    assert cov.target_truncated == pytest.approx(0.41) and cov.calib_truncated == pytest.approx(0.40)
    # the bucket table still shows what production sends
    assert cov.target_counts[4] == 41 and cov.calib_counts[3] == 40


def test_no_warnings_for_a_matching_set():
    rng = np.random.default_rng(0)
    target = rng.integers(5, 500, 1000)
    calib = rng.choice(target, 200, replace=False)
    labels = rng.integers(0, 3, 1000)
    cov = coverage(calib, target, EDGES, labels[:200], labels, ["a", "b", "c"], max_length=512)
    assert cov.warnings == ()
    assert cov.ks < 0.15


def test_under_represented_bucket_and_label_warnings():
    calib = np.concatenate([np.full(95, 20), np.full(5, 200), np.full(1, 300)])
    target = np.concatenate([np.full(50, 20), np.full(49, 200), np.full(1, 300)])
    calib_labels = np.array([0] * 100 + [1])
    target_labels = np.array([0, 1] * 50)
    cov = coverage(calib, target, EDGES, calib_labels, target_labels, ["sport", "tech"], max_length=512,
                   target_name="production")
    text = " | ".join(cov.warnings)
    assert "the 128-255 token bucket holds 49 % of production texts but only 5 % of calibration texts" in text
    assert "KS statistic 0.44" in text and "run shorter" in text
    assert "label 'tech' is 50 % of production texts but 1.0 % of calibration texts" in text
    assert "no calibration text longer" not in text


def test_coverage_table_and_round_trip():
    rng = np.random.default_rng(1)
    calib, target = rng.integers(2, 700, 50), rng.integers(2, 700, 300)
    cov = coverage(calib, target, EDGES, max_length=256)
    rows = cov.table_rows()
    assert len(rows[0]) == len(TABLE_HEADERS) and len(rows) == len(EDGES)
    assert [r[1] for r in rows] == bucket_counts(calib, EDGES).tolist()
    assert sum(r[2] for r in rows) == pytest.approx(100, abs=0.5)
    again = Coverage.from_dict(cov.to_dict())
    assert again == cov


def test_coverage_needs_lengths():
    with pytest.raises(InputError, match="calibration length"):
        coverage(np.zeros(0), np.arange(5), EDGES)
    with pytest.raises(InputError, match="target length"):
        coverage(np.arange(5), np.zeros(0), EDGES)
