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

    project = Project(kind="custom", model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
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


def test_the_search_budget_starts_from_the_release_budget():
    from lib.sensitivity_view import search_budget, search_budget_start

    from calib.sensitivity import SEARCH_BUDGET
    from calib.verdict import ReleaseBudget

    assert search_budget_start(ReleaseBudget(max_drop=1.0, min_agreement=0.98, min_embedding_cosine=0.995)) == {
        "max_drop": 1.0, "min_agreement": 0.98, "min_embedding_cosine": 0.995}
    # an unlabelled or embedding project's budget leaves criteria out: the search's defaults fill them
    start = search_budget_start(ReleaseBudget(max_drop=None, min_agreement=None, min_embedding_cosine=None))
    assert start == {"max_drop": SEARCH_BUDGET.max_drop, "min_agreement": SEARCH_BUDGET.min_agreement,
                     "min_embedding_cosine": 0.0}
    assert search_budget(0.5, 0.99, 0.0) == SEARCH_BUDGET
    assert search_budget(2, 0.9, 0.99) == ReleaseBudget(max_drop=2.0, min_agreement=0.9, min_embedding_cosine=0.99)


def test_the_verdict_judges_the_newer_run_until_the_reader_picks():
    from lib.sensitivity_view import judged_stage

    state: dict = {}
    assert judged_stage(state, ("val-1", "cmp-1"), "compare") == "compare"
    state["val-judge"] = "validate"  # the reader picks the validation
    assert judged_stage(state, ("val-1", "cmp-1"), "compare") == "validate"  # kept on reruns
    assert judged_stage(state, ("val-2", "cmp-1"), "validate") == "validate"  # a new run: the newer one again
    assert judged_stage(state, ("val-2", "cmp-2"), "compare") == "compare"


def test_layer_methods_leave_out_the_engines_own_range():
    from calib.layers import ENGINE_RANGE
    from calib.report import layer_methods, layer_rows

    ev = Evaluation.load(FIXTURES / "validate")
    rows = layer_rows(ev.layers)
    assert ENGINE_RANGE not in layer_methods(rows)
    assert layer_methods([{"amax": {"minmax": 1, ENGINE_RANGE: 1}}, {"amax": {"entropy": 1}}]) == ["entropy", "minmax"]


def test_the_project_page_checks_a_project_and_reads_its_class_names(workspace, tiny_model_path, tiny_tokenizer_dir,
                                                                        tiny_csv, tmp_path):
    from lib.project import Project, checked_project, parse_labels

    from calib.data import label_names, load_rows

    assert parse_labels(" neg, pos ,, ") == ("neg", "pos") and parse_labels("") == ()
    candidate = Project(kind="custom", model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
                        pool_source=str(tiny_csv), text_column="text", label_column="label", max_length=64)
    checked = checked_project(workspace, candidate)
    spec = DataSpec(str(tiny_csv), text_column="text", label_column="label")
    assert checked.labels == tuple(label_names(load_rows(spec), spec)) and checked.labels
    typed = Project(**{**candidate.to_dict(), "labels": ("a", "b")})
    assert checked_project(workspace, typed).labels == ("a", "b")  # typed names are kept
    with pytest.raises(InputError):
        checked_project(workspace, Project(**{**candidate.to_dict(), "labels": (), "text_column": "no such column"}))
    with pytest.raises(InputError):
        checked_project(workspace, Project(**{**candidate.to_dict(), "labels": (), "model": str(tmp_path / "x")}))


def test_recipes_are_named_and_saved_in_the_workspace(workspace):
    from lib.project import Project
    from lib.stages import RECIPES_SUBDIR, recipe_name, recipe_path

    assert recipe_name(Project(kind="demo", task="rt-sentiment"), "match", 128) == "rt-sentiment-match-128"
    assert recipe_name(Project(kind="custom"), "uniform", 64) == "custom-uniform-64"
    folder = workspace.root / RECIPES_SUBDIR
    assert recipe_path(workspace, "my recipe") == folder / "my_recipe.json"
    assert recipe_path(workspace, "../../etc/x.json") == folder / "x.json"  # no way out of the folder
    assert recipe_path(workspace, "  ") == folder / "recipe.json"


def test_a_demo_projects_recipe_names_its_task_and_a_custom_ones_its_paths(tmp_path):
    import json

    from lib.project import Project
    from lib.stages import save_project_recipe

    from calib.calibset import CalibrationSet

    cs = CalibrationSet.load(FIXTURES / "calibset")
    demo = json.loads(save_project_recipe(Project(kind="demo", task="bbc-topic"), cs, tmp_path / "d.json").read_text())
    custom = json.loads(save_project_recipe(Project(kind="custom"), cs, tmp_path / "c.json", description="x").read_text())
    assert demo["demo"] == "bbc-topic" and "model" not in demo["config"]["model"] and "source" not in demo["config"]["data"]
    assert "demo" not in custom and custom["config"]["model"]["model"] == cs.config.model.model
    assert custom["config"]["data"]["source"] == cs.config.data.source and custom["description"] == "x"
    assert Project(kind="custom", task="bbc-topic").demo is None and Project().demo == "bbc-topic"


def test_calibration_set_page_reads_the_set_typed():
    from calib.calibset import CalibrationSet
    from calib.data import LoadReport

    cs = CalibrationSet.load(FIXTURES / "calibset")  # a 0.1 set
    assert cs.profile_shapes == {"min": (1, 1), "opt": (16, 56), "max": (32, 64)}
    assert cs.profile_sequences == (1, 56, 64) and cs.profile_batches == (1, 16, 32)
    assert cs.trtexec_flags[0] == "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert cs.dataset_source.endswith("data.csv") and cs.target_kind == "pool"
    assert isinstance(cs.hygiene, LoadReport) and cs.hygiene.rows == 120


@pytest.mark.demo
def test_the_demo_preparation_runs_in_the_stage_form(demo_workspace, tmp_path):
    """The Project page's background run: prepare_demo as fn(config, out_dir, progress=); an intact
    prepared task is reused, its assets stay in <workspace>/demo."""
    from calib.demo import DemoConfig, prepare_demo_run

    seen = []
    manifest = prepare_demo_run(DemoConfig(workspace=str(demo_workspace), tasks=("rt-sentiment",)), tmp_path / "run",
                                progress=lambda f, m="": seen.append(f))
    assert manifest.reused == ("rt-sentiment",) and manifest.built == ()
    assert manifest.task_dir("rt-sentiment") == demo_workspace / "demo" / "rt-sentiment"
    assert not (tmp_path / "run").exists()  # nothing written in the run folder


def test_a_project_saved_before_the_rename_still_opens():
    """The project names its model and tokenizer as ModelRef does; one saved with 0.1's names reads the same."""
    from lib.project import Project

    old = {"kind": "custom", "onnx_path": "/m/model.onnx", "tokenizer_dir": "/m/tok", "pool_source": "d.csv",
           "labels": ["a"], "budget": {"max_drop": 1.0}}
    project = Project.from_dict(old)
    assert project.model == "/m/model.onnx" and project.tokenizer == "/m/tok" and project.labels == ("a",)
    assert project.budget.max_drop == 1.0 and Project.from_dict(project.to_dict()) == project
    assert "model" in project.to_dict() and "onnx_path" not in project.to_dict()


def test_reports_and_comparisons_read_typed(tmp_path):
    """The verdict and budget a report recorded and the command that re-checks it, as the Validate page and
    `calib report` show them (none for 0.1's reports, which carried no verdict); a comparison's rows, budget
    and recommended row."""
    import json

    from calib.compare import SCHEMA, CalibratorComparison
    from calib.report import Report, ReportConfig, make_report
    from calib.verdict import ReleaseBudget, judge

    assert Report.load(FIXTURES / "report").verdict is None
    budget = ReleaseBudget(max_drop=10.0, min_agreement=0.9, min_embedding_cosine=None)
    rep = make_report(ReportConfig(evaluations=(str(FIXTURES / "validate"),), budget=budget), tmp_path / "r")
    assert rep.verdict is not None and rep.verdict.status == rep.data["verdict"]["status"] == "PASS"
    assert rep.verdict.reason == rep.data["verdict"]["reason"] and rep.budget == budget
    assert rep.gate_command().startswith(f"calib gate {tmp_path / 'r' / 'report.json'}")
    assert "--max-drop 10" in rep.gate_command() and "--min-agreement 0.9" in rep.gate_command()

    figures = [{"top1_agreement": 0.85, "accuracy_drop_points": 2.0}, {"top1_agreement": 0.95, "accuracy_drop_points": 1.0}]
    rows = [{"calibrator": name, "rows": 40, **f, "verdict": judge(f, budget).to_dict(),
             "headline": {"model_kind": "classifier"}} for name, f in zip(("entropy", "minmax"), figures)]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "comparison.json").write_text(json.dumps({
        "schema": SCHEMA, "rows": rows, "budget": budget.to_dict(), "placement": "tensorrt", "model_sha256": "x",
        "recommendation": {"index": 1, "name": "minmax", "passes": True, "reason": "minmax passes", "default_note": ""}}))
    comparison = CalibratorComparison.load(tmp_path / "c")
    assert comparison.rows == rows and comparison.budget == budget and comparison.placement == "tensorrt"
    assert comparison.recommended_row == rows[1]
    best = comparison.recommended
    assert best.calibrator == "minmax" and best.texts == 40 and best.verdict.passed and best.figure("top1_agreement") == 0.95
    assert [e.verdict.passed for e in comparison.entries] == [False, True] and not comparison.is_embedding
    assert best.figure("drop_ci_low_points") is None and comparison.summary()["passing"] == ["minmax"]
    assert comparison.recommended_evaluation == tmp_path / "c" / "minmax" / "evaluation"
    from calib.placement import Placement

    data = json.loads((tmp_path / "c" / "comparison.json").read_text())
    data["placement"] = {"preset": "tensorrt", "exclude_nodes": ["layer.0/*"]}  # today's record: the whole placement
    (tmp_path / "c" / "comparison.json").write_text(json.dumps(data))
    again = CalibratorComparison.load(tmp_path / "c")
    assert again.build_placement == Placement("tensorrt", exclude_nodes=("layer.0/*",)) and again.placement == "tensorrt"
    assert again.summary()["placement"] == "tensorrt" and comparison.build_placement == Placement("tensorrt")


