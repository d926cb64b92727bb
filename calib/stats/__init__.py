"""One streaming pass of ONNX Runtime FP32 over a calibration set, accumulating activation statistics.

For every requested tensor we keep, over real (non-padded) token positions only: min, max, element
count, NaN / +inf / -inf counts, and a histogram of ``|x|`` over finite values. Nothing grows with the
calibration set: memory is at most two batches of activations (one accumulated while ORT computes
the next; one when a batch's activations exceed ``StatsConfig.overlap_max_mb``) plus ``bins`` counters
per tensor.

For every tensor that is the input X of a weighted MatMul (``X @ W``, W a constant matrix) the same
pass also keeps :class:`ChannelStats`: per-channel ``max |X_j|`` and mean over real positions, and a
uniform reservoir sample of ``sample_rows`` token vectors (default 512) — fixed memory, ``K`` floats
plus ``sample_rows x K`` per tensor. Outlier migration (``calib.smooth``), the error-driven range
choice and bias correction read them; no second pass over the calibration set is needed.

Histogram modes (``StatsConfig.histogram``):

- ``stream`` (default, one model pass): each tensor's histogram covers ``[0, R)`` where ``R`` is the
  smallest power of two above the running absmax, with ``bins`` (default 4096) equal bins. When a
  later batch exceeds ``R``, ``R`` doubles and adjacent bins merge pairwise. Because ``|x| * bins / R``
  is exact in float32 for a power-of-two ``R``, the merge is exact: the final histogram equals the
  one computed with the final ``R`` from the start, whatever the batch order. Since ``absmax >= R/2``,
  at least ``bins/2 = 2048`` bins cover ``[0, absmax]`` (TensorRT uses exactly 2048).
- ``two-pass`` (TensorRT's exact binning, twice the model time): a first pass finds absmax, the
  second histograms ``|x|`` into exactly ``bins`` (default 2048) bins over ``[0, absmax]``.

Padded positions are found without trusting any axis size: a probe runs the model on two all-real
feeds with batch/sequence sizes (3, 11) and (5, 13) and classifies each tensor axis by the size it
takes (batch, sequence, flattened batch*sequence, batch*k, fixed, other). Each batch then keeps the
positions whose batch row and every sequence index are real tokens (e.g. attention probabilities
(B, heads, T, T) are masked on both T axes). Flattened batch*sequence axes are assumed batch-major.

Cost (the pass must stay close to plain ORT inference; see benchmarks/bench_calibration.py):

- ORT runs the model at full graph optimisation with the tensors appended as graph outputs (ORT never
  fuses a graph output away); the model file's bytes are reused rather than re-serialized, shape
  inference and placement run on a weightless copy of the graph, and outputs are read as numpy views
  of ORT's buffers (no copy).
- Real positions are cut out by slicing (batches put real tokens first), runs of rows with the same
  length at a time, never by boolean masks; values go through min/max, ``|x|`` scaling and
  ``bincount`` in L2-sized chunks. Padded positions are only checked for NaN/inf.
- With two or more threads and ``overlap`` (default), batch k is accumulated in a background thread
  while ORT, which releases the GIL, runs batch k+1; a batch too large to keep two of is accumulated
  between runs with its tensors split over the threads. Idle ORT threads then sleep instead of
  spinning. Every schedule gives identical statistics (each tensor has one accumulator, fed by one
  thread at a time; the histogram merge is order-independent).

The package, by concern: ``config`` (``StatsConfig``), ``format`` (the artifact: ``TensorStats``,
``ChannelStats``, ``ActivationStats``, ``stats.npz`` / ``stats.json``), ``selection`` (which tensors),
``axes`` (axis roles, real positions), ``accumulate`` (the accumulators), ``schedule`` (the ORT
session and the batch schedule); this module holds ``collect_statistics`` and re-exports them all.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from calib.batching import Batch, Encoded, iter_batches
from calib.engines.ort import default_threads
from calib.errors import InputError
from calib.io import sha256_file
from calib.model import ModelSpec, read_onnx
from calib.placement import weighted_matmuls
from calib.stats.accumulate import (
    _CHUNK,
    _DIRECT,
    _Accumulator,
    _blocks,
    _ChannelAccumulator,
    _Scratch,
    acc_range,
    tensor_stats_from_arrays,
)
from calib.stats.axes import (
    PROBE_SHAPES,
    _channel_rows,
    _Layout,
    _layout,
    _place,
    _probe_feeds,
    _Rows,
    _split_positions,
    classify_axes,
    position_mask,
)
from calib.stats.config import DEFAULT_BINS, HISTOGRAM_MODES, StatsConfig
from calib.stats.format import META_FILE, STATS_FILE, ActivationStats, ChannelStats, TensorStats
from calib.stats.schedule import _balanced_parts, _exposing_session, _run_batches
from calib.stats.selection import (
    _WEIGHTLESS_MAX,
    TENSOR_SCOPE_DESCRIPTIONS,
    TENSOR_SCOPES,
    _input_dtypes,
    _tensor_types,
    default_tensors,
    graph_producers,
    weightless,
)

ProgressFn = Callable[[float, str], None]

__all__ = [
    "DEFAULT_BINS",
    "HISTOGRAM_MODES",
    "META_FILE",
    "PROBE_SHAPES",
    "STATS_FILE",
    "TENSOR_SCOPES",
    "TENSOR_SCOPE_DESCRIPTIONS",
    "_CHUNK",
    "_DIRECT",
    "_WEIGHTLESS_MAX",
    "ActivationStats",
    "ChannelStats",
    "ProgressFn",
    "StatsConfig",
    "StatsPass",
    "TensorStats",
    "_Accumulator",
    "_ChannelAccumulator",
    "_Layout",
    "_Rows",
    "_Scratch",
    "_balanced_parts",
    "_blocks",
    "_channel_rows",
    "_exposing_session",
    "_input_dtypes",
    "_layout",
    "_place",
    "_probe_feeds",
    "_run_batches",
    "_split_positions",
    "_tensor_types",
    "acc_range",
    "classify_axes",
    "collect_statistics",
    "default_tensors",
    "graph_producers",
    "position_mask",
    "tensor_stats_from_arrays",
    "weightless",
]


def collect_statistics(
    model: str | Path | ModelSpec,
    encoded: Encoded,
    tensors: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    bins: int | None = None,
    histogram: str = "stream",
    config: StatsConfig | None = None,
    order: str = "length",
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ActivationStats:
    """Run ``encoded`` through the FP32 model in length-bucketed batches and accumulate statistics.

    ``tensors`` None takes ``config.tensors`` (default: placement activations + float outputs).
    ``config`` (if given) supplies batch size, histogram mode, bins, optimisation, threads and overlap.
    """
    cfg = config or StatsConfig(batch_size=batch_size, histogram=histogram, bins=bins)
    if len(encoded) == 0:
        raise InputError("the calibration set is empty: no texts to run")
    t0 = time.perf_counter()
    stats_pass = StatsPass(model, encoded, tensors, config=cfg)
    return stats_pass.collect(encoded, order=order, seed=seed, progress=progress, started=t0)


class StatsPass:
    """The prepared part of :func:`collect_statistics`: the ORT session exposing the tensors, their
    axis roles (from probes fed with ``probe``'s tokens) and the per-channel tensors. Built once,
    :meth:`collect` runs any number of encoded sets through it (a cluster worker runs its shards)."""

    def __init__(self, model: str | Path | ModelSpec, probe: Encoded, tensors: Sequence[str] | None = None, *,
                 config: StatsConfig, sha256: str | None = None,
                 input_dtypes: dict[str, type] | None = None) -> None:
        cfg = config
        if cfg.histogram not in HISTOGRAM_MODES:
            raise InputError(f"unknown histogram mode {cfg.histogram!r} (choose {' or '.join(HISTOGRAM_MODES)})")
        nbins = int(cfg.bins or DEFAULT_BINS[cfg.histogram])
        if nbins < 256 or nbins & (nbins - 1):
            raise InputError(f"histogram bins must be a power of two >= 256, got {nbins}")
        if cfg.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {cfg.batch_size}")
        onnx_path = Path(model.onnx_path if isinstance(model, ModelSpec) else model)
        graph = weightless(read_onnx(onnx_path, load_weights=False))  # the weights are only needed by ORT
        sha = model.sha256 if isinstance(model, ModelSpec) else (sha256 or sha256_file(onnx_path))
        if input_dtypes is None:
            input_dtypes = model.input_dtypes if isinstance(model, ModelSpec) else _input_dtypes(graph)
        producers = graph_producers(graph)
        if tensors is None:
            tensors = cfg.tensors if not isinstance(cfg.tensors, str) else default_tensors(graph, cfg.tensors, cfg.placement)
        names = list(dict.fromkeys(tensors))
        unknown = [n for n in names if n not in producers]
        if unknown:
            raise InputError(f"tensor {unknown[0]!r} is not produced by any node or input of model {onnx_path.name}")
        names.sort(key=lambda n: producers[n][2])
        if not names:
            raise InputError(f"no tensors to collect statistics for in model {onnx_path.name}")

        session = _exposing_session(onnx_path, graph, names, cfg)
        float_out = {o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(float16)")}
        skipped = {n: "not a float tensor" for n in names if n not in float_out}
        names = [n for n in names if n in float_out]
        if not names:
            raise InputError(f"none of the requested tensors of model {onnx_path.name} is a float tensor")

        try:
            probes = [session.run(names, _probe_feeds(probe, input_dtypes, b, t)) for b, t in PROBE_SHAPES]
        except InputError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"model {onnx_path.name} does not run on dynamic (batch, sequence) feeds: {first}") from exc
        roles = {n: classify_axes(a.shape, b.shape) for n, a, b in zip(names, *probes)}
        if cfg.sample_rows < 0:
            raise InputError(f"sample rows must be >= 0, got {cfg.sample_rows}")
        weighted = weighted_matmuls(graph) if cfg.channel_stats else {}
        self.channel_sizes = {n: probes[1][i].shape[-1] for i, n in enumerate(names)
                              if n in weighted and roles[n] and roles[n][-1] == "fixed"}
        del probes
        self.cfg, self.nbins, self.sha, self.input_dtypes = cfg, nbins, sha, input_dtypes
        self.producers, self.names, self.skipped, self.session = producers, names, skipped, session
        self.roles, self.layouts = roles, {n: _layout(roles[n]) for n in names}

    def collect(self, encoded: Encoded, *, order: str = "length", seed: int = 0, progress: ProgressFn | None = None,
                fixed_ranges: Mapping[str, float] | None = None, started: float | None = None) -> ActivationStats:
        """Statistics of ``encoded``. ``fixed_ranges`` (tensor -> histogram range): one pass with
        every histogram over ``[0, range)`` in ``bins`` bins (the second pass of two-pass mode, its
        range pass done elsewhere, e.g. merged over a cluster's shards)."""
        cfg, nbins, names, roles, layouts = self.cfg, self.nbins, self.names, self.roles, self.layouts
        t0 = time.perf_counter() if started is None else started
        if len(encoded) == 0:
            raise InputError("the calibration set is empty: no texts to run")
        chans = {n: _ChannelAccumulator(k, cfg.sample_rows, seed=zlib.crc32(n.encode()) + seed,
                                        top_cap=cfg.outlier_rows)
                 for n, k in self.channel_sizes.items()}
        passes = ["range", "histogram"] if cfg.histogram == "two-pass" and fixed_ranges is None else ["stream"]
        total_batches = -(-len(encoded) // cfg.batch_size) * len(passes)
        if fixed_ranges is not None:
            accs = {n: _Accumulator(nbins, fixed_range=float(fixed_ranges[n])) for n in names}
        else:
            accs = {n: _Accumulator(nbins) for n in names}
        local = threading.local()  # one _Scratch per accumulating thread
        workers = (cfg.threads or default_threads()) if cfg.overlap else 1
        seen = {"done": 0, "tokens": 0, "batches": 0}
        for pass_name in passes:
            if pass_name == "histogram":
                first = accs
                accs = {n: _Accumulator(nbins, fixed_range=acc_range(a)) for n, a in first.items()}
                for n, acc in accs.items():  # non-finite values were counted in the range pass
                    acc.nan, acc.posinf, acc.neginf = first[n].nan, first[n].posinf, first[n].neginf
            hist, count = pass_name != "range", pass_name != "histogram"

            def work(arrays: list[np.ndarray], batch: Batch, indices: Sequence[int], accs=accs, hist=hist,
                     count=count) -> None:
                scratch = getattr(local, "scratch", None) or _Scratch()
                local.scratch = scratch
                rows = _Rows(batch.mask)
                for i in indices:
                    name, value = names[i], arrays[i]
                    if value.dtype != np.float32:
                        value = value.astype(np.float32)
                    real, padded = _split_positions(name, value, roles[name], layouts[name], rows)
                    if count and padded:
                        accs[name].check_padding(padded, value if rows.mostly_padding else None)
                    accs[name].add_views(real, scratch, hist=hist, count=count)
                    if hist and name in chans:
                        for block in _channel_rows(value, real, roles[name], rows):
                            chans[name].add(block)

            def after(batch: Batch, pass_name=pass_name) -> None:
                if pass_name != "range":
                    seen["tokens"] += int(batch.mask.sum())
                    seen["batches"] += 1
                seen["done"] += 1
                if progress is not None:
                    progress(seen["done"] / total_batches, f"{pass_name} pass: batch {seen['done']}/{total_batches}")

            batches = iter_batches(encoded, self.input_dtypes, cfg.batch_size, order=order, seed=seed,
                                   pad_multiple=cfg.pad_multiple)
            _run_batches(self.session, names, batches, work, workers=workers, after=after,
                         overlap_max_bytes=cfg.overlap_max_mb * 2**20)
        seconds = time.perf_counter() - t0
        producers = self.producers
        results = tuple(accs[n].result(n, producers[n][0], producers[n][1], roles[n],
                                       chans[n].result() if n in chans else None) for n in names)
        return ActivationStats(model_sha256=self.sha, tensors=results, bins=nbins, histogram=cfg.histogram,
                               texts=len(encoded), tokens=seen["tokens"], batches=seen["batches"], seconds=seconds,
                               skipped=dict(self.skipped), has_channels=cfg.channel_stats)
