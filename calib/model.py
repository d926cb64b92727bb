"""The model under calibration: an ONNX file plus the tokenizer directory it was trained with.

Any BERT-like text model loads the same way, the demo included: ``load_model(onnx, tokenizer_dir)``.
Inputs are recognised by name (``input_ids``, ``attention_mask``, ``token_type_ids``). Which outputs
evaluation reads (:class:`OutputRoles`: class logits and/or a sentence embedding) is named by the user
or detected only when unambiguous (:func:`resolve_roles`); a model nothing can be scored on is refused
when it is first loaded, with one line saying which output to name.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calib.errors import InputError, ModelMismatchError
from calib.io import sha256_file

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ONNX_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str | None, ...]  # ints for fixed dims, names for symbolic dims


DEFAULT_MAX_LENGTH = 128  # tokens a text is truncated to when neither the model's card nor the user says
POOLING_DESCRIPTIONS = {"none": "no (already pooled)", "mean": "mean over the attention mask",
                        "cls": "the first token (CLS)"}  # how (B, T, D) token states become one embedding
POOLINGS = tuple(POOLING_DESCRIPTIONS)
_LOGITS_NAME = re.compile(r"logit|score|classif|predict", re.IGNORECASE)
_EMBEDDING_NAME = re.compile(r"embed|pool|sentence|vector|feature", re.IGNORECASE)
_FLOAT_TYPES = ("float32", "float16", "float64")


@dataclass(frozen=True)
class OutputRoles:
    """Which model outputs evaluation reads, and how.

    ``logits``: (B, C) class scores (None for an embedding model). ``embedding``: (B, D) pooled
    embedding, or (B, T, D) token states pooled with the attention mask when ``pooling`` is
    ``mean`` (or take the first token: ``cls``); None when the model has none.
    """

    logits: str | None = None
    embedding: str | None = None
    pooling: str = "none"

    @property
    def names(self) -> tuple[str, ...]:
        """Output names to run, logits first, without repeats."""
        return tuple(dict.fromkeys(n for n in (self.logits, self.embedding) if n))

    @property
    def kind(self) -> str:
        """``classifier`` (has logits) or ``embedding`` (an embedding only)."""
        return "classifier" if self.logits else "embedding"

    def to_dict(self) -> dict[str, object]:
        return {"logits": self.logits, "embedding": self.embedding, "pooling": self.pooling}


@dataclass(frozen=True)
class ModelSpec:
    """A validated model: paths, identity (sha256) and I/O signature. Cheap to pass around."""

    onnx_path: Path
    tokenizer_dir: Path
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    logits_output: str | None  # None: an embedding model (no class scores)
    max_length: int = DEFAULT_MAX_LENGTH
    labels: tuple[str, ...] = ()  # class names in logit order, when known
    name: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    embedding_output: str | None = None
    pooling: str = "none"  # how embedding_output becomes (B, D): none (already pooled), mean, cls

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def input_dtypes(self) -> dict[str, type]:
        return {t.name: np.dtype(t.dtype).type for t in self.inputs}

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def roles(self) -> OutputRoles:
        """The outputs evaluation reads (logits and/or embedding, and the pooling)."""
        return OutputRoles(self.logits_output, self.embedding_output, self.pooling)

    def to_dict(self) -> dict[str, object]:
        return {
            "onnx_path": str(self.onnx_path), "tokenizer_dir": str(self.tokenizer_dir),
            "sha256": self.sha256, "logits_output": self.logits_output, "max_length": self.max_length,
            "labels": list(self.labels), "name": self.name, "roles": self.roles.to_dict(),
            "inputs": [t.__dict__ for t in self.inputs], "outputs": [t.__dict__ for t in self.outputs],
        }


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    dims: list[int | str | None] = []
    for dim in ttype.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = "unknown"
    return TensorInfo(value.name, dtype, tuple(dims))


def read_onnx(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, turning every failure into a one-line :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist (give the path to a .onnx file)")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf raises several unrelated types for corrupt files
        raise InputError(f"ONNX model {path} cannot be read: it is corrupt or not an ONNX file ({exc})") from exc
    if not model.graph.node:
        raise InputError(f"ONNX model {path} has an empty graph (no nodes)")
    return model


def max_positions(model: onnx.ModelProto) -> tuple[int, str] | None:
    """The longest sequence the graph's learned position embeddings allow, with the initializer it
    was read from: the rows of a 2-D ``*position*embed*`` table, else the length of a
    ``*position_ids*`` buffer. None when the graph has neither (e.g. rotary or relative positions)."""
    tables, buffers = [], []
    for init in model.graph.initializer:
        name = init.name.lower()
        dims = list(init.dims)
        if "position_ids" in name:  # e.g. bert.embeddings.position_ids (1, N): a buffer, not a table
            if len(dims) in (1, 2) and dims[-1] > 0:
                buffers.append((int(dims[-1]), init.name))
        elif "position" in name and "embed" in name and len(dims) == 2 and dims[0] > 0:
            tables.append((int(dims[0]), init.name))
    found = tables or buffers
    return min(found) if found else None


def check_tokenizer_dir(tokenizer_dir: str | Path) -> Path:
    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise InputError(f"tokenizer directory {path} does not exist")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InputError(
            f"tokenizer directory {path} has no tokenizer files (expected tokenizer.json or vocab.txt)"
        )
    return path


@dataclass(frozen=True)
class ModelRef:
    """Which FP32 model a stage reads, before it is loaded: the ONNX file, its tokenizer folder, the max
    sequence length (tokens), the class names in logit order (empty: unknown) and the output roles
    (None: detected by :func:`resolve_roles`). ``load()`` checks and describes it (:class:`ModelSpec`).

    Every stage config that names a model holds one as its ``model`` field, so a stage never spells
    these fields out to load its model.
    """

    model: str
    tokenizer: str
    max_length: int = DEFAULT_MAX_LENGTH
    labels: tuple[str, ...] = ()
    logits_output: str | None = None
    embedding_output: str | None = None
    pooling: str | None = None

    ROLE_FIELDS = ("logits_output", "embedding_output", "pooling")

    @property
    def roles_named(self) -> bool:
        """Whether any output role is named (else they are detected, or read from what a run recorded)."""
        return any(getattr(self, f) is not None for f in self.ROLE_FIELDS)

    def load(self) -> ModelSpec:
        return load_model(self.model, self.tokenizer, max_length=self.max_length, labels=self.labels,
                          logits_output=self.logits_output, embedding_output=self.embedding_output,
                          pooling=self.pooling)

    def fields(self) -> dict[str, object]:
        """The stage-config fields this reference fills (every stage uses these names)."""
        return {"model": self.model, "tokenizer": self.tokenizer, "max_length": self.max_length,
                "labels": self.labels, "logits_output": self.logits_output,
                "embedding_output": self.embedding_output, "pooling": self.pooling}

    @classmethod
    def of(cls, spec: ModelSpec) -> ModelRef:
        """The reference that loads ``spec`` again (its roles named as they were resolved)."""
        return cls(str(spec.onnx_path), str(spec.tokenizer_dir), int(spec.max_length), tuple(spec.labels),
                   spec.logits_output, spec.embedding_output, spec.pooling)


def load_model(
    onnx_path: str | Path,
    tokenizer_dir: str | Path,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    logits_output: str | None = None,
    labels: Sequence[str] = (),
    name: str = "",
    embedding_output: str | None = None,
    pooling: str | None = None,
) -> ModelSpec:
    """Validate an ONNX text model and its tokenizer directory and describe them.

    ``logits_output`` / ``embedding_output`` / ``pooling`` name the output roles (see
    :func:`resolve_roles`; detected when unambiguous). Raises :class:`InputError` naming the file for
    a missing/corrupt ONNX file, a model without an ``input_ids`` input, a tokenizer directory
    without tokenizer files, or outputs nothing can be scored on.
    """
    onnx_path = Path(onnx_path)
    model = read_onnx(onnx_path, load_weights=False)
    tok_dir = check_tokenizer_dir(tokenizer_dir)
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_tensor_info(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_info(v) for v in model.graph.output)
    names = {t.name for t in inputs}
    if "input_ids" not in names:
        raise InputError(
            f"ONNX model {onnx_path} has no 'input_ids' input (inputs: {sorted(names)}); "
            "calib works with BERT-like text models fed input_ids/attention_mask[/token_type_ids]"
        )
    unknown = names - set(TEXT_INPUT_NAMES)
    if unknown:
        raise InputError(f"ONNX model {onnx_path} has inputs calib cannot feed from a tokenizer: {sorted(unknown)}")
    for t in inputs:
        if t.dtype not in ("int64", "int32"):
            raise InputError(f"ONNX model {onnx_path}: input {t.name!r} is {t.dtype}, expected int64 or int32")
    roles = resolve_roles(outputs, logits=logits_output, embedding=embedding_output, pooling=pooling,
                          n_labels=len(labels), where=f"ONNX model {onnx_path}")
    if max_length < 8:
        raise InputError(f"max length {max_length} is too small (use at least 8 tokens)")
    positions = max_positions(model)
    if positions is not None and max_length > positions[0]:
        raise InputError(f"max length {max_length} exceeds the {positions[0]} positions ONNX model {onnx_path} "
                         f"has embeddings for (initializer {positions[1]!r}); use --max-length {positions[0]} or less")
    return ModelSpec(
        onnx_path=onnx_path.resolve(), tokenizer_dir=tok_dir.resolve(), sha256=sha256_file(onnx_path),
        inputs=inputs, outputs=outputs, logits_output=roles.logits, max_length=int(max_length),
        labels=tuple(str(x) for x in labels), name=name or onnx_path.stem,
        embedding_output=roles.embedding, pooling=roles.pooling,
    )


class _NoTorchAdvice(logging.Filter):
    """Drops transformers' import-time advice that PyTorch is missing: calib only uses its tokenizers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PyTorch was not found" not in record.getMessage()