def test_home_judges_the_sessions_validation_else_the_newest(tmp_path):
    from lib.runs import validation_to_judge

    from calib.workspace import RunRecord

    def rec(rid, on_disk=True):
        if on_disk:
            (tmp_path / rid).mkdir(exist_ok=True)
        return RunRecord(rid, "validate", "", "", {}, [], "finished", 1.0, "", "", {}, "", None, tmp_path / rid)

    runs = [rec("v3"), rec("v2"), rec("v1")]
    assert validation_to_judge(runs, "v2").id == "v2"  # the one this session looks at
    assert validation_to_judge(runs, None).id == "v3" and validation_to_judge(runs, "gone").id == "v3"
    assert validation_to_judge([rec("v9", on_disk=False)], None) is None and validation_to_judge([], None) is None


def test_an_old_build_reads_through_the_typed_accessors():
    """Everything `calib build` prints and a search started from a build records, read from 0.1's engine.json."""
    art = EngineArtifact.load(FIXTURES / "engine")
    assert art.ranges_record == art.meta["ranges"] and art.placement_record == art.meta["placement"]
    assert art.labels == () and art.unknown_tensors == () and art.config is not None
    assert art.config.placement.preset == art.placement_record["preset"]
    record = art.provenance()
    assert record["build"] == str(art.dir) and record["method"] == art.method and record["config"] == art.meta["config"]
    assert art.engine_backend == art.backend == "ort"


def test_first_values_of_the_calibration_set_page_are_the_librarys():
    import dataclasses

    from lib.stages import calibset_defaults

    from calib.calibset import AssembleConfig

    defaults = {f.name: f.default for f in dataclasses.fields(AssembleConfig) if f.default is not dataclasses.MISSING}
    first = calibset_defaults("eval", 10_000, labelled=True)
    assert first["cs-strategy"] == "match" and first["cs-size"] == defaults["size"] and first["cs-stratify"]
    assert first["cs-shortfall"] == defaults["shortfall"] and first["cs-opt-pct"] == defaults["opt_percentile"]
    assert first["cs-edges"] == ", ".join(str(e) for e in defaults["edges"])
    small = calibset_defaults("pool", 40, labelled=False)
    assert small["cs-strategy"] == defaults["strategy"] and small["cs-size"] == 40 and not small["cs-stratify"]


def test_split_guesses_for_datasets_as_users_export_them():
    from calib.data import guess_splits

    assert guess_splits(["train", "calibration", "eval"]) == ("calibration", "eval")  # the demo's
    assert guess_splits(["train", "validation", "test"]) == ("train", "test")  # the hub's: the held-out split
    assert guess_splits(["a", "b"]) == ("a", "b")
    with pytest.raises(InputError):
        guess_splits([])


