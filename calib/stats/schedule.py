"""Running the batches: the ORT session with the collected tensors exposed as graph outputs, and the
schedule that hands each batch's outputs to the accumulators (in the calling thread, overlapped with
the next ORT run in a background thread, or split over threads for batches too large to keep two of)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import OrtValue

from calib.batching import Batch
from calib.engines.ort import OrtSessionLoader, expose_outputs, exposed_model_bytes
from calib.model import read_onnx
from calib.stats.config import StatsConfig
from calib.stats.selection import _tensor_types


def _exposing_session(onnx_path: Path, graph: onnx.ModelProto, names: Sequence[str], cfg: StatsConfig):
    """An ORT session of the model with ``names`` as extra graph outputs. The weights are not
    re-serialized unless they live in external files (then the model is loaded and re-serialized)."""
    spinning = False if cfg.overlap else None  # idle ORT threads must not busy-wait on the accumulators' cores
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    if external:
        model: onnx.ModelProto | bytes = expose_outputs(read_onnx(onnx_path), names)
    else:
        model = exposed_model_bytes(onnx_path, names, elem_types=_tensor_types(graph),
                                    known=[o.name for o in graph.graph.output])
    return OrtSessionLoader(model, threads=cfg.threads, optimization=cfg.optimization, spinning=spinning)()


def _balanced_parts(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``parts`` groups of similar total size (largest first, greedy)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        k = totals.index(min(totals))
        groups[k].append(i)
        totals[k] += sizes[i]
    return [g for g in groups if g]


def _run_batches(session, names: Sequence[str], batches: Iterator[Batch],
                 work: Callable[[list[np.ndarray], Batch, Sequence[int]], None], *, workers: int,
                 after: Callable[[Batch], None], overlap_max_bytes: float = np.inf) -> None:
    """Run every batch and hand its outputs to ``work(arrays, batch, tensor_indices)``.

    ``workers`` 1: everything in the calling thread. Otherwise, a batch whose outputs take at most
    ``overlap_max_bytes`` is accumulated by one background thread while ORT (which releases the GIL)
    runs the next batch (two batches of activations alive); a larger one is accumulated before the
    next run, its tensors split over ``workers`` threads (one batch alive). Outputs are numpy views of
    ORT's own buffers (no copy)."""
    everything = range(len(names))

    def run(batch: Batch) -> tuple[list, list[np.ndarray]]:
        feeds = {k: OrtValue.ortvalue_from_numpy(v) for k, v in batch.feeds.items()}
        values = session.run_with_ort_values(list(names), feeds)
        return values, [v.numpy() for v in values]  # the OrtValues own the memory: keep them alive

    if workers < 2:
        for batch in batches:
            _, arrays = run(batch)
            work(arrays, batch, everything)
            del arrays, _
            after(batch)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calib-stats") as pool:
        pending: Future | None = None
        pending_batch: Batch | None = None
        for batch in batches:
            values, arrays = run(batch)
            if pending is not None:
                pending.result()  # re-raises the worker's error
                after(pending_batch)
                pending = None
            sizes = [a.nbytes for a in arrays]
            if sum(sizes) > overlap_max_bytes:
                jobs = [pool.submit(work, arrays, batch, part) for part in _balanced_parts(sizes, workers)]
                for job in jobs:
                    job.result()
                after(batch)
            else:
                pending = pool.submit(lambda a=arrays, v=values, b=batch: work(a, b, everything))
                pending_batch = batch
            del values, arrays
        if pending is not None:
            pending.result()
            after(pending_batch)
