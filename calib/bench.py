"""Latency and throughput of FP32 vs INT8 over an evaluation split's length mix.

For each engine (FP32 = ONNX Runtime over the source model, INT8 = the engine folder's INT8 engine)
and each batch size, the texts are run in the same length-bucketed batches as every other stage
(:func:`calib.batching.iter_batches`), after one warm-up pass. Per batch size we report latency
p50/p95 per batch (ms), throughput (texts/s), the engine process's peak memory, and model sizes.
Each engine runs in its own child process so its peak memory is its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import queue as queue_module
import sys
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calib.batching import Encoded, iter_batches
from calib.build import EngineArtifact
from calib.data import DataSpec
from calib.errors import InputError
from calib.evaluation import EvalData, load_eval_data
from calib.io import atomic_write_json, read_json, sha256_file
from calib.model import ModelRef, load_model
from calib.pipeline import config_params
from calib.progress import Phases
from calib.workspace import ProgressFn

BENCH_FILE = "bench.json"
FORMAT = "calib.bench/1"
KINDS = ("fp32", "int8")


@dataclass(frozen=True)
class BenchConfig:
    """``engine``: an engine folder (calib build). ``model``: its tokenizer and max length encode the texts;
    the FP32 baseline is the model the engine was built from, so ``model.model`` is "" (that one) or a
    file with the same contents. Texts: ``data`` (labels unused); at most ``limit`` of them (0 = all), as
    :attr:`calib.evaluation.EvalSettings.limit` counts them."""

    engine: str
    model: ModelRef
    data: DataSpec
    limit: int = 256
    batch_sizes: tuple[int, ...] = (1, 8, 16)
    repeats: int = 2
    threads: int | None = None

    @classmethod
    def upgrade_params(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """0.1's layout: ``tokenizer`` and ``max_length`` beside ``engine`` (no model: the build's), and
        ``max_texts`` for ``limit``."""
        values = dict(values)
        if "max_texts" in values:
            values.setdefault("limit", values.pop("max_texts"))
        if "model" not in values and "tokenizer" in values:
            values["model"] = {"model": "", "tokenizer": values.pop("tokenizer"),
                               **({"max_length": values.pop("max_length")} if "max_length" in values else {})}
        return values


def _check_baseline(config: BenchConfig, artifact: EngineArtifact) -> None:
    """Refuse a named FP32 model that is not the one the engine was built from (it would time another model)."""
    named = config.model.model
    if not named or Path(named).resolve() == artifact.model_path.resolve():
        return
    if not Path(named).is_file():
        raise InputError(f"FP32 model {named} does not exist")
    if sha256_file(named) != artifact.model_sha256:
        raise InputError(f"engine {artifact.dir.name} was built from {artifact.model_path}, not {named}: a benchmark "
                         "times INT8 against the FP32 model it came from (name that model, or none)")


def _eval_data(config: BenchConfig, model_path: Path) -> EvalData:
    """The texts to time, encoded once: at most ``limit``, every k-th row to keep the split's length mix."""
    spec = load_model(model_path, config.model.tokenizer, max_length=config.model.max_length)
    data = replace(config.data, label_column=None)
    return load_eval_data(data, spec, limit=config.limit, sampling="spread")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def throughput(engine: Any, batches: list, repeats: int, tick: Any = None) -> dict[str, Any]:
    """Time ``repeats`` passes over ``batches`` after one warm-up pass (every shape once): per-batch
    latency p50/p95 (ms), texts/s over the timed passes, texts/s of the fastest pass, and texts per
    CPU-second of this process in its cheapest pass (with one ONNX Runtime thread, the figure other
    processes on a shared machine disturb least), and ``pass_spread``: (slowest − fastest pass) ÷
    their mean, the run-to-run noise actually measured (None with one pass). ``tick(message)`` after
    each pass."""
    for batch in batches:
        engine.run(batch.feeds)
    if tick is not None:
        tick("warm-up pass done")
    latencies, passes, cpu = [], [], []
    texts = sum(len(b.rows) for b in batches)
    for repeat in range(repeats):
        started, cpu0 = time.perf_counter(), time.process_time()
        for batch in batches:
            t0 = time.perf_counter()
            engine.run(batch.feeds)
            latencies.append(time.perf_counter() - t0)
        passes.append(time.perf_counter() - started)  # timed passes only: reporting progress costs nothing measured
        cpu.append(time.process_time() - cpu0)
        if tick is not None:
            tick(f"timed pass {repeat + 1}/{repeats} done")
    lat = np.asarray(latencies) * 1000.0
    return {"batches": len(batches), "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "texts_per_s": texts * repeats / sum(passes), "best_texts_per_s": texts / min(passes),
            "cpu_texts_per_s": texts / max(min(cpu), 1e-9),
            "pass_spread": (max(passes) - min(passes)) / (sum(passes) / len(passes)) if len(passes) > 1 else None}


