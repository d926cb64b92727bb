"""Per-layer view of an INT8 model against its FP32 baseline: activation ranges and error.

Two questions, answered tensor by tensor and ordered through the network so the first layer that
goes wrong stands out:

- **Ranges**: for every calibrated activation, the calibrated amax of each method next to the FP32
  absmax and p99.99 observed on the evaluation texts, the saturation rate (share of |x| above amax)
  and the range utilisation (p99.99 / amax, capped at 1: how much of the INT8 grid the bulk of the
  values use).
- **Error**: for every quantized activation, SQNR (dB) and cosine between the FP32 tensor and what
  the INT8 model's consumers see (the DequantizeLinear output), i.e. the error accumulated up to and
  including this tensor; plus the *local* SQNR of the Q/DQ pair alone (DequantizeLinear output vs
  its QuantizeLinear input inside the INT8 model), which isolates the error this tensor adds.

Everything is accumulated in running sums and fixed log-spaced histograms (order-independent, never
all activations in memory). Padded token positions are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

# |x| histogram: log10 bins from 1e-12 to 1e8, 200 bins per decade (≈1.2 % relative resolution)
_LOG_LOW, _LOG_HIGH, _PER_DECADE = -12.0, 8.0, 200
_N_BINS = int((_LOG_HIGH - _LOG_LOW) * _PER_DECADE)
ENGINE_RANGE = "engine"  # the per-tensor ranges' key for the amax the INT8 engine uses (beside each calibrator's)
DEGRADED_SQNR_DB = 20.0  # below this an activation has lost more than 1 % of its signal power
DEGRADED_COSINE = 0.99
MAX_SQNR_DB = 200.0  # reported for an exact match (zero error), so JSON never holds infinity


@dataclass(frozen=True)
class LayerTensor:
    """One tensor of a saved per-layer analysis, in network order (``order``: its producer's node index).

    Error (quantized tensors only; None when not measured): ``sqnr_db`` and ``cosine`` of what INT8
    consumers see against FP32, ``local_sqnr_db`` of its Q/DQ pair alone. Ranges (calibrated tensors):
    ``fp32_absmax`` / ``fp32_p9999`` seen on the evaluation texts and, per calibrator (and
    :data:`ENGINE_RANGE`, what the engine uses), ``amax``, ``saturation_rate`` and ``utilisation``.
    """

    tensor: str
    order: int
    quantized: bool = False
    producer: str = ""
    sqnr_db: float | None = None
    cosine: float | None = None
    local_sqnr_db: float | None = None
    max_abs_error: float | None = None
    nonfinite: int = 0
    fp32_absmax: float | None = None
    fp32_p9999: float | None = None
    amax: Mapping[str, float | None] = field(default_factory=dict)
    saturation_rate: Mapping[str, float | None] = field(default_factory=dict)
    utilisation: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Mapping) -> LayerTensor:
        """From one ``layers.json`` tensor row (keys a row leaves out: not measured)."""
        ranges = row.get("ranges") or {}
        methods = ranges.get("methods") or {}
        return cls(tensor=row["tensor"], order=int(row["order"]), quantized=bool(row.get("quantized", False)),
                   producer=row.get("producer", ""), sqnr_db=row.get("sqnr_db"), cosine=row.get("cosine"),
                   local_sqnr_db=row.get("local_sqnr_db"), max_abs_error=row.get("max_abs_error"),
                   nonfinite=int(row.get("nonfinite") or 0), fp32_absmax=ranges.get("fp32_absmax"),
                   fp32_p9999=ranges.get("fp32_p9999"),
                   amax={m: v.get("amax") for m, v in methods.items()},
                   saturation_rate={m: v.get("saturation_rate") for m, v in methods.items()},
                   utilisation={m: v.get("utilisation") for m, v in methods.items()})

    def row(self) -> dict:
        """The report's row of this tensor: error, FP32 range and, per calibrator, amax / clipped / utilisation."""
        return {"tensor": self.tensor, "order": self.order, "quantized": self.quantized, "sqnr_db": self.sqnr_db,
                "cosine": self.cosine, "local_sqnr_db": self.local_sqnr_db, "fp32_absmax": self.fp32_absmax,
                "fp32_p9999": self.fp32_p9999, "amax": dict(self.amax), "saturation_rate": dict(self.saturation_rate),
                "utilisation": dict(self.utilisation)}


@dataclass(frozen=True)
class LayerReport:
    """A saved per-layer analysis (``layers.json``): ``record`` as written by :class:`LayerAnalysis`."""

    record: Mapping

    @property
    def tensors(self) -> list[LayerTensor]:
        """Every analysed tensor in network order."""
        return [LayerTensor.of(t) for t in self.record.get("tensors") or ()]

    @property
    def quantized(self) -> list[LayerTensor]:
        """The tensors with a Q/DQ pair, in network order."""
        return [t for t in self.tensors if t.quantized]

    @property
    def first_degraded(self) -> str | None:
        """The first quantized tensor in network order below the SQNR or cosine threshold (None: none)."""
        return self.record.get("first_degraded")

    @property
    def degraded_sqnr_db(self) -> float:
        return float(self.record.get("degraded_sqnr_db", DEGRADED_SQNR_DB))

    @property
    def degraded_cosine(self) -> float:
        return float(self.record.get("degraded_cosine", DEGRADED_COSINE))

    @property
    def rows(self) -> int:
        """Texts the analysis ran on."""
        return int(self.record.get("rows", 0))


@dataclass(frozen=True)
class QuantizedTensor:
    """An activation with a Q/DQ pair in the INT8 graph.

    ``name`` is the FP32 tensor (the QuantizeLinear input), ``dequantized`` what consumers see.
    ``amax`` = scale × 127 (or × 255 / 2 for an asymmetric uint8 pair) as stored in the graph.
    """

    name: str
    dequantized: str
    amax: float
    order: int  # position of the producing node in the FP32 graph (-1 for graph inputs)
    producer: str  # name of the FP32 node producing it ("" for graph inputs)
    consumers: tuple[str, ...]  # INT8-graph nodes reading the dequantized tensor


def _initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(attr.t)
    return values


def producer_order(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """For every tensor of a (topologically sorted) graph: (index of its producing node, node name)."""
    order: dict[str, tuple[int, str]] = {i.name: (-1, "") for i in model.graph.input}
    for index, node in enumerate(model.graph.node):
        for out in node.output:
            order[out] = (index, node.name)
    return order


def quantized_tensors(qdq_model: onnx.ModelProto, fp32_model: onnx.ModelProto) -> list[QuantizedTensor]:
    """The activations quantized in ``qdq_model`` that exist in ``fp32_model``, in network order.

    Weights (QuantizeLinear on an initializer) are left out: their error shows in the activations
    downstream. A tensor quantized once per consumer gets one entry (the pairs are identical).
    """
    consts = _initializer_values(qdq_model)
    fp32_order = producer_order(fp32_model)
    consumers: dict[str, list[str]] = {}
    dq_of: dict[str, onnx.NodeProto] = {}
    for node in qdq_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
        if node.op_type == "DequantizeLinear":
            dq_of[node.input[0]] = node
    found: dict[str, QuantizedTensor] = {}
    for node in qdq_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts or node.input[0] in found:
            continue
        source = node.input[0]
        dq = dq_of.get(node.output[0])
        if dq is None or source not in fp32_order:
            continue
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or np.size(scale) != 1:
            continue
        levels = 127.5 if zero is not None and zero.dtype == np.uint8 else 127.0
        amax = float(np.asarray(scale, dtype=np.float64).ravel()[0] * levels)
        users = tuple(c for c in consumers.get(dq.output[0], []))
        index, producer = fp32_order[source]
        found[source] = QuantizedTensor(source, dq.output[0], amax, index, producer, users)
    return sorted(found.values(), key=lambda t: (t.order, t.name))


def valid_values(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The entries of an activation that belong to real tokens, flattened (float64 not forced).

    ``mask`` is (B, T) bool. Layouts recognised: (B, T, ...), attention maps (B, H, T, T) (both
    token axes masked), per-head (B, H, T, D) and transposed keys (B, H, D, T). Anything else
    (pooled (B, D) tensors, broadcast masks) is taken whole.
    """
    b, t = mask.shape
    if x.ndim >= 2 and x.shape[0] == b and x.shape[1] == t:
        return x[mask].ravel()
    if x.ndim == 4 and x.shape[0] == b:
        if x.shape[2] == t and x.shape[3] == t:
            keep = mask[:, None, :, None] & mask[:, None, None, :]
        elif x.shape[2] == t:
            keep = mask[:, None, :, None]
        elif x.shape[3] == t:
            keep = mask[:, None, None, :]
        else:
            return x.ravel()
        return x[np.broadcast_to(keep, x.shape)]
    return x.ravel()


class _AbsHistogram:
    """Counts of |x| in fixed log-spaced bins, plus zeros and non-finite values."""

    def __init__(self) -> None:
        self.counts = np.zeros(_N_BINS, dtype=np.int64)
        self.zeros = 0
        self.total = 0  # finite values

    def add(self, a: np.ndarray) -> None:
        nonzero = a[a > 0]
        self.zeros += int(a.size - nonzero.size)
        self.total += int(a.size)
        if nonzero.size:
            idx = np.floor((np.log10(nonzero) - _LOG_LOW) * _PER_DECADE).astype(np.int64)
            np.clip(idx, 0, _N_BINS - 1, out=idx)
            self.counts += np.bincount(idx, minlength=_N_BINS)

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding the q-quantile of |x| (0 if the mass is at zero)."""
        if self.total == 0:
            return float("nan")
        rank = q * self.total
        if rank <= self.zeros:
            return 0.0
        cum = self.zeros + np.cumsum(self.counts)
        b = int(np.searchsorted(cum, rank, side="left"))
        return float(10 ** (_LOG_LOW + (min(b, _N_BINS - 1) + 1) / _PER_DECADE))


class _RangeStats:
    def __init__(self, amax: Mapping[str, float]) -> None:
        self.hist = _AbsHistogram()
        self.absmax = 0.0
        self.nonfinite = 0
        self.amax = dict(amax)  # method -> amax
        self.saturated = {m: 0 for m in amax}

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        a = np.abs(values[finite]) if not finite.all() else np.abs(values)
        self.nonfinite += int(values.size - a.size)
        if a.size:
            self.absmax = max(self.absmax, float(a.max()))
            self.hist.add(a)
            for method, amax in self.amax.items():
                if amax is not None and np.isfinite(amax):
                    self.saturated[method] += int(np.count_nonzero(a > amax))

    def result(self) -> dict:
        p9999 = self.hist.quantile(0.9999)
        methods = {}
        for method, amax in self.amax.items():
            ok = amax is not None and np.isfinite(amax) and amax > 0
            methods[method] = {
                "amax": amax,
                "saturation_rate": (self.saturated[method] / self.hist.total) if ok and self.hist.total else None,
                "utilisation": min(1.0, p9999 / amax) if ok and np.isfinite(p9999) else None,
            }
        return {"count": self.hist.total, "nonfinite": self.nonfinite, "fp32_absmax": self.absmax,
                "fp32_p9999": p9999, "methods": methods}


class _ErrorStats:
    """Running sums for SQNR and cosine between a reference and a test tensor."""

    def __init__(self) -> None:
        self.sx2 = self.sy2 = self.sxy = self.se2 = 0.0
        self.count = 0
        self.nonfinite = 0
        self.max_abs_error = 0.0

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        x = ref.astype(np.float64, copy=False)
        y = test.astype(np.float64, copy=False)
        finite = np.isfinite(x) & np.isfinite(y)
        if not finite.all():
            self.nonfinite += int(finite.size - np.count_nonzero(finite))
            x, y = x[finite], y[finite]
        if not x.size:
            return
        e = x - y
        self.sx2 += float(x @ x)
        self.sy2 += float(y @ y)
        self.sxy += float(x @ y)
        self.se2 += float(e @ e)
        self.max_abs_error = max(self.max_abs_error, float(np.abs(e).max()))
        self.count += int(x.size)

    @property
    def sqnr_db(self) -> float | None:
        if self.count == 0 or self.sx2 == 0:
            return None
        if self.se2 <= self.sx2 * 10 ** (-MAX_SQNR_DB / 10):
            return MAX_SQNR_DB
        return float(10.0 * np.log10(self.sx2 / self.se2))

    @property
    def cosine(self) -> float | None:
        if self.count == 0 or self.sx2 == 0 or self.sy2 == 0:
            return None
        return float(self.sxy / np.sqrt(self.sx2 * self.sy2))


class LayerAnalysis:
    """Accumulates per-tensor range and error statistics over batches.

    ``ranged``: FP32 tensors to take range statistics of, each with ``{method: amax}``.
    ``quantized``: the Q/DQ pairs of the INT8 model (from :func:`quantized_tensors`).
    Feed each batch's FP32 outputs (``fp32_names``) and INT8 outputs (``int8_names``) to :meth:`add`.
    """

    def __init__(self, ranged: Mapping[str, Mapping[str, float]], quantized: Sequence[QuantizedTensor],
                 order: Mapping[str, tuple[int, str]]) -> None:
        self.quantized = list(quantized)
        self.order = dict(order)
        self.ranges = {name: _RangeStats(amax) for name, amax in ranged.items()}
        for q in self.quantized:  # the amax the engine actually uses, next to the calibrated ones
            stats = self.ranges.setdefault(q.name, _RangeStats({}))
            stats.amax[ENGINE_RANGE] = q.amax
            stats.saturated.setdefault(ENGINE_RANGE, 0)
        self.errors = {q.name: _ErrorStats() for q in self.quantized}
        self.local = {q.name: _ErrorStats() for q in self.quantized}
        self.batches = 0

    @property
    def fp32_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.ranges, *(q.name for q in self.quantized)]))

    @property
    def int8_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for q in self.quantized for n in (q.name, q.dequantized)))

    def add(self, fp32: Mapping[str, np.ndarray], int8: Mapping[str, np.ndarray], mask: np.ndarray) -> None:
        for name, stats in self.ranges.items():
            if name in fp32:
                stats.add(valid_values(fp32[name], mask))
        for q in self.quantized:
            if q.name in fp32 and q.dequantized in int8:
                deq = valid_values(int8[q.dequantized], mask)
                self.errors[q.name].add(valid_values(fp32[q.name], mask), deq)
                if q.name in int8:
                    self.local[q.name].add(valid_values(int8[q.name], mask), deq)
        self.batches += 1

    def result(self) -> dict:
        """``{"tensors": [...] in network order, "first_degraded": name | None, ...}``."""
        quantized = {q.name: q for q in self.quantized}
        rows = []
        for name in sorted(self.fp32_names, key=lambda n: (self.order.get(n, (1 << 30, ""))[0], n)):
            index, producer = self.order.get(name, (-1, ""))
            row: dict = {"tensor": name, "order": index, "producer": producer}
            if name in self.ranges:
                row["ranges"] = self.ranges[name].result()
            q = quantized.get(name)
            if q is not None:
                err, local = self.errors[name], self.local[name]
                row.update({
                    "quantized": True, "dequantized": q.dequantized, "engine_amax": q.amax,
                    "consumers": list(q.consumers), "sqnr_db": err.sqnr_db, "cosine": err.cosine,
                    "max_abs_error": err.max_abs_error, "nonfinite": err.nonfinite,
                    "local_sqnr_db": local.sqnr_db,
                })
            else:
                row["quantized"] = False
            rows.append(row)
        first = next((r["tensor"] for r in rows if r.get("quantized") and _degraded(r)), None)
        return {"batches": self.batches, "degraded_sqnr_db": DEGRADED_SQNR_DB, "degraded_cosine": DEGRADED_COSINE,
                "first_degraded": first, "tensors": rows}


def _degraded(row: Mapping) -> bool:
    sqnr, cos = row.get("sqnr_db"), row.get("cosine")
    return (sqnr is not None and sqnr < DEGRADED_SQNR_DB) or (cos is not None and cos < DEGRADED_COSINE) \
        or (row.get("nonfinite", 0) > 0)
