"""A tiny BERT-like text classifier built with onnx.helper, plus a matching WordPiece tokenizer.

It has the op patterns of the real encoder that matter for INT8 work: embeddings + LayerNorm,
self-attention whose mask is ``Where(mask, 0, -inf)`` added to the scores, Softmax, an Erf-GELU
FFN, residual Adds, mean pooling, L2 normalisation and a linear head. Shapes: inputs (B, T) int64;
outputs ``logits`` (B, C) and ``embedding`` (B, H).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WORDS = (
    ["the", "a", "movie", "film", "was", "great", "good", "bad", "awful", "boring", "fun", "plot", "story", "actor", "actors", "scene", "scenes", "market", "shares", "bank", "profit", "growth", "economy", "team", "match", "goal", "win", "lost", "season", "player", "players", "music", "band", "album", "song", "election", "minister", "party", "vote", "government", "phone", "software", "internet", "and", "or", "but", "not", "very", "really", "quite", "too", "of", "to", "in", "on", "with", "for", "is", "are", "it", "this", "that"]
)
LABELS = ("neg", "pos")


def write_tokenizer(directory: Path) -> Path:
    """Write a BERT WordPiece tokenizer (tokenizer.json + vocab.txt) into ``directory``."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(str(directory))
    return directory


def build_model(vocab_size: int = len(WORDS) + 5, hidden: int = 16, heads: int = 2, ffn: int = 32,
                layers: int = 2, classes: int = len(LABELS), max_pos: int = 512, seed: int = 0,
                encoder_only: bool = False) -> onnx.ModelProto:
    """The tiny classifier, or with ``encoder_only`` an encoder without a head whose outputs are
    ``last_hidden_state`` (B, T, H) float, ``sentence_embedding`` (B, H) float (mean-pooled, L2-normed)
    and ``token_ids`` (B, T) int64 (a pass-through of ``input_ids``), as sentence-embedding exports have."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=name or output.replace("_out", ""), **attrs))
        return output

    d = hidden // heads
    c("one_i", np.array([1], np.int64)); c("zero_i", np.array([0], np.int64))
    c("zero_f", np.array(0.0, np.float32)); c("ninf_f", np.array(-np.inf, np.float32))
    c("half", np.array(0.5, np.float32)); c("one_f", np.array(1.0, np.float32))
    c("sqrt2", np.array(np.sqrt(2.0), np.float32)); c("scale", np.array(1 / np.sqrt(d), np.float32))
    c("shape_heads", np.array([0, 0, heads, d], np.int64)); c("shape_merge", np.array([0, 0, hidden], np.int64))
    c("axes_12", np.array([1, 2], np.int64)); c("axes_2", np.array([2], np.int64)); c("axes_1", np.array([1], np.int64))

    # embeddings
    tok = node("Gather", [w("word_embeddings", (vocab_size, hidden)), "input_ids"], "embeddings/word_out", axis=0)
    typ = node("Gather", [w("token_type_embeddings", (2, hidden)), "token_type_ids"], "embeddings/type_out", axis=0)
    seq = node("Shape", ["input_ids"], "embeddings/shape_out")
    t = node("Gather", [seq, "one_i"], "embeddings/seqlen_out", axis=0)
    pos = node("Slice", [w("position_embeddings", (max_pos, hidden)), "zero_i", t], "embeddings/pos_out")
    x = node("Add", [tok, typ], "embeddings/add0_out")
    x = node("Add", [x, pos], "embeddings/add1_out")
    x = node("LayerNormalization", [x, c("emb_ln_g", np.ones(hidden, np.float32)), c("emb_ln_b", np.zeros(hidden, np.float32))],
             "embeddings/LayerNorm_out", axis=-1, epsilon=1e-12)
    # additive attention mask: (B, 1, 1, T) with 0 for tokens and -inf for padding
    m = node("Cast", ["attention_mask"], "mask/bool_out", to=TensorProto.BOOL)
    m = node("Unsqueeze", [m, "axes_12"], "mask/unsq_out")
    add_mask = node("Where", [m, "zero_f", "ninf_f"], "mask/where_out")

    def dense(inp: str, prefix: str, n_in: int, n_out: int) -> str:
        y = node("MatMul", [inp, w(f"{prefix}.weight", (n_in, n_out), 1 / np.sqrt(n_in))], f"{prefix}/MatMul_out")
        return node("Add", [y, w(f"{prefix}.bias", (n_out,), 0.05)], f"{prefix}/Add_out")

    for i in range(layers):
        p = f"layer.{i}"
        q = node("Reshape", [dense(x, f"{p}/attention/query", hidden, hidden), "shape_heads"], f"{p}/attention/q_reshape_out")
        k = node("Reshape", [dense(x, f"{p}/attention/key", hidden, hidden), "shape_heads"], f"{p}/attention/k_reshape_out")
        v = node("Reshape", [dense(x, f"{p}/attention/value", hidden, hidden), "shape_heads"], f"{p}/attention/v_reshape_out")
        q = node("Transpose", [q], f"{p}/attention/q_t_out", perm=[0, 2, 1, 3])
        k = node("Transpose", [k], f"{p}/attention/k_t_out", perm=[0, 2, 3, 1])
        v = node("Transpose", [v], f"{p}/attention/v_t_out", perm=[0, 2, 1, 3])
        s = node("MatMul", [q, k], f"{p}/attention/scores/MatMul_out")
        s = node("Mul", [s, "scale"], f"{p}/attention/scores/Mul_out")
        s = node("Add", [s, add_mask], f"{p}/attention/scores/Add_out")
        a = node("Softmax", [s], f"{p}/attention/Softmax_out", axis=-1)
        o = node("MatMul", [a, v], f"{p}/attention/context/MatMul_out")
        o = node("Transpose", [o], f"{p}/attention/context_t_out", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, "shape_merge"], f"{p}/attention/context_merge_out")
        o = dense(o, f"{p}/attention/output/dense", hidden, hidden)
        o = node("Add", [o, x], f"{p}/attention/output/residual_out")
        x = node("LayerNormalization", [o, c(f"{p}.ln1_g", np.ones(hidden, np.float32)), c(f"{p}.ln1_b", np.zeros(hidden, np.float32))],
                 f"{p}/attention/output/LayerNorm_out", axis=-1, epsilon=1e-12)
        h = dense(x, f"{p}/intermediate/dense", hidden, ffn)
        g = node("Div", [h, "sqrt2"], f"{p}/intermediate/gelu/Div_out")
        g = node("Erf", [g], f"{p}/intermediate/gelu/Erf_out")
        g = node("Add", [g, "one_f"], f"{p}/intermediate/gelu/Add_out")
        g = node("Mul", [h, g], f"{p}/intermediate/gelu/Mul_out")
        g = node("Mul", [g, "half"], f"{p}/intermediate/gelu/Mul_1_out")
        o = dense(g, f"{p}/output/dense", ffn, hidden)
        o = node("Add", [o, x], f"{p}/output/residual_out")
        x = node("LayerNormalization", [o, c(f"{p}.ln2_g", np.ones(hidden, np.float32)), c(f"{p}.ln2_b", np.zeros(hidden, np.float32))],
                 f"{p}/output/LayerNorm_out", axis=-1, epsilon=1e-12)
    # mean pooling over real tokens, L2 norm, head
    mf = node("Cast", ["attention_mask"], "pool/mask_f_out", to=TensorProto.FLOAT)
    mf3 = node("Unsqueeze", [mf, "axes_2"], "pool/mask_unsq_out")
    xs = node("Mul", [x, mf3], "pool/masked_out")
    total = node("ReduceSum", [xs, "axes_1"], "pool/sum_out", keepdims=0)
    count = node("ReduceSum", [mf3, "axes_1"], "pool/count_out", keepdims=0)
    mean = node("Div", [total, count], "pool/mean_out")
    sq = node("Mul", [mean, mean], "pool/sq_out")
    norm = node("ReduceSum", [sq, "zero_i"], "pool/normsq_out", keepdims=1) if False else node(
        "ReduceSum", [sq, "axes_1"], "pool/normsq_out", keepdims=1)
    norm = node("Sqrt", [norm], "pool/norm_out")
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    if encoder_only:
        nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="pool/normalize"))
        nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="encoder/output"))
        nodes.append(helper.make_node("Identity", ["input_ids"], ["token_ids"], name="encoder/token_ids"))
        outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden]),
                helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden]),
                helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch", "sequence"])]
        model = helper.make_model(helper.make_graph(nodes, "tiny_encoder", ids, outs, inits),
                                  opset_imports=[helper.make_opsetid("", 17)], producer_name="calib-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"], name="pool/normalize"))
    nodes.append(helper.make_node("MatMul", ["embedding", w("classifier.weight", (hidden, classes), 2.0)], ["classifier/MatMul_out"], name="classifier/MatMul"))
    nodes.append(helper.make_node("Add", ["classifier/MatMul_out", w("classifier.bias", (classes,), 0.1)], ["logits"], name="classifier/Add"))

    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(nodes, "tiny_bert", ids, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="calib-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_texts(n: int, seed: int = 0, min_words: int = 2, max_words: int = 60) -> tuple[list[str], list[int]]:
    """Random texts over the tiny vocabulary with a log-uniform spread of lengths, and labels."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        k = int(np.exp(rng.uniform(np.log(min_words), np.log(max_words))))
        texts.append(" ".join(rng.choice(WORDS, size=k)))
        labels.append(int(rng.integers(0, len(LABELS))))
    return texts, labels
