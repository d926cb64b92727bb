"""The demo's torch-free ONNX export: the graph built from safetensors weights with onnx + numpy,
checked against the separately written numpy reference and (when torch is importable) against
transformers' ``BertModel``. Fast tests use a small random BERT; `demo`-marked ones the real MiniLM-L6."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import tinymodel

from calib.demo import export as demo_export
from calib.demo import reference, sources
from calib.demo.export import BertShape, build_encoder
from calib.engines.ort import OrtSessionLoader
from calib.errors import CalibError, InputError

SMALL = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
         "vocab_size": len(tinymodel.WORDS) + 5, "hidden_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2,
         "layer_norm_eps": 1e-12}


def random_bert(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of a BertModel by transformers name (LayerNorm gains near 1)."""
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": normal(config["vocab_size"], h),
         "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], h),
         "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], h),
         "embeddings.LayerNorm.weight": 1 + normal(h, scale=0.1), "embeddings.LayerNorm.bias": normal(h, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            w[f"{p}.{part}.weight"], w[f"{p}.{part}.bias"] = normal(h, h, scale=h ** -0.5), normal(h, scale=0.05)
        w[f"{p}.intermediate.dense.weight"] = normal(inner, h, scale=h ** -0.5)
        w[f"{p}.intermediate.dense.bias"] = normal(inner, scale=0.05)
        w[f"{p}.output.dense.weight"] = normal(h, inner, scale=inner ** -0.5)
        w[f"{p}.output.dense.bias"] = normal(h, scale=0.05)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}.{ln}.weight"], w[f"{p}.{ln}.bias"] = 1 + normal(h, scale=0.1), normal(h, scale=0.1)
    return w


def padded_feeds(vocab: int, lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A right-padded batch with mixed token types: (B, max(lengths)) int64 each."""
    rng = np.random.default_rng(seed)
    b, t = len(lengths), max(lengths)
    mask = (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(5, vocab, size=(b, t)) * mask
    types = (np.arange(t)[None, :] >= np.asarray(lengths)[:, None] // 2).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = OrtSessionLoader(model.SerializeToString(), threads=1)()
    return session.run([demo_export.EMBEDDING_OUTPUT], feeds)[0]


def torch_embeddings(config: dict, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """transformers' BertModel (eager attention) + masked mean pooling + L2 norm, in torch."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    bert_config = BertConfig(**{k: v for k, v in config.items() if k != "model_type"})
    bert_config._attn_implementation = "eager"
    bert = BertModel(bert_config, add_pooling_layer=False).eval()
    missing, _ = bert.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=False)
    assert not missing
    with torch.no_grad():
        inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
        hidden = bert(**inputs).last_hidden_state
        m = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1).numpy()


# -- the graph ---------------------------------------------------------------------------------------


def test_graph_interface_and_op_patterns():
    model = build_encoder(BertShape.from_config(SMALL), random_bert(SMALL))
    graph = model.graph
    assert [i.name for i in graph.input] == list(demo_export.INPUT_NAMES)
    for value in graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    (out,) = graph.output
    assert out.name == "embedding" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 16]
    assert model.opset_import[0].version == demo_export.OPSET and model.ir_version == demo_export.IR_VERSION
    ops = Counter(n.op_type for n in graph.node)
    layers = SMALL["num_hidden_layers"]
    assert ops["MatMul"] == 8 * layers and ops["Softmax"] == layers and ops["Erf"] == layers
    assert ops["LayerNormalization"] == 2 * layers + 1 and ops["Where"] == 1
    names = {n.name for n in graph.node}
    for i in range(layers):  # module-path names that placement patterns and per-layer reports use
        for suffix in ("attention/self/query/MatMul", "attention/self/MatMul", "attention/self/Softmax",
                       "attention/self/MatMul_1", "attention/output/dense/MatMul", "intermediate/dense/MatMul",
                       "intermediate/intermediate_act_fn/Erf", "output/dense/MatMul", "output/LayerNorm/LayerNormalization"):
            assert f"/bert/encoder/layer.{i}/{suffix}" in names
    where = next(n for n in graph.node if n.op_type == "Where")
    fill = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}[where.input[2]]
    assert fill == np.finfo(np.float32).min  # the additive mask as the torch exporter wrote it
    adds = [n for n in graph.node if n.op_type == "Add" and where.output[0] in n.input]
    assert len(adds) == layers and all(n.name.endswith("attention/self/Add") for n in adds)


