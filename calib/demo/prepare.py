"""``prepare_demo``: build the demo tasks (ONNX classifier, tokenizer, splits, model card) offline.

Per task, under ``<workspace>/demo/<task>/``::

    model.onnx   MiniLM-L6 encoder + mean pooling + L2 norm + linear head → logits (B, C), embedding (B, 384)
    tokenizer/   the checkpoint's tokenizer files
    data/        DatasetDict (train / calibration / eval; columns text, label (ClassLabel), id)
    card.json    labels, max_length, FP32 eval accuracy, split sizes, sha256 of every file, timings

The exported encoder is cached in ``<workspace>/cache/demo-encoder/``. A task whose card matches
the current recipe and whose files still match the sha256 in its card is left alone, so a second
call does no work. Each task is built in a temporary folder and moved into place when complete.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calib.batching import encode, iter_batches, plan_batches
from calib.demo import export as demo_export
from calib.demo import sources
from calib.demo.tasks import CARD_FILE, DEMO_TASKS, RECIPE_VERSION, SPLITS, TaskRecipe
from calib.engines.ort import OrtSessionLoader, default_threads
from calib.errors import CalibError, InputError, check_choice
from calib.formatting import percent
from calib.head import attach_head, logistic_head
from calib.io import atomic_dir, atomic_write_json, read_json, sha256_file
from calib.model import load_tokenizer
from calib.workspace import ProgressFn, Workspace

ENCODER_CACHE = "demo-encoder"
BATCH_SIZE = 16


@dataclass(frozen=True)
class DemoConfig:
    """Which demo tasks to prepare, where, and with which split seed."""

    workspace: str | None = None  # None: $CALIB_WORKSPACE or ./workspace
    tasks: tuple[str, ...] = ("bbc-topic", "rt-sentiment")
    force: bool = False  # rebuild even when the prepared files are intact
    seed: int = 0


@dataclass(frozen=True)
class DemoManifest:
    """What :func:`prepare_demo` left in the workspace."""

    workspace: Path
    tasks: tuple[str, ...]
    built: tuple[str, ...]  # prepared by this call
    reused: tuple[str, ...]  # already prepared and intact
    cards: Mapping[str, dict[str, Any]] = field(compare=False)
    seconds: float = 0.0

    def task_dir(self, task: str) -> Path:
        return self.workspace / "demo" / task

    def summary(self) -> dict[str, Any]:
        return {
            "built": list(self.built), "reused": list(self.reused), "seconds": round(self.seconds, 2),
            **{f"{t}.fp32_eval_accuracy": self.cards[t]["fp32_eval_accuracy"] for t in self.tasks},
        }


def _scaled(progress: ProgressFn | None, start: float, span: float) -> ProgressFn:
    def report(fraction: float, message: str = "") -> None:
        if progress is not None:
            progress(start + span * min(max(fraction, 0.0), 1.0), message)

    return report


def _prefixed(progress: ProgressFn, prefix: str) -> ProgressFn:
    return lambda fraction, message="": progress(fraction, f"{prefix}, {message}" if message else prefix)


# -- checks ----------------------------------------------------------------------------------------

def _validate(config: DemoConfig) -> None:
    if not config.tasks:
        raise InputError(f"no demo task chosen (choose from {', '.join(DEMO_TASKS)})")
    for task in config.tasks:
        check_choice(task, DEMO_TASKS, "demo task")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise InputError(f"demo seed must be a non-negative integer, got {config.seed!r}")


def _file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CARD_FILE}


def intact_card(task_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The task's card if it was made by this recipe and every file matches its recorded sha256."""
    card_path = task_dir / CARD_FILE
    if not card_path.is_file():
        return None
    try:
        card = read_json(card_path)
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or card.get("recipe") != fingerprint or not card.get("files"):
        return None
    for rel, digest in card["files"].items():
        path = task_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return card


# -- splits and model runs ---------------------------------------------------------------------------

