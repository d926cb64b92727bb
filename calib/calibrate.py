"""Stage ``calibrate``: one statistics pass over a calibration set, then every requested calibrator.

Writes into ``out_dir``::

    stats.npz, stats.json          ActivationStats (histograms, counts, axis roles)
    ranges/<method>.json           our Ranges JSON (amax + flags per tensor)
    ranges/<method>.ort.json       ONNX Runtime TensorsData JSON (load_tensors_data / quantize_static cache)
    caches/<method>.cache          TensorRT calibration cache; header algorithm EntropyCalibration2 for
                                   entropy, MinMaxCalibration for minmax / percentile / mse (TensorRT
                                   only reads the scales; the algorithm name must match the builder's)
    calibration.json               config, model sha256, calibration-set reference, timings, flags
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from calib.calibset import CalibrationSet
from calib.cluster import Cluster, connect
from calib.distributed import collect_statistics_sharded
from calib.errors import InputError, check_choice
from calib.io import atomic_write_json, read_json, sha256_file
from calib.methods import (
    DEFAULT_BUILD_METHOD,
    DEFAULT_PERCENTILE,
    REGISTRY,
    cache_algorithm,
    compute_ranges,
    default_methods,
    get_method,
)
from calib.model import check_same_model, read_onnx
from calib.pipeline import config_from_params, config_params
from calib.placement import PRESETS, Placement
from calib.ranges import Ranges
from calib.stats import (
    HISTOGRAM_MODES,
    TENSOR_SCOPES,
    ActivationStats,
    StatsConfig,
    collect_statistics,
    default_tensors,
)
from calib.trtcache import DEFAULT_TRT_VERSION, header, write_trt_cache
from calib.workspace import ProgressFn

META_FILE = "calibration.json"
FORMAT = "calib.calibration/1"


@dataclass(frozen=True)
class CalibrateConfig:
    """One statistics pass over ``calibration_set`` (a CalibrationSet folder), then ``methods``
    (names in :data:`calib.methods.REGISTRY`). ``percentile`` and ``entropy_damp_zero_bin`` set those
    methods' parameters; ``method_params`` holds any method's parameters by name
    (``{"percentile": {"percentile": 99.9}}``) and wins over the fields. ``placement`` chooses which
    activations get statistics (with ``tensors='placement'``); a preset name is read as ``Placement(name)``."""

    calibration_set: str
    methods: tuple[str, ...] = field(default_factory=default_methods)
    percentile: float = DEFAULT_PERCENTILE
    placement: Placement = field(default_factory=Placement)
    tensors: str = "placement"  # 'placement' (inputs of quantized ops + outputs) or 'all'
    batch_size: int = 16
    trt_version: str = DEFAULT_TRT_VERSION
    histogram: str = "stream"  # 'stream' (one pass, exact bin merging) or 'two-pass' (TensorRT binning)
    bins: int | None = None
    entropy_damp_zero_bin: bool = True
    threads: int | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cluster: str | None = None  # calib.cluster spec: None in this process, local[:N], ray://HOST:PORT, auto

    def __post_init__(self) -> None:
        if isinstance(self.placement, str):  # the preset alone, as the CLI and 0.1 run params give it
            object.__setattr__(self, "placement", Placement(self.placement))

    def method_params(self, method: str) -> dict[str, Any]:
        """The parameters given for ``method`` (its registry entry's config fields, then ``params``),
        merged with its defaults and checked."""
        entry = get_method(method)
        given = {param: getattr(self, fld) for param, fld in entry.config_fields.items()}
        given.update(self.params.get(method, {}))
        return entry.params(given)


def _check(config: CalibrateConfig) -> None:
    if not config.methods:
        raise InputError("choose at least one calibration method (" + ", ".join(REGISTRY) + ")")
    for method in config.params:
        if method not in config.methods:
            raise InputError(f"parameters given for calibration method {method!r}, which is not run "
                             f"(running: {', '.join(config.methods)})")
    for method in config.methods:
        config.method_params(method)  # unknown method, unknown parameter, bad value: one line, before any work
    check_choice(config.placement.preset, PRESETS, "placement preset")
    check_choice(config.tensors, TENSOR_SCOPES, "tensor scope")
    check_choice(config.histogram, HISTOGRAM_MODES, "histogram mode")
    if config.batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {config.batch_size}")
    header(config.trt_version, "EntropyCalibration2")  # validates the version before any work
    Cluster.parse(config.cluster)


@dataclass(frozen=True)
class Calibration:
    """A saved calibration run: statistics plus one range set and cache per method."""

    dir: Path
    meta: dict[str, Any] = field(compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> Calibration:
        directory = Path(directory)
        path = directory / META_FILE
        if not path.is_file():
            raise InputError(f"{directory} is not a calibration run (no {META_FILE})")
        meta = read_json(path)
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a calibration record (format {meta.get('format')!r})")
        return cls(directory, meta)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.meta["methods"])

    @property
    def model_sha256(self) -> str:
        return str(self.meta["model_sha256"])

    @property
    def stats(self) -> ActivationStats:
        return ActivationStats.load(self.dir)

    @property
    def calibration_set_dir(self) -> str:
        """The calibration set folder this run calibrated on, as recorded ("" when unknown)."""
        return str(self.calibration_set_record.get("dir") or "")

    @property
    def calibration_set_record(self) -> Mapping[str, Any]:
        """What the run recorded of its calibration set: ``dir``, ``manifest_sha256``, ``size``, ``strategy``,
        ``dataset`` ({} when unknown)."""
        return dict(self.meta.get("calibration_set") or {})

    @property
    def config(self) -> CalibrateConfig | None:
        """The config this run was made with (None: not recorded); 0.1's layout reads too."""
        recorded = self.meta.get("config")
        return config_from_params(CalibrateConfig, recorded, where=f"calibration {self.dir.name}") \
            if isinstance(recorded, Mapping) else None

    @property
    def tensor_count(self) -> int:
        """Tensors with statistics."""
        return int(self.meta["tensors"])

    @property
    def pass_record(self) -> Mapping[str, Any]:
        """The statistics pass: ``texts``, ``tokens`` (real, unpadded), ``batches``, ``histogram``, ``bins``, ..."""
        return dict(self.meta["stats"])

    @property
    def texts(self) -> int:
        """Calibration texts the statistics pass ran over."""
        return int(self.meta["stats"]["texts"])

    @property
    def stats_seconds(self) -> float:
        return float(self.meta["timings"]["stats_seconds"])

    @property
    def calibrators_seconds(self) -> float:
        """Seconds every method took to compute its ranges from the statistics, together."""
        return float(self.meta["timings"]["calibrators_seconds"])

    def cache_file(self, method: str) -> str:
        """``method``'s TensorRT cache, relative to the run folder."""
        return str(self.cache_path(method).relative_to(self.dir))

    def model_path(self) -> Path:
        """The FP32 ONNX model this calibration was made for: its calibration set's model (checked against
        the sha256 the set recorded)."""
        return Path(CalibrationSet.load(self.meta["calibration_set"]["dir"]).model_spec().onnx_path)

    def ranges(self, method: str) -> Ranges:
        if method not in self.meta["methods"]:
            raise InputError(f"calibration {self.dir.name} has no {method!r} ranges (has: {', '.join(self.methods)})")
        return Ranges.load(self.dir / self.meta["methods"][method]["ranges"])

    def cache_path(self, method: str) -> Path:
        self.ranges(method)  # same error for an unknown method
        return self.dir / self.meta["methods"][method]["cache"]

    def ort_path(self, method: str) -> Path:
        self.ranges(method)
        return self.dir / self.meta["methods"][method]["ort"]

    def ranges_path(self, method: str) -> Path:
        self.ranges(method)
        return self.dir / self.meta["methods"][method]["ranges"]

    def cache_header(self, method: str) -> str:
        """The header line of ``method``'s TensorRT cache (``TRT-<version>-<algorithm>``)."""
        self.ranges(method)
        return str(self.meta["methods"][method]["cache_header"])

    def cache_omitted(self, method: str) -> tuple[str, ...]:
        """Tensors left out of ``method``'s cache because their range is unusable."""
        self.ranges(method)
        return tuple(self.meta["methods"][method].get("cache_omitted") or ())

    @property
    def nonfinite_tensors(self) -> tuple[str, ...]:
        """Tensors that held NaN or ±inf on the calibration set (e.g. masks built with -inf)."""
        return tuple(self.meta["nonfinite"])

    @property
    def nonfinite_counts(self) -> dict[str, dict[str, int]]:
        """Per such tensor, how many values were ``nan``, ``posinf`` and ``neginf``."""
        return {name: dict(counts) for name, counts in self.meta["nonfinite"].items()}

    @property
    def zero_range_tensors(self) -> tuple[str, ...]:
        """Tensors that were all zero on the calibration set."""
        return tuple(self.meta["zero_range"])

    def summary(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods), "tensors": self.meta["tensors"],
            "texts": self.meta["stats"]["texts"], "stats_seconds": self.meta["timings"]["stats_seconds"],
            "calibrators_seconds": self.meta["timings"]["calibrators_seconds"],
            "nonfinite_tensors": len(self.nonfinite_tensors), "trt_header_version": self.meta["trt_version"],
            "model_sha256": self.model_sha256,
            **({"cluster": self.meta["cluster"]["spec"], "workers": self.meta["cluster"]["workers"]}
               if self.meta.get("cluster") else {}),
        }


