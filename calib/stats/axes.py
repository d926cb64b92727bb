"""Axis roles and real (non-padded) positions: the probe feeds, ``classify_axes``, ``position_mask``
(the boolean description) and the slicing plan (``_Layout``, ``_Rows``, ``_split_positions``) that
cuts a batch's tensor into views of its real and its padded positions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from calib.batching import Encoded
from calib.errors import InputError

PROBE_SHAPES = ((3, 11), (5, 13))  # (batch, sequence): odd primes so no axis role is ambiguous


def _probe_feeds(encoded: Encoded, input_dtypes: Mapping[str, type], batch: int, seq: int) -> dict[str, np.ndarray]:
    ids = encoded.input_ids
    tokens = np.resize(ids if ids.size else np.array([encoded.pad_id]), batch * seq).reshape(batch, seq)
    arrays = {"input_ids": tokens.astype(np.int64), "attention_mask": np.ones((batch, seq), np.int64),
              "token_type_ids": np.zeros((batch, seq), np.int64)}
    missing = set(input_dtypes) - set(arrays)
    if missing:
        raise InputError(f"cannot feed model inputs {sorted(missing)} from tokenized text")
    return {k: arrays[k].astype(dt) for k, dt in input_dtypes.items()}


def classify_axes(shape_a: Sequence[int], shape_b: Sequence[int],
                  probes: Sequence[tuple[int, int]] = PROBE_SHAPES) -> tuple[str, ...]:
    """Role of each axis from the shapes a tensor takes on the two probe feeds."""
    (b1, t1), (b2, t2) = probes
    if len(shape_a) != len(shape_b):
        return tuple("other" for _ in shape_b)
    roles = []
    for n1, n2 in zip(shape_a, shape_b):
        if n1 == n2:
            roles.append("fixed")
        elif (n1, n2) == (b1, b2):
            roles.append("batch")
        elif (n1, n2) == (t1, t2):
            roles.append("seq")
        elif (n1, n2) == (b1 * t1, b2 * t2):
            roles.append("batch*seq")
        elif n1 % b1 == 0 and n2 % b2 == 0 and n1 // b1 == n2 // b2:
            roles.append(f"batch*{n1 // b1}")
        else:
            roles.append("other")
    return tuple(roles)


def _place(array: np.ndarray, axes: Sequence[int], ndim: int) -> np.ndarray:
    """``array`` (whose dims go to ``axes`` in order) reshaped to broadcast against an ndim tensor."""
    order = np.argsort(axes)
    arr = np.transpose(array, order) if array.ndim > 1 else array
    shape = [1] * ndim
    for ax, size in zip(sorted(axes), arr.shape):
        shape[ax] = size
    return arr.reshape(shape)


def position_mask(roles: Sequence[str], mask: np.ndarray) -> np.ndarray | None:
    """Boolean array broadcastable to the tensor: True at real positions; None when all are real."""
    if mask.all():
        return None
    ndim = len(roles)
    batch_axis, repeat = None, 1
    for ax, role in enumerate(roles):
        if role == "batch" or (role.startswith("batch*") and role != "batch*seq"):
            batch_axis, repeat = ax, (1 if role == "batch" else int(role.split("*")[1]))
            break
    valid = None
    for ax, role in enumerate(roles):
        if role == "seq":
            if batch_axis is not None:
                rows = np.repeat(mask, repeat, axis=0) if repeat > 1 else mask
                part = _place(rows, (batch_axis, ax), ndim)
            else:
                part = _place(mask.any(axis=0), (ax,), ndim)
        elif role == "batch*seq":
            part = _place(mask.reshape(-1), (ax,), ndim)
        else:
            continue
        valid = part if valid is None else valid & part
    return valid


# ---------------------------------------------------------------------------------------------
# Real positions by slicing


@dataclass(frozen=True)
class _Layout:
    """Where a tensor's batch and sequence axes are (from its axis roles). ``split_axis``: a flattened
    batch*seq axis, reshaped to (batch, seq) before slicing."""

    batch_axis: int | None
    repeat: int  # rows per text on the batch axis (heads folded into the batch: batch*k)
    seq_axes: tuple[int, ...]
    split_axis: int | None = None


def _layout(roles: Sequence[str]) -> _Layout | None:
    """Slicing plan for a tensor, or None when only a boolean mask can describe its real positions."""
    seq = [ax for ax, role in enumerate(roles) if role == "seq"]
    flat = [ax for ax, role in enumerate(roles) if role == "batch*seq"]
    batch = next((ax for ax, role in enumerate(roles) if role == "batch"
                  or (role.startswith("batch*") and role != "batch*seq")), None)
    if flat:
        if len(flat) > 1 or batch is not None:
            return None
        ax = flat[0]
        return _Layout(batch_axis=ax, repeat=1, seq_axes=(ax + 1, *(s + 1 if s > ax else s for s in seq)),
                       split_axis=ax)
    repeat = 1 if batch is None or roles[batch] == "batch" else int(roles[batch].split("*")[1])
    return _Layout(batch_axis=batch, repeat=repeat, seq_axes=tuple(seq))


class _Rows:
    """A batch's token mask as runs of consecutive rows with the same number of real tokens."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.batch, self.width = mask.shape
        lengths = mask.sum(axis=1)
        self.all_real = bool(lengths.min(initial=self.width) == self.width)
        # real tokens first in every row: what iter_batches makes; anything else takes the boolean path
        self.prefix = bool(np.array_equal(mask, np.arange(self.width)[None, :] < lengths[:, None]))
        cuts = (np.flatnonzero(np.diff(lengths)) + 1).tolist()
        self.groups = [(a, b, int(lengths[a])) for a, b in zip([0, *cuts], [*cuts, self.batch]) if b > a]
        self.longest = int(lengths.max(initial=0))
        self.mostly_padding = lengths.sum() < 0.7 * mask.size  # then check whole tensors for inf/NaN


