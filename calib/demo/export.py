"""MiniLM-L6 to ONNX with CPU torch, and a linear head appended to the exported graph.

The encoder graph (``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) int64 →
``embedding`` (B, 384) float32, mean-pooled over real tokens and L2-normalised) is exported once
and reused by every task; each task's classifier is that graph plus ``MatMul`` + ``Add`` producing
``logits`` (B, C).

Exporter choice (torch 2.13): the TorchScript exporter (``dynamo=False``) takes ~3 s, keeps
module-path node names (``/bert/encoder/layer.0/attention/self/MatMul``) that placement patterns and
per-layer reports rely on, and matches torch to ~1e-7. The torch.export-based default takes ~13 s,
names nodes ``node_add_160`` and, for this model, emitted a graph ONNX Runtime rejects (duplicate
value name). The attention mask is kept exactly as exported: ``Where(mask, 0, finfo(float32).min)``
added to the scores of every layer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calib.demo.sources import MiniLMFiles
from calib.errors import BackendUnavailableError, CalibError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
OPSET = 17
HIDDEN = 384
MAX_ABS_DIFF = 1e-4  # ONNX Runtime vs torch, on L2-normalised embeddings

_CHECK_TEXTS = (
    "The film is a triumph.",
    "Shares in the bank fell sharply after the minister's statement on interest rates and growth.",
    "ok",
    ("A slow, meandering story whose actors never find the right tone, though the music is lovely "
     "and the last scene almost redeems the two hours before it."),
)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            "exporting the demo model needs CPU torch, which is not installed: pip install torch==2.13.0"
        ) from exc
    return torch


def _encoder_module(files: MiniLMFiles) -> Any:
    """A torch module: BERT (eager attention) + masked mean pooling + L2 normalisation."""
    torch = _import_torch()
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(files.config))
    config._attn_implementation = "eager"  # plain MatMul/Softmax graph, no fused SDPA op
    bert = BertModel(config, add_pooling_layer=False)
    state = load_file(str(files.weights))
    missing, _unexpected = bert.load_state_dict(state, strict=False)  # unexpected: pooler, position_ids
    if missing:
        raise CalibError(f"{files.weights} lacks encoder weights {missing[:3]}; reinstall the model package")

    class SentenceEncoder(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # (B, T) int64 each
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)  # (B, H)

    return SentenceEncoder().eval()


def _check_feeds(tokenizer: Any) -> list[dict[str, np.ndarray]]:
    """Padded batches of different shapes from the export's dummy input (dynamic axes must hold)."""
    enc = tokenizer(list(_CHECK_TEXTS), padding=True, return_tensors="np", return_token_type_ids=True)
    full = {name: enc[name].astype(np.int64) for name in INPUT_NAMES}
    single = {name: value[2:3, : int(enc["attention_mask"][2].sum())] for name, value in full.items()}
    return [full, single]


def export_encoder(files: MiniLMFiles, out_path: Path, tokenizer: Any, *, threads: int = 1) -> dict[str, Any]:
    """Export the sentence encoder to ``out_path`` and check it against torch.

    Returns facts for the model card: exporter, opset, torch version, max abs difference, seconds.
    Raises :class:`CalibError` if ONNX Runtime and torch disagree by more than ``MAX_ABS_DIFF``.
    """
    torch = _import_torch()
    import warnings

    from calib.engines.ort import OrtSessionLoader

    start = time.monotonic()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        module = _encoder_module(files)
        dummy = tuple(torch.tensor(v) for v in _check_feeds(tokenizer)[0].values())
        dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        dynamic[EMBEDDING_OUTPUT] = {0: "batch"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
            torch.onnx.export(
                module, dummy, str(out_path), input_names=list(INPUT_NAMES), output_names=[EMBEDDING_OUTPUT],
                opset_version=OPSET, dynamo=False, dynamic_axes=dynamic, do_constant_folding=True,
            )
        export_seconds = time.monotonic() - start
        session = OrtSessionLoader(out_path, threads=threads)()
        worst = 0.0
        for feeds in _check_feeds(tokenizer):
            with torch.no_grad():
                expected = module(*(torch.tensor(feeds[n]) for n in INPUT_NAMES)).numpy()
            actual = session.run([EMBEDDING_OUTPUT], feeds)[0]
            worst = max(worst, float(np.abs(actual - expected).max()))
    finally:
        torch.set_num_threads(previous_threads)
    if not worst <= MAX_ABS_DIFF:
        raise CalibError(f"exported encoder {out_path} differs from torch by {worst:.3g} (> {MAX_ABS_DIFF})")
    return {
        "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
        "opset": OPSET, "max_abs_diff_vs_torch": worst,
        "export_seconds": round(export_seconds, 2), "seconds": round(time.monotonic() - start, 2),
    }


def with_head(encoder: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """The encoder graph plus ``logits = embedding @ weight.T + bias``.

    ``weight`` (C, H) and ``bias`` (C,) float32. Outputs: ``logits`` (batch, C), ``embedding`` (batch, H).
    """
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    n_classes, hidden = weight.shape
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(weight.T), "head.weight"),  # (H, C)
        numpy_helper.from_array(bias, "head.bias"),
    ])
    graph.node.extend([
        helper.make_node("MatMul", [EMBEDDING_OUTPUT, "head.weight"], ["/head/MatMul_output_0"], name="/head/MatMul"),
        helper.make_node("Add", ["/head/MatMul_output_0", "head.bias"], [LOGITS_OUTPUT], name="/head/Add"),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["batch", n_classes]),
        helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", hidden]),
    ])
    graph.name = "minilm_l6_classifier"
    onnx.checker.check_model(model)
    return model
