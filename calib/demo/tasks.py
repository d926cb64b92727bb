"""The demo tasks: their recipes, where they live in a workspace, and how to load a prepared one."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calib.data import DataSpec, register_source_scheme
from calib.demo.sources import MODEL_SAFETENSORS_SHA256
from calib.errors import InputError, check_choice
from calib.io import read_json
from calib.model import ModelSpec, load_model
from calib.workspace import default_workspace_path

SPLITS = ("train", "calibration", "eval")
CARD_FILE = "card.json"
RECIPE_VERSION = 1  # bump when the preparation changes, so older prepared tasks are rebuilt


@dataclass(frozen=True)
class TaskRecipe:
    """How one demo task is made: source, split sizes (the rest is the calibration pool), head."""

    name: str
    description: str
    source: str  # "bbc" | "rt"
    max_length: int
    n_train: int
    n_eval: int
    head_c: float  # inverse L2 strength of the logistic regression head
    relative_cost: float  # share of the preparation time, for progress reporting

    def fingerprint(self, seed: int) -> dict[str, Any]:
        """What the prepared files depend on; a prepared task with another fingerprint is rebuilt."""
        return {"recipe_version": RECIPE_VERSION, "task": self.name, "source": self.source,
                "max_length": self.max_length, "n_train": self.n_train, "n_eval": self.n_eval,
                "head_c": self.head_c, "seed": int(seed), "model_safetensors_sha256": MODEL_SAFETENSORS_SHA256}


# head_c: the best of C in {1, 3, 10, 30, 100} by 5-fold cross-validation on the train split
# (seed 0), never by the eval split: bbc-topic 1 (CV 96.7 %), rt-sentiment 3 (CV 74.0 %).
DEMO_TASKS: types.MappingProxyType[str, TaskRecipe] = types.MappingProxyType({
    "bbc-topic": TaskRecipe(
        "bbc-topic", "BBC News articles, 5 topics (long texts: most exceed 256 tokens)", "bbc",
        max_length=256, n_train=600, n_eval=400, head_c=1.0, relative_cost=2.0),
    "rt-sentiment": TaskRecipe(
        "rt-sentiment", "Rotten Tomatoes review snippets, fresh vs rotten (short texts)", "rt",
        max_length=128, n_train=3000, n_eval=1000, head_c=3.0, relative_cost=1.0),
})


def _recipe(task: str) -> TaskRecipe:
    check_choice(task, DEMO_TASKS, "demo task")
    return DEMO_TASKS[task]


def demo_root(workspace: str | Path | None = None) -> Path:
    """``<workspace>/demo`` (the workspace is ``$CALIB_WORKSPACE`` or ./workspace when None)."""
    return (Path(workspace).expanduser() if workspace is not None else default_workspace_path()) / "demo"


def demo_task_dir(task: str, workspace: str | Path | None = None) -> Path:
    """The folder of a prepared demo task, ``<workspace>/demo/<task>``.

    Raises :class:`InputError` for an unknown task or one that has not been prepared.
    """
    _recipe(task)
    path = demo_root(workspace) / task
    if not (path / CARD_FILE).is_file():
        raise InputError(f"demo task {task} is not prepared in {path.parent}; run `calib demo prepare`")
    return path


def demo_data_folder(task: str, workspace: str | None = None) -> Path:
    """The ``save_to_disk`` folder behind the data source ``demo:<task>`` (its train / calibration / eval splits)."""
    return demo_task_dir(task, workspace) / "data"


register_source_scheme("demo", demo_data_folder)


def read_card(task: str, workspace: str | Path | None = None) -> dict[str, Any]:
    path = demo_task_dir(task, workspace) / CARD_FILE
    try:
        card = read_json(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"demo model card {path} cannot be read ({exc}); run `calib demo prepare --force`") from exc
    if not isinstance(card, dict) or card.get("task") != task:
        raise InputError(f"demo model card {path} is not a card for {task}; run `calib demo prepare --force`")
    return card


@dataclass(frozen=True)
class DemoTask:
    """A prepared demo task: its model card, its model and its dataset splits."""

    name: str
    dir: Path
    card: dict[str, Any]
    model: ModelSpec
    workspace: str

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card["labels"])

    @property
    def max_length(self) -> int:
        return int(self.card["max_length"])

    @property
    def fp32_eval_accuracy(self) -> float:
        return float(self.card["fp32_eval_accuracy"])

    def data(self, split: str) -> DataSpec:
        """The :class:`DataSpec` of one split: ``train`` (the head's), ``calibration`` (the pool) or ``eval``."""
        if split not in SPLITS:
            raise InputError(f"demo task {self.name} has no split {split!r} (splits: {', '.join(SPLITS)})")
        return DataSpec(source=f"demo:{self.name}", text_column=self.card["text_column"],
                        label_column=self.card["label_column"], split=split, workspace=self.workspace)


def load_demo_task(task: str, workspace: str | Path | None = None) -> DemoTask:
    """Load a prepared demo task: card, validated :class:`ModelSpec` and split specs.

    Raises :class:`InputError` when the task is unknown, not prepared, or its model file no longer
    matches the sha256 recorded in its card.
    """
    directory = demo_task_dir(task, workspace)
    card = read_card(task, workspace)
    model = load_model(directory / card["model"]["onnx"], directory / card["tokenizer_dir"],
                       max_length=int(card["max_length"]), logits_output="logits",
                       labels=card["labels"], name=task)
    if model.sha256 != card["model"]["sha256"]:
        raise InputError(
            f"demo model {model.onnx_path} changed since it was prepared (sha256 {model.sha256[:12]}…, card says "
            f"{card['model']['sha256'][:12]}…); run `calib demo prepare --force --task {task}`"
        )
    root = directory.resolve().parent.parent
    return DemoTask(name=task, dir=directory, card=card, model=model, workspace=str(root))
