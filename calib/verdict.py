"""The ship decision: a release budget (thresholds) and the verdict of one evaluation against it.

One place for the thresholds and for PASS/FAIL: the report records the :class:`Verdict` (with the
budget and the ``calib gate`` command that reproduces it), the gate checks a report with it, and the
app shows it as a banner. Sign convention everywhere: **drop = FP32 − INT8 accuracy, in points**
(positive: INT8 is worse); its 95 % interval is given in the same convention.

The measured values come from a report headline (``calib.report/1``), see :func:`judge`.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from calib.errors import InputError

PASS = "PASS"
FAIL = "FAIL"
TOLERANCE = 1e-9  # thresholds are compared with a little slack so 0.99 passes 0.99 after rounding noise


@dataclass(frozen=True)
class ReleaseBudget:
    """Thresholds an INT8 build must meet to ship. ``None`` leaves a criterion out.

    ``max_drop``: largest accuracy drop, FP32 − INT8, in points. ``min_agreement``: smallest top-1
    agreement with FP32 (0–1). ``min_embedding_cosine``: smallest mean cosine between FP32 and INT8
    embeddings. ``use_ci``: the upper end of the drop's 95 % interval must also be within ``max_drop``.
    """

    max_drop: float | None = 0.5
    min_agreement: float | None = 0.99
    min_embedding_cosine: float | None = 0.99
    use_ci: bool = False

    def __post_init__(self) -> None:
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise InputError(f"release budget: max drop must be a number of points ≥ 0, got {self.max_drop}")
        for name in ("min_agreement", "min_embedding_cosine"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise InputError(f"release budget: {name.replace('_', ' ')} must be a number (0–1), got {v}")
        if self.use_ci and self.max_drop is None:
            raise InputError("release budget: checking the upper interval bound needs a max drop")

    @property
    def empty(self) -> bool:
        return self.max_drop is None and self.min_agreement is None and self.min_embedding_cosine is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ReleaseBudget:
        """A budget from saved data (unknown keys ignored; missing keys take the defaults)."""
        if not data:
            return cls()
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("max_drop", "min_agreement", "min_embedding_cosine"):
            if values.get(key) is not None:
                values[key] = float(values[key])
        if "use_ci" in values:
            values["use_ci"] = bool(values["use_ci"])
        return cls(**values)

    def gate_flags(self) -> list[str]:
        """The ``calib gate`` options that check this budget."""
        flags: list[str] = []
        if self.max_drop is not None:
            flags += ["--max-drop", f"{self.max_drop:g}"]
        if self.min_agreement is not None:
            flags += ["--min-agreement", f"{self.min_agreement:g}"]
        if self.min_embedding_cosine is not None:
            flags += ["--min-embedding-cosine", f"{self.min_embedding_cosine:g}"]
        if self.use_ci:
            flags.append("--use-ci")
        return flags

    def describe(self) -> str:
        """One line, e.g. ``drop ≤ 0.5 pts, agreement ≥ 0.99, embedding cosine ≥ 0.99``."""
        parts = []
        if self.max_drop is not None:
            parts.append(f"drop ≤ {self.max_drop:g} pts" + (" (upper 95 % bound too)" if self.use_ci else ""))
        if self.min_agreement is not None:
            parts.append(f"agreement ≥ {self.min_agreement:g}")
        if self.min_embedding_cosine is not None:
            parts.append(f"embedding cosine ≥ {self.min_embedding_cosine:g}")
        return ", ".join(parts) or "no criteria"


DEFAULT_EMBEDDING_COSINE = 0.99
"""The smallest mean FP32-vs-INT8 embedding cosine a model with an embedding is held to by default."""


def default_budget(*, has_embedding: bool = True, labelled: bool = True, has_logits: bool = True) -> ReleaseBudget:
    """The default budget for a model: drop ≤ 0.5 points (when the eval data has labels), agreement
    ≥ 0.99, embedding cosine ≥ 0.99 (when the model has an embedding output). An embedding model (no
    logits) is held to the cosine only: neither agreement nor accuracy applies."""
    if not has_logits:
        return ReleaseBudget(max_drop=None, min_agreement=None, min_embedding_cosine=DEFAULT_EMBEDDING_COSINE)
    return ReleaseBudget(max_drop=0.5 if labelled else None, min_agreement=0.99,
                         min_embedding_cosine=DEFAULT_EMBEDDING_COSINE if has_embedding else None)


@dataclass(frozen=True)
class Criterion:
    """One line of a verdict. ``value`` is None when the evaluation cannot measure it (then FAIL)."""

    name: str  # max_drop | max_drop_ci | min_agreement | min_embedding_cosine
    label: str  # what is measured, for people
    comparison: str  # "≤" or "≥"
    threshold: float
    value: float | None
    unit: str  # "pts" or ""
    passed: bool
    detail: str  # one line: value, comparison, threshold, or why it could not be measured

    @property
    def status(self) -> str:
        return PASS if self.passed else FAIL


@dataclass(frozen=True)
class Verdict:
    """PASS when every criterion of the budget passes."""

    passed: bool
    criteria: tuple[Criterion, ...]
    budget: ReleaseBudget

    @property
    def status(self) -> str:
        return PASS if self.passed else FAIL

    @property
    def reason(self) -> str:
        """One line: the failed criteria (or all of them when it passes)."""
        shown = [c for c in self.criteria if not c.passed] or list(self.criteria)
        return f"{self.status}: " + "; ".join(c.detail for c in shown)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "passed": self.passed, "reason": self.reason, "budget": self.budget.to_dict(),
                "criteria": [{**asdict(c), "status": c.status} for c in self.criteria]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        crit = tuple(Criterion(**{f.name: c[f.name] for f in fields(Criterion)}) for c in data["criteria"])
        return cls(bool(data["passed"]), crit, ReleaseBudget.from_dict(data.get("budget")))


def _check(name: str, label: str, short: str, comparison: str, threshold: float, value: float | None, unit: str,
           missing: str) -> Criterion:
    if value is None or not math.isfinite(value):
        return Criterion(name, label, comparison, threshold, None, unit, False, missing)
    ok = value <= threshold + TOLERANCE if comparison == "≤" else value >= threshold - TOLERANCE
    sign = {"≤": "<=", "≥": ">="}[comparison] if ok else {"≤": ">", "≥": "<"}[comparison]
    detail = (f"{short} {value:.2f} points {sign} budget {threshold:g}" if unit == "pts"
              else f"{short} {value:.4f} {sign} {threshold:g}")
    return Criterion(name, label, comparison, threshold, float(value), unit, ok, detail)


def _points(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def drop_interval_points(ci: Mapping[str, Any]) -> dict[str, Any]:
    """The 95 % interval in both conventions: ``ci_*`` INT8 − FP32 (kept for older readers) and
    ``drop_ci_*`` FP32 − INT8, the convention of the drop itself (what reports show)."""
    low, high = _points(ci.get("low")), _points(ci.get("high"))
    return {"ci_low_points": low, "ci_high_points": high,
            "drop_ci_low_points": None if high is None else -high, "drop_ci_high_points": None if low is None else -low,
            "ci_resamples": ci.get("n_resamples")}  # 0: validated without an interval (--bootstrap 0)


def drop_ci_high(headline: Mapping[str, Any]) -> float | None:
    """Upper end of the 95 % interval of the drop (FP32 − INT8, points), from a report headline."""
    if headline.get("drop_ci_high_points") is not None:
        return float(headline["drop_ci_high_points"])
    if headline.get("ci_low_points") is not None:  # reports that carry only the INT8 − FP32 interval
        return -float(headline["ci_low_points"])
    return None


def judge(headline: Mapping[str, Any], budget: ReleaseBudget) -> Verdict:
    """The verdict of a report headline (keys ``labelled``, ``accuracy_drop_points``,
    ``drop_ci_high_points``, ``top1_agreement``, ``embedding_cosine``) against ``budget``.

    A criterion the evaluation cannot measure fails with the reason (an eval set without labels has
    no accuracy drop; a model without an embedding output has no embedding cosine): a release
    decision is never assumed.
    """
    if budget.empty:
        raise InputError("the release budget has no criteria: give a max drop, a min agreement and/or a min "
                         "embedding cosine")
    criteria: list[Criterion] = []
    if budget.max_drop is not None:
        no_labels = ("the report has no accuracy (eval set without labels); gate on agreement instead or evaluate "
                     "on a labelled set")
        labelled = bool(headline.get("labelled", True))
        drop = headline.get("accuracy_drop_points") if labelled else None
        criteria.append(_check("max_drop", "accuracy drop (FP32 − INT8, points)", "accuracy drop", "≤",
                               budget.max_drop, drop, "pts", no_labels))
        if budget.use_ci:
            high = drop_ci_high(headline) if labelled else None
            criteria.append(_check("max_drop_ci", "upper 95 % bound of the drop (points)",
                                   "upper 95 % bound of the accuracy drop", "≤", budget.max_drop, high, "pts",
                                   no_labels if not labelled else "the evaluation has no interval of the drop "
                                   "(validate with bootstrap resamples > 0)"))
    if budget.min_agreement is not None:
        criteria.append(_check("min_agreement", "top-1 agreement with FP32", "top-1 agreement", "≥",
                               budget.min_agreement, headline.get("top1_agreement"), "",
                               "the report has no top-1 agreement"))
    if budget.min_embedding_cosine is not None:
        criteria.append(_check("min_embedding_cosine", "embedding cosine (mean)", "embedding cosine", "≥",
                               budget.min_embedding_cosine, headline.get("embedding_cosine"), "",
                               "the model has no embedding output to check"))
    return Verdict(all(c.passed for c in criteria), tuple(criteria), budget)


def measured_budget(headline: Mapping[str, Any], budget: ReleaseBudget) -> ReleaseBudget:
    """``budget`` without the criteria ``headline`` has no figure for: what a search candidate can be
    checked on (unlabelled texts give no drop, an embedding model no agreement, a run without bootstrap no
    interval). A release verdict never uses this: there an unmeasured criterion fails (:func:`judge`)."""
    has = {k: headline.get(k) is not None for k in ("accuracy_drop_points", "top1_agreement", "embedding_cosine")}
    return replace(
        budget, max_drop=budget.max_drop if has["accuracy_drop_points"] else None,
        min_agreement=budget.min_agreement if has["top1_agreement"] else None,
        min_embedding_cosine=budget.min_embedding_cosine if has["embedding_cosine"] else None,
        use_ci=budget.use_ci and has["accuracy_drop_points"] and drop_ci_high(headline) is not None)


def meets(headline: Mapping[str, Any], budget: ReleaseBudget) -> bool:
    """Whether the figures ``headline`` has meet ``budget`` (:func:`judge` on :func:`measured_budget`;
    nothing measured to check: True)."""
    checked = measured_budget(headline, budget)
    return checked.empty or judge(headline, checked).passed


def gate_command(report: str, budget: ReleaseBudget) -> str:
    """The shell command that checks ``report`` (a report.json path or run id) against ``budget``."""
    return shlex.join(["calib", "gate", report, *budget.gate_flags()])


# -- statistical resolution ----------------------------------------------------------------------

MIN_BUCKET_TEXTS = 30  # below this a bucket's figures are noise: shown greyed, never ranked


def proportion_interval(p: float | None, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson 95 % interval of a share ``p`` measured on ``n`` texts (e.g. top-1 agreement, accuracy)."""
    if p is None or n <= 0:
        return None
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values, z: float = 1.96) -> tuple[float, float] | None:
    """Normal 95 % interval of the mean of per-text values (e.g. embedding cosines), (N,) array-like."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    half = z * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()) - half, float(v.mean()) + half


def drop_ci_half_width(headline: Mapping[str, Any]) -> float | None:
    """Half the width of the drop's 95 % interval, in points (None without an interval)."""
    low, high = headline.get("drop_ci_low_points"), headline.get("drop_ci_high_points")
    if low is None or high is None:
        low, high = headline.get("ci_low_points"), headline.get("ci_high_points")
    if low is None or high is None:
        return None
    return abs(float(high) - float(low)) / 2.0


