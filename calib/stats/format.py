"""The statistics artifact: ``TensorStats`` / ``ChannelStats`` / ``ActivationStats`` and their
``stats.npz`` + ``stats.json`` format (ragged per-channel arrays packed as flat arrays + offsets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib.errors import InputError
from calib.io import atomic_save_npz, atomic_write_json, read_json

STATS_FILE = "stats.npz"
META_FILE = "stats.json"


@dataclass(frozen=True, eq=False)
class TensorStats:
    """Statistics of one tensor. ``hist[j]`` counts finite |x| in ``[j*width, (j+1)*width)``."""

    name: str
    producer: str  # node name producing the tensor ('' for graph inputs)
    op_type: str
    axis_roles: tuple[str, ...]
    count: int  # finite values seen (real positions only)
    nan: int
    posinf: int
    neginf: int
    min: float  # over finite values; +inf when none
    max: float  # over finite values; -inf when none
    hist: np.ndarray  # (bins,) int64
    hist_range: float  # upper edge R of the histogram (0 when every finite value was 0)
    channels: ChannelStats | None = None  # inputs of weighted MatMuls only (see ChannelStats)

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def width(self) -> float:
        return self.hist_range / len(self.hist) if self.hist_range > 0 else 0.0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    def covering_hist(self) -> np.ndarray:
        """The bins covering ``[0, absmax]`` (at least one bin)."""
        if self.width == 0:
            return self.hist[:1]
        k = min(len(self.hist), int(self.absmax / self.width) + 1)
        return self.hist[:k]


@dataclass(frozen=True, eq=False)
class ChannelStats:
    """Per-channel statistics of a weighted MatMul's input X (..., K), over real positions only, from
    the same pass as the histograms: ``absmax[j] = max |X[..., j]|`` and ``mean[j]`` (float64, shape
    (K,)), over ``rows`` token vectors; ``sample``: up to ``StatsConfig.sample_rows`` of those vectors
    drawn uniformly at random (reservoir, fixed seed), float32 (n, K), for error measurements at the
    MatMul's output (outlier migration, range choice, bias correction); ``outliers``: the
    ``StatsConfig.outlier_rows`` token vectors with the largest max |x| over the whole set, largest
    first, so estimates over all ``rows`` count the rare extreme tokens exactly (:meth:`weighted_rows`)."""

    absmax: np.ndarray
    mean: np.ndarray
    rows: int
    sample: np.ndarray
    outliers: np.ndarray | None = None
    sample_rest: np.ndarray | None = None  # bool (n,): sample rows below the outliers' smallest peak

    def rest_mask(self) -> np.ndarray:
        """Sample rows that are not outlier tokens (peak below the smallest outlier peak)."""
        if self.sample_rest is not None:
            return self.sample_rest
        if self.outliers is None or not len(self.outliers) or not len(self.sample):
            return np.ones(len(self.sample), bool)
        return np.abs(self.sample).max(axis=1) < float(np.abs(self.outliers).max(axis=1).min())

    def scaled(self, divisor: np.ndarray) -> ChannelStats:
        """The statistics of ``X / divisor`` (per channel), exactly: same rows, same stratification."""
        d = np.asarray(divisor, np.float64)
        return ChannelStats(absmax=self.absmax / d, mean=self.mean / d, rows=self.rows,
                            sample=(self.sample / d).astype(np.float32),
                            outliers=None if self.outliers is None else (self.outliers / d).astype(np.float32),
                            sample_rest=self.rest_mask())

    def weighted_rows(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors and weights whose weighted sum estimates a sum over all ``rows`` vectors:
        the outlier rows count once each; the uniform sample rows below the outliers' smallest peak
        stand for the remaining rows (weight ``(rows - outliers) / n``). ``limit``: sample rows used."""
        sample = self.sample[:limit] if limit else self.sample
        top = self.outliers if self.outliers is not None else sample[:0]
        if not len(top):
            return sample, np.full(len(sample), self.rows / max(len(sample), 1))
        rest = sample[self.rest_mask()[: len(sample)]]
        remaining = max(self.rows - len(top), 0)
        weights = np.concatenate([np.ones(len(top)), np.full(len(rest), remaining / max(len(rest), 1))])
        return np.concatenate([top, rest]), weights

    @property
    def size(self) -> int:
        return len(self.absmax)


