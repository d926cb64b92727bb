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

Adding a backend is one module (its engine class, build function and one :func:`register` call, run when
the module is imported) and its import below, which places it in the registry's order::

    from calib.engines.registry import Backend, BackendStatus, EngineBuildRequest, register

    def build_mine(request: EngineBuildRequest) -> dict:          # writes request.engine_path
        ...; return {"seconds": 1.2}                              # recorded in engine.json
    register(Backend("mine", title="MyRuntime", label="MyRuntime engine", engine_file="model.mine",
                     status=lambda: BackendStatus(True, "MyRuntime 1.0", "1.0"), build=build_mine,
                     load=lambda path, threads: MyEngine(path), engine_name="mine-int8"))

(``tests/test_backends.py`` registers such a toy backend and builds and validates with it.)
"""

from __future__ import annotations

from calib.engines import ort, tensorrt  # noqa: F401 - each registers its backend, in this order
from calib.engines.base import Engine
from calib.engines.registry import (
    DEPLOYMENT_TARGET,
    PORTABLE_BACKEND,
    REGISTRY,
    Backend,
    BackendStatus,
    EngineBuildRequest,
    backend_names,
    get_backend,
    register,
    unregister,
)
from calib.engines.tensorrt import PLAN_FILE

__all__ = ["DEPLOYMENT_TARGET", "PLAN_FILE", "PORTABLE_BACKEND", "REGISTRY", "Backend", "BackendStatus", "Engine",
           "EngineBuildRequest", "backend_names", "get_backend", "register", "unregister"]