_NO_TORCH_ADVICE = _NoTorchAdvice()


def _describe(t: TensorInfo) -> str:
    dims = ", ".join("?" if d is None else str(d) for d in t.shape) if t.shape else "?"
    return f"{t.name} ({dims}) {t.dtype}"


def resolve_roles(outputs: Sequence[TensorInfo], *, logits: str | None = None, embedding: str | None = None,
                  pooling: str | None = None, n_labels: int = 0, where: str = "the model") -> OutputRoles:
    """Which outputs are the class logits and the sentence embedding.

    Named outputs are checked (exist, float, logits (B, C); an embedding (B, D), or (B, T, D) token
    states with ``pooling`` ``mean``/``cls``). Unnamed roles are detected only when unambiguous:
    logits = the one (B, C) float output named like logits (or, with ``n_labels`` known, the one
    (B, n_labels) output); embedding = the one other (B, D) float output (or the one named like an
    embedding), or with ``pooling`` given the one (B, T, D) output. Raises :class:`InputError` (one
    line: which output to name and with which option) when nothing can be scored.
    """
    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r} (choose {', '.join(POOLINGS)})")
    by_name = {t.name: t for t in outputs}
    listing = "; ".join(_describe(t) for t in outputs)

    def named(name: str, option: str) -> TensorInfo:
        if name not in by_name:
            raise InputError(f"{where} has no output {name!r} for {option} (outputs: {listing})")
        t = by_name[name]
        if t.dtype not in _FLOAT_TYPES:
            raise InputError(f"{where}: output {name!r} is {t.dtype}, not float; {option} needs a float output "
                             f"(outputs: {listing})")
        return t

    floats = [t for t in outputs if t.dtype in _FLOAT_TYPES]
    pooled = [t for t in floats if len(t.shape) == 2]
    tokens = [t for t in floats if len(t.shape) == 3]

    if logits is not None:
        t = named(logits, "--logits-output")
        if t.shape and len(t.shape) != 2:
            raise InputError(f"{where}: output {_describe(t)} is not (batch, classes) logits; name a (B, C) output "
                             "with --logits-output, or score it as an embedding with --embedding-output "
                             f"{t.name}" + (" --pooling mean" if len(t.shape) == 3 else ""))
    else:
        like = [t for t in pooled if _LOGITS_NAME.search(t.name)]
        if not like and n_labels:
            like = [t for t in pooled if t.shape[1] == n_labels]
        if not like:  # no shape recorded: an output literally named "logits" is still the logits
            like = [t for t in floats if t.name == "logits" and not t.shape]
        if len(like) == 1 and like[0].name != embedding:
            logits = like[0].name

    if embedding is not None:
        t = named(embedding, "--embedding-output")
        if embedding == logits:
            raise InputError(f"{where}: output {embedding!r} cannot be both the logits and the embedding")
        if len(t.shape) == 3:
            if pooling in (None, "none"):
                raise InputError(f"{where}: output {_describe(t)} holds token states (batch, sequence, D); add "
                                 "--pooling mean (or --pooling cls) to pool them into one embedding per text")
        elif len(t.shape) == 2 and pooling not in (None, "none"):
            raise InputError(f"{where}: output {_describe(t)} is already pooled (batch, D); drop --pooling {pooling}")
        elif t.shape and len(t.shape) not in (2, 3):
            raise InputError(f"{where}: output {_describe(t)} is neither (batch, D) nor (batch, sequence, D)")
    elif pooling in ("mean", "cls"):
        if len(tokens) != 1:
            raise InputError(f"{where}: --pooling {pooling} needs one (batch, sequence, D) output, found "
                             f"{len(tokens)}; name it with --embedding-output (outputs: {listing})")
        embedding = tokens[0].name
    else:
        others = [t for t in pooled if t.name != logits]
        if len(others) > 1:
            others = [t for t in others if _EMBEDDING_NAME.search(t.name)]
        if len(others) == 1:
            embedding = others[0].name

    if logits is None and embedding is None:
        hint = ""
        if tokens:
            hint = f"; for token states use --embedding-output {tokens[0].name} --pooling mean"
        raise InputError(f"{where}: cannot tell which output to score (outputs: {listing}); name the class scores "
                         f"with --logits-output NAME or the sentence embedding with --embedding-output NAME{hint}")
    return OutputRoles(logits, embedding, pooling if embedding is not None and pooling else "none")


