"""The model under calibration: an ONNX file plus the tokenizer directory it was trained with.

Any BERT-like text model loads the same way, the demo included: ``load_model(onnx, tokenizer_dir)``.
Inputs are recognised by name (``input_ids``, ``attention_mask``, ``token_type_ids``); the first
float output is taken as the logits unless a name is given.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calib.errors import InputError
from calib.io import sha256_file

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ONNX_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str | None, ...]  # ints for fixed dims, names for symbolic dims


POOLINGS = ("none", "mean", "cls")


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


@dataclass(frozen=True)
class ModelSpec:
    """A validated model: paths, identity (sha256) and I/O signature. Cheap to pass around."""

    onnx_path: Path
    tokenizer_dir: Path
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    logits_output: str
    max_length: int = 128
    labels: tuple[str, ...] = ()  # class names in logit order, when known
    name: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

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
        """The outputs evaluation reads: the logits, and ``embedding`` when the model has one."""
        embedding = "embedding" if "embedding" in self.output_names and self.logits_output != "embedding" else None
        return OutputRoles(self.logits_output, embedding)

    def to_dict(self) -> dict[str, object]:
        return {
            "onnx_path": str(self.onnx_path), "tokenizer_dir": str(self.tokenizer_dir),
            "sha256": self.sha256, "logits_output": self.logits_output, "max_length": self.max_length,
            "labels": list(self.labels), "name": self.name,
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


def check_tokenizer_dir(tokenizer_dir: str | Path) -> Path:
    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise InputError(f"tokenizer directory {path} does not exist")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InputError(
            f"tokenizer directory {path} has no tokenizer files (expected tokenizer.json or vocab.txt)"
        )
    return path


def load_model(
    onnx_path: str | Path,
    tokenizer_dir: str | Path,
    *,
    max_length: int = 128,
    logits_output: str | None = None,
    labels: Sequence[str] = (),
    name: str = "",
) -> ModelSpec:
    """Validate an ONNX text model and its tokenizer directory and describe them.

    Raises :class:`InputError` naming the file for a missing/corrupt ONNX file, a model without an
    ``input_ids`` input, or a tokenizer directory without tokenizer files.
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
    float_outputs = [t.name for t in outputs if t.dtype in ("float32", "float16")]
    if logits_output is None:
        if not float_outputs:
            raise InputError(f"ONNX model {onnx_path} has no float output to read logits from")
        logits_output = "logits" if "logits" in float_outputs else float_outputs[0]
    elif logits_output not in {t.name for t in outputs}:
        raise InputError(f"ONNX model {onnx_path} has no output {logits_output!r} (outputs: {[t.name for t in outputs]})")
    if max_length < 8:
        raise InputError(f"max length {max_length} is too small (use at least 8 tokens)")
    return ModelSpec(
        onnx_path=onnx_path.resolve(), tokenizer_dir=tok_dir.resolve(), sha256=sha256_file(onnx_path),
        inputs=inputs, outputs=outputs, logits_output=logits_output, max_length=int(max_length),
        labels=tuple(str(x) for x in labels), name=name or onnx_path.stem,
    )


class _NoTorchAdvice(logging.Filter):
    """Drops transformers' import-time advice that PyTorch is missing: calib only uses its tokenizers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PyTorch was not found" not in record.getMessage()


_NO_TORCH_ADVICE = _NoTorchAdvice()


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
    import hashlib

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
    from calib.errors import ModelMismatchError

    if expected_sha256 and actual_sha256 and expected_sha256 != actual_sha256:
        raise ModelMismatchError(
            f"{what} was made for model sha256 {expected_sha256[:12]}…, but this model is "
            f"{actual_sha256[:12]}…; recalibrate for this model"
        )
