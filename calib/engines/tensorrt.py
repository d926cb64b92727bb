"""TensorRT backend: build INT8 engines and run them through the :class:`Engine` interface.

TensorRT (extra ``tensorrt``: ``tensorrt`` + ``cuda-python``) is imported lazily, so ``calib``
imports and works without it. Two build routes, chosen by the installed major version:

- TensorRT >= 11: parse the Q/DQ ONNX into a strongly typed network (explicit quantization; the
  only INT8 route 11.x has) and build a serialized engine.
- TensorRT 8.6-10.x: parse the FP32 ONNX, set ``BuilderFlag.INT8`` and a calibrator that either
  replays our calibration cache (``read_calibration_cache``) or streams calibration batches through
  device buffers (cuda-python). A Q/DQ model can also be built strongly typed on 10.x.

Every build uses one optimisation profile (min/opt/max batch and sequence length), reuses a timing
cache file between builds, and saves the engine with ``<engine>.json`` metadata (TensorRT version,
GPU name, compute capability, flags, source model sha256) and a build log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from calib.engines.registry import DEPLOYMENT_TARGET, Backend, BackendStatus, EngineBuildRequest, register
from calib.errors import BackendUnavailableError, InputError
from calib.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) describe the 10.x API
    import tensorrt as trt

    from calib.engines.trtexec import ShapeProfile


class TensorRTStatus(NamedTuple):
    available: bool
    reason: str
    version: str | None


def _import_tensorrt() -> Any:
    """The real ``tensorrt`` module, or None. Type stubs alone (a namespace package without a
    ``Builder``) do not count as an installation."""
    try:
        import tensorrt as trt_module
    except Exception:  # noqa: BLE001 - a broken install raises anything from ImportError to OSError
        return None
    if not hasattr(trt_module, "Builder") or not getattr(trt_module, "__version__", None):
        return None
    return trt_module


def _cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        from cuda import cudart  # type: ignore[attr-defined,unused-ignore]
        return cudart


def _check(result: Any) -> Any:
    """Unpack a cuda-python call result ``(err, *values)``; raise on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0."""
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def tensorrt_status() -> TensorRTStatus:
    """Whether TensorRT can build and run engines here: (available, reason, version)."""
    trt_module = _import_tensorrt()
    if trt_module is None:
        return TensorRTStatus(False, "TensorRT is not installed (pip install 'calib[tensorrt]' on a machine with an NVIDIA GPU)", None)
    version = str(trt_module.__version__)
    try:
        cudart = _cudart()
    except ImportError:
        return TensorRTStatus(False, f"TensorRT {version} is installed but cuda-python is not (pip install cuda-python)", version)
    try:
        count = _check(cudart.cudaGetDeviceCount())
    except Exception as exc:  # noqa: BLE001 - no driver raises from inside the bindings
        return TensorRTStatus(False, f"TensorRT {version} is installed but no CUDA GPU is usable ({exc})", version)
    if not count:
        return TensorRTStatus(False, f"TensorRT {version} is installed but there is no NVIDIA GPU", version)
    name, capability = gpu_info()
    return TensorRTStatus(True, f"TensorRT {version} on {name} (compute capability {capability})", version)


def require_tensorrt(alternative: str = "") -> TensorRTStatus:
    """Raise :class:`BackendUnavailableError` (naming the alternative) unless TensorRT is usable."""
    status = tensorrt_status()
    if not status.available:
        raise BackendUnavailableError(status.reason + (f"; {alternative}" if alternative else ""))
    return status


def major_version(trt_module: Any) -> int:
    return int(str(trt_module.__version__).split(".")[0])


# ---------------------------------------------------------------------------------------------
# Device memory (cuda-python). Small protocol so the calibrator's control flow is testable.


class DeviceMemory:
    """Device buffers through cuda-python: ``alloc(nbytes) -> ptr``, ``upload(ptr, array)``,
    ``download(ptr, array)``, ``free(ptr)``; one stream."""

    def __init__(self) -> None:
        self.cudart = _cudart()
        self.stream = _check(self.cudart.cudaStreamCreate())

    def alloc(self, nbytes: int) -> int:
        return int(_check(self.cudart.cudaMalloc(max(int(nbytes), 1))))

    def upload(self, ptr: int, array: np.ndarray) -> None:
        host = np.ascontiguousarray(array)
        _check(self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.synchronize()

    def download(self, ptr: int, array: np.ndarray) -> None:
        _check(self.cudart.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self.synchronize()

    def free(self, ptr: int) -> None:
        _check(self.cudart.cudaFree(ptr))

    def synchronize(self) -> None:
        _check(self.cudart.cudaStreamSynchronize(self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)


# ---------------------------------------------------------------------------------------------
# Calibrators (TensorRT 8.6-10.x implicit quantization).


class CalibratorLogic:
    """What a TensorRT INT8 calibrator does, independent of TensorRT.

    Either ``cache`` (bytes of a calibration cache to replay: TensorRT then skips calibration) or
    ``batches`` (an iterable of feeds ``{input name: (B, T) array}``, all with ``batch_size`` rows,
    uploaded one at a time into device buffers sized for ``max_shape``)."""

    def __init__(self, *, batch_size: int, cache: bytes | None = None,
                 batches: Iterable[Mapping[str, np.ndarray]] | None = None,
                 input_dtypes: Mapping[str, np.dtype] | None = None, max_shape: tuple[int, int] | None = None,
                 memory: Any = None, cache_out: Path | None = None) -> None:
        if cache is None and batches is None:
            raise InputError("a calibrator needs a calibration cache or calibration batches")
        self.batch_size = int(batch_size)
        self.cache = cache
        self.cache_out = cache_out
        self.written_cache: bytes | None = None
        self._batches: Iterator[Mapping[str, np.ndarray]] = iter(batches or ())
        self._memory = memory
        self._buffers: dict[str, int] = {}
        self._input_dtypes = dict(input_dtypes or {})
        self._max_shape = max_shape
        self.batches_served = 0

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Device pointers of the next batch for ``names``, or None when the data is exhausted."""
        if self.cache is not None:
            return None  # replaying a cache: TensorRT never needs data
        try:
            feeds = next(self._batches)
        except StopIteration:
            return None
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InputError(f"calibration batch has no input {missing[0]!r} (has {sorted(feeds)})")
        pointers = []
        for name in names:
            array = np.ascontiguousarray(feeds[name], dtype=self._input_dtypes.get(name, feeds[name].dtype))
            if array.shape[0] != self.batch_size:
                raise InputError(f"calibration batch {self.batches_served} has {array.shape[0]} rows, expected {self.batch_size}")
            if name not in self._buffers:
                rows, seq = self._max_shape or array.shape
                self._buffers[name] = self._memory.alloc(rows * seq * array.itemsize)
            self._memory.upload(self._buffers[name], array)
            pointers.append(self._buffers[name])
        self.batches_served += 1
        return pointers

    def read_calibration_cache(self) -> bytes | None:
        return self.cache

    def write_calibration_cache(self, cache: Any) -> None:
        self.written_cache = bytes(cache)
        if self.cache_out is not None:
            atomic_write_bytes(self.cache_out, self.written_cache)

    def release(self) -> None:
        for ptr in self._buffers.values():
            self._memory.free(ptr)
        self._buffers.clear()


