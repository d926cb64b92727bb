"""Per-channel input statistics of weighted MatMuls, collected in the same single statistics pass."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tinymodel

from calib.batching import encode, iter_batches
from calib.engines.ort import OrtSessionLoader, expose_outputs
from calib.errors import InputError
from calib.model import load_tokenizer
from calib.placement import weighted_matmuls
from calib.stats import ActivationStats, StatsConfig, collect_statistics

LN = "embeddings/LayerNorm_out"
GELU = "layer.0/intermediate/gelu/Mul_1_out"


@pytest.fixture(scope="module")
def encoded(tiny_spec):
    texts, _ = tinymodel.make_texts(70, seed=11)
    return encode(load_tokenizer(tiny_spec.tokenizer_dir), texts, max_length=tiny_spec.max_length)


@pytest.fixture(scope="module")
def stats(tiny_spec, encoded):
    return collect_statistics(tiny_spec, encoded, config=StatsConfig(batch_size=16, sample_rows=40))


def _real_rows(tiny_spec, encoded, name: str) -> np.ndarray:
    """Every real token vector of ``name``, running texts one at a time and dropping padded positions."""
    session = OrtSessionLoader(expose_outputs(onnx.load(str(tiny_spec.onnx_path)), [name]))()
    rows = []
    for batch in iter_batches(encoded, tiny_spec.input_dtypes, 1):
        value = session.run([name], batch.feeds)[0]
        rows.append(value[batch.mask])
    return np.concatenate(rows)


def test_weighted_matmul_inputs_found(tiny_model_path):
    found = weighted_matmuls(onnx.load(str(tiny_model_path)))
    assert [m.node for m in found[LN]] == [f"layer.0/attention/{p}/MatMul" for p in ("query", "key", "value")]
    assert [m.weight for m in found[GELU]] == ["layer.0/output/dense.weight"]
    assert "layer.0/attention/Softmax_out" not in found  # activation x activation MatMuls have no weight
    assert "embedding" in found  # the classifier head


@pytest.mark.parametrize("name", [LN, GELU])
def test_channel_absmax_and_mean_are_exact_over_real_positions(tiny_spec, encoded, stats, name):
    rows = _real_rows(tiny_spec, encoded, name)
    ch = stats.channels(name)
    assert ch.rows == len(rows) == int(encoded.lengths.sum())
    np.testing.assert_allclose(ch.absmax, np.abs(rows).max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ch.mean, rows.astype(np.float64).mean(axis=0), rtol=1e-4, atol=1e-6)
    assert ch.sample.shape == (40, rows.shape[1])
    # every sampled vector is a real token vector (padding never enters the sample)
    dist = np.abs(ch.sample[:, None, :] - rows[None, :, :]).max(axis=2).min(axis=1)
    assert dist.max() < 1e-4
    assert stats[name].absmax == pytest.approx(ch.absmax.max(), rel=1e-6)


def test_channel_stats_only_for_weighted_matmul_inputs_and_independent_of_order(tiny_spec, encoded, stats):
    with_channels = {t.name for t in stats.tensors if t.channels is not None}
    assert with_channels == set(weighted_matmuls(onnx.load(str(tiny_spec.onnx_path)))) & set(stats.names)
    with pytest.raises(InputError, match="not the input of a weighted MatMul"):
        stats.channels("layer.0/attention/Softmax_out")
    shuffled = collect_statistics(tiny_spec, encoded, [LN], config=StatsConfig(batch_size=7, sample_rows=40),
                                  order="shuffle", seed=3)
    np.testing.assert_array_equal(shuffled.channels(LN).absmax, stats.channels(LN).absmax)
    np.testing.assert_allclose(shuffled.channels(LN).mean, stats.channels(LN).mean, rtol=1e-5, atol=1e-6)
    again = collect_statistics(tiny_spec, encoded, [LN], config=StatsConfig(batch_size=16, sample_rows=40))
    np.testing.assert_array_equal(again.channels(LN).sample, stats.channels(LN).sample)  # deterministic


def test_round_trip_and_older_runs_say_how_to_recompute(stats, tmp_path):
    stats.save(tmp_path)
    back = ActivationStats.load(tmp_path)
    for a, b in zip(stats.tensors, back.tensors):
        assert (a.channels is None) == (b.channels is None)
        if a.channels is not None:
            np.testing.assert_array_equal(a.channels.absmax, b.channels.absmax)
            np.testing.assert_array_equal(a.channels.mean, b.channels.mean)
            np.testing.assert_array_equal(a.channels.sample, b.channels.sample)
            assert a.channels.rows == b.channels.rows
    # a run written before per-channel statistics existed
    with np.load(tmp_path / "stats.npz") as z:
        old = {k: z[k] for k in ("hist", "hist_range", "min", "max", "count", "nan", "posinf", "neginf")}
    np.savez_compressed(tmp_path / "stats.npz", **old)
    meta = json.loads((tmp_path / "stats.json").read_text())
    meta.pop("has_channels")
    (tmp_path / "stats.json").write_text(json.dumps(meta))
    older = ActivationStats.load(tmp_path)
    assert np.array_equal(older[LN].hist, stats[LN].hist)
    with pytest.raises(InputError, match="calib calibrate --calibration-set") as info:
        older.channels(LN)
    assert "\n" not in str(info.value)


def test_no_channel_stats_when_disabled(tiny_spec, encoded):
    st = collect_statistics(tiny_spec, encoded, [LN], config=StatsConfig(channel_stats=False))
    assert st[LN].channels is None and not st.has_channels