def test_calibrate_and_calibration_set_page_figures():
    import numpy as np
    from lib.charts import amax_long, histogram_bars, length_facts, widest_tensor

    from calib.buckets import parse_edges

    table = pd.DataFrame({"#": [0, 1, 2], "tensor": ["a", "b", "c"], "max": [1.0, None, 5.0],
                          "minmax": [1.0, 0.0, float("inf")], "entropy": [0.5, None, 2.0]})
    long = amax_long(table, ["minmax", "entropy"])
    assert sorted(zip(long["tensor"], long["method"])) == [("a", "entropy"), ("a", "minmax"), ("c", "entropy")]
    assert widest_tensor(table) == 2 and widest_tensor(table.iloc[:0]) == 0
    bars = histogram_bars(np.ones(1000), width=0.01, max_bars=256)
    assert len(bars) <= 256 and bars["count"].sum() == 1000 and bars["to"].iloc[0] == pytest.approx(0.04)
    assert histogram_bars(np.zeros(0), width=0.1) is None and histogram_bars(np.ones(4), width=0.0) is None
    facts = length_facts({"pool": np.array([10, 20, 30, 300])}, 256)
    assert facts.iloc[0]["longest"] == 300 and facts.iloc[0]["over 256 (truncated)"] == "25.0 %"
    assert parse_edges("0, 32 64,128") == (0, 32, 64, 128)
    for bad in ("0, x", "5, 10", ""):
        with pytest.raises(InputError):
            parse_edges(bad)


def test_the_project_page_warns_when_calibration_and_evaluation_share_rows():
    from lib.project import Project, same_rows_warning

    assert "same rows" in same_rows_warning(Project(kind="custom", pool_source="d.csv"))
    assert same_rows_warning(Project(kind="custom", pool_source="d.csv", eval_source="e.csv")) is None
    assert same_rows_warning(Project(kind="custom", pool_source="d", pool_split="train", eval_split="test")) is None
    assert same_rows_warning(Project()) is None  # the demo's splits are disjoint


def test_the_calibration_set_pages_target_recipe_and_series_decisions():
    import numpy as np
    from lib.stages import (
        length_series,
        recipe_data_note,
        recipe_widget_values,
        target_fields,
        target_options,
    )

    from calib.calibset import CalibrationSet
    from calib.data import DataSpec

    eval_fields = {"target_kind": "eval", "target_source": None, "target_split": "eval"}
    assert target_options(None) == ["pool", "lengths"] and target_options(eval_fields) == ["eval", "pool", "lengths"]
    assert target_fields("eval", eval_fields) == eval_fields
    assert target_fields("lengths", None, "prod.csv") == {"target_kind": "lengths", "target_source": "prod.csv",
                                                           "target_split": None}
    assert target_fields("pool", eval_fields)["target_kind"] == "pool"
    with pytest.raises(InputError, match="production token lengths"):
        target_fields("lengths", None)

    cs = CalibrationSet.load(FIXTURES / "calibset")  # 0.1's: matched against its pool
    values = recipe_widget_values(cs.config)
    assert values["cs-strategy"] == cs.config.strategy and values["cs-size"] == cs.config.size
    assert values["cs-target"] == "pool" and values["cs-edges"] == ", ".join(map(str, cs.config.edges))
    assert recipe_data_note(cs.config, cs.config.data) is None
    assert "only its sampling settings" in recipe_data_note(cs.config, DataSpec("other.csv"))

    pool, target = np.arange(10), np.arange(5)
    assert list(length_series(pool, "pool", pool)) == ["pool"]
    assert list(length_series(pool, "eval", target)) == ["pool", "target"]
    saved = length_series(pool, "pool", pool, calibration_set=cs, project_source=cs.dataset_source)
    assert list(saved) == ["pool", "calibration set"] and len(saved["calibration set"]) == cs.size
    elsewhere = length_series(pool, "eval", target, calibration_set=cs, project_source="another.csv")
    assert list(elsewhere) == ["calibration set"]  # another pool, and matched against another kind of target


def test_the_project_pages_carry_over_rules():
    """The budget and max length carry over only to the same project; the custom form starts empty for a demo."""
    from lib.project import Project, custom_form_values, demo_project, first_max_length

    from calib.verdict import ReleaseBudget

    budget = ReleaseBudget(max_drop=0.5)
    current = Project(kind="demo", task="bbc-topic", max_length=96, budget=budget)
    assert demo_project(current, "bbc-topic", 64) == Project(kind="demo", task="bbc-topic", max_length=64, budget=budget)
    assert demo_project(current, "rt-sentiment", 64).budget is None
    assert demo_project(Project(kind="custom", task="bbc-topic", budget=budget), "bbc-topic", 64).budget is None
    assert first_max_length(current, task="bbc-topic", card_length=128) == 96
    assert first_max_length(current, task="rt-sentiment", card_length=128) == 128
    assert first_max_length(Project(kind="demo", task="bbc-topic"), task="bbc-topic", card_length=128) == 128
    assert first_max_length(current) == 128  # the custom form, shown over a demo project
    custom = Project(kind="custom", model="m.onnx", tokenizer="tok", pool_source="p.csv", max_length=256,
                     labels=("neg", "pos"))
    assert first_max_length(custom) == 256 and first_max_length(custom, task="bbc-topic", card_length=128) == 128
    assert custom_form_values(custom) == {"model": "m.onnx", "tokenizer": "tok", "pool_source": "p.csv",
                                          "eval_source": "", "labels": "neg, pos", "drop_empty": False,
                                          "normalize": "none"}
    assert set(custom_form_values(current).values()) <= {"", False, "none"}


def test_the_runs_pages_first_choices(workspace):
    from lib.runs import compare_defaults, parse_tags, report_to_show

    ids: dict[str, list[str]] = {}
    for i, stage in enumerate(("calibset", "build", "validate", "validate", "validate", "report", "report")):
        with workspace.start_run(stage, {}, session="a" if i % 2 else "b") as ctx:
            (ctx.dir / "x.json").write_text("{}")
        ids.setdefault(stage, []).append(ctx.id)
    runs = workspace.list_runs()  # newest first
    stage, picked = compare_defaults(runs)
    assert stage == "validate" and picked == ids["validate"][::-1][:2]
    no_validation = [r for r in runs if r.stage != "validate"]
    assert compare_defaults(no_validation)[0] == "calibset" and compare_defaults([]) is None
    reports = [r for r in runs if r.stage == "report"]
    assert report_to_show(reports, reports[1].session) == reports[1]
    assert report_to_show(reports, "another session") == reports[0]
    assert parse_tags(" release, ,rc1 ,") == ["release", "rc1"]


