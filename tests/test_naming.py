"""Run names: what a run is, with the id secondary."""

from __future__ import annotations

from pathlib import Path

from calib.naming import run_name, short_time
from calib.workspace import RunRecord


def record(run_id: str, stage: str, params: dict, summary: dict | None = None, label: str = "") -> RunRecord:
    return RunRecord(run_id, stage, label, "", params, [], "finished", 1.0, "", "", summary or {},
                     "2026-11-25T16:49:49+00:00", None, Path("/nowhere") / run_id)


def test_names_say_what_a_run_is():
    build = record("build-1", "build", {"calibration": "/r/calibrate-1", "method": "minmax", "placement": "tensorrt",
                                        "exclude_nodes": []}, {"excluded_nodes": 3}, label="rc")
    assert run_name(build) == "Build · minmax · tensorrt · 3 in float · “rc” · 25 Nov 16:49 (build-1)"
    val = record("validate-1", "validate", {"engine": "/r/build-1", "limit": 400}, {"rows": 400})
    assert run_name(val, {"build-1": build}.get) == \
        "Validation · minmax · tensorrt · 3 in float · 400 texts · 25 Nov 16:49 (validate-1)"
    assert run_name(val, lambda _: None, with_id=False) == "Validation · build-1 · 400 texts · 25 Nov 16:49"
    cs = record("calibset-1", "calibset", {"strategy": "match", "size": 128, "seed": 0})
    assert run_name(cs, with_id=False) == "Calibration set · match · 128 texts · 25 Nov 16:49"
    cmp = record("compare-1", "compare", {"methods": ["entropy", "minmax"], "placement": "tensorrt",
                                          "validation": {"limit": 0}}, {"recommended": "minmax"})
    assert run_name(cmp, with_id=False) == \
        "Calibrators side by side · 2 calibrators · tensorrt · best minmax · 25 Nov 16:49"
    rep = record("report-1", "report", {"evaluations": ["a", "b"]}, {"verdict": "FAIL"})
    assert run_name(rep, with_id=False) == "Report · FAIL · 2 runs · 25 Nov 16:49"
    assert short_time("") == "" and short_time("bad") == "bad"


def test_runs_recorded_in_todays_nested_layout_get_the_same_names():
    """Today's params nest the model, data, ranges and placement; the names read both layouts."""
    from calib.build import BuildConfig
    from calib.calibrate import RangesRef
    from calib.compare import CompareConfig
    from calib.data import DataSpec
    from calib.evaluation import EvalSettings
    from calib.model import ModelRef
    from calib.pipeline import config_params
    from calib.placement import Placement
    from calib.sensitivity import SensitivityConfig

    built = config_params(BuildConfig(model="m.onnx", ranges=RangesRef("/r/calibrate-1", "minmax"),
                                      placement=Placement("tensorrt", exclude_nodes=("a", "b", "c"))))
    assert run_name(record("build-1", "build", built), with_id=False) == \
        "Build · minmax · tensorrt · 3 in float · 25 Nov 16:49"
    from_file = config_params(BuildConfig(model="m.onnx", ranges=RangesRef("/x/bert-ranges.json")))
    assert run_name(record("build-2", "build", from_file), with_id=False) == "Build · bert-ranges · tensorrt · 25 Nov 16:49"
    model, data = ModelRef("m.onnx", "tok"), DataSpec("d.csv")
    compared = config_params(CompareConfig(calibration="/r/c", model=model, data=data, methods=("entropy", "minmax"),
                                           settings=EvalSettings(limit=64), placement=Placement("all")))
    assert run_name(record("compare-1", "compare", compared), with_id=False) == \
        "Calibrators side by side · 2 calibrators · all · 64 texts · 25 Nov 16:49"
    searched = config_params(SensitivityConfig(model=model, data=data, ranges=RangesRef("/r/c", "percentile"),
                                               placement=Placement("all"), granularity="block"))
    assert run_name(record("sensitivity-1", "sensitivity", searched), with_id=False) == \
        "Sensitivity · percentile · all · block · 25 Nov 16:49"
    old = record("sensitivity-0", "sensitivity", {"method": "entropy", "preset": "tensorrt", "granularity": "node"})
    assert run_name(old, with_id=False) == "Sensitivity · entropy · tensorrt · node · 25 Nov 16:49"