@functools.lru_cache(maxsize=8)
def load_tokenizer(tokenizer_dir: str | Path):  # -> transformers.PreTrainedTokenizerFast
    """A fast tokenizer from a local directory; never downloads, never runs remote code."""
    logging.getLogger("transformers").addFilter(_NO_TORCH_ADVICE)  # the same filter is added once
    from transformers import AutoTokenizer

    tok_dir = check_tokenizer_dir(tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(tok_dir), local_files_only=True, trust_remote_code=False, use_fast=True
        )
    except Exception as exc:
        raise InputError(f"tokenizer directory {tok_dir} cannot be loaded: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"tokenizer in {tok_dir} has no fast (Rust) implementation; add tokenizer.json")
    return tokenizer


def tokenizer_hash(tokenizer_dir: str | Path) -> str:
    """sha256 over the tokenizer files present (name + content), identifying the tokenization."""
    tok_dir = check_tokenizer_dir(tokenizer_dir)
    digest = hashlib.sha256()
    for name in sorted(TOKENIZER_FILES + ("special_tokens_map.json",)):
        path = tok_dir / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def check_same_model(expected_sha256: str, actual_sha256: str, what: str) -> None:
    """Refuse to combine artifacts from different models."""
    if expected_sha256 and actual_sha256 and expected_sha256 != actual_sha256:
        raise ModelMismatchError(
            f"{what} was made for model sha256 {expected_sha256[:12]}…, but this model is "
            f"{actual_sha256[:12]}…; recalibrate for this model"
        )
