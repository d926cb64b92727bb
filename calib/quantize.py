"""Q/DQ ONNX from our ranges, by ONNX Runtime's own Q/DQ quantizer (never by hand).

Conventions are TensorRT's: symmetric INT8 activations (zero point 0, scale = amax / 127),
per-channel symmetric INT8 weights (MatMul weights along axis 1, the output channels), biases left
in float, a Q/DQ pair on every weight; under input-only placements the Q/DQ pair of an activation
feeds only the quantized nodes (residual Adds and model outputs keep the float value). The same model runs
in INT8 on ONNX Runtime's CPU provider (its graph optimiser fuses DQ -> MatMul into integer kernels)
and is what TensorRT 11 builds from.

What stays in float is decided and listed before the quantizer runs:
- nodes the placement leaves out (excluded by name or op type, not in the include list),
- nodes whose op type ONNX Runtime's Q/DQ quantizer does not handle,
- nodes that would need a range for a tensor with no range, or with a non-finite or zero amax.
Ranges naming tensors absent from the model are reported (a warning, not an error).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calib.errors import InputError
from calib.io import atomic_path, sha256_file
from calib.model import read_onnx
from calib.placement import ALL_PRESET_OPS, Placement, ResolvedPlacement, resolve_placement

log = logging.getLogger(__name__)

# The ops the quantizer inserts.
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")


def supported_op_types() -> frozenset[str]:
    """Op types ONNX Runtime's Q/DQ quantizer handles: its QDQ registry plus the element-wise ops
    its generic operator quantizer covers (the `all` preset list)."""
    from onnxruntime.quantization.registry import QDQRegistry

    return frozenset(QDQRegistry) | frozenset(ALL_PRESET_OPS)


NO_RANGE = "no range for this tensor in the range set"  # why a tensor missing from the range set gets no Q/DQ


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_qdq` wrote and what it left in float."""

    path: Path  # the Q/DQ ONNX model
    sha256: str  # of the Q/DQ model file
    source_sha256: str  # of the FP32 model it came from
    placement: dict[str, object]  # the Placement as plain data
    per_channel: bool
    quantized_nodes: tuple[str, ...]  # nodes handed to the quantizer, in graph order
    excluded_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stays in float
    skipped_tensors: dict[str, str] = field(default_factory=dict)  # tensor -> why it got no Q/DQ
    unknown_tensors: tuple[str, ...] = ()  # tensors named by the ranges but absent from the model
    rangeless_tensors: tuple[str, ...] = ()  # tensors a chosen node needs that the range set has no range for
    blocked_nodes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node in float -> its tensors without a usable range
    unmatched_patterns: tuple[str, ...] = ()  # include/exclude patterns that matched no node
    qdq_counts: dict[str, int] = field(default_factory=dict)  # QuantizeLinear / DequantizeLinear counts
    quantized_tensors: tuple[str, ...] = ()  # activations that got a Q/DQ pair
    placement_op_types: tuple[str, ...] = ()  # op types the placement handed to the quantizer
    bias_corrected: dict[str, float] = field(default_factory=dict)  # MatMul -> max |bias shift| folded in

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _check_amax(amax: Mapping[str, float], tensor_names: set[str]) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """Split the given ranges into usable ones, unusable ones (with the reason), and unknown names."""
    usable: dict[str, float] = {}
    unusable: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in amax.items():
        if name not in tensor_names:
            unknown.append(name)
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            unusable[name] = f"amax {value!r} is not a number"
            continue
        if not math.isfinite(value):
            unusable[name] = f"amax is {value} (non-finite: the tensor holds inf/NaN)"
        elif value <= 0.0:
            unusable[name] = f"amax is {value} (a zero range cannot be quantized)"
        else:
            usable[name] = value
    return usable, unusable, unknown


def _tensors_data(amax: Mapping[str, float]):
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {name: (np.float32(-a), np.float32(a)) for name, a in amax.items()})