def _split_positions(name: str, value: np.ndarray, roles: Sequence[str], layout: _Layout | None,
                     rows: _Rows) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(views holding the real positions, views holding the padded ones) of one batch's tensor; the
    views are disjoint and together cover the tensor."""
    if rows.all_real or layout is None or not rows.prefix:
        keep = None if rows.all_real else position_mask(roles, rows.mask)
        if keep is None:
            return [value], []
        keep = np.broadcast_to(keep, value.shape)
        return [value[keep]], [value[~keep]]
    if not layout.seq_axes:
        return [value], []
    if layout.split_axis is not None:
        ax = layout.split_axis
        if value.shape[ax] != rows.batch * rows.width:
            raise InputError(f"tensor {name!r} has shape {value.shape}: axis {ax} should hold batch x sequence "
                             f"= {rows.batch * rows.width} positions")
        value = value.reshape(value.shape[:ax] + (rows.batch, rows.width) + value.shape[ax + 1:])
    bad = [ax for ax in layout.seq_axes if value.shape[ax] != rows.width]
    if layout.batch_axis is not None and value.shape[layout.batch_axis] != rows.batch * layout.repeat:
        bad.append(layout.batch_axis)
    if bad:
        raise InputError(f"tensor {name!r} has shape {value.shape} in a batch of {rows.batch} x {rows.width} tokens: "
                         f"axis {bad[0]} does not follow its probed role ({', '.join(roles)})")
    groups = rows.groups if layout.batch_axis is not None else [(0, rows.batch, rows.longest)]
    real, padded = [], []
    for first, stop, length in groups:
        base = [slice(None)] * value.ndim
        if layout.batch_axis is not None:
            base[layout.batch_axis] = slice(first * layout.repeat, stop * layout.repeat)
        cut = list(base)
        for ax in layout.seq_axes:
            cut[ax] = slice(0, length)
        real.append(value[tuple(cut)])
        if length < rows.width:  # the rest, as disjoint slabs: seq axis i padded, axes before it real
            for i, ax in enumerate(layout.seq_axes):
                pad = list(base)
                for before in layout.seq_axes[:i]:
                    pad[before] = slice(0, length)
                pad[ax] = slice(length, None)
                padded.append(value[tuple(pad)])
    return real, padded


def _channel_rows(value: np.ndarray, real: Sequence[np.ndarray], roles: Sequence[str], rows: _Rows) -> list[np.ndarray]:
    """The real positions of ``value`` (..., K) as (n, K) token vectors: the sliced real views of
    :func:`_split_positions` reshaped, or (boolean path) the rows kept by the position mask."""
    k = value.shape[-1]
    if all(v.ndim >= 2 and v.shape[-1] == k for v in real):
        return [v.reshape(-1, k) for v in real]
    keep = position_mask(roles, rows.mask)
    if keep is None:
        return [value.reshape(-1, k)]
    keep = np.broadcast_to(keep, value.shape)[..., 0]
    return [value[keep]]
