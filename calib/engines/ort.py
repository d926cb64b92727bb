"""ONNX Runtime on the CPU: FP32 baselines, INT8 Q/DQ models, and models with intermediates exposed.

Sessions are made by lazy loader callables (as in Polygraphy): ``OrtSessionLoader(path)()`` builds
the session only when called, so configs stay cheap and picklable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from calib.engines.registry import PORTABLE_BACKEND, Backend, BackendStatus, register
from calib.errors import InputError


def default_threads() -> int:
    return int(os.environ.get("CALIB_THREADS", "0")) or (os.cpu_count() or 1)


EXACT_INT8_MATMUL = ("session.x64quantprecision", "1")
"""ORT's fast x64 INT8 matrix multiply (u8s8) sums pairs of products in 16 bits that saturate on CPUs without
VNNI (SSE4.1, AVX2, AVX-512 without VNNI): a fused Q/DQ MatMul then returns wrong values, far off FP32, and
only on those machines. This entry makes ORT use its exact u8u8 kernel there (a little slower; no effect on
VNNI or ARM CPUs), so an engine's figures do not depend on the CPU it was measured on."""


def session_options(threads: int | None = None, *, exact_int8: bool = True):
    """ORT session options every calib session uses: ``threads`` intra-op threads (None: one per core),
    one inter-op thread, warnings and errors only, and the exact INT8 matrix multiply
    (:data:`EXACT_INT8_MATMUL`; ``exact_int8`` False: ORT's default, for measuring what it costs)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if exact_int8:
        opts.add_session_config_entry(*EXACT_INT8_MATMUL)
    return opts


def expose_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs the given intermediate tensors (float32)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    produced = {out for node in exposed.graph.node for out in node.output}
    produced |= {i.name for i in exposed.graph.input}
    value_types = {v.name: v.type.tensor_type.elem_type for v in exposed.graph.value_info}
    for name in names:
        if name in present:
            continue
        if name not in produced:
            raise InputError(f"tensor {name!r} is not produced by any node of the model")
        elem = value_types.get(name, onnx.TensorProto.FLOAT)
        exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        present.add(name)
    return exposed


def exposed_model_bytes(path: str | Path, names: Iterable[str], *, elem_types: Mapping[str, int] | None = None,
                        known: Iterable[str] = ()) -> bytes:
    """The serialized model at ``path`` with the given tensors appended as extra graph outputs, without
    re-serializing its weights: a second ``ModelProto`` holding only ``graph.output`` entries is appended
    to the file's bytes, and protobuf parsing merges it (repeated fields are concatenated).
    ``elem_types``: ONNX element type per name (default float32); ``known``: names already graph outputs
    (skipped). Only for models whose weights are inside the file (no external data)."""
    present = set(known)
    types = elem_types or {}
    extra = onnx.ModelProto()
    for name in dict.fromkeys(names):
        if name not in present:
            elem = types.get(name, onnx.TensorProto.FLOAT)
            extra.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return Path(path).read_bytes() + extra.SerializeToString()


def _model_bytes(model: onnx.ModelProto | str | Path | bytes) -> bytes | str:
    if isinstance(model, bytes):
        return model
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return str(model)


@dataclass(frozen=True)
class OrtSessionLoader:
    """Callable that makes an ``InferenceSession`` for a model path (or proto, or serialized bytes),
    optionally with extra intermediate outputs exposed. Graph optimisations stay at 'basic' when
    intermediates are exposed so the named tensors still exist. (Exposing tensors by serializing the
    model with them as graph outputs, as :func:`exposed_model_bytes` does, keeps them at every level:
    ORT never fuses away a graph output.) ``spinning`` False stops idle intra-op threads from
    busy-waiting (useful when another thread of the process needs the cores); None keeps ORT's default."""

    model: str | Path | onnx.ModelProto | bytes
    intermediates: tuple[str, ...] = ()
    threads: int | None = None
    optimization: str = "all"  # all | basic | disabled
    spinning: bool | None = None
    arena: bool = True  # False: no CPU memory arena (many small sessions alive at once)
    exact_int8: bool = True  # False: ORT's fast x64 INT8 matmul, which saturates without VNNI (EXACT_INT8_MATMUL)

    def __call__(self):
        level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                 "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[self.optimization]
        model = self.model
        if self.intermediates:
            if isinstance(model, bytes):
                proto = onnx.load_from_string(model)
            else:
                proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
            model = expose_outputs(proto, self.intermediates)
            if level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL:  # fusions would remove the named tensors
                level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        where = "" if isinstance(self.model, (onnx.ModelProto, bytes)) else f" {self.model}"
        try:
            return self._session(model, level, self.exact_int8)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.exact_int8:
                # ORT's S8->U8 rewrite behind the exact kernel refuses some valid Q/DQ graphs (ORT 1.32: Q/DQ
                # on scalar constants, as the all placement writes): such a model still runs, on the default
                # kernel, and says so
                with contextlib.suppress(Exception):
                    session = self._session(model, level, False)
                    warnings.warn(f"ONNX Runtime cannot load this Q/DQ graph with its exact INT8 matmul ({first}); "
                                  "it runs on the default kernel, whose INT8 sums saturate on x64 CPUs without "
                                  "VNNI", RuntimeWarning, stacklevel=2)  # no path in the text: said once
                    return session
            raise InputError(f"ONNX Runtime cannot load model{where}: {first}") from exc

    def _session(self, model, level, exact_int8: bool):
        opts = session_options(self.threads, exact_int8=exact_int8)
        opts.enable_cpu_mem_arena = self.arena
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        opts.graph_optimization_level = level
        return ort.InferenceSession(_model_bytes(model), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtEngine:
    """An :class:`~calib.engines.base.Engine` over an ONNX Runtime CPU session."""

    def __init__(self, loader: OrtSessionLoader, name: str = "onnxruntime") -> None:
        self.session = loader()
        self.name = name
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        values = self.session.run(names, {k: v for k, v in feeds.items() if k in self.input_names})
        return dict(zip(names, values))


def optimized_op_counts(model: str | Path, threads: int | None = 1) -> dict[str, int]:
    """Op types (with counts) of the graph ONNX Runtime actually executes after its full graph
    optimisation: shows whether a Q/DQ model runs integer kernels (``MatMulIntegerToFloat``,
    ``QLinearMatMul``) or falls back to float MatMuls behind DequantizeLinear."""
    with tempfile.TemporaryDirectory(prefix="calib-ort-") as tmp:
        opts = session_options(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    return dict(Counter(node.op_type for node in optimized.graph.node))


def _status() -> BackendStatus:
    return BackendStatus(True, f"ONNX Runtime {ort.__version__} (CPU)", str(ort.__version__))


register(Backend(PORTABLE_BACKEND, title="ONNX Runtime", label="ONNX Runtime Q/DQ (CPU)", status=_status,
                 load=lambda path, threads: OrtEngine(OrtSessionLoader(path, threads=threads)),
                 engine_name="onnxruntime-int8"))