def test_the_calibrate_pages_thresholds_leave_out_unusable_ranges():
    from lib.charts import threshold_frame

    from calib.ranges import Ranges

    ranges = {"minmax": Ranges("minmax", {}, "", {"a": 2.0, "b": float("nan")}),
              "percentile": Ranges("percentile", {}, "", {"a": 1.5})}
    assert threshold_frame(ranges, "a").to_dict("records") == [{"method": "minmax", "amax": 2.0},
                                                               {"method": "percentile", "amax": 1.5}]
    assert threshold_frame(ranges, "b").empty and list(threshold_frame(ranges, "b").columns) == ["method", "amax"]


def test_run_pickers_filter_by_the_model_each_run_records(workspace):
    """Calibration sets, calibrations, builds and validations record their model's sha256 in the registry
    summary, so a page's picker offers only the project model's runs (runs that recorded none stay)."""
    import types

    from lib.ui import finished_runs

    from calib.build import EngineArtifact
    from calib.calibrate import Calibration
    from calib.calibset import CalibrationSet
    from calib.validate import Evaluation

    assert CalibrationSet.load(FIXTURES / "calibset").summary()["model_sha256"] == CalibrationSet.load(
        FIXTURES / "calibset").model_sha256
    assert Calibration.load(FIXTURES / "calibrate").summary()["model_sha256"] == Calibration.load(
        FIXTURES / "calibrate").model_sha256
    assert EngineArtifact.load(FIXTURES / "engine").summary()["model_sha256"] == EngineArtifact.load(
        FIXTURES / "engine").model_sha256
    assert Evaluation.load(FIXTURES / "validate").summary()["model_sha256"] == Evaluation.load(
        FIXTURES / "validate").model.sha256
    for sha in ("aaa", "bbb", None):
        with workspace.start_run("calibset", {}, session="s") as ctx:
            (ctx.dir / "x.json").write_text("{}")
            if sha:
                ctx.summary["model_sha256"] = sha
    page = types.SimpleNamespace(ws=workspace, session="s")
    kept = finished_runs(page, "calibset", model_sha256="aaa")
    assert sorted(r.summary.get("model_sha256") or "" for r in kept) == ["", "aaa"]


def test_the_validate_pages_layer_and_comparison_frames_read_typed_records(tmp_path):
    import json

    from lib.charts import clipped_long, layer_frame
    from lib.verdict_view import comparison_frame

    from calib import formatting as fmt
    from calib.compare import SCHEMA, CalibratorComparison
    from calib.validate import Evaluation
    from calib.verdict import ReleaseBudget, judge

    layers = Evaluation.load(FIXTURES / "validate").layer_report
    rows = [t.row() for t in layers.quantized]
    methods = sorted({m for r in rows for m in r["saturation_rate"]})
    long = clipped_long(layer_frame(rows, methods), methods)
    assert set(long["method"]) <= set(methods) and long["clipped"].notna().all()
    assert len(long) == sum(1 for r in rows for m in methods if r["saturation_rate"].get(m) is not None)

    budget = ReleaseBudget(max_drop=None, min_agreement=0.9, min_embedding_cosine=None)
    figures = {"top1_agreement": 0.95, "worst_bucket": {"bucket": "0-7", "n": 3}}
    (tmp_path / "comparison.json").write_text(json.dumps({
        "schema": SCHEMA, "rows": [{"calibrator": "minmax", "rows": 4, **figures, "verdict": judge(figures, budget).to_dict()}],
        "budget": budget.to_dict(), "placement": "tensorrt", "model_sha256": "x",
        "recommendation": {"index": 0, "name": "minmax", "passes": True, "reason": "r", "default_note": ""}}))
    frame = comparison_frame(CalibratorComparison.load(tmp_path).entries)
    assert frame.loc[0, "verdict"] == "PASS" and frame.loc[0, "worst bucket"] == "0-7"
    assert frame.loc[0, "top-1 agreement"] == fmt.percent(0.95) and frame.loc[0, "drop 95 % CI"] == fmt.MISSING



def test_a_custom_projects_data_hygiene_reaches_every_data_spec(workspace):
    """A custom project's drop-empty and HTML settings are the DataSpec fields every stage reads (pool and eval),
    saved with the project; projects saved before they existed open with the defaults."""
    from lib.project import Project, data_spec

    project = Project(kind="custom", pool_source="p.csv", eval_source="e.csv", drop_empty=True, normalize="html")
    for role in ("pool", "eval"):
        spec = data_spec(workspace, project, role)
        assert spec.drop_empty is True and spec.normalize == "html"
    assert Project.from_dict(project.to_dict()) == project
    old = {k: v for k, v in project.to_dict().items() if k not in ("drop_empty", "normalize")}
    assert Project.from_dict(old).normalize == "none" and Project.from_dict(old).drop_empty is False


def test_the_validate_pages_judged_evaluation_warnings_and_report_choices(workspace):
    import shutil

    from lib.runs import judged_evaluation, other_models_warning, report_choices

    from calib.validate import Evaluation

    with workspace.start_run("validate", {}) as ctx:
        for f in (FIXTURES / "validate").iterdir():
            shutil.copy(f, ctx.dir / f.name)
        ctx.summary["model_sha256"] = Evaluation.load(FIXTURES / "validate").model.sha256
    validation = workspace.get_run(ctx.id)
    ev, subject = judged_evaluation(validation, "Validation · 1 Dec")
    assert subject == "Validation · 1 Dec" and ev.metrics.n == 40
    with workspace.start_run("compare", {}) as cmp:  # a comparison (written by the first version that made one)
        shutil.copytree(Path(__file__).parent / "fixtures" / "first" / "compare", cmp.dir, dirs_exist_ok=True)
    from calib.compare import CalibratorComparison

    comparison = CalibratorComparison.load(workspace.run_dir(cmp.id))
    best, about = judged_evaluation(workspace.get_run(cmp.id), "Comparison")
    assert best.dir == comparison.recommended_evaluation and about == f"{comparison.recommendation.headline} (Comparison)"
    assert other_models_warning("a", "a", "build", "x") is None and other_models_warning("", "a", "build", "x") is None
    assert other_models_warning("a", "b", "build", "it will be refused") == (
        "This build was made for another model than the project's; it will be refused.")
    for sha in ("other model", None):
        with workspace.start_run("validate", {}) as other:
            (other.dir / "x.json").write_text("{}")
            if sha:
                other.summary["model_sha256"] = sha
    current = workspace.get_run(other.id)  # the unrecorded one: comparable with the first, not with "other model"
    validations, searches = report_choices(workspace, current, ev.model.sha256)
    assert [r.id for r in validations] == [validation.id] and searches == []


