"""Choosing calibration rows by token length: pure numpy, deterministic for a given seed.

Strategies (all return exactly ``size`` rows):

- ``natural``  a plain random sample of the pool;
- ``match``    bucket shares of a reference length distribution (``target``: lengths, e.g. the eval
  split or production traffic), and inside each bucket the rows whose lengths sit closest to the
  target's quantiles there;
- ``uniform``  equal shares for every length bucket the pool has texts in;
- ``custom``   shares proportional to ``weights`` (one per bucket).

With ``stratify=True`` the label shares of the target (or of the pool when the target has no
labels) are met first (to within one row), and the strategy runs inside each label.

When a bucket holds fewer texts than its share, ``shortfall="neighbours"`` takes the rest from the
nearest buckets that have texts to spare (the texts closest to the short bucket), and
``shortfall="replace"`` draws repeats from the bucket (sampling with replacement). Either way a
note says what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from calib.buckets import DEFAULT_EDGES, bucket_index, bucket_labels, check_edges
from calib.errors import InputError, check_choice

STRATEGY_DESCRIPTIONS = {
    "natural": "a plain random sample of the pool",
    "match": "bucket shares of the target's length distribution, texts closest to its quantiles",
    "uniform": "the same number of texts in every length bucket the pool has",
    "custom": "shares proportional to your weight per bucket",
}
STRATEGIES = tuple(STRATEGY_DESCRIPTIONS)
WEIGHTED_STRATEGIES = ("custom",)
"""Strategies that take one weight per length bucket (``AssembleConfig.weights``)."""
SHORTFALL_DESCRIPTIONS = {
    "neighbours": "take from neighbouring buckets",
    "replace": "repeat texts (with replacement)",
}
SHORTFALL_MODES = tuple(SHORTFALL_DESCRIPTIONS)
_MIN_TARGET_ROWS_PER_LABEL = 20  # below this, a label's own target lengths are too few to match


@dataclass(frozen=True)
class SampleResult:
    """Rows chosen from the pool.

    ``rows`` are pool row numbers, sorted; a row appears more than once only when drawn with
    replacement. ``bucket_quota`` is the planned number of rows per bucket before shortfall
    handling, ``bucket_counts`` what was drawn (both shape (K,), K = len(edges)).
    """

    rows: np.ndarray  # (size,) int64
    notes: tuple[str, ...]
    strategy: str
    shortfall: str
    edges: tuple[int, ...]
    bucket_quota: np.ndarray  # (K,) int64
    bucket_counts: np.ndarray  # (K,) int64
    repeats: int  # rows drawn beyond the first time (with replacement)
    label_counts: dict[int, int] = field(default_factory=dict)  # label id (-1 = none) -> rows

    @property
    def size(self) -> int:
        return len(self.rows)


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``shares`` (Hamilton's method).

    Each count is within one of ``total * share``; ties go to the lower index.
    """
    shares = np.asarray(shares, dtype=np.float64)
    if total == 0 or shares.sum() <= 0:
        return np.zeros(len(shares), dtype=np.int64)
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    remainder = exact - counts
    left = int(total - counts.sum())
    if left > 0:
        order = np.lexsort((np.arange(len(shares)), -remainder))
        counts[order[:left]] += 1
    return counts


