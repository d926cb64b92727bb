"""Command lines for building the engine on a GPU machine, when TensorRT is not available here.

Three routes, all from files written next to each other in an engine folder:

- TensorRT 11.x: ``trtexec --onnx=<Q/DQ model>`` (explicit quantization; networks are always
  strongly typed, ``--int8`` and ``--calib`` no longer exist) with the optimisation profile.
- TensorRT 8.6-10.x: ``trtexec --onnx=<FP32 model> --int8 --calib=<cache>`` (implicit quantization
  from our calibration cache; trtexec's calibrator is EntropyCalibration2, so the cache carries
  that header whatever calibrator computed the ranges).
- NVIDIA ModelOpt: ``python -m modelopt.onnx.quantization ... --calibration_cache_path=<cache>``
  turns the same cache into ModelOpt's own Q/DQ model (releases that still accept that option).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calib.errors import InputError

TRTEXEC_CACHE_ALGORITHM = "EntropyCalibration2"  # the calibrator trtexec --calib instantiates


@dataclass(frozen=True)
class ShapeProfile:
    """An optimisation profile: min / opt / max batch size and sequence length (tokens)."""

    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 32
    min_seq: int = 8
    opt_seq: int = 128
    max_seq: int = 256

    def __post_init__(self) -> None:
        for kind, (lo, mid, hi) in (("batch", (self.min_batch, self.opt_batch, self.max_batch)),
                                    ("sequence length", (self.min_seq, self.opt_seq, self.max_seq))):
            if not 1 <= lo <= mid <= hi:
                raise InputError(f"optimisation profile {kind} must satisfy 1 <= min <= opt <= max, got {lo}/{mid}/{hi}")

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(B, T) shapes for min, opt and max."""
        return ((self.min_batch, self.min_seq), (self.opt_batch, self.opt_seq), (self.max_batch, self.max_seq))

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @classmethod
    def from_calibration_set(cls, profile: dict) -> ShapeProfile:
        """From a CalibrationSet manifest's ``profile`` (``shapes``: {min, opt, max: [batch, seq]})."""
        try:
            (b0, s0), (b1, s1), (b2, s2) = (profile["shapes"][k] for k in ("min", "opt", "max"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"calibration set profile has no min/opt/max shapes ({exc})") from exc
        return cls(int(b0), int(b1), int(b2), int(s0), int(s1), int(s2))


def _shape_arg(inputs: Sequence[str], shape: tuple[int, int]) -> str:
    batch, seq = shape
    return ",".join(f"{name}:{batch}x{seq}" for name in inputs)


def _profile_args(inputs: Sequence[str], profile: ShapeProfile) -> list[str]:
    low, opt, high = profile.shapes()
    return [f"--minShapes={_shape_arg(inputs, low)}", f"--optShapes={_shape_arg(inputs, opt)}",
            f"--maxShapes={_shape_arg(inputs, high)}"]


def _join(args: Sequence[str]) -> str:
    """One command line, continued over lines with backslashes; every word shell-quoted."""
    quoted = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            quoted.append(f"{flag}={shlex.quote(value)}")
        else:
            quoted.append(shlex.quote(arg))
    return " \\\n    ".join(quoted)


@dataclass(frozen=True)
class TrtexecCommands:
    trt11: str  # build from the Q/DQ model (explicit quantization)
    trt10: str  # build from the FP32 model with our calibration cache (implicit quantization)
    modelopt: str  # ModelOpt Q/DQ model from our calibration cache

    def script(self, *, header: Sequence[str] = ()) -> str:
        """A bash script (``trtexec.sh``) holding the three routes; pass ``11``, ``10`` or ``modelopt``."""
        comments = "".join(f"# {line}\n" for line in header)
        return (
            "#!/usr/bin/env bash\n"
            "# Build a TensorRT engine from this folder on a machine with an NVIDIA GPU and TensorRT.\n"
            f"{comments}"
            "# Usage: bash trtexec.sh [11|10|modelopt]   (default 11)\n"
            "set -euo pipefail\n"
            'cd "$(dirname "$0")"\n'
            'case "${1:-11}" in\n'
            "  11)  # TensorRT 11.x: explicit quantization from the Q/DQ ONNX (strongly typed)\n"
            f"    {self.trt11}\n    ;;\n"
            "  10)  # TensorRT 8.6-10.x: implicit INT8 from the FP32 ONNX and our calibration cache\n"
            f"    {self.trt10}\n    ;;\n"
            "  modelopt)  # NVIDIA ModelOpt (releases with --calibration_cache_path) imports our cache\n"
            f"    {self.modelopt}\n    ;;\n"
            '  *) echo "usage: bash trtexec.sh [11|10|modelopt]" >&2; exit 2 ;;\n'
            "esac\n"
        )


def trtexec_commands(
    *,
    fp32_onnx: str,
    qdq_onnx: str,
    cache: str,
    inputs: Sequence[str],
    profile: ShapeProfile,
    engine_name: str = "model",
    timing_cache: str = "timing.cache",
    op_types: Sequence[str] = ("MatMul", "Gemm"),
    nodes_to_exclude: Sequence[str] = (),
) -> TrtexecCommands:
    """The exact command lines; paths are used as given (relative to the engine folder)."""
    if not inputs:
        raise InputError("the model has no inputs to shape; cannot write trtexec commands")
    shapes = _profile_args(inputs, profile)
    trt11 = _join(["trtexec", f"--onnx={qdq_onnx}", *shapes, f"--saveEngine={engine_name}.trt11.plan",
                   f"--timingCacheFile={timing_cache}"])
    trt10 = _join(["trtexec", f"--onnx={fp32_onnx}", "--int8", f"--calib={cache}", *shapes,
                   f"--saveEngine={engine_name}.trt10.plan", f"--timingCacheFile={timing_cache}"])
    modelopt_args = ["python", "-m", "modelopt.onnx.quantization", f"--onnx_path={fp32_onnx}",
                     "--quantize_mode=int8", f"--calibration_cache_path={cache}",
                     f"--output_path={engine_name}.modelopt.qdq.onnx"]
    if op_types:
        modelopt_args += ["--op_types_to_quantize", *op_types]
    if nodes_to_exclude:
        modelopt_args += ["--nodes_to_exclude", *(f"^{re.escape(name)}$" for name in nodes_to_exclude)]
    return TrtexecCommands(trt11=trt11, trt10=trt10, modelopt=_join(modelopt_args))


def write_text(path: Path, text: str, *, executable: bool = False) -> Path:
    from calib.io import atomic_write_text

    atomic_write_text(path, text)
    if executable:
        path.chmod(0o755)
    return path
