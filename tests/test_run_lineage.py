"""Decisions the app's Validate and Build pages used to make inline, now in the library: the build config a
run recorded (and the same build with nodes kept in float), the parent run of a stage, the model of a
calibration."""

from __future__ import annotations

import json

import pytest

from calib.build import BuildConfig
from calib.calibrate import RangesRef
from calib.pipeline import config_params
from calib.placement import Placement, exact_pattern
from calib.workspace import Workspace


def _run(ws: Workspace, stage: str, params: dict | None = None, parents: tuple[str, ...] = (),
         run_id: str | None = None) -> str:
    with ws.start_run(stage, params or {}, parents=parents, run_id=run_id) as ctx:
        (ctx.dir / "x.json").write_text("{}")
        return ctx.id


def test_a_recorded_build_config_reads_back_and_keeps_nodes_in_float():
    config = BuildConfig(model="m.onnx", ranges=RangesRef("cal", "minmax"),
                         placement=Placement(exclude_nodes=("a", "/l.0/MatMul")), profile=(1, 16, 32, 1, 64, 128),
                         smooth="auto")
    params = json.loads(json.dumps(config_params(config)))  # lists, as the registry stores them
    assert BuildConfig.from_params({**params, "added_in_a_later_version": 1}) == config
    fallback = config.with_float_nodes(["/l.0/MatMul", "/l[1]/MatMul*", "b"])
    assert fallback.placement.exclude_nodes == ("a", "/l.0/MatMul", exact_pattern("/l[1]/MatMul*"), "b")
    assert exact_pattern("/l[1]/MatMul*").startswith("re:^") and fallback.ranges.method == "minmax"
    assert fallback.placement.preset == config.placement.preset
    flat = {k: v for k, v in params.items() if k != "placement"} | {"placement": "tensorrt",
                                                                     "exclude_nodes": ["a", "/l.0/MatMul"]}
    assert BuildConfig.from_params(flat) == config  # the flat layout 0.1 recorded


def test_the_parent_of_a_stage_is_found_by_its_record_not_its_id(tmp_path):
    ws = Workspace(tmp_path / "ws")
    cal = _run(ws, "calibrate", run_id="build-looks-like-a-build-but-is-a-calibration")
    build = _run(ws, "build", parents=(cal,))
    gone = _run(ws, "build")
    validate = _run(ws, "validate", parents=(gone, cal, build))
    ws.delete_run(gone, force=True)
    record = ws.get_run(validate)
    assert ws.parent_of(record, "build").id == build  # the deleted build is skipped
    assert ws.parent_of(record, "calibrate").id == cal
    assert ws.parent_of(ws.get_run(build), "build") is None
    assert ws.parent_of(record, "sensitivity") is None
    assert [r.id for r in ws.children_of(cal, "validate")] == [validate]
    assert [r.id for r in ws.children_of(cal, "build")] == [build]  # the deleted build is not listed
    second = _run(ws, "validate", parents=(build,))
    assert [r.id for r in ws.children_of(build, "validate")] == [second, validate]  # newest first
    assert ws.children_of(build, "report") == [] and ws.children_of(second, "validate") == []


def test_the_calibration_of_a_build_is_its_parent_else_the_folder_its_config_names(tmp_path):
    from calib.build import calibration_of

    ws = Workspace(tmp_path / "ws")
    cal = _run(ws, "calibrate")
    made = _run(ws, "build", config_params(BuildConfig(model="m.onnx", ranges=RangesRef("/nowhere"))), parents=(cal,))
    assert calibration_of(ws, ws.get_run(made)) == ws.get_run(cal).dir  # by the registry, not the path
    elsewhere = tmp_path / "copied-calibration"
    elsewhere.mkdir()
    named = _run(ws, "build", config_params(BuildConfig(model="m.onnx", ranges=RangesRef(str(elsewhere)))))
    assert calibration_of(ws, ws.get_run(named)) == elsewhere
    gone = _run(ws, "build", config_params(BuildConfig(model="m.onnx", ranges=RangesRef(str(tmp_path / "deleted")))))
    flat = _run(ws, "build", {"model": "m.onnx", "calibration": str(elsewhere), "placement": "all"})  # 0.1 params
    assert calibration_of(ws, ws.get_run(gone)) is None and calibration_of(ws, ws.get_run(flat)) == elsewhere


@pytest.mark.demo
def test_a_calibration_names_the_model_it_was_made_for(demo_workspace, tmp_path):
    from calib.calibrate import CalibrateConfig, calibrate
    from calib.calibset import assemble, config_from_dict
    from calib.inputs import demo_values

    cset = assemble(config_from_dict({**demo_values("rt-sentiment", demo_workspace), "size": 16}), tmp_path / "set")
    cal = calibrate(CalibrateConfig(calibration_set=str(cset.dir), methods=("minmax",)), tmp_path / "cal")
    assert cal.model_path() == cset.model_spec().onnx_path


def test_a_placement_reads_from_every_record_form():
    """Today's mapping (JSON lists, keys of a later version ignored), 0.1's preset name alone, or nothing."""
    assert Placement.from_record({"preset": "all", "exclude_nodes": ["a", "b"], "later": 1}) == Placement(
        "all", exclude_nodes=("a", "b"))
    assert Placement.from_record("tensorrt-residual") == Placement("tensorrt-residual")
    assert Placement.from_record(None) == Placement()
