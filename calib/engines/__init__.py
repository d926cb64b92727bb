"""Inference backends and their registry: the one place a backend is defined.

Every backend exposes the same small :class:`~calib.engines.base.Engine` interface (``run(feeds)``).
A :class:`Backend` entry says how to get one: its name (``calib build --backend NAME``, the app's
backend options, ``engine.json``'s ``backend``), an availability check with a reason, how to build
its engine file from the build folder (the Q/DQ model, the calibration cache, the shape profile),
and how to load that file into an :class:`Engine`. ``calib.build`` (choices, refusal, building),
``EngineArtifact.engine`` (which engine a build folder runs), ``calib.validate.int8_engine``,
``calib build --backend`` and the app's Build page all derive from :data:`REGISTRY`.

Built-in backends:

- ``ort``: ONNX Runtime on the CPU over the Q/DQ model itself (nothing more to build; always here).
- ``tensorrt``: a serialized TensorRT engine (``model.plan``) built by :mod:`calib.engines.tensorrt`
  when TensorRT and a GPU are present; otherwise refused with the reason (never faked). That module
  imports TensorRT itself only when called, so this registry imports everywhere.

Adding a backend is one module (its engine class and build function) and one :func:`register` call::

    from calib.engines import Backend, BackendStatus, EngineBuildRequest, register

    def build_mine(request: EngineBuildRequest) -> dict:          # writes request.engine_path
        ...; return {"seconds": 1.2}                              # recorded in engine.json
    register(Backend("mine", title="MyRuntime", label="MyRuntime engine", engine_file="model.mine",
                     status=lambda: BackendStatus(True, "MyRuntime 1.0", "1.0"), build=build_mine,
                     load=lambda path, threads: MyEngine(path), engine_name="mine-int8"))

(``tests/test_backends.py`` registers such a toy backend and builds and validates with it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from calib.engines.base import Engine
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.engines.tensorrt import (
    TensorRTEngine,
    TrtBuildRequest,
    _import_tensorrt,
    build_engine,
    major_version,
    tensorrt_status,
)
from calib.errors import InputError, check_choice
from calib.io import sha256_file

if TYPE_CHECKING:
    from calib.engines.trtexec import ShapeProfile

PLAN_FILE = "model.plan"  # the TensorRT backend's engine file inside a build folder
PORTABLE_BACKEND = "ort"
"""The backend that runs everywhere (the Q/DQ model on ONNX Runtime's CPU kernels): the default, what a
bare Q/DQ ``.onnx`` runs on, and what an unavailable backend falls back to."""
DEPLOYMENT_TARGET = "tensorrt"
"""The backend calib's engines ship on: every build records whether it is usable here and writes its
``trtexec`` commands, whichever backend built the folder."""


class BackendStatus(NamedTuple):
    """Whether a backend can build and run engines here, why (shown as is), and its version."""

    available: bool
    reason: str
    version: str | None


@dataclass(frozen=True)
class EngineBuildRequest:
    """What a backend's ``build`` gets: the build folder's files and the settings a backend may use.
    It writes ``engine_path`` (inside the build folder) and returns JSON metadata for engine.json."""

    out_dir: Path
    engine_path: Path  # out_dir / Backend.engine_file
    qdq_model: Path  # the Q/DQ model (explicit quantization)
    fp32_model: Path  # the float model the Q/DQ model was made from (after migration, if any)
    model_sha256: str  # of the original FP32 model (what validation compares against)
    inputs: tuple[str, ...]
    profile: ShapeProfile
    calibration_cache: Path  # TensorRT calibration cache of the quantized tensors
    mode: str = "auto"  # TensorRT: auto | explicit | implicit
    timing_cache: Path | None = None


@dataclass(frozen=True)
class Backend:
    """One inference backend. ``engine_file`` None: the backend runs the folder's Q/DQ model and has
    nothing to build (``build`` None); else ``build`` writes that file and ``load`` runs it.
    ``load(path, threads) -> Engine``; its engine is named ``engine_name`` in evaluations."""

    name: str
    title: str  # "TensorRT": messages say "<title> is not usable here"
    label: str  # the app's option text
    status: Callable[[], BackendStatus]
    load: Callable[[Path, int | None], Engine]
    engine_name: str
    engine_file: str | None = None
    build: Callable[[EngineBuildRequest], dict[str, Any]] | None = None


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (``replace`` to redefine an existing name)."""
    if not backend.name or not backend.name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"backend name {backend.name!r} must be letters, digits, '-' or '_'")
    if backend.name in REGISTRY and not replace:
        raise InputError(f"backend {backend.name!r} is already registered")
    if (backend.engine_file is None) != (backend.build is None):
        raise InputError(f"backend {backend.name!r}: give both an engine file and a build function, or neither")
    REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_backend(name: str) -> Backend:
    check_choice(name, tuple(REGISTRY), "backend")
    return REGISTRY[name]


def backend_names() -> tuple[str, ...]:
    """Every registered backend, in registration order (the CLI's and the app's choices)."""
    return tuple(REGISTRY)


# ---------------------------------------------------------------------------------------------
# Built-in backends


def _ort_status() -> BackendStatus:
    try:
        import onnxruntime
    except ImportError as exc:  # a hard dependency; only a broken install lands here
        return BackendStatus(False, f"ONNX Runtime cannot be imported ({exc})", None)
    return BackendStatus(True, f"ONNX Runtime {onnxruntime.__version__} (CPU)", str(onnxruntime.__version__))


def _ort_load(path: Path, threads: int | None) -> Engine:
    return OrtEngine(OrtSessionLoader(path, threads=threads), name="onnxruntime-int8")


def _tensorrt_status() -> BackendStatus:
    return BackendStatus(*tensorrt_status())


def _tensorrt_build(request: EngineBuildRequest) -> dict[str, Any]:
    """TensorRT >= 11 builds the Q/DQ model (explicit); 8.6-10.x replays the calibration cache on the
    FP32 model (implicit) unless ``mode`` says otherwise."""
    mode = request.mode
    if mode == "auto":
        mode = "explicit" if major_version(_import_tensorrt()) >= 11 else "implicit"
    explicit = mode == "explicit"
    return build_engine(TrtBuildRequest(
        onnx_path=request.qdq_model if explicit else request.fp32_model, engine_path=request.engine_path,
        profile=request.profile, input_names=request.inputs,
        source_sha256=sha256_file(request.qdq_model) if explicit else request.model_sha256, mode=mode,
        calibration_cache=None if explicit else request.calibration_cache, timing_cache=request.timing_cache,
        extra_metadata={"fp32_model_sha256": request.model_sha256},
    ))


def _tensorrt_load(path: Path, threads: int | None) -> Engine:
    return TensorRTEngine(path, name="tensorrt-int8")


register(Backend(PORTABLE_BACKEND, title="ONNX Runtime", label="ONNX Runtime Q/DQ (CPU)", status=_ort_status, load=_ort_load,
                 engine_name="onnxruntime-int8"))
register(Backend(DEPLOYMENT_TARGET, title="TensorRT", label="TensorRT engine", status=_tensorrt_status,
                 load=_tensorrt_load, engine_name="tensorrt-int8", engine_file=PLAN_FILE, build=_tensorrt_build))
