"""Outlier migration (SmoothQuant-style) as an ONNX rewrite before Q/DQ.

Per-tensor INT8 activations lose most of their resolution to a few outlier channels (BERT's
LayerNorm outputs and the GELU output feeding the FFN down-projection). For a weighted MatMul
``Y = X @ W`` (X: (..., K), W: (K, N)) and per-channel scales ``s`` (K,)::

    Y = (X / s) @ (s[:, None] * W)          exactly, in real arithmetic

so dividing X's channels by ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``max|W_j|`` over row j
of every weight reading X) flattens the activation's channels and moves the outliers into the
weights, which are quantized per output channel and absorb them far better.

The rewrite inserts one explicit per-channel ``Mul(X, 1/s)`` per migrated tensor, read by all its
weighted MatMuls (output ``<X>::smooth``), and scales those MatMuls' weight rows by ``s``. Every other
reader of X (BERT is post-LN: the LayerNorm output also feeds the next residual Add) still reads
the original X, so the FP32 function is unchanged (up to float rounding; :func:`max_output_delta`
measures it). Standard ONNX ops only; TensorRT fuses the pointwise Mul. Folding ``1/s`` into the
LayerNorm's gamma/beta instead would need a compensating ``Mul(s)`` on the residual branch, so it
saves nothing here; a GELU output has no linear producer to fold into at all.

Which tensors: every activation read as X by a weighted MatMul (:func:`calib.placement.weighted_matmuls`)
whose per-channel statistics exist: in BERT the LayerNorm outputs (Q/K/V projections, FFN
up-projection), the GELU outputs (FFN down-projection), the attention context (attention output
projection) and the pooled embedding (a classifier head).

``alpha``: one value in (0, 1) for every tensor, or ``"auto"``: per tensor, the alpha of
:data:`AUTO_ALPHAS` (or no migration at all) whose simulated INT8 MatMul output is closest to FP32
on the calibration sample of X (256 sampled plus the 64 outlier token vectors of
:class:`calib.stats.ChannelStats`, weighted to stand for the whole set): activations quantized per
tensor with the chosen calibrator's amax (MSE's for ``auto`` ranges, which are chosen afterwards on
the rewritten model), weights per output channel, error = ||Y_int8 - Y||^2 / ||Y||^2.

The per-tensor range of ``<X>::smooth`` must describe the migrated values, not X: the build stage
re-runs the statistics pass for the migrated tensors on the rewritten model (``calib.build``); for
minmax that equals ``max_j absmax_j / s_j`` from the per-channel statistics (tested).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from calib.batching import iter_batches
from calib.calibrate import Calibration
from calib.calibset import CalibrationSet
from calib.engines.ort import OrtSessionLoader
from calib.errors import InputError
from calib.fakequant import fake_quant_activation, output_error
from calib.io import atomic_path, sha256_file
from calib.methods import compute_ranges, get_method, method_names
from calib.model import read_onnx
from calib.placement import WeightedMatMul, weighted_matmuls
from calib.ranges import Ranges
from calib.stats import (
    ActivationStats,
    ChannelStats,
    StatsConfig,
    collect_statistics,
    tensor_stats_from_arrays,
)

SUFFIX = "::smooth"
SCALE_SUFFIX = "::smooth_inv_scale"
AUTO_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SMOOTH_CHOICES = ("off", "auto", "0.5", "0.8", "0.9")
"""What a menu offers for ``alpha`` (:func:`parse_alpha` reads each): no migration, per-tensor auto,
and the common fixed values (0.5: SmoothQuant's default; 0.8-0.9: stronger migration for outliers)."""
AUTO_ROWS = 256  # sampled token vectors per tensor used to score each alpha (the sample is in random order)
_SCALE_CLIP = (1e-4, 1e4)  # keeps 1/s and s*W finite and representable in float32


def parse_alpha(value: object) -> float | str | None:
    """``None``/``""``/``"off"`` -> None (no migration); ``"auto"``; or a float strictly in (0, 1)."""
    if value is None or value == "" or value == "off":
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        alpha = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"smoothing alpha must be a number in (0, 1) or 'auto', got {value!r}") from None
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise InputError(f"smoothing alpha must be strictly between 0 and 1 (or 'auto'), got {value}")
    return alpha