def test_the_calibration_set_form_fills_its_defaults_and_keeps_weights_for_custom_only():
    from lib.stages import assemble_values, calibset_form_values

    defaults = {"cs-strategy": "match", "cs-edges": "0, 32, 64", "cs-size": 128}
    assert calibset_form_values({}, defaults) == defaults
    assert calibset_form_values({"cs-strategy": "natural", "cs-edges": "0, 16", "cs-size": 8}, defaults) == {}
    assert calibset_form_values({"cs-edges": "  ", "cs-size": 8, "cs-strategy": "uniform"}, defaults) == {
        "cs-edges": "0, 32, 64"}  # an emptied edges field is the default edges again
    kw = {"size": 16, "seed": 0, "edges": (0, 32), "weights": (1.0, 2.0), "stratify": True, "shortfall": "neighbours",
          "opt_percentile": 95.0}
    base, target = {"model": "m", "data": "d"}, {"target_kind": "pool", "target_source": None, "target_split": None}
    assert assemble_values(base, target, strategy="custom", **kw)["weights"] == (1.0, 2.0)
    plain = assemble_values(base, target, strategy="match", **kw)
    assert plain["weights"] == () and plain["model"] == "m" and plain["target_kind"] == "pool" and plain["edges"] == (0, 32)


def test_the_project_forms_custom_project():
    from lib.project import NO_COLUMN, POOLING_OPTIONS, Project, custom_project

    from calib.verdict import ReleaseBudget

    current = Project(budget=ReleaseBudget(max_drop=1.0))
    made = custom_project(current, model=" m.onnx ", tokenizer="tok ", pool_source=" p.csv", pool_split=None,
                          eval_source="", eval_split=None, text_column="body", label_column=NO_COLUMN,
                          pair_column="second", max_length=96, labels_text="neg, pos,", logits_output=" ",
                          embedding_output="sentence_embedding", pooling="", drop_empty=True, normalize="html")
    assert made == Project(kind="custom", model="m.onnx", tokenizer="tok", pool_source="p.csv", text_column="body",
                           label_column=None, text_pair_column="second", max_length=96, labels=("neg", "pos"),
                           budget=current.budget, embedding_output="sentence_embedding", drop_empty=True,
                           normalize="html")
    assert POOLING_OPTIONS[0] == "" and "none" not in POOLING_OPTIONS and "mean" in POOLING_OPTIONS



def test_the_validate_pages_settings_are_the_evaluation_cores_but_for_two_choices():
    """The page's first settings differ from EvalSettings' only where it says why: 64 per-layer texts, and no
    per-layer pass for the side-by-side comparison."""
    import dataclasses

    from lib.stages import PAGE_COMPARE_SETTINGS, PAGE_EVAL_SETTINGS

    from calib.evaluation import EvalSettings

    assert PAGE_EVAL_SETTINGS == dataclasses.replace(EvalSettings(), layer_rows=64)
    assert PAGE_COMPARE_SETTINGS == dataclasses.replace(PAGE_EVAL_SETTINGS, layers=False)


def test_the_project_form_reopens_a_saved_custom_project_as_saved():
    from lib.project import NO_COLUMN, Project, data_form_choices

    saved = Project(kind="custom", text_column="body", label_column=None, text_pair_column="second",
                    pool_split="calibration", eval_split="test", pooling="mean")
    columns, splits = ["text", "body", "label", "second"], ["train", "calibration", "test"]
    assert data_form_choices(saved, columns, splits) == {
        "text_column": "body", "label_column": NO_COLUMN, "pair_column": "second", "pool_split": "calibration",
        "eval_split": "test", "pooling": "mean"}
    guessed = data_form_choices(Project(), columns, splits)  # a demo project: the well-known names
    assert guessed == {"text_column": "text", "label_column": "label", "pair_column": NO_COLUMN,
                       "pool_split": "calibration", "eval_split": "test", "pooling": ""}
    gone = data_form_choices(saved, ["sentence", "y"], [])  # another dataset: the saved columns are not there
    assert gone["text_column"] == "sentence" and gone["pair_column"] == NO_COLUMN and gone["pool_split"] is None


def test_a_rebuild_with_the_searchs_exclusions_keeps_the_builds_settings_and_lineage(workspace):
    from lib.sensitivity_view import rebuild_request

    from calib.build import BuildConfig
    from calib.calibrate import RangesRef
    from calib.pipeline import config_params
    from calib.placement import Placement

    built = BuildConfig(model="m.onnx", ranges=RangesRef("/r/cal", "percentile"), placement=Placement("tensorrt"),
                        smooth="auto")
    with workspace.start_run("build", config_params(built), parents=(), label="candidate") as b:
        (b.dir / "x.json").write_text("{}")
    with workspace.start_run("sensitivity", {}) as s:
        (s.dir / "x.json").write_text("{}")
    request = rebuild_request(workspace.get_run(b.id), workspace.get_run(s.id), ["/l.0/MatMul"])
    assert request["config"] == built.with_float_nodes(["/l.0/MatMul"]) and request["config"].smooth == "auto"
    assert request["parents"] == (s.id,) and request["label"] == "candidate"


def test_runs_of_one_model():
    from lib.runs import of_model

    runs = [SimpleRun({"model_sha256": "a"}), SimpleRun({"model_sha256": "b"}), SimpleRun({})]
    assert of_model(runs, "a") == [runs[0], runs[2]] and of_model(runs, None) == runs


class SimpleRun:
    def __init__(self, summary):
        self.summary = summary


def test_the_bucket_chart_draws_the_shares_the_evaluation_has():
    from lib.charts import bucket_measures_long
    from lib.verdict_view import bucket_frame

    from calib.validate import Evaluation

    ev = Evaluation.load(FIXTURES / "validate")
    long, measures = bucket_measures_long(bucket_frame(ev.metrics.bucket_figures, True))
    assert measures == ["FP32 accuracy", "INT8 accuracy", "agreement"] and long["value"].notna().all()
    _, unlabelled = bucket_measures_long(bucket_frame(ev.metrics.bucket_figures, False))
    assert unlabelled == ["agreement"]


