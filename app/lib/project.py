"""The session's project: which model and which data every page works on.

The demo task ``bbc-topic`` is preselected. A project is saved per browser session in the
workspace, so a refreshed page comes back to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from calib.data import DataSpec, guess_columns, guess_splits, label_names
from calib.demo import DEMO_TASKS, load_demo_task
from calib.errors import InputError
from calib.inputs import DEMO_SPLITS, resolve_inputs, task_inputs
from calib.model import DEFAULT_MAX_LENGTH, POOLINGS, ModelRef, ModelSpec, load_model
from calib.verdict import ReleaseBudget, default_budget
from calib.workspace import Workspace
from lib.context import latest_session_value, load_session_state, save_session_value
from lib.datasets_view import rows, summary_frame

DEFAULT_TASK = "bbc-topic"
RENAMED_FIELDS = {"onnx_path": "model", "tokenizer_dir": "tokenizer"}  # projects saved before 0.2: old -> new
PROJECT_KEY = "calib_project"


@dataclass(frozen=True)
class Project:
    """A model plus the data to calibrate (pool) and evaluate (eval) it on."""

    kind: str = "demo"  # demo | custom
    task: str = DEFAULT_TASK
    model: str = ""  # the FP32 ONNX file (ModelRef.model)
    tokenizer: str = ""  # its tokenizer folder (ModelRef.tokenizer)
    pool_source: str = ""
    pool_split: str | None = None
    eval_source: str = ""  # empty: the pool source
    eval_split: str | None = None
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None
    max_length: int = 0  # 0: the demo card's / 128
    labels: tuple[str, ...] = ()
    budget: ReleaseBudget | None = None  # the release budget; None: the default for the model and data
    logits_output: str = ""  # output roles (calib.model.resolve_roles); empty: detected
    embedding_output: str = ""
    pooling: str = ""
    cluster: str = ""  # where heavy passes run (calib.cluster spec); empty: in the app's process
    drop_empty: bool = False  # DataSpec.drop_empty of a custom project's data (rows with an empty text or label)
    normalize: str = "none"  # DataSpec.normalize of a custom project's data ("html": unescape and strip markup)

    @property
    def cluster_spec(self) -> str | None:
        """Where the project's heavy passes run, as stage configs take it (None: the app's own process)."""
        return self.cluster or None

    @property
    def demo(self) -> str | None:
        """The demo task this project is (None: a custom model and data)."""
        return self.task if self.kind == "demo" else None

    @property
    def title(self) -> str:
        if self.kind == "demo":
            return f"demo · {self.task}"
        return f"{Path(self.model).name} · {Path(self.pool_source).name or self.pool_source}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Project:
        names = {f.name for f in dataclasses.fields(cls)}
        data = {RENAMED_FIELDS.get(k, k): v for k, v in data.items()}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["labels"] = tuple(kwargs.get("labels") or ())
        budget = kwargs.get("budget")
        kwargs["budget"] = ReleaseBudget.from_dict(budget) if isinstance(budget, dict) else None
        return cls(**kwargs)


def demo_tasks() -> tuple[str, ...]:
    return tuple(DEMO_TASKS)


def demo_description(task: str) -> str:
    recipe = DEMO_TASKS.get(task)
    return getattr(recipe, "description", "") if recipe is not None else ""


def demo_ready(ws: Workspace, task: str) -> bool:
    return (ws.demo_dir / task / "card.json").is_file() and (ws.demo_dir / task / "model.onnx").is_file()


def current_project(ws: Workspace, session: str) -> Project:
    if PROJECT_KEY not in st.session_state:
        saved = load_session_state(ws, session).get("project")
        if saved is None:  # a new tab (no ?session=): reopen the project last worked on
            saved = latest_session_value(ws, "project", other_than=session)
        project = Project()
        if isinstance(saved, dict):
            try:
                project = Project.from_dict(saved)
            except (TypeError, ValueError):
                project = Project()
        st.session_state[PROJECT_KEY] = project
    return st.session_state[PROJECT_KEY]


def set_project(ws: Workspace, session: str, project: Project) -> None:
    st.session_state[PROJECT_KEY] = project
    save_session_value(ws, session, "project", project.to_dict())


def _file_key(path: str | Path) -> tuple[str, float, int]:
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return (str(p), 0.0, -1)
    return (str(p.resolve()), stat.st_mtime, stat.st_size)


@st.cache_resource(show_spinner="Reading the model…", max_entries=16)
def _load_custom_model(onnx_key: tuple, tokenizer_dir: str, max_length: int, labels: tuple[str, ...],
                       roles: tuple[str, str, str] = ("", "", "")) -> ModelSpec:
    logits, embedding, pooling = (r or None for r in roles)
    return load_model(onnx_key[0], tokenizer_dir, max_length=max_length, labels=labels, logits_output=logits,
                      embedding_output=embedding, pooling=pooling)


@st.cache_resource(show_spinner="Reading the demo task…", max_entries=8)
def _load_demo(task: str, root: str, card_key: tuple):
    return load_demo_task(task, root)


def demo_task(ws: Workspace, task: str):
    """The prepared demo task (``calib.demo.DemoTask``); InputError when it is not prepared."""
    if not demo_ready(ws, task):
        raise InputError(f"the demo task {task!r} is not prepared in {ws.demo_dir}; "
                         "prepare it on the Project page (or run `calib demo prepare`)")
    return _load_demo(task, str(ws.root), _file_key(ws.demo_dir / task / "card.json"))


def _parts(ws: Workspace, project: Project, role: str = "eval") -> tuple[ModelRef, DataSpec]:
    """The project as the library's parts: the model and the rows to calibrate from (``role="pool"``) or to
    evaluate on (``role="eval"``), made by :mod:`calib.inputs` as the CLI's are (a demo task's split, or
    the typed values through ``resolve_inputs``; a part not chosen yet has empty paths: see
    :func:`model_spec` and :func:`data_spec`)."""
    if role not in ("pool", "eval"):
        raise ValueError(role)
    if project.kind == "demo":
        model, data = task_inputs(demo_task(ws, project.task), DEMO_SPLITS[role])
        return (dataclasses.replace(model, max_length=int(project.max_length)) if project.max_length else model), data
    source = project.pool_source if role == "pool" or not project.eval_source else project.eval_source
    split = project.pool_split if role == "pool" else (project.eval_split if project.eval_source or
                                                         project.eval_split else project.pool_split)
    return resolve_inputs(
        ws.root, need=(),
        model={"model": project.model, "tokenizer": project.tokenizer,
               "max_length": int(project.max_length or DEFAULT_MAX_LENGTH), "labels": tuple(project.labels),
               "logits_output": project.logits_output or None, "embedding_output": project.embedding_output or None,
               "pooling": project.pooling or None},
        data={"source": source, "text_column": project.text_column, "label_column": project.label_column,
              "text_pair_column": project.text_pair_column, "split": split, "drop_empty": project.drop_empty,
              "normalize": project.normalize})


def model_spec(ws: Workspace, project: Project) -> ModelSpec:
    """The project's model, validated (raises InputError with a readable message)."""
    if project.kind == "demo":
        spec = demo_task(ws, project.task).model
        if project.max_length and project.max_length != spec.max_length:
            spec = dataclasses.replace(spec, max_length=int(project.max_length))
        return spec
    if not project.model:
        raise InputError("no ONNX model chosen yet: pick one on the Project page")
    if not project.tokenizer:
        raise InputError("no tokenizer directory chosen yet: pick one on the Project page")
    ref = _parts(ws, project)[0]
    return _load_custom_model(_file_key(ref.model), ref.tokenizer, ref.max_length, ref.labels,
                              (ref.logits_output or "", ref.embedding_output or "", ref.pooling or ""))


