"""Uploaded files: stored under ``<workspace>/uploads/<session>/`` with sanitised names and size limits.

Only data formats read by parsers that cannot run code are accepted (ONNX protobuf, tokenizer JSON
and vocab text, CSV/TSV/JSON/JSONL/Parquet); nothing uploaded is ever unpickled or executed, and
tokenizers load with ``trust_remote_code`` off (``calib.model.load_tokenizer``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from calib.errors import InputError
from calib.io import atomic_write_bytes, sha256_bytes
from calib.workspace import Workspace

MB = 1 << 20


@dataclass(frozen=True)
class UploadKind:
    name: str
    extensions: tuple[str, ...]
    max_bytes: int


MODEL = UploadKind("model", (".onnx",), 1024 * MB)
DATASET = UploadKind("dataset", (".csv", ".tsv", ".json", ".jsonl", ".parquet"), 512 * MB)
LENGTHS = UploadKind("production texts", (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"), 256 * MB)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "config.json")
TOKENIZER = UploadKind("tokenizer file", (".json", ".txt"), 64 * MB)


def sanitize_name(name: str, max_chars: int = 80) -> str:
    """A safe file name: the base name only, ASCII letters/digits/``._-``, no leading dots."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._-")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = stem[: max_chars - len(ext) - 1] or "upload"
    return f"{stem}.{ext.lower()}" if ext else stem


def _check(kind: UploadKind, name: str, size: int) -> str:
    safe = sanitize_name(name)
    if not safe.lower().endswith(kind.extensions):
        raise InputError(f"{kind.name} upload {name!r} is not one of {', '.join(kind.extensions)}")
    if size > kind.max_bytes:
        raise InputError(f"{kind.name} upload {name!r} is {size / MB:.0f} MB; the limit is "
                         f"{kind.max_bytes / MB:.0f} MB (give a path on the server instead)")
    if size == 0:
        raise InputError(f"{kind.name} upload {name!r} is empty")
    return safe


def session_upload_dir(ws: Workspace, session: str) -> Path:
    return ws.uploads_dir / sanitize_name(session)


def store_upload(ws: Workspace, session: str, kind: UploadKind, name: str, data: bytes) -> Path:
    """Write one uploaded file as ``uploads/<session>/<sha12>-<safe name>``; same content, same path."""
    safe = _check(kind, name, len(data))
    path = session_upload_dir(ws, session) / f"{sha256_bytes(data)[:12]}-{safe}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def store_tokenizer(ws: Workspace, session: str, files: list[tuple[str, bytes]]) -> Path:
    """Write uploaded tokenizer files (only the known file names) into one folder and return it."""
    if not files:
        raise InputError("no tokenizer files uploaded (upload tokenizer.json and/or vocab.txt)")
    kept: dict[str, bytes] = {}
    for name, data in files:
        safe = _check(TOKENIZER, name, len(data))
        if safe not in TOKENIZER_FILES:
            raise InputError(f"tokenizer upload {name!r} is not a tokenizer file (expected one of "
                             f"{', '.join(TOKENIZER_FILES)})")
        kept[safe] = data
    if not ({"tokenizer.json", "vocab.txt"} & set(kept)):
        raise InputError("tokenizer upload needs tokenizer.json or vocab.txt")
    digest = sha256_bytes(b"".join(n.encode() + sha256_bytes(d).encode() for n, d in sorted(kept.items())))
    folder = session_upload_dir(ws, session) / f"tokenizer-{digest[:12]}"
    for safe, data in kept.items():
        if not (folder / safe).is_file():
            atomic_write_bytes(folder / safe, data)
    return folder
