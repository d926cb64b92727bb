"""The backend registry: one :class:`Backend` entry per inference backend, by name (see :mod:`calib.engines`).

Each backend module registers its own entry when imported; ``calib/engines/__init__.py`` imports them in
the order the CLI and the app list them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from calib.engines.base import Engine
from calib.errors import InputError, check_choice

if TYPE_CHECKING:
    from calib.engines.trtexec import ShapeProfile

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
    ``load(path, threads) -> Engine``; :meth:`open` loads it named ``engine_name`` (what evaluations record)."""

    name: str
    title: str  # "TensorRT": messages say "<title> is not usable here"
    label: str  # the app's option text
    status: Callable[[], BackendStatus]
    load: Callable[[Path, int | None], Engine]
    engine_name: str
    engine_file: str | None = None
    build: Callable[[EngineBuildRequest], dict[str, Any]] | None = None

    def open(self, path: Path, threads: int | None = None) -> Engine:
        """The engine over ``path`` (the build folder's engine file, or its Q/DQ model), named
        :attr:`engine_name` (what evaluations record as the engine that ran)."""
        engine = self.load(path, threads)
        engine.name = self.engine_name
        return engine


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
