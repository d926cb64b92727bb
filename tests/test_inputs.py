"""One resolver for "which model, which data": a demo task and/or explicit values -> ModelRef + DataSpec."""

from __future__ import annotations

import dataclasses

import pytest
import tinymodel

from calib.data import DataSpec
from calib.errors import InputError
from calib.inputs import given, resolve_inputs
from calib.model import ModelRef, load_model


def test_explicit_values_make_the_refs(tmp_path, tiny_model_path, tiny_tokenizer_dir, tiny_csv):
    model, data = resolve_inputs(tmp_path, model={"model": str(tiny_model_path), "tokenizer": str(tiny_tokenizer_dir),
                                                  "labels": list(tinymodel.LABELS), "max_length": 64},
                                 data={"source": str(tiny_csv), "label_column": None})
    assert model == ModelRef(str(tiny_model_path), str(tiny_tokenizer_dir), 64, tinymodel.LABELS)
    assert data == DataSpec(str(tiny_csv), label_column=None, workspace=str(tmp_path))  # None is a value
    spec = model.load()
    assert spec.labels == tinymodel.LABELS and spec.max_length == 64
    assert ModelRef.of(spec).load().sha256 == spec.sha256


def test_missing_values_are_one_line_naming_the_options(tmp_path, tiny_model_path):
    with pytest.raises(InputError, match=r"^give --tokenizer, --data \(or --demo TASK\)$"):
        resolve_inputs(tmp_path, model={"model": str(tiny_model_path)})
    with pytest.raises(InputError, match=r"^give --data \(or --demo TASK\)$"):
        resolve_inputs(tmp_path, need=("source",))
    with pytest.raises(TypeError):
        resolve_inputs(tmp_path, model={"source": "x"})
    assert given(a=None, b=0, c="") == {"b": 0, "c": ""}


@pytest.mark.demo
def test_a_demo_task_fills_model_and_data_and_explicit_values_win(demo_workspace):
    model, data = resolve_inputs(demo_workspace, demo="rt-sentiment")
    spec = load_model(model.model, model.tokenizer, max_length=model.max_length, labels=model.labels)
    assert data.source == "demo:rt-sentiment" and data.split == "eval" and spec.labels == model.labels
    assert model.logits_output is None  # roles: detected, or as the calibration set recorded them
    model2, data2 = resolve_inputs(demo_workspace, demo="rt-sentiment", split="calibration",
                                   model={"max_length": 32}, data={"text_column": "other"})
    assert (model2.max_length, data2.split, data2.text_column) == (32, "calibration", "other")
    assert model2.model == model.model


@pytest.mark.demo
def test_the_app_and_the_cli_read_a_demo_task_the_same_way(demo_workspace):
    """The app keeps its demo task loaded and calls task_inputs; the CLI's resolver loads it: same refs."""
    from calib.demo import load_demo_task
    from calib.inputs import DEMO_SPLITS, demo_inputs, task_inputs

    task = load_demo_task("bbc-topic", demo_workspace)
    for role, split in DEMO_SPLITS.items():
        assert task_inputs(task, split) == demo_inputs("bbc-topic", demo_workspace, split), role
    model, data = resolve_inputs(demo_workspace, demo="bbc-topic")
    assert data == task_inputs(task, DEMO_SPLITS["eval"])[1]
    assert dataclasses.replace(model, **{f: None for f in ModelRef.ROLE_FIELDS}) == model


@pytest.mark.demo
def test_a_demo_project_in_the_app_gives_the_parts_the_cli_resolves(demo_workspace):
    """The app's project_inputs and the CLI's resolve_inputs name the same model and data for a demo task; the
    app names the output roles it resolved, the CLI leaves them to detection, and both load the same roles."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    from lib.project import Project
    from lib.stages import project_inputs

    from calib.workspace import Workspace

    ws = Workspace(demo_workspace)
    app = project_inputs(ws, Project(kind="demo", task="bbc-topic"))
    model, data = resolve_inputs(demo_workspace, demo="bbc-topic")
    assert dataclasses.replace(app["model"], **{f: None for f in ModelRef.ROLE_FIELDS}) == model
    assert app["model"].load().roles == model.load().roles
    assert app["data"] == dataclasses.replace(data, workspace=str(ws.root))