def test_max_positions_reads_the_position_table_not_the_position_ids_buffer():
    """The graph holds ``bert.embeddings.position_ids`` (1, 64) next to the (64, H) table: the
    model's length limit is 64, not the buffer's first dimension."""
    from calib.model import max_positions

    model = build_encoder(BertShape.from_config(SMALL), random_bert(SMALL))
    assert max_positions(model) == (64, "bert.embeddings.position_embeddings.weight")
    buffer_only = onnx.ModelProto()
    buffer_only.CopyFrom(model)
    keep = [t for t in buffer_only.graph.initializer if t.name != "bert.embeddings.position_embeddings.weight"]
    del buffer_only.graph.initializer[:]
    buffer_only.graph.initializer.extend(keep)
    assert max_positions(buffer_only) == (64, "bert.embeddings.position_ids")


@pytest.mark.parametrize("lengths", [[7, 3, 12, 1], [5]])
def test_graph_matches_numpy_reference(lengths):
    weights = random_bert(SMALL, seed=1)
    feeds = padded_feeds(SMALL["vocab_size"], lengths, seed=2)
    actual = run_onnx(build_encoder(BertShape.from_config(SMALL), weights), feeds)
    expected = reference.sentence_embeddings(SMALL, weights, **feeds)
    assert actual.shape == (len(lengths), 16) and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_text_embedding():
    weights = random_bert(SMALL, seed=3)
    model = build_encoder(BertShape.from_config(SMALL), weights)
    batch = padded_feeds(SMALL["vocab_size"], [4, 11], seed=4)
    alone = {k: v[:1, :4] for k, v in batch.items()}
    np.testing.assert_allclose(run_onnx(model, batch)[0], run_onnx(model, alone)[0], atol=1e-6)


def test_reference_detects_a_wrong_weight():
    """The check can fail: a graph built from other weights is far from the reference."""
    weights = random_bert(SMALL, seed=5)
    name = "encoder.layer.1.attention.self.value.weight"
    other = {**weights, name: weights[name] * np.float32(1.2)}
    feeds = padded_feeds(SMALL["vocab_size"], [6, 9], seed=6)
    diff = np.abs(run_onnx(build_encoder(BertShape.from_config(SMALL), other), feeds)
                  - reference.sentence_embeddings(SMALL, weights, **feeds)).max()
    assert diff > 1e-2


def test_graph_matches_transformers_bert():
    weights = random_bert(SMALL, seed=7)
    feeds = padded_feeds(SMALL["vocab_size"], [9, 2, 5], seed=8)
    expected = torch_embeddings(SMALL, weights, feeds)  # skipped when torch is not importable
    actual = run_onnx(build_encoder(BertShape.from_config(SMALL), weights), feeds)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
    ({"num_attention_heads": 3}, "not a multiple of num_attention_heads 3"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not 'bert'"),
])
def test_unsupported_config_is_named(change, message):
    with pytest.raises(InputError, match=message):
        BertShape.from_config({**SMALL, **change})
    config = dict(SMALL)
    del config["intermediate_size"]
    with pytest.raises(InputError, match="lacks 'intermediate_size'"):
        BertShape.from_config(config)


