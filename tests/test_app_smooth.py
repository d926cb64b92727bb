"""Build page: the outlier-migration option reaches the build (AppTest on the tiny model)."""

from __future__ import annotations

from test_app import (  # noqa: F401
    PAGES,
    app_workspace,
    assemble_and_calibrate,
    no_crash,
    open_app,
    use_tiny_project,
    wait_for_jobs,
)

from calib.build import EngineArtifact
from calib.workspace import Workspace


def test_build_page_migrates_outliers(app_workspace, tiny_model_path, tiny_tokenizer_dir, tiny_csv):  # noqa: F811
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at = assemble_and_calibrate(at, 16)
    at.switch_page(PAGES["build"]).run()
    no_crash(at)
    at.selectbox(key="build-smooth").set_value("0.5")
    at.button(key="build-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    build_run = Workspace(app_workspace).list_runs(stage="build")[0]
    smooth = EngineArtifact.load(build_run.dir).meta["smooth"]
    assert smooth["alpha"] == 0.5 and smooth["migrated"] > 0 and max(smooth["max_abs_output_delta"].values()) < 1e-4


def test_build_page_attention_folds_and_bias_correction(app_workspace, tiny_model_path, tiny_tokenizer_dir,  # noqa: F811
                                                        tiny_csv):
    at = use_tiny_project(open_app("project"), tiny_model_path, tiny_tokenizer_dir, tiny_csv)
    at = assemble_and_calibrate(at, 16)
    at.switch_page(PAGES["build"]).run()
    assert at.checkbox(key="build-smooth-attention").disabled  # no migration chosen yet
    at.selectbox(key="build-smooth").set_value("auto").run()
    at.checkbox(key="build-smooth-attention").check()
    at.checkbox(key="build-bias-correction").check()
    at.button(key="build-run").click().run()
    at = wait_for_jobs(at)
    no_crash(at)
    meta = EngineArtifact.load(Workspace(app_workspace).list_runs(stage="build")[0].dir).meta
    assert meta["config"]["smooth_attention"] is True and meta["config"]["bias_correction"] is True
    assert "attention" in meta["smooth"] and max(meta["smooth"]["max_abs_output_delta"].values()) < 1e-4
    assert meta["bias_correction"]["nodes"] > 0
