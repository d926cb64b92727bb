"""MiniLM-L6 to ONNX with onnx + numpy (no torch), and a linear head appended to the graph.

The encoder graph (``input_ids``, ``attention_mask``, ``token_type_ids`` (batch, sequence) int64 →
``embedding`` (batch, 384) float32, mean-pooled over real tokens and L2-normalised) is built once
from the checkpoint's ``config.json`` and ``model.safetensors`` and reused by every task; each
task's classifier is that graph plus ``MatMul`` + ``Add`` producing ``logits`` (batch, C).

The graph is the one the TorchScript exporter used to produce for transformers' ``BertModel`` with
eager attention, op for op where it matters for INT8 work, and with its node names
(``/bert/encoder/layer.0/attention/self/query/MatMul``), which placement patterns, the sensitivity
blocks and per-layer reports rely on:

- embeddings: word + token type + position ``Gather`` s, ``Add``, ``LayerNormalization``;
- attention mask: ``Where(mask, 0, finfo(float32).min)`` (batch, 1, 1, sequence), added to the
  scaled ``Q·Kᵀ`` scores of every layer before ``Softmax``;
- 6 post-LN layers, 8 ``MatMul`` each (Q, K, V, ``Q·Kᵀ``, ``P·V``, attention output, FFN in, FFN out),
  GELU as ``x · (1 + erf(x / √2)) · 0.5``;
- mean pooling with the mask (count clipped at 1e-9), ``ReduceL2`` norm (clipped at 1e-12).

Shape-computing subgraphs are simpler than the exporter's: head split and merge use constant
``Reshape`` shapes with 0 (copy) for batch and sequence. Correctness is checked at export time
against :mod:`calib.demo.reference`, a separately written float64 numpy forward pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import SafetensorError
from safetensors.numpy import load_file

from calib.demo import reference  # looked up at call time: tests substitute a disagreeing reference
from calib.demo.sources import MiniLMFiles
from calib.engines.ort import OrtSessionLoader
from calib.errors import CalibError, InputError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
OPSET = 17
IR_VERSION = 8  # what ONNX Runtime 1.16+ and TensorRT 8.6+ read
MAX_ABS_DIFF = 1e-4  # ONNX Runtime vs the numpy reference, on L2-normalised embeddings
MASK_FILL = float(np.finfo(np.float32).min)  # added to the scores of padded positions
POOL_MIN_COUNT = 1e-9
NORM_MIN = 1e-12
EXPORTER = "calib.demo.export (onnx + numpy, from model.safetensors)"

_CHECK_TEXTS = (
    "The film is a triumph.",
    "Shares in the bank fell sharply after the minister's statement on interest rates and growth.",
    "ok",
    ("A slow, meandering story whose actors never find the right tone, though the music is lovely "
     "and the last scene almost redeems the two hours before it."),
)


@dataclass(frozen=True)
class BertShape:
    """The hyperparameters of a BERT encoder (``config.json`` of a transformers ``BertModel``)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config.json") -> BertShape:
        """Read and check a BERT config: absolute positions, erf GELU, heads dividing the width."""
        if config.get("model_type", "bert") != "bert":
            raise InputError(f"{source}: model_type {config.get('model_type')!r} is not 'bert'")
        if config.get("hidden_act", "gelu") != "gelu":
            raise InputError(f"{source}: hidden_act {config.get('hidden_act')!r} is not supported (only 'gelu')")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise InputError(f"{source}: position_embedding_type {config.get('position_embedding_type')!r} "
                             "is not supported (only 'absolute')")
        try:
            shape = cls(**{name: config[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise InputError(f"{source} lacks {exc.args[0]!r}") from exc
        if shape.hidden_size % shape.num_attention_heads:
            raise InputError(f"{source}: hidden_size {shape.hidden_size} is not a multiple of "
                             f"num_attention_heads {shape.num_attention_heads}")
        return shape


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read as a JSON model config: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object")
    return config


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file by their transformers names, without a ``bert.`` prefix."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path} cannot be read as safetensors: {exc}") from exc
    return {name.removeprefix("bert."): value for name, value in tensors.items()}


class _Graph:
    """Nodes and initializers of a graph under construction; node outputs are ``<name>_output_0``."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def tensor(self, name: str, value: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs: Any) -> str:
        output = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def build_encoder(shape: BertShape, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The sentence-encoder graph of a BERT checkpoint (see the module docstring).

    ``weights``: float32 arrays by transformers name (``encoder.layer.0.attention.self.query.weight``
    (out, in), ...). Raises :class:`InputError` when a weight is missing or has the wrong shape.
    """
    h, heads, d = shape.hidden_size, shape.num_attention_heads, shape.head_size
    expected = {
        "embeddings.word_embeddings.weight": (shape.vocab_size, h),
        "embeddings.position_embeddings.weight": (shape.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (shape.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(shape.num_hidden_layers):
        p = f"encoder.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            expected |= {f"{p}.{part}.weight": (h, h), f"{p}.{part}.bias": (h,)}
        expected |= {f"{p}.intermediate.dense.weight": (shape.intermediate_size, h),
                     f"{p}.intermediate.dense.bias": (shape.intermediate_size,),
                     f"{p}.output.dense.weight": (h, shape.intermediate_size), f"{p}.output.dense.bias": (h,)}
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            expected |= {f"{p}.{ln}.weight": (h,), f"{p}.{ln}.bias": (h,)}
    for name, dims in expected.items():
        if name not in weights:
            raise InputError(f"the checkpoint lacks the weight {name}")
        if tuple(weights[name].shape) != dims:
            raise InputError(f"weight {name} has shape {tuple(weights[name].shape)}, expected {dims}")

    g = _Graph()

    def weight(name: str, transpose: bool = False) -> str:
        value = np.asarray(weights[name], dtype=np.float32)
        return g.tensor(f"bert.{name}_t" if transpose else f"bert.{name}", value.T if transpose else value)

    def const(name: str, value: Any, dtype: Any) -> str:
        return g.tensor(name, np.asarray(value, dtype=dtype))

    def linear(x: str, prefix: str, module: str) -> str:
        """``x @ W.T + b`` of a transformers Linear ``prefix`` (weights named ``module``)."""
        y = g.node("MatMul", [x, weight(f"{module}.weight", transpose=True)], f"{prefix}/MatMul")
        return g.node("Add", [weight(f"{module}.bias"), y], f"{prefix}/Add")

    def layer_norm(x: str, prefix: str, module: str) -> str:
        return g.node("LayerNormalization", [x, weight(f"{module}.weight"), weight(f"{module}.bias")],
                      f"{prefix}/LayerNormalization", axis=-1, epsilon=float(shape.layer_norm_eps))

    # embeddings: word + token type + position, LayerNorm
    e = "/bert/embeddings"
    position_ids = const("bert.embeddings.position_ids", np.arange(shape.max_position_embeddings)[None, :], np.int64)
    zero, one = const("/bert/const/zero", [0], np.int64), const("/bert/const/one", [1], np.int64)
    seq_len = g.node("Gather", [g.node("Shape", ["input_ids"], f"{e}/Shape"), one], f"{e}/Gather", axis=0)
    positions = g.node("Slice", [position_ids, zero, seq_len, one], f"{e}/Slice")  # (1, sequence)
    word = g.node("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"], f"{e}/word_embeddings/Gather")
    token_type = g.node("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"],
                        f"{e}/token_type_embeddings/Gather")
    x = g.node("Add", [word, token_type], f"{e}/Add")
    position = g.node("Gather", [weight("embeddings.position_embeddings.weight"), positions],
                      f"{e}/position_embeddings/Gather")
    x = g.node("Add", [x, position], f"{e}/Add_1")
    x = layer_norm(x, f"{e}/LayerNorm", "embeddings.LayerNorm")

    # additive attention mask (batch, 1, 1, sequence): 0 for tokens, float32 min for padding
    keep = g.node("Cast", ["attention_mask"], "/bert/Cast", to=TensorProto.BOOL)
    keep = g.node("Unsqueeze", [keep, const("/bert/const/axes_1_2", [1, 2], np.int64)], "/bert/Unsqueeze")
    mask = g.node("Where", [keep, const("/bert/const/mask_keep", 0.0, np.float32),
                            const("/bert/const/mask_fill", MASK_FILL, np.float32)], "/bert/Where")

    split_heads = const("/bert/const/split_heads", [0, 0, heads, d], np.int64)
    merge_heads = const("/bert/const/merge_heads", [0, 0, h], np.int64)
    scale = const("/bert/const/attention_scale", 1.0 / np.sqrt(d), np.float32)
    sqrt2, one_f, half = (const("/bert/const/sqrt2", np.sqrt(2.0), np.float32),
                          const("/bert/const/one_f", 1.0, np.float32), const("/bert/const/half", 0.5, np.float32))
    for i in range(shape.num_hidden_layers):
        p, w = f"/bert/encoder/layer.{i}", f"encoder.layer.{i}"
        a = f"{p}/attention/self"
        q = linear(x, f"{a}/query", f"{w}.attention.self.query")
        k = linear(x, f"{a}/key", f"{w}.attention.self.key")
        v = linear(x, f"{a}/value", f"{w}.attention.self.value")
        q = g.node("Transpose", [g.node("Reshape", [q, split_heads], f"{a}/Reshape")], f"{a}/Transpose",
                   perm=[0, 2, 1, 3])  # (batch, heads, sequence, d)
        k = g.node("Reshape", [k, split_heads], f"{a}/Reshape_1")
        v = g.node("Reshape", [v, split_heads], f"{a}/Reshape_2")
        v = g.node("Transpose", [v], f"{a}/Transpose_1", perm=[0, 2, 1, 3])  # (batch, heads, sequence, d)
        k = g.node("Transpose", [k], f"{a}/Transpose_2", perm=[0, 2, 3, 1])  # (batch, heads, d, sequence)
        scores = g.node("MatMul", [q, k], f"{a}/MatMul")
        scores = g.node("Mul", [scores, scale], f"{a}/Mul")
        scores = g.node("Add", [scores, mask], f"{a}/Add")
        probs = g.node("Softmax", [scores], f"{a}/Softmax", axis=-1)
        context = g.node("MatMul", [probs, v], f"{a}/MatMul_1")
        context = g.node("Transpose", [context], f"{a}/Transpose_3", perm=[0, 2, 1, 3])
        context = g.node("Reshape", [context, merge_heads], f"{a}/Reshape_3")  # (batch, sequence, hidden)
        o = linear(context, f"{p}/attention/output/dense", f"{w}.attention.output.dense")
        o = g.node("Add", [o, x], f"{p}/attention/output/Add")
        x = layer_norm(o, f"{p}/attention/output/LayerNorm", f"{w}.attention.output.LayerNorm")
        f = linear(x, f"{p}/intermediate/dense", f"{w}.intermediate.dense")
        act = f"{p}/intermediate/intermediate_act_fn"
        gelu = g.node("Erf", [g.node("Div", [f, sqrt2], f"{act}/Div")], f"{act}/Erf")
        gelu = g.node("Add", [gelu, one_f], f"{act}/Add")
        gelu = g.node("Mul", [f, gelu], f"{act}/Mul")
        gelu = g.node("Mul", [gelu, half], f"{act}/Mul_1")
        o = linear(gelu, f"{p}/output/dense", f"{w}.output.dense")
        o = g.node("Add", [o, x], f"{p}/output/Add")
        x = layer_norm(o, f"{p}/output/LayerNorm", f"{w}.output.LayerNorm")

    # mean pooling over real tokens, then L2 normalisation
    weights_f = g.node("Cast", [g.node("Unsqueeze", ["attention_mask", const("/const/axes_2", [2], np.int64)],
                                       "/Unsqueeze")], "/Cast", to=TensorProto.FLOAT)  # (batch, sequence, 1)
    axes_1 = const("/const/axes_1", [1], np.int64)
    total = g.node("ReduceSum", [g.node("Mul", [x, weights_f], "/Mul"), axes_1], "/ReduceSum", keepdims=0)
    count = g.node("ReduceSum", [weights_f, axes_1], "/ReduceSum_1", keepdims=0)
    count = g.node("Clip", [count, const("/const/min_count", POOL_MIN_COUNT, np.float32)], "/Clip")
    mean = g.node("Div", [total, count], "/Div")  # (batch, hidden)
    norm = g.node("ReduceL2", [mean], "/ReduceL2", axes=[1], keepdims=1)
    norm = g.node("Clip", [norm, const("/const/min_norm", NORM_MIN, np.float32)], "/Clip_1")
    g.node("Div", [mean, norm], "/Div_1", output=EMBEDDING_OUTPUT)

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUT_NAMES]
    outputs = [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", h])]
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="calib",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _check_feeds(tokenizer: Any) -> list[dict[str, np.ndarray]]:
    """Padded batches of different shapes (batch and sequence axes must stay dynamic)."""
    enc = tokenizer(list(_CHECK_TEXTS), padding=True, return_tensors="np", return_token_type_ids=True)
    full = {name: enc[name].astype(np.int64) for name in INPUT_NAMES}
    single = {name: value[2:3, : int(enc["attention_mask"][2].sum())] for name, value in full.items()}
    return [full, single]


def export_encoder(files: MiniLMFiles, out_path: Path, tokenizer: Any, *, threads: int = 1) -> dict[str, Any]:
    """Build the sentence encoder into ``out_path`` and check it against the numpy reference.

    Returns facts for the model card: exporter, opset, max abs difference, seconds. Raises
    :class:`CalibError` if ONNX Runtime and the reference disagree by more than ``MAX_ABS_DIFF``.
    """
    start = time.monotonic()
    config = read_config(files.config)
    weights = read_weights(files.weights)
    model = build_encoder(BertShape.from_config(config, str(files.config)), weights)
    onnx.save(model, str(out_path))
    del model
    export_seconds = time.monotonic() - start
    session = OrtSessionLoader(out_path, threads=threads)()
    worst = 0.0
    for feeds in _check_feeds(tokenizer):
        expected = reference.sentence_embeddings(config, weights, **feeds)
        actual = session.run([EMBEDDING_OUTPUT], feeds)[0]
        worst = max(worst, float(np.abs(actual - expected).max()))
    if not worst <= MAX_ABS_DIFF:
        raise CalibError(f"built encoder {out_path} differs from the numpy reference by {worst:.3g} (> {MAX_ABS_DIFF})")
    return {
        "exporter": f"{EXPORTER}, onnx {onnx.__version__}", "opset": OPSET,
        "reference": "calib.demo.reference (float64 numpy BERT forward pass)",
        "max_abs_diff_vs_reference": worst,
        "export_seconds": round(export_seconds, 2), "seconds": round(time.monotonic() - start, 2),
    }
