"""One streaming pass of ONNX Runtime FP32 over a calibration set, accumulating activation statistics.

For every requested tensor we keep, over real (non-padded) token positions only: min, max, element
count, NaN / +inf / -inf counts, and a histogram of ``|x|`` over finite values. Nothing grows with the
calibration set: memory is at most two batches of activations (one accumulated while ORT computes
the next; one when a batch's activations exceed ``StatsConfig.overlap_max_mb``) plus ``bins`` counters
per tensor.

For every tensor that is the input X of a weighted MatMul (``X @ W``, W a constant matrix) the same
pass also keeps :class:`ChannelStats`: per-channel ``max |X_j|`` and mean over real positions, and a
uniform reservoir sample of ``sample_rows`` token vectors (default 512) — fixed memory, ``K`` floats
plus ``sample_rows x K`` per tensor. Outlier migration (``calib.smooth``), the error-driven range
choice and bias correction read them; no second pass over the calibration set is needed.

Histogram modes (``StatsConfig.histogram``):

- ``stream`` (default, one model pass): each tensor's histogram covers ``[0, R)`` where ``R`` is the
  smallest power of two above the running absmax, with ``bins`` (default 4096) equal bins. When a
  later batch exceeds ``R``, ``R`` doubles and adjacent bins merge pairwise. Because ``|x| * bins / R``
  is exact in float32 for a power-of-two ``R``, the merge is exact: the final histogram equals the
  one computed with the final ``R`` from the start, whatever the batch order. Since ``absmax >= R/2``,
  at least ``bins/2 = 2048`` bins cover ``[0, absmax]`` (TensorRT uses exactly 2048).
- ``two-pass`` (TensorRT's exact binning, twice the model time): a first pass finds absmax, the
  second histograms ``|x|`` into exactly ``bins`` (default 2048) bins over ``[0, absmax]``.

Padded positions are found without trusting any axis size: a probe runs the model on two all-real
feeds with batch/sequence sizes (3, 11) and (5, 13) and classifies each tensor axis by the size it
takes (batch, sequence, flattened batch*sequence, batch*k, fixed, other). Each batch then keeps the
positions whose batch row and every sequence index are real tokens (e.g. attention probabilities
(B, heads, T, T) are masked on both T axes). Flattened batch*sequence axes are assumed batch-major.

Cost (the pass must stay close to plain ORT inference; see benchmarks/bench_calibration.py):

- ORT runs the model at full graph optimisation with the tensors appended as graph outputs (ORT never
  fuses a graph output away); the model file's bytes are reused rather than re-serialized, shape
  inference and placement run on a weightless copy of the graph, and outputs are read as numpy views
  of ORT's buffers (no copy).
- Real positions are cut out by slicing (batches put real tokens first), runs of rows with the same
  length at a time, never by boolean masks; values go through min/max, ``|x|`` scaling and
  ``bincount`` in L2-sized chunks. Padded positions are only checked for NaN/inf.
- With two or more threads and ``overlap`` (default), batch k is accumulated in a background thread
  while ORT, which releases the GIL, runs batch k+1; a batch too large to keep two of is accumulated
  between runs with its tensors split over the threads. Idle ORT threads then sleep instead of
  spinning. Every schedule gives identical statistics (each tensor has one accumulator, fed by one
  thread at a time; the histogram merge is order-independent).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calib.batching import Batch, Encoded, iter_batches
from calib.engines.ort import default_threads
from calib.errors import InputError
from calib.io import atomic_save_npz, atomic_write_json, read_json, sha256_file
from calib.model import ModelSpec, read_onnx
from calib.placement import Placement, _float_tensors, ensure_node_names, resolve_placement, weighted_matmuls

ProgressFn = Callable[[float, str], None]

HISTOGRAM_MODES = ("stream", "two-pass")
TENSOR_SCOPES = ("placement", "all")
DEFAULT_BINS = {"stream": 4096, "two-pass": 2048}
PROBE_SHAPES = ((3, 11), (5, 13))  # (batch, sequence): odd primes so no axis role is ambiguous
_CHUNK = 1 << 16  # elements per histogram chunk: keeps abs/scale/cast/bincount inside the L2 cache
_DIRECT = _CHUNK // 4  # contiguous blocks this large are histogrammed in place; smaller ones gathered first
_WEIGHTLESS_MAX = 1024  # initializers up to this many elements keep their data (shape constants)
STATS_FILE = "stats.npz"
META_FILE = "stats.json"


@dataclass(frozen=True)
class StatsConfig:
    """How to collect statistics. ``tensors``: 'placement' (inputs of the ops the placement quantizes,
    plus float model outputs), 'all' (every float tensor), or explicit names."""

    tensors: str | tuple[str, ...] = "placement"
    placement: str = "tensorrt"
    batch_size: int = 16
    histogram: str = "stream"
    bins: int | None = None  # default per mode: 4096 (stream) / 2048 (two-pass)
    optimization: str = "all"  # ORT graph optimisation; exposed tensors are graph outputs, so kept
    threads: int | None = None  # cores: ORT intra-op threads and accumulating threads (default: all)
    pad_multiple: int = 8
    # With threads >= 2: accumulate batch k in a background thread while ORT runs batch k+1, for batches
    # whose exposed activations take at most overlap_max_mb; larger batches are accumulated in between
    # runs, split over `threads` threads, so only one of them is alive at a time.
    overlap: bool = True
    overlap_max_mb: float = 192.0
    # Per-channel absmax / mean and a uniform sample of token vectors for the inputs of weighted
    # MatMuls (K floats each + sample_rows x K); 0 rows keeps no sample.
    channel_stats: bool = True
    sample_rows: int = 512
    outlier_rows: int = 64  # plus the rows with the largest max |x|, exactly (see ChannelStats)


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


# ---------------------------------------------------------------------------------------------
# Which tensors


def graph_producers(model: onnx.ModelProto) -> dict[str, tuple[str, str, int]]:
    """tensor name -> (producer node name, op type, position in graph order). Graph inputs first."""
    ensure_node_names(model)
    out: dict[str, tuple[str, str, int]] = {}
    for v in model.graph.input:
        out.setdefault(v.name, ("", "input", len(out)))
    for node in model.graph.node:
        for name in node.output:
            if name:
                out.setdefault(name, (node.name, node.op_type, len(out)))
    return out


def weightless(model: onnx.ModelProto, keep_elements: int = _WEIGHTLESS_MAX) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``keep_elements`` elements keep their name, type and
    shape but no data. Enough for graph walks, placement and shape inference (small constants such as
    Reshape shapes are kept), without copying or re-serializing the weights."""
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                            producer_version=model.producer_version, domain=model.domain,
                            model_version=model.model_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, src = light.graph, model.graph
    graph.name = src.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, part).extend(getattr(src, part))
    for tensor in src.initializer:
        if math.prod(tensor.dims) <= keep_elements or tensor.data_location == onnx.TensorProto.EXTERNAL:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return light


