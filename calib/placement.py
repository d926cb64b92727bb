"""Where Q/DQ goes: placement presets, include/exclude lists, and the tensors that need ranges.

Placement decides INT8 accuracy more than the calibrator does. Presets:

- ``tensorrt``: quantize the inputs of MatMul / Gemm / Conv only (weights per channel, activations
  per tensor); LayerNorm, Softmax, GELU and residual Adds stay in float, as TensorRT's own INT8
  transformer kernels do.
- ``tensorrt-residual``: ``tensorrt`` plus the inputs of every residual Add (an Add of two
  activations whose output feeds a LayerNormalization). TensorRT's Q/DQ guidance: the residual
  input's precision decides whether a GEMM with a fused residual can write INT8, so this is the
  faster TensorRT layout, at an accuracy cost measured in BENCHMARKS.md.
- ``all``: every op ONNX Runtime's Q/DQ quantizer can handle, inputs and outputs. Useful to show why
  naive full quantization fails (attention masks holding -inf, saturated FFN outputs).

Node patterns are shell globs (``*/attention/*``) or regular expressions prefixed with ``re:``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import onnx

from calib.errors import InputError, check_choice

PRESETS = ("tensorrt", "tensorrt-residual", "all")
PRESET_TITLES = {"tensorrt": "tensorrt — MatMul/Gemm inputs only (recommended)",
                 "tensorrt-residual": "tensorrt-residual — MatMul/Gemm plus the residual Adds",
                 "all": "all — every quantizable op (shows why naive INT8 fails)"}
"""What each preset quantizes, in a line (the app's choices; :func:`resolve_placement` is the definition)."""
INPUT_ONLY_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Ops ONNX Runtime's QDQ quantizer knows (its QDQRegistry plus the element-wise ops its base
# operator quantizer handles); the 'all' preset quantizes every one of these found in the graph.
ALL_PRESET_OPS = (
    "MatMul", "Gemm", "Conv", "ConvTranspose", "Add", "Mul", "Sub", "Div", "Softmax", "Where",
    "LayerNormalization", "Gather", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
    "Concat", "Erf", "Tanh", "Sigmoid", "Relu", "Clip", "ReduceMean", "ReduceSum", "Sqrt", "Pow",
    "MaxPool", "AveragePool", "Pad", "Resize", "Flatten", "InstanceNormalization", "BatchNormalization",
)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def exact_pattern(name: str) -> str:
    """A Placement pattern matching exactly ``name`` (glob metacharacters escaped; a name with a comma as a
    regex too, so it survives the CLI's comma-separated pattern lists)."""
    if any(ch in name for ch in "*?[],") or name.startswith("re:"):
        return "re:^" + re.escape(name) + "$"
    return name


@dataclass(frozen=True)
class Placement:
    """Which nodes get Q/DQ. ``include_nodes`` (if given) restricts the preset to matching nodes;
    ``exclude_nodes`` / ``exclude_op_types`` keep matching nodes in float."""

    preset: str = "tensorrt"
    include_nodes: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    include_op_types: tuple[str, ...] = ()  # replaces the preset's op types when given
    exclude_op_types: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: str | Mapping[str, Any] | None) -> Placement:
        """A placement as a saved record holds it: today's mapping of these fields (unknown keys ignored),
        or an earlier version's preset name alone; None: the default."""
        if record is None:
            return cls()
        if isinstance(record, str):
            return cls(record)
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in names})

    def with_exclusions(self, nodes: Iterable[str]) -> Placement:
        merged = tuple(dict.fromkeys((*self.exclude_nodes, *nodes)))
        return Placement(self.preset, self.include_nodes, merged, self.include_op_types, self.exclude_op_types)


@dataclass(frozen=True)
class ResolvedPlacement:
    """A placement applied to one graph."""

    op_types: tuple[str, ...]  # op types handed to the quantizer
    quantize_outputs: bool  # False: only inputs of the quantized nodes get Q/DQ
    nodes: tuple[str, ...]  # names of the nodes to quantize, in graph order
    excluded: dict[str, str] = field(default_factory=dict)  # node name -> why it stays in float
    activation_tensors: tuple[str, ...] = ()  # float activations that need a range, in graph order
    unmatched_patterns: tuple[str, ...] = ()  # include/exclude patterns that matched no node