def data_spec(ws: Workspace, project: Project, role: str) -> DataSpec:
    """The rows to calibrate from (``role="pool"``) or to evaluate on (``role="eval"``)."""
    data = _parts(ws, project, role)[1]
    if not data.source:
        raise InputError("no dataset chosen yet: pick one on the Project page")
    return data


def project_model_sha256(ws: Workspace, project: Project) -> str | None:
    """The project model's sha256, or None when it cannot be read yet (not chosen, not prepared)."""
    try:
        return model_spec(ws, project).sha256
    except InputError:
        return None


def release_budget(ws: Workspace, project: Project) -> ReleaseBudget:
    """The project's release budget: the one saved with the project, else the default for what the
    model and the evaluation data can measure (no embedding criterion without an embedding output, no
    drop criterion without labels)."""
    if project.budget is not None:
        return project.budget
    try:
        spec = model_spec(ws, project)
        has_embedding = spec.embedding_output is not None
        labelled = data_spec(ws, project, "eval").label_column is not None
    except InputError:
        return ReleaseBudget()
    return default_budget(has_embedding=has_embedding, labelled=labelled, has_logits=spec.logits_output is not None)


def parse_labels(text: str) -> tuple[str, ...]:
    """Class names typed comma separated, in logit order (blanks dropped)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def demo_project(current: Project, task: str, max_length: int) -> Project:
    """The demo project the Project page's choice makes. The release budget carries over only within the
    same demo task: another task is another model and data, whose budget starts from the default."""
    same = current.demo == task
    return Project(kind="demo", task=task, max_length=int(max_length), budget=current.budget if same else None)


def first_max_length(current: Project, *, task: str | None = None, card_length: int = DEFAULT_MAX_LENGTH) -> int:
    """The max-length field's first value: the project's own when the page shows the same project kind
    (the same demo ``task``, or a custom model with ``task`` None), else the demo card's / the default."""
    same = current.demo == task if task is not None else current.kind == "custom"
    return int(current.max_length or card_length) if same else int(card_length)


