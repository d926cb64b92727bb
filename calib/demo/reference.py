"""A plain numpy BERT sentence encoder, the independent check of the ONNX graph the demo builds.

Written from the BERT paper and transformers' ``BertModel`` semantics, not from the graph builder:
float64 throughout, padded keys removed from the softmax by an explicit boolean mask (no additive
constant), erf from scipy. Used once per export on a few short batches, so clarity over speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def sentence_embeddings(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], input_ids: np.ndarray,
                        attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
    """Mean-pooled (over ``attention_mask``), L2-normalised last hidden states: (B, H) float64.

    ``config``: the checkpoint's ``config.json``; ``weights``: its tensors by transformers name
    (``encoder.layer.0.attention.self.query.weight`` (out, in), ...); inputs (B, T) integers.
    """
    from scipy.special import erf

    def w(name: str) -> np.ndarray:
        return np.asarray(weights[name], dtype=np.float64)

    def dense(x: np.ndarray, module: str) -> np.ndarray:
        return x @ w(f"{module}.weight").T + w(f"{module}.bias")

    eps = float(config["layer_norm_eps"])
    heads = int(config["num_attention_heads"])
    batch, length = input_ids.shape
    keep = np.asarray(attention_mask) != 0  # (B, T)

    def rows(table: str, ids: np.ndarray) -> np.ndarray:  # look up first: the word table is large
        return np.asarray(weights[table])[ids].astype(np.float64)

    x = (rows("embeddings.word_embeddings.weight", input_ids)
         + rows("embeddings.token_type_embeddings.weight", token_type_ids)
         + rows("embeddings.position_embeddings.weight", np.arange(length))[None])
    x = _layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    hidden = x.shape[-1]
    size = hidden // heads

    def per_head(t: np.ndarray) -> np.ndarray:  # (B, T, H) -> (B, heads, T, size)
        return t.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        q = per_head(dense(x, f"{p}.attention.self.query"))
        k = per_head(dense(x, f"{p}.attention.self.key"))
        v = per_head(dense(x, f"{p}.attention.self.value"))
        scores = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(size)
        visible = np.broadcast_to(keep[:, None, None, :], scores.shape)
        top = np.max(np.where(visible, scores, -np.inf), axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)  # a row with no visible key: uniform below
        exp = np.where(visible, np.exp(scores - top), 0.0)
        total = exp.sum(axis=-1, keepdims=True)
        probs = np.where(total > 0, exp / np.where(total > 0, total, 1.0), 1.0 / length)
        context = np.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(x + dense(context, f"{p}.attention.output.dense"),
                        w(f"{p}.attention.output.LayerNorm.weight"), w(f"{p}.attention.output.LayerNorm.bias"), eps)
        inner = dense(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
        x = _layer_norm(x + dense(inner, f"{p}.output.dense"),
                        w(f"{p}.output.LayerNorm.weight"), w(f"{p}.output.LayerNorm.bias"), eps)

    weights_t = keep[..., None].astype(np.float64)  # (B, T, 1)
    pooled = (x * weights_t).sum(axis=1) / np.maximum(weights_t.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
