"""Sensitivity ranking and fallback search on the tiny model with deliberately broken ranges."""

from __future__ import annotations

import json
import math

import pytest
import tinymodel
from test_validate import absmax_ranges

from calib.errors import InputError
from calib.pipeline import config_from_params
from calib.placement import Placement

BROKEN = ("layer.0/intermediate/gelu/Mul_1_out", "layer.1/attention/Softmax_out")


@pytest.fixture(scope="module")
def broken_ranges(tiny_spec, tmp_path_factory):
    texts, _ = tinymodel.make_texts(64, seed=1)
    amax = absmax_ranges(tiny_spec, texts, "all")
    amax[BROKEN[0]] /= 30
    amax[BROKEN[1]] /= 20
    path = tmp_path_factory.mktemp("ranges") / "amax.json"
    path.write_text(json.dumps(amax))
    return path


def sconfig(tiny_spec, tiny_csv, ranges, **kw):
    from calib.sensitivity import SensitivityConfig

    kw.setdefault("placement", "all")
    return config_from_params(SensitivityConfig, dict(model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir), data=str(tiny_csv),
                             ranges=str(ranges), labels=tinymodel.LABELS, max_length=64, limit=120, **kw))


def test_search_finds_few_exclusions_within_budget(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    """MatMul-input placement, so the broken ranges are what breaks the build: quantizing every op of the
    tiny model is not within the agreement budget on CPUs whose INT8 kernels round differently (AVX2
    without VNNI), whatever the ranges, which made the search's answer depend on the machine."""
    from calib.placement import Placement
    from calib.sensitivity import SensitivityResult, analyze_sensitivity

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, max_evaluations=12, placement="tensorrt"),
                              tmp_path / "s")
    again = SensitivityResult.load(tmp_path / "s")
    assert again.data == res.data
    assert not res.data["baseline"]["passes"]
    assert res.found, res.data["recommended"]["note"]
    assert 0 < len(res.exclusions) <= 6
    # the MatMuls that read the two broken tensors are kept in float
    assert {"layer.0/output/dense/MatMul", "layer.1/attention/context/MatMul"} <= set(res.exclusions)
    assert res.data["evaluations_used"] <= 12 and len(res.data["evaluations"]) == res.data["evaluations_used"]
    rec = res.data["recommended"]
    assert rec["top1_agreement"] >= 0.99 and rec["accuracy_drop_points"] <= 0.5
    # the nodes around the broken tensors are ranked first
    top = {n for u in res.data["ranking"][:4] for n in u["nodes"]}
    assert any(n.startswith((BROKEN[0][:-4], "layer.0/output/dense")) for n in top)
    placement = res.placement()
    assert isinstance(placement, Placement) and set(res.exclusions) <= set(placement.exclude_nodes)


def test_block_ranking_and_budget_bound(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    from calib.sensitivity import analyze_sensitivity

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, granularity="block", max_evaluations=12),
                              tmp_path / "s")
    assert res.data["ranking_method"] == "exclude-one"
    assert {u["unit"] for u in res.data["ranking"]} >= {"layer.0", "layer.1"}
    assert res.data["evaluations_used"] <= 12
    if not res.found:
        assert "no exclusion set within budget" in res.data["recommended"]["note"]


def test_already_within_budget_needs_no_exclusions(tiny_spec, tiny_csv, tmp_path):
    from calib.sensitivity import analyze_sensitivity

    texts, _ = tinymodel.make_texts(64, seed=1)
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"amax": absmax_ranges(tiny_spec, texts, "tensorrt")}))
    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, path, placement="tensorrt", min_agreement=0.9, max_drop=5),
                              tmp_path / "s")
    assert res.data["baseline"]["passes"] and res.exclusions == () and res.data["evaluations_used"] == 1