@dataclass(frozen=True)
class MigratedTensor:
    """One migrated activation: ``tensor`` -> ``smoothed`` (= tensor / scales) read by ``nodes``."""

    tensor: str
    smoothed: str
    nodes: tuple[str, ...]
    alpha: float | None  # None: auto chose not to migrate (then nothing is inserted)
    channels: int
    absmax_before: float  # max |X| over the calibration set
    absmax_after: float  # max_j absmax_j / s_j: the migrated tensor's max |X / s|
    error_before: float | None = None  # relative INT8 output error without / with migration (auto only)
    error_after: float | None = None
    via: str = "mul"  # "mul": an explicit Mul(X, 1/s); "fold": 1/s folded into the attention's V projection


@dataclass(frozen=True)
class MigrationPlan:
    """Per-channel scales for each migrated tensor (``scales[tensor]``: (K,) float64)."""

    alpha: float | str
    tensors: tuple[MigratedTensor, ...]
    scales: Mapping[str, np.ndarray] = field(default_factory=dict)
    not_migrated: Mapping[str, str] = field(default_factory=dict)  # tensor -> why
    attention: tuple[AttentionFold, ...] = ()  # per-channel scales folded into attention's projections
    attention_scales: Mapping[str, np.ndarray] = field(default_factory=dict)  # attention MatMul -> (N,)

    @property
    def migrated(self) -> tuple[MigratedTensor, ...]:
        return tuple(t for t in self.tensors if t.alpha is not None)

    @property
    def changed_tensors(self) -> tuple[str, ...]:
        """Tensors of the original graph whose values the attention folds rescale (ranges to recompute)."""
        return tuple(dict.fromkeys(name for fold in self.attention for name in fold.changed))

    def without_attention(self) -> MigrationPlan:
        """The same migration with every tensor migrated through an explicit Mul and no attention fold."""
        tensors = tuple(dataclasses.replace(t, via="mul", smoothed=t.tensor + SUFFIX) if t.via == "fold" else t
                        for t in self.tensors)
        return dataclasses.replace(self, tensors=tensors, attention=(), attention_scales={})


