"""Stage ``calibset``: assemble a calibration set by token-length distribution.

``assemble(AssembleConfig, out_dir)`` tokenises the pool (cached), draws rows with one of the
strategies of :mod:`calib.sampling`, measures coverage against a target (the eval split, another
dataset, a production-lengths file, or the pool itself) and writes a :class:`CalibrationSet`:

    manifest.json   dataset fingerprint, row ids, lengths, labels, strategy, seed, buckets, model
                    and tokenizer identity, coverage, notes, TensorRT optimisation-profile shapes
    rows/           the chosen rows as a ``datasets`` Arrow directory (save_to_disk)

Recipes (the config as JSON, minus machine-specific paths for demo tasks) replay a set exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.batching import Encoded, encode, iter_batches
from calib.buckets import DEFAULT_EDGES, bucket_labels, check_edges
from calib.coverage import Coverage, coverage
from calib.data import DataSpec, LoadReport, fingerprint, load_table, preparation_mismatch, texts_of
from calib.errors import InputError, check_choice
from calib.formatting import ratio
from calib.io import atomic_dir, atomic_save_npz, atomic_write_json, read_json
from calib.lengths import LengthTable, load_length_target, token_lengths
from calib.model import ModelRef, ModelSpec, check_same_model, load_model, load_tokenizer
from calib.pipeline import config_from_params, config_params, nest_params
from calib.progress import Phases
from calib.sampling import SHORTFALL_MODES, STRATEGIES, sample
from calib.workspace import ProgressFn, Workspace

if TYPE_CHECKING:
    import datasets

MANIFEST_FORMAT = "calib.calibset/1"
RECIPE_FORMAT = "calib.assemble-recipe/1"
TARGET_KINDS = ("pool", "eval", "dataset", "lengths")
TARGET_TITLES = {"pool": "The pool itself", "eval": "Evaluation data", "dataset": "Another dataset",
                 "lengths": "Production lengths (file)"}  # what people read for each target kind
_TARGET_NAMES = {"pool": "pool", "eval": "evaluation", "dataset": "target", "lengths": "production"}


@dataclass(frozen=True)
class AssembleConfig:
    """What to sample from, how, and what to compare against.

    ``target_kind``: ``pool`` (coverage against the pool itself), ``eval`` (split ``target_split``,
    default ``eval``, of the same source), ``dataset`` (``target_source`` read with the same
    columns, split ``target_split``) or ``lengths`` (a production-lengths file ``target_source``).
    """

    model: ModelRef
    data: DataSpec  # the pool to draw from (its workspace: for the token-length cache and demo sources)
    size: int = 128
    strategy: str = "natural"
    seed: int = 0
    edges: tuple[int, ...] = DEFAULT_EDGES
    target_kind: str = "pool"
    target_source: str | None = None
    target_split: str | None = None
    weights: tuple[float, ...] = ()  # one per bucket, for strategy "custom"
    stratify: bool = False
    shortfall: str = "neighbours"
    opt_percentile: float = 95.0  # length percentile for the TensorRT "opt" shape
    batch_sizes: tuple[int, int, int] = (1, 16, 32)  # TensorRT profile min / opt / max batch

    def target_spec(self) -> DataSpec | None:
        if self.target_kind == "eval":
            return dataclasses.replace(self.data, split=self.target_split or "eval")
        if self.target_kind == "dataset":
            return dataclasses.replace(self.data, source=str(self.target_source), split=self.target_split)
        return None


def parse_target(text: str | None) -> tuple[str, str | None, str | None]:
    """``pool`` | ``eval[:SPLIT]`` | ``dataset:SOURCE[:SPLIT]`` | ``lengths:FILE`` -> (kind, source, split).

    A dataset source may itself hold a colon (``demo:bbc-topic``), so ``dataset:demo:bbc-topic:eval``
    is source ``demo:bbc-topic``, split ``eval``; an existing file or folder is never split.
    """
    if not text or text == "pool":
        return "pool", None, None
    kind, _, rest = text.partition(":")
    if kind == "eval":
        return "eval", None, rest or None
    if kind == "dataset" and rest:
        source, split = _source_and_split(rest)
        if source:
            return kind, source, split
    if kind == "lengths" and rest:
        return kind, rest, None
    raise InputError(f"target {text!r}: use eval, eval:SPLIT, dataset:SOURCE, dataset:SOURCE:SPLIT, lengths:FILE or pool")


def _source_and_split(text: str) -> tuple[str, str | None]:
    """``SOURCE[:SPLIT]`` -> (source, split); ``demo:TASK`` counts as one source."""
    if Path(text).expanduser().exists():
        return text, None
    if text.startswith("demo:"):
        task, _, split = text[len("demo:"):].partition(":")
        return f"demo:{task}", split or None
    source, sep, split = text.rpartition(":")
    return (source, split or None) if sep else (text, None)


def _check_config(config: AssembleConfig) -> tuple[int, ...]:
    check_choice(config.strategy, STRATEGIES, "strategy")
    if config.shortfall not in SHORTFALL_MODES:
        raise InputError(f"unknown shortfall handling {config.shortfall!r} (choose neighbours or replace)")
    check_choice(config.target_kind, TARGET_KINDS, "target kind")
    if config.target_kind in ("dataset", "lengths") and not config.target_source:
        raise InputError(f"target {config.target_kind} needs a source (dataset:SOURCE or lengths:FILE)")
    if config.size < 1:
        raise InputError(f"calibration set size must be at least 1, got {config.size}")
    edges = check_edges(config.edges)
    if config.weights and config.strategy != "custom":
        raise InputError(f"bucket weights apply to strategy custom only (strategy is {config.strategy}); "
                         "add --strategy custom or drop --weights")
    if config.seed < 0:
        raise InputError(f"seed must be 0 or positive, got {config.seed}")
    if config.strategy == "custom" and len(config.weights) != len(edges):
        raise InputError(f"strategy custom needs {len(edges)} bucket weights (buckets {', '.join(bucket_labels(edges))}), "
                         f"got {len(config.weights)}")
    if not 0 < config.opt_percentile <= 100:
        raise InputError(f"opt percentile must be in (0, 100], got {config.opt_percentile}")
    bmin, bopt, bmax = config.batch_sizes
    if not 1 <= bmin <= bopt <= bmax:
        raise InputError(f"profile batch sizes must satisfy 1 <= min <= opt <= max, got {config.batch_sizes}")
    return edges


def _round8(value: float) -> int:
    return int(-(-int(np.ceil(value)) // 8) * 8)


def derive_profile(lengths: np.ndarray, max_length: int, input_names: tuple[str, ...], *,
                   traffic: np.ndarray | None = None, opt_percentile: float = 95.0,
                   batch_sizes: tuple[int, int, int] = (1, 16, 32)) -> dict[str, Any]:
    """TensorRT optimisation-profile shapes for the sequence axis and the batch axis.

    ``lengths`` (N,) are the calibration set's, ``traffic`` (M,) the target's (eval split or
    production; default: the calibration lengths). All are capped at ``max_length`` (the model never
    sees more). ``min`` is the shortest of either, rounded down to a multiple of 8 (at least 1), so
    every real input fits; ``opt`` the ``opt_percentile`` of the traffic rounded up to a multiple of 8;
    ``max`` the longest of either rounded up; all capped at ``max_length``.
    """
    calib = np.minimum(np.asarray(lengths), max_length)
    seen = calib if traffic is None else np.minimum(np.asarray(traffic), max_length)
    both = np.concatenate([calib, seen])
    seq_max = min(_round8(both.max()), max_length)
    seq_opt = min(max(_round8(np.percentile(seen, opt_percentile)), 8), seq_max)
    seq_min = min(max(1, int(both.min()) // 8 * 8), seq_opt)
    bmin, bopt, bmax = (int(b) for b in batch_sizes)
    shapes = {"min": [bmin, seq_min], "opt": [bopt, seq_opt], "max": [bmax, seq_max]}
    trtexec = {
        f"{which}Shapes": ",".join(f"{name}:{b}x{s}" for name in input_names)
        for which, (b, s) in shapes.items()
    }
    return {"sequence": {"min": seq_min, "opt": seq_opt, "max": seq_max, "opt_percentile": opt_percentile},
            "batch": {"min": bmin, "opt": bopt, "max": bmax}, "shapes": shapes, "inputs": list(input_names),
            "trtexec": trtexec}


def _remap_labels(table: LengthTable, names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    lookup = np.array([index.get(n, -1) for n in table.label_names] + [-1], dtype=np.int64)
    return lookup[np.where(table.labels >= 0, table.labels, len(table.label_names))]


def assemble(config: AssembleConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> CalibrationSet:
    """Draw a calibration set as ``config`` says and write it into ``out_dir``.

    Every input is validated (model, tokenizer, dataset and columns, size against the pool, the
    target) before anything is written; bad input raises :class:`InputError`.
    """
    def report(fraction: float, message: str = "") -> None:
        if progress is not None:
            progress(fraction, message)

    edges = _check_config(config)
    spec = config.model.load()
    data = config.data
    rows, pool_loaded = load_table(data)
    if config.size > len(rows) and config.shortfall != "replace":
        raise InputError(f"requested {config.size} texts but {data.describe()} has only {len(rows)}; "
                         "lower the size or choose shortfall 'replace' to sample with replacement")
    target_spec = config.target_spec()
    try:
        target_rows, target_loaded = load_table(target_spec) if target_spec is not None else (None, None)
    except InputError as exc:
        if config.target_kind == "dataset" and config.target_split is None and "name one with --split" in str(exc):
            raise InputError(str(exc).replace("name one with --split",
                                              f"name the target's one as dataset:{config.target_source}:SPLIT")) from exc
        raise
    if config.target_kind == "eval" and target_rows is not None and fingerprint(target_rows) == fingerprint(rows):
        raise InputError(f"target eval: dataset {data.source} has no separate {config.target_split or 'eval'!r} split "
                         "(use eval:SPLIT, dataset:SOURCE or lengths:FILE)")
    file_lengths = load_length_target(str(config.target_source)) if config.target_kind == "lengths" else None
    if config.strategy == "custom":
        w = np.asarray(config.weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"bucket weights must be non-negative with a positive sum, got {list(config.weights)}")
    workspace = Workspace(data.workspace) if data.workspace else None

    phases = Phases(report, [("pool lengths", len(rows)),
                             *([("target lengths", len(target_rows))] if target_rows is not None else [])], span=0.9)
    report(0.0, "token lengths of the pool")
    pool = token_lengths(spec, data, workspace, rows=rows, progress=phases.phase("pool lengths"))
    names = list(pool.label_names)
    target_labels = None
    target_fingerprint = None
    if target_spec is not None:
        table = token_lengths(spec, target_spec, workspace, rows=target_rows, progress=phases.phase("target lengths"))
        target_lengths, target_labels, target_fingerprint = table.lengths, _remap_labels(table, names), table.fingerprint
    elif file_lengths is not None:
        target_lengths = file_lengths
    else:
        target_lengths, target_labels, target_fingerprint = pool.lengths, pool.labels, pool.fingerprint

    report(0.9, f"sampling {config.size} texts ({config.strategy})")
    result = sample(pool.lengths, pool.labels, config.size, config.strategy, edges=edges,
                    target=target_lengths if config.strategy == "match" else None,
                    weights=config.weights or None, stratify=config.stratify, shortfall=config.shortfall,
                    seed=config.seed, target_labels=target_labels, label_names=names)
    chosen_lengths = pool.lengths[result.rows]
    chosen_labels = pool.labels[result.rows]
    cov = coverage(chosen_lengths, target_lengths, edges, chosen_labels,
                   target_labels if target_labels is not None else None, names, spec.max_length,
                   target_name=_TARGET_NAMES[config.target_kind])
    mismatch = preparation_mismatch(pool_loaded, target_loaded, ("calibration", cov.target_name)) \
        if target_loaded is not None else None
    if mismatch:
        cov = dataclasses.replace(cov, warnings=(*cov.warnings, mismatch))
    profile = derive_profile(chosen_lengths, spec.max_length, spec.input_names, traffic=target_lengths,
                             opt_percentile=config.opt_percentile, batch_sizes=config.batch_sizes)
    manifest = {
        "format": MANIFEST_FORMAT,
        "size": int(config.size),
        "strategy": config.strategy,
        "seed": int(config.seed),
        "stratify": bool(config.stratify),
        "shortfall": config.shortfall,
        "weights": list(config.weights),
        "edges": list(edges),
        "buckets": bucket_labels(edges),
        "dataset": {
            "source": data.source, "split": data.split, "text_column": data.text_column,
            "text_pair_column": data.text_pair_column, "label_column": data.label_column,
            "fingerprint": pool.fingerprint, "num_rows": len(pool),
            "truncation_rate": pool.truncation_rate(spec.max_length), "lengths": pool.percentiles(),
            "resolved": pool_loaded.resolved, "split_used": pool_loaded.split, "hygiene": pool_loaded.to_dict(),
        },
        "target": {
            "kind": config.target_kind, "source": config.target_source if config.target_kind != "eval" else data.source,
            "split": target_spec.split if target_spec is not None else None, "fingerprint": target_fingerprint,
            "num_lengths": len(target_lengths),
            "truncation_rate": float(np.mean(target_lengths > spec.max_length)),
        },
        "model": {
            "onnx_path": str(spec.onnx_path), "sha256": spec.sha256, "tokenizer_dir": str(spec.tokenizer_dir),
            "tokenizer_hash": pool.tokenizer_hash, "max_length": spec.max_length, "labels": list(spec.labels),
            "roles": spec.roles.to_dict(),
        },
        "tokenizer_hash": pool.tokenizer_hash,
        "row_ids": result.rows.tolist(),
        "lengths": chosen_lengths.astype(int).tolist(),
        "labels": chosen_labels.astype(int).tolist(),
        "label_names": names,
        "bucket_quota": result.bucket_quota.tolist(),
        "bucket_counts": result.bucket_counts.tolist(),
        "repeats": result.repeats,
        "truncation_rate": float(np.mean(chosen_lengths > spec.max_length)),
        "coverage": cov.to_dict(),
        "notes": [*pool_loaded.notes(), *(target_loaded.notes() if target_loaded is not None else []),
                  *result.notes],
        "profile": profile,
        "config": config_params(config),
    }
    report(0.95, "writing the calibration set")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir / "rows") as tmp:
        rows.select(result.rows.tolist()).save_to_disk(str(tmp))
    atomic_write_json(out_dir / "manifest.json", manifest)
    report(1.0, f"{config.size} texts, KS {ratio(cov.ks)}, {len(cov.warnings)} warnings")
    return CalibrationSet.load(out_dir)


@dataclass(frozen=True)
class CalibrationSet:
    """A saved calibration set (``manifest.json`` + ``rows/``)."""

    dir: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> CalibrationSet:
        directory = Path(directory)
        path = directory / "manifest.json"
        if not path.is_file():
            raise InputError(f"{directory} is not a calibration set (no manifest.json)")
        try:
            manifest = read_json(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"calibration set manifest {path} cannot be read: {exc}") from exc
        if manifest.get("format") != MANIFEST_FORMAT:
            raise InputError(f"{path} is not a calibration-set manifest (format {manifest.get('format')!r})")
        return cls(directory, manifest)

    # -- headline facts ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.manifest["row_ids"])

    @property
    def row_ids(self) -> np.ndarray:
        """(N,) row numbers in the source dataset (repeats only when drawn with replacement)."""
        return np.asarray(self.manifest["row_ids"], dtype=np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) untruncated token lengths, aligned with :attr:`row_ids`."""
        return np.asarray(self.manifest["lengths"], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.manifest["labels"], dtype=np.int64)

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def strategy(self) -> str:
        return str(self.manifest["strategy"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["model"]["max_length"])

    @property
    def model_sha256(self) -> str:
        return str(self.manifest["model"]["sha256"])

    @property
    def model_labels(self) -> tuple[str, ...]:
        """The model's class names in logit order as the set resolved them (given, else the pool's label
        names); empty when unknown."""
        return tuple(self.manifest["model"].get("labels") or ())

    @property
    def role_fields(self) -> dict[str, str | None]:
        """The output roles the set was drawn with, as ModelRef / ``load_model`` fields (``logits_output``,
        ``embedding_output``, ``pooling``); {} for sets made before roles were recorded (detect them again)."""
        roles = self.manifest["model"].get("roles") or {}
        if not roles:
            return {}
        return {"logits_output": roles.get("logits"), "embedding_output": roles.get("embedding"),
                "pooling": roles.get("pooling")}

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def stratified(self) -> bool:
        """Whether the draw kept the pool's label mix."""
        return bool(self.manifest["stratify"])

    @property
    def dataset_record(self) -> dict[str, Any]:
        """The pool as recorded: ``source``, ``split``, ``num_rows``, ``lengths`` (p50/p95/max tokens),
        ``truncation_rate``, columns and ``hygiene``."""
        return dict(self.manifest["dataset"])

    @property
    def target_record(self) -> dict[str, Any]:
        """What the set was matched against: ``kind``, ``num_lengths`` (texts), source and split."""
        return dict(self.manifest["target"])

    @property
    def profile(self) -> dict[str, Any]:
        """TensorRT optimisation profile: ``shapes`` {min, opt, max: [batch, seq]}, ``trtexec`` flags."""
        return dict(self.manifest["profile"])

    @property
    def profile_shapes(self) -> dict[str, tuple[int, int]]:
        """The profile's (batch, sequence) shape for ``min``, ``opt`` and ``max``."""
        return {k: (int(v[0]), int(v[1])) for k, v in self.manifest["profile"]["shapes"].items()}

    PROFILE_POINTS = ("min", "opt", "max")

    @property
    def profile_sequences(self) -> tuple[int, int, int]:
        """The profile's min / opt / max sequence length (tokens)."""
        shapes = self.profile_shapes
        return tuple(shapes[k][1] for k in self.PROFILE_POINTS)

    @property
    def profile_batches(self) -> tuple[int, int, int]:
        """The profile's min / opt / max batch size."""
        shapes = self.profile_shapes
        return tuple(shapes[k][0] for k in self.PROFILE_POINTS)

    @property
    def trtexec_flags(self) -> list[str]:
        """The profile as ``trtexec`` options (``--minShapes=...``)."""
        return [f"--{k}={v}" for k, v in self.manifest["profile"]["trtexec"].items()]

    @property
    def dataset_source(self) -> str:
        """The dataset the set was drawn from, as given (a path, a ``demo:`` name, a hub id)."""
        return str(self.manifest["dataset"]["source"])

    @property
    def target_kind(self) -> str:
        """What the set was matched and compared against: ``eval``, ``dataset``, ``lengths`` or ``pool``."""
        return str(self.manifest["target"]["kind"])

    @property
    def hygiene(self) -> LoadReport | None:
        """How the drawn texts looked (entities, markup, quotes); None for sets made before it was recorded."""
        recorded = self.manifest["dataset"].get("hygiene")
        return LoadReport(**recorded) if recorded else None

    @property
    def coverage(self) -> Coverage:
        return Coverage.from_dict(self.manifest["coverage"])

    @property
    def notes(self) -> list[str]:
        return list(self.manifest["notes"])

    @property
    def config(self) -> AssembleConfig:
        return config_from_dict(self.manifest["config"], where=str(self.dir / "manifest.json"))

    # -- contents ------------------------------------------------------------------------------
    def rows(self) -> datasets.Dataset:
        import datasets

        datasets.disable_progress_bars()
        return datasets.load_from_disk(str(self.dir / "rows"))

    def texts(self) -> tuple[list[str], list[str] | None]:
        """The texts (and second segments for sentence pairs), in manifest order."""
        ds = self.manifest["dataset"]
        spec = DataSpec(ds["source"], ds["text_column"], ds["label_column"],
                        ds.get("text_pair_column", ds.get("pair_column")))  # the old name before 0.2
        return texts_of(self.rows(), spec)

    def model_spec(self) -> ModelSpec:
        """The model this set was drawn for; refuses a model file whose sha256 changed since."""
        m = self.manifest["model"]
        spec = load_model(m["onnx_path"], m["tokenizer_dir"], max_length=int(m["max_length"]), labels=self.model_labels,
                          **self.role_fields)
        check_same_model(m["sha256"], spec.sha256, f"calibration set {self.dir}")
        return spec

    def encode(self, spec: ModelSpec | None = None) -> Encoded:
        """Tokenise the texts with the model's tokenizer and max length."""
        spec = spec or self.model_spec()
        check_same_model(self.model_sha256, spec.sha256, f"calibration set {self.dir}")
        texts, pairs = self.texts()
        return encode(load_tokenizer(spec.tokenizer_dir), texts, pairs, max_length=spec.max_length)

    def export_npz(self, path: str | Path, batch_size: int = 16, spec: ModelSpec | None = None) -> Path:
        """Write length-bucketed feed dictionaries to ``path``.

        Keys: ``batch_0000/<input name>`` (B, T) arrays of the model's input dtypes,
        ``batch_0000/mask`` (B, T) bool (False at padded positions), ``batch_0000/rows`` (B,) indices
        into this set, plus ``num_batches`` and ``input_names``.
        """
        spec = spec or self.model_spec()
        encoded = self.encode(spec)
        arrays: dict[str, np.ndarray] = {}
        count = 0
        for i, batch in enumerate(iter_batches(encoded, spec.input_dtypes, batch_size)):
            for name, value in batch.feeds.items():
                arrays[f"batch_{i:04d}/{name}"] = value
            arrays[f"batch_{i:04d}/mask"] = batch.mask
            arrays[f"batch_{i:04d}/rows"] = batch.rows.astype(np.int64)
            count += 1
        arrays["num_batches"] = np.asarray(count)
        arrays["input_names"] = np.asarray(spec.input_names)
        return atomic_save_npz(path, **arrays)

    def summary(self) -> dict[str, Any]:
        cov = self.manifest["coverage"]
        seq = self.manifest["profile"]["sequence"]
        return {
            "size": self.size, "strategy": self.strategy, "seed": self.manifest["seed"],
            "target": self.manifest["target"]["kind"], "ks": round(float(cov["ks"]), 4),
            "wasserstein": round(float(cov["wasserstein"]), 2), "longest_covered": cov["longest_covered"],
            "warnings": len(cov["warnings"]), "max_length": self.max_length,
            "profile_seq": [seq["min"], seq["opt"], seq["max"]], "repeats": self.manifest["repeats"],
            "model_sha256": self.model_sha256,  # what the app's run pickers filter on
        }


# -- recipes -------------------------------------------------------------------------------------

def config_from_dict(values: dict[str, Any], *, where: str = "recipe") -> AssembleConfig:
    """An :class:`AssembleConfig` from plain JSON data: today's nested layout or the flat one older recipes
    and manifests hold (:func:`calib.pipeline.config_from_params`); unknown keys are errors."""
    nested = nest_params(AssembleConfig, values)
    model, data = nested.get("model"), nested.get("data")
    missing = [name for name, part, key in (("model", model, "model"), ("tokenizer", model, "tokenizer"),
                                            ("source", data, "source"))
               if not (getattr(part, key, None) if dataclasses.is_dataclass(part) else (part or {}).get(key))]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    return config_from_params(AssembleConfig, nested, strict=True, where=where)


def save_recipe(config: AssembleConfig, path: str | Path, *, description: str = "") -> Path:
    """Write ``config`` as a replayable JSON recipe (a recipe that names a demo task instead of the model
    and data: :func:`calib.inputs.save_recipe`)."""
    values = config_params(config)
    values["data"].pop("workspace", None)
    return write_recipe(values, path, description=description)


def write_recipe(values: Mapping[str, Any], path: str | Path, *, description: str = "", demo: str | None = None) -> Path:
    """Write plain config ``values`` in the recipe format (``demo``: the task that fills what they leave out)."""
    recipe: dict[str, Any] = {"format": RECIPE_FORMAT, "description": description}
    if demo:
        recipe["demo"] = demo
    recipe["config"] = dict(values)
    return atomic_write_json(path, recipe)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's JSON (``format``, ``description``, optional ``demo``, ``config``), checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"recipe {path} does not exist")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"recipe {path} is not valid JSON: {exc}") from exc
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT or not isinstance(recipe.get("config"), dict):
        raise InputError(f"recipe {path} is not a calib assemble recipe (expected format {RECIPE_FORMAT!r} and a config)")
    return recipe