def _extra_options(resolved: ResolvedPlacement, dedicated_pairs: bool) -> dict[str, object]:
    options: dict[str, object] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        "QuantizeBias": False,
        "AddQDQPairToWeight": True,  # TensorRT wants Q -> DQ on weights, not pre-quantized weights
        # One Q/DQ pair per consumer, as ORT advises for TensorRT (see also _unshare_pair_params).
        "DedicatedQDQPair": dedicated_pairs,
    }
    if not resolved.quantize_outputs:
        options["OpTypesToExcludeOutputQuantization"] = list(resolved.op_types)
    return options


def _make_quantizer(model: onnx.ModelProto, resolved: ResolvedPlacement, nodes: list[str], tensors_range,
                    per_channel: bool, dedicated_pairs: bool):
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType

    return QDQQuantizer(
        model, per_channel, False, QuantType.QInt8, QuantType.QInt8, tensors_range,
        nodes, [], list(resolved.op_types), _extra_options(resolved, dedicated_pairs),
    )


def _tensors_needed(model: onnx.ModelProto, resolved: ResolvedPlacement, nodes: list[str],
                    per_channel: bool) -> dict[str, list[str]]:
    """For each node the quantizer would handle, the activation tensors it needs a range for.

    Asks ONNX Runtime's own per-op quantizers (on a copy of the model) which tensors they mark, so
    what we check is exactly what the real pass will require."""
    from onnxruntime.quantization.registry import CreateQDQQuantizer

    probe = copy.deepcopy(model)
    quantizer = _make_quantizer(probe, resolved, nodes, None, per_channel, False)
    initializers = {t.name for t in probe.graph.initializer}
    needed: dict[str, list[str]] = {}
    for node in quantizer.model.nodes():
        if not quantizer.should_quantize_node(node):
            continue
        quantizer.tensors_to_quantize = {}
        CreateQDQQuantizer(quantizer, node).quantize()
        needed[node.name] = [name for name, info in quantizer.tensors_to_quantize.items()
                             if not info.is_shared and name not in initializers]
    return needed


ISOLATE_SUFFIX = "::int8_input"


def _isolate_quantized_inputs(model: onnx.ModelProto, needed: Mapping[str, list[str]]) -> dict[str, str]:
    """Give the quantized consumers of each activation their own copy of it (an Identity).

    ONNX Runtime's quantizer rewires *every* consumer of a quantized tensor to the dequantized value
    (and turns a graph output into its fake-quantized version). For input-only placements that would
    put residual Adds and model outputs on INT8 values; with the copy, only the quantized nodes see
    the Q/DQ pair. Returns {alias: original tensor}; :func:`_remove_isolation` undoes it afterwards.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.name in needed:
            for tensor in needed[node.name]:
                readers.setdefault(tensor, []).append(node)
    aliases: dict[str, str] = {}
    for tensor, nodes in readers.items():
        alias = tensor + ISOLATE_SUFFIX
        for node in nodes:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = alias
        model.graph.node.append(onnx.helper.make_node("Identity", [tensor], [alias], name=alias))
        aliases[alias] = tensor
    if aliases:  # keep topological order, and give the copies their types
        _toposort(model)
        types = {v.name: v.type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
        for alias, tensor in aliases.items():
            if tensor in types:
                info = onnx.ValueInfoProto(name=alias)
                info.type.CopyFrom(types[tensor])
                model.graph.value_info.append(info)
    return aliases


def _toposort(model: onnx.ModelProto) -> None:
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a missing input: keep the remaining order
            ordered.extend(rest)
            break
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _remove_isolation(model: onnx.ModelProto, aliases: Mapping[str, str]) -> None:
    """Drop the Identity copies made by :func:`_isolate_quantized_inputs` (their readers are now Q nodes)."""
    if not aliases:
        return
    keep = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in aliases:
                node.input[i] = aliases[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    drop = set(aliases)
    kept_info = [v for v in model.graph.value_info if v.name not in drop]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)


def _unshare_pair_params(model: onnx.ModelProto) -> None:
    """Give each dedicated Q/DQ pair of a tensor its own (equal-valued) scale and zero point.

    Values are unchanged. Without it ONNX Runtime's CPU optimiser merges the identical Q nodes of
    one tensor into a Q with several DQ readers, which it then cannot convert to its u8 integer
    MatMul kernels on x86 (the Q/K/V projections would stay in float)."""
    initializers = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    seen: Counter[tuple[str, str]] = Counter()
    for node in list(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers or len(node.input) < 3:
            continue
        key = (node.input[0], node.input[1])
        seen[key] += 1
        if seen[key] == 1:
            continue
        copies = []
        for name in node.input[1:3]:
            copy_ = onnx.TensorProto()
            copy_.CopyFrom(initializers[name])
            copy_.name = f"{name}_{seen[key]}"
            model.graph.initializer.append(copy_)
            copies.append(copy_.name)
        node.input[1], node.input[2] = copies
        for dq in readers.get(node.output[0], []):
            if dq.op_type == "DequantizeLinear":
                dq.input[1], dq.input[2] = copies


class _quiet_root_logger:
    """ONNX Runtime's quantizer logs per-tensor notes on the root logger; keep them out of the CLI."""

    def __enter__(self):
        self.level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.root.setLevel(self.level)
        return False