def texts_needed(n: int, half_width: float, target: float) -> int:
    """Texts for an interval of ±``target``, given ±``half_width`` measured on ``n`` texts
    (interval widths shrink as 1/√n)."""
    if target <= 0:
        raise InputError(f"target interval must be > 0, got {target}")
    return math.ceil(n * (half_width / target) ** 2)


def resolution_warning(headline: Mapping[str, Any], budget: ReleaseBudget) -> str | None:
    """A warning when the eval set is too small to show the budget's drop, with the size that would.

    E.g. ``1,000 texts cannot show a 0.5-point drop: the 95 % interval of the drop is ±2.00 points;
    about 16,000 texts would narrow it to ±0.5``.
    """
    if budget.max_drop is None or not headline.get("labelled", True) or budget.max_drop <= 0:
        return None
    half = drop_ci_half_width(headline)
    n = int(headline.get("rows") or 0)
    if half is None or n <= 0 or half <= budget.max_drop:
        return None
    need = texts_needed(n, half, budget.max_drop)
    return (f"{n:,} texts cannot show a {budget.max_drop:g}-point drop: the 95 % interval of the drop is "
            f"±{half:.2f} points; about {need:,} texts would narrow it to ±{budget.max_drop:g}")


# -- choosing among candidates (e.g. one engine per calibrator) ----------------------------------