def smoothing_scales(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = a_j^alpha / w_j^(1-alpha)`` (K,), 1 where a channel is all zero (nothing to balance)."""
    a = np.asarray(act_absmax, np.float64)
    w = np.asarray(weight_absmax, np.float64)
    ok = (a > 0) & (w > 0) & np.isfinite(a) & np.isfinite(w)
    s = np.ones_like(a)
    s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, *_SCALE_CLIP)


def _weight_rows(weight: np.ndarray, transposed: bool) -> np.ndarray:
    """W as (K, N) whatever its storage."""
    return weight.T if transposed else weight


def _sample_amax(values: np.ndarray, exact_absmax: float, method: str, params: Mapping[str, Any]) -> float:
    """The calibrator's amax for ``values`` (capped at the exact absmax over the calibration set; a
    calibrator whose amax is the absmax gets that exact value, not the sample's)."""
    calibrator = get_method(method)
    if calibrator.is_absmax:
        return exact_absmax
    stats = tensor_stats_from_arrays("sample", values)
    try:
        amax = float(calibrator.amax(stats, **calibrator.params(params)))
    except InputError:
        amax = stats.absmax
    return min(amax, exact_absmax) if amax > 0 else exact_absmax


def plan_migration(model: onnx.ModelProto, stats: ActivationStats, alpha: float | str, *,
                   method: str = "minmax", method_params: Mapping[str, Any] | None = None,
                   alphas: Sequence[float] = AUTO_ALPHAS, tensors: Sequence[str] | None = None,
                   attention: bool = False,
                   recompute: str = "calib calibrate --calibration-set <calibration set>") -> MigrationPlan:
    """Choose the per-channel scales of every migratable tensor of ``model`` (weights loaded).

    ``stats``: the calibration statistics of this model (per-channel statistics required);
    ``method``/``method_params``: the calibrator whose per-tensor amax auto-alpha simulates;
    ``tensors``: restrict to these activations; ``attention``: also fold per-channel scales into
    attention's projections (:func:`plan_attention`: Q/K equalization, the context's migration through V).
    Raises InputError when per-channel statistics are missing (naming ``recompute``)."""
    alpha = parse_alpha(alpha)
    if alpha is None:
        raise InputError("no smoothing alpha given (a number in (0, 1) or 'auto')")
    params = dict(method_params or {})
    get_method(method).params(params)  # validates before any work
    if not stats.has_channels:
        stats.channels("", recompute=recompute)  # raises the one-line "recompute" error
    inits = {t.name: t for t in model.graph.initializer}
    readers = weighted_matmuls(model)
    planned: list[MigratedTensor] = []
    scales: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    wanted = set(tensors) if tensors is not None else None
    for tensor, mms in readers.items():
        if wanted is not None and tensor not in wanted:
            continue
        if tensor not in stats.names:
            skipped[tensor] = "no statistics for this tensor in the calibration run"
            continue
        ch = stats[tensor].channels
        if ch is None:
            skipped[tensor] = "no per-channel statistics (its last axis is not a fixed channel axis)"
            continue
        weights = [_weight_rows(numpy_helper.to_array(inits[m.weight]).astype(np.float64), m.transposed) for m in mms]
        if any(w.shape[0] != ch.size for w in weights):
            skipped[tensor] = f"weight rows do not match the tensor's {ch.size} channels"
            continue
        w_all = np.concatenate(weights, axis=1)  # (K, N_total): every reader of X at once
        w_absmax = np.abs(w_all).max(axis=1)
        nodes = tuple(m.node for m in mms)
        before = float(ch.absmax.max()) if ch.size else 0.0
        if alpha == "auto":
            chosen, err0, err1 = _choose_alpha(ch, w_all, w_absmax, alphas, method, params)
        else:
            chosen, err0, err1 = float(alpha), None, None
        if chosen is None:
            planned.append(MigratedTensor(tensor, tensor, nodes, None, ch.size, before, before, err0, err1))
            skipped[tensor] = "auto: migration did not lower the simulated INT8 error"
            continue
        s = smoothing_scales(ch.absmax, w_absmax, chosen)
        scales[tensor] = s
        after = float((ch.absmax / s).max()) if ch.size else 0.0
        planned.append(MigratedTensor(tensor, tensor + SUFFIX, nodes, chosen, ch.size, before, after, err0, err1))
    plan = MigrationPlan(alpha=alpha, tensors=tuple(planned), scales=scales, not_migrated=skipped)
    if not attention:
        return plan
    folds, fold_scales = plan_attention(model, stats, plan, method=method, method_params=params)
    via_v = {f.context for f in folds if f.kind == "pv"}
    return dataclasses.replace(
        plan, attention=tuple(folds), attention_scales=fold_scales,
        tensors=tuple(dataclasses.replace(t, via="fold", smoothed=t.tensor) if t.tensor in via_v and t.alpha is not None
                      else t for t in plan.tensors))


def _choose_alpha(ch: ChannelStats, w_all: np.ndarray, w_absmax: np.ndarray, alphas: Sequence[float],
                  method: str, params: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(best alpha or None for "leave as is", error without migration, error of the choice), on the
    sampled token vectors plus the outlier tokens (:meth:`ChannelStats.weighted_rows`)."""
    x, row_weights = ch.weighted_rows(AUTO_ROWS)
    if not len(x):
        raise InputError("auto alpha needs the per-channel row sample (StatsConfig.sample_rows > 0)")
    x = x.astype(np.float32)  # float32 GEMMs: the error is a ratio, float32 resolves it
    w_all = w_all.astype(np.float32)
    reference = x @ w_all
    exact = float(ch.absmax.max())
    # a whole-set method (auto) is simulated by MSE; its own choice is made on the rewritten model later
    proxy = "mse" if method not in method_names() or get_method(method).amax is None else method
    proxy_params = params if proxy == method else {}
    base = output_error(x, w_all, _sample_amax(x, exact, proxy, proxy_params), reference=reference,
                        row_weights=row_weights)
    best, best_err = None, base
    for a in alphas:
        s = smoothing_scales(ch.absmax, w_absmax, a).astype(np.float32)
        xs = x / s
        amax = _sample_amax(xs, float((ch.absmax / s).max()), proxy, proxy_params)
        err = output_error(xs, w_all * s[:, None], amax, reference=reference, row_weights=row_weights)
        if err < best_err:
            best, best_err = float(a), err
    return best, base, best_err


def apply_migration(model: onnx.ModelProto, plan: MigrationPlan) -> onnx.ModelProto:
    """A copy of ``model`` with each planned tensor divided by its scales (one ``Mul`` before its
    weighted MatMuls) and those MatMuls' weight rows multiplied by them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    by_node = {n.name: n for n in graph.node}
    readers = weighted_matmuls(out)
    inserts: dict[str, onnx.NodeProto] = {}
    for t in plan.migrated:
        s = plan.scales[t.tensor]
        if t.via == "mul":
            scale_name = t.tensor + SCALE_SUFFIX
            graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale_name))
            inserts[t.tensor] = onnx.helper.make_node("Mul", [t.tensor, scale_name], [t.smoothed],
                                                      name=t.tensor + SUFFIX)
        for mm in readers[t.tensor]:
            if mm.node not in t.nodes:
                continue
            node = by_node[mm.node]
            node.input[0] = t.smoothed
            _scale_weight(graph, inits, uses, node, mm, s)
    for fold in plan.attention:
        s = np.asarray(plan.attention_scales[fold.matmul], np.float64)
        if fold.kind == "qk":
            _scale_columns(graph, inits, uses, by_node, fold.first, 1.0 / s)
            _scale_columns(graph, inits, uses, by_node, fold.second, s)
        else:
            _scale_columns(graph, inits, uses, by_node, fold.second, 1.0 / s)
    if inserts:  # each Mul right after the producer of its input keeps the graph topologically sorted
        ordered: list[onnx.NodeProto] = []
        pending = dict(inserts)
        graph_inputs = [i.name for i in graph.input]
        for name in graph_inputs:
            if name in pending:
                ordered.append(pending.pop(name))
        for node in graph.node:
            ordered.append(node)
            for o in node.output:
                if o in pending:
                    ordered.append(pending.pop(o))
        del graph.node[:]
        graph.node.extend(ordered)
    return out