@dataclass(frozen=True)
class RangesRef:
    """Which range set a stage reads: ``source`` is a calibrate run folder (its ``method`` range set) or a
    ranges file (calib's ranges JSON, or ``{tensor: amax}``; ``method`` unused). Held by
    ``BuildConfig.ranges`` and ``SensitivityConfig.ranges``."""

    source: str = ""
    method: str = DEFAULT_BUILD_METHOD

    @property
    def from_calibration(self) -> bool:
        """Whether ``source`` names a calibration run (a folder, or anything that is not a ``.json`` file)."""
        path = Path(self.source)
        return bool(self.source) and (path.is_dir() or path.suffix.lower() != ".json")

    @property
    def calibration_dir(self) -> Path | None:
        return Path(self.source) if self.from_calibration else None

    def describe(self) -> str:
        resolved = str(Path(self.source).resolve())
        return f"{resolved} ({self.method})" if self.from_calibration else resolved

    def load(self) -> Ranges:
        """The range set; one :class:`InputError` line for no source, a missing run or file, an unknown method."""
        if not self.source:
            raise InputError("give exactly one of a ranges file (--ranges) or a calibration run (--calibration)")
        if self.from_calibration:
            return Calibration.load(self.source).ranges(self.method)
        return Ranges.load(self.source)


def recorded_roles(calibration: str | Path | None) -> dict[str, str | None]:
    """The output roles the calibration set behind a calibration run recorded, as ``load_model``
    keywords (``logits_output``, ``embedding_output``, ``pooling``); {} when unknown (no folder, an
    older set, a ranges file)."""
    if not calibration or not Path(calibration).is_dir():
        return {}
    try:
        cset_dir = Calibration.load(calibration).calibration_set_dir
        return CalibrationSet.load(cset_dir).role_fields if cset_dir else {}
    except (InputError, OSError, ValueError, KeyError):  # provenance is best effort
        return {}


def calibrate(config: CalibrateConfig, out_dir: Path, *, progress: ProgressFn | None = None) -> Calibration:
    """Run the statistics pass and every calibrator; write the artifact into ``out_dir``."""
    report = progress or (lambda fraction, message="": None)
    _check(config)
    calibration_set = CalibrationSet.load(config.calibration_set)
    spec = calibration_set.model_spec()
    check_same_model(calibration_set.model_sha256, spec.sha256, f"calibration set {config.calibration_set}")
    report(0.0, "tokenising the calibration set")
    encoded = calibration_set.encode(spec)
    model = read_onnx(spec.onnx_path)
    tensors = default_tensors(model, config.tensors, config.placement)
    del model
    stats_config = StatsConfig(tensors=tensors, placement=config.placement, batch_size=config.batch_size,
                               histogram=config.histogram, bins=config.bins, threads=config.threads)
    with connect(config.cluster) as session:
        if session is None:
            stats = collect_statistics(spec, encoded, tensors, config=stats_config,
                                       progress=lambda f, m="": report(0.9 * f, m))
        else:  # sharded over the cluster's workers, merged (calib.distributed says what is identical)
            stats = collect_statistics_sharded(session, spec, encoded, tensors, config=stats_config,
                                               progress=lambda f, m="": report(0.9 * f, m))
        cluster = session.describe() if session is not None else None
    # whole-set methods (auto) need the weights, loaded after the pass so they never sit beside its activations
    model = read_onnx(spec.onnx_path) if any(get_method(m).choose for m in config.methods) else None
    return write_calibration(config, stats, out_dir, calibration_set=calibration_set, progress=report, model=model,
                             cluster=cluster)


