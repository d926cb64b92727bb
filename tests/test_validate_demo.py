"""Demo (bbc-topic, real MiniLM): calibration-set length effects per bucket, and the fallback search.

Heavy: kept within a couple of minutes each with small calibration sets and eval subsets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.demo

EVAL_LIMIT = 96


def _calibrate(ws, base, tmp_path, name, placement="tensorrt", methods=("minmax", "entropy"), **changes):
    from calib.calibrate import CalibrateConfig, calibrate
    from calib.calibset import assemble

    cs = assemble(dataclasses.replace(base, **changes), tmp_path / f"{name}-set")
    return calibrate(CalibrateConfig(calibration_set=str(cs.dir), methods=methods, placement=placement),
                     tmp_path / f"{name}-cal")


def test_demo_short_vs_length_matched_calibration_per_bucket(demo_workspace, tmp_path):
    """A calibration set of short texts only vs a length-matched one: the per-bucket report shows
    where they differ (the long buckets), or honestly shows that they do not."""
    from calib.build import BuildConfig, build
    from calib.calibrate import RangesRef
    from calib.calibset import config_from_dict, token_lengths
    from calib.data import load_rows
    from calib.evaluation import EvalSettings
    from calib.inputs import demo_values
    from calib.model import load_model
    from calib.report import ReportConfig, make_report
    from calib.validate import ValidateConfig, validate
    from calib.workspace import Workspace

    ws = Workspace(demo_workspace)
    values = demo_values("bbc-topic", ws.root)
    base = config_from_dict({**values, "size": 48, "seed": 0, "target_kind": "eval"})
    pool_spec = base.data
    model = load_model(base.model.model, base.model.tokenizer, max_length=base.model.max_length)
    lengths = token_lengths(model, pool_spec, ws).lengths
    short_dir = tmp_path / "short-pool"
    shortest = np.argsort(lengths, kind="stable")[:96]  # bbc has almost no text under 128 tokens
    assert lengths[shortest].max() < base.model.max_length
    load_rows(pool_spec).select(sorted(shortest.tolist())).save_to_disk(str(short_dir))

    cals = {
        "short": _calibrate(ws, base, tmp_path, "short", data=dataclasses.replace(base.data, source=str(short_dir),
                                                                                   split=None),
                            strategy="natural", target_kind="pool"),
        "matched": _calibrate(ws, base, tmp_path, "matched", strategy="match", stratify=True),
    }
    evals = {}
    for name, cal in cals.items():
        engine = build(BuildConfig(model=base.model.model, ranges=RangesRef(str(cal.dir), "minmax")),
                       tmp_path / f"{name}-build")
        evals[name] = validate(ValidateConfig(
            engine=str(engine.dir), model=base.model, data=dataclasses.replace(values["data"], split="eval"),
            settings=EvalSettings(limit=EVAL_LIMIT, layer_rows=8, bootstrap=300), calibration=str(cal.dir)),
            tmp_path / f"{name}-eval")

    short, matched = evals["short"], evals["matched"]
    long_buckets = [i for i, b in enumerate(matched.buckets) if b["low"] >= 256 and b["n"]]
    assert long_buckets, "bbc-topic eval must have texts of 256+ tokens"
    # the two calibration sets give different ranges, visible per tensor on the eval texts
    sat = {name: [((r.get("ranges") or {}).get("methods", {}).get("engine", {}).get("saturation_rate") or 0.0)
                  for r in ev.layers["tensors"]] for name, ev in evals.items()}
    assert sat["short"] != sat["matched"]
    # the per-bucket view of the long buckets, whichever way it goes, is in the report
    short_kl = [short.buckets[i]["agreement"]["kl_softmax"] for i in long_buckets]
    matched_kl = [matched.buckets[i]["agreement"]["kl_softmax"] for i in long_buckets]
    rep = make_report(ReportConfig(evaluations=(str(short.dir), str(matched.dir)), title="short vs matched"),
                      tmp_path / "report")
    rows = {r["run"]: r for r in rep.data["comparison"]}
    assert set(rows) == {"short-eval", "matched-eval"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| 512+ |" in md and "## Runs compared" in md
    print("long-bucket KL short", short_kl, "matched", matched_kl,
          "drops", short.summary().get("accuracy_drop_points"), matched.summary().get("accuracy_drop_points"))
    assert all(np.isfinite(short_kl)) and all(np.isfinite(matched_kl))


def test_demo_sensitivity_on_all_placement_finds_exclusions(demo_workspace, tmp_path):
    """The `all` placement destroys MiniLM; the fallback search finds float exclusions that bring
    the subset back within budget, within a bounded number of evaluations. rt-sentiment (short
    texts) keeps every candidate cheap; transformer blocks as units, ranked by local noise (no
    evaluations), keep the number of candidate rebuilds small."""
    from calib.calibrate import RangesRef
    from calib.calibset import config_from_dict
    from calib.evaluation import EvalSettings
    from calib.inputs import demo_values
    from calib.placement import Placement
    from calib.sensitivity import SensitivityConfig, analyze_sensitivity
    from calib.verdict import ReleaseBudget
    from calib.workspace import Workspace

    ws = Workspace(demo_workspace)
    values = demo_values("rt-sentiment", ws.root)
    base = config_from_dict({**values, "size": 32, "seed": 0, "target_kind": "eval"})
    cal = _calibrate(ws, base, tmp_path, "all", placement="all", strategy="match", methods=("minmax",))
    res = analyze_sensitivity(SensitivityConfig(
        model=base.model, data=dataclasses.replace(values["data"], split="eval"), ranges=RangesRef(str(cal.dir), "minmax"),
        placement=Placement("all"), budget=ReleaseBudget(max_drop=0.5, min_agreement=0.97, min_embedding_cosine=None),
        settings=EvalSettings(limit=96, batch_size=16), granularity="block", max_evaluations=5), tmp_path / "sens")
    print(res.summary(), res.exclusions[:10])
    # every op the quantizer handles, not just MatMuls (the graph has no shape-computing subgraphs,
    # so the count is about 4x its 49 MatMuls rather than a number of int64 shape ops)
    op_of = {n.name: n.op_type for n in onnx.load(str(base.model.model), load_external_data=False).graph.node}
    quantized_ops = {op_of[n] for n in res.data["quantized_nodes"]}
    assert {"MatMul", "Add", "Mul", "Softmax", "LayerNormalization", "Erf", "Where", "Gather"} <= quantized_ops
    assert len(res.data["quantized_nodes"]) > 4 * sum(op == "MatMul" for op in op_of.values())
    assert res.data["ranking_method"] == "local"
    assert not res.data["baseline"]["passes"] and res.data["baseline"]["accuracy_drop_points"] > 0.5
    assert res.data["evaluations_used"] <= 5
    assert res.found, res.data["recommended"]["note"]
    assert res.data["recommended"]["accuracy_drop_points"] <= 0.5
    assert 0 < len(res.exclusions) < len(res.data["quantized_nodes"])