def test_bad_sensitivity_inputs(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    from calib.sensitivity import analyze_sensitivity, block_of, exact_pattern

    with pytest.raises(InputError, match="granularity"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, granularity="layer"), tmp_path / "a")
    with pytest.raises(InputError, match="max evaluations"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, max_evaluations=1), tmp_path / "b")
    for settings, what in (({"bootstrap": 100}, "bootstrap resamples"),
                           ({"edges": (0, 32)}, "length buckets")):  # evaluation settings a search has no use for
        with pytest.raises(InputError, match=f"without {what}"):
            analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, **settings), tmp_path / "s")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(InputError, match="no"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, tmp_path / "empty.json"), tmp_path / "c")
    assert block_of("/encoder/layer.3/attention/self/query/MatMul") == "layer.3"
    assert block_of("layer.0/attention/query/MatMul") == "layer.0"
    assert block_of("/embeddings/LayerNorm/LayerNormalization") == "embeddings"
    assert block_of("classifier/MatMul") == "classifier"
    assert exact_pattern("a/b") == "a/b" and exact_pattern("x[1]").startswith("re:^")


def test_derived_candidates_match_the_quantizer(tiny_spec, tmp_path):
    """Under the input-only placement, a candidate derived from the full Q/DQ model (keep_in_float)
    computes what calib.quantize writes when the same nodes are excluded (or only some included)."""
    import warnings

    import numpy as np
    import onnx

    from calib.batching import encode, iter_batches
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.model import load_tokenizer
    from calib.placement import Placement
    from calib.quantize import quantize_qdq
    from calib.sensitivity import exact_pattern, keep_in_float

    texts, _ = tinymodel.make_texts(48, seed=2)
    preset = "tensorrt"
    amax = absmax_ranges(tiny_spec, texts, "all")
    amax[BROKEN[0]] /= 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = quantize_qdq(tiny_spec.onnx_path, amax, Placement(preset), tmp_path / "full.onnx")
    nodes = list(full.quantized_nodes)
    rng = np.random.default_rng(0)
    enc = encode(load_tokenizer(str(tiny_spec.tokenizer_dir)), texts, max_length=64)
    batch = next(iter_batches(enc, tiny_spec.input_dtypes, 48))
    cases = [("exclude", [n for n in nodes if "output/dense" in n or "gelu" in n]),
             ("exclude", list(rng.choice(nodes, size=len(nodes) // 3, replace=False))),
             ("only", [n for n in nodes if n.startswith("layer.0/")])]
    for kind, chosen in cases:
        placement = (Placement(preset).with_exclusions(exact_pattern(n) for n in chosen) if kind == "exclude"
                     else Placement(preset, include_nodes=tuple(exact_pattern(n) for n in chosen)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rebuilt = quantize_qdq(tiny_spec.onnx_path, amax, placement, tmp_path / "rebuilt.onnx")
        floating = chosen if kind == "exclude" else sorted(set(nodes) - set(chosen))
        derived = keep_in_float(onnx.load(str(tmp_path / "full.onnx")), floating)
        assert len(rebuilt.quantized_nodes) == len(nodes) - len(set(floating) & set(nodes))
        want = OrtEngine(OrtSessionLoader(tmp_path / "rebuilt.onnx")).run(batch.feeds, ["logits", "embedding"])
        got = OrtEngine(OrtSessionLoader(derived.SerializeToString())).run(batch.feeds, ["logits", "embedding"])
        for name in ("logits", "embedding"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=f"{preset} {kind} {name}")
        full_out = OrtEngine(OrtSessionLoader(tmp_path / "full.onnx")).run(batch.feeds, ["logits"])["logits"]
        assert not np.allclose(full_out, got["logits"], atol=1e-6)  # the exclusion changed something


def test_quantize_one_ranking_on_input_only_placement(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    """tensorrt placement, node granularity: ranked by quantizing each MatMul alone on a text subset
    (derived candidates), the search starts at the predicted prefix and the recommendation is
    re-checked on a model rebuilt by the quantizer."""
    from calib.sensitivity import analyze_sensitivity

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", max_evaluations=10,
                                      rank_rows=48, min_embedding_cosine=0.99, ranking="quantize-one"), tmp_path / "s")
    data = res.data
    assert data["ranking_method"] == "quantize-one"
    assert data["ranking_evaluations_used"] == len(data["ranking"]) + 1 and data["ranking_rows"] == 48
    # the readers of the two broken ranges (GELU output, attention probabilities) come first
    assert {r["unit"] for r in data["ranking"][:2]} == {"layer.0/output/dense/MatMul", "layer.1/attention/context/MatMul"}
    assert data["evaluations_used"] <= 10 and data["search_start"] >= 1
    assert res.found, data["recommended"]["note"]
    assert "layer.0/output/dense/MatMul" in res.exclusions and len(res.exclusions) <= 4
    assert data["verification"]["why"].startswith("verify") and data["verification"]["passes"]
    assert data["recommended"]["embedding_cosine"] >= 0.99
    assert data["warnings"] == []


def test_note_warns_when_the_placement_lacks_ranges(tiny_spec, tiny_csv, tmp_path):
    """Ranges calibrated for the tensorrt placement only, analysed on the all placement: most of its
    nodes silently stay in float, and the note says so (the calibration scope trap)."""
    from calib.sensitivity import analyze_sensitivity

    texts, _ = tinymodel.make_texts(64, seed=1)
    path = tmp_path / "trt.json"
    path.write_text(json.dumps(absmax_ranges(tiny_spec, texts, "tensorrt")))
    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, path, placement="all", max_drop=100, min_agreement=0,
                                      max_evaluations=2), tmp_path / "s")
    note = res.data["recommended"]["note"]
    assert note.startswith("WARNING calibration scope") and "--placement all" in note
    assert any(w.startswith("WARNING calibration scope") for w in res.data["warnings"])


def test_cli_sensitivity_then_build_with_its_exclusions(tiny_spec, tiny_csv, broken_ranges, tmp_path, capsys):
    """The recommended exclusions feed `calib build --exclude-from` and end up in float in the engine."""
    from calib.cli import main
    from calib.ranges import Ranges

    ws = ["--workspace", str(tmp_path / "ws")]
    assert main(ws + ["sensitivity", "--model", str(tiny_spec.onnx_path), "--tokenizer", str(tiny_spec.tokenizer_dir),
                      "--data", str(tiny_csv), "--labels", ",".join(tinymodel.LABELS), "--max-length", "64",
                      "--limit", "120", "--ranges", str(broken_ranges), "--preset", "all", "--max-evaluations", "12",
                      ]) == 0
    out = capsys.readouterr().out
    sens_run = out.split()[1].rstrip(":")
    hint = next(line for line in out.splitlines() if line.startswith("build with: "))
    assert hint.endswith(f"--placement all --exclude-from {sens_run}") and f"--ranges {broken_ranges}" in hint
    from calib.sensitivity import SensitivityResult
    from calib.workspace import Workspace

    exclusions = SensitivityResult.load(Workspace(tmp_path / "ws").resolve_run(sens_run)).exclusions
    assert exclusions
    amax = json.loads(broken_ranges.read_text())
    ranges = Ranges(method="minmax", params={}, model_sha256=tiny_spec.sha256,
                    amax={k: (v if math.isfinite(v) else 0.0) for k, v in amax.items()})
    ranges_path = ranges.save(tmp_path / "minmax.json")
    assert main(ws + ["build", "--model", str(tiny_spec.onnx_path), "--ranges", str(ranges_path), "--placement", "all",
                      "--exclude-from", sens_run]) == 0
    capsys.readouterr()
    workspace = Workspace(tmp_path / "ws")
    (build_run,) = [r for r in workspace.list_runs() if r.stage == "build"]
    meta = json.loads((build_run.dir / "engine.json").read_text())
    assert set(exclusions) <= set(meta["excluded_nodes"])
    assert sens_run in build_run.parents
    # a run of another stage is refused with a one-line reason
    assert main(ws + ["build", "--model", str(tiny_spec.onnx_path), "--ranges", str(ranges_path),
                      "--exclude-from", build_run.id]) != 0
    assert "expected a 'sensitivity' run" in capsys.readouterr().err


def _tiny_qdq(tiny_spec, tmp_path, preset="tensorrt"):
    import warnings

    import onnx

    from calib.placement import Placement
    from calib.quantize import quantize_qdq

    texts, _ = tinymodel.make_texts(48, seed=2)
    amax = absmax_ranges(tiny_spec, texts, "all")
    amax[BROKEN[0]] /= 30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = quantize_qdq(tiny_spec.onnx_path, amax, Placement(preset), tmp_path / "full.onnx")
    return onnx.load(str(tmp_path / "full.onnx")), list(full.quantized_nodes), texts


def test_segments_cut_at_blocks_and_forward_only(tiny_spec, tmp_path):
    import onnx

    from calib.segments import SegmentationError, plan_segments

    qdq, nodes, _ = _tiny_qdq(tiny_spec, tmp_path)
    segments = plan_segments(qdq, onnx.load(str(tiny_spec.onnx_path)))
    assert [s.name for s in segments] == ["(start)", "layer.0", "layer.1"]
    member = {qdq.graph.node[i].name: k for k, s in enumerate(segments) for i in s.nodes}
    assert sorted(member) == sorted(n.name for n in qdq.graph.node)  # every node in exactly one segment
    assert all(member[n] == 1 for n in nodes if n.startswith("layer.0/"))
    # a Q/DQ pair sits in its reader's segment, so the tensors crossing a cut are float tensors of the FP32 graph
    fp32_tensors = {o for n in onnx.load(str(tiny_spec.onnx_path)).graph.node for o in n.output}
    for seg in segments[1:]:
        assert seg.inputs and set(seg.inputs) <= fp32_tensors
    assert segments[0].inputs == ()
    assert set(segments[-1].outputs) | set(segments[-1].carried) == {"logits", "embedding"}
    one_block = onnx.load(str(tiny_spec.onnx_path))
    for n in one_block.graph.node:
        n.name = n.name.replace("layer.1", "layer.0")
    with pytest.raises(SegmentationError, match="two"):
        plan_segments(one_block)


def test_segment_runner_matches_whole_candidates(tiny_spec, tmp_path):
    """Candidates run segment by segment from cached cuts give the outputs of the whole derived model,
    and a candidate that changes only the last block re-runs only that block."""
    import numpy as np
    import onnx

    from calib.batching import encode, iter_batches
    from calib.engines.ort import OrtEngine, OrtSessionLoader
    from calib.model import load_tokenizer
    from calib.segments import SegmentRunner
    from calib.sensitivity import keep_in_float

    qdq, nodes, texts = _tiny_qdq(tiny_spec, tmp_path)
    original = onnx.load(str(tiny_spec.onnx_path))

    def loader(model):  # one INT8 kernel for segments and whole models alike: ORT cannot rewrite some of
        return OrtSessionLoader(model, exact_int8=False)  # these graphs for the exact one (calib.engines.ort)

    runner = SegmentRunner(qdq, nodes, original, keep_in_float, lambda b: OrtEngine(loader(b)), cache_bytes=64 << 20)
    enc = encode(load_tokenizer(str(tiny_spec.tokenizer_dir)), texts, max_length=64)
    batches = list(iter_batches(enc, tiny_spec.input_dtypes, 16))
    rng = np.random.default_rng(3)
    cases = [set(), set(nodes), {n for n in nodes if n.startswith("layer.1/")},
             set(rng.choice(nodes, size=len(nodes) // 2, replace=False)), {"layer.0/output/dense/MatMul"}]
    for floating in cases:
        got = runner.run(floating, "t", batches)
        whole = OrtEngine(loader(keep_in_float(qdq, floating).SerializeToString()))
        for batch, values in zip(batches, got):
            want = whole.run(batch.feeds, ["logits", "embedding"])
            for name in ("logits", "embedding"):
                np.testing.assert_allclose(values[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{sorted(floating)}")
    runs = runner.segment_runs
    runner.run(set(nodes) - {"layer.1/output/dense/MatMul"}, "t", batches)  # differs from the FP32 path in layer.1 only
    assert runner.segment_runs == runs + 1 and runner.cache.hits > 0
    tiny = SegmentRunner(qdq, nodes, original, keep_in_float, lambda b: OrtEngine(loader(b)), cache_bytes=1)
    tiny.run(set(), "t", batches)
    assert tiny.cache.bytes == 0 and not tiny.cache.entries  # nothing fits: nothing kept, still correct


def test_block_local_ranking_agrees_with_quantize_one(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    """The default ranking on an input-only placement predicts quantize-one from block-output errors:
    the broken ranges' readers come first, the check against quantize-one on every unit is reported
    as a Spearman correlation, and the search still meets the budget (verified on a rebuilt model)."""
    from calib.sensitivity import analyze_sensitivity

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", max_evaluations=10,
                                      rank_rows=48, min_embedding_cosine=0.99, rank_check=-1), tmp_path / "s")
    data = res.data
    assert data["ranking_method"] == "block-local"
    assert data["segments"]["how"] == "3 segments" and data["segments"]["cache_hits"] > 0
    assert {r["unit"] for r in data["ranking"][:2]} == {"layer.0/output/dense/MatMul", "layer.1/attention/context/MatMul"}
    check = data["ranking_check"]
    assert check["units"] == len(data["ranking"]) and check["spearman"] is not None and check["spearman"] > 0.6
    # predicted for every unit in one block, from one evaluation per block plus block-only runs
    assert all(r["predicted"] for r in data["ranking"])
    assert data["ranking_evaluations_used"] == 1 + 2 + len(data["ranking"])  # base + one per block + the check
    assert res.found and data["verification"]["passes"], data["recommended"]["note"]
    assert "layer.0/output/dense/MatMul" in res.exclusions and len(res.exclusions) <= 4
    off = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", max_evaluations=10,
                                      rank_rows=48, min_embedding_cosine=0.99, cache_mb=0, ranking="quantize-one"),
                              tmp_path / "off")
    assert off.data["segments"]["how"].startswith("whole models")
    assert off.data["baseline"]["top1_agreement"] == pytest.approx(data["baseline"]["top1_agreement"])
    assert off.data["baseline"]["kl_softmax"] == pytest.approx(data["baseline"]["kl_softmax"], rel=1e-3)
    with pytest.raises(InputError, match="block-local"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", cache_mb=0,
                                    ranking="block-local"), tmp_path / "bad")


def test_tensor_units_and_auto_granularity_with_speed_curve(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    """Tensor units group every reader of one activation's Q/DQ pairs; auto searches by node and by
    tensor and keeps the one with fewer float nodes; the speed curve times every fallback step."""
    from calib.sensitivity import activation_readers, analyze_sensitivity, make_units

    qdq, nodes, _ = _tiny_qdq(tiny_spec, tmp_path)
    readers = activation_readers(qdq, nodes)
    qkv = [r for r in readers.values() if len(r) == 3]
    assert qkv and all({n.split("/")[-2] for n in r} == {"query", "key", "value"} for r in qkv)
    units = make_units(nodes, "tensor", qdq)
    assert {n for u in units for n in u.nodes} == set(nodes) and len(units) < len(nodes)
    assert len({frozenset(u.nodes) for u in units}) == len(units)

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", max_evaluations=16,
                                      rank_rows=48, granularity="auto", rank_check=0, speed_texts=32), tmp_path / "s")
    data = res.data
    searches = data["searches"]
    assert [s["granularity"] for s in searches] == ["node", "tensor"]
    (picked,) = [s for s in searches if s.get("chosen")]
    others = [s for s in searches if not s.get("chosen")]
    assert all((not o["passes"]) or o["float_nodes"] >= picked["float_nodes"] for o in others)
    assert res.found and len(res.exclusions) == picked["float_nodes"]
    assert data["evaluations_used"] <= 16
    curve = data["speed_curve"]
    assert curve["texts"] == 32 and curve["fp32_texts_per_s"] > 0
    points = curve["points"]
    assert points[0]["float_nodes"] == 0 and points[0]["change"] == "all INT8"
    assert [p["float_nodes"] for p in points] == sorted(p["float_nodes"] for p in points)
    assert points[-1]["float_nodes"] == len(res.exclusions) and all(p["texts_per_s"] > 0 for p in points)
    assert points[-1].get("passes") is True  # the recommendation's own evaluation is attached to its point
    assert data["search_seconds"] <= data["seconds"] and data["cpu_seconds"] > 0
    # a candidate that surely fails stops early: its bound already misses the budget, it never passes
    stopped = [e for e in data["evaluations"] if e.get("stopped_early")]
    assert stopped and all(not e["passes"] and e["top1_agreement"] < 0.99 for e in stopped)
    assert all("flips after" in e["stopped_early"] or "embedding error after" in e["stopped_early"] for e in stopped)
    # when the node search used up the bound, the tensor search is reported as not run, never as a result
    tight = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, placement="tensorrt", max_evaluations=3,
                                        rank_rows=48, granularity="auto", rank_check=0, speed_texts=0), tmp_path / "t")
    node, tensor = tight.data["searches"]
    assert node["granularity"] == "node" and tensor == {**tensor, "granularity": "tensor", "evaluations": 0}
    assert tensor["skipped"].startswith("no evaluations left") and not tensor.get("chosen")
    assert tight.data["evaluations_used"] <= 3


