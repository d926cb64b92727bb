"""Everything around TensorRT that can be checked without TensorRT: availability, the refusal and its
alternative, the exact trtexec command lines, the calibrator's control flow, and the static type
check of calib/engines/tensorrt.py against the 10.x API. No engine is ever built or faked here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from calib.engines import tensorrt as trt_backend
from calib.engines.trtexec import ShapeProfile, trtexec_commands
from calib.errors import BackendUnavailableError, InputError

ROOT = Path(__file__).resolve().parent.parent
TRT_PRESENT = trt_backend.tensorrt_status().available


@pytest.mark.skipif(TRT_PRESENT, reason="TensorRT is usable on this machine")
def test_status_says_not_installed():
    status = trt_backend.tensorrt_status()
    assert status.available is False and status.version is None
    assert status.reason.startswith("TensorRT is not installed")
    with pytest.raises(BackendUnavailableError, match="not installed.*trtexec.sh"):
        trt_backend.require_tensorrt("use trtexec.sh")
    with pytest.raises(BackendUnavailableError):
        trt_backend.TensorRTEngine("model.plan")


def test_calib_imports_without_tensorrt():
    code = ("import sys, calib, calib.build, calib.bench, calib.engines.tensorrt, calib.cli.build, calib.cli;"
            "calib.cli.build_parser(); print('tensorrt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_trtexec_commands_exact():
    commands = trtexec_commands(
        fp32_onnx="/models/my model.onnx", qdq_onnx="model.qdq.onnx", cache="calibration.cache",
        inputs=("input_ids", "attention_mask"), profile=ShapeProfile(1, 16, 32, 8, 128, 256),
        nodes_to_exclude=("layer.0/output/dense/MatMul",),
    )
    shapes = ("    --minShapes=input_ids:1x8,attention_mask:1x8 \\\n"
              "    --optShapes=input_ids:16x128,attention_mask:16x128 \\\n"
              "    --maxShapes=input_ids:32x256,attention_mask:32x256 \\\n")
    assert commands.trt11 == ("trtexec \\\n    --onnx=model.qdq.onnx \\\n" + shapes +
                              "    --saveEngine=model.trt11.plan \\\n    --timingCacheFile=timing.cache")
    assert commands.trt10 == ("trtexec \\\n    --onnx='/models/my model.onnx' \\\n    --int8 \\\n"
                              "    --calib=calibration.cache \\\n" + shapes +
                              "    --saveEngine=model.trt10.plan \\\n    --timingCacheFile=timing.cache")
    assert commands.modelopt == (
        "python \\\n    -m \\\n    modelopt.onnx.quantization \\\n    --onnx_path='/models/my model.onnx' \\\n"
        "    --quantize_mode=int8 \\\n    --calibration_cache_path=calibration.cache \\\n"
        "    --output_path=model.modelopt.qdq.onnx \\\n    --op_types_to_quantize \\\n    MatMul \\\n    Gemm \\\n"
        "    --nodes_to_exclude \\\n    '^layer\\.0/output/dense/MatMul$'")
    script = commands.script(header=("model: x",))
    assert script.startswith("#!/usr/bin/env bash\n") and "# model: x\n" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


def test_shape_profile():
    with pytest.raises(InputError, match="min <= opt <= max"):
        ShapeProfile(1, 16, 8, 8, 128, 256)
    profile = ShapeProfile.from_calibration_set({"shapes": {"min": [1, 8], "opt": [16, 64], "max": [32, 256]}})
    assert profile.shapes() == ((1, 8), (16, 64), (32, 256))
    with pytest.raises(InputError, match="min/opt/max"):
        ShapeProfile.from_calibration_set({"sequence": {}})


class HostMemory:
    """Stands in for device memory in control-flow tests: records what would be uploaded."""

    def __init__(self):
        self.buffers: dict[int, bytes] = {}
        self.freed: list[int] = []
        self.allocs: list[int] = []

    def alloc(self, nbytes):
        ptr = 0x1000 * (len(self.allocs) + 1)
        self.allocs.append(nbytes)
        return ptr

    def upload(self, ptr, array):
        self.buffers[ptr] = array.tobytes()

    def free(self, ptr):
        self.freed.append(ptr)


def _batches(n, rows=4, seq=8):
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 50, (rows, seq)), "attention_mask": np.ones((rows, seq), np.int64)}
            for _ in range(n)]


def test_calibrator_streams_batches_through_reused_buffers(tmp_path):
    memory, batches = HostMemory(), _batches(3)
    logic = trt_backend.CalibratorLogic(batch_size=4, batches=iter(batches), max_shape=(4, 16), memory=memory,
                                        input_dtypes={"input_ids": np.int32}, cache_out=tmp_path / "out.cache")
    names = ["input_ids", "attention_mask"]
    first = logic.get_batch(names)
    assert first == [0x1000, 0x2000] and memory.allocs == [4 * 16 * 4, 4 * 16 * 8]  # sized for max_shape
    assert memory.buffers[0x1000] == batches[0]["input_ids"].astype(np.int32).tobytes()
    assert logic.get_batch(names) == first and logic.get_batch(names) == first  # same buffers reused
    assert memory.buffers[0x2000] == batches[2]["attention_mask"].tobytes()
    assert logic.get_batch(names) is None and logic.batches_served == 3
    assert logic.read_calibration_cache() is None
    logic.write_calibration_cache(memoryview(b"TRT-100300-EntropyCalibration2\nx: 3c010204\n"))
    assert (tmp_path / "out.cache").read_bytes().startswith(b"TRT-100300")
    logic.release()
    assert sorted(memory.freed) == [0x1000, 0x2000]


def test_calibrator_replays_cache_bytes_without_data():
    cache = b"TRT-100300-EntropyCalibration2\nlayer/MatMul_out: 3c010204\n"
    logic = trt_backend.CalibratorLogic(batch_size=16, cache=cache)
    assert logic.read_calibration_cache() == cache
    assert logic.get_batch(["input_ids"]) is None and logic.get_batch_size() == 16


def test_calibrator_rejects_bad_batches():
    with pytest.raises(InputError, match="cache or calibration batches"):
        trt_backend.CalibratorLogic(batch_size=4)
    logic = trt_backend.CalibratorLogic(batch_size=8, batches=_batches(1), memory=HostMemory())
    with pytest.raises(InputError, match="has 4 rows, expected 8"):
        logic.get_batch(["input_ids"])
    logic = trt_backend.CalibratorLogic(batch_size=4, batches=_batches(1), memory=HostMemory())
    with pytest.raises(InputError, match="token_type_ids"):
        logic.get_batch(["input_ids", "token_type_ids"])


def test_make_calibrator_subclasses_the_requested_tensorrt_base():
    class Base:
        def __init__(self):
            self.base_initialised = True

    fake = types.SimpleNamespace(IInt8EntropyCalibrator2=type("Entropy2", (Base,), {}),
                                 IInt8MinMaxCalibrator=type("MinMax", (Base,), {}))
    cache = b"TRT-100300-MinMaxCalibration\n"
    calibrator = trt_backend.make_calibrator(fake, trt_backend.CalibratorLogic(batch_size=2, cache=cache), "minmax")
    assert isinstance(calibrator, fake.IInt8MinMaxCalibrator) and calibrator.base_initialised
    assert calibrator.read_calibration_cache() == cache and calibrator.get_batch(["x"]) is None
    assert calibrator.get_batch_size() == 2
    with pytest.raises(InputError, match="entropy, minmax"):
        trt_backend.make_calibrator(fake, calibrator.logic, "percentile")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_bindings") is None and not os.environ.get("CI"),
                    reason="needs `pip install --no-deps tensorrt-stubs==10.13.0.35.1` (make install does it)")
def test_tensorrt_module_type_checks_against_the_10x_stubs():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "typecheck_tensorrt.py")],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout
