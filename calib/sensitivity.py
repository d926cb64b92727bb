"""Sensitivity analysis and accuracy-driven fallback: which quantized nodes should stay in float.

``analyze_sensitivity(SensitivityConfig, out_dir)``:

1. Runs the FP32 model once on a seeded subset of the evaluation texts (``settings.limit``) and keeps its
   logits/embeddings; every candidate below is compared with these cached outputs.
2. Quantizes the model once with the given ranges and placement (ONNX Runtime's Q/DQ quantizer
   through :func:`calib.quantize.quantize_qdq`): the *baseline* — or, with ``start_from``, takes a
   build folder's Q/DQ model as it is (outlier migration, per-tensor ``auto`` ranges, bias
   correction: whatever that build used) as the baseline. Under input-only placements
   (``tensorrt``) a candidate that keeps some nodes in float is derived from that Q/DQ graph by
   reconnecting those nodes to the float tensors their Q/DQ pairs read (:func:`calib.quantize.keep_in_float`: the
   graph the quantizer writes when they are excluded, without re-running it per candidate); under
   placements that quantize outputs (``all``) each candidate is rebuilt by the quantizer.
   Derived candidates run segment by segment (:mod:`calib.segments`): the activations crossing
   each transformer-block cut are cached per candidate prefix (``cache_mb``), so a candidate that
   changes nothing before block ``k`` re-runs blocks ``k``…end only; a search candidate is abandoned
   as soon as its top-1 flips or its embedding error already exceed what the budget allows.
3. Ranks the quantized units (nodes; activation tensors: every reader of one tensor's Q/DQ pairs;
   or transformer blocks: nodes grouped by their layer prefix):
   - ``block-local``: the quantize-one shares (below) predicted from one evaluation per block (only
     that block quantized) and each unit's relative error at its block's output cut, run through
     that block alone from the cached FP32 cut on ``block_rows`` texts (about 1/blocks of a forward
     pass per unit instead of a whole one). ``rank_check`` units spread over the result are also
     ranked by quantize-one and the Spearman correlation of the two scorings is reported.
   - ``quantize-one``: each unit quantized alone on a smaller fixed subset (``rank_rows`` texts);
     score = its share of the baseline's softmax KL plus its share of the baseline's embedding
     error (1 - cosine). These shares add up almost linearly on transformer encoders, so the ranking
     also predicts how many units the budget needs (the search starts there).
   - ``exclude-one``: evaluate the full set minus each unit; score = KL reduction.
   - ``local``: one instrumented run; each node scores the worst local quantization noise of the
     Q/DQ pairs on its inputs/outputs (noise-to-signal of DequantizeLinear vs its QuantizeLinear
     input; an infinite or non-finite range counts as the worst). No evaluations, but blind to how
     much a node's output error is amplified downstream (e.g. the key projections, which share their
     input tensor and its noise with the query and value projections).
   ``auto``: ``exclude-one`` when the units fit in half of ``max_evaluations``, else
   ``block-local`` (models cut into blocks) or ``quantize-one`` up to ``max_rank_units`` units
   (input-only placements), else ``local``.
4. Searches the fewest top-ranked units to keep in float so that the accuracy drop is within
   ``budget.max_drop`` points AND top-1 agreement ≥ ``budget.min_agreement`` (AND embedding cosine ≥
   ``budget.min_embedding_cosine`` when set; a None threshold is not checked): the predicted prefix first (√n without a prediction),
   doubling while it fails, a
   bisection between the longest failing and the shortest passing prefix, then a pruning pass that
   puts back units the budget does not need. Every search evaluation (on the ``settings.limit`` texts) is
   counted and their total, with the baseline and the final check, never exceeds ``max_evaluations``.
   Granularity ``auto`` searches by node and by activation tensor and keeps the recommendation
   with fewer float nodes.
5. With ``verify`` (derived candidates only), the recommendation is rebuilt by
   :func:`calib.quantize.quantize_qdq` (what ``calib build`` makes; with ``start_from``, by
   :func:`calib.build.build` with the start build's recorded settings plus the exclusions) and
   evaluated once more (within ``max_evaluations``); its numbers are the ones recommended.
6. The speed curve (``speed_texts``): INT8 throughput with every node quantized, then after each
   recommended unit is put in float, against FP32, at batch ``speed_batch`` — what each fallback
   step costs (:func:`calib.bench.throughput`).

On a cluster (``settings.cluster``, :mod:`calib.cluster`) the candidate evaluations run on the workers, each
holding the baseline Q/DQ model (cut into the same segments, with its own cut cache) and deriving
candidates from it: a search evaluation's batches are split into runs of whole batches, each run
always on the same worker; independent ranking candidates (quantize-one, the block-local ranking's
segment evaluations and checks, exclude-one) run one per worker at once. The workers compute the
batches one process would, and the early stop is replayed on the driver in batch order, so every
evaluation, the evaluation count and the recommendation are those of the serial search (tested);
the FP32 reference, the block-local unit errors and the speed curve stay in the driver.

The result, ``sensitivity.json``, lists the ranking, every evaluation, warnings (e.g. placement
tensors without a range: the calibration did not cover this placement), and the recommended
exclusions (exact node names, usable as ``Placement.exclude_nodes`` by the build stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calib.batching import iter_batches
from calib.bench import throughput
from calib.build import BuildConfig, EngineArtifact, build, build_command
from calib.calibrate import RangesRef, recorded_roles
from calib.cluster import Cluster, ClusterSession, connect
from calib.data import DataSpec
from calib.distributed import SHARDS_PER_WORKER, CandidateShardRunner, balanced_runs
from calib.engines import PORTABLE_BACKEND, get_backend
from calib.engines.ort import OrtEngine, OrtSessionLoader, default_threads
from calib.errors import InputError, check_choice
from calib.evaluation import (
    CLASSIFIER,
    EngineOutputs,
    EvalData,
    EvalSettings,
    Metrics,
    OutputsCollector,
    batch_outputs,
    compare,
    load_eval_data,
    run_engine,
)
from calib.io import atomic_write_json, read_artifact_json
from calib.layers import LayerAnalysis, producer_order, quantized_tensors
from calib.methods import DEFAULT_BUILD_METHOD
from calib.metrics import row_cosine
from calib.model import ModelRef, check_same_model
from calib.pipeline import one_ranges_reference
from calib.placement import Placement, exact_pattern
from calib.progress import FP32_PASS
from calib.quantize import keep_in_float, quantize_qdq
from calib.segments import SegmentationError, SegmentRunner, layer_block
from calib.smooth import parse_alpha
from calib.verdict import DEFAULT_EMBEDDING_COSINE, ReleaseBudget, meets
from calib.workspace import ProgressFn

SCHEMA = "calib.sensitivity/1"
GRANULARITY_DESCRIPTIONS = {"node": "single nodes", "tensor": "activation tensors", "block": "transformer blocks",
                            "auto": "auto (the search chooses)"}
GRANULARITIES = tuple(GRANULARITY_DESCRIPTIONS)
RANKINGS = ("auto", "block-local", "local", "exclude-one", "quantize-one")


SEARCH_BUDGET = ReleaseBudget(min_embedding_cosine=None)
"""The search's default budget: drop <= 0.5 points, agreement >= 0.99; an embedding model's cosine
>= 0.99 (:data:`DEFAULT_EMBEDDING_COSINE`, applied when the model has no logits)."""
SEARCH_SETTINGS = EvalSettings(limit=256, layers=False, bootstrap=0)
"""The search's default evaluation: a seeded sample of 256 texts per candidate."""
SEARCH_EVALUATIONS = 24
"""The search's default evaluation budget (baseline, ranking and search candidates and the final check)."""


