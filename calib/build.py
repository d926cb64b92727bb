"""Stage ``build``: calibrated ranges -> an INT8 engine folder.

Writes, inside ``out_dir``:
- ``model.smooth.onnx`` (with ``smooth``): the FP32 model after outlier migration (:mod:`calib.smooth`),
  same outputs as the original, what the Q/DQ model is made from; engine.json records its sha256 and
  its parent's, every migrated tensor's alpha, and the max |output delta| measured against the original;
- ``model.qdq.onnx``: the Q/DQ model (ONNX Runtime's quantizer fed our ranges, :mod:`calib.quantize`);
  it is the INT8 engine here (ONNX Runtime CPU) and what TensorRT 11 builds from;
- ``calibration.cache``: a TensorRT 8.6-10.x calibration cache of the quantized tensors;
- ``model.fp32.onnx``: the FP32 model (a copy-on-write clone where the file system supports one, else
  a copy, never a hard link; plus its external data files if any), so that the folder is self-contained;
- ``trtexec.sh``: the exact trtexec / ModelOpt command lines for a GPU machine, naming only files in
  this folder (``bash trtexec.sh 10 --dry-run`` checks them and prints the command);
- ``engine.json``: placement, quantized and excluded nodes (with why), skipped tensors, the ranges'
  source and method, model and Q/DQ sha256, backend, TensorRT availability and reason;
- the backend's own engine file when it has one (``calib.engines.REGISTRY``): with
  ``backend="tensorrt"`` (TensorRT and a GPU present) ``model.plan`` + its metadata and log.
"""

from __future__ import annotations

import shlex
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from calib.calibrate import Calibration, RangesRef
from calib.calibset import CalibrationSet
from calib.engines import (
    DEPLOYMENT_TARGET,
    PLAN_FILE,
    PORTABLE_BACKEND,
    EngineBuildRequest,
    backend_names,
    get_backend,
)
from calib.engines.ort import OrtEngine, OrtSessionLoader
from calib.engines.trtexec import (
    FP32_FILE,
    TRTEXEC_CACHE_ALGORITHM,
    ShapeProfile,
    bundle_model,
    trtexec_commands,
    write_text,
)
from calib.errors import BackendUnavailableError, InputError, check_choice
from calib.io import atomic_write_json, read_json, sha256_file
from calib.methods import DEFAULT_BUILD_METHOD
from calib.model import check_same_model, read_onnx
from calib.pipeline import config_from_params, config_params, one_ranges_reference
from calib.placement import PRESETS, Placement, exact_pattern
from calib.quantize import quantize_qdq
from calib.ranges import Ranges
from calib.smooth import input_means, parse_alpha, smooth_calibrated
from calib.trtcache import DEFAULT_TRT_VERSION, header, write_trt_cache
from calib.workspace import ProgressFn, RunRecord, Workspace

ENGINE_FILE = "engine.json"
QDQ_FILE = "model.qdq.onnx"
SMOOTH_FILE = "model.smooth.onnx"
CACHE_FILE = "calibration.cache"
SCRIPT_FILE = "trtexec.sh"
TRT_MODES = ("auto", "explicit", "implicit")
"""TensorRT build modes: auto (explicit Q/DQ on >= 11, implicit cache replay on 8.6-10.x), explicit, implicit."""
FORMAT = "calib.engine/1"