def test_home_judges_the_newer_of_the_models_validation_and_comparison(workspace):
    """Home's verdict subject: the project model's runs only (runs that recorded no model stay), the newer
    of the validation this session looks at (else the newest) and the latest comparison on disk."""
    import time

    from lib.runs import home_verdict_run

    def finished(stage, sha):
        with workspace.start_run(stage, {}) as ctx:
            (ctx.dir / "x.json").write_text("{}")
            ctx.summary["model_sha256"] = sha
        time.sleep(1.05)  # finish times are recorded to the second
        return ctx.id

    assert home_verdict_run(workspace, "m", None) is None
    ours = finished("validate", "m")
    finished("validate", "other")  # another model's, newer
    assert home_verdict_run(workspace, "m", None).id == ours
    compared = finished("compare", "m")
    assert home_verdict_run(workspace, "m", None).id == compared  # newer than the validation
    newer = finished("validate", "")  # recorded no model: kept
    assert home_verdict_run(workspace, "m", None).id == newer
    assert home_verdict_run(workspace, "m", ours).id == compared  # the session's validation is older
    shutil_rmtree = __import__("shutil").rmtree
    shutil_rmtree(workspace.run_dir(compared))
    assert home_verdict_run(workspace, "m", ours).id == ours  # a comparison gone from disk is not judged


def test_the_calibrate_pages_notes_and_range_columns():
    from types import SimpleNamespace

    import pandas as pd
    from lib.charts import range_columns
    from lib.stages import calibration_notes

    many = SimpleNamespace(nonfinite_tensors=tuple(f"t{i}" for i in range(6)), zero_range_tensors=("z",))
    warning, zero = calibration_notes(many)
    assert warning.warning and warning.text.startswith("6 tensor(s) hold NaN or ±inf") and "t0, t1, t2, t3 …" in warning.text
    assert not zero.warning and zero.text == "1 tensor(s) were all zero on the calibration set."
    assert calibration_notes(SimpleNamespace(nonfinite_tensors=("m",), zero_range_tensors=()))[0].text.count("…") == 0
    assert calibration_notes(SimpleNamespace(nonfinite_tensors=(), zero_range_tensors=())) == []
    table = pd.DataFrame(columns=["#", "tensor", "op", "min", "max", "entropy", "minmax", "entropy / minmax",
                                  "non-finite"])
    assert range_columns(table) == ["min", "max", "entropy", "minmax", "entropy / minmax"]


def test_the_build_pages_backend_warning_and_command_tabs():
    from types import SimpleNamespace

    from lib.stages import backend_warning

    assert backend_warning("ort") is None
    missing = backend_warning("tensorrt", SimpleNamespace(available=False, reason="no GPU"))
    assert missing == "TensorRT is not available here (no GPU), so this build would fail; choose ONNX Runtime."
    assert backend_warning("tensorrt", SimpleNamespace(available=True, reason="")) is None
    art = EngineArtifact.load(FIXTURES / "engine")
    assert list(art.commands) == list(art.COMMAND_TITLES) and all(art.commands.values())


def test_the_validate_pages_layer_line_and_table():
    from types import SimpleNamespace

    import pandas as pd
    from lib.charts import worst_first
    from lib.stages import layer_note

    rows = [{"quantized": True, "sqnr_db": 12.0}, {"quantized": True, "sqnr_db": 30.0}, {"quantized": False}]
    bad = layer_note(SimpleNamespace(degraded_sqnr_db=20.0, degraded_cosine=0.99, first_degraded="a"), rows)
    assert bad.warning and bad.text.startswith("1 of 2 quantized tensors under 20 dB SQNR. First degraded tensor")
    assert "`a` (SQNR below 20 dB or cosine below 0.99)" in bad.text
    good = layer_note(SimpleNamespace(degraded_sqnr_db=10.0, degraded_cosine=0.99, first_degraded=None), rows)
    assert not good.warning and good.text == "0 of 2 quantized tensors under 10 dB SQNR: no quantized tensor is degraded."
    frame = pd.DataFrame({"name": ["00 a", "01 b", "02 c"], "tensor": ["a", "b", "c"], "SQNR (dB)": [30.0, None, 12.0]})
    table = worst_first(frame)
    assert list(table["tensor"]) == ["c", "a", "b"] and "name" not in table


def test_each_upload_kind_offers_what_its_reader_takes(tmp_path):
    """The uploaders' file types come from the upload registry, and a production-lengths upload is a file
    calib.lengths reads (not a dataset format it would refuse)."""
    from lib import uploads

    from calib.lengths import load_length_target

    assert uploads.widget_types(uploads.DATASET) == ["csv", "tsv", "json", "jsonl", "parquet"]
    assert uploads.extensions_text(uploads.RECIPE) == "JSON"
    for ext in uploads.LENGTHS.extensions:
        path = tmp_path / f"lengths{ext}"
        path.write_text("[12, 40, 7]" if ext == ".json" else "12\n40\n7\n")
        assert load_length_target(path).tolist() == [12, 40, 7]


def test_the_runs_pages_tags_and_reports(workspace):
    from lib.runs import all_tags, report_runs

    assert all_tags({"a": ("", ("rc", "tensorrt")), "b": ("note", ("rc",)), "c": ("", ())}) == ["rc", "tensorrt"]
    assert report_runs(workspace) == []
    with workspace.start_run("report", {}) as ctx:
        (ctx.dir / "report.json").write_text("{}")
    with workspace.start_run("report", {}) as gone:
        (gone.dir / "report.json").write_text("{}")
    __import__("shutil").rmtree(workspace.run_dir(gone.id))
    assert [r.id for r in report_runs(workspace)] == [ctx.id]  # one deleted from disk is not offered


def test_the_validate_pages_configs_come_from_the_project_and_the_widgets(workspace, tiny_model_path,
                                                                          tiny_tokenizer_dir, tiny_csv):
    """Each stage the Validate page starts gets its config from app/lib: the project's model and evaluation
    data, the page's settings with the widgets' values, the build's calibration when it is still there."""
    from lib.project import Project
    from lib.stages import (
        JUDGE_CHOICES,
        PAGE_COMPARE_SETTINGS,
        PAGE_EVAL_SETTINGS,
        compare_config,
        default_calibrator_note,
        judge_titles,
        judged_run,
        report_config,
        report_parents,
        report_title,
        sensitivity_config,
        validate_config,
    )

    from calib.build import BuildConfig
    from calib.calibrate import RangesRef
    from calib.pipeline import config_params
    from calib.sensitivity import SEARCH_SETTINGS
    from calib.verdict import TENSORRT_DEFAULT_CALIBRATOR, ReleaseBudget

    project = Project(kind="custom", model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
                      pool_source=str(tiny_csv), eval_source="eval.csv", text_column="text", label_column="label",
                      max_length=64, labels=("neg", "pos"))
    budget = ReleaseBudget(max_drop=0.5, min_agreement=0.98)
    cmp = compare_config(workspace, project, "/runs/cal", ["minmax", "mse"], "tensorrt", limit=96, budget=budget)
    assert cmp.methods == ("minmax", "mse") and cmp.placement.preset == "tensorrt" and cmp.budget == budget
    assert cmp.settings.limit == 96 and cmp.settings.layers is PAGE_COMPARE_SETTINGS.layers is False
    assert cmp.data.source == "eval.csv" and cmp.model.model == str(tiny_model_path)
    with pytest.raises(InputError, match="at least one range set"):
        compare_config(workspace, project, "/runs/cal", [], "tensorrt", limit=0, budget=budget)

    with workspace.start_run("calibrate", {}) as cal:
        (cal.dir / "x.json").write_text("{}")
    built = BuildConfig(model=str(tiny_model_path), ranges=RangesRef(str(cal.dir), "minmax"))
    with workspace.start_run("build", config_params(built), parents=(cal.id,)) as b:
        (b.dir / "x.json").write_text("{}")
    build_run = workspace.get_run(b.id)
    val = validate_config(workspace, project, build_run, limit=0, layers=False, layer_rows=16, bootstrap=200)
    assert val.engine == str(build_run.dir) and val.calibration == str(workspace.run_dir(cal.id))
    assert (val.settings.limit, val.settings.layers, val.settings.layer_rows, val.settings.bootstrap) == (0, False, 16, 200)
    assert val.settings.batch_size == PAGE_EVAL_SETTINGS.batch_size
    with workspace.start_run("build", {}) as lone:  # no calibration in the workspace, none named
        (lone.dir / "x.json").write_text("{}")
    assert validate_config(workspace, project, workspace.get_run(lone.id), limit=8, layers=True, layer_rows=8,
                           bootstrap=0).calibration is None

    sens = sensitivity_config(workspace, project, {"ranges": built.ranges, "placement": built.placement},
                              granularity="node", ranking="sqnr", budget=budget, max_evaluations=6, limit=64)
    assert sens.ranges == built.ranges and sens.max_evaluations == 6 and sens.budget == budget
    assert sens.settings.limit == 64 and sens.settings.batch_size == SEARCH_SETTINGS.batch_size

    with workspace.start_run("validate", {}) as v1, workspace.start_run("validate", {}) as v2:
        (v1.dir / "x.json").write_text("{}")
        (v2.dir / "x.json").write_text("{}")
    candidate = workspace.get_run(v1.id)
    rep = report_config(workspace, candidate, [v2.id], None, title=report_title(project), budget=budget)
    assert rep.evaluations == (str(candidate.dir), str(workspace.run_dir(v2.id))) and rep.sensitivity is None
    assert rep.title == f"INT8 accuracy report — {project.title}" and report_title(project, 4).endswith("— 4 calibrators")
    assert report_parents(candidate, [v2.id], "sens-1") == (v1.id, v2.id, "sens-1")

    assert JUDGE_CHOICES == ("validate", "compare") and "cmp-9" in judge_titles("cmp-9")["compare"]
    assert judged_run("validate", candidate, None) is candidate and judged_run("compare", candidate, None) is None
    with pytest.raises(InputError, match="verdict subject"):
        judged_run("report", candidate, None)
    assert default_calibrator_note("minmax") is None
    assert TENSORRT_DEFAULT_CALIBRATOR in default_calibrator_note(TENSORRT_DEFAULT_CALIBRATOR)


def test_the_calibration_set_pages_target_lengths(workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv, tmp_path):
    """The histogram's target: the evaluation data's token lengths, a production file's (an upload before a
    typed path; none until one is given) or the pool's own."""
    import numpy as np
    from lib.project import Project
    from lib.stages import dataset_lengths, lengths_source, target_lengths_of

    project = Project(kind="custom", model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
                      pool_source=str(tiny_csv), text_column="text", label_column="label", max_length=64)
    pool = np.array([3, 5, 8])
    assert target_lengths_of(workspace, project, "pool", pool) is pool
    assert target_lengths_of(workspace, project, "lengths", pool, None) is None
    lengths = tmp_path / "prod.txt"
    lengths.write_text("4\n9\n12\n")
    assert target_lengths_of(workspace, project, "lengths", pool, str(lengths)).tolist() == [4, 9, 12]
    evaluated = target_lengths_of(workspace, project, "eval", pool)  # the eval data is the pool here
    assert evaluated.tolist() == dataset_lengths(workspace, project, DataSpec(str(tiny_csv), text_column="text",
                                                                              label_column="label")).tolist()
    assert len(evaluated) > 0
    with pytest.raises(InputError, match="target"):
        target_lengths_of(workspace, project, "production", pool)
    assert lengths_source(None, "  /srv/prod.csv ") == "/srv/prod.csv" and lengths_source(None, " ") is None
    assert lengths_source(tmp_path / "up.csv", "/srv/prod.csv") == str(tmp_path / "up.csv")