@dataclass(frozen=True)
class SensitivityConfig:
    """Model, ranges, placement, evaluation subset and the budget.

    ``ranges``: a calibration folder (with ``method``) or a JSON file ``{tensor: amax}`` (or
    ``{"amax": {...}}``). ``budget``: what a candidate must meet (a
    :class:`~calib.verdict.ReleaseBudget`; a None threshold is not checked, and an embedding model
    without a cosine threshold is held to 0.99). ``settings``: how candidates are evaluated -- of an
    :class:`~calib.evaluation.EvalSettings` the search reads ``limit`` (texts of every candidate, a
    seeded sample), ``batch_size``, ``seed``, ``threads`` and ``cluster`` (it judges whole-sample
    figures: no buckets, interval or per-layer pass). ``rank_rows``: texts (a fixed subset of the
    ``limit`` ones) for the quantize-one ranking.
    """

    model: ModelRef
    data: DataSpec
    ranges: RangesRef = field(default_factory=RangesRef)  # its calibration's method, or a {tensor: amax} file
    placement: Placement = field(default_factory=Placement)  # the all-INT8 start's Q/DQ placement, as BuildConfig's
    granularity: str = "node"
    ranking: str = "auto"  # see the module docstring
    budget: ReleaseBudget = field(default_factory=lambda: SEARCH_BUDGET)
    max_evaluations: int = SEARCH_EVALUATIONS
    settings: EvalSettings = field(default_factory=lambda: SEARCH_SETTINGS)
    local_rows: int = 32  # texts for the instrumented run of the local ranking
    rank_rows: int = 64  # texts for the quantize-one ranking (0 = all ``limit`` texts)
    max_rank_units: int = 96  # auto: quantize-one ranking up to this many units, local ranking beyond
    verify: bool = True  # re-check the recommendation on a model rebuilt by calib.quantize
    cache_mb: int = 1024  # activations kept at block cuts (0 = run whole models)
    rank_check: int = 8  # block-local ranking: units also ranked by quantize-one (Spearman reported; -1 = all)
    block_rows: int = 32  # block-local ranking: texts (of the rank_rows) for each unit's block-output error
    start_from: str = ""  # a build folder whose Q/DQ model is the all-INT8 start (ranges/method/placement unused)
    speed_texts: int = 16  # texts timed per point of the speed curve, in batches of speed_batch (0 = no curve)
    speed_batch: int = 16
    speed_repeats: int = 2

    @classmethod
    def upgrade_params(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """0.1's range set: ``ranges`` (a folder or file) and ``method`` beside each other."""
        return one_ranges_reference(values)


def block_of(node_name: str) -> str:
    """Transformer block of a node: ``layer.3`` for ``/encoder/layer.3/attention/...``; else the
    first path component (``embeddings``, ``pooler``, ``classifier``) or the name itself."""
    block = layer_block(node_name)
    if block is not None:
        return block
    parts = [p for p in re.split(r"[/]", node_name) if p]
    if len(parts) > 1:
        return parts[0]
    head = re.split(r"[._]", node_name)[0]
    return head or node_name


@dataclass(frozen=True)
class Unit:
    name: str
    nodes: tuple[str, ...]


def fp32_entry() -> dict:
    """What keeping every unit in float gives: the FP32 model itself (no evaluation needed)."""
    return {"evaluation": None, "why": "every unit in float (the FP32 model)", "excluded": [], "only": None,
            "quantized_nodes": 0, "seconds": 0.0, "top1_agreement": 1.0, "kl_softmax": 0.0,
            "accuracy_drop_points": 0.0, "embedding_cosine": 1.0, "passes": True}


class _Evaluator:
    """Candidates derived from one Q/DQ model, compared with the cached FP32 outputs.

    ``search`` evaluations use all the subset's texts and count against ``max_evaluations``;
    ``rank`` evaluations use the ``rank_rows`` subset and are logged apart."""

    def __init__(self, config: SensitivityConfig, spec, data: EvalData, fp32: EngineOutputs, qdq_model: onnx.ModelProto | None,
                 quantized_nodes: Sequence[str], shared_pairs: bool, amax: Mapping[str, float], workdir: Path,
                 max_evaluations: int, progress: ProgressFn) -> None:
        self.config, self.spec, self.data, self.fp32, self.qdq = config, spec, data, fp32, qdq_model
        self.shared_pairs, self.amax = shared_pairs, dict(amax)
        self.quantized = tuple(quantized_nodes)
        self.workdir, self.max_evaluations, self.progress = workdir, max_evaluations, progress
        self.cache: dict[tuple, dict] = {}
        self.log: list[dict] = []
        self.rank_log: list[dict] = []
        self.rank_total = 0  # planned rank evaluations, for progress
        n = len(data.encoded)
        rank_n = n if not config.rank_rows or config.rank_rows >= n else config.rank_rows
        self.rank_idx = np.sort(np.random.default_rng(config.settings.seed + 7).permutation(n)[:rank_n])
        self.rank_data, self.rank_fp32 = data.subset(self.rank_idx), fp32.subset(self.rank_idx)
        self.runner: SegmentRunner | None = None
        self.segmentation = "whole models (derived candidates off)" if qdq_model is None else "whole models (cache off)"
        if qdq_model is not None and config.cache_mb > 0:
            try:
                self.runner = SegmentRunner(
                    qdq_model, self.quantized, onnx.load(str(spec.onnx_path), load_external_data=False),
                    keep_in_float, lambda b: OrtEngine(OrtSessionLoader(b, threads=config.settings.threads)),
                    cache_bytes=config.cache_mb << 20)
                self.segmentation = f"{len(self.runner.segments)} segments"
            except SegmentationError as exc:
                self.segmentation = f"whole models ({exc})"

        self.batches = {"search": list(iter_batches(data.encoded, spec.input_dtypes, config.settings.batch_size)),
                        "rank": list(iter_batches(self.rank_data.encoded, spec.input_dtypes, config.settings.batch_size))}
        self.pool = None  # a calib.cluster.WorkerPool of CandidateShardRunner (attach)
        self.chunks = 1
        self._ready: dict[tuple, tuple[list[dict[str, np.ndarray]], float]] = {}  # prefetched candidates
        self._task_seconds: float | None = None

    def attach(self, pool, chunks: int) -> None:
        """Run candidates on ``pool``'s workers: a search evaluation's batches split into ``chunks``
        runs of batches (each run always on the same worker, so its cached cuts are reused), and
        independent ranking candidates one per worker (:meth:`prefetch`)."""
        self.pool, self.chunks = pool, max(1, chunks)

    def _remote(self, model: Path | set[str], rows: str) -> list[dict[str, np.ndarray]]:
        """Per-batch output values of a candidate computed on the workers (the same batches, so the
        same values, as one process)."""
        floating = isinstance(model, (set, frozenset))
        key = (rows, tuple(sorted(model))) if floating else None
        if key in self._ready:
            per_batch, self._task_seconds = self._ready.pop(key)
            return per_batch
        desc = ("float", tuple(sorted(model))) if floating else ("path", str(model))
        batches = self.batches[rows]
        runs = balanced_runs([b.mask.size for b in batches], self.chunks)  # padded tokens per batch
        parts = self.pool.map([(desc, f"{rows}#{a}", batches[a:b]) for a, b in runs],
                              weights=[b - a for a, b in runs], affinity=list(range(len(runs))), unit="batches")
        return [values for part in parts for values in part]

    def prefetch(self, requests: Sequence[tuple[Sequence[str], Sequence[str] | None]], rows: str) -> None:
        """On a cluster: evaluate independent candidates ``(excluded, only)`` at once, each as one task
        over all of ``rows``'s batches; the calls that follow (in any order) take their outputs
        instead of running them, so logs, budget and numbers are those of one call at a time."""
        if self.pool is None or self.qdq is None:  # rebuilt candidates share one file: one at a time
            return
        todo: dict[tuple, tuple[str, ...]] = {}
        for excluded, only in requests:
            floating = set(excluded) if only is None else set(self.quantized) - set(only)
            nodes = tuple(sorted(floating & set(self.quantized)))
            key = (rows, nodes)
            if key in self.cache or key in self._ready or not set(self.quantized) - floating:
                continue
            todo[key] = nodes
        if not todo:
            return
        batches = self.batches[rows]
        t0 = time.monotonic()
        parts = self.pool.map([(("float", nodes), f"{rows}#all", batches) for nodes in todo.values()], unit="candidates")
        each = (time.monotonic() - t0) * len(self.pool.actors) / len(todo)  # about one task's wall time
        for key, per_batch in zip(todo, parts):
            self._ready[key] = (per_batch, round(each, 2))

    @property
    def used(self) -> int:
        return len(self.log)

    @property
    def left(self) -> int:
        return self.max_evaluations - self.used

    def _rows(self, rows: str) -> tuple[EvalData, EngineOutputs]:
        return (self.rank_data, self.rank_fp32) if rows == "rank" else (self.data, self.fp32)

    def _run(self, model: Path | bytes | set[str], rows: str, early_stop: bool = False) -> tuple[Metrics, str | None]:
        """Metrics of a model file/bytes, or (a set) of the derived candidate with those nodes in float,
        run segment by segment from the cached cuts (``early_stop``: abandoned once it surely fails), and
        why it was stopped early (None: it ran every text; else its agreement / cosine are upper bounds)."""
        data, fp32 = self._rows(rows)
        derived = isinstance(model, (set, frozenset))
        stop, seen = self._stopper(rows) if early_stop and derived and self.runner is not None else (None, {})
        if self.pool is not None or derived:
            if self.pool is not None:
                per_batch = self._remote(model, rows)
                for index, values in enumerate(per_batch):  # the one-process early stop, replayed in batch order
                    if stop is not None and stop(index, values):
                        per_batch = None
                        break
            else:
                assert self.runner is not None
                per_batch = self.runner.run(model, rows, self.batches[rows], stop=stop)
            if per_batch is None:  # a certain failure: the remaining texts cannot change that
                n = len(data)
                overall: dict = {"n": n, "agreement": {"top1_agreement": (n - seen["flips"]) / n,
                                                       "kl_softmax": float("inf")}}
                if fp32.embedding is not None:
                    overall["embedding_cosine"] = {"mean": 1.0 - seen["cos_loss"] / n}
                return Metrics(CLASSIFIER, (0, 1 << 30), overall, ()), seen["why"]
            int8 = self.assemble(per_batch, rows)
        else:
            engine = get_backend(PORTABLE_BACKEND).open(model, self.config.settings.threads)
            int8 = run_engine(engine, data.encoded, self.spec.input_dtypes, self.spec.roles,
                              batch_size=self.config.settings.batch_size)
        return compare(fp32, int8, data, edges=(0, 1 << 30), n_resamples=0, seed=self.config.settings.seed), None

    def assemble(self, per_batch: Sequence[Mapping[str, np.ndarray]], rows: str) -> EngineOutputs:
        """Per-row outputs (row order) from a segmented run's per-batch graph outputs, kept as
        :func:`calib.evaluation.run_engine` keeps an engine's."""
        collected = OutputsCollector(len(self._rows(rows)[0]), self.spec.roles)
        for batch, values in zip(self.batches[rows], per_batch):
            collected.add(values, batch)
        return collected.outputs()

    def _stopper(self, rows: str):
        """For search evaluations: a callback that stops a candidate as soon as it cannot meet the
        agreement or embedding-cosine budget whatever the remaining texts give (top-1 flips and
        ``1 - cosine`` only accumulate), and the running counts it keeps."""
        seen = {"flips": 0, "cos_loss": 0.0, "rows": 0, "why": ""}
        data, fp32 = self._rows(rows)
        if rows != "search" or fp32.logits is None:
            return None, seen
        n = len(data)
        fp32_top = np.argmax(fp32.logits, axis=1)
        min_agreement = self.config.budget.min_agreement
        max_flips = n if min_agreement is None else int(np.floor((1.0 - min_agreement) * n + 1e-9))
        min_cos = self.config.budget.min_embedding_cosine
        max_cos_loss = None if min_cos is None or fp32.embedding is None else (1.0 - min_cos) * n
        batches = self.batches[rows]
        roles = self.spec.roles

        def stop(index: int, values: Mapping[str, np.ndarray]) -> bool:
            batch = batches[index]
            kept = batch_outputs(values, batch.mask, roles)
            logits, embedding = kept[roles.logits], kept.get(roles.embedding) if roles.embedding else None
            seen["flips"] += int(np.count_nonzero(np.argmax(logits, axis=1) != fp32_top[batch.rows]))
            seen["rows"] += len(batch.rows)
            if max_cos_loss is not None and embedding is not None:
                seen["cos_loss"] += float(np.sum(1.0 - row_cosine(fp32.embedding[batch.rows], embedding)))
            if seen["flips"] > max_flips:
                seen["why"] = (f"{seen['flips']} top-1 flips after {seen['rows']} of {n} texts: agreement cannot reach "
                               f"{self.config.budget.min_agreement}")
            elif max_cos_loss is not None and seen["cos_loss"] > max_cos_loss:
                seen["why"] = (f"embedding error after {seen['rows']} of {n} texts already exceeds what a mean cosine "
                               f"of {min_cos} allows")
            return bool(seen["why"]) and seen["rows"] < n

        return stop, seen

    def _candidate(self, floating: set[str], only: Sequence[str] | None) -> set[str] | bytes | Path | str:
        """The Q/DQ model with ``floating`` nodes in float: the float set itself when candidates run
        segment by segment, derived from the full model, or rebuilt by the quantizer for placements
        whose pairs are shared between readers (a str: why that failed)."""
        if self.runner is not None or (self.pool is not None and self.qdq is not None):
            return floating & set(self.quantized)  # run segment by segment, or derived on the workers
        if self.qdq is not None:
            return keep_in_float(self.qdq, floating).SerializeToString()

        placement = self.config.placement
        if only is not None:
            placement = dataclasses.replace(placement, include_nodes=tuple(exact_pattern(n) for n in only))
        placement = placement.with_exclusions(exact_pattern(n) for n in floating if only is None)
        path = self.workdir / "candidate.qdq.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                quantize_qdq(self.spec.onnx_path, self.amax, placement, path)
            except (InputError, ValueError) as exc:  # e.g. ONNX Runtime wants a range it was not given
                return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return path

    def __call__(self, excluded: Sequence[str], *, only: Sequence[str] | None = None, why: str,
                 rows: str = "search") -> dict | None:
        """Metrics with ``excluded`` nodes in float (or, with ``only``, only those nodes quantized).

        Returns None when the search budget is used up. Repeated requests are free."""
        floating = set(excluded) if only is None else set(self.quantized) - set(only)
        key = (rows, tuple(sorted(floating & set(self.quantized))))
        if key in self.cache:
            return self.cache[key]
        if rows == "search" and self.left <= 0:
            return None
        if rows == "search" and not set(self.quantized) - floating:
            return fp32_entry()
        t0 = time.monotonic()
        candidate = self._candidate(floating, only)
        if isinstance(candidate, str):  # the quantizer refused this candidate: it counts, and fails
            entry = {"evaluation": self.used + 1, "why": why, "excluded": sorted(excluded),
                     "only": None if only is None else list(only), "quantized_nodes": None, "rows": 0,
                     "seconds": round(time.monotonic() - t0, 2), "top1_agreement": 0.0, "kl_softmax": float("inf"),
                     "accuracy_drop_points": None, "passes": False, "error": candidate}
            if rows == "search":
                self.log.append(entry)
            else:
                self.rank_log.append(entry)
            self.cache[key] = entry
            return entry
        self._task_seconds = None
        metrics, stopped_early = self._run(candidate, rows, early_stop=True)
        seconds = self._task_seconds if self._task_seconds is not None else round(time.monotonic() - t0, 2)
        entry = {"why": why, "excluded": sorted(excluded), "only": None if only is None else list(only),
                 "quantized_nodes": len(set(self.quantized) - floating), "rows": metrics.n,
                 "seconds": seconds, **metrics.headline()}
        if stopped_early:
            entry["stopped_early"] = stopped_early  # agreement/cosine are upper bounds
        entry["passes"] = passes(entry, self.config)
        if rows == "rank":
            entry = {"evaluation": len(self.rank_log) + 1, **entry}
            self.rank_log.append(entry)
            done = len(self.rank_log) / max(self.rank_total, 1)
            self.progress(0.1 + 0.4 * min(done, 1.0), f"ranking {len(self.rank_log)}/{self.rank_total}: {why}")
        else:
            entry = {"evaluation": self.used + 1, **entry}
            self.log.append(entry)
            self.progress(0.5 + 0.45 * self.used / self.max_evaluations,
                          f"evaluation {self.used}/{self.max_evaluations}: {why}")
        self.cache[key] = entry
        return entry

    def record(self, entry: dict) -> dict:
        """Log an evaluation made outside the candidate path (the baseline, the verification)."""
        entry = {"evaluation": self.used + 1, **entry}
        self.log.append(entry)
        return entry

    def evaluate_model(self, path: Path, *, why: str, excluded: Sequence[str], quantized: int) -> dict:
        t0 = time.monotonic()
        metrics, _ = self._run(path, "search")  # no early stop: it runs every text
        entry = {"why": why, "excluded": sorted(excluded), "only": None, "quantized_nodes": quantized,
                 "rows": metrics.n, "seconds": round(time.monotonic() - t0, 2), **metrics.headline()}
        entry["passes"] = passes(entry, self.config)
        return self.record(entry)




def budget_statement(config: SensitivityConfig, kind: str) -> str:
    """The budget in words, as it applies to a ``classifier`` or an ``embedding`` model."""
    if kind == "embedding":
        cos = config.budget.min_embedding_cosine
        return (f"embedding model (no logits): mean FP32-vs-INT8 embedding cosine >= "
                f"{cos if cos is not None else DEFAULT_EMBEDDING_COSINE}"
                + (" (the default for embedding models)" if cos is None else "")
                + "; agreement and accuracy budgets do not apply")
    b = config.budget
    parts = ([f"accuracy drop <= {b.max_drop:g} points"] if b.max_drop is not None else []) \
        + ([f"top-1 agreement >= {b.min_agreement:g}"] if b.min_agreement is not None else []) \
        + ([f"embedding cosine >= {b.min_embedding_cosine:g}"] if b.min_embedding_cosine is not None else [])
    return " and ".join(parts)


def passes(entry: Mapping, config: SensitivityConfig) -> bool:
    """Whether a candidate's figures meet the search budget (:func:`calib.verdict.meets`: a figure the
    candidate lacks, or a threshold of None, is not checked)."""
    return meets(entry, config.budget)


def activation_readers(qdq_model: onnx.ModelProto, nodes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Activation tensor (not a weight) -> the given nodes reading it through a Q/DQ pair, in node order."""
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    weights = {t.name for t in qdq_model.graph.initializer}
    wanted = set(nodes)
    readers: dict[str, list[str]] = {}
    for node in qdq_model.graph.node:
        if node.name not in wanted:
            continue
        for name in node.input:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in weights:
                readers.setdefault(q.input[0], []).append(node.name)
    return {t: tuple(dict.fromkeys(r)) for t, r in readers.items()}


def make_units(nodes: Sequence[str], granularity: str, qdq_model: onnx.ModelProto | None = None) -> list[Unit]:
    """Units the search keeps in float: single nodes, transformer blocks, or activation tensors (every
    quantized reader of one tensor's Q/DQ pairs; needs ``qdq_model``; a node reading two quantized
    activations, e.g. an attention MatMul, belongs to both tensors' units; identical units are merged)."""
    if granularity == "node":
        return [Unit(n, (n,)) for n in nodes]
    if granularity == "tensor":
        assert qdq_model is not None
        units, seen, covered = [], set(), set()
        for tensor, readers in activation_readers(qdq_model, nodes).items():
            covered.update(readers)
            if frozenset(readers) not in seen:
                seen.add(frozenset(readers))
                units.append(Unit(tensor, readers))
        return units + [Unit(n, (n,)) for n in nodes if n not in covered]
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(block_of(n), []).append(n)
    return [Unit(k, tuple(v)) for k, v in groups.items()]


def local_scores(model_path: Path, qdq_path: Path, quantized_nodes: Sequence[str], encoded, input_dtypes,
                 batch_size: int, threads: int | None) -> dict[str, float]:
    """Per quantized node: the worst local noise-to-signal ratio of the Q/DQ pairs around it.

    Non-finite ranges (e.g. a ``-inf`` attention mask) score infinity; nodes left out of the Q/DQ
    graph for lack of a usable range are not scored (they are already in float). A tensor quantized
    once per consumer (dedicated pairs) scores every one of those consumers."""
    ref = onnx.load(str(model_path))
    qdq = onnx.load(str(qdq_path))
    tensors = quantized_tensors(qdq, ref)
    analysis = LayerAnalysis({}, tensors, producer_order(ref))
    int8 = OrtEngine(OrtSessionLoader(qdq_path, intermediates=analysis.int8_names, threads=threads))
    for batch in iter_batches(encoded, input_dtypes, batch_size):
        values = int8.run(batch.feeds, list(analysis.int8_names))
        analysis.add(values, values, batch.mask)  # FP32 side unused here: only the local pairs matter
    readers: dict[str, set[str]] = {}  # source tensor -> nodes reading any of its Q/DQ pairs
    producer = {o: n for n in qdq.graph.node for o in n.output}
    for node in qdq.graph.node:
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    readers.setdefault(q.input[0], set()).add(node.name)
    quantized = set(quantized_nodes)
    scores = {n: 0.0 for n in quantized_nodes}
    for t in tensors:
        local = analysis.local[t.name]
        if local.nonfinite or not np.isfinite(t.amax) or t.amax <= 0:
            nsr = float("inf")
        elif local.sx2 > 0:
            nsr = local.se2 / local.sx2
        else:
            nsr = 0.0
        for node in {t.producer, *t.consumers, *readers.get(t.name, ())}:
            if node in quantized:
                scores[node] = max(scores[node], nsr)
    return scores


def _prefix_nodes(units: Sequence[Unit], k: int) -> list[str]:
    return list(dict.fromkeys(n for u in units[:k] for n in u.nodes))


@dataclass(frozen=True)
class Trial:
    """One placement the search evaluated (an entry of ``sensitivity.json``): the INT8 figures with
    some units kept in float. ``record`` is the entry as saved."""

    record: Mapping

    @property
    def top1_agreement(self) -> float | None:
        return self.record.get("top1_agreement")  # None: an embedding model (no logits)

    @property
    def accuracy_drop_points(self) -> float | None:
        return self.record.get("accuracy_drop_points")  # None: unlabelled data

    @property
    def embedding_cosine(self) -> float | None:
        return self.record.get("embedding_cosine")

    @property
    def kl_softmax(self) -> float | None:
        return self.record.get("kl_softmax")

    @property
    def quantized_nodes(self) -> int | None:
        return self.record.get("quantized_nodes")

    @property
    def passes(self) -> bool:
        return bool(self.record.get("passes"))

    @property
    def units(self) -> tuple[str, ...]:
        """The units kept in float (the recommendation's; empty for the baseline)."""
        return tuple(self.record.get("units") or self.record.get("excluded") or ())

    @property
    def exclude_nodes(self) -> tuple[str, ...]:
        return tuple(self.record.get("exclude_nodes") or ())

    @property
    def note(self) -> str:
        return str(self.record.get("note") or "")


@dataclass(frozen=True)
class RankedUnit:
    """A unit in the sensitivity ranking: its nodes and score (higher: more sensitive)."""

    unit: str
    nodes: tuple[str, ...]
    score: float | None
    detail: Mapping = field(default_factory=dict)  # what the ranking measured (e.g. quantize-one's figures)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "nodes": list(self.nodes), "score": self.score, **self.detail}


@dataclass(frozen=True)
class SearchedRows:
    """The rows a search ran on (``sensitivity.json["dataset"]``): ``rows_evaluated`` of ``rows_total``."""

    source: str
    split: str | None
    rows_evaluated: int
    rows_total: int

    @classmethod
    def from_dict(cls, d: Mapping) -> SearchedRows:
        return cls(str(d.get("source", "")), d.get("split"), int(d["rows_evaluated"]), int(d["rows_total"]))

    @property
    def sampled(self) -> bool:
        """Whether the search ran on a sample of the split (its figures may differ on the full split)."""
        return self.rows_evaluated < self.rows_total

    def describe(self) -> str:
        return self.source + (f" [{self.split}]" if self.split else "")


@dataclass(frozen=True)
class GranularitySearch:
    """One searched granularity (``auto`` searches two): float nodes of its answer, whether it passes,
    whether it was chosen, or why it was not run (``skipped``)."""

    granularity: str
    float_nodes: int | None = None
    passes: bool = False
    chosen: bool = False
    skipped: str = ""

    @classmethod
    def from_dict(cls, d: Mapping) -> GranularitySearch:
        return cls(str(d["granularity"]), d.get("float_nodes"), bool(d.get("passes")), bool(d.get("chosen")),
                   str(d.get("skipped") or ""))


@dataclass(frozen=True)
class SpeedPoint:
    """A step of the fallback: this many nodes in float, INT8 throughput over FP32, and the unit put back."""

    float_nodes: int
    int8_over_fp32: float
    change: str


@dataclass(frozen=True)
class SpeedCurve:
    """INT8 speed along the fallback, measured on ``texts`` texts in batches of ``batch_size``."""

    texts: int
    batch_size: int
    fp32_texts_per_s: float
    points: tuple[SpeedPoint, ...]

    @classmethod
    def from_dict(cls, d: Mapping) -> SpeedCurve:
        return cls(int(d["texts"]), int(d["batch_size"]), float(d["fp32_texts_per_s"]),
                   tuple(SpeedPoint(int(p["float_nodes"]), float(p["int8_over_fp32"]), str(p["change"]))
                         for p in d["points"]))


@dataclass(frozen=True)
class RankingCheck:
    """The block-local ranking checked against quantize-one: Spearman over ``units`` units."""

    units: int
    spearman: float | None

    @classmethod
    def from_dict(cls, d: Mapping) -> RankingCheck:
        return cls(int(d.get("units") or 0), d.get("spearman"))


@dataclass(frozen=True)
class SensitivityResult:
    """Saved sensitivity analysis (``sensitivity.json``). Read it through the typed parts
    (``recommended``, ``baseline``, ``ranking``, ``searched``...); ``data`` is the raw JSON."""

    dir: Path
    data: dict

    @classmethod
    def load(cls, directory: str | Path) -> SensitivityResult:
        directory = Path(directory)
        return cls(directory, read_artifact_json(directory / "sensitivity.json", SCHEMA,
                                                 "give a sensitivity run folder"))

    @property
    def recommended(self) -> Trial:
        """The placement the search recommends (``passes``: it meets the budget)."""
        return Trial(self.data["recommended"])

    @property
    def baseline(self) -> Trial:
        """The placement as given, before any unit was kept in float."""
        return Trial(self.data["baseline"])

    @property
    def ranking(self) -> list[RankedUnit]:
        """The units, most sensitive first."""
        return [RankedUnit(str(r["unit"]), tuple(r.get("nodes") or ()), r.get("score"),
                           {k: v for k, v in r.items() if k not in ("unit", "nodes", "score")})
                for r in self.data["ranking"]]

    @property
    def ranking_method(self) -> str:
        return str(self.data["ranking_method"])

    @property
    def model_sha256(self) -> str:
        return str(self.data["model"]["sha256"])

    @property
    def searched(self) -> SearchedRows:
        """The rows the search ran on: source, split, rows_evaluated of rows_total."""
        return SearchedRows.from_dict(self.data["dataset"])

    @property
    def evaluations_used(self) -> int:
        return int(self.data["evaluations_used"])

    @property
    def ranking_evaluations_used(self) -> int:
        return int(self.data.get("ranking_evaluations_used", 0))

    @property
    def ranking_rows(self) -> int:
        """Texts the ranking evaluations ran on (0: the ranking needed no evaluation)."""
        return int(self.data.get("ranking_rows", 0))

    @property
    def granularity(self) -> str:
        return str(self.data["granularity"])

    @property
    def budget_record(self) -> dict:
        """The budget as searched: thresholds, ``max_evaluations``, ``model_kind`` and ``statement`` (in words)."""
        return dict(self.data["budget"])

    @property
    def budget(self) -> ReleaseBudget:
        """The thresholds every candidate was judged against."""
        return ReleaseBudget.from_dict(self.data["budget"])

    @property
    def budget_statement(self) -> str:
        """The budget in words, as it applied to this model ("" when not recorded)."""
        return str(self.data["budget"].get("statement") or "")

    @property
    def placement_record(self) -> dict:
        """The start's placement as recorded (``preset`` and patterns)."""
        return dict(self.data["placement"])

    @property
    def ranking_check(self) -> RankingCheck | None:
        """The block-local ranking's Spearman check against quantize-one, if run."""
        recorded = self.data.get("ranking_check")
        return RankingCheck.from_dict(recorded) if recorded else None

    @property
    def searches(self) -> list[GranularitySearch]:
        """One entry per searched granularity (``auto`` searches two)."""
        return [GranularitySearch.from_dict(d) for d in self.data.get("searches") or []]

    @property
    def speed_curve(self) -> SpeedCurve | None:
        """INT8 speed along the fallback, if measured."""
        recorded = self.data.get("speed_curve")
        return SpeedCurve.from_dict(recorded) if recorded else None

    @property
    def start_config(self) -> BuildConfig | None:
        """The build settings of the ``start_from`` build, if the search started from one."""
        recorded = (self.data.get("start_from") or {}).get("config")
        return BuildConfig.from_params(recorded) if recorded else None

    @property
    def searched_placement(self) -> Placement:
        """The start's placement as searched, before any recommended exclusion."""
        return Placement.from_record(self.data["placement"])

    def build_command(self, run_id: str) -> str | None:
        """The ``calib build`` command that keeps this run's exclusions in float (None: it recommends none):
        the start build's own settings when the search started from one, else the model, range set and
        placement searched. ``run_id`` names this run (``--exclude-from``)."""
        if not self.exclude_nodes:
            return None
        config = self.start_config
        if config is None:
            ranges = self.data.get("ranges") or {}
            config = BuildConfig(model=str(self.data["model"]["path"]), placement=self.searched_placement,
                                 ranges=RangesRef(str(ranges.get("source", "")),
                                                  **({"method": str(ranges["method"])} if ranges.get("method") else {})))
        return build_command(config, exclude_from=run_id)

    @property
    def seconds(self) -> float | None:
        return self.data.get("seconds")

    @property
    def max_evaluations(self) -> int:
        return int(self.data["budget"]["max_evaluations"])

    @property
    def exclude_nodes(self) -> tuple[str, ...]:
        """The recommended node names to keep in float (exact names; use as ``Placement.exclude_nodes``)."""
        return self.recommended.exclude_nodes

    exclusions = exclude_nodes  # 0.1's name

    @property
    def found(self) -> bool:
        return self.recommended.passes

    def placement(self) -> Placement:
        """The searched placement with the recommended exclusions (what a build of the answer uses)."""
        return self.searched_placement.with_exclusions(exact_pattern(n) for n in self.exclude_nodes)

    def summary(self) -> dict:
        rec = self.recommended
        return {"passes": rec.passes, "exclude_nodes": len(rec.exclude_nodes), "model_sha256": self.model_sha256,
                "evaluations": self.evaluations_used, "max_evaluations": self.max_evaluations,
                "ranking_evaluations": self.ranking_evaluations_used,
                "top1_agreement": rec.top1_agreement, "accuracy_drop_points": rec.accuracy_drop_points,
                "embedding_cosine": rec.embedding_cosine,
                "baseline_top1_agreement": self.baseline.top1_agreement,
                "seconds": self.seconds,
                **({"cluster": self.data["cluster"]["spec"], "workers": self.data["cluster"]["workers"]}
                   if self.data.get("cluster") else {})}


def _check_config(config: SensitivityConfig) -> None:
    check_choice(config.granularity, GRANULARITIES, "granularity")
    check_choice(config.ranking, RANKINGS, "ranking")
    if config.max_evaluations < 2:
        raise InputError(f"max evaluations must be at least 2 (baseline + one candidate), got {config.max_evaluations}")
    b = config.budget
    if b.min_agreement is not None and not 0 <= b.min_agreement <= 1:
        raise InputError(f"min agreement must be in [0, 1], got {b.min_agreement}")
    if b.min_embedding_cosine is not None and not -1 <= b.min_embedding_cosine <= 1:
        raise InputError(f"min embedding cosine must be in [-1, 1], got {b.min_embedding_cosine}")
    if b.use_ci:
        raise InputError("the search judges candidates without a confidence interval; check the interval with "
                         "calib validate on the rebuilt engine (use_ci applies to the release verdict)")
    config.settings.check()
    # a setting changed from both defaults (EvalSettings' and the search's) asks for something the search never does
    defaults = (EvalSettings(), SEARCH_SETTINGS)
    ignored = [what for what, name in (("length buckets (edges)", "edges"), ("bootstrap resamples", "bootstrap"),
                                       ("the per-layer analysis", "layers"))
               if all(getattr(config.settings, name) != getattr(d, name) for d in defaults)]
    if ignored:
        raise InputError(f"the search scores each candidate on all its texts at once, without {' or '.join(ignored)}; "
                         "leave them out (calib validate on the rebuilt engine measures them)")
    if config.rank_rows < 0 or config.local_rows < 0:
        raise InputError("rank rows and local rows must be 0 (all) or positive")
    if config.speed_texts < 0 or config.speed_batch < 1 or config.speed_repeats < 1:
        raise InputError("speed texts must be 0 (no curve) or positive; speed batch and repeats at least 1")
    if config.cache_mb < 0 or config.rank_check < -1 or config.block_rows < 0:
        raise InputError("cache MB and block rows must be 0 (off / all) or positive, rank check -1 (all), 0 or positive")


def scope_warnings(result, config: SensitivityConfig) -> list[str]:
    """Why nodes of the placement silently stay in float: tensors with no range (the calibration did not
    cover this placement) or with an unusable (non-finite / zero) range."""
    out = []
    reasons = dict(result.skipped_tensors)
    missing = list(result.rangeless_tensors)
    rangeless = set(missing)
    blocked = [n for n, tensors in result.blocked_nodes.items() if not rangeless.isdisjoint(tensors)]
    if missing:
        out.append(
            f"WARNING calibration scope: {len(missing)} tensor(s) the {config.placement.preset!r} placement quantizes have no range in "
            f"{config.ranges.source} (e.g. {missing[0]}), so {len(blocked)} node(s) stay in float without being analysed; "
            f"calibrate with --placement {config.placement.preset} (or --tensors all) to cover them")
    unusable = sorted(set(reasons) - rangeless)
    unusable_set = set(unusable)
    stuck = [n for n, tensors in result.blocked_nodes.items() if not unusable_set.isdisjoint(tensors)]
    if unusable and stuck:
        out.append(f"note: {len(unusable)} tensor(s) have an unusable range (non-finite or zero, e.g. {unusable[0]}: "
                   f"{reasons[unusable[0]]}); their {len(stuck)} node(s) stay in float")
    return out


def _quantize_one_ranking(evaluate: _Evaluator, units: Sequence[Unit]) -> tuple[dict[str, float], list[dict]]:
    """Each unit quantized alone on the rank subset; score = its share of the baseline's KL + its
    share of the baseline's embedding error. Returns the scores and per-unit details."""
    evaluate.rank_total = len(units) + 1
    rank, shares, has_embedding = _ranking_baseline(evaluate)
    details, scores = [], {}
    evaluate.prefetch([([], u.nodes) for u in units], rows="rank")
    for u in units:
        e = rank([], list(u.nodes), f"quantize only {u.name}")
        kl_share, cos_share = shares(e)
        scores[u.name] = kl_share + cos_share
        details.append(_quantize_one_detail(u.name, e, kl_share, cos_share, has_embedding))
    return scores, details


def _ranking_baseline(evaluate: _Evaluator):
    """The ranking's evaluation (on the rank subset, not bounded by the search budget), run first on
    the full placement, and ``shares(entry) -> (kl_share, embedding_error_share)``: the fractions of
    that baseline's KL and embedding error (1 - cosine) an evaluation shows. Returns
    ``(rank, shares, has_embedding)``."""
    def rank(excluded: list[str], only: list[str] | None, why: str) -> dict:
        entry = evaluate(excluded, only=only, why=why, rows="rank")
        assert entry is not None  # ranking evaluations are not bounded by the search budget
        return entry

    base = rank([], None, "full placement (ranking texts)")
    base_kl = base.get("kl_softmax") or 0.0  # embedding models have no KL: their share is the cosine's
    base_err = 1.0 - base["embedding_cosine"] if "embedding_cosine" in base else None

    def shares(entry: Mapping) -> tuple[float, float]:
        kl = (entry.get("kl_softmax") or 0.0) / base_kl if base_kl > 0 else 0.0
        cos = max(0.0, 1.0 - entry["embedding_cosine"]) / base_err if base_err and "embedding_cosine" in entry else 0.0
        return kl, cos

    return rank, shares, bool(base_err)


def _quantize_one_detail(unit: str, entry: Mapping, kl_share: float, cos_share: float, has_embedding: bool) -> dict:
    """One unit's quantize-one evaluation as the ranking records it."""
    return {"unit": unit, "kl_share": kl_share, "embedding_error_share": cos_share if has_embedding else None,
            "top1_agreement": entry.get("top1_agreement"), "kl_softmax": entry.get("kl_softmax"),
            "embedding_cosine": entry.get("embedding_cosine")}


def relative_error(values: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]],
                   names: Sequence[str], batches: Sequence) -> float:
    """Squared error / squared FP32 value, summed over float tensors ``names`` of every batch (token
    positions of padding left out where a tensor is (batch, tokens, ...); non-finite FP32 values skipped)."""
    se = ss = 0.0
    for batch, got, ref in zip(batches, values, reference):
        for name in names:
            a, b = np.asarray(got[name]), np.asarray(ref[name])
            if a.dtype.kind != "f" or a.ndim < 2:
                continue
            keep = np.isfinite(b)
            if a.shape[:2] == batch.mask.shape:
                keep &= batch.mask.reshape(batch.mask.shape + (1,) * (a.ndim - 2))
            d = np.where(keep, a - b, 0.0)
            se += float(np.sum(np.square(d, dtype=np.float64)))
            ss += float(np.sum(np.square(np.where(keep, b, 0.0), dtype=np.float64)))
    return se / ss if ss > 0 else 0.0


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _block_local_ranking(evaluate: _Evaluator, units: Sequence[Unit]) -> tuple[dict[str, float], list[dict], dict]:
    """Quantize-one shares predicted from each unit's error at the end of its own block.

    Per segment ``k``: one evaluation with only segment ``k`` quantized gives its KL and embedding-error
    shares (as the quantize-one ranking defines them) and its relative error at the cut after it;
    each unit of the segment is then run through segment ``k`` alone, from the cached FP32 cut, and
    its shares are the segment's scaled by its share of that error. Units spanning several segments
    are evaluated exactly. ``rank_check`` units, evenly spaced over the result, are also evaluated by
    quantize-one, and the Spearman correlation of the two scorings is returned with them."""
    runner = evaluate.runner
    assert runner is not None
    batches = evaluate.batches["rank"]
    allq = set(evaluate.quantized)
    by_segment: dict[int, list[Unit]] = {}
    exact: list[Unit] = []
    for u in units:
        segs = {runner.segment_of(n) for n in u.nodes}
        if len(segs) == 1:
            by_segment.setdefault(segs.pop(), []).append(u)
        else:
            exact.append(u)
    check = evaluate.config.rank_check
    planned_checks = len(units) if check < 0 else min(check, len(units))
    evaluate.rank_total = 1 + len(by_segment) + len(exact) + planned_checks

    rank, shares, has_embedding = _ranking_baseline(evaluate)
    details, scores = [], {}
    t0 = time.monotonic()
    per_batch = max(len(b.rows) for b in batches) if batches else 1
    wanted = len(batches) if not evaluate.config.block_rows else -(-evaluate.config.block_rows // per_batch)
    picks = np.unique(np.round(np.linspace(0, len(batches) - 1, min(wanted, len(batches)))).astype(int))
    few = [batches[i] for i in picks]  # spread over the length-sorted batches
    evaluate.prefetch([([], sorted(runner.quantized_in[k])) for k in sorted(by_segment)]
                      + [([], u.nodes) for u in exact], rows="rank")
    for k, members in sorted(by_segment.items()):
        seg = runner.segments[k]
        reference = runner.run(allq, "rank-block", few, upto=k + 1)
        e = rank([], sorted(runner.quantized_in[k]), f"quantize only segment {seg.name}")
        seg_kl, seg_cos = shares(e)
        seg_err = relative_error(runner.run(allq - runner.quantized_in[k], "rank-block", few, upto=k + 1), reference,
                                 seg.outputs, few)
        for i, u in enumerate(members):
            evaluate.progress(0.1 + 0.4 * min(len(evaluate.rank_log) / max(evaluate.rank_total, 1), 1.0),
                              f"ranking: block {seg.name} unit {i + 1}/{len(members)}")
            err = relative_error(runner.run(allq - set(u.nodes), "rank-block", few, upto=k + 1, store=False), reference,
                                 seg.outputs, few)
            frac = err / seg_err if seg_err > 0 else 0.0
            kl_share, cos_share = seg_kl * frac, seg_cos * frac
            scores[u.name] = kl_share + cos_share
            details.append({"unit": u.name, "kl_share": kl_share, "embedding_error_share": cos_share if has_embedding else None,
                            "segment": seg.name, "block_output_error": err, "predicted": True})
    for u in exact:
        e = rank([], list(u.nodes), f"quantize only {u.name}")
        kl_share, cos_share = shares(e)
        scores[u.name] = kl_share + cos_share
        details.append({**_quantize_one_detail(u.name, e, kl_share, cos_share, has_embedding), "predicted": False})
    rank_seconds = time.monotonic() - t0
    ordered = sorted(units, key=lambda u: -scores[u.name])
    predicted = [u for u in ordered if u.name in {d["unit"] for d in details if d["predicted"]}]
    if planned_checks >= len(predicted):
        sample = predicted
    else:
        picks = np.unique(np.round(np.linspace(0, len(predicted) - 1, planned_checks)).astype(int)) if planned_checks else []
        sample = [predicted[i] for i in picks]
    t1, c1 = time.monotonic(), time.process_time()
    checked = []
    evaluate.prefetch([([], u.nodes) for u in sample], rows="rank")
    for u in sample:
        kl_share, cos_share = shares(rank([], list(u.nodes), f"check: quantize only {u.name}"))
        checked.append({"unit": u.name, "predicted": scores[u.name], "quantize_one": kl_share + cos_share})
    rho = spearman([c["predicted"] for c in checked], [c["quantize_one"] for c in checked])
    check_info = {"units": len(checked), "spearman": rho, "rows": checked,
                  "ranking_seconds": round(rank_seconds, 2), "check_seconds": round(time.monotonic() - t1, 2),
                  "check_cpu_seconds": round(time.process_time() - c1, 2)}
    return scores, details, check_info


def _start_build(config: SensitivityConfig, spec):
    """The build folder to start from, checked: same FP32 model, an input-only placement, and the
    settings recorded (to rebuild it with exclusions)."""
    start = EngineArtifact.load(config.start_from)
    check_same_model(start.model_sha256, spec.sha256, f"build {config.start_from}")
    if start.config is not None and start.config.placement.preset == "all":
        raise InputError(f"build {config.start_from} quantizes op outputs (placement all): the search derives its "
                         "candidates from input-only placements; start from a tensorrt build")
    if start.config is None:
        raise InputError(f"build {config.start_from} does not record its settings (made by an older calib); rebuild it "
                         "with calib build to start a search from it")
    return start


def search_start(build: EngineArtifact) -> dict[str, Any]:
    """The :class:`SensitivityConfig` fields that search a saved build: the build itself as the start
    (``start_from``) when it changed the model beyond its range set and placement (outlier migration,
    bias correction, per-tensor weights), so every candidate is that build with nodes in float; else its
    ``ranges`` and ``placement``. A build that records no settings (an older calib) is searched from
    what it recorded of its ranges and placement."""
    config = build.config
    if config is None:
        recorded = build.ranges_record
        return {"ranges": RangesRef(str(recorded.get("source", "")), str(recorded.get("method") or DEFAULT_BUILD_METHOD)),
                "placement": Placement.from_record(build.placement_record)}
    changed = parse_alpha(config.smooth) is not None or config.bias_correction or not config.per_channel
    if changed and config.placement.preset != "all":  # a start build must have input-only Q/DQ (_start_build)
        return {"start_from": str(build.dir)}
    return {"ranges": config.ranges, "placement": config.placement}


def _rebuild(start, nodes: Sequence[str], out_dir: Path) -> tuple[Path, int]:
    """``start``'s build settings with ``nodes`` also kept in float, built again by :func:`calib.build.build`;
    (its Q/DQ model, quantized node count)."""
    config = dataclasses.replace(start.config.with_float_nodes(nodes),
                                 backend=PORTABLE_BACKEND)
    out_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        artifact = build(config, out_dir)
    return artifact.qdq_path, len(artifact.quantized_nodes)


def speed_curve(evaluate: _Evaluator, spec, chosen: Sequence[Unit], verified: Path | None,
                baseline_path: Path, progress: ProgressFn) -> dict | None:
    """INT8 throughput along the fallback: every INT8 node, then each recommended unit put in float in
    ranking order (the recommendation last), against FP32, on ``speed_texts`` texts (spread over the
    evaluated texts' lengths) in batches of ``speed_batch``: the accuracy-vs-speed trade-off of each
    fallback step. Under placements with shared Q/DQ pairs only the two ends and the verified
    recommendation are timed. Throughput is the fastest of ``speed_repeats`` passes (see
    :func:`calib.bench.throughput`)."""
    config = evaluate.config
    if not config.speed_texts:
        return None
    n = len(evaluate.data)
    rows = np.unique(np.linspace(0, n - 1, min(config.speed_texts, n)).astype(int))
    batches = list(iter_batches(evaluate.data.encoded.subset(rows), spec.input_dtypes, config.speed_batch))

    key = "cpu_texts_per_s" if config.settings.threads == 1 or (config.settings.threads is None and default_threads() == 1) \
        else "best_texts_per_s"

    def timed(model) -> float:
        engine = OrtEngine(OrtSessionLoader(model, threads=config.settings.threads))
        return throughput(engine, batches, config.speed_repeats)[key]

    points: list[tuple[str, list[str], object]] = [("all INT8", [], baseline_path)]
    if evaluate.qdq is not None:
        for k in range(1, len(chosen) + 1):
            nodes = _prefix_nodes(chosen, k)
            model = verified if k == len(chosen) and verified is not None else keep_in_float(evaluate.qdq, nodes).SerializeToString()
            points.append((f"+ {chosen[k - 1].name} in float", nodes, model))
    elif chosen and verified is not None:
        points.append(("recommendation", _prefix_nodes(chosen, len(chosen)), verified))
    t0 = time.monotonic()
    fp32_tps = timed(spec.onnx_path)
    curve = []
    for i, (label, nodes, model) in enumerate(points):
        progress(0.96 + 0.04 * i / len(points), f"speed curve {i + 1}/{len(points)}")
        tps = timed(model)
        known = evaluate.cache.get(("search", tuple(sorted(set(nodes) & set(evaluate.quantized)))))
        curve.append({"step": i, "change": label, "float_nodes": len(nodes), "texts_per_s": round(tps, 3),
                      "int8_over_fp32": round(tps / fp32_tps, 3) if fp32_tps else None,
                      **({k: known.get(k) for k in ("top1_agreement", "accuracy_drop_points", "embedding_cosine",
                                                     "passes")} if known and not known.get("stopped_early") else {})})
    return {"texts": len(rows), "batch_size": config.speed_batch, "repeats": config.speed_repeats,
            "threads": config.settings.threads, "measure": key, "fp32_texts_per_s": round(fp32_tps, 3), "points": curve,
            "seconds": round(time.monotonic() - t0, 2)}


def _grouped_scores(units: Sequence[Unit], scores: Mapping[str, float], details: Mapping[str, dict]
                    ) -> tuple[dict[str, float], dict[str, dict]]:
    """Scores and predicted shares of grouped units from those of their single nodes (additive)."""
    out_scores, out_details = {}, {}
    for u in units:
        out_scores[u.name] = sum(scores.get(n, 0.0) for n in u.nodes)
        row = {"unit": u.name}
        for key in ("kl_share", "embedding_error_share"):
            values = [details[n].get(key) for n in u.nodes if n in details]
            row[key] = sum(v for v in values if v is not None) if any(v is not None for v in values) else None
        out_details[u.name] = row
    return out_scores, out_details


def predicted_start(ranked: Sequence[Unit], details: Mapping[str, dict], baseline: dict, config: SensitivityConfig) -> int:
    """Smallest prefix whose removal the additive model (quantize-one shares) expects to bring the
    embedding error and the KL within reach of the budget; √n when nothing can be predicted (the
    doubling then reaches n, and the bisection 1, in about the same number of steps)."""
    n = len(ranked)
    if n == 0:
        return 1
    if not details:  # nothing to predict from: start midway (in doubling steps) between 1 and n
        return max(1, round(float(np.sqrt(n))))
    needs = []
    err = 1.0 - baseline["embedding_cosine"] if "embedding_cosine" in baseline else None
    if config.budget.min_embedding_cosine is not None and err and err > 1.0 - config.budget.min_embedding_cosine:
        needs.append(("embedding_error_share", (1.0 - config.budget.min_embedding_cosine) / err))
    agreement = baseline.get("top1_agreement")
    if agreement is not None and config.budget.min_agreement is not None and agreement < config.budget.min_agreement \
            and agreement < 1:
        # flips grow with the perturbation's amplitude, i.e. with the square root of the KL
        needs.append(("kl_share", ((1.0 - config.budget.min_agreement) / (1.0 - agreement)) ** 2))
    if not needs:
        return 1
    k_needed = 1
    for key, keep_fraction in needs:
        shares = [float(details[u.name].get(key) or 0.0) for u in ranked]
        total = sum(shares)
        if total <= 0:
            continue
        remaining = total
        k = 0
        while k < n and remaining / total > keep_fraction:
            remaining -= shares[k]
            k += 1
        k_needed = max(k_needed, k)
    return max(1, min(k_needed, n))


def analyze_sensitivity(config: SensitivityConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> SensitivityResult:
    """Rank quantized units by the loss they cause and find the fewest to keep in float (see module doc)."""
    Cluster.parse(config.settings.cluster)  # a bad spec fails before any work
    _check_config(config)
    with connect(config.settings.cluster) as session:
        return _analyze(config, Path(out_dir), progress, session)


def _analyze(config: SensitivityConfig, out_dir: Path, progress: ProgressFn | None,
             session: ClusterSession | None) -> SensitivityResult:
    t0, cpu0 = time.monotonic(), time.process_time()
    report = progress or (lambda f, m="": None)
    model = config.model
    if not model.roles_named:  # as the calibration set recorded them, else detected
        model = dataclasses.replace(model, **recorded_roles(config.ranges.source))
    spec = model.load()
    budget_note = budget_statement(config, spec.roles.kind)
    if spec.roles.kind == "embedding" and config.budget.min_embedding_cosine is None:
        config = dataclasses.replace(config, budget=dataclasses.replace(config.budget,
                                                                        min_embedding_cosine=DEFAULT_EMBEDDING_COSINE))
    start_build = _start_build(config, spec) if config.start_from else None
    amax = dict(config.ranges.load().amax) if start_build is None else {}
    data = load_eval_data(config.data, spec, limit=config.settings.limit, seed=config.settings.seed)
    fp32_engine = OrtEngine(OrtSessionLoader(spec.onnx_path, threads=config.settings.threads))
    fp32 = run_engine(fp32_engine, data.encoded, spec.input_dtypes, spec.roles, batch_size=config.settings.batch_size,
                      progress=lambda f, m="": report(0.06 * f, f"{FP32_PASS} (baseline): {m}"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".candidates-") as tmp, contextlib.ExitStack() as stack:
        report(0.06, "quantizing the full placement")
        base_path = Path(tmp) / "baseline.qdq.onnx"
        with warnings.catch_warnings():  # ranges for tensors absent from the model are listed by the build stage
            warnings.simplefilter("ignore")
            if start_build is None:
                base_result = quantize_qdq(spec.onnx_path, amax, config.placement, base_path)
                base_nodes, float_nodes = list(base_result.quantized_nodes), dict(base_result.excluded_nodes)
                notes = scope_warnings(base_result, config)
            else:
                shutil.copyfile(start_build.qdq_path, base_path)
                base_nodes, float_nodes, notes = list(start_build.quantized_nodes), dict(start_build.excluded_nodes), []
        # the `all` preset quantizes outputs too (calib.placement): there pairs are shared by every reader
        shared_pairs = config.placement.preset == "all" and start_build is None
        reserve = 1 if config.verify and not shared_pairs else 0  # rebuilt candidates need no check
        evaluate = _Evaluator(config, spec, data, fp32, None if shared_pairs else onnx.load(str(base_path)), base_nodes,
                              shared_pairs, amax, Path(tmp), config.max_evaluations - reserve, report)
        if session is not None:
            factory = functools.partial(
                CandidateShardRunner, None if shared_pairs else str(base_path), tuple(base_nodes), str(spec.onnx_path),
                tuple(spec.roles.names), (config.cache_mb << 20) if evaluate.runner is not None else 0,
                config.settings.threads or session.threads)
            evaluate.attach(stack.enter_context(session.pool(factory)), session.workers * SHARDS_PER_WORKER)
        baseline = evaluate.evaluate_model(set() if evaluate.runner is not None else base_path, why="full placement",
                                           excluded=[], quantized=len(base_nodes))
        base_qdq = evaluate.qdq if evaluate.qdq is not None or config.granularity != "tensor" else onnx.load(str(base_path))
        # auto: rank single nodes, then search by node and by activation tensor
        units = make_units(base_nodes, "node" if config.granularity == "auto" else config.granularity, base_qdq)
        ranking_kind = config.ranking
        if ranking_kind == "auto":
            if len(units) <= config.max_evaluations // 2:
                ranking_kind = "exclude-one"
            elif len(units) <= config.max_rank_units and evaluate.runner is not None:
                ranking_kind = "block-local"
            elif len(units) <= config.max_rank_units and not shared_pairs:  # cheap derived candidates only
                ranking_kind = "quantize-one"
            else:
                ranking_kind = "local"
        if ranking_kind == "block-local" and evaluate.runner is None:
            raise InputError(f"block-local ranking needs a model cut into transformer blocks ({evaluate.segmentation}); "
                             "use --ranking quantize-one or local")
        scores: dict[str, float] = {}
        details: dict[str, dict] = {}
        ranking_check = None
        if not baseline["passes"] and units:
            if ranking_kind == "block-local":
                scores, rows, ranking_check = _block_local_ranking(evaluate, units)
                details = {r["unit"]: r for r in rows}
            elif ranking_kind == "local":
                enc = data.encoded
                if config.local_rows and config.local_rows < len(enc):
                    enc = enc.subset(np.random.default_rng(config.settings.seed).choice(len(enc), config.local_rows, replace=False))
                report(0.1, "ranking nodes by local quantization noise")
                local = local_scores(spec.onnx_path, base_path, base_nodes, enc, spec.input_dtypes,
                                     config.settings.batch_size, config.settings.threads)
                scores = {u.name: max(local.get(n, 0.0) for n in u.nodes) for u in units}
            elif ranking_kind == "quantize-one":
                scores, rows = _quantize_one_ranking(evaluate, units)
                details = {r["unit"]: r for r in rows}
            else:
                if len(units) > evaluate.left - 1:
                    raise InputError(
                        f"{ranking_kind} ranking needs {len(units)} evaluations but only {evaluate.left - 1} are left "
                        f"within max evaluations {config.max_evaluations}; use --ranking local or --granularity block")
                evaluate.prefetch([(u.nodes, None) for u in units], rows="search")
                for u in units:
                    e = evaluate(list(u.nodes), why=f"exclude {u.name}")
                    scores[u.name] = _loss(baseline) - _loss(e)
        searches = [("node" if config.granularity == "auto" else config.granularity, units, scores, details)]
        if config.granularity == "auto" and base_qdq is not None:
            tensor_units = make_units(base_nodes, "tensor", base_qdq)
            searches.append(("tensor", tensor_units, *_grouped_scores(tensor_units, scores, details)))
        tried: list[dict] = []  # one search per granularity (two under auto)
        outcomes = []
        for kind, kind_units, kind_scores, kind_details in searches:
            # units that help most first; the search extends into the rest only when the top ones do not suffice
            ranked = sorted(kind_units, key=lambda u: -kind_scores.get(u.name, 0.0)) if kind_scores else list(kind_units)
            chosen, best, reachable, start = [], baseline, bool(baseline["passes"]), 1
            if tried and evaluate.left <= 0:  # auto's second search: nothing left to prove anything with
                tried.append({"granularity": kind, "passes": False, "evaluations": 0, "float_nodes": None,
                              "units": [], "skipped": "no evaluations left within max evaluations"})
                continue
            if not baseline["passes"] and ranked:
                start = predicted_start(ranked, kind_details, baseline, config)
                report(0.5, f"searching the fewest exclusions by {kind} (starting at {start})")
                used = evaluate.used
                chosen, best, reachable = _search(evaluate, ranked, start)
                tried.append({"granularity": kind, "passes": bool(reachable), "evaluations": evaluate.used - used,
                              "float_nodes": len(_prefix_nodes(chosen, len(chosen))), "units": [u.name for u in chosen]})
            outcomes.append((ranked, chosen, best, reachable, start, kind_scores, kind_details))
        ran = [i for i, t in enumerate(tried) if not t.get("skipped")]
        if len(ran) > 1:  # the one proving the budget with fewer float nodes (the finer unit on a tie)
            pick = min(ran, key=lambda i: (not tried[i]["passes"], tried[i]["float_nodes"]))
            tried[pick]["chosen"] = True
            outcomes = [outcomes[pick]]
        ranked, chosen, best, reachable, start, scores, details = outcomes[0]
        evaluate.max_evaluations = config.max_evaluations  # the reserved evaluation is the verification's
        verification, check_path = None, Path(tmp) / "recommended.qdq.onnx"
        if chosen and reserve:
            nodes = _prefix_nodes(chosen, len(chosen))
            if start_build is None:
                report(0.95, "rebuilding the recommendation with calib.quantize")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rebuilt = quantize_qdq(spec.onnx_path, amax, config.placement.with_exclusions(
                        exact_pattern(n) for n in nodes), check_path)
                how, n_quantized = "verify: rebuilt by calib.quantize", len(rebuilt.quantized_nodes)
            else:
                report(0.95, "rebuilding the recommendation with calib build")
                check_path, n_quantized = _rebuild(start_build, nodes, Path(tmp) / "verify-build")
                how = "verify: rebuilt by calib build with the start build's settings"
            verification = evaluate.evaluate_model(check_path, why=how, excluded=nodes, quantized=n_quantized)
            if reachable and not verification["passes"]:
                notes.append("the model rebuilt with the recommended exclusions misses the budget although the "
                             "derived candidate met it; treat the recommendation as unconfirmed")
                reachable = False
            best = verification
        search_seconds = round(time.monotonic() - t0, 2)
        speed = speed_curve(evaluate, spec, chosen, check_path if verification is not None else None, base_path, report)
    nodes_out = _prefix_nodes(chosen, len(chosen))
    ranking_rows = [RankedUnit(u.name, u.nodes, scores.get(u.name),
                               {k: v for k, v in details.get(u.name, {}).items() if k != "unit"}).to_dict()
                    for u in ranked]
    data_out = {
        "schema": SCHEMA,
        "model": {"path": str(spec.onnx_path), "sha256": spec.sha256},
        "ranges": ({"source": config.ranges.source,
                    "method": config.ranges.method if config.ranges.from_calibration else "file"}
                   if start_build is None else start_build.ranges_record or None),
        "placement": dataclasses.asdict(config.placement) if start_build is None else start_build.placement_record,
        "start_from": None if start_build is None else start_build.provenance(),
        "dataset": data.info,
        "budget": {"max_drop": config.budget.max_drop, "min_agreement": config.budget.min_agreement,
                   "min_embedding_cosine": config.budget.min_embedding_cosine, "max_evaluations": config.max_evaluations,
                   "model_kind": spec.roles.kind, "statement": budget_note},
        "granularity": config.granularity,
        "ranking_method": ranking_kind if not baseline["passes"] else "none (baseline within budget)",
        "ranking_rows": len(evaluate.rank_idx) if evaluate.rank_log else 0,
        "baseline": baseline,
        "quantized_nodes": base_nodes,
        "float_nodes": float_nodes,
        "warnings": notes,
        "ranking": ranking_rows,
        "search_start": start,
        "searches": tried,
        "ranking_check": ranking_check,
        "segments": {"how": evaluate.segmentation, "cache_mb": config.cache_mb,
                     "cache_hits": evaluate.runner.cache.hits if evaluate.runner else 0,
                     "segment_runs": round(evaluate.runner.segment_runs, 2) if evaluate.runner else 0},
        "ranking_evaluations": evaluate.rank_log,
        "ranking_evaluations_used": len(evaluate.rank_log),
        "evaluations": evaluate.log,
        "evaluations_used": evaluate.used,
        "verification": verification,
        "recommended": {**{k: v for k, v in best.items() if k not in ("excluded", "only", "why", "evaluation")},
                        "units": [u.name for u in chosen], "exclude_nodes": nodes_out, "passes": bool(reachable),
                        "note": _note(baseline, reachable, nodes_out, evaluate, notes)},
        "speed_curve": speed,
        **({"cluster": session.describe()} if session is not None else {}),
        "seconds": round(time.monotonic() - t0, 2),
        "search_seconds": search_seconds,  # FP32 reference, ranking, search and verification; not the speed curve
        "cpu_seconds": round(time.process_time() - cpu0, 2),
    }
    atomic_write_json(out_dir / "sensitivity.json", data_out)
    report(1.0, "done")
    return SensitivityResult.load(out_dir)


def _note(baseline: dict, reachable: bool, nodes: list[str], evaluate: _Evaluator, notes: Sequence[str]) -> str:
    if baseline["passes"]:
        text = "the full placement is already within budget: no exclusions needed"
    elif reachable:
        text = (f"keeping {len(nodes)} node(s) in float brings the build within budget "
                f"({evaluate.used} of {evaluate.max_evaluations} evaluations"
                + (f", plus {len(evaluate.rank_log)} ranking evaluations on {len(evaluate.rank_idx)} texts"
                   if evaluate.rank_log else "") + ")")
    else:
        text = (f"no exclusion set within budget was found in {evaluate.used} evaluations; the best one tried is "
                "recommended; raise --max-evaluations, the budget, or change the placement")
    return "; ".join([*notes, text])


def _search(evaluate: _Evaluator, ranked: Sequence[Unit], start: int = 1) -> tuple[list[Unit], dict, bool]:
    """Fewest top-ranked units whose exclusion passes, then prune; bounded by the evaluator's budget.

    Prefix ``n`` (every unit in float) is the FP32 model and passes without an evaluation, but is
    not a recommendation: then nothing would be quantized."""
    n = len(ranked)
    best_fail: dict | None = None
    low, high, high_entry = 0, n, fp32_entry()  # prefix `low` known to fail; `high` known to pass
    k = max(1, min(start, n))
    while k < n:  # the predicted prefix, then doubling while it fails
        e = evaluate(_prefix_nodes(ranked, k), why=f"keep top {k} ranked unit(s) in float")
        if e is None:
            break
        if e["passes"]:
            high, high_entry = k, e
            break
        best_fail = _better(best_fail, e)
        low = k
        k = min(2 * k, n)
    while high - low > 1:  # bisection between a failing and a passing prefix
        mid = (low + high) // 2
        e = evaluate(_prefix_nodes(ranked, mid), why=f"keep top {mid} ranked unit(s) in float")
        if e is None:
            break
        if e["passes"]:
            high, high_entry = mid, e
        else:
            best_fail = _better(best_fail, e)
            low = mid
    chosen = list(ranked[:high])
    for unit in reversed(list(ranked[:high])):  # put back units the budget does not need, least important first
        if len(chosen) <= 1 or evaluate.left <= 0:
            break
        trial = [u for u in chosen if u is not unit]
        e = evaluate([x for u in trial for x in u.nodes], why=f"put {unit.name} back in INT8")
        if e is not None and e["passes"]:
            chosen, high_entry = trial, e
    if len(chosen) == n:  # only the FP32 model passed: recommend the best failing candidate tried
        if best_fail is None:
            return [], evaluate.log[0], False
        excluded = set(best_fail["excluded"])
        return [u for u in ranked if set(u.nodes) <= excluded], best_fail, False
    return chosen, high_entry, True


def _better(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return b if _rank_key(b) > _rank_key(a) else a


def _loss(entry: Mapping) -> float:
    """What a candidate loses against FP32: the softmax KL for classifiers, 1 − embedding cosine otherwise."""
    if entry.get("kl_softmax") is not None:
        return float(entry["kl_softmax"])
    return 1.0 - float(entry.get("embedding_cosine") or 0.0)


def _rank_key(entry: Mapping) -> tuple[float, float]:
    agreement = entry.get("top1_agreement")
    return (agreement if agreement is not None else 1.0, -_loss(entry))