def split_rows(label_ids: np.ndarray, n_train: int, n_eval: int, seed: int) -> dict[str, np.ndarray]:
    """Stratified, seeded split of row indices: ``train`` and ``eval`` of the given sizes (class
    shares as in the whole set, largest remainder), the rest ``calibration``. Each split is in a
    seeded shuffled order; the three are disjoint and cover every row."""
    label_ids = np.asarray(label_ids)
    n = len(label_ids)
    if n_train + n_eval >= n:
        raise InputError(f"demo split sizes train {n_train} + eval {n_eval} leave no calibration rows of {n}")
    order = np.random.default_rng(seed).permutation(n)
    classes, counts = np.unique(label_ids, return_counts=True)

    def quotas(total: int, available: np.ndarray) -> np.ndarray:
        exact = total * counts / n
        base = np.minimum(np.floor(exact).astype(int), available)
        for k in np.argsort(-(exact - base), kind="stable")[: total - base.sum()]:
            base[k] += 1
        return base

    train_q = quotas(n_train, counts)
    eval_q = quotas(n_eval, counts - train_q)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for k, cls in enumerate(classes):
        rows = order[label_ids[order] == cls]  # this class, in shuffled order
        out["train"].append(rows[: train_q[k]])
        out["eval"].append(rows[train_q[k] : train_q[k] + eval_q[k]])
        out["calibration"].append(rows[train_q[k] + eval_q[k] :])
    return {s: order[np.sort(position[np.concatenate(parts)])] for s, parts in out.items()}


def run_rows(session: Any, encoded: Any, outputs: list[str], progress: ProgressFn,
             batch_size: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    """Run ``session`` over every row of ``encoded`` in length-bucketed batches; outputs in row
    order, each (N, ...) float32."""
    dtypes = {i.name: np.int64 for i in session.get_inputs()}
    n_batches = len(plan_batches(encoded.lengths, batch_size))
    result: dict[str, np.ndarray] = {}
    for k, batch in enumerate(iter_batches(encoded, dtypes, batch_size)):
        values = session.run(outputs, batch.feeds)
        for name, value in zip(outputs, values):
            if name not in result:
                result[name] = np.empty((len(encoded), *value.shape[1:]), dtype=np.float32)
            result[name][batch.rows] = value
        progress((k + 1) / n_batches, f"{k + 1}/{n_batches} batches")
    return result


def _length_stats(encoded: Any) -> dict[str, float]:
    full = encoded.full_lengths
    return {"p50_tokens": round(float(np.median(full)), 1), "p95_tokens": round(float(np.percentile(full, 95)), 1),
            "truncated_share": round(encoded.truncation_rate, 4)}


# -- building ---------------------------------------------------------------------------------------

def _encoder(ws: Workspace, files: sources.MiniLMFiles, tokenizer: Any, force: bool,
             progress: ProgressFn) -> tuple[Path, dict[str, Any]]:
    """The exported encoder (cached in the workspace) and facts about its export."""
    cache = ws.cache_dir / ENCODER_CACHE
    meta_path, onnx_path = cache / "meta.json", cache / "encoder.onnx"
    if not force and meta_path.is_file() and onnx_path.is_file():
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):  # a damaged cache is simply rebuilt
            meta = {}
        if (isinstance(meta, dict) and meta.get("recipe_version") == RECIPE_VERSION
                and meta.get("model_safetensors_sha256") == files.safetensors_sha256
                and meta.get("sha256") == sha256_file(onnx_path)):
            progress(1.0, "encoder already exported")
            return onnx_path, {**meta, "reused": True}
    progress(0.0, "building the MiniLM-L6 ONNX graph from its safetensors weights")
    with atomic_dir(cache) as tmp:
        facts = demo_export.export_encoder(files, tmp / "encoder.onnx", tokenizer, threads=default_threads())
        meta = {"recipe_version": RECIPE_VERSION, "model_safetensors_sha256": files.safetensors_sha256,
                "sha256": sha256_file(tmp / "encoder.onnx"), **facts}
        atomic_write_json(tmp / "meta.json", meta)
    progress(1.0, f"encoder built in {facts['seconds']:.1f}s "
                  f"(max |onnx - reference| {facts['max_abs_diff_vs_reference']:.1e})")
    return onnx_path, {**meta, "reused": False}