def _check_inputs(lengths: np.ndarray, labels: np.ndarray | None, size: int, strategy: str,
                  shortfall: str, edges: Sequence[int]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise InputError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if len(lengths) == 0:
        raise InputError("the pool is empty: there are no texts to sample from")
    if not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any():
        raise InputError("token lengths must be non-negative integers")
    labels = np.full(len(lengths), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != lengths.shape:
        raise InputError(f"{len(labels)} labels for {len(lengths)} lengths")
    check_choice(strategy, STRATEGIES, "sampling strategy")
    if shortfall not in SHORTFALL_MODES:
        raise InputError(f"unknown shortfall handling {shortfall!r} (choose neighbours or replace)")
    if int(size) != size or size < 1:
        raise InputError(f"calibration set size must be a positive integer, got {size}")
    if size > len(lengths) and shortfall != "replace":
        raise InputError(
            f"requested {size} texts but the pool has only {len(lengths)}; lower the size or choose "
            "shortfall 'replace' to sample with replacement"
        )
    return lengths.astype(np.int64), labels, check_edges(edges)


def _strategy_shares(strategy: str, pool_buckets: np.ndarray, k: int, target: np.ndarray | None,
                     weights: Sequence[float] | None, edges: tuple[int, ...]) -> np.ndarray | None:
    """Planned share of each bucket (K,), or None for ``natural``."""
    if strategy == "natural":
        return None
    if strategy == "match" and target is not None:
        return np.bincount(bucket_index(target, edges), minlength=k).astype(np.float64)
    if strategy == "uniform":
        return (np.bincount(pool_buckets, minlength=k) > 0).astype(np.float64)
    return np.asarray(weights, dtype=np.float64)


def _check_strategy_params(strategy: str, k: int, target, weights) -> np.ndarray | None:
    if strategy == "match":
        if target is None:
            raise InputError("strategy 'match' needs target lengths (an eval split, a dataset or a lengths file)")
        target = np.asarray(target)
        if target.ndim != 1 or len(target) == 0:
            raise InputError("strategy 'match' needs a non-empty list of target lengths")
        if not np.isfinite(target.astype(np.float64)).all() or (target < 0).any():
            raise InputError("target lengths must be finite and non-negative")
        return np.round(target).astype(np.int64)
    if strategy == "custom":
        if weights is None or len(weights) != k:
            got = 0 if weights is None else len(weights)
            raise InputError(f"strategy 'custom' needs one weight per bucket ({k} buckets), got {got}")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"bucket weights must be non-negative with a positive sum, got {list(weights)}")
    return None if target is None else np.asarray(target)


def _redistribute(quota: np.ndarray, avail: np.ndarray, replace: bool):
    """Resolve buckets that cannot supply their quota.

    Returns ``own`` (K,) rows each bucket gives for its own share, ``borrowed`` (K, K) with
    ``borrowed[to, frm]`` distinct rows bucket ``to`` gives in place of bucket ``frm``, and
    ``repeats`` (K, K) rows drawn with replacement from bucket ``to`` for bucket ``frm``.
    """
    k = len(quota)
    own = np.minimum(quota, avail)
    repeats = np.zeros((k, k), np.int64)
    if replace:  # a bucket with some texts repeats them; an empty one still needs its neighbours
        np.fill_diagonal(repeats, np.where(avail > 0, quota - own, 0))
    deficit = quota - own - repeats.sum(axis=0)
    spare = avail - own
    borrowed = np.zeros((k, k), np.int64)
    for frm in np.flatnonzero(deficit):
        for distance in range(1, k):
            for to in (frm + distance, frm - distance):  # the longer side first: it covers the ranges
                if deficit[frm] and 0 <= to < k and spare[to] > 0:
                    moved = min(spare[to], deficit[frm])
                    borrowed[to, frm] += moved
                    spare[to] -= moved
                    deficit[frm] -= moved
        if deficit[frm] and replace:  # the pool is exhausted: repeat texts of the nearest bucket
            nonempty = np.flatnonzero(avail)
            repeats[nonempty[np.argmin(np.abs(nonempty - frm))], frm] += deficit[frm]
            deficit[frm] = 0
    if deficit.any():  # cannot happen when size <= pool size, which the caller checked
        raise InputError("the pool has too few texts for the requested size")
    return own, borrowed, repeats


def _isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``values`` (pool-adjacent-violators)."""
    sums: list[float] = []
    counts: list[int] = []
    for v in values.tolist():
        sums.append(v)
        counts.append(1)
        while len(sums) > 1 and sums[-2] * counts[-1] > sums[-1] * counts[-2]:
            s, c = sums.pop(), counts.pop()
            sums[-1] += s
            counts[-1] += c
    return np.repeat(np.asarray(sums) / np.asarray(counts), counts)


def _nearest_sorted(sorted_lengths: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """Distinct positions into ascending ``sorted_lengths`` whose values sit closest to the ascending
    ``desired`` lengths (len(desired) <= len(sorted_lengths)).

    Each desired length first gets its nearest position; colliding positions are then spread into
    a strictly increasing run centred where they collided (isotonic fit of ``position - rank``).
    """
    n, m = len(sorted_lengths), len(desired)
    if m == 0:
        return np.zeros(0, np.int64)
    right = np.clip(np.searchsorted(sorted_lengths, desired), 0, n - 1)
    left = np.clip(right - 1, 0, n - 1)
    closer_left = np.abs(sorted_lengths[left] - desired) <= np.abs(sorted_lengths[right] - desired)
    nearest = np.where(closer_left, left, right).astype(np.float64)
    rank = np.arange(m)
    shift = np.clip(np.round(_isotonic(nearest - rank)), 0, n - m).astype(np.int64)
    return shift + rank


def _quantiles(values: np.ndarray, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0)
    return np.quantile(values, (np.arange(count) + 0.5) / count, method="inverted_cdf").astype(np.float64)


def _fill_bucket(rows: np.ndarray, lengths: np.ndarray, own: int, from_below: int, from_above: int,
                 repeats: int, target_here: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Rows of one bucket: ``from_below``/``from_above`` rows stand in for a shorter/longer bucket and
    are this bucket's shortest/longest texts; ``own`` rows are random, or, with ``target_here``, the
    texts closest to the target's quantiles in this bucket; ``repeats`` are drawn with replacement."""
    n = len(rows)
    order = rows[np.lexsort((rng.random(n), lengths[rows]))]  # ascending length, random among ties
    low, high = order[:from_below], order[n - from_above:] if from_above else order[:0]
    middle = order[from_below: n - from_above]
    if target_here is not None and len(target_here):
        own_rows = middle[_nearest_sorted(lengths[middle].astype(np.float64), _quantiles(target_here, own))]
    else:
        own_rows = rng.choice(middle, size=own, replace=False) if own else middle[:0]
    extra = rng.choice(rows, size=repeats, replace=True) if repeats else rows[:0]
    return np.concatenate([low, own_rows, high, extra])


def _draw_stratum(pool: np.ndarray, lengths: np.ndarray, size: int, strategy: str, edges: tuple[int, ...],
                  shares: np.ndarray | None, target: np.ndarray | None, replace: bool,
                  rng: np.random.Generator, notes: list[str], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``size`` rows from ``pool`` (row numbers); returns the rows and the planned quota (K,)."""
    k = len(edges)
    names = bucket_labels(edges)
    if size == 0:
        return pool[:0], np.zeros(k, np.int64)
    buckets = bucket_index(lengths[pool], edges)
    if shares is None:  # natural
        if size <= len(pool):
            rows = rng.choice(pool, size=size, replace=False)
            return rows, np.bincount(bucket_index(lengths[rows], edges), minlength=k)
        extra = size - len(pool)
        notes.append(f"{prefix}the pool has {len(pool)} texts for {size}; drew {extra} repeats (sampling with replacement)")
        rows = np.concatenate([pool, rng.choice(pool, size=extra, replace=True)])
        return rows, np.bincount(bucket_index(lengths[rows], edges), minlength=k)
    quota = largest_remainder(shares, size)
    avail = np.bincount(buckets, minlength=k)
    own, borrowed, repeats = _redistribute(quota, avail, replace)
    for frm in range(k):
        if quota[frm] == own[frm]:
            continue
        have = f"{prefix}bucket {names[frm]}: " + _texts(avail[frm])
        parts = []
        if repeats[frm, frm]:
            parts.append(f"drew {repeats[frm, frm]} repeats (sampling with replacement)")
        lenders = np.flatnonzero(borrowed[:, frm])
        if len(lenders):
            given = ", ".join(f"{names[to]}: {borrowed[to, frm]}" for to in lenders)
            parts.append(f"took {borrowed[:, frm].sum()} from neighbouring buckets ({given})")
        others = [to for to in np.flatnonzero(repeats[:, frm]) if to != frm]
        if others:
            given = ", ".join(f"{names[to]}: {repeats[to, frm]}" for to in others)
            parts.append(f"repeated {repeats[others, frm].sum()} texts of other buckets, the pool being "
                         f"exhausted ({given})")
        notes.append(f"{have} in the pool for a share of {quota[frm]}; " + " and ".join(parts))
    chosen = []
    for b in range(k):
        from_below, from_above = int(borrowed[b, :b].sum()), int(borrowed[b, b + 1:].sum())
        n_repeats = int(repeats[b].sum())
        if own[b] + from_below + from_above + n_repeats == 0:
            continue
        target_here = None
        if target is not None:
            lo, hi = edges[b], (edges[b + 1] if b + 1 < k else np.inf)
            target_here = np.sort(target[(target >= lo) & (target < hi)])
        chosen.append(_fill_bucket(pool[buckets == b], lengths, int(own[b]), from_below, from_above,
                                   n_repeats, target_here, rng))
    rows = np.concatenate(chosen) if chosen else pool[:0]
    return rows, quota


def _label_quota(labels: np.ndarray, size: int, target_labels: np.ndarray | None, replace: bool,
                 notes: list[str], label_names: Sequence[str]) -> dict[int, int]:
    strata = np.unique(labels)
    avail = np.array([(labels == c).sum() for c in strata])
    if target_labels is not None and (np.asarray(target_labels) >= 0).any():
        target_labels = np.asarray(target_labels)
        shares = np.array([(target_labels == c).sum() if c >= 0 else 0 for c in strata], np.float64)
        missing = sorted(set(target_labels[target_labels >= 0].tolist()) - set(strata.tolist()))
        if missing:
            shown = ", ".join(_label_name(c, label_names) for c in missing)
            notes.append(f"labels {shown} occur in the target but not in the pool; they get no rows")
        if shares.sum() == 0:
            shares = avail.astype(np.float64)
    else:
        shares = avail.astype(np.float64)
    quota = largest_remainder(shares, size)
    if not replace:
        for _ in range(len(strata)):  # move what a label cannot supply to the others, by their shares
            over = np.maximum(quota - avail, 0)
            if not over.any():
                break
            for i in np.flatnonzero(over):
                notes.append(f"label {_label_name(strata[i], label_names)}: {_texts(avail[i])} in the pool for a "
                             f"share of {quota[i]}; the other {over[i]} come from the other labels")
            quota = np.minimum(quota, avail)
            room = np.where(quota < avail, shares, 0.0)
            if room.sum() == 0:
                room = (quota < avail).astype(np.float64)
            quota = quota + np.minimum(largest_remainder(room, int(over.sum())), avail - quota)
        if quota.sum() < size:  # rounding against capacity: fill wherever room is left, in order
            for i in range(len(strata)):
                quota[i] += min(size - int(quota.sum()), int(avail[i] - quota[i]))
    return {int(c): int(q) for c, q in zip(strata, quota)}


def _texts(count: int) -> str:
    return "no texts" if count == 0 else ("1 text" if count == 1 else f"{count} texts")


def _label_name(label: int, names: Sequence[str]) -> str:
    if label < 0:
        return "(none)"
    return repr(names[label]) if label < len(names) else str(label)


def sample(
    lengths: np.ndarray,
    labels: np.ndarray | None,
    size: int,
    strategy: str = "natural",
    *,
    edges: Sequence[int] = DEFAULT_EDGES,
    target: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    stratify: bool = False,
    shortfall: str = "neighbours",
    seed: int = 0,
    target_labels: np.ndarray | None = None,
    label_names: Sequence[str] = (),
) -> SampleResult:
    """Choose ``size`` rows of a pool described by its token ``lengths`` (N,) and ``labels`` (N,)
    (int ids, -1 = none).

    ``target`` (M,) reference lengths for ``match``; ``weights`` (K,) bucket weights for ``custom``;
    ``target_labels`` (M,) label ids giving the label shares for ``stratify`` (else the pool's).
    Raises :class:`InputError` for an empty pool, an unknown strategy, missing parameters, or a
    size larger than the pool unless ``shortfall='replace'``.
    """
    lengths, labels, edges = _check_inputs(lengths, labels, size, strategy, shortfall, edges)
    k = len(edges)
    target = _check_strategy_params(strategy, k, target, weights)
    if target_labels is not None and target is not None and len(target_labels) != len(target):
        raise InputError(f"{len(target_labels)} target labels for {len(target)} target lengths")
    rng = np.random.default_rng(seed)
    replace = shortfall == "replace"
    notes: list[str] = []
    all_rows = np.arange(len(lengths), dtype=np.int64)
    pool_buckets = bucket_index(lengths, edges)
    shares = _strategy_shares(strategy, pool_buckets, k, target, weights, edges)
    if strategy == "uniform":
        empty = [bucket_labels(edges)[b] for b in np.flatnonzero(shares == 0)]
        if empty:
            notes.append(f"uniform: buckets with no texts in the pool are left out ({', '.join(empty)})")
    match_target = target if strategy == "match" else None
    if stratify:
        if (labels < 0).all():
            raise InputError("stratify by label needs a label column; the pool has no labels")
        label_quota = _label_quota(labels, int(size), target_labels if target is not None else None,
                                   replace, notes, label_names)
    else:
        label_quota = {-2: int(size)}  # one stratum: the whole pool
    parts, quota_total = [], np.zeros(k, np.int64)
    for label, count in label_quota.items():
        pool = all_rows if label == -2 else all_rows[labels == label]
        prefix = "" if label == -2 else f"label {_label_name(label, label_names)}: "
        stratum_target = match_target
        if match_target is not None and label >= 0 and target_labels is not None:
            own = match_target[np.asarray(target_labels) == label]
            if len(own) >= _MIN_TARGET_ROWS_PER_LABEL:  # match each label's own lengths when it can
                stratum_target = own
        stratum_shares = shares
        if strategy == "match" and stratum_target is not None:
            stratum_shares = np.bincount(bucket_index(stratum_target, edges), minlength=k).astype(np.float64)
        rows, quota = _draw_stratum(pool, lengths, count, strategy, edges, stratum_shares, stratum_target,
                                         replace, rng, notes, prefix)
        parts.append(rows)
        quota_total += quota
    rows = np.sort(np.concatenate(parts)).astype(np.int64)
    if len(rows) != size:  # an invariant of the allocation above
        raise AssertionError(f"sampler drew {len(rows)} rows for a requested size of {size}")
    counts = np.bincount(bucket_index(lengths[rows], edges), minlength=k)
    label_counts = {int(c): int((labels[rows] == c).sum()) for c in np.unique(labels[rows])}
    return SampleResult(rows=rows, notes=tuple(notes), strategy=strategy, shortfall=shortfall, edges=edges,
                        bucket_quota=quota_total, bucket_counts=counts, repeats=int(len(rows) - len(np.unique(rows))),
                        label_counts=label_counts)
