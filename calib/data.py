"""Text datasets through Hugging Face ``datasets``.

A :class:`DataSpec` names where the rows come from and which columns hold the text, the optional
second text (sentence pairs) and the label. Sources: a local CSV, JSON/JSONL or Parquet file, a
directory written by ``save_to_disk``, a registered source scheme (``SCHEME:NAME``, a ``save_to_disk``
folder found by the scheme's resolver: the demo registers ``demo:bbc-topic``), or a hub id when the
network allows.

Source schemes (:func:`register_source_scheme`): this module knows none by name. A package registers
one when it is imported, and an installed distribution declares it under the ``calib.data_sources``
entry-point group (``demo = "calib.demo.tasks:demo_data_folder"`` in calib's own ``pyproject.toml``),
which is loaded the first time a source names a scheme not yet registered.

Hygiene (:func:`load_table`, which :func:`load_rows` wraps): rows with an empty (null or blank) text
or label are refused with their count, or dropped and counted with ``drop_empty`` (an empty label
never becomes a class named "None"); texts holding HTML entities or markup, or wrapped in quotes
(triple-quoted CSV fields), are counted and reported (:class:`LoadReport`), and with
``normalize="html"`` entities are unescaped, ``<br>`` becomes a space and other tags are removed.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.errors import InputError

if TYPE_CHECKING:
    import datasets

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
NORMALIZATIONS = ("none", "html")
NORMALIZATION_DESCRIPTIONS = {"none": "texts as they are",
                              "html": "unescape HTML entities (&amp;, &#39;) and strip markup (<br />)"}
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_MARKUP = re.compile(r"</?(?:br|p|div|span|a|b|i|em|strong|u|li|ul|ol|h[1-6]|font|img|table|tr|td)\b[^<>]*>",
                     re.IGNORECASE)
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_QUOTED = re.compile(r'^\s*(?:"{3}.*"{3}|\'{3}.*\'{3}|".*")\s*$', re.DOTALL)

SourceResolver = Callable[[str, "str | None"], Path]  # (name after "SCHEME:", workspace) -> save_to_disk folder
SOURCE_ENTRY_POINTS = "calib.data_sources"
_SOURCE_SCHEMES: dict[str, SourceResolver] = {}
_SCHEME = re.compile(r"^([a-z][a-z0-9_-]+):(?!//)(.+)$")  # two letters at least: never a Windows drive


def register_source_scheme(scheme: str, resolver: SourceResolver) -> None:
    """Make ``SCHEME:NAME`` a data source: ``resolver(NAME, workspace)`` returns its ``save_to_disk`` folder
    (raising :class:`InputError` in one line when NAME is unknown or not there)."""
    if not _SCHEME.match(f"{scheme}:x"):
        raise ValueError(f"source scheme {scheme!r}: lower-case letters, digits, '-' or '_', two characters at least")
    _SOURCE_SCHEMES[scheme] = resolver


def source_schemes() -> tuple[str, ...]:
    """Every registered source scheme (entry points included)."""
    _load_scheme_plugins()
    return tuple(sorted(_SOURCE_SCHEMES))


def _load_scheme_plugins() -> None:
    for ep in metadata.entry_points(group=SOURCE_ENTRY_POINTS):
        if ep.name not in _SOURCE_SCHEMES:
            _SOURCE_SCHEMES[ep.name] = ep.load()


def scheme_folder(source: str, workspace: str | None) -> Path | None:
    """The ``save_to_disk`` folder of a ``SCHEME:NAME`` source; None when ``source`` names no registered
    scheme (a path or a hub id)."""
    match = _SCHEME.match(source)
    if match is None or Path(source).expanduser().exists():
        return None
    scheme, name = match.groups()
    if scheme not in _SOURCE_SCHEMES:
        _load_scheme_plugins()
    resolver = _SOURCE_SCHEMES.get(scheme)
    return None if resolver is None else Path(resolver(name, workspace))


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset comes from and how to read it."""

    source: str  # file, save_to_disk directory, "SCHEME:NAME" (e.g. "demo:<task>") or hub id
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None
    split: str | None = None  # for DatasetDict sources: train / calibration / eval / ...
    workspace: str | None = None  # handed to a source scheme's resolver (the demo's: where its tasks live)
    drop_empty: bool = False  # drop rows with an empty text or label (counted) instead of refusing them
    normalize: str = "none"  # "html": unescape entities and strip markup in the text columns

    def describe(self) -> str:
        return self.source + (f"[{self.split}]" if self.split else "")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_table` read: where from (resolved path, split used), rows read and kept, and
    what the texts look like (counts of texts with HTML entities, markup, or wrapped in quotes)."""

    source: str
    resolved: str  # absolute path of a file or folder (a scheme's folder), else the hub id
    split: str | None  # the split actually used (also when the source has a single split)
    rows_read: int
    rows: int
    label_column: str | None = None  # the label column read (None: none asked for, or absent and optional)
    dropped_empty_texts: int = 0
    dropped_empty_labels: int = 0
    texts_with_entities: int = 0
    texts_with_markup: int = 0
    quoted_texts: int = 0
    normalized: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def share(self, count: int) -> float:
        return count / self.rows if self.rows else 0.0

    def notes(self) -> list[str]:
        """Plain-language lines about the rows dropped and the texts' preparation."""
        out = []
        where = self.source + (f"[{self.split}]" if self.split else "")
        if self.dropped_empty_texts:
            out.append(f"{self.dropped_empty_texts} row(s) of {where} with an empty text were dropped (--drop-empty)")
        if self.dropped_empty_labels:
            out.append(f"{self.dropped_empty_labels} row(s) of {where} with an empty label were dropped (--drop-empty)")
        for count, what in ((self.texts_with_entities, "HTML entities (e.g. &amp;, &#39;)"),
                            (self.texts_with_markup, "HTML markup (e.g. <br />)"),
                            (self.quoted_texts, "the whole text wrapped in quotes (e.g. triple-quoted CSV fields)")):
            if count:
                done = " (unescaped: --normalize html)" if self.normalized == "html" and "HTML" in what else ""
                hint = "" if done or "HTML" not in what else "; --normalize html unescapes them"
                out.append(f"{count} of {self.rows} texts of {where} ({100 * self.share(count):.1f} %) hold {what}"
                           f"{done}{hint}")
        return out


def preparation_mismatch(a: LoadReport, b: LoadReport, names: tuple[str, str] = ("calibration", "evaluation"),
                         ratio: float = 5.0, floor: float = 0.01) -> str | None:
    """A warning when two text sets were prepared differently: one has HTML entities, markup or
    quote-wrapped texts in at least ``floor`` of its rows and the other ``ratio`` times fewer (HTML
    counts of a set loaded with ``normalize="html"`` count as none: they were unescaped)."""
    def share(r: LoadReport, attr: str) -> float:
        return 0.0 if r.normalized == "html" and attr != "quoted_texts" else r.share(getattr(r, attr))

    for attr, what in (("texts_with_entities", "HTML entities"), ("texts_with_markup", "HTML markup"),
                       ("quoted_texts", "quote-wrapped texts")):
        sa, sb = share(a, attr), share(b, attr)
        hi, lo = max(sa, sb), min(sa, sb)
        if hi >= floor and hi > ratio * lo:
            more, less = (names[0], names[1]) if sa > sb else (names[1], names[0])
            return (f"{what} in {100 * hi:.1f} % of {more} texts but {100 * lo:.1f} % of {less} texts: the two were "
                    "prepared differently, so INT8 ranges are calibrated on inputs unlike those evaluated (clean both "
                    "the same way, e.g. --normalize html on both)")
    return None


def normalize_html(text: str) -> str:
    """Entities unescaped, ``<br>`` as a space, other tags removed, runs of spaces collapsed."""
    text = html.unescape(_TAG.sub("", _BREAK.sub(" ", text)))
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


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
    """Load the rows of ``spec`` and check that the named columns exist and hold text (see :func:`load_table`)."""
    return load_table(spec)[0]


def _resolved(spec: DataSpec) -> str:
    if (folder := scheme_folder(spec.source, spec.workspace)) is not None:
        return str(folder.resolve())
    path = Path(spec.source).expanduser()
    return str(path.resolve()) if path.exists() else spec.source


def load_table(spec: DataSpec, *, label_optional: bool = False) -> tuple[datasets.Dataset, LoadReport]:
    """Load the rows of ``spec``, check them, apply the hygiene it asks for, and say what was read.

    With ``label_optional`` a label column the table does not have is ignored (``LoadReport.label_column``
    is then None). Raises :class:`InputError` for a missing file, an empty dataset, an unknown column,
    a text column that holds something other than strings, or (without ``drop_empty``) rows with an
    empty text or label.
    """
    import datasets

    if spec.normalize not in NORMALIZATIONS:
        raise InputError(f"unknown text normalization {spec.normalize!r} (choose {', '.join(NORMALIZATIONS)})")

    datasets.disable_progress_bars()
    source = spec.source
    path = Path(source).expanduser()
    try:
        if (folder := scheme_folder(source, spec.workspace)) is not None:
            ds = datasets.load_from_disk(str(folder))
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
    split = spec.split
    if isinstance(ds, datasets.DatasetDict) and split is None and len(ds) == 1:
        split = next(iter(ds))
    ds = _select_split(ds, spec)
    if label_optional and spec.label_column is not None and spec.label_column not in ds.column_names:
        spec = dataclasses.replace(spec, label_column=None)
    check_columns(ds, spec)
    rows_read = len(ds)
    empty_text = np.zeros(rows_read, dtype=bool)
    for name in (spec.text_column, spec.text_pair_column):
        if name is not None:
            empty_text |= np.fromiter((_is_empty(v) for v in ds[name]), dtype=bool, count=rows_read)
    empty_label = np.zeros(rows_read, dtype=bool)
    if spec.label_column is not None and not isinstance(ds.features[spec.label_column], datasets.ClassLabel):
        empty_label = np.fromiter((_is_empty(v) for v in ds[spec.label_column]), dtype=bool, count=rows_read)
    for mask, what, column in ((empty_text, "text", spec.text_column), (empty_label, "label", spec.label_column)):
        if mask.any() and not spec.drop_empty:
            raise InputError(f"dataset {spec.describe()}: {what} column {column!r} has {int(mask.sum())} empty (null) "
                             f"or blank rows; drop them with --drop-empty or fill them")
    dropped_texts = int(empty_text.sum())
    dropped_labels = int((empty_label & ~empty_text).sum())
    if dropped_texts or dropped_labels:
        ds = ds.select(np.flatnonzero(~(empty_text | empty_label)).tolist())
        if len(ds) == 0:
            raise InputError(f"dataset {spec.describe()}: every row has an empty text or label")
    texts = ds[spec.text_column]
    report = LoadReport(
        source=spec.source, resolved=_resolved(spec), split=split, rows_read=rows_read, rows=len(ds),
        label_column=spec.label_column,
        dropped_empty_texts=dropped_texts, dropped_empty_labels=dropped_labels,
        texts_with_entities=sum(1 for t in texts if _ENTITY.search(t)),
        texts_with_markup=sum(1 for t in texts if _MARKUP.search(t)),
        quoted_texts=sum(1 for t in texts if _QUOTED.match(t)), normalized=spec.normalize)
    if spec.normalize == "html":
        columns = [c for c in (spec.text_column, spec.text_pair_column) if c is not None]
        ds = ds.map(lambda batch: {c: [normalize_html(t) for t in batch[c]] for c in columns}, batched=True,
                    keep_in_memory=True, desc=None)
    return ds, report


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


TEXT_COLUMN_NAMES = ("text", "sentence", "review", "content")
LABEL_COLUMN_NAMES = ("label", "labels", "category", "class", "target")


def guess_columns(columns: Sequence[str]) -> tuple[str | None, str | None]:
    """(text column, label column) of a table by well-known names, each None when no column has one:
    a caller asks instead of silently taking, say, an id column as the texts."""
    text = next((c for c in TEXT_COLUMN_NAMES if c in columns), None)
    label = next((c for c in LABEL_COLUMN_NAMES if c in columns and c != text), None)
    return text, label


POOL_SPLIT_NAMES = ("calibration",)  # a multi-split dataset's split to draw calibration texts from
EVAL_SPLIT_NAMES = ("eval",)  # ... and the one to evaluate on


def guess_splits(splits: Sequence[str]) -> tuple[str, str]:
    """(pool split, evaluation split) of a multi-split dataset: ``calibration`` (else the first) and
    ``eval`` (else the last, e.g. ``test`` after ``train`` / ``validation``)."""
    if not splits:
        raise InputError("the dataset has no splits to choose from")
    pool = next((s for s in POOL_SPLIT_NAMES if s in splits), splits[0])
    evaluation = next((s for s in EVAL_SPLIT_NAMES if s in splits), splits[-1])
    return pool, evaluation


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