def _matcher(pattern: str):
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise InputError(f"node pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return lambda name: rx.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def match_nodes(names: Sequence[str], patterns: Sequence[str]) -> tuple[set[str], list[str]]:
    """Names matched by any pattern, and the patterns that matched nothing."""
    matched: set[str] = set()
    unmatched = []
    for pattern in patterns:
        fn = _matcher(pattern)
        hits = {n for n in names if fn(n)}
        if not hits:
            unmatched.append(pattern)
        matched |= hits
    return matched, unmatched


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a stable name (``<OpType>_<index>``) so it can be included/excluded."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of tensors known to be float (graph inputs/outputs, value_info after shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort; unknown types count as float below
        inferred = model
    out = set()
    for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        if v.type.tensor_type.elem_type in _FLOAT_TYPES:
            out.add(v.name)
    return out


def resolve_placement(model: onnx.ModelProto, placement: Placement) -> ResolvedPlacement:
    """Apply ``placement`` to ``model``: the nodes to quantize and the activations that need ranges."""
    check_choice(placement.preset, PRESETS, "placement preset")
    ensure_node_names(model)
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    preset_ops = {"tensorrt": INPUT_ONLY_OPS, "tensorrt-residual": (*INPUT_ONLY_OPS, "Add")}
    op_types = placement.include_op_types or preset_ops.get(placement.preset, ALL_PRESET_OPS)
    op_types = tuple(t for t in op_types if t not in placement.exclude_op_types)
    included, unmatched_inc = match_nodes(names, placement.include_nodes) if placement.include_nodes else (set(names), [])
    excluded_by_name, unmatched_exc = match_nodes(names, placement.exclude_nodes)
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in nodes if n.op_type == "Constant" for o in n.output}
    floats = _float_tensors(model)
    quantize_outputs = placement.preset == "all"
    residual_adds = residual_add_nodes(model) if placement.preset == "tensorrt-residual" else set()

    chosen, excluded, tensors = [], {}, {}
    for node in nodes:
        if placement.preset == "tensorrt-residual" and node.op_type == "Add" and node.name not in residual_adds:
            continue  # bias Adds, the attention-mask Add: not part of this preset
        if node.op_type not in op_types:
            if node.name in included and placement.include_nodes and node.op_type in ALL_PRESET_OPS:
                excluded[node.name] = f"op type {node.op_type} is not quantized by this placement"
            continue
        if node.name in excluded_by_name:
            excluded[node.name] = "excluded by name"
            continue
        if node.name not in included:
            excluded[node.name] = "not in the include list"
            continue
        chosen.append(node.name)
        candidates = list(node.input) + (list(node.output) if quantize_outputs else [])
        if node.op_type == "Gather":  # indices are integers; only the data input is quantized
            candidates = [node.input[0]] + (list(node.output) if quantize_outputs else [])
        for name in candidates:
            if name and name not in initializers and name not in constants and (name in floats or not floats):
                tensors.setdefault(name, None)
    return ResolvedPlacement(
        op_types=op_types, quantize_outputs=quantize_outputs, nodes=tuple(chosen), excluded=excluded,
        activation_tensors=tuple(tensors), unmatched_patterns=tuple(unmatched_inc + unmatched_exc),
    )


def residual_add_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of residual Adds: an Add of two computed tensors (no initializer or Constant input), one
    of them a GEMM's output (a MatMul/Gemm, or its bias Add), whose output is read by a
    LayerNormalization (post-LN BERT) or a ReduceMean (a decomposed LayerNorm). The embeddings' sum
    before the first LayerNorm is not one: no GEMM output to fuse it into."""
    ensure_node_names(model)
    constants = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                              for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)

    def gemm_output(name: str) -> bool:
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in ("MatMul", "Gemm"):
            return True
        return node.op_type == "Add" and any(i in constants for i in node.input) and any(
            i in producer and producer[i].op_type in ("MatMul", "Gemm") for i in node.input)

    return {n.name for n in model.graph.node
            if n.op_type == "Add" and len(n.input) == 2 and not (set(n.input) & constants)
            and any(gemm_output(i) for i in n.input)
            and readers.get(n.output[0], set()) & {"LayerNormalization", "ReduceMean"}}


@dataclass(frozen=True)
class WeightedMatMul:
    """A MatMul (or Gemm without transA) computing ``X @ W`` with a constant 2-D weight ``W`` (K, N)
    (Gemm with ``transB``: stored as (N, K)). ``activation`` is X, whose last axis is the K channels."""

    node: str
    activation: str
    weight: str
    transposed: bool = False  # Gemm transB=1: W is stored (N, K)


def weighted_matmuls(model: onnx.ModelProto) -> dict[str, list[WeightedMatMul]]:
    """Activation tensor -> the weighted MatMul/Gemm nodes that read it as X, in graph order.

    Only 2-D initializer weights count (attention's activation x activation MatMuls do not)."""
    ensure_node_names(model)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out: dict[str, list[WeightedMatMul]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        x, w = node.input[0], node.input[1]
        if x in weights or len(weights.get(w, ())) != 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        out.setdefault(x, []).append(WeightedMatMul(node.name, x, w, bool(attrs.get("transB", 0))))
    return out
