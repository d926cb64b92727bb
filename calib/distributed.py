"""The sharded parts of the pipeline on a :class:`~calib.cluster.ClusterSession`: model outputs for
validation, the statistics pass, and the merge of per-shard statistics.

Shards are runs of whole batches of the single-process batch plan (texts sorted by token length,
cut into ``batch_size`` batches, :func:`calib.batching.plan_batches`), cut where the padded token
cost is balanced (:func:`shard_plan`). A worker runs its shard's rows in the same order, so it
builds exactly the batches one process would (same rows, same padding) and computes the same
numbers bit for bit; nothing depends on which worker ran which shard. What holds after the gather:

- **validation**: per-row FP32 and INT8 outputs are put back in row order, then metrics and the
  bootstrap run on the driver as in one process: identical predictions and metrics.
- **statistics**: min, max, element counts and NaN/±inf counts are sums and extremes: identical.
  Histograms: ``stream`` histograms have a power-of-two range per tensor, so a shard histogram
  re-binned to the largest shard's range (pairwise bin merges, exact) and summed is identical to
  the one-process histogram (see :mod:`calib.stats`); ``two-pass`` histograms get each tensor's
  range from a sharded range pass merged by max, so every shard bins over the same edges and the
  sum is identical. Identical histograms give identical ranges for every calibrator.
  Per-channel statistics: ``absmax`` identical (max), ``mean`` by the rows-weighted sum (equal up
  to float64 rounding, ~1e-15 relative), the outlier rows identical (the top rows of the union of
  the shards' top rows); the uniform row sample is *not* the one-process sample: it takes from each
  shard's own reservoir (seeded by tensor and shard) a share proportional to its rows -- uniform
  and deterministic for a given shard count, but other rows than one process draws.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calib.batching import Encoded, plan_batches
from calib.cluster import ClusterSession
from calib.engines import PORTABLE_BACKEND, get_backend
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.errors import InputError
from calib.evaluation import EngineOutputs, run_engine
from calib.model import OutputRoles
from calib.quantize import keep_in_float
from calib.segments import SegmentationError, SegmentRunner
from calib.stats import DEFAULT_BINS, ActivationStats, ChannelStats, StatsConfig, StatsPass, TensorStats
from calib.workspace import ProgressFn

SHARDS_PER_WORKER = 2
"""Shards per worker: enough to balance uneven workers and to report progress while the pass runs,
few enough that each shard has batches to keep a worker busy."""


def shard_plan(lengths: np.ndarray, batch_size: int, shards: int, *, pad_multiple: int = 8) -> list[np.ndarray]:
    """Row indices of each shard: consecutive batches of the one-process plan (length order), cut
    so every shard holds about the same padded token count (the cost of running it). Each shard's
    rows are in batch order, so running them with ``order='length'`` or ``'given'`` rebuilds the
    same batches."""
    batches = plan_batches(np.asarray(lengths), batch_size, order="length")
    cost = [len(b) * -(-int(np.max(lengths[b])) // pad_multiple) * pad_multiple for b in batches]
    return [np.concatenate(batches[a:b]) for a, b in balanced_runs(cost, shards)]


def balanced_runs(cost: Sequence[float], parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of consecutive items, at most ``parts`` and none empty, cut where the
    cumulative ``cost`` (e.g. padded tokens per batch) is split evenly."""
    if not len(cost):
        return []
    parts = max(1, min(parts, len(cost)))
    cumulative = np.cumsum(np.asarray(cost, float))
    cuts = [int(np.searchsorted(cumulative, cumulative[-1] * k / parts)) + 1 for k in range(1, parts)]
    edges = sorted({0, *[min(max(c, 1), len(cost) - 1) for c in cuts], len(cost)})
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


# -- validation: per-row outputs of FP32 and INT8 ------------------------------------------------


class EngineShardRunner:
    """On a worker: the FP32 and INT8 engines, built once; a shard → both models' per-row outputs."""

    def __init__(self, fp32_model: str, int8_backend: str, int8_file: str, input_dtypes: Mapping[str, type],
                 roles: OutputRoles, batch_size: int, threads: int | None) -> None:
        self.fp32 = OrtEngine(OrtSessionLoader(Path(fp32_model), threads=threads), name="onnxruntime-fp32")
        self.int8 = get_backend(int8_backend).open(Path(int8_file), threads)
        self.input_dtypes, self.roles, self.batch_size = dict(input_dtypes), roles, batch_size

    def __call__(self, encoded: Encoded) -> tuple[EngineOutputs, EngineOutputs, str]:
        return (run_engine(self.fp32, encoded, self.input_dtypes, self.roles, batch_size=self.batch_size),
                run_engine(self.int8, encoded, self.input_dtypes, self.roles, batch_size=self.batch_size),
                str(getattr(self.int8, "name", "int8")))


