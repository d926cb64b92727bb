"""The decisions the app's pages delegate to app/lib and to the library's typed artifacts: each is a
plain function (numpy / pandas / typed objects in and out) tested here without a browser."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from calib import formatting as fmt
from calib.build import EngineArtifact
from calib.calibrate import Calibration
from calib.data import DataSpec
from calib.errors import InputError
from calib.model import ModelRef
from calib.placement import Placement
from calib.validate import Evaluation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))  # app/lib, imported inside the tests
FIXTURES = Path(__file__).parent / "fixtures" / "v1"  # written by calib 0.1


def test_eval_target_names_what_the_calibration_set_is_compared_with(workspace):
    from lib.project import Project
    from lib.stages import eval_target

    same = Project(kind="custom", pool_source="pool.csv")
    assert eval_target(workspace, same) is None  # the pool is the target
    split = Project(kind="custom", pool_source="d", pool_split="train", eval_split="test")
    assert eval_target(workspace, split) == {"target_kind": "eval", "target_source": None, "target_split": "test"}
    other = Project(kind="custom", pool_source="pool.csv", eval_source="eval.csv")
    assert eval_target(workspace, other) == {"target_kind": "dataset", "target_source": "eval.csv",
                                             "target_split": None}
    with pytest.raises(InputError, match="no dataset chosen"):
        eval_target(workspace, Project(kind="custom"))


def test_project_inputs_are_the_parts_every_config_takes(workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    from lib.project import Project
    from lib.stages import project_inputs

    project = Project(kind="custom", onnx_path=str(tiny_model_path), tokenizer_dir=str(tiny_tokenizer_dir),
                      pool_source=str(tiny_csv), eval_source="eval.csv", text_column="text", label_column="label",
                      max_length=64, labels=("neg", "pos"))
    inputs = project_inputs(workspace, project)
    model, data = inputs["model"], inputs["data"]
    assert isinstance(model, ModelRef) and model.model == str(tiny_model_path) and model.max_length == 64
    assert model.labels == ("neg", "pos") and model.roles_named  # the roles as the project resolved them
    assert data == DataSpec("eval.csv", text_column="text", label_column="label", workspace=str(workspace.root))
    assert project_inputs(workspace, project, "pool")["data"].source == str(tiny_csv)


def test_build_page_reads_the_engine_typed_and_warns_on_a_short_profile():
    from lib.stages import profile_caption, profile_warning

    art = EngineArtifact.load(FIXTURES / "engine")  # a 0.1 build: profile max sequence 64
    assert art.profile.max_seq == 64 and art.profile.opt_batch == 16 and art.method == art.meta["ranges"]["method"]
    assert art.cache_header == "TRT-100300-EntropyCalibration2" and art.cache_tensors == 11
    assert set(art.commands) == {"trt11", "trt10", "modelopt"} and all(isinstance(v, str) for v in art.commands.values())
    assert art.unmatched_patterns == () and isinstance(art.skipped_tensors, dict)
    caption = profile_caption(art)
    assert "`TRT-100300-EntropyCalibration2` · 11 tensors" in caption and "sequence 1/56/64" in caption
    assert profile_warning(art, 64) is None
    warning = profile_warning(art, 128)
    assert warning is not None and "max sequence is 64 tokens" in warning and "--maxShapes to 128" in warning


def test_build_placement_from_the_pages_choices():
    from lib.stages import build_placement

    placement = build_placement("tensorrt", ["a/MatMul", "b*c"], " */attention/*, re:^x$ ,", ["Softmax"])
    assert placement == Placement("tensorrt", exclude_nodes=("a/MatMul", r"re:^b\*c$", "*/attention/*", "re:^x$"),
                                  exclude_op_types=("Softmax",))
    assert build_placement("all", [], "", []) == Placement("all")


def test_the_build_method_is_the_default_when_it_was_computed():
    from calib.methods import DEFAULT_BUILD_METHOD, build_method_of

    assert build_method_of(["entropy", DEFAULT_BUILD_METHOD]) == DEFAULT_BUILD_METHOD
    assert build_method_of(["percentile", "entropy"]) == "percentile"
    with pytest.raises(InputError):
        build_method_of([])


def test_calibrate_page_tables_from_a_calibration():
    from lib.charts import range_frame

    cal = Calibration.load(FIXTURES / "calibrate")
    stats = cal.stats
    ranges = {m: cal.ranges(m) for m in cal.methods}
    frame = range_frame(stats.tensors, ranges)
    assert list(frame["tensor"]) == [t.name for t in stats.tensors]
    first = stats.tensors[0]
    assert frame["minmax"][0] == ranges["minmax"].amax[first.name]
    assert "entropy / minmax" not in frame  # no entropy run: no ratio column
    assert cal.nonfinite_tensors == () and cal.zero_range_tensors == ()
    assert cal.cache_header("minmax") == "TRT-100300-MinMaxCalibration" and cal.cache_omitted("minmax") == ()
    assert cal.ranges_path("percentile").is_file()
    with pytest.raises(InputError, match="has no 'entropy' ranges"):
        cal.cache_header("entropy")


def test_layer_frame_and_the_entropy_minmax_ratio():
    from lib.charts import layer_frame

    from calib.ranges import entropy_over_minmax

    rows = [{"tensor": "layer.0/attention/query/MatMul_out", "sqnr_db": 30.0, "amax": {"entropy": 2.0, "minmax": 8.0},
             "saturation_rate": {"entropy": 0.01, "minmax": 0.0}},
            {"tensor": "t2", "amax": {"entropy": 1.0, "minmax": 0.0}, "saturation_rate": {}}]
    frame = layer_frame(rows, ["entropy", "minmax"])
    assert list(frame["entropy ÷ minmax"].fillna(-1)) == [0.25, -1]  # a zero minmax range has no ratio
    assert frame["clipped entropy"][0] == 0.01 and frame["#"].tolist() == [0, 1]
    assert "entropy ÷ minmax" not in layer_frame(rows, ["minmax"])
    assert entropy_over_minmax({"entropy": 3.0}) is None


def test_baseline_deltas_against_the_pinned_run():
    import copy

    from lib.runs import baseline_deltas

    ev = Evaluation.load(FIXTURES / "validate")
    data = copy.deepcopy(ev.data)
    data["metrics"]["overall"]["agreement"]["top1_agreement"] = 0.95  # 0.925 in the baseline
    data["metrics"]["overall"]["accuracy_drop_points"] = 5.0  # 7.5 in the baseline
    better = Evaluation(ev.dir, data)
    frame = baseline_deltas({"old": ev, "new": better}, "old")
    assert isinstance(frame, pd.DataFrame) and list(frame["run"]) == ["old (baseline)", "new"]
    assert frame["Δ agreement"][0] == fmt.MISSING and frame["Δ agreement"][1] == "+2.50 pts"
    assert frame["agreement"][1] == fmt.percent(0.95) and frame["Δ drop (pts)"][1] == "-2.50 pts"