def measure_engine(config: BenchConfig, kind: str, encoded: Encoded,
                   dtypes: dict[str, type], progress_queue: Any = None) -> list[dict[str, Any]]:
    """Rows for one engine kind (runs in a child process). After each pass over the texts it puts
    ``(fraction of this engine's passes, message)`` on ``progress_queue`` (a manager queue) if given."""
    artifact = EngineArtifact.load(config.engine)
    engine = artifact.engine(kind, threads=config.threads)
    n_texts = len(encoded)
    rows = []
    passes, done = len(config.batch_sizes) * (1 + config.repeats), 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress_queue is not None:
            progress_queue.put((done / passes, message))

    for batch_size in config.batch_sizes:
        timing = throughput(engine, list(iter_batches(encoded, dtypes, batch_size)), config.repeats,
                            tick=lambda message, b=batch_size: tick(f"batch size {b}: {message}"))
        rows.append({"engine": engine.name, "kind": kind, "batch_size": batch_size, "texts": n_texts,
                     "batches": timing["batches"], "p50_ms": timing["p50_ms"], "p95_ms": timing["p95_ms"],
                     "texts_per_s": timing["texts_per_s"], "pass_spread": timing["pass_spread"],
                     "peak_rss_mb": _peak_rss_mb()})
    return rows


@dataclass(frozen=True)
class BenchRow:
    """One engine at one batch size: latency per batch p50/p95 (ms), throughput (texts/s), the relative
    spread of its timed passes (None: one pass) and its process's peak memory (MB, a high-water mark)."""

    engine: str
    kind: str  # fp32 | int8
    batch_size: int
    texts: int
    p50_ms: float
    p95_ms: float
    texts_per_s: float
    pass_spread: float | None
    peak_rss_mb: float | None

    @classmethod
    def from_dict(cls, r: Mapping[str, Any]) -> BenchRow:
        return cls(str(r.get("engine", r["kind"])), str(r["kind"]), int(r["batch_size"]), int(r["texts"]),
                   float(r["p50_ms"]), float(r["p95_ms"]), float(r["texts_per_s"]), r.get("pass_spread"),
                   r.get("peak_rss_mb"))


@dataclass(frozen=True)
class BenchResult:
    dir: Path
    meta: dict[str, Any] = field(compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> BenchResult:
        directory = Path(directory)
        path = directory / BENCH_FILE
        if not path.is_file():
            raise InputError(f"{directory} is not a benchmark run (no {BENCH_FILE})")
        meta = read_json(path)
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a benchmark record")
        return cls(directory, meta)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.meta["rows"])

    @property
    def measurements(self) -> list[BenchRow]:
        """The rows, typed: one per engine kind and batch size."""
        return [BenchRow.from_dict(r) for r in self.meta["rows"]]

    @property
    def texts(self) -> int:
        """Texts timed per pass."""
        return max((m.texts for m in self.measurements), default=0)

    @property
    def peak_memory_mb(self) -> dict[str, float]:
        """Per engine kind, its process's peak memory (one figure per process, not per batch size)."""
        peaks: dict[str, float] = {}
        for m in self.measurements:
            if m.peak_rss_mb is not None:
                peaks[m.kind] = max(peaks.get(m.kind, 0.0), float(m.peak_rss_mb))
        return peaks

    @property
    def sizes_mb(self) -> dict[str, float]:
        """Model sizes in MB: ``fp32_model_mb``, ``qdq_model_mb``, ``int8_weights_mb``."""
        return {k: float(v) for k, v in (self.meta.get("sizes") or {}).items()}

    @property
    def lengths(self) -> dict[str, float]:
        """Token lengths of the timed texts: ``p50``, ``p95`` (and what else the run recorded)."""
        return dict(self.meta.get("lengths") or {})

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.meta["config"]["batch_sizes"])

    @property
    def repeats(self) -> int:
        """Timed passes per batch size."""
        return int(self.meta["config"].get("repeats", 1))

    def speedups(self) -> dict[int, float]:
        """INT8 / FP32 throughput per batch size that ran both."""
        return {b: s for b in self.batch_sizes if (s := self.speedup(b)) is not None}

    def speedup(self, batch_size: int) -> float | None:
        """INT8 throughput / FP32 throughput at ``batch_size``."""
        by_kind = {r["kind"]: r["texts_per_s"] for r in self.rows if r["batch_size"] == batch_size}
        if "fp32" in by_kind and "int8" in by_kind and by_kind["fp32"]:
            return by_kind["int8"] / by_kind["fp32"]
        return None

    def summary(self) -> dict[str, Any]:
        return {f"speedup_b{b}": round(s, 3) for b, s in self.speedups().items()}


