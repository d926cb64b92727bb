"""Which tensors a pass collects: graph producers, the weightless graph copy used for graph walks and
shape inference, the default tensor set of a placement, element types and the model's input dtypes."""

from __future__ import annotations

import math

import numpy as np
import onnx

from calib.errors import InputError
from calib.placement import Placement, _float_tensors, ensure_node_names, resolve_placement

TENSOR_SCOPE_DESCRIPTIONS = {"placement": "those the placement needs", "all": "every float tensor"}
TENSOR_SCOPES = tuple(TENSOR_SCOPE_DESCRIPTIONS)
_WEIGHTLESS_MAX = 1024  # initializers up to this many elements keep their data (shape constants)


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


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every tensor whose type shape inference can tell (best effort)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - onnx raises several types; unknown types are exposed as float
        inferred = model
    return {v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)
            if v.type.tensor_type.elem_type}


def _input_dtypes(model: onnx.ModelProto) -> dict[str, type]:
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in initializers:
            continue
        out[v.name] = np.int32 if v.type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
    return out