def _scale_weight(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int],
                  node: onnx.NodeProto, mm: WeightedMatMul, s: np.ndarray) -> None:
    """Multiply the weight rows (input channels) of ``node`` by ``s``; a shared weight gets a copy."""
    tensor = inits[mm.weight]
    w = numpy_helper.to_array(tensor)
    scaled = (w * s[None, :] if mm.transposed else w * s[:, None]).astype(w.dtype)
    if uses.get(mm.weight, 0) > 1:
        name = f"{mm.weight}{SUFFIX}:{node.name}"
        graph.initializer.append(numpy_helper.from_array(scaled, name))
        node.input[1] = name
        uses[mm.weight] -= 1
    else:
        tensor.CopyFrom(numpy_helper.from_array(scaled, mm.weight))


# --- Attention: exact per-channel rescaling folded into the projection weights (no op added) ---------
#
# The two activation x activation MatMuls of attention read tensors that are linear per channel in a
# projection's output channels: Q and K (scores = Q @ K^T) and V (context = P @ V). Scaling Q's
# channels by 1/s and K's by s leaves every score unchanged; scaling V's channels by 1/s and the rows
# of the weight that reads the context by s leaves the block unchanged. Both fold into the
# projection's weight columns and bias, so the INT8 graph gets no extra op at all.

LAYOUT_OPS = ("Reshape", "Transpose")
QK_EXPONENTS = (0.25, 0.5, 0.75)  # s_c = (max|Q_c| / max|K_c|)^beta; 0.5 equalizes both sides


@dataclass(frozen=True)
class Projection:
    """A weighted MatMul (+ optional constant bias Add, or a Gemm with C) producing ``output``."""

    node: str
    activation: str
    weight: str
    transposed: bool
    bias: str | None  # constant (N,) initializer
    bias_node: str | None  # the Add holding it (None for a Gemm's C or no bias)
    output: str  # the projection's output tensor (after the bias)


@dataclass(frozen=True)
class AttentionFold:
    """One attention MatMul whose inputs get folded per-channel scales.

    ``kind`` "qk": ``first`` is Q's projection (channels / scales), ``second`` K's (channels x scales).
    ``kind`` "pv": ``second`` is V's projection (channels / scales); ``context`` the tensor the block's
    output weight reads (its rows x scales): the migration of ``context`` realised without a Mul.
    ``changed``: every tensor whose values the fold rescales (their ranges must be recomputed)."""

    kind: str
    matmul: str
    first: Projection | None
    second: Projection
    context: str | None
    changed: tuple[str, ...]
    exponent: float | None = None  # qk: the chosen beta (None: left as is)
    error_before: float | None = None
    error_after: float | None = None


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _trace_projection(tensor: str, producers: Mapping[str, onnx.NodeProto], consumers: Mapping[str, list],
                      inits: Mapping[str, onnx.TensorProto], outputs: set[str]) -> tuple[Projection, list[str]] | None:
    """Follow ``tensor`` back through single-consumer Reshape/Transpose nodes to a projection; the
    projection and the tensors on the way (projection output first). None when the chain is anything else."""
    chain = [tensor]

    def back(src: str) -> onnx.NodeProto | None:
        """The producer of ``src`` when ``src`` has this one reader and is no graph output, else None."""
        if len(consumers.get(src, ())) != 1 or src in outputs:
            return None
        chain.append(src)
        return producers.get(src)

    node = producers.get(tensor)
    while node is not None and node.op_type in LAYOUT_OPS:
        node = back(node.input[0])
    if node is None:
        return None
    bias = bias_node = None
    if node.op_type == "Add":
        consts = [i for i in node.input if i in inits and len(inits[i].dims) == 1]
        others = [i for i in node.input if i not in inits]
        if len(consts) != 1 or len(others) != 1:
            return None
        bias, bias_node = consts[0], node.name
        node = back(others[0])
        if node is None:
            return None
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    x, w = node.input[0], node.input[1]
    if x in inits or w not in inits or len(inits[w].dims) != 2:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or bias is not None:
            return None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits or len(inits[node.input[2]].dims) != 1:
                return None
            bias = node.input[2]
    n_out = inits[w].dims[0] if attrs.get("transB", 0) else inits[w].dims[1]
    if bias is not None and inits[bias].dims[0] != n_out:
        return None
    return (Projection(node.name, x, w, bool(attrs.get("transB", 0)), bias, bias_node, chain[-1]),
            list(reversed(chain)))