def _encoder_check(facts: dict[str, Any]) -> dict[str, Any]:
    """The card's record of how the encoder graph was checked. An encoder cached by an earlier
    version (exported with torch, checked against torch) keeps its own record."""
    if "max_abs_diff_vs_reference" in facts:
        return {"encoder_reference": facts["reference"],
                "encoder_max_abs_diff_vs_reference": facts["max_abs_diff_vs_reference"]}
    return {"encoder_max_abs_diff_vs_torch": facts["max_abs_diff_vs_torch"]}


def _read_texts(recipe: TaskRecipe) -> sources.LabelledTexts:
    return sources.read_bbc_news() if recipe.source == "bbc" else sources.read_rotten_tomatoes()


def _build_task(recipe: TaskRecipe, corpus: sources.LabelledTexts, seed: int, task_dir: Path,
                files: sources.MiniLMFiles, encoder_path: Path, encoder_facts: dict[str, Any], tokenizer: Any,
                progress: ProgressFn) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    timings: dict[str, float] = {}
    clock = time.monotonic()
    start = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[name] = round(now - clock, 2)
        clock = now

    name = recipe.name
    progress(0.0, f"{name}: tokenizing {len(corpus.texts)} texts")
    label_ids = np.asarray(corpus.label_ids, dtype=np.int64)
    rows = split_rows(label_ids, recipe.n_train, recipe.n_eval, seed)
    encoded = {s: encode(tokenizer, [corpus.texts[i] for i in rows[s]], max_length=recipe.max_length)
               for s in SPLITS}
    lap("read_and_tokenize")

    n_train, n_eval = len(rows["train"]), len(rows["eval"])
    train_share = 0.85 * n_train / (n_train + n_eval)
    encoder = OrtSessionLoader(encoder_path)()
    embedded = run_rows(encoder, encoded["train"], [demo_export.EMBEDDING_OUTPUT],
                        _prefixed(_scaled(progress, 0.05, train_share), f"{name}: embedding the train split"))
    del encoder
    lap("embed_train")

    progress(0.05 + train_share, f"{name}: fitting the logistic-regression head")
    weight, bias = logistic_head(embedded["embedding"], label_ids[rows["train"]], len(corpus.labels),
                            recipe.head_c, seed)
    train_accuracy = float(np.mean(np.argmax(embedded["embedding"] @ weight.T + bias, axis=1)
                                   == label_ids[rows["train"]]))
    lap("fit_head")

    with atomic_dir(task_dir) as tmp:
        model = attach_head(onnx.load(str(encoder_path)), weight, bias, graph_name="minilm_l6_classifier")
        onnx.save(model, str(tmp / "model.onnx"))
        del model
        classifier = OrtSessionLoader(tmp / "model.onnx")()
        outputs = run_rows(classifier, encoded["eval"], [demo_export.LOGITS_OUTPUT, demo_export.EMBEDDING_OUTPUT],
                           _prefixed(_scaled(progress, 0.05 + train_share, 0.85 - train_share),
                                     f"{name}: FP32 accuracy on the eval split"))
        del classifier
        head_error = float(np.abs(outputs["logits"] - (outputs["embedding"] @ weight.T + bias)).max())
        if head_error > 1e-4:
            raise CalibError(f"{name}: the ONNX head disagrees with the fitted head by {head_error:.3g}")
        eval_accuracy = float(np.mean(np.argmax(outputs["logits"], axis=1) == label_ids[rows["eval"]]))
        lap("eval")

        progress(0.92, f"{name}: saving splits and card")
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        for file_name in sources.MODEL_TOKENIZER_FILES:
            shutil.copy2(files.dir / file_name, tok_dir / file_name)
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=list(corpus.labels)),
                                      "id": datasets.Value("string")})
        dataset = datasets.DatasetDict({
            split: datasets.Dataset.from_dict(
                {"text": [corpus.texts[i] for i in rows[split]], "label": label_ids[rows[split]].tolist(),
                 "id": [corpus.ids[i] for i in rows[split]]}, features=features)
            for split in SPLITS
        })
        dataset.save_to_disk(str(tmp / "data"))
        lap("save")
        timings["total"] = round(time.monotonic() - start, 2)
        model_sha = sha256_file(tmp / "model.onnx")
        card = {
            "task": name, "description": recipe.description, "labels": list(corpus.labels),
            "text_column": "text", "label_column": "label", "max_length": recipe.max_length,
            "fp32_eval_accuracy": round(eval_accuracy, 6), "fp32_train_accuracy": round(train_accuracy, 6),
            "splits": {s: len(rows[s]) for s in SPLITS},
            "token_lengths": {s: _length_stats(encoded[s]) for s in SPLITS},
            "model": {"onnx": "model.onnx", "sha256": model_sha, "inputs": list(demo_export.INPUT_NAMES),
                      "outputs": [demo_export.LOGITS_OUTPUT, demo_export.EMBEDDING_OUTPUT],
                      "opset": encoder_facts["opset"], "exporter": encoder_facts["exporter"],
                      **_encoder_check(encoder_facts),
                      "head": {"type": "logistic_regression", "C": recipe.head_c,
                               "max_abs_diff_vs_sklearn": head_error}},
            "tokenizer_dir": "tokenizer", "data_dir": "data",
            "source": {"model": f"{sources.MODEL_PACKAGE}=={sources.MODEL_VERSION}:{sources.MODEL_DIR}",
                       "model_safetensors_sha256": files.safetensors_sha256, "data": corpus.source,
                       "rows_after_dedup": len(corpus.texts)},
            "recipe": recipe.fingerprint(seed),
            "timings_s": timings,
            "files": _file_hashes(tmp),
        }
        atomic_write_json(tmp / CARD_FILE, card)
    progress(1.0, f"{name}: FP32 eval accuracy {percent(eval_accuracy)}")
    return card


