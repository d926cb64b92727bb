"""How calib writes numbers for people: one formatter for the CLI, the app and the reports.

Conventions (each function below shows examples):

- accuracy differences in **points** (percentage points) with 2 decimals and always a sign, since
  the sign is the news: ``points(0.390625)`` → ``'+0.39 pts'``;
- shares (accuracy, agreement, truncation rate) given as fractions in [0, 1] print as
  **percentages with the unit**: ``percent(0.9725)`` → ``'97.25 %'``;
- unit-free **ratios** close to 1 (top-1 agreement as a ratio, cosine, KS) with 4 decimals:
  ``ratio(0.99871)`` → ``'0.9987'``;
- other measurements with 4 significant digits (``number``), durations (``seconds``) and sizes
  (``size``) humanised, counts with thousands separators (``count``);
- missing values print as an en dash ``'–'``; infinities and NaN by name.

No function ever shows binary float noise such as ``0.40000000000000036``: every value is rounded
to the digits shown, and :func:`clean` does the same for numbers written to JSON for machines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from calib.errors import InputError

MISSING = "–"
"""What a missing value (None) prints as."""


def _nonfinite(x: float) -> str | None:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None


def _fixed(x: float, decimals: int, sign: bool = False) -> str:
    """``x`` with ``decimals`` decimals; a value that rounds to zero prints without a sign."""
    text = f"{x:.{decimals}f}"
    if float(text) == 0:
        return f"{0:.{decimals}f}"
    return f"{x:+.{decimals}f}" if sign else text


def number(x: float | None, digits: int = 4) -> str:
    """A measurement with ``digits`` significant digits, no exponent for everyday magnitudes.

    >>> number(0.40000000000000036)
    '0.4'
    >>> number(1234.5678)
    '1235'
    >>> number(3.0e-07)
    '3e-07'
    >>> number(None), number(float("inf")), number(7)
    ('–', 'inf', '7')
    """
    if x is None:
        return MISSING
    if isinstance(x, int):
        return str(x)
    x = float(x)
    return _nonfinite(x) or f"{x:.{digits}g}"


def points(x: float | None, decimals: int = 2, *, unit: bool = True) -> str:
    """A difference in percentage points, signed: accuracy drop, CI bounds, budget margins.

    >>> points(0.390625)
    '+0.39 pts'
    >>> points(-1.2500000000000067)
    '-1.25 pts'
    >>> points(-0.001), points(None), points(2, unit=False)
    ('0.00 pts', '–', '+2.00')
    """
    if x is None:
        return MISSING
    x = float(x)
    text = _nonfinite(x) or _fixed(x, decimals, sign=True)
    return f"{text} pts" if unit else text


def percent(fraction: float | None, decimals: int = 2, *, unit: bool = True) -> str:
    """A share given as a fraction in [0, 1], as a percentage with its unit.

    >>> percent(0.9725)
    '97.25 %'
    >>> percent(0.36, 1), percent(1.0), percent(None)
    ('36.0 %', '100.00 %', '–')
    """
    if fraction is None:
        return MISSING
    x = float(fraction) * 100
    text = _nonfinite(x) or _fixed(x, decimals)
    return f"{text} %" if unit else text


def ratio(x: float | None, decimals: int = 4) -> str:
    """A unit-free ratio in [−1, 1] (cosine, top-1 agreement as a ratio, KS distance).

    >>> ratio(0.99871), ratio(1), ratio(None)
    ('0.9987', '1.0000', '–')
    """
    if x is None:
        return MISSING
    x = float(x)
    return _nonfinite(x) or _fixed(x, decimals)


def signed(x: float | None, decimals: int = 2) -> str:
    """A signed difference without a unit (e.g. dB of SQNR change).

    >>> signed(1.5), signed(-0.25, 1), signed(0.0)
    ('+1.50', '-0.2', '0.00')
    """
    if x is None:
        return MISSING
    x = float(x)
    return _nonfinite(x) or _fixed(x, decimals, sign=True)


def factor(x: float | None, decimals: int = 2) -> str:
    """A speed-up or size factor.

    >>> factor(1.8349), factor(None)
    ('1.83×', '–')
    """
    if x is None:
        return MISSING
    x = float(x)
    return f"{_nonfinite(x) or _fixed(x, decimals)}×"


def count(n: int | None) -> str:
    """A whole number with thousands separators.

    >>> count(2225), count(12), count(None)
    ('2,225', '12', '–')
    """
    return MISSING if n is None else f"{int(n):,}"


def seconds(s: float | None) -> str:
    """A duration, humanised: milliseconds below a second, minutes and hours when long.

    >>> seconds(0.0123), seconds(0.42), seconds(12.34), seconds(467.2), seconds(3725)
    ('12 ms', '0.42 s', '12.3 s', '7 min 47 s', '1 h 02 min')
    >>> seconds(None)
    '–'
    """
    if s is None:
        return MISSING
    s = float(s)
    if (text := _nonfinite(s)) is not None:
        return text
    if s < 0.1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    whole = round(s)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s" if whole % 60 else f"{whole // 60} min"
    minutes = (whole + 30) // 60
    return f"{minutes // 60} h {minutes % 60:02d} min"


_SIZE_UNITS = ("KB", "MB", "GB", "TB")


def size(n_bytes: float | None) -> str:
    """A size in bytes, humanised with binary multiples (1 MB = 1024² bytes, as ``du -h``).

    >>> size(512), size(1536), size(94_371_840), size(2.3 * 2**30), size(None)
    ('512 B', '1.5 KB', '90.0 MB', '2.3 GB', '–')
    """
    if n_bytes is None:
        return MISSING
    value = float(n_bytes)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in _SIZE_UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def cell(v: Any) -> str:
    """A table cell: floats with :func:`number`, None as ``'–'``, anything else as ``str``.

    >>> cell(0.1 + 0.2), cell(None), cell(16), cell("entropy")
    ('0.3', '–', '16', 'entropy')
    """
    if v is None:
        return MISSING
    if isinstance(v, float):
        return number(v)
    return str(v)


def clean(value: Any, digits: int = 12) -> Any:
    """JSON-bound data with every float rounded to ``digits`` significant digits (no float noise);
    non-finite floats become None (JSON has no inf/nan). Containers are copied, not changed.

    >>> clean({"drop": 0.40000000000000036, "n": 3, "xs": [1.2500000000000067, float("inf")]})
    {'drop': 0.4, 'n': 3, 'xs': [1.25, None]}
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalar
        if value.dtype.kind == "f":  # its shortest repr: float32 0.1 is 0.1, not 0.10000000149
            return clean(float(str(value)), digits)
        return clean(value.item(), digits)
    return value


