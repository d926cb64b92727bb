"""Reference ranges for engine tests: per-tensor absmax of an FP32 ONNX Runtime run (no calibrator)."""

from __future__ import annotations

import numpy as np
import onnx

from calib.batching import encode, iter_batches
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.model import load_tokenizer
from calib.placement import Placement, resolve_placement


def absmax_ranges(spec, texts, preset: str = "all", batch_size: int = 16) -> dict[str, float]:
    """amax = max |x| over the texts for every tensor the preset needs (inf stays inf)."""
    names = resolve_placement(onnx.load(str(spec.onnx_path)), Placement(preset)).activation_tensors
    engine = OrtEngine(OrtSessionLoader(spec.onnx_path, intermediates=tuple(names), threads=1))
    encoded = encode(load_tokenizer(spec.tokenizer_dir), texts, max_length=spec.max_length)
    amax: dict[str, float] = {}
    for batch in iter_batches(encoded, spec.input_dtypes, batch_size):
        for name, value in engine.run(batch.feeds, list(names)).items():
            if value.dtype.kind == "f" and value.size:
                amax[name] = max(amax.get(name, 0.0), float(np.max(np.abs(value))))
    return amax


def run_both(fp32, int8, spec, texts, batch_size: int = 16):
    """(fp32 outputs, int8 outputs) concatenated over length-bucketed batches, in batch order."""
    encoded = encode(load_tokenizer(spec.tokenizer_dir), texts, max_length=spec.max_length)
    a: dict[str, list] = {}
    b: dict[str, list] = {}
    for batch in iter_batches(encoded, spec.input_dtypes, batch_size):
        for store, engine in ((a, fp32), (b, int8)):
            for k, v in engine.run(batch.feeds).items():
                store.setdefault(k, []).append(v)
    return ({k: np.concatenate(v) for k, v in a.items()}, {k: np.concatenate(v) for k, v in b.items()})