def write_calibration(config: CalibrateConfig, stats: ActivationStats, out_dir: Path, *,
                      calibration_set: CalibrationSet,
                      progress: ProgressFn | None = None, model: onnx.ModelProto | None = None,
                      cluster: Mapping[str, Any] | None = None) -> Calibration:
    """Compute every method's ranges from ``stats`` and write stats, ranges, caches and the record.
    ``model`` (weights loaded) is needed by whole-set methods such as ``auto``; ``cluster`` is where
    the statistics pass ran (:meth:`calib.cluster.ClusterSession.describe`; None: this process)."""
    report = progress or (lambda fraction, message="": None)
    out_dir = Path(out_dir)
    stats.save(out_dir)
    methods: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for n, method in enumerate(config.methods):
        report(0.9 + 0.1 * n / len(config.methods), f"{method} ranges")
        t0 = time.perf_counter()
        ranges = compute_ranges(stats, method, model=model, **config.method_params(method))
        timings[method] = time.perf_counter() - t0
        ranges_path = ranges.save(out_dir / "ranges" / f"{method}.json")
        ort_path = ranges.save_ort(out_dir / "ranges" / f"{method}.ort.json")
        algorithm = cache_algorithm(method)
        cache_path = out_dir / "caches" / f"{method}.cache"
        omitted = write_trt_cache(cache_path, ranges.amax, algorithm=algorithm, trt_version=config.trt_version)
        methods[method] = {
            "params": ranges.params, "ranges": str(ranges_path.relative_to(out_dir)),
            "ort": str(ort_path.relative_to(out_dir)), "cache": str(cache_path.relative_to(out_dir)),
            "cache_header": header(config.trt_version, algorithm), "cache_omitted": omitted,
            "seconds": round(timings[method], 4),
            **({"chosen": dict(Counter(c["method"] for c in ranges.choices.values()))} if ranges.choices else {}),
        }
    nonfinite = {t.name: {"nan": t.nan, "posinf": t.posinf, "neginf": t.neginf} for t in stats.tensors if t.nonfinite}
    zero_range = [t.name for t in stats.tensors if t.absmax == 0]
    meta = {
        "format": FORMAT,
        "model_sha256": stats.model_sha256,
        "calibration_set": {
            "dir": str(calibration_set.dir),
            "manifest_sha256": sha256_file(calibration_set.dir / "manifest.json"),
            "size": calibration_set.size, "strategy": calibration_set.strategy,
            "dataset": calibration_set.dataset_source,
        },
        "config": config_params(config),
        "trt_version": config.trt_version,
        "tensors": len(stats.tensors),
        "methods": methods,
        "stats": stats.summary(),
        "timings": {"stats_seconds": round(stats.seconds, 3),
                    "calibrators_seconds": round(sum(timings.values()), 4),
                    **{f"{m}_seconds": round(s, 4) for m, s in timings.items()}},
        "nonfinite": nonfinite,
        "zero_range": zero_range,
        "skipped": stats.skipped,
        "defaults": {m: dict(get_method(m).defaults) for m in config.methods},
        **({"cluster": dict(cluster)} if cluster else {}),
    }
    atomic_write_json(out_dir / META_FILE, meta)
    report(1.0, f"{len(stats.tensors)} tensors, {len(config.methods)} methods")
    return Calibration.load(out_dir)