def _trace_forward(tensor: str, consumers: Mapping[str, list], outputs: set[str]) -> list[str] | None:
    """``tensor`` and the outputs of the single-consumer Reshape/Transpose chain after it (last: the
    tensor the chain ends in)."""
    chain = [tensor]
    while True:
        readers = consumers.get(chain[-1], [])
        if chain[-1] in outputs or len(readers) != 1 or readers[0].op_type not in LAYOUT_OPS:
            return chain
        chain.append(readers[0].output[0])


def find_attention_folds(model: onnx.ModelProto) -> list[AttentionFold]:
    """Every Q @ K^T and P @ V MatMul of ``model`` whose inputs come straight (through Reshape /
    Transpose only) from projections nothing else reads. The channel correspondence the fold relies
    on is checked numerically by :func:`smooth_model` (a fold that changes the outputs is dropped)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    readers = weighted_matmuls(model)
    folds: list[AttentionFold] = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or any(i in inits for i in node.input):
            continue
        a, b = node.input
        second = _trace_projection(b, producers, consumers, inits, outputs)
        if second is None:
            continue
        first = _trace_projection(a, producers, consumers, inits, outputs)
        if first is not None:
            if first[0].node == second[0].node:
                continue
            folds.append(AttentionFold("qk", node.name, first[0], second[0], None, tuple(first[1] + second[1])))
            continue
        if getattr(producers.get(a), "op_type", None) != "Softmax":
            continue
        after = _trace_forward(node.output[0], consumers, outputs)
        context = after[-1]
        if context not in readers or len(consumers.get(context, ())) != len(readers[context]):
            continue  # the context has readers other than weighted MatMuls: keep the explicit Mul
        folds.append(AttentionFold("pv", node.name, None, second[0], context, tuple(second[1] + after)))
    return folds


def _projection_sample(proj: Projection, stats: ActivationStats, inits: Mapping[str, onnx.TensorProto]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """The projection's output on its input's sampled token vectors (rows, weights), or None."""
    if proj.activation not in stats.names or stats[proj.activation].channels is None:
        return None
    x, row_weights = stats[proj.activation].channels.weighted_rows(AUTO_ROWS)
    if not len(x):
        return None
    w = _weight_rows(numpy_helper.to_array(inits[proj.weight]).astype(np.float32), proj.transposed)
    y = x.astype(np.float32) @ w
    if proj.bias is not None:
        y = y + numpy_helper.to_array(inits[proj.bias]).astype(np.float32)
    return y, row_weights


def _qk_error(q: np.ndarray, k: np.ndarray, weights: np.ndarray, proxy: str, params: Mapping[str, Any]) -> float:
    """Relative error of Q @ K^T with both sides quantized per tensor (the calibrator's amax on the sample)."""
    ref = q @ k.T
    qq = fake_quant_activation(q, _sample_amax(q, float(np.abs(q).max()), proxy, params))
    kq = fake_quant_activation(k, _sample_amax(k, float(np.abs(k).max()), proxy, params))
    err = ((qq @ kq.T - ref) ** 2 * weights[:, None] * weights[None, :]).sum()
    return float(err / max(float((ref ** 2 * weights[:, None] * weights[None, :]).sum()), 1e-30))


def plan_attention(model: onnx.ModelProto, stats: ActivationStats, plan: MigrationPlan, *,
                   method: str = "minmax", method_params: Mapping[str, Any] | None = None,
                   exponents: Sequence[float] = QK_EXPONENTS) -> tuple[list[AttentionFold], dict[str, np.ndarray]]:
    """The attention folds to apply with ``plan`` and their scales (``scales[matmul]``: (N,)).

    Q/K: per pair, the exponent of :data:`QK_EXPONENTS` (or none) whose simulated INT8 score error on
    the projections' sampled inputs is smallest. P/V: every context tensor ``plan`` migrates is
    migrated through V's projection instead of a Mul (same scales)."""
    inits = {t.name: t for t in model.graph.initializer}
    migrated = {t.tensor: t for t in plan.migrated}
    proxy = "mse" if method not in method_names() or get_method(method).amax is None else method
    params = dict(method_params or {}) if proxy == method else {}
    chosen: list[AttentionFold] = []
    scales: dict[str, np.ndarray] = {}
    for fold in find_attention_folds(model):
        if fold.kind == "pv":
            if fold.context in migrated:
                chosen.append(fold)
                scales[fold.matmul] = plan.scales[fold.context]
            continue
        q_sample = _projection_sample(fold.first, stats, inits)
        k_sample = _projection_sample(fold.second, stats, inits)
        if q_sample is None or k_sample is None or q_sample[0].shape != k_sample[0].shape:
            continue
        (q, wq), (k, _) = q_sample, k_sample
        a, b = np.abs(q).max(axis=0).astype(np.float64), np.abs(k).max(axis=0).astype(np.float64)
        base = _qk_error(q, k, wq, proxy, params)
        best, best_err, best_s = None, base, None
        ok = (a > 0) & (b > 0)
        for beta in exponents:
            s = np.ones_like(a)
            s[ok] = (a[ok] / b[ok]) ** beta
            s = np.clip(s, *_SCALE_CLIP)
            err = _qk_error(q / s.astype(np.float32), k * s.astype(np.float32), wq, proxy, params)
            if err < best_err:
                best, best_err, best_s = float(beta), err, s
        if best is not None:
            chosen.append(dataclasses.replace(fold, exponent=best, error_before=base, error_after=best_err))
            scales[fold.matmul] = best_s
    return chosen, scales


def _scale_columns(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int],
                   by_node: Mapping[str, onnx.NodeProto], proj: Projection, factor: np.ndarray) -> None:
    """Multiply the output channels (weight columns and bias) of ``proj`` by ``factor``; shared
    initializers get a private copy."""
    node = by_node[proj.node]
    targets = [(1, proj.weight, node)]
    if proj.bias is not None:
        holder = by_node[proj.bias_node] if proj.bias_node else node
        targets.append((list(holder.input).index(proj.bias), proj.bias, holder))
    for slot, name, holder in targets:
        w = numpy_helper.to_array(inits[name])
        if name == proj.weight:
            scaled = w * factor[:, None] if proj.transposed else w * factor[None, :]
        else:
            scaled = w * factor
        scaled = scaled.astype(w.dtype)
        if uses.get(name, 0) > 1:
            copy = f"{name}{SUFFIX}:{holder.name}"
            graph.initializer.append(numpy_helper.from_array(scaled, copy))
            inits[copy] = graph.initializer[-1]
            holder.input[slot] = copy
            uses[name] -= 1
        else:
            inits[name].CopyFrom(numpy_helper.from_array(scaled, name))


