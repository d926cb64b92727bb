"""Where a stage's model and data come from: one resolver for a demo task or explicit values.

``resolve_inputs`` turns ``--demo TASK`` and/or explicit values (CLI options, an app project) into a
:class:`~calib.model.ModelRef` and a :class:`~calib.data.DataSpec`; explicit values override what the
demo task fills; every stage config takes the two as its ``model`` and ``data``. This is the one place
that knows how a demo task names its model and data (``calib.demo.load_demo_task``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from calib.calibset import AssembleConfig, config_from_dict, read_recipe, write_recipe
from calib.data import DataSpec
from calib.demo import load_demo_task
from calib.errors import InputError
from calib.model import ModelRef
from calib.pipeline import config_params, nest_params
from calib.workspace import Workspace

_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelRef))
_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataSpec))
_FLAGS = {"model": "--model", "tokenizer": "--tokenizer", "source": "--data"}


DEMO_SPLITS = {"pool": "calibration", "eval": "eval", "train": "train"}
"""The split of a demo task each role reads: calibration sets draw from ``calibration``, evaluations
(validate, compare, sensitivity, bench) read ``eval``, a classifier head is fitted on ``train``."""


def task_inputs(demo: Any, split: str) -> tuple[ModelRef, DataSpec]:
    """The model of a loaded demo task (``calib.demo.DemoTask``) and one of its splits; the app passes the
    task it keeps loaded, the CLI the one :func:`demo_inputs` loads."""
    return ModelRef.of(demo.model), demo.data(split)


def demo_inputs(task: str, workspace: str | Path | None, split: str) -> tuple[ModelRef, DataSpec]:
    """The model of a prepared demo task and one of its splits (``train`` / ``calibration`` / ``eval``)."""
    return task_inputs(load_demo_task(task, workspace), split)


def resolve_inputs(workspace: str | Path, *, demo: str | None = None, split: str | None = None,
                   default_split: str = DEMO_SPLITS["eval"], model: Mapping[str, Any] | None = None,
                   data: Mapping[str, Any] | None = None, need: tuple[str, ...] = ("model", "tokenizer", "source"),
                   hint: str = "or --demo TASK", ask: str = "give") -> tuple[ModelRef, DataSpec]:
    """A ``ModelRef`` and ``DataSpec`` from a demo task (split ``split`` or ``default_split``) and/or
    explicit values, which override the demo's: ``model`` keys are ModelRef fields, ``data`` keys DataSpec
    fields (``source``, ``text_column``, ...; a None value is a value, e.g. ``label_column=None``: give
    only what was given, :func:`given`). ``split`` None: the demo's default, or none.

    Raises one :class:`InputError` naming the options still missing (``need``), e.g.
    ``give --data (or --demo TASK)`` (``ask`` and ``hint`` words it).
    """
    model_values: dict[str, Any] = {}
    data_values: dict[str, Any] = {}
    if demo:
        ref, spec = demo_inputs(demo, workspace, split or default_split)
        model_values.update(ref.fields())
        model_values.update({f: None for f in ModelRef.ROLE_FIELDS})  # detected, or as a calibration recorded
        data_values.update(dataclasses.asdict(spec))
    for key, value in (model or {}).items():
        if key not in _MODEL_FIELDS:
            raise TypeError(f"not a ModelRef field: {key}")
        model_values[key] = tuple(value) if key == "labels" else value
    for key, value in {**(data or {}), **given(split=split)}.items():
        if key not in _DATA_FIELDS:
            raise TypeError(f"not a DataSpec field: {key}")
        data_values[key] = value
    data_values.setdefault("workspace", str(workspace))
    present = {**model_values, **data_values}
    missing = [_FLAGS.get(k, k) for k in need if not present.get(k)]
    if missing:
        raise InputError(f"{ask} {', '.join(missing)}" + (f" ({hint})" if hint else ""))
    return (ModelRef(**{"model": "", "tokenizer": "", **model_values}),
            DataSpec(**{"source": "", **data_values}))


def given(**values: Any) -> dict[str, Any]:
    """The values that are not None (options the user gave)."""
    return {k: v for k, v in values.items() if v is not None}


# -- calibration-set recipes that name a demo task ----------------------------------------------------

DEMO_MODEL_FIELDS = ("model", "tokenizer", "labels", *ModelRef.ROLE_FIELDS)
"""The ModelRef fields a demo task names (a demo recipe leaves them out; the task fills them)."""
DEMO_DATA_FIELDS = ("source", "workspace")
"""The DataSpec fields a demo task names."""
DATASET_READ_FIELDS = ("split", "text_column", "label_column", "text_pair_column")
"""How one particular dataset is read: dropped as well when a demo replaces another dataset."""


def without_demo_fields(model: Mapping[str, Any], data: Mapping[str, Any], *,
                        other_dataset: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plain ``model`` and ``data`` values without what a demo task names (:data:`DEMO_MODEL_FIELDS`,
    :data:`DEMO_DATA_FIELDS`), so the task's fill them; with ``other_dataset`` (the values describe a
    dataset that is not the demo's) also its split and columns. What is left (max length, sampling of
    the columns, normalisation) is the caller's own."""
    drop_data = (*DEMO_DATA_FIELDS, *DATASET_READ_FIELDS) if other_dataset else DEMO_DATA_FIELDS
    return ({k: v for k, v in model.items() if k not in DEMO_MODEL_FIELDS},
            {k: v for k, v in data.items() if k not in drop_data})


