"""INT8 engines on the real demo model (MiniLM-L6 + linear head): the Q/DQ model from the
`tensorrt` placement runs on ONNX Runtime's integer kernels and agrees with FP32 on most eval texts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from absmax import absmax_ranges, run_both

from calib.build import BuildConfig, EngineArtifact, build
from calib.calibrate import RangesRef
from calib.engines.ort import optimized_op_counts
from calib.quantize import quantized_around
from calib.ranges import Ranges

pytestmark = pytest.mark.demo

CAL_TEXTS, EVAL_TEXTS = 64, 96


def _texts(task, split, n):
    from calib.data import load_rows, texts_of

    spec = task.data(split)
    texts, _ = texts_of(load_rows(spec), spec)
    return [texts[i] for i in np.linspace(0, len(texts) - 1, min(n, len(texts))).astype(int)]


@pytest.mark.parametrize("task_name", ["bbc-topic", "rt-sentiment"])
def test_demo_int8_agrees_with_fp32(demo_workspace, task_name, tmp_path):
    from calib.demo import load_demo_task

    task = load_demo_task(task_name, demo_workspace)
    amax = absmax_ranges(task.model, _texts(task, "calibration", CAL_TEXTS), preset="tensorrt", batch_size=8)
    ranges = tmp_path / "ranges.json"
    Ranges(method="minmax", params={}, model_sha256=task.model.sha256,
           amax={k: (v if np.isfinite(v) else 0.0) for k, v in amax.items()}).save(ranges)
    build(BuildConfig(model=str(task.model.onnx_path), ranges=RangesRef(str(ranges)), profile=(1, 16, 32, 8, 128, task.max_length)),
          tmp_path / "engine")
    art = EngineArtifact.load(tmp_path / "engine")
    assert quantized_around(onnx.load(str(art.qdq_path), load_external_data=False),
                            ("LayerNormalization", "Softmax")) == {}
    ops = optimized_op_counts(art.qdq_path)
    assert ops.get("MatMulIntegerToFloat", 0) + ops.get("QLinearMatMul", 0) >= 6 * 6  # 6 dense per layer
    assert ops.get("MatMul", 0) == 0

    fp32, int8 = art.engine("fp32", threads=1), art.engine("int8", threads=1)
    a, b = run_both(fp32, int8, task.model, _texts(task, "eval", EVAL_TEXTS), batch_size=16)
    agreement = np.mean(a["logits"].argmax(1) == b["logits"].argmax(1))
    cosine = np.sum(a["embedding"] * b["embedding"], axis=1)
    # minmax ranges from 64 texts, no exclusions: expect >= 90 % top-1 agreement, mean cosine >= 0.9
    assert agreement >= 0.90, f"{task_name}: top-1 agreement {agreement:.3f}"
    assert cosine.mean() >= 0.90, f"{task_name}: mean embedding cosine {cosine.mean():.3f}"