def gather_outputs(n: int, shards: Sequence[np.ndarray], parts: Sequence[EngineOutputs]) -> EngineOutputs:
    """Per-shard outputs put back in row order."""
    def join(values: Sequence[np.ndarray | None]) -> np.ndarray | None:
        if any(v is None for v in values):
            return None
        out = np.zeros((n, *values[0].shape[1:]), np.float32)
        for rows, v in zip(shards, values):
            out[rows] = v
        return out

    return EngineOutputs(join([p.logits for p in parts]), join([p.embedding for p in parts]))


def run_engines_sharded(session: ClusterSession, fp32_model: str | Path, int8_backend: str, int8_file: str | Path,
                        encoded: Encoded, input_dtypes: Mapping[str, type], roles: OutputRoles, *, batch_size: int,
                        threads: int | None = None, progress: ProgressFn | None = None
                        ) -> tuple[EngineOutputs, EngineOutputs, str]:
    """FP32 and INT8 per-row outputs of ``encoded``, computed shard by shard on the cluster's workers
    (each loads the FP32 model and ``int8_backend``'s engine file ``int8_file`` once), and the INT8
    engine's name; the outputs are identical to :func:`calib.evaluation.run_engine` in one process."""
    shards = shard_plan(encoded.lengths, batch_size, session.workers * SHARDS_PER_WORKER)
    factory = functools.partial(EngineShardRunner, str(fp32_model), int8_backend, str(int8_file), dict(input_dtypes),
                                roles, batch_size, threads if threads is not None else session.threads)
    with session.pool(factory, workers=min(session.workers, len(shards))) as pool:
        parts = pool.map([encoded.subset(rows) for rows in shards], weights=[len(s) for s in shards],
                         progress=progress)
    n = len(encoded)
    return (gather_outputs(n, shards, [p[0] for p in parts]), gather_outputs(n, shards, [p[1] for p in parts]),
            f"{parts[0][2]} on {session.cluster}")


# -- sensitivity: candidate models with some nodes kept in float ------------------------------------


class CandidateShardRunner:
    """On a worker: the sensitivity search's base Q/DQ model loaded once (and, with ``cache_bytes``,
    cut into transformer-block segments as :class:`calib.segments.SegmentRunner` does in one
    process); a payload ``(candidate, rows, batches)`` → the per-batch output values (``names``).

    ``candidate`` is ``("float", nodes)``: the base model with those nodes in float
    (:func:`calib.quantize.keep_in_float`), or ``("path", file)``: a model file (a candidate the
    quantizer rebuilt). ``rows`` names the batch list for the activation cache; the same name must
    always come with the same batches. The batches are those of the one-process plan, so each batch's
    outputs are the ones the driver would compute."""

    def __init__(self, qdq_model: str | None, quantized: Sequence[str], reference: str, names: Sequence[str],
                 cache_bytes: int, threads: int | None) -> None:
        self.names, self.threads = list(names), threads
        self.base = onnx.load(qdq_model) if qdq_model else None
        self.quantized = frozenset(quantized)
        self.segments = None
        self._last: tuple[frozenset[str], Any] | None = None  # the whole-model candidate last run
        if self.base is not None and cache_bytes > 0:
            try:
                self.segments = SegmentRunner(self.base, tuple(quantized), onnx.load(reference, load_external_data=False),
                                              keep_in_float, self._engine, cache_bytes=cache_bytes)
            except SegmentationError:
                self.segments = None

    def _engine(self, model: bytes | Path) -> Any:
        return get_backend(PORTABLE_BACKEND).open(model, self.threads)

    def __call__(self, payload: tuple[tuple[str, Any], str, Sequence[Any]]) -> list[dict[str, np.ndarray]]:
        (kind, value), rows, batches = payload
        if kind == "float" and self.segments is not None:
            per_batch = self.segments.run(frozenset(value) & self.quantized, rows, batches)
            assert per_batch is not None  # no stop callback: always complete
            return [{n: np.asarray(v[n]) for n in self.names} for v in per_batch]
        if kind == "float":
            floating = frozenset(value) & self.quantized
            if self._last is None or self._last[0] != floating:
                self._last = (floating, self._engine(keep_in_float(self.base, floating).SerializeToString()))
            engine = self._last[1]
        else:
            engine = self._engine(Path(value))
        return [{n: np.asarray(v) for n, v in engine.run(b.feeds, self.names).items()} for b in batches]