@dataclass(frozen=True)
class SmoothResult:
    """What :func:`smooth_model` wrote: the rewritten FP32 model and its identity chain."""

    path: Path
    sha256: str
    parent_sha256: str
    plan: MigrationPlan

    attention_dropped: str = ""  # why planned attention folds were not applied ("" when none was dropped)

    @property
    def migrated(self) -> dict[str, str]:
        """original tensor -> migrated tensor (the name the quantizer ranges; the same name for a
        tensor migrated through a fold)."""
        return {t.tensor: t.smoothed for t in self.plan.migrated}

    @property
    def rewritten(self) -> bool:
        """Whether the written model differs from its parent."""
        return bool(self.plan.migrated or self.plan.attention)

    def attention_summary(self) -> str:
        qk = sum(f.kind == "qk" for f in self.plan.attention)
        pv = sum(f.kind == "pv" for f in self.plan.attention)
        if not (qk or pv):
            return "attention: nothing folded" + (f" ({self.attention_dropped})" if self.attention_dropped else "")
        return (f"attention: {qk} Q/K pairs equalized, {pv} contexts migrated through V "
                "(folded into the projections' weights and biases, no op added)")

    def summary(self) -> str:
        n = len(self.plan.migrated)
        text = self._migration_summary(n)
        return text + ("; " + self.attention_summary() if self.plan.attention or self.attention_dropped else "")

    def _migration_summary(self, n: int) -> str:
        if not n:
            return "smoothing: nothing was migrated (" + (
                "no weighted MatMul input with per-channel statistics" if not self.plan.tensors
                else "auto kept every tensor as is") + ")"
        alphas = sorted({t.alpha for t in self.plan.migrated if t.alpha is not None})
        return (f"smoothing: {n} of {len(self.plan.tensors)} weighted-MatMul inputs migrated "
                f"(alpha {self.plan.alpha if self.plan.alpha != 'auto' else 'auto: ' + ', '.join(f'{a:g}' for a in alphas)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256, "parent_sha256": self.parent_sha256, "alpha": self.plan.alpha,
            "migrated": len(self.plan.migrated), "candidates": len(self.plan.tensors),
            "tensors": [asdict(t) for t in self.plan.tensors], "not_migrated": dict(self.plan.not_migrated),
            "attention": [{"kind": f.kind, "matmul": f.matmul, "exponent": f.exponent,
                           "error_before": f.error_before, "error_after": f.error_after,
                           "projections": [p.node for p in (f.first, f.second) if p is not None],
                           "context": f.context} for f in self.plan.attention],
            **({"attention_dropped": self.attention_dropped} if self.attention_dropped else {}),
        }