TENSORRT_DEFAULT_CALIBRATOR = "entropy"  # TensorRT's IInt8EntropyCalibrator2 is its default


@dataclass(frozen=True)
class Recommendation:
    """The candidate to ship and why. ``index`` into the rows given to :func:`recommend`."""

    index: int
    name: str
    passes: bool
    reason: str
    default_note: str  # says when TensorRT's default calibrator is not the best choice here ("" otherwise)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def headline(self) -> str:
        """A few words for a banner: ``recommended: minmax`` only when it passes, otherwise
        ``none passes · closest: minmax`` (a failing candidate is never called recommended)."""
        return f"recommended: {self.name}" if self.passes else f"none passes · closest: {self.name}"

    @property
    def sentence(self) -> str:
        """The recommendation as one sentence for the CLI, the app and the report."""
        return f"Recommended: {self.reason}." if self.passes else f"{self.reason[:1].upper()}{self.reason[1:]}."


def _rank_key(row: Mapping[str, Any], verdict: Verdict) -> tuple:
    agreement = row.get("top1_agreement")
    cosine = row.get("embedding_cosine")
    drop = row.get("accuracy_drop_points")
    return (verdict.passed, -sum(not c.passed for c in verdict.criteria),
            agreement if agreement is not None else -1.0, cosine if cosine is not None else -1.0,
            -drop if drop is not None else -1e9)