def _evaluation_headline(s: Mapping[str, Any]) -> list[str]:
    """A validation's, a report's or a search recommendation's figures: drop, agreement, else cosine."""
    parts = [f"drop {points(s['accuracy_drop_points'])}"] if s.get("accuracy_drop_points") is not None else []
    if s.get("top1_agreement") is not None:
        parts.append(f"agreement {percent(s['top1_agreement'])}")
    if s.get("embedding_cosine") is not None and s.get("accuracy_drop_points") is None:
        parts.append(f"cosine {ratio(s['embedding_cosine'])}")
    return parts


def _sensitivity_headline(s: Mapping[str, Any]) -> list[str]:
    floating = s.get("exclude_nodes", s.get("exclusions"))  # "exclusions": summaries before 0.2
    return [*([f"{floating} in float"] if floating is not None else []), *_evaluation_headline(s)]


def _calibset_headline(s: Mapping[str, Any]) -> list[str]:
    return [*([f"{count(s['size'])} texts"] if "size" in s else []),
            *([f"KS {ratio(s['ks'])}"] if s.get("ks") is not None else []),
            *([f"{s['warnings']} warning{'s' if s['warnings'] != 1 else ''}"] if s.get("warnings") else [])]


def _calibrate_headline(s: Mapping[str, Any]) -> list[str]:
    return [*([f"{count(s['tensors'])} tensors"] if "tensors" in s else []),
            *([", ".join(s["methods"])] if "methods" in s else []),
            *([f"stats {seconds(s['stats_seconds'])}"] if s.get("stats_seconds") is not None else [])]


def _build_headline(s: Mapping[str, Any]) -> list[str]:
    return [*([f"{count(s['quantized_nodes'])} nodes INT8"] if "quantized_nodes" in s else []),
            *([f"{count(s['excluded_nodes'])} in float"] if s.get("excluded_nodes") else []),
            *([str(s["method"])] if s.get("method") else [])]


def _head_headline(s: Mapping[str, Any]) -> list[str]:
    return [*([f"{s['classes']} classes"] if s.get("classes") is not None else []),
            *([f"CV accuracy {percent(s['cv_accuracy'])}"] if s.get("cv_accuracy") is not None else [])]


def _compare_headline(s: Mapping[str, Any]) -> list[str]:
    if not s.get("recommended"):
        return []
    passing = s.get("passing") or []
    return [f"recommends {s['recommended']}" if s.get("recommended_passes") else f"none passes, closest {s['recommended']}",
            *([f"{len(passing)} of {len(s['methods'])} pass"] if "methods" in s else [])]


def _bench_headline(s: Mapping[str, Any]) -> list[str]:
    speedups = sorted((int(k[len("speedup_b"):]), v) for k, v in s.items()
                      if k.startswith("speedup_b") and k[len("speedup_b"):].isdigit() and v is not None)
    return [f"INT8 {factor(speedups[-1][1])} at batch {speedups[-1][0]}"] if speedups else []


HEADLINES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "calibset": _calibset_headline, "calibrate": _calibrate_headline, "build": _build_headline,
    "bench": _bench_headline, "validate": _evaluation_headline, "compare": _compare_headline,
    "sensitivity": _sensitivity_headline, "head": _head_headline, "report": _evaluation_headline,
}
"""Per stage (``calib.stages.STAGES`` with a run folder), the figures that say how one of its runs went,
from its registry summary (``tests/test_structure.py`` checks each stage has one)."""


def headline(stage: str, summary: Mapping[str, Any]) -> str:
    """The one figure that says how a finished run went, from its registry summary (:data:`HEADLINES`;
    "" for a stage this version does not know).

    >>> headline("validate", {"accuracy_drop_points": 0.390625, "top1_agreement": 0.98})
    'drop +0.39 pts, agreement 98.00 %'
    >>> headline("calibset", {"size": 128, "ks": 0.0312, "warnings": 0})
    '128 texts, KS 0.0312'
    >>> headline("bench", {"speedup_b1": 1.31, "speedup_b16": 1.84})
    'INT8 1.84× at batch 16'
    """
    parts = HEADLINES.get(stage)
    return ", ".join(parts(summary)) if parts else ""


def whole_numbers(text: str, what: str = "values") -> tuple[int, ...]:
    """Whole numbers typed separated by commas and/or spaces (``1, 8, 16``), the one reader of such lists
    (CLI options, the app's fields); one :class:`~calib.errors.InputError` line naming ``what`` otherwise.

    >>> whole_numbers("1, 8 16")
    (1, 8, 16)
    """
    try:
        return tuple(int(x) for x in re.split(r"[,\s]+", text.strip()) if x)
    except ValueError:
        raise InputError(f"{what}: use whole numbers separated by commas (e.g. 1,8,16), got {text!r}") from None
