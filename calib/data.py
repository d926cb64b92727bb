"""Text datasets through Hugging Face ``datasets``.

A :class:`DataSpec` names where the rows come from and which columns hold the text, the optional
second text (sentence pairs) and the label. Sources: a local CSV, JSON/JSONL or Parquet file, a
directory written by ``save_to_disk``, a demo task (``demo:bbc-topic``, ``demo:rt-sentiment``), or
a hub id when the network allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import InputError

if TYPE_CHECKING:
    import datasets

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset comes from and how to read it."""

    source: str  # file, save_to_disk directory, "demo:<task>" or hub id
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None
    split: str | None = None  # for DatasetDict sources: train / calibration / eval / ...
    workspace: str | None = None  # where demo tasks live (default workspace if None)

    def describe(self) -> str:
        return self.source + (f"[{self.split}]" if self.split else "")


def _select_split(obj: Any, spec: DataSpec) -> datasets.Dataset:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        if spec.split is None:
            if len(obj) == 1:
                return next(iter(obj.values()))
            raise InputError(f"dataset {spec.source} has splits {sorted(obj)}; name one with --split")
        if spec.split not in obj:
            raise InputError(f"dataset {spec.source} has no split {spec.split!r} (splits: {sorted(obj)})")
        return obj[spec.split]
    return obj


def load_rows(spec: DataSpec) -> datasets.Dataset:
    """Load the rows of ``spec`` and check that the named columns exist and hold text.

    Raises :class:`InputError` for a missing file, an empty dataset, an unknown column or a text
    column that holds something other than strings.
    """
    import datasets

    datasets.disable_progress_bars()
    source = spec.source
    path = Path(source).expanduser()
    try:
        if source.startswith("demo:"):
            from calib.demo import demo_task_dir

            ds = datasets.load_from_disk(str(demo_task_dir(source[5:], spec.workspace) / "data"))
        elif path.is_dir():
            if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                    or (path / "state.json").exists()):
                raise InputError(f"dataset directory {path} was not written by datasets' save_to_disk")
            ds = datasets.load_from_disk(str(path))
        elif path.suffix.lower() in _FILE_BUILDERS:
            if not path.is_file():
                raise InputError(f"dataset file {path} does not exist")
            if path.stat().st_size == 0:
                raise InputError(f"dataset file {path} is empty (0 bytes)")
            kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            ds = datasets.load_dataset(_FILE_BUILDERS[path.suffix.lower()], data_files=str(path),
                                       split="train", **kwargs)
        elif not path.exists() and ("/" in source or not path.suffix):  # a hub id
            ds = datasets.load_dataset(source, trust_remote_code=False)
        else:
            raise InputError(
                f"dataset {source}: unsupported file type {path.suffix!r} (use CSV, TSV, JSON, JSONL, Parquet "
                "or a save_to_disk directory)"
            )
    except InputError:
        raise
    except Exception as exc:
        root = exc
        while root.__cause__ is not None and "error occurred while generating" in str(root):
            root = root.__cause__  # datasets wraps the parser's own message; show that one
        first = str(root).splitlines()[0] if str(root) else type(root).__name__
        if "corresponds to no data" in first:  # datasets' words for a file with a header and no rows
            raise InputError(f"dataset {source} is empty (no rows)") from exc
        raise InputError(f"dataset {source} cannot be loaded: {first}") from exc
    ds = _select_split(ds, spec)
    check_columns(ds, spec)
    return ds


def check_columns(ds: datasets.Dataset, spec: DataSpec) -> None:
    if len(ds) == 0:
        raise InputError(f"dataset {spec.describe()} is empty")
    columns = ds.column_names
    for role, name in (("text", spec.text_column), ("text pair", spec.text_pair_column),
                       ("label", spec.label_column)):
        if name is not None and name not in columns:
            raise InputError(f"dataset {spec.describe()} has no {role} column {name!r} (columns: {columns})")
    for name in (spec.text_column, spec.text_pair_column):
        if name is None:
            continue
        feature = ds.features[name]
        dtype = getattr(feature, "dtype", None)
        if dtype not in ("string", "large_string"):
            raise InputError(
                f"dataset {spec.describe()}: column {name!r} holds {dtype or type(feature).__name__}, not text; "
                "name the column that holds the texts"
            )
        missing = sum(1 for v in ds[name] if v is None)
        if missing:
            raise InputError(f"dataset {spec.describe()}: text column {name!r} has {missing} empty (null) rows")


def texts_of(ds: datasets.Dataset, spec: DataSpec) -> tuple[list[str], list[str] | None]:
    texts = ds[spec.text_column]
    pairs = ds[spec.text_pair_column] if spec.text_pair_column else None
    return list(texts), (list(pairs) if pairs is not None else None)


def label_names(ds: datasets.Dataset, spec: DataSpec) -> list[str]:
    """Class names in id order: from a ClassLabel feature, else the sorted distinct values."""
    import datasets

    if spec.label_column is None:
        return []
    feature = ds.features[spec.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    names = sorted({str(v) for v in ds[spec.label_column] if v is not None and str(v).strip()})
    numbers = [n for n in names if _is_int(n)]
    if numbers and len(numbers) < len(names):
        words = [n for n in names if not _is_int(n)]
        raise InputError(f"label column {spec.label_column!r} of {spec.describe()} mixes class numbers "
                         f"({', '.join(numbers[:5])}) and class names ({', '.join(words[:5])}); make it one or the "
                         "other (or give --label-column none for an agreement-only run)")
    return sorted({str(v) for v in ds[spec.label_column]})


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def label_ids(ds: datasets.Dataset, spec: DataSpec, names: list[str]) -> np.ndarray:
    """Labels as int ids into ``names`` (-1 where a value is not among them). Shape (N,)."""
    import datasets

    if spec.label_column is None:
        return np.full(len(ds), -1, dtype=np.int64)
    feature = ds.features[spec.label_column]
    values = ds[spec.label_column]
    if isinstance(feature, datasets.ClassLabel):
        own = feature.names
        lookup = {i: (names.index(own[i]) if own[i] in names else -1) for i in range(len(own))}
        return np.asarray([lookup.get(v, -1) for v in values], dtype=np.int64)
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index.get(str(v), -1) for v in values], dtype=np.int64)


def fingerprint(ds: datasets.Dataset) -> str:
    """The content fingerprint ``datasets`` keeps for this table."""
    return str(getattr(ds, "_fingerprint", "")) or "unknown"