def recommend(rows: list[Mapping[str, Any]], budget: ReleaseBudget, *, name_key: str = "calibrator") -> Recommendation:
    """The best candidate among ``rows`` (headline-like dicts, see :func:`judge`): one that passes the
    budget with the best top-1 agreement, then embedding cosine, then drop; when none passes, the one
    with the fewest failed criteria, ranked the same way."""
    if not rows:
        raise InputError("nothing to recommend from: no candidates")
    verdicts = [judge(r, budget) for r in rows]
    best = max(range(len(rows)), key=lambda i: _rank_key(rows[i], verdicts[i]))
    row, verdict = rows[best], verdicts[best]
    name = str(row.get(name_key) or f"candidate {best + 1}")

    def figures(r: Mapping[str, Any]) -> str:
        parts = [f"agreement {r['top1_agreement']:.4f}" if r.get("top1_agreement") is not None else ""]
        if r.get("embedding_cosine") is not None:
            parts.append(f"embedding cosine {r['embedding_cosine']:.4f}")
        if r.get("accuracy_drop_points") is not None:
            parts.append(f"drop {r['accuracy_drop_points']:+.2f} pts")
        return ", ".join(p for p in parts if p)

    passing = sum(v.passed for v in verdicts)
    if verdict.passed:
        best_of = "agreement" if row.get("top1_agreement") is not None else "embedding cosine"
        reason = (f"{name}: passes the budget ({budget.describe()}) with the best {best_of} of the "
                  f"{passing} that pass ({figures(row)})")
    else:
        reason = (f"none of the {len(rows)} passes the budget ({budget.describe()}); {name} comes closest "
                  f"({figures(row)}; {verdict.reason})")
    note = ""
    default = [i for i, r in enumerate(rows) if r.get(name_key) == TENSORRT_DEFAULT_CALIBRATOR]
    if name_key == "calibrator" and default and best not in default:
        d = rows[default[0]]
        note = (f"TensorRT's default calibrator ({TENSORRT_DEFAULT_CALIBRATOR}) is not the best choice for this "
                f"model: {figures(d)} ({verdicts[default[0]].status}) against {figures(row)} with {name}")
    return Recommendation(best, name, verdict.passed, reason, note)