def default_tensors(model: onnx.ModelProto, scope: str = "placement", placement: str | Placement = "tensorrt") -> tuple[str, ...]:
    """Tensors to collect, in graph order: the placement's activation tensors + float model outputs
    (``scope='placement'``), or every float tensor produced by a node (``scope='all'``)."""
    if scope not in TENSOR_SCOPES:
        raise InputError(f"unknown tensor scope {scope!r} (choose 'placement', 'all' or give tensor names)")
    model = weightless(model)  # shape inference would otherwise serialize and copy every weight
    producers = graph_producers(model)
    outputs = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in
               (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
    if scope == "all":
        initializers = {t.name for t in model.graph.initializer}
        constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        floats = _float_tensors(model)
        names = [n for n, (prod, _, _) in producers.items()
                 if prod and n not in initializers and n not in constants and n in floats]
    else:
        placement = placement if isinstance(placement, Placement) else Placement(placement)
        names = list(resolve_placement(model, placement).activation_tensors)
    names = [n for n in dict.fromkeys([*names, *outputs]) if n in producers]
    return tuple(sorted(names, key=lambda n: producers[n][2]))


# ---------------------------------------------------------------------------------------------
# Axis roles


def classify_axes(shape_a: Sequence[int], shape_b: Sequence[int],
                  probes: Sequence[tuple[int, int]] = PROBE_SHAPES) -> tuple[str, ...]:
    """Role of each axis from the shapes a tensor takes on the two probe feeds."""
    (b1, t1), (b2, t2) = probes
    if len(shape_a) != len(shape_b):
        return tuple("other" for _ in shape_b)
    roles = []
    for n1, n2 in zip(shape_a, shape_b):
        if n1 == n2:
            roles.append("fixed")
        elif (n1, n2) == (b1, b2):
            roles.append("batch")
        elif (n1, n2) == (t1, t2):
            roles.append("seq")
        elif (n1, n2) == (b1 * t1, b2 * t2):
            roles.append("batch*seq")
        elif n1 % b1 == 0 and n2 % b2 == 0 and n1 // b1 == n2 // b2:
            roles.append(f"batch*{n1 // b1}")
        else:
            roles.append("other")
    return tuple(roles)


def _place(array: np.ndarray, axes: Sequence[int], ndim: int) -> np.ndarray:
    """``array`` (whose dims go to ``axes`` in order) reshaped to broadcast against an ndim tensor."""
    order = np.argsort(axes)
    arr = np.transpose(array, order) if array.ndim > 1 else array
    shape = [1] * ndim
    for ax, size in zip(sorted(axes), arr.shape):
        shape[ax] = size
    return arr.reshape(shape)


def position_mask(roles: Sequence[str], mask: np.ndarray) -> np.ndarray | None:
    """Boolean array broadcastable to the tensor: True at real positions; None when all are real."""
    if mask.all():
        return None
    ndim = len(roles)
    batch_axis, repeat = None, 1
    for ax, role in enumerate(roles):
        if role == "batch" or (role.startswith("batch*") and role != "batch*seq"):
            batch_axis, repeat = ax, (1 if role == "batch" else int(role.split("*")[1]))
            break
    valid = None
    for ax, role in enumerate(roles):
        if role == "seq":
            if batch_axis is not None:
                rows = np.repeat(mask, repeat, axis=0) if repeat > 1 else mask
                part = _place(rows, (batch_axis, ax), ndim)
            else:
                part = _place(mask.any(axis=0), (ax,), ndim)
        elif role == "batch*seq":
            part = _place(mask.reshape(-1), (ax,), ndim)
        else:
            continue
        valid = part if valid is None else valid & part
    return valid


# ---------------------------------------------------------------------------------------------
# Real positions by slicing


@dataclass(frozen=True)
class _Layout:
    """Where a tensor's batch and sequence axes are (from its axis roles). ``split_axis``: a flattened
    batch*seq axis, reshaped to (batch, seq) before slicing."""

    batch_axis: int | None
    repeat: int  # rows per text on the batch axis (heads folded into the batch: batch*k)
    seq_axes: tuple[int, ...]
    split_axis: int | None = None


def _layout(roles: Sequence[str]) -> _Layout | None:
    """Slicing plan for a tensor, or None when only a boolean mask can describe its real positions."""
    seq = [ax for ax, role in enumerate(roles) if role == "seq"]
    flat = [ax for ax, role in enumerate(roles) if role == "batch*seq"]
    batch = next((ax for ax, role in enumerate(roles) if role == "batch"
                  or (role.startswith("batch*") and role != "batch*seq")), None)
    if flat:
        if len(flat) > 1 or batch is not None:
            return None
        ax = flat[0]
        return _Layout(batch_axis=ax, repeat=1, seq_axes=(ax + 1, *(s + 1 if s > ax else s for s in seq)),
                       split_axis=ax)
    repeat = 1 if batch is None or roles[batch] == "batch" else int(roles[batch].split("*")[1])
    return _Layout(batch_axis=batch, repeat=repeat, seq_axes=tuple(seq))


class _Rows:
    """A batch's token mask as runs of consecutive rows with the same number of real tokens."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.batch, self.width = mask.shape
        lengths = mask.sum(axis=1)
        self.all_real = bool(lengths.min(initial=self.width) == self.width)
        # real tokens first in every row: what iter_batches makes; anything else takes the boolean path
        self.prefix = bool(np.array_equal(mask, np.arange(self.width)[None, :] < lengths[:, None]))
        cuts = (np.flatnonzero(np.diff(lengths)) + 1).tolist()
        self.groups = [(a, b, int(lengths[a])) for a, b in zip([0, *cuts], [*cuts, self.batch]) if b > a]
        self.longest = int(lengths.max(initial=0))
        self.mostly_padding = lengths.sum() < 0.7 * mask.size  # then check whole tensors for inf/NaN


def _split_positions(name: str, value: np.ndarray, roles: Sequence[str], layout: _Layout | None,
                     rows: _Rows) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(views holding the real positions, views holding the padded ones) of one batch's tensor; the
    views are disjoint and together cover the tensor."""
    if rows.all_real or layout is None or not rows.prefix:
        keep = None if rows.all_real else position_mask(roles, rows.mask)
        if keep is None:
            return [value], []
        keep = np.broadcast_to(keep, value.shape)
        return [value[keep]], [value[~keep]]
    if not layout.seq_axes:
        return [value], []
    if layout.split_axis is not None:
        ax = layout.split_axis
        if value.shape[ax] != rows.batch * rows.width:
            raise InputError(f"tensor {name!r} has shape {value.shape}: axis {ax} should hold batch x sequence "
                             f"= {rows.batch * rows.width} positions")
        value = value.reshape(value.shape[:ax] + (rows.batch, rows.width) + value.shape[ax + 1:])
    bad = [ax for ax in layout.seq_axes if value.shape[ax] != rows.width]
    if layout.batch_axis is not None and value.shape[layout.batch_axis] != rows.batch * layout.repeat:
        bad.append(layout.batch_axis)
    if bad:
        raise InputError(f"tensor {name!r} has shape {value.shape} in a batch of {rows.batch} x {rows.width} tokens: "
                         f"axis {bad[0]} does not follow its probed role ({', '.join(roles)})")
    groups = rows.groups if layout.batch_axis is not None else [(0, rows.batch, rows.longest)]
    real, padded = [], []
    for first, stop, length in groups:
        base = [slice(None)] * value.ndim
        if layout.batch_axis is not None:
            base[layout.batch_axis] = slice(first * layout.repeat, stop * layout.repeat)
        cut = list(base)
        for ax in layout.seq_axes:
            cut[ax] = slice(0, length)
        real.append(value[tuple(cut)])
        if length < rows.width:  # the rest, as disjoint slabs: seq axis i padded, axes before it real
            for i, ax in enumerate(layout.seq_axes):
                pad = list(base)
                for before in layout.seq_axes[:i]:
                    pad[before] = slice(0, length)
                pad[ax] = slice(length, None)
                padded.append(value[tuple(pad)])
    return real, padded


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


# ---------------------------------------------------------------------------------------------
# Accumulation


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


def _channel_rows(value: np.ndarray, real: Sequence[np.ndarray], roles: Sequence[str], rows: _Rows) -> list[np.ndarray]:
    """The real positions of ``value`` (..., K) as (n, K) token vectors: the sliced real views of
    :func:`_split_positions` reshaped, or (boolean path) the rows kept by the position mask."""
    k = value.shape[-1]
    if all(v.ndim >= 2 and v.shape[-1] == k for v in real):
        return [v.reshape(-1, k) for v in real]
    keep = position_mask(roles, rows.mask)
    if keep is None:
        return [value.reshape(-1, k)]
    keep = np.broadcast_to(keep, value.shape)[..., 0]
    return [value[keep]]


def _input_dtypes(model: onnx.ModelProto) -> dict[str, type]:
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in initializers:
            continue
        out[v.name] = np.int32 if v.type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
    return out


def _probe_feeds(encoded: Encoded, input_dtypes: Mapping[str, type], batch: int, seq: int) -> dict[str, np.ndarray]:
    ids = encoded.input_ids
    tokens = np.resize(ids if ids.size else np.array([encoded.pad_id]), batch * seq).reshape(batch, seq)
    arrays = {"input_ids": tokens.astype(np.int64), "attention_mask": np.ones((batch, seq), np.int64),
              "token_type_ids": np.zeros((batch, seq), np.int64)}
    missing = set(input_dtypes) - set(arrays)
    if missing:
        raise InputError(f"cannot feed model inputs {sorted(missing)} from tokenized text")
    return {k: arrays[k].astype(dt) for k, dt in input_dtypes.items()}


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every tensor whose type shape inference can tell (best effort)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - onnx raises several types; unknown types are exposed as float
        inferred = model
    return {v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)
            if v.type.tensor_type.elem_type}