def custom_form_values(current: Project) -> dict[str, Any]:
    """The custom-model form's first values: the project's own when it is a custom one, else empty."""
    if current.kind != "custom":
        return {"model": "", "tokenizer": "", "pool_source": "", "eval_source": "", "labels": "", "drop_empty": False,
                "normalize": "none"}
    return {"model": current.model, "tokenizer": current.tokenizer, "pool_source": current.pool_source,
            "eval_source": current.eval_source, "labels": ", ".join(current.labels), "drop_empty": current.drop_empty,
            "normalize": current.normalize}


NO_COLUMN = "(none)"  # the column pickers' option for "no such column"
POOLING_OPTIONS = ("", *(p for p in POOLINGS if p != "none"))
"""The Project page's pooling choices: "" (detect: pooled outputs need none) or a way to pool token states."""


def data_form_choices(current: Project, columns: Sequence[str], splits: Sequence[str]) -> dict[str, str | None]:
    """The Project form's first column, split and pooling choices for a dataset with ``columns`` (and
    ``splits``, empty for a single table): the saved custom project's own where the dataset still has them,
    else the well-known-name guesses (:func:`calib.data.guess_columns`, :func:`calib.data.guess_splits`)."""
    mine = current.kind == "custom"
    guess_text, guess_label = guess_columns(list(columns))
    guess_pool, guess_eval = guess_splits(list(splits)) if splits else (None, None)

    def kept(value: str | None, options: Sequence[str], fallback: str | None) -> str | None:
        return value if mine and value in options else fallback

    label = (current.label_column or NO_COLUMN) if mine and (current.label_column is None
                                                             or current.label_column in columns) else guess_label
    return {"text_column": kept(current.text_column, columns, guess_text), "label_column": label or NO_COLUMN,
            "pair_column": kept(current.text_pair_column, columns, None) or NO_COLUMN,
            "pool_split": kept(current.pool_split, splits, guess_pool),
            "eval_split": kept(current.eval_split, splits, guess_eval),
            "pooling": kept(current.pooling, POOLING_OPTIONS, "")}


def custom_project(current: Project, *, model: str, tokenizer: str, pool_source: str, pool_split: str | None,
                   eval_source: str, eval_split: str | None, text_column: str, label_column: str, pair_column: str,
                   max_length: int, labels_text: str, logits_output: str, embedding_output: str, pooling: str,
                   drop_empty: bool, normalize: str) -> Project:
    """The custom project the Project page's form describes: paths and names trimmed, :data:`NO_COLUMN`
    as no column, the class names parsed; the release budget kept from ``current``."""
    def column(value: str) -> str | None:
        return None if value == NO_COLUMN else value

    return Project(kind="custom", model=model.strip(), tokenizer=tokenizer.strip(), pool_source=pool_source.strip(),
                   pool_split=pool_split, eval_source=eval_source.strip(), eval_split=eval_split,
                   text_column=text_column, label_column=column(label_column), text_pair_column=column(pair_column),
                   max_length=int(max_length), labels=parse_labels(labels_text), budget=current.budget,
                   logits_output=logits_output.strip(), embedding_output=embedding_output.strip(), pooling=pooling,
                   drop_empty=bool(drop_empty), normalize=normalize)


def checked_project(ws: Workspace, candidate: Project) -> Project:
    """``candidate`` as it will be saved: its class names read from the pool's label column when none
    were typed (id order), its model loaded and both data roles read, so a bad path, column or model
    raises one :class:`InputError` and the current project stays as it is."""
    if not candidate.labels and candidate.label_column:
        spec = data_spec(ws, candidate, "pool")
        candidate = dataclasses.replace(candidate, labels=tuple(label_names(rows(spec), spec)))
    model_spec(ws, candidate)
    for role in ("pool", "eval"):
        summary_frame(data_spec(ws, candidate, role))
    return candidate


def same_rows_warning(project: Project) -> str | None:
    """A warning when a custom project calibrates and evaluates on the same rows (one file, one split):
    accuracy measured there is optimistic."""
    if project.kind == "custom" and not project.eval_source and project.pool_split == project.eval_split:
        return ("Calibration and evaluation use the same rows; accuracy measured on them is optimistic. "
                "Give a separate evaluation split or file.")
    return None