def _qdq_activations(model: onnx.ModelProto) -> tuple[str, ...]:
    """Float tensors that feed a QuantizeLinear (i.e. got a Q/DQ pair), weights left out."""
    initializers = {t.name for t in model.graph.initializer}
    out = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in initializers]
    return tuple(dict.fromkeys(out))


def quantize_qdq(
    model_path: str | Path,
    amax: Mapping[str, float],
    placement: Placement,
    out_path: str | Path,
    *,
    per_channel: bool = True,
    dedicated_pairs: bool = True,
    input_means: Mapping[str, np.ndarray] | None = None,
) -> QuantizeResult:
    """Write a Q/DQ INT8 copy of ``model_path`` to ``out_path`` using per-tensor ``amax`` ranges.

    ``amax`` maps activation tensor names to their absolute range (symmetric: [-amax, amax]).
    ``input_means`` (activation tensor -> per-channel mean over the calibration set, (K,)) turns on
    bias correction (:func:`correct_bias`) for the quantized MatMuls reading those tensors.
    Raises :class:`InputError` for an unreadable model, an empty range set, or a placement that
    quantizes nothing.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    if not amax:
        raise InputError(f"no ranges given for {model_path}: calibrate first (calib calibrate) and pass its ranges")
    model = read_onnx(model_path)
    try:
        model = onnx.shape_inference.infer_shapes(model)  # the quantizer needs the value types
    except Exception as exc:  # noqa: BLE001 - onnx raises several types; types may still be known
        log.warning("shape inference failed for %s: %s", model_path, exc)
    resolved = resolve_placement(model, placement)

    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    usable, unusable, unknown = _check_amax(amax, produced)
    if unknown:
        shown = ", ".join(unknown[:8]) + (" …" if len(unknown) > 8 else "")
        warnings.warn(f"{len(unknown)} ranged tensor(s) are not in {model_path.name} and are ignored: {shown}",
                      stacklevel=2)

    excluded = dict(resolved.excluded)
    supported = supported_op_types()
    op_of = {n.name: n.op_type for n in model.graph.node}
    candidates = []
    for name in resolved.nodes:
        if op_of[name] not in supported:
            excluded[name] = f"op type {op_of[name]} is not supported by ONNX Runtime's Q/DQ quantizer"
        else:
            candidates.append(name)

    skipped: dict[str, str] = {}
    with _quiet_root_logger():
        needed = _tensors_needed(model, resolved, candidates, per_channel) if candidates else {}
    chosen = []
    rangeless_tensors: set[str] = set()
    blocked: dict[str, tuple[str, ...]] = {}
    for name in candidates:
        if name not in needed:  # the quantizer declined it (e.g. no float input)
            excluded[name] = "ONNX Runtime's quantizer does not quantize this node (no float input)"
            continue
        missing = [t for t in needed[name] if t not in usable]
        if missing:
            for tensor in missing:
                skipped[tensor] = unusable.get(tensor, NO_RANGE)
                if tensor not in unusable:
                    rangeless_tensors.add(tensor)
            blocked[name] = tuple(missing)
            excluded[name] = "; ".join(f"{t}: {skipped[t]}" for t in missing)
            continue
        chosen.append(name)
    if not chosen:
        raise InputError(
            f"placement {placement.preset!r} leaves no node of {model_path.name} to quantize "
            f"({len(excluded)} excluded, {len(skipped)} tensors without a usable range); "
            "check the include/exclude patterns and that the ranges were calibrated for this placement"
        )
    # Ranges the chosen nodes do not use are still valid; only the ones that blocked a node are listed.
    for tensor, reason in unusable.items():
        skipped.setdefault(tensor, reason)

    ranges = {t: usable[t] for n in chosen for t in needed[n]}
    isolated: dict[str, str] = {}
    if not resolved.quantize_outputs:
        isolated = _isolate_quantized_inputs(model, {n: needed[n] for n in chosen})
        ranges.update({alias: ranges[t] for alias, t in isolated.items()})
    quantizer = _make_quantizer(model, resolved, chosen, _tensors_data(ranges), per_channel, dedicated_pairs)
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        qdq_model = quantizer.quantize_model()
    _remove_isolation(qdq_model, isolated)
    if dedicated_pairs:
        _unshare_pair_params(qdq_model)
    corrected = correct_bias(qdq_model, input_means) if input_means else {}
    with atomic_path(out_path) as tmp:
        onnx.save(qdq_model, str(tmp))
    counts = Counter(n.op_type for n in qdq_model.graph.node if n.op_type in QDQ_OP_TYPES)
    return QuantizeResult(
        path=out_path, sha256=sha256_file(out_path), source_sha256=sha256_file(model_path),
        placement=asdict(placement), per_channel=per_channel, quantized_nodes=tuple(chosen),
        excluded_nodes=excluded, skipped_tensors=skipped, unknown_tensors=tuple(unknown),
        rangeless_tensors=tuple(sorted(rangeless_tensors)), blocked_nodes=blocked,
        unmatched_patterns=resolved.unmatched_patterns, qdq_counts=dict(counts),
        quantized_tensors=_qdq_activations(qdq_model), placement_op_types=tuple(resolved.op_types),
        bias_corrected=corrected,
    )


def _fake_quant_weight(weight: np.ndarray, scale: np.ndarray, axis: int, zero_point: np.ndarray | None) -> np.ndarray:
    """What a weight Q -> DQ pair computes: ``(clip(round(w / s) + zp, -128, 127) - zp) * s`` per ``axis``."""
    shape = [1] * weight.ndim
    if scale.ndim:
        shape[axis] = -1
    s = scale.astype(np.float64).reshape(shape)
    zp = np.zeros_like(s) if zero_point is None else zero_point.astype(np.float64).reshape(shape)
    return (np.clip(np.round(weight / s) + zp, -128, 127) - zp) * s


def correct_bias(model: onnx.ModelProto, input_means: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Fold the expected output shift caused by weight quantization into each MatMul's bias (in place).

    For ``Y = X @ W + b`` with INT8 weights ``Q(W)``: ``E[X @ Q(W)] - E[X @ W] = mean(X) @ (Q(W) - W)``
    (mean over the calibration set, per input channel), so ``b <- b - mean(X) @ (Q(W) - W)`` makes the
    quantized layer's output right on average. Applies to MatMuls whose weight has a Q/DQ pair, whose
    activation (before its own Q/DQ) has a mean in ``input_means``, and whose output feeds exactly one
    Add with a constant bias of N values. Returns {MatMul: max |shift|}."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    uses: Counter[str] = Counter()
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
            uses[name] += 1
    out: dict[str, float] = {}
    for node in list(model.graph.node):
        if node.op_type != "MatMul":
            continue
        dq_w = producer.get(node.input[1])
        if dq_w is None or dq_w.op_type != "DequantizeLinear":
            continue
        q_w = producer.get(dq_w.input[0])
        if q_w is None or q_w.op_type != "QuantizeLinear" or q_w.input[0] not in inits:
            continue
        x = node.input[0]
        dq_x = producer.get(x)
        if dq_x is not None and dq_x.op_type == "DequantizeLinear" and dq_x.input[0] in producer:
            x = producer[dq_x.input[0]].input[0]
        mean = input_means.get(x)
        adds = readers.get(node.output[0], [])
        if mean is None or len(adds) != 1 or adds[0].op_type != "Add":
            continue
        bias_name = next((i for i in adds[0].input if i in inits), None)
        weight = numpy_helper.to_array(inits[q_w.input[0]]).astype(np.float64)
        if bias_name is None or weight.ndim != 2 or len(mean) != weight.shape[0]:
            continue
        bias = numpy_helper.to_array(inits[bias_name])
        if bias.shape != (weight.shape[1],):
            continue
        axis = next((a.i for a in q_w.attribute if a.name == "axis"), 1)
        scale = numpy_helper.to_array(inits[q_w.input[1]])
        zero = numpy_helper.to_array(inits[q_w.input[2]]) if len(q_w.input) > 2 and q_w.input[2] in inits else None
        shift = np.asarray(mean, np.float64) @ (_fake_quant_weight(weight, scale, axis % 2, zero) - weight)
        corrected = (bias - shift).astype(bias.dtype)
        if uses[bias_name] > 1:  # a shared bias gets its own copy
            name = f"{bias_name}::bias_corrected:{node.name}"
            model.graph.initializer.append(numpy_helper.from_array(corrected, name))
            adds[0].input[list(adds[0].input).index(bias_name)] = name
            uses[bias_name] -= 1
        else:
            inits[bias_name].CopyFrom(numpy_helper.from_array(corrected, bias_name))
        out[node.name] = float(np.abs(shift).max(initial=0.0))
    return out


def quantized_around(model: onnx.ModelProto, op_types: tuple[str, ...],
                     allowed_readers: tuple[str, ...] = ("MatMul", "Gemm", "Conv", "ConvTranspose")) -> dict[str, list[str]]:
    """Nodes of ``op_types`` that touch INT8 values, with what touches them.

    A node is reported when one of its inputs comes from a DequantizeLinear (it computes on
    fake-quantized data), or when a Q/DQ pair on one of its outputs reaches a reader that is not in
    ``allowed_readers`` (e.g. a residual Add fed the INT8 value). A Q/DQ pair that feeds only a
    MatMul is that MatMul's input quantization and is allowed. Empty dict: all of them stay in float.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        found = [f"input {i} from {producer[i].name}" for i in node.input
                 if i in producer and producer[i].op_type == "DequantizeLinear"]
        for output in node.output:
            for q in readers.get(output, []):
                if q.op_type != "QuantizeLinear":
                    continue
                for dq in readers.get(q.output[0], []):
                    for reader in readers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else [dq]:
                        if reader.op_type not in allowed_readers:
                            found.append(f"output {output} reaches {reader.op_type} {reader.name} as INT8")
        if found:
            out[node.name] = found
    return out


