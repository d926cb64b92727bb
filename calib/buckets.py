"""Token-length buckets shared by calibration-set assembly, coverage and per-bucket evaluation.

Edges ``[0, 32, 64, 128, 256, 512]`` make buckets ``[0,32) [32,64) [64,128) [128,256) [256,512)``
and an open last bucket ``512+``. Lengths are token counts before truncation (what production sends).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calib.errors import InputError
from calib.formatting import whole_numbers

DEFAULT_EDGES: tuple[int, ...] = (0, 32, 64, 128, 256, 512)


def check_edges(edges: Sequence[int]) -> tuple[int, ...]:
    edges = tuple(int(e) for e in edges)
    if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InputError(f"bucket edges must start at 0 and increase strictly, got {list(edges)}")
    return edges


def parse_edges(text: str) -> tuple[int, ...]:
    """Bucket edges typed as whole numbers separated by commas or spaces (``0, 32, 64``), checked."""
    return check_edges(whole_numbers(text, "bucket edges"))


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Human labels, e.g. ``['0-31', '32-63', ..., '512+']``."""
    edges = check_edges(edges)
    labels = [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    return labels + [f"{edges[-1]}+"]


def bucket_index(lengths: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Bucket number of each length, shape like ``lengths``; ``len(edges)`` buckets in all."""
    edges = check_edges(edges)
    return np.searchsorted(np.asarray(edges[1:]), np.asarray(lengths), side="right")


def bucket_counts(lengths: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    return np.bincount(bucket_index(lengths, edges), minlength=len(check_edges(edges)))