@dataclass(frozen=True)
class BuildConfig:
    """Which model, which ranges, where Q/DQ goes, and for which backend.

    Ranges come from ``ranges``: a calibration run folder and its ``method``, or a ranges JSON
    (:class:`~calib.calibrate.RangesRef`). The optimisation profile comes from ``profile`` (min_batch, opt_batch,
    max_batch, min_seq, opt_seq, max_seq) or else from ``calibration_set`` (or the calibration's own
    set)."""

    model: str
    ranges: RangesRef = field(default_factory=RangesRef)
    placement: Placement = field(default_factory=Placement)  # which nodes get Q/DQ (preset, include, exclude)
    per_channel: bool = True
    backend: str = PORTABLE_BACKEND
    calibration_set: str = ""
    profile: tuple[int, ...] = ()
    trt_version: str = DEFAULT_TRT_VERSION  # cache header for trtexec (8.6-10.x)
    trt_mode: str = "auto"  # auto (explicit on >= 11, implicit cache replay before) | explicit | implicit
    timing_cache: str = ""  # TensorRT timing cache reused between builds
    # Outlier migration before Q/DQ: "" (off), "auto" (alpha per tensor by simulated INT8 error) or an
    # alpha in (0, 1). Needs `calibration` (its per-channel statistics and calibration set).
    smooth: str | float = ""
    # With ``smooth``: also fold per-channel scales into attention's projections (Q/K equalized by
    # simulated score error; the context's migration realised through V's projection instead of a Mul).
    smooth_attention: bool = False
    # Fold the expected output shift of INT8 weights into each quantized MatMul's bias (calibration means).
    bias_correction: bool = False

    def __post_init__(self) -> None:
        # one recorded form per setting: "off" is no migration (""), and attention folding needs migration
        if isinstance(self.smooth, str) and self.smooth.strip().lower() == "off":
            object.__setattr__(self, "smooth", "")
        if self.smooth_attention and self.smooth in ("", None):
            object.__setattr__(self, "smooth_attention", False)

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> BuildConfig:
        """The config a build recorded (its run's registry params, or ``engine.json``'s ``config``), in
        today's layout or 0.1's flat one (:func:`calib.pipeline.config_from_params`); keys this version
        does not know (written by a later one) are left out. 0.1's ``ranges`` (a file) / ``calibration``
        (a folder) / ``method`` become one :class:`~calib.calibrate.RangesRef`."""
        return config_from_params(cls, values, where="build config")

    @classmethod
    def upgrade_params(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """0.1's range set: ``ranges`` (a file) / ``calibration`` (a folder) / ``method`` beside each other."""
        return one_ranges_reference(values, default_method=DEFAULT_BUILD_METHOD)

    def with_float_nodes(self, nodes: Iterable[str]) -> BuildConfig:
        """The same build with these node names (exactly, not as patterns) also kept in float."""
        return replace(self, placement=self.placement.with_exclusions(exact_pattern(n) for n in nodes))


def build_command(config: BuildConfig, *, exclude_from: str | None = None) -> str:
    """The ``calib build`` command that makes ``config`` again (``exclude_from``: a sensitivity run whose
    exclusions it adds), every setting that differs from the CLI's defaults spelled out."""
    ranges = config.ranges
    source = ["--calibration", ranges.source, "--method", ranges.method] if ranges.from_calibration \
        else ["--ranges", ranges.source]  # a ranges file holds one range set: no method to choose
    args = ["calib", "build", *source, "--model", config.model, "--placement", config.placement.preset]
    for flag, values in (("--include", config.placement.include_nodes), ("--exclude", config.placement.exclude_nodes),
                         ("--op", config.placement.include_op_types), ("--exclude-op", config.placement.exclude_op_types)):
        if values:
            args += [flag, *values]
    if not config.per_channel:
        args.append("--per-tensor-weights")
    if parse_alpha(config.smooth) is not None:
        args += ["--smooth", str(config.smooth)]
    args += [flag for flag, on in (("--smooth-attention", config.smooth_attention),
                                   ("--bias-correction", config.bias_correction)) if on]
    if config.backend != PORTABLE_BACKEND:
        args += ["--backend", config.backend]
    if config.calibration_set:
        args += ["--calibration-set", config.calibration_set]
    if config.profile:
        args += ["--profile", *(str(v) for v in config.profile)]
    if config.trt_version != DEFAULT_TRT_VERSION:
        args += ["--trt-version", config.trt_version]
    if config.trt_mode != "auto":
        args += ["--trt-mode", config.trt_mode]
    if exclude_from:
        args += ["--exclude-from", exclude_from]
    return shlex.join(args)


def calibration_of(workspace: Workspace, build_run: RunRecord) -> Path | None:
    """The calibration run folder a build was made from (to show every method's amax per tensor): its
    ``calibrate`` parent still in the workspace, else the folder its config names if it still exists."""
    if (parent := workspace.parent_of(build_run, "calibrate")) is not None:
        return parent.dir
    named = BuildConfig.from_params(build_run.params).ranges.calibration_dir if build_run.params.get("model") \
        else None
    return named if named is not None and named.is_dir() else None


def _load_ranges(config: BuildConfig) -> tuple[Ranges, str, Path | None]:
    """The range set, a description of where it came from, and the calibration run folder if any."""
    ranges = config.ranges.load()
    calibration_dir = config.ranges.calibration_dir
    return ranges, config.ranges.describe(), None if calibration_dir is None else calibration_dir.resolve()


def _calibration_set_dir(config: BuildConfig, calibration_dir: Path | None) -> str:
    """The calibration set behind the build: the one given, else the calibration run's ("" when none)."""
    if config.calibration_set:
        return config.calibration_set
    return Calibration.load(calibration_dir).calibration_set_dir if calibration_dir is not None else ""


def _profile(config: BuildConfig, source: str) -> tuple[ShapeProfile, str]:
    """The optimisation profile: the one given, else the calibration set ``source``'s, else the default."""
    if config.profile:
        if len(config.profile) != 6:
            raise InputError("profile needs 6 numbers: min_batch opt_batch max_batch min_seq opt_seq max_seq")
        return ShapeProfile(*(int(v) for v in config.profile)), "given"
    if source and Path(source).is_dir():
        return ShapeProfile.from_calibration_set(CalibrationSet.load(source).profile), f"calibration set {source}"
    if config.calibration_set:
        raise InputError(f"calibration set {config.calibration_set} does not exist")
    return ShapeProfile(), "default (no calibration set given)"


def _labels(source: str) -> list[str]:
    """The model's class names as the calibration set ``source`` knew them ([] when unknown: a ranges file,
    or a set gone or unreadable), so a validation of the build names the classes without being told."""
    try:
        return list(CalibrationSet.load(source).model_labels) if source and Path(source).is_dir() else []
    except InputError:  # provenance is best effort; the ranges are what matter
        return []


def _check(config: BuildConfig) -> None:
    check_choice(config.backend, backend_names(), "backend")
    check_choice(config.placement.preset, PRESETS, "placement preset")
    check_choice(config.trt_mode, TRT_MODES, "TensorRT build mode")
    header(config.trt_version, TRTEXEC_CACHE_ALGORITHM)  # validates the version early
    if (parse_alpha(config.smooth) is not None or config.bias_correction) and not config.ranges.from_calibration:
        raise InputError("smoothing and bias correction need a calibration run (--calibration), not a ranges file: "
                         "they read its per-channel statistics")


def unavailable_message(reason: str) -> str:
    return (f"{reason}. Build with backend 'ort' instead (`calib build ... --backend ort`): it writes the "
            f"Q/DQ model, {CACHE_FILE} and {SCRIPT_FILE} with the exact trtexec commands to run on the GPU "
            "machine (`bash trtexec.sh 11` for TensorRT 11, `bash trtexec.sh 10` for 8.6-10.x)")


def build(config: BuildConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> EngineArtifact:
    """Quantize ``config.model`` with the given ranges and write an engine folder into ``out_dir``."""
    report = progress or (lambda fraction, message="": None)
    out_dir = Path(out_dir)
    _check(config)
    backend = get_backend(config.backend)
    backend_status = backend.status()
    if not backend_status.available:
        raise BackendUnavailableError(unavailable_message(backend_status.reason))
    status = get_backend(DEPLOYMENT_TARGET).status()  # recorded whatever the backend
    model_path = Path(config.model).resolve()
    model = read_onnx(model_path, load_weights=False)
    model_sha = sha256_file(model_path)
    ranges, ranges_source, calibration_dir = _load_ranges(config)
    check_same_model(ranges.model_sha256, model_sha, f"range set {ranges_source}")
    calibration_set = _calibration_set_dir(config, calibration_dir)
    profile, profile_source = _profile(config, calibration_set)
    inputs = tuple(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})

    alpha = parse_alpha(config.smooth)
    source, amax, smoothed, means = model_path, dict(ranges.amax), None, None
    recompute = _recompute_command(calibration_dir)
    if alpha is not None:
        report(0.05, "migrating activation outliers into the weights")
        smoothed = smooth_calibrated(model_path, calibration_dir, ranges, alpha, out_dir / SMOOTH_FILE,
                                     attention=config.smooth_attention)
        if smoothed.result.rewritten:
            source = out_dir / SMOOTH_FILE
            amax.update(smoothed.amax)
        else:
            (out_dir / SMOOTH_FILE).unlink(missing_ok=True)
    if config.bias_correction:
        means = input_means(Calibration.load(calibration_dir).stats, smoothed.result.plan if smoothed else None,
                            recompute=recompute)

    report(0.1, "quantizing")
    started = time.perf_counter()
    with warnings.catch_warnings(record=True):  # unknown tensors are listed in engine.json instead
        warnings.simplefilter("always")
        result = quantize_qdq(source, amax, config.placement, out_dir / QDQ_FILE,
                              per_channel=config.per_channel, input_means=means)
    quantize_seconds = time.perf_counter() - started

    report(0.6, "writing calibration cache and trtexec commands; FP32 model into the folder")
    cache_amax = {t: amax[t] for t in result.quantized_tensors if t in amax}
    write_trt_cache(out_dir / CACHE_FILE, cache_amax, algorithm=TRTEXEC_CACHE_ALGORITHM, trt_version=config.trt_version)
    bundled = bundle_model(model_path, model, out_dir)
    commands = trtexec_commands(
        fp32_onnx=SMOOTH_FILE if source != model_path else FP32_FILE, qdq_onnx=QDQ_FILE, cache=CACHE_FILE,
        inputs=inputs, profile=profile,
        op_types=result.placement_op_types, nodes_to_exclude=tuple(result.excluded_nodes),
    )
    write_text(out_dir / SCRIPT_FILE, commands.script(header=(
        f"model: {FP32_FILE} = {model_path} (sha256 {model_sha})",
        f"ranges: {ranges_source}, method {ranges.method}; placement {config.placement.preset}",
        *([smoothed.result.summary() + f" -> {SMOOTH_FILE} (sha256 {smoothed.result.sha256})"] if smoothed else []),
        f"calibration cache header: {header(config.trt_version, TRTEXEC_CACHE_ALGORITHM)} (for trtexec --calib)",
    )), executable=True)

    built: dict[str, Any] | None = None
    if backend.build is not None and backend.engine_file is not None:
        report(0.7, f"building the {backend.title} engine")
        built = backend.build(EngineBuildRequest(
            out_dir=out_dir, engine_path=out_dir / backend.engine_file, qdq_model=out_dir / QDQ_FILE,
            fp32_model=Path(source), model_sha256=model_sha, inputs=inputs, profile=profile,
            calibration_cache=out_dir / CACHE_FILE, mode=config.trt_mode,
            timing_cache=Path(config.timing_cache) if config.timing_cache else None))

    meta = {
        "format": FORMAT,
        "backend": config.backend,
        "model": {"path": str(model_path), "sha256": model_sha, "bundled": bundled},
        "qdq": {"file": QDQ_FILE, "sha256": result.sha256, "counts": result.qdq_counts,
                "per_channel": config.per_channel},
        "ranges": {"source": ranges_source, "method": ranges.method, "params": ranges.params,
                   "model_sha256": ranges.model_sha256, "tensors": len(ranges.amax)},
        "placement": asdict(config.placement),
        "labels": _labels(calibration_set),
        "quantized_nodes": list(result.quantized_nodes),
        "quantized_tensors": list(result.quantized_tensors),
        "excluded_nodes": result.excluded_nodes,
        "skipped_tensors": result.skipped_tensors,
        "unknown_tensors": list(result.unknown_tensors),
        "unmatched_patterns": list(result.unmatched_patterns),
        "profile": {**profile.to_dict(), "source": profile_source},
        "inputs": list(inputs),
        "calibration_cache": {"file": CACHE_FILE, "header": header(config.trt_version, TRTEXEC_CACHE_ALGORITHM),
                              "tensors": len(cache_amax)},
        "trtexec": {"script": SCRIPT_FILE, "trt11": commands.trt11, "trt10": commands.trt10,
                    "modelopt": commands.modelopt},
        "tensorrt": {"available": status.available, "reason": status.reason, "version": status.version,
                     "engine": built if config.backend == DEPLOYMENT_TARGET else None},
        # what EngineArtifact.engine("int8") runs: the backend's own file, or the Q/DQ model
        "engine": {"backend": backend.name, "file": backend.engine_file or QDQ_FILE, "build": built,
                   "status": backend_status.reason},
        "seconds": {"quantize": round(quantize_seconds, 3)},
        "config": config_params(config),  # to rebuild this engine with changes (calib.sensitivity)
        "smooth": None if smoothed is None else {
            "file": SMOOTH_FILE if source != model_path else None, "summary": smoothed.result.summary(),
            **smoothed.to_dict()},
        "bias_correction": None if means is None else {"nodes": len(result.bias_corrected),
                                                       "max_shift": result.bias_corrected},
    }
    atomic_write_json(out_dir / ENGINE_FILE, meta)
    report(1.0, f"{len(result.quantized_nodes)} nodes quantized, {len(result.excluded_nodes)} left in float"
           + (f"; {smoothed.result.summary()}" if smoothed else ""))
    return EngineArtifact.load(out_dir)


def _recompute_command(calibration_dir: Path | None) -> str:
    """The command that rewrites a calibration run with per-channel statistics."""
    if calibration_dir is None:
        return "calib calibrate --calibration-set <calibration set>"
    return f"calib calibrate --calibration-set {Calibration.load(calibration_dir).calibration_set_dir or '<calibration set>'}"


@dataclass(frozen=True)
class EngineArtifact:
    """A saved engine folder (see module docstring)."""

    dir: Path
    meta: dict[str, Any] = field(compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> EngineArtifact:
        directory = Path(directory)
        path = directory / ENGINE_FILE
        if not path.is_file():
            raise InputError(f"{directory} is not an engine folder (no {ENGINE_FILE}); run calib build first")
        meta = read_json(path)
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not an engine record (format {meta.get('format')!r})")
        return cls(directory, meta)

    @property
    def qdq_path(self) -> Path:
        return self.dir / self.meta["qdq"]["file"]

    @property
    def qdq_bytes(self) -> int | None:
        """The Q/DQ model's file size (None: the file is gone)."""
        return self.qdq_path.stat().st_size if self.qdq_path.is_file() else None

    @property
    def model_path(self) -> Path:
        """The FP32 model: the folder's own copy (``model.fp32.onnx``), else where it was built from."""
        bundled = self.meta["model"].get("bundled")
        if bundled and (self.dir / bundled["file"]).is_file():
            return self.dir / bundled["file"]
        return Path(self.meta["model"]["path"])

    @property
    def model_sha256(self) -> str:
        return str(self.meta["model"]["sha256"])

    @property
    def excluded_nodes(self) -> dict[str, str]:
        return dict(self.meta["excluded_nodes"])

    @property
    def quantized_nodes(self) -> tuple[str, ...]:
        return tuple(self.meta["quantized_nodes"])

    @property
    def method(self) -> str | None:
        """The calibration method of the ranges the build used ("file" for a ranges file)."""
        return self.ranges_record.get("method")

    @property
    def ranges_record(self) -> dict[str, Any]:
        """Which ranges the build used: ``source`` (calibration run or file) and ``method``."""
        recorded = self.meta.get("ranges")
        return dict(recorded) if isinstance(recorded, Mapping) else {}

    @property
    def placement_record(self) -> dict[str, Any] | None:
        """The build's placement as recorded (``preset`` and the node / op-type patterns)."""
        recorded = self.meta.get("placement")
        return dict(recorded) if isinstance(recorded, Mapping) else None

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's class names in logit order, as the build recorded them (empty: unknown)."""
        return tuple(self.meta.get("labels") or ())

    @property
    def config(self) -> BuildConfig | None:
        """The settings the folder was built with (to rebuild it with changes); None when an older calib
        did not record them."""
        recorded = self.meta.get("config")
        return BuildConfig.from_params(recorded) if isinstance(recorded, Mapping) else None

    @property
    def unknown_tensors(self) -> tuple[str, ...]:
        """Ranged tensors the model does not have (ranges made for another graph)."""
        return tuple(self.meta.get("unknown_tensors") or ())

    @property
    def smooth_record(self) -> dict[str, Any] | None:
        """The outlier migration the build applied (``summary``, ``migrated``, ``max_abs_output_delta``), if any."""
        return self.meta.get("smooth") or None

    @property
    def bias_correction_record(self) -> dict[str, Any] | None:
        """The bias correction the build applied (``nodes``: MatMul biases corrected), None when off."""
        return self.meta.get("bias_correction") or None

    @property
    def smoothing_summary(self) -> str | None:
        """The outlier migration in words (None: the build migrated none)."""
        return str(self.smooth_record["summary"]) if self.smooth_record else None

    @property
    def smoothing_migrated(self) -> bool:
        """Whether the migration rewrote any tensor (the FP32 outputs were then checked to be unchanged)."""
        return bool((self.smooth_record or {}).get("migrated"))

    @property
    def smoothing_output_delta(self) -> float:
        """Largest |FP32 output difference| the migration caused on the calibration feeds (0 when none)."""
        return max((self.smooth_record or {}).get("max_abs_output_delta", {}).values(), default=0.0)

    @property
    def bias_corrected_nodes(self) -> int:
        """MatMul biases the build corrected (0: bias correction off)."""
        return int((self.bias_correction_record or {}).get("nodes", 0))

    def provenance(self) -> dict[str, Any]:
        """What a later stage records about starting from this build: folder, Q/DQ sha256, method,
        migration summary, bias-corrected nodes and the build's settings."""
        return {"build": str(self.dir), "qdq_sha256": (self.meta.get("qdq") or {}).get("sha256"),
                "method": self.method, "smooth": (self.smooth_record or {}).get("summary"),
                "bias_correction": (self.bias_correction_record or {}).get("nodes"),
                "config": self.meta.get("config")}

    @property
    def skipped_tensors(self) -> dict[str, str]:
        """Tensors left without Q/DQ because their range is unusable -> why."""
        return dict(self.meta["skipped_tensors"])

    @property
    def unmatched_patterns(self) -> tuple[str, ...]:
        """Exclusion patterns that matched no node (a typo, or a node of another model)."""
        return tuple(self.meta["unmatched_patterns"])

    @property
    def profile(self) -> ShapeProfile:
        """The TensorRT optimisation profile the build's commands use."""
        recorded = self.meta["profile"]
        return ShapeProfile(**{k: int(recorded[k]) for k in ShapeProfile().to_dict()})

    @property
    def profile_source(self) -> str:
        """Where the profile came from (the calibration set's lengths, or given)."""
        return str(self.meta["profile"].get("source") or "?")

    @property
    def cache_header(self) -> str:
        """The calibration cache's header line (``TRT-<version>-<algorithm>``)."""
        return str(self.meta["calibration_cache"]["header"])

    @property
    def cache_tensors(self) -> int:
        return int(self.meta["calibration_cache"]["tensors"])

    COMMAND_TITLES = {"trt11": "TensorRT 11 (explicit Q/DQ)", "trt10": "TensorRT 8.6–10.x (calibration cache)",
                      "modelopt": "ModelOpt"}
    """The routes to a GPU engine a build writes a command for, by key, with their titles."""

    @property
    def commands(self) -> dict[str, str]:
        """The commands for a GPU machine, by :attr:`COMMAND_TITLES` key (every key; "" when not recorded):
        ``trt11`` (explicit Q/DQ), ``trt10`` (calibration cache), ``modelopt``."""
        cmds = self.meta["trtexec"]
        return {k: (v if isinstance(v, str) else "\n".join(v or [])) for k in self.COMMAND_TITLES
                for v in [cmds.get(k)]}

    @property
    def plan_path(self) -> Path | None:
        engine = self.meta["tensorrt"].get("engine")
        return self.dir / PLAN_FILE if engine and (self.dir / PLAN_FILE).is_file() else None

    @property
    def backend(self) -> str:
        return str(self.meta["backend"])

    @property
    def engine_path(self) -> Path:
        """The file the INT8 engine runs: the backend's own engine file, else the Q/DQ model. Folders
        written before engine.json recorded it: the TensorRT plan when one was built, else the Q/DQ model."""
        recorded = self.meta.get("engine")
        if recorded:
            return self.dir / recorded["file"]
        return self.plan_path if self.plan_path is not None else self.qdq_path

    @property
    def built_engine_path(self) -> Path | None:
        """The engine file the build's backend made (TensorRT's plan, a registered backend's file), None
        when the backend runs the Q/DQ model itself."""
        path = self.engine_path
        return path if path != self.qdq_path and path.is_file() else None

    @property
    def engine_backend(self) -> str:
        """The backend that runs :attr:`engine_path` (:data:`calib.engines.REGISTRY`)."""
        recorded = self.meta.get("engine")
        # before engine.json recorded it, a folder with a plan ran TensorRT and any other ONNX Runtime
        return recorded["backend"] if recorded else (DEPLOYMENT_TARGET if self.plan_path is not None
                                                     else PORTABLE_BACKEND)

    def engine(self, kind: str = "int8", *, threads: int | None = None):
        """An :class:`~calib.engines.base.Engine`: ``int8`` (the build's backend, from
        :data:`calib.engines.REGISTRY`, over :attr:`engine_path`) or ``fp32`` (ONNX Runtime over the
        source model: the reference every backend is compared with)."""
        if kind == "int8":
            name = self.engine_backend
            if not self.engine_path.is_file():
                raise InputError(f"engine {self.dir.name} has no {self.engine_path.name} (its {name} engine file)")
            return get_backend(name).open(self.engine_path, threads)
        if kind == "fp32":
            if not self.model_path.is_file():
                raise InputError(f"the FP32 model {self.model_path} of engine {self.dir.name} no longer exists")
            check_same_model(self.model_sha256, sha256_file(self.model_path), f"engine {self.dir.name}")
            return OrtEngine(OrtSessionLoader(self.model_path, threads=threads), name="onnxruntime-fp32")
        raise InputError(f"unknown engine kind {kind!r} (int8 or fp32)")

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.meta["backend"], "placement": self.meta["placement"]["preset"],
            "method": self.meta["ranges"]["method"], "quantized_nodes": len(self.meta["quantized_nodes"]),
            "excluded_nodes": len(self.meta["excluded_nodes"]), "skipped_tensors": len(self.meta["skipped_tensors"]),
            "qdq_mb": round(self.qdq_bytes / 2**20, 2) if self.qdq_bytes is not None else None,
            "tensorrt": self.meta["tensorrt"]["available"], "model_sha256": self.model_sha256,
        }