def test_search_starts_from_a_build(tiny_spec, tiny_csv, broken_ranges, tmp_path, capsys):
    """--start-from: the search starts from a build's own INT8 model (whatever it was built with), and
    the recommendation is verified by calib build with that build's settings plus the exclusions."""
    from calib.build import BuildConfig, build
    from calib.calibrate import RangesRef
    from calib.cli import main
    from calib.ranges import Ranges
    from calib.sensitivity import analyze_sensitivity

    amax = json.loads(broken_ranges.read_text())
    ranges = Ranges(method="minmax", params={}, model_sha256=tiny_spec.sha256,
                    amax={k: (v if math.isfinite(v) else 0.0) for k, v in amax.items()})
    ranges_path = ranges.save(tmp_path / "broken.json")
    start = build(BuildConfig(model=str(tiny_spec.onnx_path), ranges=RangesRef(str(ranges_path)), placement=Placement("tensorrt")),
                  tmp_path / "build")
    assert start.meta["config"]["placement"]["preset"] == "tensorrt"
    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, "", placement="tensorrt", max_evaluations=10, rank_rows=48,
                                      start_from=str(start.dir), rank_check=0, speed_texts=0), tmp_path / "s")
    data = res.data
    assert data["start_from"]["build"] == str(start.dir) and data["quantized_nodes"] == list(start.quantized_nodes)
    assert data["baseline"]["quantized_nodes"] == len(start.quantized_nodes) and not data["baseline"]["passes"]
    assert res.found and "layer.0/output/dense/MatMul" in res.exclusions
    assert data["verification"]["why"].startswith("verify: rebuilt by calib build") and data["verification"]["passes"]
    assert data["verification"]["quantized_nodes"] == len(start.quantized_nodes) - len(res.exclusions)
    assert data["speed_curve"] is None
    # the CLI refuses both or neither of --ranges / --start-from, and prints the build command to reuse
    ws = ["--workspace", str(tmp_path / "ws")]
    common = ["sensitivity", "--model", str(tiny_spec.onnx_path), "--tokenizer", str(tiny_spec.tokenizer_dir),
              "--data", str(tiny_csv), "--labels", ",".join(tinymodel.LABELS), "--max-length", "64", "--limit", "120"]
    assert main(ws + common) == 2
    assert "exactly one of --ranges" in capsys.readouterr().err
    assert main(ws + common + ["--start-from", str(start.dir), "--max-evaluations", "10", "--speed-texts", "0",
                               "--rank-check", "0"]) == 0
    out = capsys.readouterr().out
    hint = next(line for line in out.splitlines() if line.startswith("build with: "))
    assert f"--ranges {ranges_path}" in hint and "--placement tensorrt" in hint and "--exclude-from" in hint