def demo_values(task: str, workspace: str | Path | None, *, split: str | None = None) -> dict[str, Any]:
    """The ``model`` (ModelRef) and ``data`` (DataSpec of one split, default the pool's, read in the
    workspace) AssembleConfig fields of a prepared demo task."""
    ws = Workspace(workspace) if workspace is not None else Workspace()
    model, data = demo_inputs(task, ws.root, split or DEMO_SPLITS["pool"])
    return {"model": model, "data": dataclasses.replace(data, workspace=str(ws.root))}


def recipe_config(recipe: Mapping[str, Any], *, workspace: str | Path | None = None,
                  where: str = "recipe") -> AssembleConfig:
    """The :class:`~calib.calibset.AssembleConfig` of a recipe read by :func:`calib.calibset.read_recipe`; a
    demo recipe's model and pool come from its task prepared in ``workspace``."""
    values = nest_params(AssembleConfig, recipe["config"])
    model, data = dict(values.get("model") or {}), dict(values.get("data") or {})
    if recipe.get("demo"):
        demo = demo_values(str(recipe["demo"]), workspace, split=data.get("split"))
        model, data = without_demo_fields(model, data)
        model = {**demo["model"].fields(), **model}
        data = {**dataclasses.asdict(demo["data"]), **data}
    if workspace is not None:
        data["workspace"] = str(workspace)
    return config_from_dict({**values, "model": model, "data": data}, where=where)


def load_recipe(path: str | Path, *, workspace: str | Path | None = None) -> AssembleConfig:
    """The :class:`~calib.calibset.AssembleConfig` of a recipe file; demo recipes are resolved in ``workspace``."""
    return recipe_config(read_recipe(path), workspace=workspace, where=f"recipe {path}")


def save_recipe(config: AssembleConfig, path: str | Path, *, demo: str | None = None, description: str = "") -> Path:
    """Write ``config`` as a replayable JSON recipe. With ``demo``, what the task names (model, tokenizer,
    labels, roles, data source) is left out and filled from the task when the recipe is loaded, so the
    recipe is portable across machines."""
    values = config_params(config)
    values["data"].pop("workspace", None)
    if demo:
        values["model"], values["data"] = without_demo_fields(values["model"], values["data"])
    return write_recipe(values, path, description=description, demo=demo)


def assemble_start(workspace: str | Path, *, recipe: Mapping[str, Any] | None = None, demo: str | None = None,
                   where: str = "recipe") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str | None]:
    """What ``calib assemble`` starts from before the options given on top: (settings, ``model`` values,
    ``data`` values, the demo task used). A recipe gives its settings, model and pool; ``demo`` over a
    recipe names the model and the pool instead (the recipe keeps its max length and sampling); ``demo``
    alone matches the task's eval split (``target_kind`` eval)."""
    if recipe is None:
        return ({"target_kind": "eval"} if demo else {}), {}, {}, demo
    settings = config_params(recipe_config(recipe, workspace=workspace, where=where))
    model, data = settings.pop("model"), settings.pop("data")
    if demo:
        model, data = without_demo_fields(model, data, other_dataset=True)
        return settings, model, data, demo
    return settings, model, data, recipe.get("demo")