def model_sizes(artifact: Any) -> dict[str, float]:
    """File sizes (MB) of the FP32 and Q/DQ models, and the Q/DQ model's weight bytes if the
    quantized weights were stored as INT8 (what a TensorRT engine keeps)."""
    qdq = onnx.load(str(artifact.qdq_path))
    inits = {t.name: t for t in qdq.graph.initializer}
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits}
    weight_bytes = 0
    for name, tensor in inits.items():
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        weight_bytes += count if name in quantized else count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return {"fp32_model_mb": artifact.model_path.stat().st_size / 2**20,
            "qdq_model_mb": artifact.qdq_path.stat().st_size / 2**20,
            "int8_weights_mb": weight_bytes / 2**20}


@contextlib.contextmanager
def bare_main():
    """Start worker processes from a bare ``__main__``.

    multiprocessing's *spawn* re-runs the parent's main script in every child before the target (which
    lives in this module, so the child needs nothing from it). A host that runs user scripts as
    ``__main__`` — the Streamlit app runs each page so — would have every worker execute the page,
    outside any UI (hundreds of "missing ScriptRunContext" warnings, and the page's work twice).
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield
        return
    bare = types.ModuleType("__main__")
    sys.modules["__main__"] = bare
    try:
        yield
    finally:
        if sys.modules.get("__main__") is bare:  # unless the host swapped in its own since
            sys.modules["__main__"] = main


def benchmark(config: BenchConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> BenchResult:
    """Measure FP32 and INT8 at each batch size; write ``bench.json`` into ``out_dir``."""
    report = progress or (lambda fraction, message="": None)
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise InputError(f"batch sizes must be positive integers, got {config.batch_sizes}")
    if config.repeats < 1:
        raise InputError(f"repeats must be at least 1, got {config.repeats}")
    artifact = EngineArtifact.load(config.engine)
    _check_baseline(config, artifact)
    artifact.engine("fp32", threads=1)  # validates the FP32 model (exists, same sha256) up front
    data = _eval_data(config, artifact.model_path)
    dtypes = load_model(artifact.model_path, config.model.tokenizer, max_length=config.model.max_length).input_dtypes
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    phases = Phases(report, [(_engine_phase(kind), 1.0) for kind in KINDS], span=0.98)
    with bare_main():
        manager = context.Manager()  # started here (its server is a process of its own)
    with manager:
        queue = manager.Queue()
        for kind in KINDS:
            phase = phases.phase(_engine_phase(kind))
            phase(0.0, f"{len(data)} texts x batch sizes {list(config.batch_sizes)}, {config.repeats} timed passes each")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                with bare_main():  # the worker process starts here
                    future = pool.submit(measure_engine, config, kind, data.encoded, dtypes, queue)
                _relay(queue, future, phase)
                rows += future.result()
    sizes = model_sizes(artifact)
    lengths = _length_mix(data.encoded)
    meta = {"format": FORMAT, "config": config_params(config), "engine_summary": artifact.summary(),
            "rows": rows, "sizes": sizes, "lengths": lengths}
    atomic_write_json(Path(out_dir) / BENCH_FILE, meta)
    report(1.0, "done")
    return BenchResult.load(out_dir)


def _engine_phase(kind: str) -> str:
    return f"{kind.upper()} engine"


def _relay(queue: Any, future: concurrent.futures.Future, progress: ProgressFn) -> None:
    """Pass the child's progress messages on until it has finished (and its last messages are read)."""
    while True:
        try:
            progress(*queue.get(timeout=0.5))
        except queue_module.Empty:
            if future.done():
                break


def _length_mix(encoded: Encoded) -> dict[str, float]:
    lengths = encoded.lengths
    return {"p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
            "max": float(lengths.max()), "truncated": float(encoded.truncation_rate)}
