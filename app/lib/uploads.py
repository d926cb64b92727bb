"""Uploaded files: stored under ``<workspace>/uploads/<session>/`` with sanitised names and size limits.

Only data formats read by parsers that cannot run code are accepted (ONNX protobuf, tokenizer JSON
and vocab text, CSV/TSV/JSON/JSONL/Parquet); nothing uploaded is ever unpickled or executed, and
tokenizers load with ``trust_remote_code`` off (``calib.model.load_tokenizer``).
Uploads are copied to disk in chunks and stopped as soon as they pass their kind's limit, so an
oversized file is never held a second time in memory (Streamlit itself caps any upload at
``server.maxUploadSize``, set by ``calib app``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from calib.errors import InputError
from calib.io import sha256_bytes
from calib.workspace import Workspace

MB = 1 << 20
CHUNK = MB  # uploads are copied to disk this many bytes at a time


@dataclass(frozen=True)
class UploadKind:
    name: str
    extensions: tuple[str, ...]
    max_bytes: int


MODEL = UploadKind("model", (".onnx",), 1024 * MB)
DATASET = UploadKind("dataset", (".csv", ".tsv", ".json", ".jsonl", ".parquet"), 512 * MB)
LENGTHS = UploadKind("production lengths", (".csv", ".tsv", ".txt", ".json"), 256 * MB)  # calib.lengths reads these
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "config.json")
TOKENIZER = UploadKind("tokenizer file", (".json", ".txt"), 64 * MB)
RECIPE = UploadKind("recipe", (".json",), MB)


def widget_types(kind: UploadKind) -> list[str]:
    """The kind's extensions as ``st.file_uploader(type=...)`` takes them (no dots)."""
    return [e.lstrip(".") for e in kind.extensions]


def extensions_text(kind: UploadKind) -> str:
    """``CSV, TSV, JSON`` for a label."""
    return ", ".join(e.lstrip(".").upper() for e in kind.extensions)


def widget_limit_mb(kind: UploadKind) -> int:
    """The kind's limit for ``st.file_uploader(max_upload_size=...)`` (whole MB), so the browser refuses
    an oversized file before sending a byte; the server-side cap stays ``server.maxUploadSize``."""
    return max(1, kind.max_bytes // MB)


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


Source = bytes | BinaryIO
"""Uploaded content: bytes, or a binary file object (Streamlit's ``UploadedFile``, with ``.size``)."""


def _check_name(kind: UploadKind, name: str) -> str:
    safe = sanitize_name(name)
    if not safe.lower().endswith(kind.extensions):
        raise InputError(f"{kind.name} upload {name!r} is not one of {', '.join(kind.extensions)}")
    return safe


def _too_big(kind: UploadKind, name: str, size: int) -> InputError:
    return InputError(f"{kind.name} upload {name!r} is over {kind.max_bytes / MB:.0f} MB"
                      f"{f' ({size / MB:.0f} MB)' if size else ''}; the limit is {kind.max_bytes / MB:.0f} MB "
                      "(give a path on the server instead)")


def _declared_size(data: Source) -> int | None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    size = getattr(data, "size", None)
    return int(size) if isinstance(size, int) else None


def _chunks(data: Source) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):
        data.seek(0)
    while chunk := data.read(CHUNK):
        yield chunk


def _stream(kind: UploadKind, name: str, data: Source, folder: Path) -> tuple[Path, str]:
    """Copy ``data`` into a temporary file in ``folder`` chunk by chunk, hashing as it goes and stopping
    as soon as it passes the kind's limit (a declared size over the limit is refused before reading).
    Returns (temporary file, sha256)."""
    declared = _declared_size(data)
    if declared is not None and declared > kind.max_bytes:
        raise _too_big(kind, name, declared)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    tmp = Path(tmp_name)
    digest, total = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(data):
                total += len(chunk)
                if total > kind.max_bytes:
                    raise _too_big(kind, name, 0)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if total == 0:
            raise InputError(f"{kind.name} upload {name!r} is empty")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o644)
    return tmp, digest.hexdigest()


def session_upload_dir(ws: Workspace, session: str) -> Path:
    return ws.uploads_dir / sanitize_name(session)


def store_upload(ws: Workspace, session: str, kind: UploadKind, name: str, data: Source) -> Path:
    """Write one uploaded file as ``uploads/<session>/<sha12>-<safe name>``; same content, same path."""
    safe = _check_name(kind, name)
    folder = session_upload_dir(ws, session)
    tmp, digest = _stream(kind, name, data, folder)
    path = folder / f"{digest[:12]}-{safe}"
    if path.is_file():
        tmp.unlink()
    else:
        os.replace(tmp, path)
    return path


def store_tokenizer(ws: Workspace, session: str, files: list[tuple[str, Source]]) -> Path:
    """Write uploaded tokenizer files (only the known file names) into one folder and return it."""
    if not files:
        raise InputError("no tokenizer files uploaded (upload tokenizer.json and/or vocab.txt)")
    kept: dict[str, Source] = {}
    for name, data in files:
        safe = _check_name(TOKENIZER, name)
        if safe not in TOKENIZER_FILES:
            raise InputError(f"tokenizer upload {name!r} is not a tokenizer file (expected one of "
                             f"{', '.join(TOKENIZER_FILES)})")
        kept[safe] = data
    if not ({"tokenizer.json", "vocab.txt"} & set(kept)):
        raise InputError("tokenizer upload needs tokenizer.json or vocab.txt")
    base = session_upload_dir(ws, session)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".tokenizer-", suffix=".tmp"))
    try:
        digests = {}
        for safe, data in sorted(kept.items()):
            tmp, digests[safe] = _stream(TOKENIZER, safe, data, staging)
            os.replace(tmp, staging / safe)
        digest = sha256_bytes(b"".join(n.encode() + d.encode() for n, d in sorted(digests.items())))
        folder = base / f"tokenizer-{digest[:12]}"
        if not folder.is_dir():
            os.chmod(staging, 0o755)
            with contextlib.suppress(OSError):  # another session stored the same files meanwhile
                os.replace(staging, folder)
        return folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
