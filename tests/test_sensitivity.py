"""Sensitivity ranking and fallback search on the tiny model with deliberately broken ranges."""

from __future__ import annotations

import json

import pytest
import tinymodel
from test_validate import absmax_ranges

from calib.errors import InputError

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

    kw.setdefault("preset", "all")
    return SensitivityConfig(model=str(tiny_spec.onnx_path), tokenizer=str(tiny_spec.tokenizer_dir), data=str(tiny_csv),
                             ranges=str(ranges), labels=tinymodel.LABELS, max_length=64, limit=120, **kw)


def test_search_finds_few_exclusions_within_budget(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    from calib.placement import Placement
    from calib.sensitivity import SensitivityResult, analyze_sensitivity

    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, max_evaluations=12), tmp_path / "s")
    again = SensitivityResult.load(tmp_path / "s")
    assert again.data == res.data
    assert not res.data["baseline"]["passes"]
    assert res.found, res.data["recommended"]["note"]
    assert 0 < len(res.exclusions) <= 6
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
    res = analyze_sensitivity(sconfig(tiny_spec, tiny_csv, path, preset="tensorrt", min_agreement=0.9, max_drop=5),
                              tmp_path / "s")
    assert res.data["baseline"]["passes"] and res.exclusions == () and res.data["evaluations_used"] == 1


def test_bad_sensitivity_inputs(tiny_spec, tiny_csv, broken_ranges, tmp_path):
    from calib.sensitivity import analyze_sensitivity, block_of, exact_pattern

    with pytest.raises(InputError, match="granularity"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, granularity="layer"), tmp_path / "a")
    with pytest.raises(InputError, match="max evaluations"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, broken_ranges, max_evaluations=1), tmp_path / "b")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(InputError, match="no"):
        analyze_sensitivity(sconfig(tiny_spec, tiny_csv, tmp_path / "empty.json"), tmp_path / "c")
    assert block_of("/encoder/layer.3/attention/self/query/MatMul") == "layer.3"
    assert block_of("layer.0/attention/query/MatMul") == "layer.0"
    assert block_of("/embeddings/LayerNorm/LayerNormalization") == "embeddings"
    assert block_of("classifier/MatMul") == "classifier"
    assert exact_pattern("a/b") == "a/b" and exact_pattern("x[1]").startswith("re:^")