def _exposing_session(onnx_path: Path, graph: onnx.ModelProto, names: Sequence[str], cfg: StatsConfig):
    """An ORT session of the model with ``names`` as extra graph outputs. The weights are not
    re-serialized unless they live in external files (then the model is loaded and re-serialized)."""
    from calib.engines.ort import OrtSessionLoader, expose_outputs, exposed_model_bytes

    spinning = False if cfg.overlap else None  # idle ORT threads must not busy-wait on the accumulators' cores
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    if external:
        model: onnx.ModelProto | bytes = expose_outputs(read_onnx(onnx_path), names)
    else:
        model = exposed_model_bytes(onnx_path, names, elem_types=_tensor_types(graph),
                                    known=[o.name for o in graph.graph.output])
    return OrtSessionLoader(model, threads=cfg.threads, optimization=cfg.optimization, spinning=spinning)()


def _balanced_parts(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``parts`` groups of similar total size (largest first, greedy)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        k = totals.index(min(totals))
        groups[k].append(i)
        totals[k] += sizes[i]
    return [g for g in groups if g]


def _run_batches(session, names: Sequence[str], batches: Iterator[Batch],
                 work: Callable[[list[np.ndarray], Batch, Sequence[int]], None], *, workers: int,
                 after: Callable[[Batch], None], overlap_max_bytes: float = np.inf) -> None:
    """Run every batch and hand its outputs to ``work(arrays, batch, tensor_indices)``.

    ``workers`` 1: everything in the calling thread. Otherwise, a batch whose outputs take at most
    ``overlap_max_bytes`` is accumulated by one background thread while ORT (which releases the GIL)
    runs the next batch (two batches of activations alive); a larger one is accumulated before the
    next run, its tensors split over ``workers`` threads (one batch alive). Outputs are numpy views of
    ORT's own buffers (no copy)."""
    from onnxruntime import OrtValue

    everything = range(len(names))

    def run(batch: Batch) -> tuple[list, list[np.ndarray]]:
        feeds = {k: OrtValue.ortvalue_from_numpy(v) for k, v in batch.feeds.items()}
        values = session.run_with_ort_values(list(names), feeds)
        return values, [v.numpy() for v in values]  # the OrtValues own the memory: keep them alive

    if workers < 2:
        for batch in batches:
            _, arrays = run(batch)
            work(arrays, batch, everything)
            del arrays, _
            after(batch)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calib-stats") as pool:
        pending: Future | None = None
        pending_batch: Batch | None = None
        for batch in batches:
            values, arrays = run(batch)
            if pending is not None:
                pending.result()  # re-raises the worker's error
                after(pending_batch)
                pending = None
            sizes = [a.nbytes for a in arrays]
            if sum(sizes) > overlap_max_bytes:
                jobs = [pool.submit(work, arrays, batch, part) for part in _balanced_parts(sizes, workers)]
                for job in jobs:
                    job.result()
                after(batch)
            else:
                pending = pool.submit(lambda a=arrays, v=values, b=batch: work(a, b, everything))
                pending_batch = batch
            del values, arrays
        if pending is not None:
            pending.result()
            after(pending_batch)


def collect_statistics(
    model: str | Path | ModelSpec,
    encoded: Encoded,
    tensors: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    bins: int | None = None,
    histogram: str = "stream",
    config: StatsConfig | None = None,
    order: str = "length",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ActivationStats:
    """Run ``encoded`` through the FP32 model in length-bucketed batches and accumulate statistics.

    ``tensors`` None takes ``config.tensors`` (default: placement activations + float outputs).
    ``config`` (if given) supplies batch size, histogram mode, bins, optimisation, threads and overlap.
    """
    cfg = config or StatsConfig(batch_size=batch_size, histogram=histogram, bins=bins)
    if cfg.histogram not in HISTOGRAM_MODES:
        raise InputError(f"unknown histogram mode {cfg.histogram!r} (choose {' or '.join(HISTOGRAM_MODES)})")
    nbins = int(cfg.bins or DEFAULT_BINS[cfg.histogram])
    if nbins < 256 or nbins & (nbins - 1):
        raise InputError(f"histogram bins must be a power of two >= 256, got {nbins}")
    if cfg.batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {cfg.batch_size}")
    if len(encoded) == 0:
        raise InputError("the calibration set is empty: no texts to run")
    onnx_path = Path(model.onnx_path if isinstance(model, ModelSpec) else model)
    t0 = time.perf_counter()
    graph = weightless(read_onnx(onnx_path, load_weights=False))  # the weights are only needed by ORT
    sha = model.sha256 if isinstance(model, ModelSpec) else sha256_file(onnx_path)
    input_dtypes = model.input_dtypes if isinstance(model, ModelSpec) else _input_dtypes(graph)
    producers = graph_producers(graph)
    if tensors is None:
        tensors = cfg.tensors if not isinstance(cfg.tensors, str) else default_tensors(graph, cfg.tensors, cfg.placement)
    names = list(dict.fromkeys(tensors))
    unknown = [n for n in names if n not in producers]
    if unknown:
        raise InputError(f"tensor {unknown[0]!r} is not produced by any node or input of model {onnx_path.name}")
    names.sort(key=lambda n: producers[n][2])
    if not names:
        raise InputError(f"no tensors to collect statistics for in model {onnx_path.name}")

    session = _exposing_session(onnx_path, graph, names, cfg)
    float_out = {o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(float16)")}
    skipped = {n: "not a float tensor" for n in names if n not in float_out}
    names = [n for n in names if n in float_out]
    if not names:
        raise InputError(f"none of the requested tensors of model {onnx_path.name} is a float tensor")

    try:
        probes = [session.run(names, _probe_feeds(encoded, input_dtypes, b, t)) for b, t in PROBE_SHAPES]
    except InputError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"model {onnx_path.name} does not run on dynamic (batch, sequence) feeds: {first}") from exc
    roles = {n: classify_axes(a.shape, b.shape) for n, a, b in zip(names, *probes)}
    layouts = {n: _layout(roles[n]) for n in names}
    if cfg.sample_rows < 0:
        raise InputError(f"sample rows must be >= 0, got {cfg.sample_rows}")
    weighted = weighted_matmuls(graph) if cfg.channel_stats else {}
    channel_sizes = {n: probes[1][i].shape[-1] for i, n in enumerate(names)
                     if n in weighted and roles[n] and roles[n][-1] == "fixed"}
    chans = {n: _ChannelAccumulator(k, cfg.sample_rows, seed=zlib.crc32(n.encode()) + seed, top_cap=cfg.outlier_rows)
             for n, k in channel_sizes.items()}
    del probes

    passes = ["range", "histogram"] if cfg.histogram == "two-pass" else ["stream"]
    total_batches = -(-len(encoded) // cfg.batch_size) * len(passes)
    accs = {n: _Accumulator(nbins) for n in names}
    local = threading.local()  # one _Scratch per accumulating thread
    workers = (cfg.threads or default_threads()) if cfg.overlap else 1
    seen = {"done": 0, "tokens": 0, "batches": 0}
    for pass_name in passes:
        if pass_name == "histogram":
            first = accs
            accs = {n: _Accumulator(nbins, fixed_range=acc_range(a)) for n, a in first.items()}
            for n, acc in accs.items():  # non-finite values were counted in the range pass
                acc.nan, acc.posinf, acc.neginf = first[n].nan, first[n].posinf, first[n].neginf
        hist, count = pass_name != "range", pass_name != "histogram"

        def work(arrays: list[np.ndarray], batch: Batch, indices: Sequence[int], accs=accs, hist=hist,
                 count=count) -> None:
            scratch = getattr(local, "scratch", None) or _Scratch()
            local.scratch = scratch
            rows = _Rows(batch.mask)
            for i in indices:
                name, value = names[i], arrays[i]
                if value.dtype != np.float32:
                    value = value.astype(np.float32)
                real, padded = _split_positions(name, value, roles[name], layouts[name], rows)
                if count and padded:
                    accs[name].check_padding(padded, value if rows.mostly_padding else None)
                accs[name].add_views(real, scratch, hist=hist, count=count)
                if hist and name in chans:
                    for block in _channel_rows(value, real, roles[name], rows):
                        chans[name].add(block)

        def after(batch: Batch, pass_name=pass_name) -> None:
            if pass_name != "range":
                seen["tokens"] += int(batch.mask.sum())
                seen["batches"] += 1
            seen["done"] += 1
            if progress is not None:
                progress(seen["done"] / total_batches, f"{pass_name} pass: batch {seen['done']}/{total_batches}")

        batches = iter_batches(encoded, input_dtypes, cfg.batch_size, order=order, seed=seed,
                               pad_multiple=cfg.pad_multiple)
        _run_batches(session, names, batches, work, workers=workers, after=after,
                     overlap_max_bytes=cfg.overlap_max_mb * 2**20)
    seconds = time.perf_counter() - t0
    results = tuple(accs[n].result(n, producers[n][0], producers[n][1], roles[n],
                                   chans[n].result() if n in chans else None) for n in names)
    return ActivationStats(model_sha256=sha, tensors=results, bins=nbins, histogram=cfg.histogram, texts=len(encoded),
                           tokens=seen["tokens"], batches=seen["batches"], seconds=seconds, skipped=skipped,
                           has_channels=cfg.channel_stats)


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