def keep_in_float(qdq_model: onnx.ModelProto, nodes: Sequence[str] | set[str]) -> onnx.ModelProto:
    """A copy of an input-only Q/DQ model written by :func:`calib.quantize.quantize_qdq` in which
    ``nodes`` are left in float, as the quantizer leaves them when told to exclude them.

    Under input-only placements every quantized reader has its own Q/DQ pair (weights included) and
    nobody else reads it, so leaving a node in float means reconnecting its inputs to the float
    tensors its QuantizeLinears read; pairs nothing reads any more are dropped. (Placements that
    quantize outputs share pairs and their scales between readers in ways ONNX Runtime decides in
    graph order; their candidates are rebuilt by the quantizer instead.)
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    floating = set(nodes)
    graph_outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name not in floating:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    producer_index = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    needed = set(graph_outputs)
    live: set[int] = set()
    stack = list(needed)
    while stack:  # walk back from the outputs (the quantizer's graph is not always in topological order)
        index = producer_index.get(stack.pop())
        if index is None or index in live:
            continue
        live.add(index)
        for name in model.graph.node[index].input:
            if name not in needed:
                needed.add(name)
                stack.append(name)
    if len(live) != len(model.graph.node):
        kept = [n for i, n in enumerate(model.graph.node) if i in live]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        declared = {i.name for i in model.graph.input}
        keep_init = [t for t in model.graph.initializer if t.name in needed or t.name in declared]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep_init)
    return model