# -- statistics ----------------------------------------------------------------------------------


class StatsShardRunner:
    """On a worker: the statistics pass prepared once (exposing ORT session, axis roles); a shard
    (rows, per-tensor fixed ranges or None, sample seed) → its :class:`~calib.stats.ActivationStats`."""

    def __init__(self, model: str, sha256: str, input_dtypes: Mapping[str, type], probe: Encoded,
                 tensors: Sequence[str], config: Any) -> None:
        self.stats_pass = StatsPass(model, probe, tensors, config=config, sha256=sha256,
                                    input_dtypes=dict(input_dtypes))

    def __call__(self, payload: tuple[Encoded, Mapping[str, float] | None, int]):
        encoded, fixed_ranges, seed = payload
        return self.stats_pass.collect(encoded, order="given", seed=seed, fixed_ranges=fixed_ranges)


def collect_statistics_sharded(session: ClusterSession, spec: Any, encoded: Encoded, tensors: Sequence[str], *,
                               config: Any, progress: ProgressFn | None = None, seed: int = 0):
    """The statistics pass of :func:`calib.stats.collect_statistics`, sharded over the cluster's
    workers and merged (:func:`merge_statistics`; the module docstring says what is identical)."""
    cfg: StatsConfig = config
    if len(encoded) == 0:
        raise InputError("the calibration set is empty: no texts to run")
    t0 = time.perf_counter()
    shards = shard_plan(encoded.lengths, cfg.batch_size, session.workers * SHARDS_PER_WORKER,
                        pad_multiple=cfg.pad_multiple)
    worker_cfg = _worker_config(cfg, session)
    probe = encoded.subset(shards[0][: cfg.batch_size])
    factory = functools.partial(StatsShardRunner, str(spec.onnx_path), spec.sha256, dict(spec.input_dtypes),
                                probe, tuple(tensors), worker_cfg)
    subsets = [encoded.subset(rows) for rows in shards]
    weights = [len(s) for s in shards]
    report = progress or (lambda f, m="": None)
    with session.pool(factory, workers=min(session.workers, len(shards))) as pool:
        fixed = None
        if cfg.histogram == "two-pass":  # ranges first, merged by max, so every shard bins alike
            ranges_cfg = [(s, None, seed + k) for k, s in enumerate(subsets)]
            first = pool.map(ranges_cfg, weights=weights, progress=lambda f, m="": report(0.5 * f, f"range pass: {m}"),
                             unit="texts")
            fixed = {t.name: max(max(abs(p[t.name].min), abs(p[t.name].max)) if p[t.name].count else 0.0
                                 for p in first) for t in first[0].tensors}
            parts = pool.map([(s, fixed, seed + k) for k, s in enumerate(subsets)], weights=weights,
                             progress=lambda f, m="": report(0.5 + 0.5 * f, f"histogram pass: {m}"))
        else:
            parts = pool.map([(s, None, seed + k) for k, s in enumerate(subsets)], weights=weights,
                             progress=lambda f, m="": report(f, f"stream pass: {m}"))
    nbins = int(cfg.bins or DEFAULT_BINS[cfg.histogram])
    return merge_statistics(parts, bins=nbins, histogram=cfg.histogram, fixed=fixed, sample_rows=cfg.sample_rows,
                            outlier_rows=cfg.outlier_rows, seconds=time.perf_counter() - t0)


def _worker_config(cfg: Any, session: ClusterSession) -> Any:
    """The worker's pass: histogram ``stream`` (two-pass sharding fixes the range itself) over
    ``bins`` bins, with the session's threads unless the config names them."""

    return dataclasses.replace(cfg, histogram="stream", bins=int(cfg.bins or DEFAULT_BINS[cfg.histogram]),
                               threads=cfg.threads or session.threads)