def prepare_demo_run(config: DemoConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> DemoManifest:
    """:func:`prepare_demo` in the stage form ``fn(config, out_dir, progress=)`` (the app's background
    runs): the assets still go to ``<workspace>/demo``; the run folder only gets the registry's record."""
    return prepare_demo(config, progress=progress)


def prepare_demo(config: DemoConfig, progress: ProgressFn | None = None) -> DemoManifest:
    """Prepare the demo tasks of ``config`` in its workspace; tasks already prepared and intact
    are left as they are (unless ``config.force``). Returns the cards of all requested tasks.

    Raises :class:`InputError` for an unknown task or a missing/altered asset package,
    :class:`~calib.errors.WorkspaceError` for an unwritable workspace.
    """
    started = time.monotonic()
    _validate(config)
    ws = Workspace(config.workspace)
    tasks = tuple(dict.fromkeys(config.tasks))
    report = _scaled(progress, 0.0, 1.0)
    cards: dict[str, dict[str, Any]] = {}
    todo: list[TaskRecipe] = []
    for task in tasks:
        recipe = DEMO_TASKS[task]
        card = None if config.force else intact_card(ws.demo_dir / task, recipe.fingerprint(config.seed))
        if card is None:
            todo.append(recipe)
        else:
            cards[task] = card
    if todo:
        report(0.0, "checking the MiniLM-L6 checkpoint")
        files = sources.minilm_files(verify=True)
        corpora = {r.name: _read_texts(r) for r in todo}  # a missing data package fails before the long work
        tokenizer = load_tokenizer(files.dir)
        total = 1.0 + sum(3.0 * r.relative_cost for r in todo)
        encoder_path, encoder_facts = _encoder(ws, files, tokenizer, config.force,
                                               _scaled(progress, 0.0, 1.0 / total))
        position = 1.0 / total
        for recipe in todo:
            span = 3.0 * recipe.relative_cost / total
            cards[recipe.name] = _build_task(recipe, corpora[recipe.name], config.seed, ws.demo_dir / recipe.name, files,
                                             encoder_path, encoder_facts, tokenizer,
                                             _scaled(progress, position, span))
            position += span
    built = tuple(r.name for r in todo)
    report(1.0, f"demo ready: {', '.join(tasks)}" + ("" if built else " (already prepared)"))
    return DemoManifest(workspace=ws.root, tasks=tasks, built=built,
                        reused=tuple(t for t in tasks if t not in built),
                        cards={t: cards[t] for t in tasks}, seconds=time.monotonic() - started)