def make_calibrator(trt_module: Any, logic: CalibratorLogic, algorithm: str = "entropy") -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator``) delegating to ``logic``."""
    bases: dict[str, Any] = {"entropy": trt_module.IInt8EntropyCalibrator2, "minmax": trt_module.IInt8MinMaxCalibrator}
    base: Any = bases.get(algorithm)
    if base is None:
        raise InputError(f"TensorRT calibrator {algorithm!r} is not one of entropy, minmax")

    class Calibrator(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 requires the explicit base __init__
            self.logic = logic

        def get_batch_size(self) -> int:
            return self.logic.get_batch_size()

        def get_batch(self, names: list[str]) -> list[int] | None:
            return self.logic.get_batch(names)

        def read_calibration_cache(self) -> bytes | None:
            return self.logic.read_calibration_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            self.logic.write_calibration_cache(cache)

    return Calibrator()


# ---------------------------------------------------------------------------------------------
# Build.


@dataclass(frozen=True)
class TrtBuildRequest:
    """One engine build. ``mode``: ``explicit`` (Q/DQ ONNX, strongly typed; any version >= 10) or
    ``implicit`` (FP32 ONNX + INT8 calibrator; 8.6-10.x only)."""

    onnx_path: Path
    engine_path: Path
    profile: ShapeProfile
    input_names: tuple[str, ...]
    source_sha256: str
    mode: str = "explicit"
    calibration_cache: Path | None = None  # implicit: replay this cache
    calibration_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None  # implicit: stream
    calibrator: str = "entropy"
    timing_cache: Path | None = None
    workspace_bytes: int = 2 << 30
    extra_metadata: dict[str, object] = field(default_factory=dict)


class _BuildLogger:
    """Collects TensorRT's log lines (for ``<engine>.log``) and keeps warnings and errors."""

    def __init__(self, trt_module: Any) -> None:
        base = trt_module.ILogger
        lines: list[str] = []
        self.lines = lines

        class Logger(base):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                base.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                lines.append(f"[{str(severity).split('.')[-1]}] {msg}")

        self.logger = Logger()


def _set_profile(builder: trt.Builder, config: trt.IBuilderConfig, request: TrtBuildRequest,
                 network: trt.INetworkDefinition) -> trt.IOptimizationProfile:
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    low, opt, high = request.profile.shapes()
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for name in request.input_names:
        if name in network_inputs:
            profile.set_shape(name, trt.Dims2(*low), trt.Dims2(*opt), trt.Dims2(*high))
    config.add_optimization_profile(profile)
    return profile


def build_engine(request: TrtBuildRequest) -> dict[str, object]:
    """Build and save a serialized engine; returns the metadata written to ``<engine>.json``."""
    require_tensorrt()
    import tensorrt as trt_module  # checked against the 10.x stubs; 11.x-only differences are guarded

    major = major_version(trt_module)
    if request.mode == "implicit" and major >= 11:
        raise InputError(f"TensorRT {trt_module.__version__} has no implicit INT8 calibration; build the Q/DQ model (mode explicit)")
    log = _BuildLogger(trt_module)
    builder = trt_module.Builder(log.logger)
    flags = 0
    if major < 10:
        flags |= 1 << int(trt_module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if request.mode == "explicit" and major < 11:  # 11.x: always strongly typed (the flag is ignored)
        flags |= 1 << int(trt_module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt_module.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(request.onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {request.onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt_module.MemoryPoolType.WORKSPACE, request.workspace_bytes)
    profile = _set_profile(builder, config, request, network)
    build_flags: list[str] = ["STRONGLY_TYPED"] if request.mode == "explicit" else []

    timing_bytes = request.timing_cache.read_bytes() if request.timing_cache and request.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(timing_cache, False)

    logic: CalibratorLogic | None = None
    if request.mode == "implicit":
        config.set_flag(trt_module.BuilderFlag.INT8)
        build_flags.append("INT8")
        if request.calibration_cache is not None:
            logic = CalibratorLogic(batch_size=request.profile.opt_batch, cache=request.calibration_cache.read_bytes())
        elif request.calibration_batches is not None:
            memory = DeviceMemory()
            logic = CalibratorLogic(batch_size=request.profile.opt_batch, batches=request.calibration_batches(),
                                    max_shape=(request.profile.opt_batch, request.profile.max_seq), memory=memory,
                                    cache_out=request.engine_path.with_suffix(".calibration.cache"))
        else:
            raise InputError("implicit INT8 build needs a calibration cache or calibration batches")
        config.int8_calibrator = make_calibrator(trt_module, logic, request.calibrator)
        config.set_calibration_profile(profile)

    started = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if logic is not None and logic.cache is None:
            logic.release()
    seconds = time.perf_counter() - started
    log_path = request.engine_path.with_suffix(".log")
    atomic_write_text(log_path, "\n".join(log.lines) + "\n")
    if serialized is None:
        raise InputError(f"TensorRT failed to build {request.onnx_path}; see {log_path}")
    atomic_write_bytes(request.engine_path, bytes(memoryview(serialized)))
    if request.timing_cache is not None:
        atomic_write_bytes(request.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    gpu_name, capability = gpu_info()
    metadata: dict[str, object] = {
        "tensorrt_version": str(trt_module.__version__), "gpu": gpu_name, "compute_capability": capability,
        "mode": request.mode, "flags": build_flags, "source_onnx": str(request.onnx_path),
        "source_sha256": request.source_sha256, "engine_sha256": sha256_file(request.engine_path),
        "profile": request.profile.to_dict(), "calibrator": request.calibrator if request.mode == "implicit" else None,
        "calibration_cache": str(request.calibration_cache) if request.calibration_cache else None,
        "timing_cache": str(request.timing_cache) if request.timing_cache else None,
        "build_seconds": round(seconds, 3), "log": str(log_path), **request.extra_metadata,
    }
    atomic_write_json(request.engine_path.with_suffix(".json"), metadata)
    return metadata


# ---------------------------------------------------------------------------------------------
# Run.


class TensorRTEngine:
    """An :class:`~calib.engines.base.Engine` over a serialized TensorRT engine (named I/O tensors)."""

    def __init__(self, engine_path: str | Path, name: str = "tensorrt") -> None:
        require_tensorrt("run the engine on a machine with TensorRT and a GPU")
        import tensorrt as trt_module

        self.path = Path(engine_path)
        meta_path = self.path.with_suffix(".json")
        self.metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        built_with = self.metadata.get("tensorrt_version")
        if built_with and built_with != trt_module.__version__:
            raise InputError(f"engine {self.path} was built with TensorRT {built_with}, this is {trt_module.__version__}; rebuild it")
        self._trt = trt_module
        self._logger = trt_module.Logger(trt_module.Logger.WARNING)
        self._runtime = trt_module.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise InputError(f"TensorRT cannot load engine {self.path} (built for another GPU or version?)")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._memory = DeviceMemory()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.name = name
        self.input_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt_module.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt_module.TensorIOMode.OUTPUT)
        self._dtypes = {n: np.dtype(trt_module.nptype(engine.get_tensor_dtype(n))) for n in names}

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = list(outputs) if outputs is not None else list(self.output_names)
        pointers: list[int] = []
        try:
            for name in self.input_names:
                if name not in feeds:
                    raise InputError(f"TensorRT engine input {name!r} is missing from the feeds")
                array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                self._context.set_input_shape(name, tuple(array.shape))
                ptr = self._memory.alloc(array.nbytes)
                pointers.append(ptr)
                self._memory.upload(ptr, array)
                self._context.set_tensor_address(name, ptr)
            results: dict[str, np.ndarray] = {}
            for name in self.output_names:
                dims = self._context.get_tensor_shape(name)
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                results[name] = np.empty(shape, dtype=self._dtypes[name])
                ptr = self._memory.alloc(results[name].nbytes)
                pointers.append(ptr)
                self._context.set_tensor_address(name, ptr)
            if not self._context.execute_async_v3(self._memory.stream_handle):
                raise RuntimeError(f"TensorRT failed to execute {self.path}")
            self._memory.synchronize()
            for name, ptr in zip(self.output_names, pointers[len(self.input_names):]):
                self._memory.download(ptr, results[name])
        finally:
            for ptr in pointers:
                self._memory.free(ptr)
        return {name: results[name] for name in wanted}


# -- the backend entry ---------------------------------------------------------------------------------

PLAN_FILE = "model.plan"  # the TensorRT backend's engine file inside a build folder


def _build(request: EngineBuildRequest) -> dict[str, Any]:
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


register(Backend(DEPLOYMENT_TARGET, title="TensorRT", label="TensorRT engine",
                 status=lambda: BackendStatus(*tensorrt_status()), load=lambda path, threads: TensorRTEngine(path),
                 engine_name="tensorrt-int8", engine_file=PLAN_FILE, build=_build))
