"""Tokenisation into a compact ragged form, and length-bucketed batches.

Every stage that runs the model (statistics, evaluation, benchmarks) feeds it through
:func:`iter_batches`: texts are sorted by token length and grouped so each batch is padded only to
its own longest text (rounded up to a multiple of 8). ``Batch.mask`` marks real tokens so that
statistics can exclude padded positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from calib.errors import InputError


@dataclass(frozen=True)
class Encoded:
    """Tokenised texts. Tokens of text ``i`` are ``input_ids[offsets[i]:offsets[i+1]]``.

    ``lengths`` are after truncation to ``max_length``; ``full_lengths`` before it.
    """

    input_ids: np.ndarray  # (total_tokens,) int32
    token_type_ids: np.ndarray  # (total_tokens,) int8
    offsets: np.ndarray  # (N + 1,) int64
    full_lengths: np.ndarray  # (N,) int32, untruncated token counts
    max_length: int
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    @property
    def truncation_rate(self) -> float:
        return float(np.mean(self.full_lengths > self.max_length)) if len(self) else 0.0

    def subset(self, rows: Sequence[int] | np.ndarray) -> Encoded:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        starts = self.offsets[rows]
        gather = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if len(rows) else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Encoded(self.input_ids[gather], self.token_type_ids[gather], offsets,
                       self.full_lengths[rows], self.max_length, self.pad_id)


def _check_texts(texts: Sequence[object], column: str) -> list[str]:
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(
                f"text column {column!r} holds a non-text value at row {i} ({type(text).__name__}: {text!r:.40}); "
                "choose a column of strings or clean the dataset"
            )
        out.append(text)
    return out


def encode(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    *,
    max_length: int,
    chunk: int = 2048,
) -> Encoded:
    """Tokenise ``texts`` (and optional second segments ``pairs``) with a fast tokenizer, batched."""
    texts = _check_texts(texts, "text")
    if pairs is not None:
        pairs = _check_texts(pairs, "text pair")
        if len(pairs) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
    ids_parts, type_parts, lengths, full_lengths = [], [], [], []
    for start in range(0, len(texts), chunk):
        batch_texts = texts[start : start + chunk]
        batch_pairs = pairs[start : start + chunk] if pairs is not None else None
        enc = tokenizer(batch_texts, batch_pairs, truncation=False, add_special_tokens=True,
                        return_attention_mask=False, return_token_type_ids=True, verbose=False)
        for ids, types in zip(enc["input_ids"], enc["token_type_ids"]):
            full_lengths.append(len(ids))
            if len(ids) > max_length:  # keep [CLS] … and the final [SEP]
                ids = ids[: max_length - 1] + ids[-1:]
                types = types[: max_length - 1] + types[-1:]
            ids_parts.append(np.asarray(ids, dtype=np.int32))
            type_parts.append(np.asarray(types, dtype=np.int8))
            lengths.append(len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(
        input_ids=np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32),
        token_type_ids=np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8),
        offsets=offsets, full_lengths=np.asarray(full_lengths, dtype=np.int32),
        max_length=int(max_length), pad_id=int(pad_id),
    )


@dataclass(frozen=True)
class Batch:
    """One padded batch. ``feeds`` map model input names to (B, T) arrays; ``mask`` is (B, T) bool."""

    rows: np.ndarray  # (B,) row numbers in the Encoded set
    feeds: dict[str, np.ndarray]
    mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]


def plan_batches(lengths: np.ndarray, batch_size: int, *, order: str = "length", seed: int = 0) -> list[np.ndarray]:
    """Row indices of each batch. ``order='length'`` groups similar lengths (stable sort);
    ``'given'`` keeps row order; ``'shuffle'`` permutes rows with ``seed`` (used by tests)."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    n = len(lengths)
    if order == "length":
        idx = np.argsort(lengths, kind="stable")
    elif order == "given":
        idx = np.arange(n)
    elif order == "shuffle":
        idx = np.random.default_rng(seed).permutation(n)
    else:
        raise InputError(f"unknown batch order {order!r} (length, given or shuffle)")
    return [idx[i : i + batch_size] for i in range(0, n, batch_size)]


def make_batch(encoded: Encoded, rows: np.ndarray, input_dtypes: Mapping[str, type], *, pad_multiple: int = 8) -> Batch:
    """Pad the rows to their longest length (rounded up to ``pad_multiple``, capped at max_length)."""
    lengths = encoded.lengths[rows]
    width = int(lengths.max()) if len(rows) else 0
    width = min(-(-width // pad_multiple) * pad_multiple, max(encoded.max_length, width))
    ids = np.full((len(rows), width), encoded.pad_id, dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    for i, row in enumerate(rows):
        start, stop = encoded.offsets[row], encoded.offsets[row + 1]
        ids[i, : stop - start] = encoded.input_ids[start:stop]
        types[i, : stop - start] = encoded.token_type_ids[start:stop]
    arrays = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": types}
    feeds = {name: arrays[name].astype(dtype, copy=False) for name, dtype in input_dtypes.items()}
    return Batch(rows=np.asarray(rows), feeds=feeds, mask=mask)


def iter_batches(
    encoded: Encoded,
    input_dtypes: Mapping[str, type],
    batch_size: int = 16,
    *,
    order: str = "length",
    seed: int = 0,
    pad_multiple: int = 8,
) -> Iterator[Batch]:
    """Length-bucketed batches over ``encoded``, fed with the inputs the model declares."""
    for rows in plan_batches(encoded.lengths, batch_size, order=order, seed=seed):
        yield make_batch(encoded, rows, input_dtypes, pad_multiple=pad_multiple)


def padding_ratio(encoded: Encoded, batch_size: int, order: str = "length") -> float:
    """Share of fed token positions that are padding under a batch plan (0 = no padding)."""
    real = padded = 0
    for rows in plan_batches(encoded.lengths, batch_size, order=order):
        lengths = encoded.lengths[rows]
        real += int(lengths.sum())
        padded += int(lengths.max()) * len(rows)
    return 1.0 - real / padded if padded else 0.0