def rebin(hist: np.ndarray, hist_range: float, target: float) -> np.ndarray:
    """A ``stream`` histogram over ``[0, hist_range)`` as it reads over ``[0, target)`` (both powers
    of two, ``target >= hist_range``): adjacent bins merged pairwise once per doubling -- exactly what
    the one-process accumulator does when its range grows, so the result equals binning with
    ``target`` from the start."""
    out = np.asarray(hist, np.int64).copy()
    if hist_range <= 0 or target <= hist_range:
        return out
    steps = round(np.log2(target / hist_range))
    for _ in range(min(steps, int(np.log2(len(out))))):
        merged = out[0::2] + out[1::2]
        out[:] = 0
        out[: len(merged)] = merged
    return out


def merge_statistics(parts: Sequence[Any], *, bins: int, histogram: str, fixed: Mapping[str, float] | None = None,
                     sample_rows: int = 512, outlier_rows: int = 64, seconds: float = 0.0):
    """One :class:`~calib.stats.ActivationStats` from per-shard ones (same tensors, same model)."""
    first = parts[0]
    tensors = []
    for i, ref in enumerate(first.tensors):
        shard = [p.tensors[i] for p in parts]
        if any(t.name != ref.name for t in shard):
            raise ValueError(f"shards disagree on tensor {i}: {ref.name!r}")
        if fixed is not None:
            hist_range = float(fixed[ref.name])
            hist = np.sum([t.hist for t in shard], axis=0).astype(np.int64)
        else:
            hist_range = max(t.hist_range for t in shard)
            hist = np.sum([rebin(t.hist, t.hist_range, hist_range) for t in shard], axis=0).astype(np.int64)
        tensors.append(TensorStats(
            name=ref.name, producer=ref.producer, op_type=ref.op_type, axis_roles=ref.axis_roles,
            count=sum(t.count for t in shard), nan=sum(t.nan for t in shard), posinf=sum(t.posinf for t in shard),
            neginf=sum(t.neginf for t in shard), min=min(t.min for t in shard), max=max(t.max for t in shard),
            hist=hist, hist_range=hist_range,
            channels=merge_channels([t.channels for t in shard], sample_rows, outlier_rows, ref.name)))
    return ActivationStats(model_sha256=first.model_sha256, tensors=tuple(tensors), bins=bins, histogram=histogram,
                           texts=sum(p.texts for p in parts), tokens=sum(p.tokens for p in parts),
                           batches=sum(p.batches for p in parts), seconds=seconds, skipped=dict(first.skipped),
                           has_channels=first.has_channels)


def merge_channels(parts: Sequence[Any], sample_rows: int, outlier_rows: int, name: str = ""):
    """Per-channel statistics of the union of shards: absmax by max, mean by the rows-weighted sum,
    outliers the top rows of the union, the sample a rows-proportional share of each shard's sample."""
    present = [c for c in parts if c is not None]
    if not present:
        return None
    rows = sum(c.rows for c in present)
    absmax = np.max([c.absmax for c in present], axis=0)
    mean = np.sum([c.mean * c.rows for c in present], axis=0) / max(rows, 1)
    # rows-proportional shares of the shard samples (each already in random key order: a prefix is uniform)
    shares = _shares([c.rows for c in present], min(sample_rows, sum(len(c.sample) for c in present)))
    sample = np.concatenate([c.sample[:k] for c, k in zip(present, shares)]).astype(np.float32)
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(sample))
    outliers = None
    tops = [c.outliers for c in present if c.outliers is not None]
    if tops:
        stacked = np.concatenate(tops)
        peak = np.abs(stacked).max(axis=1) if len(stacked) else np.zeros(0)
        keep = np.argsort(-peak, kind="stable")[:outlier_rows]
        outliers = np.ascontiguousarray(stacked[keep])
    return ChannelStats(absmax=absmax, mean=mean, rows=rows, sample=np.ascontiguousarray(sample[order]),
                        outliers=outliers)


def _shares(rows: Sequence[int], total: int) -> list[int]:
    """``total`` split in proportion to ``rows`` (largest remainders; deterministic)."""
    weight = np.asarray(rows, float)
    if not total or weight.sum() == 0:
        return [0] * len(rows)
    exact = weight / weight.sum() * total
    shares = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - shares), kind="stable")[: total - int(shares.sum())]:
        shares[i] += 1
    return shares.tolist()
