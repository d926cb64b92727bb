"""Command lines for building the engine on a GPU machine, when TensorRT is not available here.

An engine folder is portable: ``trtexec.sh`` names only files inside it (the FP32 model is
cloned (copy-on-write, where the file system can) or copied into the folder as ``model.fp32.onnx``,
together with any external-data files it refers to; never hard-linked, so a model re-exported in
place does not change finished builds), and it ``cd``s to its own folder
first, so the folder can be copied to the GPU machine as it is. ``bash trtexec.sh 10 --dry-run``
checks that every file the route reads exists and prints the resolved command instead of running it.

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
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from calib.errors import InputError
from calib.io import atomic_write_text

TRTEXEC_CACHE_ALGORITHM = "EntropyCalibration2"  # the calibrator trtexec --calib instantiates
FP32_FILE = "model.fp32.onnx"  # the FP32 model's name inside an engine folder
ROUTES = ("11", "10", "modelopt")


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


_ROUTE_COMMENTS = {
    "11": "TensorRT 11.x: explicit quantization from the Q/DQ ONNX (strongly typed)",
    "10": "TensorRT 8.6-10.x: implicit INT8 from the FP32 ONNX and our calibration cache",
    "modelopt": "NVIDIA ModelOpt (releases with --calibration_cache_path) imports our cache",
}
_USAGE = "usage: bash trtexec.sh [11|10|modelopt] [--dry-run]"


@dataclass(frozen=True)
class TrtexecCommands:
    trt11: str  # build from the Q/DQ model (explicit quantization)
    trt10: str  # build from the FP32 model with our calibration cache (implicit quantization)
    modelopt: str  # ModelOpt Q/DQ model from our calibration cache
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # route -> files it reads

    def command(self, route: str) -> str:
        return {"11": self.trt11, "10": self.trt10, "modelopt": self.modelopt}[route]

    def script(self, *, header: Sequence[str] = ()) -> str:
        """A bash script (``trtexec.sh``) holding the three routes; pass ``11``, ``10`` or ``modelopt``,
        and ``--dry-run`` to check the files and print the resolved command without running it."""
        comments = "".join(f"# {line}\n" for line in header)
        routes = "".join(
            f"  {route})  # {_ROUTE_COMMENTS[route]}\n"
            f"    need {' '.join(shlex.quote(f) for f in self.reads.get(route, ())) or '-'}\n"
            f"    run {self.command(route)}\n    ;;\n"
            for route in ROUTES)
        return (
            "#!/usr/bin/env bash\n"
            "# Build a TensorRT engine from this folder on a machine with an NVIDIA GPU and TensorRT.\n"
            "# Every file it reads is in this folder: copy the folder to the GPU machine as it is.\n"
            f"{comments}"
            f"# Usage: bash trtexec.sh [11|10|modelopt] [--dry-run]   (default 11)\n"
            "#   --dry-run: check the files the route reads, print the command, run nothing\n"
            "set -euo pipefail\n"
            'cd "$(dirname "$0")"\n'
            "route=11\n"
            "dry_run=0\n"
            'for arg in "$@"; do\n'
            '  case "$arg" in\n'
            "    --dry-run) dry_run=1 ;;\n"
            "    11|10|modelopt) route=$arg ;;\n"
            f'    *) echo "{_USAGE}" >&2; exit 2 ;;\n'
            "  esac\n"
            "done\n"
            "need() {\n"
            '  for file in "$@"; do\n'
            '    [ "$file" = - ] && continue\n'
            '    if [ ! -f "$file" ]; then echo "trtexec.sh: missing $PWD/$file" >&2; exit 1; fi\n'
            '    if [ "$dry_run" = 1 ]; then echo "reads $PWD/$file"; fi\n'
            "  done\n"
            "}\n"
            "run() {\n"
            '  if [ "$dry_run" = 1 ]; then echo "in $PWD:"; printf \'%q \' "$@"; echo; else "$@"; fi\n'
            "}\n"
            'case "$route" in\n'
            f"{routes}"
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
    """The exact command lines; paths are used as given (relative to the engine folder: keep
    them inside it, see :func:`bundle_model`)."""
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
    reads = {"11": (qdq_onnx,), "10": (fp32_onnx, cache), "modelopt": (fp32_onnx, cache)}
    return TrtexecCommands(trt11=trt11, trt10=trt10, modelopt=_join(modelopt_args), reads=reads)


def external_data_files(model: onnx.ModelProto) -> tuple[str, ...]:
    """Relative paths of the external-data files a model's tensors live in (models over 2 GB)."""
    def tensors(graph: onnx.GraphProto):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    found: dict[str, None] = {}
    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                found[location] = None
    return tuple(found)


_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): a copy-on-write clone (Btrfs, XFS, bcachefs, ...)


def link_or_copy(src: Path, dst: Path) -> str:
    """Put an independent copy of ``src`` at ``dst``: a copy-on-write clone where the file system
    supports one (no extra disk until either file changes), else a plain copy. Returns ``"reflink"``
    or ``"copy"``.

    Never a hard link: tools that save a model (``onnx.save``, ``torch.onnx.export``) rewrite the file
    in place, so a re-export to the same path would change every finished build sharing its inode."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl

        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        shutil.copystat(src, dst)
        return "reflink"
    except (OSError, ImportError):  # no clone here (ext4, tmpfs, another file system, not Linux)
        shutil.copyfile(src, dst)
        return "copy"


def bundle_model(model_path: Path, model: onnx.ModelProto, out_dir: Path, name: str = FP32_FILE) -> dict:
    """Place the FP32 model (and its external-data files, same relative paths) in ``out_dir`` so the
    engine folder is self-contained; returns ``{"file", "how", "external_data"}`` for the record."""
    model_path = Path(model_path)
    extra = external_data_files(model)
    for location in extra:
        source = (model_path.parent / location).resolve()
        target = (out_dir / location).resolve()
        if not source.is_file():
            raise InputError(f"ONNX model {model_path} refers to external data {location} that does not exist")
        if out_dir.resolve() not in target.parents:
            raise InputError(f"ONNX model {model_path}: external data path {location!r} leaves the model's folder")
        link_or_copy(source, target)
    how = link_or_copy(model_path, out_dir / name)
    return {"file": name, "how": how, "external_data": list(extra)}


def write_text(path: Path, text: str, *, executable: bool = False) -> Path:
    atomic_write_text(path, text)
    if executable:
        path.chmod(0o755)
    return path