def smooth_model(model_path: str | Path, stats: ActivationStats, out_path: str | Path, alpha: float | str, *,
                 method: str = "minmax", method_params: Mapping[str, Any] | None = None, attention: bool = False,
                 check_feeds: Sequence[Mapping[str, np.ndarray]] = (), tolerance: float = 1e-3,
                 recompute: str = "calib calibrate --calibration-set <calibration set>") -> SmoothResult:
    """Plan and apply the migration to ``model_path``; write the FP32 rewrite to ``out_path``.

    ``attention``: also fold scales into attention's projections; their channel correspondence is
    checked on ``check_feeds`` (required then): when any float output moves by more than ``tolerance``
    x its own max |value|, the folds are dropped (the reason is recorded) and the plain migration is
    written. A model with nothing to migrate is still written (unchanged) and says so in
    :meth:`SmoothResult.summary`."""
    model_path, out_path = Path(model_path), Path(out_path)
    model = read_onnx(model_path)
    plan = plan_migration(model, stats, alpha, method=method, method_params=method_params, recompute=recompute,
                          attention=attention)
    dropped = ""
    with atomic_path(out_path) as tmp:
        onnx.save(apply_migration(model, plan), str(tmp))
        if plan.attention:
            if not check_feeds:
                raise InputError("attention folds need calibration feeds to check the rewritten model")
            moved = _relative_output_delta(model_path, Path(tmp), check_feeds)
            if moved > tolerance:
                dropped = (f"dropped: the rewritten model's outputs moved by {moved:.1e} of their range, so this "
                           "graph's attention layout is not the one the fold assumes")
                plan = plan.without_attention()
                onnx.save(apply_migration(model, plan), str(tmp))
    return SmoothResult(path=out_path, sha256=sha256_file(out_path), parent_sha256=sha256_file(model_path), plan=plan,
                        attention_dropped=dropped)


def _relative_output_delta(original: Path, rewritten: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> float:
    """max over float outputs of max |rewritten - original| / max |original|."""
    a = OrtSessionLoader(original, optimization="disabled")()
    names = [o.name for o in a.get_outputs() if o.type in ("tensor(float)", "tensor(float16)")]
    scale = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, x in zip(names, a.run(names, dict(feed))):
            scale[name] = max(scale[name], float(np.abs(x).max(initial=0.0)))
    delta = max_output_delta(original, rewritten, feeds)
    return max((delta[n] / scale[n] if scale[n] > 0 else delta[n]) for n in names) if names else 0.0


def max_output_delta(original: str | Path, rewritten: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], *,
                     threads: int | None = None) -> dict[str, float]:
    """max |rewritten - original| per float graph output over the given feeds (FP32, ONNX Runtime,
    graph optimisations off so both run the same arithmetic)."""
    a = OrtSessionLoader(Path(original), threads=threads, optimization="disabled")()
    b = OrtSessionLoader(Path(rewritten), threads=threads, optimization="disabled")()
    names = [o.name for o in a.get_outputs() if o.type in ("tensor(float)", "tensor(float16)")]
    delta = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, x, y in zip(names, a.run(names, dict(feed)), b.run(names, dict(feed))):
            delta[name] = max(delta[name], float(np.abs(x.astype(np.float64) - y).max(initial=0.0)))
    return delta


@dataclass(frozen=True)
class SmoothedModel:
    """A migration applied for a build: the rewritten FP32 model, the ranges of its migrated tensors
    (recomputed on the rewritten model by the range set's own method), and the FP32 check."""

    result: SmoothResult
    amax: dict[str, float]  # migrated tensor (``<X>::smooth``) -> amax
    max_abs_delta: dict[str, float]  # float graph output -> max |rewritten - original| on calibration batches
    texts: int  # calibration texts the migrated ranges were recomputed on
    seconds: float
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)  # whole-set methods' record per migrated tensor

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "max_abs_output_delta": self.max_abs_delta,
                "ranges_recomputed_on_texts": self.texts, "seconds": round(self.seconds, 2),
                "migrated_amax": self.amax, **({"migrated_choices": self.choices} if self.choices else {})}


def smooth_calibrated(model_path: str | Path, calibration_dir: str | Path, ranges: Ranges, alpha: float | str,
                      out_path: str | Path, *, threads: int | None = None, check_batches: int = 2,
                      attention: bool = False) -> SmoothedModel:
    """Migrate ``model_path`` with the statistics of a calibration run, then range the migrated tensors.

    ``ranges`` (a range set of that run) names the method whose amax the migrated tensors get (minmax
    when it is not a registered method): their statistics are collected on the rewritten model over
    the run's own calibration set (those tensors only), with the run's batch size and histogram
    settings. ``check_batches`` calibration batches measure the FP32 outputs' max |delta|.
    ``attention``: fold scales into attention's projections too (:func:`plan_attention`); every
    tensor they rescale that the range set ranges is re-ranged the same way."""
    started = time.perf_counter()
    cal = Calibration.load(calibration_dir)
    set_dir = cal.calibration_set_dir
    recompute = f"calib calibrate --calibration-set {set_dir or '<calibration set>'}"
    method, params = (ranges.method, ranges.params) if ranges.method in method_names() else ("minmax", {})
    stats = cal.stats
    if not stats.has_channels:
        stats.channels("", recompute=recompute)  # the one-line "recompute" error, before any work
    if not set_dir or not Path(set_dir).is_dir():
        raise InputError(f"the calibration set {set_dir or '(unknown)'} of calibration run {cal.dir.name} no longer "
                         "exists: smoothing needs it to range the migrated tensors")
    cset = CalibrationSet.load(set_dir)
    spec = cset.model_spec()
    encoded = cset.encode(spec)
    conf = cal.config  # the statistics pass as the run made it (not recorded: the pass's own defaults)
    pass_settings = {"batch_size": conf.batch_size, "histogram": conf.histogram, "bins": conf.bins} if conf else {}
    stats_config = StatsConfig(**pass_settings, threads=threads, channel_stats=False)
    batches = iter_batches(encoded, spec.input_dtypes, stats_config.batch_size)
    feeds = [batch.feeds for batch, _ in zip(batches, range(check_batches))]
    result = smooth_model(model_path, stats, out_path, alpha, method=method, method_params=params,
                          recompute=recompute, attention=attention, check_feeds=feeds)
    migrated = result.migrated
    if not result.rewritten:
        return SmoothedModel(result, {}, {}, 0, time.perf_counter() - started)
    plan = result.plan
    rescaled = [t for t in plan.changed_tensors if t in ranges.amax and t not in migrated]
    fresh = collect_statistics(Path(out_path), encoded, list(dict.fromkeys([*migrated.values(), *rescaled])),
                               config=stats_config)
    # per-channel statistics of X / s follow exactly from X's (whole-set methods such as auto use them)
    source = {t.smoothed: t.tensor for t in plan.migrated}
    fresh = dataclasses.replace(fresh, has_channels=True, tensors=tuple(
        dataclasses.replace(t, channels=stats[source[t.name]].channels.scaled(plan.scales[source[t.name]]))
        if t.name in source else t for t in fresh.tensors))
    whole_set = get_method(method).choose is not None
    ranged = compute_ranges(fresh, method, model=read_onnx(out_path) if whole_set else None, **params)
    amax = ranged.amax
    delta = max_output_delta(model_path, out_path, feeds, threads=threads)
    return SmoothedModel(result, dict(amax), delta, len(encoded), time.perf_counter() - started, ranged.choices)


def input_means(stats: ActivationStats, plan: MigrationPlan | None = None, *,
                recompute: str = "calib calibrate --calibration-set <calibration set>") -> dict[str, np.ndarray]:
    """Per-channel calibration-set means of every weighted-MatMul input (for bias correction); a
    migrated tensor ``<X>::smooth`` gets ``mean(X) / s``. InputError (naming ``recompute``) when the
    statistics predate per-channel statistics."""
    if not stats.has_channels:
        stats.channels("", recompute=recompute)
    means = {t.name: t.channels.mean for t in stats.tensors if t.channels is not None}
    if plan is not None:
        for t in plan.migrated:
            if t.tensor in means:
                means[t.smoothed] = means[t.tensor] / plan.scales[t.tensor]
    return means
