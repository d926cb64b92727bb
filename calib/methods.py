"""The calibration-method registry: the one place a calibration method is defined.

A method is a :class:`CalibrationMethod`: its name, default parameters, a parameter check, the
function that turns one tensor's statistics into an amax, and the algorithm written in TensorRT
cache headers. Everything that interprets a method derives from :data:`REGISTRY`:
:func:`tensor_amax` and :func:`compute_ranges` (this module), ``CalibrateConfig.method_params``
and the cache headers (``calib.calibrate``), the ``--method`` choices of ``calib calibrate`` and
the calibrator options of the app.

Adding a calibrator is one function and one :func:`register` call::

    def half_absmax(stats: TensorStats, *, fraction: float) -> float:
        return fraction * stats.absmax

    register(CalibrationMethod("half", half_absmax, defaults={"fraction": 0.5},
                               check=lambda p: check_fraction(p["fraction"])))

``calib calibrate --method half`` (or ``CalibrateConfig(methods=("half",))``) then writes
``ranges/half.json``, ``ranges/half.ort.json`` and ``caches/half.cache`` like any built-in method.

The built-in methods (formulas in :mod:`calib.calibrators`):

- ``entropy``: TensorRT's EntropyCalibration2 (KL divergence); cache algorithm EntropyCalibration2.
- ``minmax``: amax = max |x|.
- ``percentile``: amax at the given percentile of |x|. Default **99.999**, NVIDIA's BERT INT8
  recipe; on the demo encoder 99.99 clips too much (BENCHMARKS.md, section 7).
- ``mse``: amax minimising the INT8 squared error over the histogram.
- ``auto`` (not run unless named): per tensor, the candidate among the above with the smallest
  error at the consuming MatMul's output (:mod:`calib.autorange`); needs the model's weights.

TensorRT only reads the scales of a cache; its header algorithm must match the builder's, so every
method but entropy writes ``MinMaxCalibration``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from calib import autorange
from calib.calibrators import ENTROPY_LEVELS, check_percentile, entropy_amax, mse_amax, percentile_amax
from calib.errors import InputError, check_choice
from calib.ranges import Ranges
from calib.stats import ActivationStats, TensorStats

AmaxFn = Callable[..., float]  # (stats: TensorStats, **params) -> amax >= 0
DEFAULT_PERCENTILE = 99.999
# The range set `calib build` uses when none is named: computed by every default calibration, never the
# worst calibrator on the demo tasks, and no accuracy drop on either (BENCHMARKS.md, sections 3 and 7);
# entropy (TensorRT's default) is the worst there. Migration (`--smooth auto`) does far better on top of it.
DEFAULT_BUILD_METHOD = "minmax"


@dataclass(frozen=True)
class CalibrationMethod:
    """One calibrator. ``amax(stats, **params)`` gets the merged parameters (defaults + given) (or,
    for a method that needs every tensor and the model's weights, ``choose``);
    ``check(params)`` raises :class:`InputError` for a bad value; ``config_fields`` maps a
    parameter to the ``CalibrateConfig`` field that sets it (``{"percentile": "percentile"}``)."""

    name: str
    amax: AmaxFn | None  # None for a whole-set method (``choose``)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    trt_algorithm: str = "MinMaxCalibration"
    description: str = ""
    config_fields: Mapping[str, str] = field(default_factory=dict)
    default_run: bool = True  # computed by `calib calibrate` when no method is named
    is_absmax: bool = False  # its amax is the tensor's max |x|, which the statistics keep exactly (no histogram)
    # Whole-set methods: (stats, model, **params) -> (amax per tensor, record per tensor). They see every
    # tensor and the model's weights at once (e.g. ``auto``: ranges chosen by the error at the MatMul output).
    choose: Callable[..., tuple[dict[str, float], dict[str, dict[str, Any]]]] | None = None

    def params(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults merged with ``given``, checked: unknown names and bad values raise InputError."""
        given = dict(given or {})
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise InputError(f"calibration method {self.name!r} takes no parameter {min(unknown)!r}"
                             + (f" (it takes {', '.join(self.defaults)})" if self.defaults else ""))
        full = {**self.defaults, **given}
        if self.check is not None:
            self.check(full)
        return full


REGISTRY: dict[str, CalibrationMethod] = {}


def register(method: CalibrationMethod, *, replace: bool = False) -> CalibrationMethod:
    """Add ``method`` to the registry (``replace`` to redefine an existing name)."""
    if not method.name or not method.name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"calibration method name {method.name!r} must be letters, digits, '-' or '_'")
    if method.name in REGISTRY and not replace:
        raise InputError(f"calibration method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_method(name: str) -> CalibrationMethod:
    check_choice(name, tuple(REGISTRY), "calibration method")
    return REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (the CLI's and the app's choices)."""
    return tuple(REGISTRY)


def build_method_of(available: Sequence[str]) -> str:
    """The range set to build from among a calibration's ``available`` methods: the default build
    method when it was computed, else the first one."""
    if not available:
        raise InputError("the calibration run has no range set to build from")
    return DEFAULT_BUILD_METHOD if DEFAULT_BUILD_METHOD in available else available[0]


def default_methods() -> tuple[str, ...]:
    """The methods ``calib calibrate`` computes when none is named."""
    return tuple(n for n, m in REGISTRY.items() if m.default_run)


def cache_algorithm(name: str) -> str:
    """TensorRT cache header algorithm of a method."""
    return get_method(name).trt_algorithm


def _check_entropy(params: Mapping[str, Any]) -> None:
    levels = params["levels"]
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise InputError(f"entropy levels must be an integer >= 2, got {levels!r}")


def _entropy(stats: TensorStats, *, levels: int, damp_zero_bin: bool) -> float:
    return entropy_amax(stats, levels=int(levels), damp_zero_bin=bool(damp_zero_bin))


def _minmax(stats: TensorStats) -> float:
    return stats.absmax


def _percentile(stats: TensorStats, *, percentile: float) -> float:
    return percentile_amax(stats, float(percentile))


def _mse(stats: TensorStats) -> float:
    return mse_amax(stats)


register(CalibrationMethod(
    "entropy", _entropy, defaults={"levels": ENTROPY_LEVELS, "damp_zero_bin": True}, check=_check_entropy,
    trt_algorithm="EntropyCalibration2", config_fields={"damp_zero_bin": "entropy_damp_zero_bin"},
    description="TensorRT EntropyCalibration2: the threshold minimising KL(P||Q) of the |x| histogram"))
register(CalibrationMethod("minmax", _minmax, is_absmax=True, description="amax = max |x|"))
register(CalibrationMethod(
    "percentile", _percentile, defaults={"percentile": DEFAULT_PERCENTILE},
    check=lambda p: check_percentile(p["percentile"]), config_fields={"percentile": "percentile"},
    description="amax at a percentile of |x| (default 99.999, NVIDIA's BERT recipe)"))
register(CalibrationMethod("mse", _mse, description="amax minimising the INT8 squared error over the histogram"))
register(CalibrationMethod(
    "auto", None, defaults=autorange.DEFAULTS, check=autorange.check_params, choose=autorange.choose_ranges,
    default_run=False, description="per tensor, the candidate (minmax, percentile 99.9/99.99/99.999, MSE, entropy) "
                                   "with the smallest error at the consuming MatMul's output"))


def tensor_amax(stats: TensorStats, method: str, params: Mapping[str, Any] | None = None) -> float:
    """amax of one tensor by ``method`` (parameters merged with the method's defaults and checked)."""
    m = get_method(method)
    if m.amax is None:
        raise InputError(f"calibration method {method!r} chooses ranges for a whole set of tensors: use compute_ranges")
    return float(m.amax(stats, **m.params(params)))


def tensor_flags(stats: TensorStats) -> dict[str, object]:
    """Flags worth a warning: non-finite values seen, an all-zero range, no values at all."""
    flags: dict[str, object] = {}
    if stats.nonfinite:
        flags["nonfinite"] = {"nan": stats.nan, "posinf": stats.posinf, "neginf": stats.neginf}
    if stats.count == 0:
        flags["empty"] = True
    elif stats.absmax == 0:
        flags["zero_range"] = True
    return flags


def compute_ranges(stats: ActivationStats, method: str, *, model: onnx.ModelProto | None = None,
                   **params: Any) -> Ranges:
    """Per-tensor amax for one method from the same statistics -> :class:`calib.ranges.Ranges`.
    ``model`` (the calibrated ONNX model, weights loaded) is needed by whole-set methods (``auto``)."""
    m = get_method(method)
    full = m.params(params)
    choices: dict[str, dict[str, Any]] = {}
    if m.choose is not None:
        chosen, choices = m.choose(stats, model, **full)
        amax = {t.name: float(chosen[t.name]) for t in stats.tensors}
    else:
        amax = {t.name: float(m.amax(t, **full)) for t in stats.tensors}  # type: ignore[misc]
    flags = {t.name: f for t in stats.tensors if (f := tensor_flags(t))}
    return Ranges(method=method, params=full, model_sha256=stats.model_sha256, amax=amax, flags=flags,
                  choices=choices)
