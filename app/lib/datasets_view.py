"""Looking at datasets before they are chosen: column names, splits and a preview.

Peeking reads with pandas / pyarrow / ``datasets.load_from_disk`` only (no code from the files);
the chosen dataset is then loaded and checked by ``calib.data.load_rows``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from calib.data import DataSpec, label_names, load_rows
from calib.errors import InputError

PREVIEW_ROWS = 50


@dataclass(frozen=True)
class Peek:
    columns: tuple[str, ...]
    splits: tuple[str, ...]  # empty for single-table sources
    preview: pd.DataFrame


def _mtime(source: str) -> float:
    try:
        return Path(source).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner="Reading the dataset…", max_entries=32)
def _peek(source: str, split: str | None, mtime: float) -> Peek:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise InputError(f"dataset directory {path} was not written by datasets' save_to_disk")
        obj = datasets.load_from_disk(str(path))
        if isinstance(obj, datasets.DatasetDict):
            splits = tuple(obj.keys())
            table = obj[split] if split in obj else obj[splits[0]]
        else:
            splits, table = (), obj
        head = table.select(range(min(PREVIEW_ROWS, len(table)))).to_pandas()
        return Peek(tuple(table.column_names), splits, head)
    if not path.is_file():
        raise InputError(f"dataset {source} does not exist (give a CSV/TSV/JSON/JSONL/Parquet file or a "
                         "save_to_disk folder)")
    try:
        if suffix in (".csv", ".tsv"):
            head = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=PREVIEW_ROWS)
        elif suffix == ".jsonl":
            head = pd.read_json(path, lines=True, nrows=PREVIEW_ROWS)
        elif suffix == ".json":
            try:
                head = pd.read_json(path, lines=True, nrows=PREVIEW_ROWS)
            except ValueError:
                head = pd.read_json(path).head(PREVIEW_ROWS)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            head = next(pf.iter_batches(batch_size=PREVIEW_ROWS)).to_pandas()
        else:
            raise InputError(f"dataset {source}: unsupported file type {suffix!r} (use CSV, TSV, JSON, JSONL, "
                             "Parquet or a save_to_disk folder)")
    except InputError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"dataset {source} cannot be read: {first}") from exc
    return Peek(tuple(str(c) for c in head.columns), (), head)


def peek(source: str, split: str | None = None) -> Peek:
    return _peek(source, split, _mtime(source))


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=16)
def _rows(spec: DataSpec, mtime: float):
    return load_rows(spec)


def rows(spec: DataSpec):
    """``calib.data.load_rows(spec)``, cached per process (raises InputError)."""
    return _rows(spec, _mtime(spec.source))


def summary_frame(spec: DataSpec) -> tuple[int, pd.DataFrame, pd.DataFrame]:
    """(row count, preview rows, label counts) of a loaded dataset."""
    ds = rows(spec)
    head = ds.select(range(min(PREVIEW_ROWS, len(ds)))).to_pandas()
    names = label_names(ds, spec)
    counts = pd.DataFrame()
    if spec.label_column:
        values = pd.Series(ds[spec.label_column])
        if names and pd.api.types.is_integer_dtype(values):
            values = values.map(lambda i: names[i] if 0 <= i < len(names) else str(i))
            head[spec.label_column] = head[spec.label_column].map(
                lambda i: names[int(i)] if isinstance(i, numbers.Integral) and 0 <= i < len(names) else i)
        counts = values.astype(str).value_counts().rename_axis("label").reset_index(name="rows")
    return len(ds), head, counts
