"""Statistics pass: axis roles, padding masks, exact streaming histograms, order independence."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tinymodel

from calib.batching import encode
from calib.errors import InputError
from calib.methods import compute_ranges
from calib.model import load_tokenizer
from calib.stats import (
    ActivationStats,
    StatsConfig,
    classify_axes,
    collect_statistics,
    default_tensors,
    position_mask,
    tensor_stats_from_arrays,
)


@pytest.fixture(scope="module")
def encoded(tiny_spec):
    texts, _ = tinymodel.make_texts(90, seed=5)
    return encode(load_tokenizer(tiny_spec.tokenizer_dir), texts, max_length=tiny_spec.max_length)


@pytest.fixture(scope="module")
def stats(tiny_spec, encoded):
    return collect_statistics(tiny_spec, encoded, batch_size=16)


def test_classify_axes_even_when_hidden_size_equals_a_probe_length():
    assert classify_axes((3, 11, 11), (5, 13, 11)) == ("batch", "seq", "fixed")
    assert classify_axes((3, 4, 11, 11), (5, 4, 13, 13)) == ("batch", "fixed", "seq", "seq")
    assert classify_axes((33, 16), (65, 16)) == ("batch*seq", "fixed")
    assert classify_axes((12, 11, 8), (20, 13, 8)) == ("batch*4", "seq", "fixed")
    assert classify_axes((10,), (12,)) == ("other",)


def test_position_mask_attention_probs_masks_both_sequence_axes():
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    keep = position_mask(("batch", "fixed", "seq", "seq"), mask)
    full = np.broadcast_to(keep, (2, 4, 3, 3))
    assert full[0].all()
    assert full[1, :, :2, :2].all() and not full[1, :, 2, :].any() and not full[1, :, :, 2].any()
    assert position_mask(("batch", "seq", "fixed"), np.ones((2, 3), bool)) is None
    flat = position_mask(("batch*seq", "fixed"), mask)
    assert flat.shape == (6, 1) and flat[:, 0].tolist() == [1, 1, 1, 1, 1, 0]
    heads = position_mask(("batch*2", "seq", "fixed"), mask)
    assert np.broadcast_to(heads, (4, 3, 5))[:, 2, 0].tolist() == [True, True, False, False]
    seq_only = position_mask(("seq", "fixed"), mask)  # e.g. position embeddings: real in any row
    assert seq_only[:, 0].tolist() == [True, True, True]


def test_streaming_histogram_is_exact_and_order_independent(rng):
    parts = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.01, 0.3, 5.0, 70.0, 1.0)]
    a = tensor_stats_from_arrays("t", parts, bins=4096)
    b = tensor_stats_from_arrays("t", parts[::-1], bins=4096)
    c = tensor_stats_from_arrays("t", [np.concatenate(parts)], bins=4096)
    assert np.array_equal(a.hist, b.hist) and np.array_equal(a.hist, c.hist)
    allx = np.abs(np.concatenate(parts))
    top = 2.0 ** np.ceil(np.log2(allx.max()))  # smallest power of two above absmax (not equal here)
    assert a.hist_range == top and a.absmax == allx.max() and a.absmax < top <= 2 * a.absmax
    direct = np.bincount(np.floor(allx * np.float32(4096 / top)).astype(np.int64), minlength=4096)
    assert np.array_equal(a.hist, direct)
    assert len(a.covering_hist()) >= 2048


def test_two_pass_range_is_exactly_absmax(rng):
    x = rng.standard_normal(10000).astype(np.float32)
    absmax = float(np.abs(x).max())
    st = tensor_stats_from_arrays("t", [x], bins=2048, fixed_range=absmax)
    assert st.hist_range == absmax and len(st.covering_hist()) == 2048 and st.hist.sum() == x.size


def test_default_tensors_are_placement_inputs_plus_outputs(tiny_model_path):
    model = onnx.load(str(tiny_model_path))
    names = default_tensors(model, "placement")
    assert "layer.0/attention/Softmax_out" in names and "embeddings/LayerNorm_out" in names
    assert names[-2:] == ("embedding", "logits")
    assert "mask/where_out" not in names  # not the input of a MatMul
    everything = default_tensors(model, "all")
    assert set(names) <= set(everything) and "mask/where_out" in everything
    with pytest.raises(InputError):
        default_tensors(model, "some")


def test_padded_positions_excluded(tiny_spec, encoded, stats):
    lengths = encoded.lengths.astype(np.int64)
    tokens = int(lengths.sum())
    assert stats.tokens == tokens
    hidden = stats["embeddings/LayerNorm_out"]
    assert hidden.axis_roles == ("batch", "seq", "fixed") and hidden.count == tokens * 16
    probs = stats["layer.0/attention/Softmax_out"]
    assert probs.axis_roles == ("batch", "fixed", "seq", "seq")
    assert probs.count == 2 * int((lengths**2).sum())  # 2 heads, real query x real key only
    assert stats["logits"].count == len(encoded) * 2
    # batch size 1 has no padding at all: same counts and (nearly) the same extremes
    single = collect_statistics(tiny_spec, encoded, ["embeddings/LayerNorm_out"], batch_size=1)
    assert single["embeddings/LayerNorm_out"].count == hidden.count
    assert single["embeddings/LayerNorm_out"].absmax == pytest.approx(hidden.absmax, rel=1e-5)


def test_shuffled_batches_give_identical_ranges(tiny_spec, encoded, stats):
    shuffled = collect_statistics(tiny_spec, encoded, list(stats.names), batch_size=16, order="shuffle", seed=7)
    assert shuffled.names == stats.names
    for a, b in zip(stats.tensors, shuffled.tensors):
        assert (a.count, a.min, a.max, a.hist_range) == (b.count, b.min, b.max, b.hist_range)
        assert np.array_equal(a.hist, b.hist), a.name
    for method in ("entropy", "minmax", "percentile", "mse"):
        assert compute_ranges(stats, method).amax == compute_ranges(shuffled, method).amax


def test_nonfinite_mask_tensor_counted_not_ranged(tiny_spec, encoded):
    st = collect_statistics(tiny_spec, encoded, ["mask/where_out", "layer.0/attention/scores/Add_out"])
    where = st["mask/where_out"]
    padded = int((encoded.lengths.max() - encoded.lengths).sum())  # lower bound: some padding exists
    assert where.neginf > 0 and padded > 0
    assert where.nan == 0 and where.absmax == 0.0  # real positions hold 0 only
    scores = st["layer.0/attention/scores/Add_out"]
    assert scores.neginf > 0 and np.isfinite(scores.absmax) and scores.absmax > 0
    ranges = compute_ranges(st, "entropy")
    assert ranges.flags["mask/where_out"]["zero_range"] is True
    assert ranges.flags["layer.0/attention/scores/Add_out"]["nonfinite"]["neginf"] == scores.neginf


def test_save_load_round_trip(stats, tmp_path):
    stats.save(tmp_path)
    back = ActivationStats.load(tmp_path)
    assert back.names == stats.names and back.model_sha256 == stats.model_sha256
    for a, b in zip(stats.tensors, back.tensors):
        assert np.array_equal(a.hist, b.hist) and a.axis_roles == b.axis_roles and a.producer == b.producer
        assert (a.min, a.max, a.count, a.hist_range) == (b.min, b.max, b.count, b.hist_range)
    assert back.summary()["tensors"] == len(stats)
    with pytest.raises(InputError):
        ActivationStats.load(tmp_path / "nothing")


def test_two_pass_mode_on_model(tiny_spec, encoded):
    st = collect_statistics(tiny_spec, encoded, ["embeddings/LayerNorm_out"],
                            config=StatsConfig(histogram="two-pass", batch_size=32))
    t = st["embeddings/LayerNorm_out"]
    assert len(t.hist) == 2048 and t.hist_range == t.absmax and t.hist.sum() == t.count
    assert st.batches == -(-len(encoded) // 32)


def test_bad_requests(tiny_spec, encoded):
    with pytest.raises(InputError, match="not produced"):
        collect_statistics(tiny_spec, encoded, ["nope"])
    with pytest.raises(InputError, match="histogram"):
        collect_statistics(tiny_spec, encoded, ["logits"], histogram="exact")
    with pytest.raises(InputError, match="empty"):
        collect_statistics(tiny_spec, encoded.subset([]), ["logits"])


# --- fast path: sliced padding, weightless graph, exposed-output sessions, overlapped accumulation


@pytest.mark.parametrize("roles, shape", [
    (("batch", "seq", "fixed"), (4, 7, 3)),
    (("batch", "fixed", "seq", "seq"), (4, 2, 7, 7)),
    (("batch*2", "seq", "fixed"), (8, 7, 3)),
    (("batch*seq", "fixed"), (28, 3)),
    (("fixed", "seq", "fixed"), (1, 7, 3)),
    (("batch", "fixed"), (4, 5)),
])
def test_sliced_positions_match_the_boolean_mask(roles, shape, rng):
    from calib.stats import _layout, _Rows, _split_positions

    value = rng.standard_normal(shape).astype(np.float32)
    for lengths in ([7, 7, 3, 1], [2, 5, 5, 7], [7, 7, 7, 7]):
        mask = np.arange(7)[None, :] < np.array(lengths)[:, None]
        real, padded = _split_positions("t", value, roles, _layout(roles), _Rows(mask))
        keep = position_mask(roles, mask)
        keep = np.ones(shape, bool) if keep is None else np.broadcast_to(keep, shape)
        got_real = np.sort(np.concatenate([v.ravel() for v in real]))
        got_pad = np.sort(np.concatenate([v.ravel() for v in padded])) if padded else np.zeros(0, np.float32)
        assert np.array_equal(got_real, np.sort(value[keep])), (roles, lengths)
        assert np.array_equal(got_pad, np.sort(value[~keep])), (roles, lengths)


def test_mask_with_holes_takes_the_boolean_path(rng):
    from calib.stats import _layout, _Rows, _split_positions

    roles = ("batch", "seq", "fixed")
    value = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 0, 1, 1], [1, 1, 0, 0]], bool)  # not real-tokens-first: no slicing
    rows = _Rows(mask)
    assert not rows.prefix
    real, padded = _split_positions("t", value, roles, _layout(roles), rows)
    assert np.array_equal(np.sort(real[0]), np.sort(value[mask].ravel()))
    assert np.array_equal(np.sort(padded[0]), np.sort(value[~mask].ravel()))
    with pytest.raises(InputError, match="does not follow"):
        _split_positions("t", value[:, :3], roles, _layout(roles), _Rows(np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)))


def test_chunked_accumulation_of_strided_views_is_exact(rng):
    from calib.stats import _CHUNK, _Accumulator, _Scratch

    big = rng.standard_normal((3, 5, 40000)).astype(np.float32) * 3  # blocks above the chunk size
    big[1, 2, 7] = np.nan
    big[2, 0, 9] = -np.inf
    views = [big[:, :, :30001], big[0, 1:3, 35000:], big[2, :, ::7]]  # strided, small and large
    acc = _Accumulator(4096)
    acc.add_views(views, _Scratch(), hist=True, count=True)
    values = np.concatenate([v.ravel() for v in views])
    finite = values[np.isfinite(values)]
    direct = tensor_stats_from_arrays("t", [finite], bins=4096)
    assert views[0].size > _CHUNK
    assert (acc.nan, acc.neginf, acc.count) == (1, int(np.isneginf(values).sum()), finite.size)
    assert (acc.min, acc.max, acc.range) == (direct.min, direct.max, direct.hist_range)
    assert np.array_equal(acc.hist, direct.hist)


def test_weightless_graph_gives_the_same_tensors(tiny_model_path):
    from calib.placement import _float_tensors
    from calib.stats import weightless

    model = onnx.load(str(tiny_model_path))
    light = weightless(model, keep_elements=8)
    stripped = [t for t in light.graph.initializer if not (t.raw_data or t.float_data or t.int64_data)]
    assert stripped and all(len(t.dims) for t in stripped)  # shapes kept, data dropped
    assert len(light.graph.initializer) == len(model.graph.initializer)
    assert light.ByteSize() < model.ByteSize() // 2
    assert _float_tensors(light) == _float_tensors(model)
    for scope in ("placement", "all"):
        assert default_tensors(light, scope) == default_tensors(model, scope)


def test_exposed_outputs_identical_across_optimisation_levels(tiny_model_path, tiny_spec):
    """Tensors appended as graph outputs survive ORT's full optimisation with the values the
    'basic' level (no fusions) computes, and the appended-bytes model equals the re-serialized one."""
    from calib.engines.ort import OrtSessionLoader, expose_outputs, exposed_model_bytes
    from calib.stats import _tensor_types, weightless

    model = onnx.load(str(tiny_model_path))
    names = list(default_tensors(model, "all"))
    known = [o.name for o in model.graph.output]
    appended = exposed_model_bytes(tiny_model_path, names, elem_types=_tensor_types(weightless(model)), known=known)
    sessions = {
        "basic": OrtSessionLoader(tiny_model_path, intermediates=tuple(names), threads=1)(),
        "all": OrtSessionLoader(appended, threads=1, optimization="all")(),
        "all-proto": OrtSessionLoader(expose_outputs(model, names), threads=1, optimization="all")(),
        "all-nospin": OrtSessionLoader(appended, threads=2, optimization="all", spinning=False)(),
    }
    outputs = [o.name for o in sessions["all"].get_outputs()]
    assert outputs == [o.name for o in sessions["all-proto"].get_outputs()] and set(names) <= set(outputs)
    ids = np.random.default_rng(1).integers(5, 40, (3, 9))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feeds = {k: feeds[k].astype(dt) for k, dt in tiny_spec.input_dtypes.items()}
    results = {k: s.run(names, feeds) for k, s in sessions.items()}
    for level, values in results.items():
        for name, a, b in zip(names, results["basic"], values):
            assert np.array_equal(a, b, equal_nan=True), (level, name)


def test_overlapped_split_and_sequential_passes_agree(tiny_spec, encoded, stats):
    """One thread, two threads overlapping every batch, and a mixed schedule (0.3 MB: the longer
    batches are accumulated between runs, their tensors split over both threads) give the same."""
    schedules = [{"threads": 1}, {"threads": 2}, {"threads": 2, "overlap_max_mb": 0.3}]
    for mode in ("stream", "two-pass"):
        runs = [collect_statistics(tiny_spec, encoded, config=StatsConfig(
            histogram=mode, batch_size=16, tensors=stats.names, **schedule)) for schedule in schedules]
        reference = stats if mode == "stream" else runs[0]
        for other in runs:
            assert other.names == reference.names and other.tokens == reference.tokens
            for a, b in zip(reference.tensors, other.tensors):
                assert (a.count, a.min, a.max, a.hist_range, a.nonfinite) == (
                    b.count, b.min, b.max, b.hist_range, b.nonfinite)
                assert np.array_equal(a.hist, b.hist), (mode, a.name)


def test_worker_errors_reach_the_caller(tiny_spec, encoded, monkeypatch):
    import calib.stats as stats_module

    def broken(self, *args, **kwargs):
        raise RuntimeError("accumulator failed")

    monkeypatch.setattr(stats_module._Accumulator, "add_views", broken)
    for schedule in ({"threads": 1}, {"threads": 2}, {"threads": 2, "overlap_max_mb": 0.0}):
        with pytest.raises(RuntimeError, match="accumulator failed"):
            collect_statistics(tiny_spec, encoded, ["logits"], config=StatsConfig(**schedule))