def test_the_runs_pages_evaluations_files_and_report_view(workspace):
    """The Compare tab charts the validations that open (by name and id end) for each per-bucket measure; the
    History tab lists a run's files with what changed since and its summary flattened; the Reports tab shows
    the HTML, else the Markdown that is left, else nothing."""
    import shutil

    from lib.runs import (
        BUCKET_MEASURES,
        FILTERABLE_STATUSES,
        changed_files,
        files_frame,
        loaded_evaluations,
        overlay_frame,
        report_view,
        summary_frame,
    )

    with workspace.start_run("validate", {}) as good:
        for f in (FIXTURES / "validate").iterdir():
            shutil.copy(f, good.dir / f.name)
    with workspace.start_run("validate", {}) as broken:
        (broken.dir / "evaluation.json").write_text("{not json")
    runs = [workspace.get_run(good.id), workspace.get_run(broken.id)]
    evaluations = loaded_evaluations(runs)
    assert len(evaluations) == 1 and next(iter(evaluations)).endswith(good.id[-6:])
    for measure in BUCKET_MEASURES:
        frame = overlay_frame(evaluations, measure)
        assert list(frame.columns) == ["run", "bucket", "texts", "value"]
    agreement = overlay_frame(evaluations, "agreement")
    assert len(agreement) > 0 and agreement["value"].between(0, 1).all()
    with pytest.raises(InputError, match="per-bucket measure"):
        overlay_frame(evaluations, "accuracy")
    assert "finishing" not in FILTERABLE_STATUSES and "failed" in FILTERABLE_STATUSES

    run = workspace.get_run(good.id)
    assert changed_files(workspace, run) == []
    target = run.artifacts[0].path
    (run.dir / target).write_text("edited")
    changed = changed_files(workspace, run)
    assert changed == [target]
    files = files_frame(run, changed)
    assert list(files["file"]) == [a.path for a in run.artifacts]
    assert files.set_index("file")["intact"].to_dict() == {a.path: a.path != target for a in run.artifacts}
    with workspace.start_run("validate", {}) as summarised:
        (summarised.dir / "x.json").write_text("{}")
        summarised.summary = {"rows": 3, "buckets": {"short": {"n": 2}}}
    summary = summary_frame(workspace.get_run(summarised.id))
    assert summary.set_index("key")["value"].to_dict().get("buckets.short.n") in ("2", 2)

    with workspace.start_run("report", {}) as rep:
        (rep.dir / "report.md").write_text("# report")
        (rep.dir / "report.html").write_text("<h1>report</h1>")
    report = workspace.get_run(rep.id)
    assert report_view(report) == ("html", report.dir / "report.html")
    (report.dir / "report.html").unlink()
    assert report_view(report) == ("markdown", report.dir / "report.md")
    (report.dir / "report.md").unlink()
    assert report_view(report) is None


def test_every_app_page_is_registered_once_and_opens_as_itself():
    """app/lib/pages is the one list of pages: each file under app/pages is in it, in workflow order, and
    starts with its own key (so its title, icon and intro, Home's line and the links to it agree)."""
    import re

    from lib.context import STAGE_TITLES
    from lib.pages import APP_PAGES, app_page, link_label

    app = Path(__file__).resolve().parents[1] / "app"
    files = sorted(p.relative_to(app).as_posix() for p in (app / "pages").glob("*.py"))
    assert [p.path for p in APP_PAGES.values()] == files
    for key, page in APP_PAGES.items():
        source = (app / page.path).read_text(encoding="utf-8")
        assert re.findall(r'start_page\("([a-z]+)"\)', source) == [key], page.path
        assert page.stage is None or page.stage in STAGE_TITLES
        assert page.intro and page.step and page.icon.startswith(":material/")
    assert len({p.title for p in APP_PAGES.values()}) == len(APP_PAGES)
    assert link_label("build") == "Go to Build" and link_label("validate", "Open it on") == "Open it on Validate"
    with pytest.raises(KeyError, match="known: project"):
        app_page("nowhere")


def test_the_project_pages_model_facts(workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    """The Project page's model tiles, caption and I/O table come from the resolved model."""
    from dataclasses import replace

    from lib.model_view import classes_caption, model_caption, model_facts, model_io_frame, scored_outputs
    from lib.project import Project, model_spec

    project = Project(kind="custom", model=str(tiny_model_path), tokenizer=str(tiny_tokenizer_dir),
                      pool_source=str(tiny_csv), text_column="text", label_column="label", max_length=64,
                      labels=("neg", "pos"))
    spec = model_spec(workspace, project)
    facts = dict(model_facts(spec))
    assert facts == {"Inputs": len(spec.inputs), "Outputs": len(spec.outputs), "Max length": "64 tokens", "Classes": 2}
    io = model_io_frame(spec)
    assert list(io["kind"]) == ["input"] * len(spec.inputs) + ["output"] * len(spec.outputs)
    assert list(io["name"]) == [t.name for t in (*spec.inputs, *spec.outputs)]
    assert spec.sha256[:16] in model_caption(spec) and f"logits `{spec.logits_output}`" in scored_outputs(spec)
    assert classes_caption(spec) == "Classes in logit order: neg, pos"
    unnamed = replace(spec, labels=(), logits_output=None, embedding_output="emb", pooling="mean")
    assert dict(model_facts(unnamed))["Classes"] == "?" and classes_caption(unnamed) is None
    assert scored_outputs(unnamed) == "embedding `emb` (pooled: mean)"


def test_the_calibrate_and_build_pages_configs(tiny_model_path, tiny_csv):
    """The Calibrate and Build pages' runs come from app/lib: the chosen calibrators with their parameters on
    the project's cluster; the chosen range set, placement, backend and Advanced settings."""
    from lib.project import Project
    from lib.stages import build_config, calibrate_config, reasons_frame

    from calib.calibrate import RangesRef

    project = Project(kind="custom", model=str(tiny_model_path), pool_source=str(tiny_csv), cluster="local:2")
    cal = calibrate_config(project, "/runs/cs", ["percentile", "minmax"], {"percentile": {"percentile": 99.9}},
                           placement="all", tensors="all", batch_size=8, trt_version="10.3.0", histogram="two-pass")
    assert cal.methods == ("percentile", "minmax") and cal.method_params("percentile")["percentile"] == 99.9
    assert (cal.placement.preset, cal.tensors, cal.batch_size, cal.histogram, cal.cluster) == (
        "all", "all", 8, "two-pass", "local:2")
    with pytest.raises(InputError, match="at least one calibrator"):
        calibrate_config(project, "/runs/cs", [], {}, placement="all", tensors="all", batch_size=8,
                         trt_version="10.3.0", histogram="stream")
    built = build_config(tiny_model_path, "/runs/cal", "mse", Placement("tensorrt"), backend="ort", per_channel=False,
                         trt_version="10.3.0", smooth="auto", smooth_attention=True, bias_correction=True)
    assert built.ranges == RangesRef("/runs/cal", "mse") and built.model == str(tiny_model_path)
    assert (built.per_channel, built.smooth, built.smooth_attention, built.bias_correction) == (False, "auto", True, True)
    frame = reasons_frame({"/l.0/MatMul": "sensitivity"}, "node")
    assert frame.to_dict("records") == [{"node": "/l.0/MatMul", "why": "sensitivity"}]
    assert list(reasons_frame({}, "tensor").columns) == ["tensor", "why"]
