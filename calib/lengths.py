"""Token lengths of a dataset under a model's own tokenizer, cached; production length files.

Lengths are token counts **before** truncation, special tokens included (what production sends
to the tokenizer). They are cached in ``<workspace>/cache/lengths/`` under a key made of the
dataset fingerprint, the tokenizer hash and the columns, so a second look is instant.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.batching import encode
from calib.data import DataSpec, fingerprint, label_ids, label_names, load_rows, texts_of
from calib.errors import InputError
from calib.io import atomic_save_npz
from calib.model import ModelSpec, load_tokenizer, tokenizer_hash
from calib.sampling import largest_remainder
from calib.workspace import ProgressFn, Workspace

if TYPE_CHECKING:
    import datasets

CACHE_VERSION = 1
TOKENIZE_CHUNK = 1024  # texts per tokenizer call: bounds memory, gives progress
MAX_EXPANDED = 1_000_000  # a histogram with more counts is scaled down to this many lengths


@dataclass(frozen=True)
class LengthTable:
    """Untruncated token lengths of every row of a dataset, with the row labels."""

    lengths: np.ndarray  # (N,) int32 token counts incl. special tokens, before truncation
    labels: np.ndarray  # (N,) int64 ids into label_names, -1 where unknown / no label column
    label_names: tuple[str, ...]
    fingerprint: str  # dataset fingerprint
    tokenizer_hash: str
    source: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.lengths)

    def truncation_rate(self, max_length: int) -> float:
        """Share of rows longer than ``max_length`` tokens (they would be cut)."""
        return float(np.mean(self.lengths > max_length)) if len(self.lengths) else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.lengths, q))

    def percentiles(self, qs: Sequence[float] = (50, 90, 95, 99)) -> dict[str, float]:
        """``{"p50": ..., "p90": ..., ..., "min": ..., "max": ...}`` in tokens."""
        values = np.percentile(self.lengths, list(qs))
        out = {f"p{q:g}": float(v) for q, v in zip(qs, values)}
        out.update(min=float(self.lengths.min()), max=float(self.lengths.max()))
        return out

    def summary(self, max_length: int | None = None) -> dict[str, object]:
        out: dict[str, object] = {"rows": len(self), **self.percentiles()}
        if max_length:
            out["max_length"] = max_length
            out["truncation_rate"] = self.truncation_rate(max_length)
        return out


def _cache_key(fp: str, tok_hash: str, data: DataSpec, n_rows: int) -> str:
    parts = [f"v{CACHE_VERSION}", fp, tok_hash, str(n_rows), data.text_column, str(data.text_pair_column),
             str(data.label_column)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def token_lengths(
    spec: ModelSpec,
    data: DataSpec,
    workspace: Workspace | None = None,
    *,
    rows: datasets.Dataset | None = None,
    progress: ProgressFn | None = None,
) -> LengthTable:
    """Untruncated token lengths of every row of ``data`` under ``spec``'s tokenizer.

    ``rows`` may pass the already loaded dataset of ``data``. With a ``workspace`` the result is
    cached; without one it is computed every time. Raises :class:`InputError` for unloadable data,
    unknown columns or non-text values.
    """
    ds = rows if rows is not None else load_rows(data)
    fp = fingerprint(ds)
    tok_hash = tokenizer_hash(spec.tokenizer_dir)
    names = tuple(label_names(ds, data))
    labels = label_ids(ds, data, list(names))
    cache_file = None
    if workspace is not None and fp != "unknown":
        cache_file = workspace.cache_dir / "lengths" / f"{_cache_key(fp, tok_hash, data, len(ds))}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file) as cached:
                    lengths = cached["lengths"]
                if len(lengths) == len(ds):
                    if progress:
                        progress(1.0, f"token lengths of {len(ds)} texts (cached)")
                    return LengthTable(lengths, labels, names, fp, tok_hash, data.describe(), from_cache=True)
            except (OSError, KeyError, ValueError):
                pass  # a damaged cache entry is recomputed and replaced
    lengths = _count_tokens(spec, ds, data, progress)
    if cache_file is not None:
        atomic_save_npz(cache_file, lengths=lengths)
    return LengthTable(lengths, labels, names, fp, tok_hash, data.describe())


def _count_tokens(spec: ModelSpec, ds: datasets.Dataset, data: DataSpec, progress: ProgressFn | None) -> np.ndarray:
    tokenizer = load_tokenizer(spec.tokenizer_dir)
    out = np.zeros(len(ds), dtype=np.int32)
    for start in range(0, len(ds), TOKENIZE_CHUNK):
        chunk = ds.select(range(start, min(start + TOKENIZE_CHUNK, len(ds))))
        texts, pairs = texts_of(chunk, data)
        try:
            encoded = encode(tokenizer, texts, pairs, max_length=spec.max_length)
        except InputError as exc:  # name the dataset and the absolute row
            raise InputError(f"dataset {data.describe()} (rows {start}+): {exc}") from exc
        out[start : start + len(texts)] = encoded.full_lengths
        if progress:
            done = start + len(texts)
            progress(done / len(ds), f"tokenised {done}/{len(ds)} texts")
    return out


# -- production length files -------------------------------------------------------------------

def _as_count(value: Any, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {value!r} is not a number") from None
    if not np.isfinite(number) or number < 0 or number != int(number):
        raise InputError(f"{where}: {value!r} is not a non-negative whole number")
    return int(number)


def _expand_pairs(lengths: list[int], counts: list[int], where: str) -> np.ndarray:
    counts_arr = np.asarray(counts, dtype=np.int64)
    if counts_arr.sum() == 0:
        raise InputError(f"{where}: all counts are zero")
    counts_arr = _scale_counts(counts_arr)
    return np.repeat(np.asarray(lengths, dtype=np.int64), counts_arr)


def _scale_counts(counts: np.ndarray) -> np.ndarray:
    if counts.sum() <= MAX_EXPANDED:
        return counts

    return largest_remainder(counts.astype(np.float64), MAX_EXPANDED)


def _expand_histogram(edges: list[int], counts: list[int], where: str) -> np.ndarray:
    """Bucket ``[edges[i], edges[i+1])`` holds ``counts[i]`` texts, spread evenly over it; with one
    count more than closed buckets, the last count is an open bucket ``edges[-1]+`` (taken as
    ``edges[-1]`` tokens)."""
    if len(edges) < 2 and not (len(edges) == 1 and len(counts) == 1):
        raise InputError(f"{where}: a histogram needs at least two bucket edges")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise InputError(f"{where}: bucket edges must increase strictly, got {edges}")
    if len(counts) not in (len(edges) - 1, len(edges)):
        raise InputError(f"{where}: {len(edges)} bucket edges need {len(edges) - 1} counts "
                         f"(or {len(edges)} with an open last bucket), got {len(counts)}")
    counts_arr = np.asarray(counts, dtype=np.int64)
    if counts_arr.sum() == 0:
        raise InputError(f"{where}: all counts are zero")
    counts_arr = _scale_counts(counts_arr)
    parts = []
    for i, c in enumerate(counts_arr):
        lo = edges[i]
        hi = edges[i + 1] if i + 1 < len(edges) else lo + 1
        parts.append(lo + np.floor((np.arange(c) + 0.5) * (hi - lo) / c).astype(np.int64) if c else np.zeros(0, np.int64))
    return np.concatenate(parts)


def _from_json(data: Any, where: str) -> np.ndarray:
    if isinstance(data, dict):
        if "lengths" in data:
            return _from_json(data["lengths"], where)
        if "histogram" in data:
            return _from_json(data["histogram"], where)
        if "edges" in data and "counts" in data:
            if not isinstance(data["edges"], list) or not isinstance(data["counts"], list):
                raise InputError(f"{where}: 'edges' and 'counts' must be lists")
            edges = [_as_count(v, f"{where} edges[{i}]") for i, v in enumerate(data["edges"])]
            counts = [_as_count(v, f"{where} counts[{i}]") for i, v in enumerate(data["counts"])]
            return _expand_histogram(edges, counts, where)
        raise InputError(f"{where}: expected a list of lengths, {{'lengths': [...]}}, "
                         "{'edges': [...], 'counts': [...]} or [[length, count], ...]")
    if not isinstance(data, list) or not data:
        raise InputError(f"{where}: expected a non-empty list of token lengths")
    if all(isinstance(v, (list, tuple)) for v in data):
        if any(len(v) != 2 for v in data):
            raise InputError(f"{where}: histogram entries must be [length, count] pairs")
        return _expand_pairs([_as_count(v[0], f"{where} entry {i}") for i, v in enumerate(data)],
                             [_as_count(v[1], f"{where} entry {i}") for i, v in enumerate(data)], where)
    if all(isinstance(v, dict) for v in data):
        try:
            return _expand_pairs([_as_count(v["length"], f"{where} entry {i}") for i, v in enumerate(data)],
                                 [_as_count(v["count"], f"{where} entry {i}") for i, v in enumerate(data)], where)
        except KeyError:
            raise InputError(f"{where}: histogram entries need 'length' and 'count' keys") from None
    return np.asarray([_as_count(v, f"{where} item {i}") for i, v in enumerate(data)], dtype=np.int64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _from_csv(text: str, where: str, delimiter: str) -> np.ndarray:
    rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(text), delimiter=delimiter)
            if any(c.strip() for c in row)]
    if not rows:
        raise InputError(f"{where}: the file has no rows")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = [c.lower() for c in rows[0]], rows[1:]
    if not rows:
        raise InputError(f"{where}: the file has a header but no rows")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(f"{where}: line {i + 1 + (header is not None)} has {len(row)} columns, expected {width}")
    line = 1 + (header is not None)

    def column(j: int) -> list[int]:
        return [_as_count(row[j], f"{where} line {i + line}") for i, row in enumerate(rows)]

    if width == 1:
        return np.asarray(column(0), dtype=np.int64)
    if width == 2:  # length,count pairs
        return _expand_pairs(column(0), column(1), where)
    if width == 3:  # bucket start (inclusive), bucket end (exclusive), count
        starts, ends, counts = column(0), column(1), column(2)
        if any(e <= s for s, e in zip(starts, ends)):
            raise InputError(f"{where}: each bucket's end must be greater than its start")
        if sum(counts) == 0:
            raise InputError(f"{where}: all counts are zero")
        scaled = _scale_counts(np.asarray(counts, dtype=np.int64))
        return np.concatenate([_expand_histogram([s, e], [int(c)], where) for s, e, c in zip(starts, ends, scaled) if c])
    raise InputError(f"{where}: expected 1 column (lengths), 2 (length,count) or 3 (start,end,count), got {width}")


def load_length_target(path: str | Path) -> np.ndarray:
    """Token lengths (M,) int64 from an uploaded file of production lengths.

    Accepted: JSON ``[12, 40, ...]``, ``{"lengths": [...]}``, ``{"edges": [0, 32, ...], "counts":
    [...]}`` (bucket counts; one extra count is an open last bucket), ``[[length, count], ...]`` or
    ``[{"length": .., "count": ..}]``; CSV/TSV/TXT with one column of lengths, two columns
    ``length,count`` or three ``start,end,count`` (end exclusive), with or without a header.
    Histograms become lengths spread evenly over each bucket. Raises :class:`InputError` naming
    the file and the line for anything else.
    """
    path = Path(path)
    where = f"lengths file {path}"
    if not path.is_file():
        raise InputError(f"{where} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} cannot be read as text: {exc}") from exc
    if not text.strip():
        raise InputError(f"{where} is empty")
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix not in (".csv", ".tsv", ".txt") and text.lstrip()[:1] in "[{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} is not valid JSON: {exc}") from exc
        lengths = _from_json(data, where)
    else:
        lengths = _from_csv(text, where, "\t" if suffix == ".tsv" else ",")
    if len(lengths) == 0:
        raise InputError(f"{where} holds no lengths")
    return lengths