@dataclass(frozen=True, eq=False)
class ActivationStats:
    """Per-tensor statistics from one calibration pass, in graph order."""

    model_sha256: str
    tensors: tuple[TensorStats, ...]
    bins: int
    histogram: str
    texts: int
    tokens: int  # real (non-padded) tokens fed
    batches: int
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why no statistics
    has_channels: bool = True  # False: written before per-channel statistics existed

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def __getitem__(self, name: str) -> TensorStats:
        for t in self.tensors:
            if t.name == name:
                return t
        raise InputError(f"no statistics for tensor {name!r} (known: {len(self.tensors)} tensors)")

    def __len__(self) -> int:
        return len(self.tensors)

    def channels(self, name: str, *, recompute: str = "calib calibrate --calibration-set <calibration set>") -> ChannelStats:
        """Per-channel statistics of ``name``; a one-line InputError naming ``recompute`` (the command
        that writes them) when this run predates them or the tensor is not a weighted MatMul input."""
        if not self.has_channels:
            raise InputError(f"these statistics have no per-channel input statistics (written by an older calib); "
                             f"recompute them with: {recompute}")
        stats = self[name]
        if stats.channels is None:
            raise InputError(f"no per-channel statistics for tensor {name!r}: it is not the input of a weighted "
                             f"MatMul in the calibrated graph; recompute with: {recompute}")
        return stats.channels

    def summary(self) -> dict[str, object]:
        return {
            "tensors": len(self.tensors), "texts": self.texts, "tokens": self.tokens,
            "batches": self.batches, "histogram": self.histogram, "bins": self.bins,
            "seconds": round(self.seconds, 3),
            "nonfinite_tensors": sum(1 for t in self.tensors if t.nonfinite),
            "zero_range_tensors": sum(1 for t in self.tensors if t.absmax == 0),
            "channel_tensors": sum(1 for t in self.tensors if t.channels is not None),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``stats.npz`` (stacked arrays) and ``stats.json`` (names, producers, axis roles, counts)."""
        directory = Path(directory)
        n = len(self.tensors)
        hist = np.stack([t.hist for t in self.tensors]) if n else np.zeros((0, self.bins), np.int64)
        atomic_save_npz(
            directory / STATS_FILE,
            hist=hist.astype(np.int64),
            hist_range=np.array([t.hist_range for t in self.tensors], np.float64),
            min=np.array([t.min for t in self.tensors], np.float64),
            max=np.array([t.max for t in self.tensors], np.float64),
            count=np.array([t.count for t in self.tensors], np.int64),
            nan=np.array([t.nan for t in self.tensors], np.int64),
            posinf=np.array([t.posinf for t in self.tensors], np.int64),
            neginf=np.array([t.neginf for t in self.tensors], np.int64),
            **_pack_channels(self.tensors),
        )
        meta = {
            "model_sha256": self.model_sha256, "bins": self.bins, "histogram": self.histogram,
            "texts": self.texts, "tokens": self.tokens, "batches": self.batches, "seconds": self.seconds,
            "skipped": self.skipped, "has_channels": self.has_channels,
            "tensors": [
                {"name": t.name, "producer": t.producer, "op_type": t.op_type, "axis_roles": list(t.axis_roles),
                 "count": t.count, "nan": t.nan, "posinf": t.posinf, "neginf": t.neginf,
                 "min": t.min if t.count else None, "max": t.max if t.count else None, "absmax": t.absmax,
                 **({"channels": t.channels.size, "channel_rows": t.channels.rows,
                     "sample_rows": len(t.channels.sample)} if t.channels is not None else {})}
                for t in self.tensors
            ],
        }
        atomic_write_json(directory / META_FILE, meta)
        return directory / STATS_FILE

    @classmethod
    def load(cls, directory: str | Path) -> ActivationStats:
        directory = Path(directory)
        if not (directory / STATS_FILE).is_file() or not (directory / META_FILE).is_file():
            raise InputError(f"{directory} holds no activation statistics ({STATS_FILE} + {META_FILE})")
        meta = read_json(directory / META_FILE)
        with np.load(directory / STATS_FILE) as arrays:
            data = {k: arrays[k] for k in arrays.files}
        has_channels = bool(meta.get("has_channels", False)) and "channel_offsets" in data
        channels = _unpack_channels(data, meta["tensors"]) if has_channels else [None] * len(meta["tensors"])
        tensors = tuple(
            TensorStats(
                name=m["name"], producer=m["producer"], op_type=m["op_type"], axis_roles=tuple(m["axis_roles"]),
                count=int(data["count"][i]), nan=int(data["nan"][i]), posinf=int(data["posinf"][i]),
                neginf=int(data["neginf"][i]), min=float(data["min"][i]), max=float(data["max"][i]),
                hist=data["hist"][i], hist_range=float(data["hist_range"][i]), channels=channels[i],
            )
            for i, m in enumerate(meta["tensors"])
        )
        return cls(model_sha256=meta["model_sha256"], tensors=tensors, bins=int(meta["bins"]),
                   histogram=meta["histogram"], texts=int(meta["texts"]), tokens=int(meta["tokens"]),
                   batches=int(meta["batches"]), seconds=float(meta["seconds"]), skipped=dict(meta["skipped"]),
                   has_channels=has_channels)


def _pack_channels(tensors: Sequence[TensorStats]) -> dict[str, np.ndarray]:
    """Ragged per-channel arrays as flat arrays + offsets (tensors without channel stats: empty)."""
    chans = [t.channels for t in tensors]
    sizes = [c.size if c is not None else 0 for c in chans]
    samples = [c.sample.reshape(-1) if c is not None else np.zeros(0, np.float32) for c in chans]
    outliers = [c.outliers.reshape(-1) if c is not None and c.outliers is not None else np.zeros(0, np.float32)
                for c in chans]
    return {
        "channel_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "channel_absmax": np.concatenate([c.absmax for c in chans if c is not None] or [np.zeros(0)]),
        "channel_mean": np.concatenate([c.mean for c in chans if c is not None] or [np.zeros(0)]),
        "channel_rows": np.array([c.rows if c is not None else 0 for c in chans], np.int64),
        "sample_offsets": np.concatenate([[0], np.cumsum([len(x) for x in samples])]).astype(np.int64),
        "samples": np.concatenate(samples).astype(np.float32) if samples else np.zeros(0, np.float32),
        "outlier_offsets": np.concatenate([[0], np.cumsum([len(x) for x in outliers])]).astype(np.int64),
        "outliers": np.concatenate(outliers).astype(np.float32) if outliers else np.zeros(0, np.float32),
    }


def _unpack_channels(data: Mapping[str, np.ndarray], metas: Sequence[Mapping]) -> list[ChannelStats | None]:
    out: list[ChannelStats | None] = []
    co, so = data["channel_offsets"], data["sample_offsets"]
    for i, m in enumerate(metas):
        k = int(co[i + 1] - co[i])
        if not k or "channels" not in m:
            out.append(None)
            continue
        sample = data["samples"][so[i] : so[i + 1]].reshape(-1, k)
        outliers = None
        if "outlier_offsets" in data:
            oo = data["outlier_offsets"]
            outliers = data["outliers"][oo[i] : oo[i + 1]].reshape(-1, k)
        out.append(ChannelStats(absmax=data["channel_absmax"][co[i] : co[i + 1]],
                                mean=data["channel_mean"][co[i] : co[i + 1]], rows=int(data["channel_rows"][i]),
                                sample=sample, outliers=outliers))
    return out
