"""Fixed-memory accumulators: ``_Accumulator`` (min / max / non-finite counts and the exact
power-of-two streaming histogram of one tensor) and ``_ChannelAccumulator`` (per-channel absmax and
mean, a uniform reservoir sample and the outlier rows of a weighted MatMul's input)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from calib.stats.config import DEFAULT_BINS
from calib.stats.format import ChannelStats, TensorStats

_CHUNK = 1 << 16  # elements per histogram chunk: keeps abs/scale/cast/bincount inside the L2 cache
_DIRECT = _CHUNK // 4  # contiguous blocks this large are histogrammed in place; smaller ones gathered first


def _blocks(view: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """Sub-views of ``view`` (split along leading axes) of at most ``limit`` elements each."""
    if view.flags.c_contiguous:
        view = view.reshape(-1)
    if view.size <= limit:
        yield view
        return
    inner = view.size // view.shape[0]
    if inner <= limit:
        step = limit // inner
        for start in range(0, view.shape[0], step):
            yield view[start : start + step]
    else:
        for row in view:
            yield from _blocks(row, limit)


class _Scratch:
    """Per-thread work buffers of ``_CHUNK`` elements: gathered values, |x| scaled, bin indices."""

    __slots__ = ("gather", "index", "scaled")

    def __init__(self) -> None:
        self.gather = np.empty(_CHUNK, np.float32)
        self.scaled = np.empty(_CHUNK, np.float32)
        self.index = np.empty(_CHUNK, np.int32)  # float32 -> int32 casts vectorise; -> int64 does not


class _Accumulator:
    """Running statistics of one tensor (see module docstring for the histogram scheme)."""

    __slots__ = ("bins", "count", "fixed_range", "hist", "max", "min", "nan", "neginf", "posinf", "range")

    def __init__(self, bins: int, fixed_range: float | None = None) -> None:
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.fixed_range = fixed_range
        self.range = fixed_range or 0.0
        self.min, self.max = np.inf, -np.inf
        self.count = self.nan = self.posinf = self.neginf = 0

    def count_nonfinite(self, values: np.ndarray) -> None:
        self.nan += int(np.count_nonzero(np.isnan(values)))
        self.posinf += int(np.count_nonzero(values == np.inf))
        self.neginf += int(np.count_nonzero(values == -np.inf))

    def check_padding(self, views: Sequence[np.ndarray], whole: np.ndarray | None = None) -> None:
        """Count NaN / +inf / -inf at padded positions too: they are there at inference time (e.g. the
        -inf of an additive attention mask), so the tensor is flagged, though they never enter ranges.
        ``whole``: the full tensor, checked first in two fast contiguous passes (when mostly padding)."""
        if whole is not None and math.isfinite(whole.min()) and math.isfinite(whole.max()):
            return
        for view in views:
            if view.size and not (math.isfinite(view.min()) and math.isfinite(view.max())):  # NaN propagates
                self.count_nonfinite(view)

    def add_views(self, views: Sequence[np.ndarray], scratch: _Scratch, *, hist: bool, count: bool) -> None:
        """Accumulate the values of ``views`` (any shapes and strides): contiguous blocks in place, small
        or strided ones gathered into one scratch chunk first so each numpy call has work to do."""
        gather, filled = scratch.gather, 0
        for view in views:
            for block in _blocks(view, _CHUNK):
                n = block.size
                if n >= _DIRECT and block.flags.c_contiguous:
                    self.add_chunk(block.reshape(-1), scratch, hist=hist, count=count)
                    continue
                if filled + n > _CHUNK:
                    self.add_chunk(gather[:filled], scratch, hist=hist, count=count)
                    filled = 0
                np.copyto(gather[filled : filled + n].reshape(block.shape), block)
                filled += n
        if filled:
            self.add_chunk(gather[:filled], scratch, hist=hist, count=count)

    def add_chunk(self, chunk: np.ndarray, scratch: _Scratch, *, hist: bool, count: bool) -> None:
        """Accumulate a flat float32 array of at most ``_CHUNK`` real-position values; ``count`` False
        skips counting non-finite values (already counted, in two-pass mode's range pass)."""
        if chunk.size == 0:
            return
        lo, hi = float(chunk.min()), float(chunk.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            if count:
                self.count_nonfinite(chunk)
            chunk = chunk[np.isfinite(chunk)]
            if chunk.size == 0:
                return
            lo, hi = float(chunk.min()), float(chunk.max())
        self.count += chunk.size
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if not hist:
            return
        absmax = max(-lo, hi)
        if self.fixed_range is None and absmax >= self.range and absmax > 0:
            self._grow(absmax)
        if self.range == 0:  # every finite value so far is 0
            self.hist[0] += chunk.size
            return
        n = chunk.size
        scaled = np.abs(chunk, out=scratch.scaled[:n])
        np.multiply(scaled, np.float32(self.bins / self.range), out=scaled)
        index = scratch.index[:n]
        np.copyto(index, scaled, casting="unsafe")  # truncation == floor for values >= 0
        if self.fixed_range is not None:  # x == absmax lands on index `bins` in two-pass mode
            np.minimum(index, self.bins - 1, out=index)
        self.hist += np.bincount(index, minlength=self.bins)

    def _grow(self, absmax: float) -> None:
        # smallest power of two above absmax; at least 2**-100 so bins/range stays finite in float32
        new_range = max(float(2.0 ** np.frexp(absmax)[1]), 2.0 ** -100)
        if self.range > 0:
            steps = round(np.log2(new_range / self.range))
            for _ in range(min(steps, int(np.log2(self.bins)))):  # after log2(bins) merges all is in bin 0
                merged = self.hist[0::2] + self.hist[1::2]
                self.hist[:] = 0
                self.hist[: len(merged)] = merged
        self.range = new_range

    def result(self, name: str, producer: str, op_type: str, roles: tuple[str, ...],
               channels: ChannelStats | None = None) -> TensorStats:
        return TensorStats(name=name, producer=producer, op_type=op_type, axis_roles=roles, count=self.count,
                           nan=self.nan, posinf=self.posinf, neginf=self.neginf, min=self.min, max=self.max,
                           hist=self.hist.copy(), hist_range=float(self.range), channels=channels)


class _ChannelAccumulator:
    """Per-channel absmax and sum of a (rows, K) stream, plus a uniform reservoir sample of rows:
    each row gets a random key and the ``cap`` smallest keys seen so far are kept, so the sample is
    uniform over all rows whatever the batch sizes, and deterministic for a fixed seed and order."""

    __slots__ = ("cap", "keys", "maximum", "minimum", "rng", "rows", "sample", "top", "top_cap", "top_keys", "total")

    def __init__(self, size: int, cap: int, seed: int, top_cap: int = 0) -> None:
        self.maximum = np.full(size, -np.inf, np.float32)
        self.minimum = np.full(size, np.inf, np.float32)
        self.total = np.zeros(size, np.float64)
        self.rows = 0
        self.cap = cap
        self.rng = np.random.default_rng(seed)
        self.sample = np.zeros((0, size), np.float32)
        self.keys = np.zeros(0)
        self.top_cap = top_cap
        self.top = np.zeros((0, size), np.float32)
        self.top_keys = np.zeros(0, np.float32)

    def add(self, rows: np.ndarray) -> None:
        """Accumulate real-position token vectors, shape (n, K); non-finite entries count as 0."""
        if not rows.size:
            return
        high, low = rows.max(axis=0), rows.min(axis=0)
        if not (np.isfinite(high).all() and np.isfinite(low).all()):  # NaN propagates into max/min
            rows = np.where(np.isfinite(rows), rows, np.float32(0))
            high, low = rows.max(axis=0), rows.min(axis=0)
        np.maximum(self.maximum, high, out=self.maximum)
        np.minimum(self.minimum, low, out=self.minimum)
        self.total += rows.sum(axis=0)  # float32 within a batch, float64 across batches
        self.rows += len(rows)
        if self.top_cap:
            self._add_top(rows)
        if not self.cap:
            return
        keys = self.rng.random(len(rows))
        if len(keys) > self.cap:
            pick = np.argpartition(keys, self.cap)[: self.cap]
            keys, rows = keys[pick], rows[pick]
        keys = np.concatenate([self.keys, keys])
        if len(keys) > self.cap:
            keep = np.argpartition(keys, self.cap)[: self.cap]
            self.sample = np.concatenate([self.sample, rows])[keep]
            self.keys = keys[keep]
        else:
            self.sample = np.concatenate([self.sample, rows])
            self.keys = keys

    def _add_top(self, rows: np.ndarray) -> None:
        """Keep the ``top_cap`` rows with the largest max |x| (the rare outlier tokens a uniform sample misses)."""
        peak = np.maximum(rows.max(axis=1), -rows.min(axis=1))
        if len(self.top_keys) >= self.top_cap:
            hit = peak > self.top_keys.min()
            if not hit.any():
                return
            rows, peak = rows[hit], peak[hit]
        keys = np.concatenate([self.top_keys, peak])
        stacked = np.concatenate([self.top, rows])
        if len(keys) > self.top_cap:
            keep = np.argpartition(-keys, self.top_cap)[: self.top_cap]
            keys, stacked = keys[keep], stacked[keep]
        self.top_keys, self.top = keys, np.ascontiguousarray(stacked)

    def result(self) -> ChannelStats:
        absmax = np.maximum(self.maximum, -self.minimum).astype(np.float64) if self.rows else np.zeros(len(self.total))
        order = np.argsort(self.keys, kind="stable")  # a canonical row order
        top_order = np.argsort(-self.top_keys, kind="stable")
        return ChannelStats(absmax=absmax, mean=self.total / max(self.rows, 1), rows=self.rows,
                            sample=np.ascontiguousarray(self.sample[order]),
                            outliers=np.ascontiguousarray(self.top[top_order]))


def acc_range(acc: _Accumulator) -> float:
    """Two-pass mode: the fixed histogram range of the second pass (absmax; 0 when all zeros)."""
    if not acc.count:
        return 0.0
    return max(abs(acc.min), abs(acc.max))


def tensor_stats_from_arrays(name: str, batches: Sequence[np.ndarray] | np.ndarray, *, bins: int = DEFAULT_BINS["stream"],
                             fixed_range: float | None = None) -> TensorStats:
    """Statistics of plain arrays (every element counts), with the same accumulator as the model
    pass: for calibrators on data that does not come from a model, and for tests."""
    if isinstance(batches, np.ndarray):
        batches = [batches]
    acc = _Accumulator(bins, fixed_range)
    scratch = _Scratch()
    for array in batches:
        acc.add_views([np.ascontiguousarray(array, dtype=np.float32)], scratch, hist=True, count=True)
    return acc.result(name, "", "", ("other",))