def test_missing_or_misshapen_weight_is_named():
    weights = random_bert(SMALL)
    shape = BertShape.from_config(SMALL)
    with pytest.raises(InputError, match=r"lacks the weight encoder\.layer\.1\.output\.dense\.bias"):
        build_encoder(shape, {k: v for k, v in weights.items() if k != "encoder.layer.1.output.dense.bias"})
    with pytest.raises(InputError, match=r"embeddings\.LayerNorm\.bias has shape \(8,\), expected \(16,\)"):
        build_encoder(shape, {**weights, "embeddings.LayerNorm.bias": np.zeros(8, np.float32)})


# -- export_encoder: files in, checked ONNX out, no torch ------------------------------------------------


def _checkpoint(directory: Path, config: dict, weights: dict[str, np.ndarray]) -> sources.MiniLMFiles:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({f"bert.{k}": v for k, v in weights.items()}, str(directory / "model.safetensors"))  # prefix stripped
    return sources.MiniLMFiles(directory, "unused")


def test_export_encoder_without_torch(tmp_path, monkeypatch):
    from calib.model import load_tokenizer

    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` raises ImportError
    files = _checkpoint(tmp_path / "ckpt", SMALL, random_bert(SMALL, seed=9))
    tokenizer = load_tokenizer(tinymodel.write_tokenizer(tmp_path / "tok"))
    facts = demo_export.export_encoder(files, tmp_path / "encoder.onnx", tokenizer)
    assert facts["max_abs_diff_vs_reference"] < demo_export.MAX_ABS_DIFF
    assert facts["opset"] == 17 and "onnx" in facts["exporter"] and "torch" not in facts["exporter"]
    onnx.checker.check_model(str(tmp_path / "encoder.onnx"))


def test_export_encoder_refuses_a_graph_that_disagrees(tmp_path, monkeypatch):
    from calib.model import load_tokenizer

    files = _checkpoint(tmp_path / "ckpt", SMALL, random_bert(SMALL, seed=10))
    tokenizer = load_tokenizer(tinymodel.write_tokenizer(tmp_path / "tok"))
    real = reference.sentence_embeddings
    monkeypatch.setattr(reference, "sentence_embeddings", lambda *a, **k: real(*a, **k) + 1e-3)
    with pytest.raises(CalibError, match="differs from the numpy reference by 0.001"):
        demo_export.export_encoder(files, tmp_path / "encoder.onnx", tokenizer)


def test_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot be read as safetensors"):
        demo_export.read_weights(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{ nope")
    with pytest.raises(InputError, match="cannot be read as a JSON model config"):
        demo_export.read_config(tmp_path / "config.json")


# -- the real MiniLM-L6 checkpoint ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from calib.model import load_tokenizer

    files = sources.minilm_files(verify=True)
    path = tmp_path_factory.mktemp("minilm") / "encoder.onnx"
    facts = demo_export.export_encoder(files, path, load_tokenizer(files.dir))
    return files, path, facts


@pytest.mark.demo
def test_minilm_export_matches_numpy_reference(minilm):
    files, path, facts = minilm
    assert facts["max_abs_diff_vs_reference"] < 1e-4
    config = demo_export.read_config(files.config)
    weights = demo_export.read_weights(files.weights)
    feeds = padded_feeds(config["vocab_size"], [40, 7, 128], seed=11)
    actual = OrtSessionLoader(path, threads=1)().run(["embedding"], feeds)[0]
    np.testing.assert_allclose(actual, reference.sentence_embeddings(config, weights, **feeds), atol=1e-4)


@pytest.mark.demo
def test_minilm_export_matches_transformers_bert(minilm):
    files, path, _ = minilm
    config = demo_export.read_config(files.config)
    weights = demo_export.read_weights(files.weights)
    feeds = padded_feeds(config["vocab_size"], [40, 7, 128], seed=12)
    expected = torch_embeddings(config, weights, feeds)  # skipped when torch is not importable
    actual = OrtSessionLoader(path, threads=1)().run(["embedding"], feeds)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-4)
